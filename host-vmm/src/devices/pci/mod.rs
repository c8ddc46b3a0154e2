//! PCI: a host bridge with one bus (bus 0), configuration mechanism #1 at ports 0xCF8/0xCFC,
//! and a memory window that BARs decode in.
//!
//! [`PciRoot`] owns the functions: the host bridge at 00:00.0 and devices at 00:01.0 onward
//! (function 0 only). It plays the firmware's part too: [`PciRoot::add_device`] gives every
//! memory BAR an address in the window and turns memory decoding on, through the same config
//! path the guest uses, so a guest that keeps assigned BARs finds them ready and one that
//! reassigns them can. MMIO in the window reaches the device whose decoded BAR holds the
//! whole access, at an offset into that BAR; the root keeps a table of decoded BARs, rebuilt
//! after every config write, so a BAR the guest moves is followed at once.
//!
//! Hot-unplug: [`PciRoot::unplug`] empties a slot as if the card were pulled (configuration
//! reads there return all ones, its BARs stop decoding, so MMIO reads all ones and writes are
//! dropped); [`PciRoot::replug`] puts a card back at that slot with its BARs at the addresses
//! firmware gave the first one and memory decoding on. The guest learns of either only by
//! reading (no hot-plug controller is emulated).
//!
//! Migration state ([`PciRootState`]): CONFIG_ADDRESS, the host bridge's header, the next
//! free firmware address, and per slot the vendor and device ID first attached there,
//! whether it is plugged now, and firmware's BAR addresses (for a later re-plug). Each
//! function's own header and MSI-X state belong to the function's state. The destination
//! must have the same slots with the same IDs (the same devices in the same order); a slot
//! empty on the source is emptied on the destination. Restore rebuilds BAR decoding from the
//! (already restored) functions' headers and refuses BARs of two functions that overlap.
//!
//! Submodules: [`config`] (the header and its write mask) and [`msix`].

pub mod config;
pub mod msix;

use super::{BusDevice, DeviceStateError, Persist};
use config::{BarKind, COMMAND, COMMAND_MEMORY, ConfigSpace, ConfigSpaceState, PciIds};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC..0xD00.
pub const CONFIG_PORT_BASE: u64 = 0xCF8;
/// The two registers, four ports each.
pub const CONFIG_PORT_LEN: u64 = 8;
/// Where BARs live: above the 3 GiB of RAM at most, below the IOAPIC (ARCHITECTURE.md).
pub const MMIO_WINDOW: Range<u64> = 0xC000_0000..0xFEC0_0000;
/// Device numbers on bus 0.
pub const MAX_DEVICES: usize = 32;
/// CONFIG_ADDRESS: the enable bit.
const CONFIG_ENABLE: u32 = 1 << 31;

/// A PCI function on bus 0.
///
/// The root calls `write_config` for every guest configuration write (after which it re-reads
/// the decoded BARs from `config()`), and `read_bar`/`write_bar` for MMIO inside a decoded BAR
/// with the offset into it.
pub trait PciDevice: Send {
    /// The configuration header.
    fn config(&self) -> &ConfigSpace;
    /// The dword at `offset` (dword-aligned); devices with live registers override this.
    fn read_config(&mut self, offset: usize) -> u32 {
        self.config().read_u32(offset)
    }
    /// A guest configuration write of 1, 2 or 4 bytes at `offset`.
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// A read inside BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write inside BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Why a device could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// All 32 device numbers are taken.
    #[error("the PCI bus is full")]
    BusFull,
    /// The window has no room for a BAR.
    #[error("no room in the PCI memory window for a {0:#x}-byte BAR")]
    WindowFull(u64),
    /// No device was ever attached at this device number (or it is the host bridge).
    #[error("no PCI slot {0}")]
    NoSuchSlot(u8),
    /// The slot holds a device already.
    #[error("PCI slot {0} is occupied")]
    SlotOccupied(u8),
    /// The device offered for a slot has other BARs than the one first attached there.
    #[error("the device for PCI slot {0} has a different BAR layout")]
    BarLayout(u8),
}

/// One decoded BAR in the window.
#[derive(Clone, Debug)]
struct Mapping {
    range: Range<u64>,
    slot: usize,
    bar: usize,
}

/// A BAR as firmware assigned it when the slot was first filled.
#[derive(Clone, Copy, Debug)]
struct Assigned {
    index: usize,
    bar: config::BarInfo,
    address: u64,
}

/// One device number on bus 0.
struct Slot {
    /// The function, or `None` while unplugged.
    device: Option<SharedPciDevice>,
    /// The BAR addresses given at the first attach, reused on re-plug.
    bars: Vec<Assigned>,
    /// Vendor and device ID of the first function attached.
    ids: (u16, u16),
}

/// One slot as migration saves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciSlotState {
    /// Vendor ID of the function first attached.
    pub vendor: u16,
    /// Its device ID.
    pub device: u16,
    /// Whether a function is plugged in now.
    pub plugged: bool,
    /// Firmware's BAR addresses: (BAR index, address).
    pub bars: Vec<(u8, u64)>,
}

/// The bus as migration saves it (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciRootState {
    /// CONFIG_ADDRESS.
    pub address: u32,
    /// The host bridge's header.
    pub bridge: ConfigSpaceState,
    /// Next free address for firmware-style BAR assignment.
    pub next_bar: u64,
    /// Slots 1.. (slot 0 is the host bridge).
    pub slots: Vec<PciSlotState>,
}

/// The host bridge and bus 0.
pub struct PciRoot {
    /// Slot `n` is device `n`; slot 0 is the host bridge.
    slots: Vec<Slot>,
    /// CONFIG_ADDRESS as last written.
    address: u32,
    /// Decoded BARs, sorted by start.
    mappings: Vec<Mapping>,
    /// Next free address for firmware-style BAR assignment.
    next_bar: u64,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("devices", &self.slots.len())
            .field("mappings", &self.mappings)
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Bus 0 with only the host bridge.
    pub fn new() -> Self {
        PciRoot {
            slots: vec![Slot {
                device: Some(Arc::new(Mutex::new(HostBridge::new()))),
                bars: Vec::new(),
                ids: (0x8086, 0x1237),
            }],
            address: 0,
            mappings: Vec::new(),
            next_bar: MMIO_WINDOW.start,
        }
    }

    /// Number of device numbers in use, the host bridge and unplugged slots included (the
    /// next device number).
    pub fn device_count(&self) -> usize {
        self.slots.len()
    }

    /// Attaches `device` at the next device number, gives its memory BARs addresses in the
    /// window (naturally aligned, in BAR order) and enables memory decoding. Returns the
    /// device number.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8, PciError> {
        if self.slots.len() >= MAX_DEVICES {
            return Err(PciError::BusFull);
        }
        let (assigned, ids) = {
            let mut d = lock(&device);
            let ids = (d.config().read_u16(0), d.config().read_u16(2));
            let mut next = self.next_bar;
            let mut assigned = Vec::new();
            for index in 0..config::BAR_COUNT {
                let Some(bar) = d.config().bar(index) else {
                    continue;
                };
                let start = next.next_multiple_of(bar.size);
                let end = start + bar.size;
                if end > MMIO_WINDOW.end {
                    return Err(PciError::WindowFull(bar.size));
                }
                assigned.push(Assigned {
                    index,
                    bar,
                    address: start,
                });
                next = end;
            }
            program_bars(&mut *d, &assigned);
            self.next_bar = next;
            (assigned, ids)
        };
        self.slots.push(Slot {
            device: Some(device),
            bars: assigned,
            ids,
        });
        let slot = self.slots.len() - 1;
        self.remap(slot);
        Ok(slot as u8)
    }

    /// Pulls the device out of `slot` (not the host bridge) and returns it: from now on
    /// configuration reads at that slot return all ones, writes are dropped and its BARs no
    /// longer decode. `None` if the slot does not exist or is empty.
    pub fn unplug(&mut self, slot: u8) -> Option<SharedPciDevice> {
        let index = usize::from(slot);
        if index == 0 {
            return None;
        }
        let device = self.slots.get_mut(index)?.device.take()?;
        self.remap(index);
        Some(device)
    }

    /// Puts `device` into the empty `slot` an earlier [`PciRoot::unplug`] left, as firmware
    /// would after a hot-add: its BARs get the addresses the slot's first device got and
    /// memory decoding is turned on. The device must declare the same BARs as that one.
    pub fn replug(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciError> {
        let index = usize::from(slot);
        let Some(entry) = self.slots.get(index).filter(|_| index != 0) else {
            return Err(PciError::NoSuchSlot(slot));
        };
        if entry.device.is_some() {
            return Err(PciError::SlotOccupied(slot));
        }
        {
            let mut d = lock(&device);
            let declared: Vec<_> = (0..config::BAR_COUNT)
                .filter_map(|i| Some((i, d.config().bar(i)?)))
                .collect();
            let expected: Vec<_> = entry.bars.iter().map(|a| (a.index, a.bar)).collect();
            if declared != expected {
                return Err(PciError::BarLayout(slot));
            }
            program_bars(&mut *d, &entry.bars);
        }
        self.slots[index].device = Some(device);
        self.remap(index);
        Ok(())
    }

    /// Whether a device sits at `slot`.
    pub fn is_plugged(&self, slot: u8) -> bool {
        self.slots
            .get(usize::from(slot))
            .is_some_and(|s| s.device.is_some())
    }

    /// The function CONFIG_ADDRESS selects, and the register offset, if it exists.
    fn selected(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xFF;
        let device = ((a >> 11) & 0x1F) as usize;
        let function = (a >> 8) & 0x7;
        let register = (a & 0xFC) as usize;
        let present = self.slots.get(device).is_some_and(|s| s.device.is_some());
        (a & CONFIG_ENABLE != 0 && bus == 0 && function == 0 && present)
            .then_some((device, register))
    }

    /// The device at `slot`, if one is plugged in.
    fn device(&self, slot: usize) -> Option<&SharedPciDevice> {
        self.slots.get(slot)?.device.as_ref()
    }

    fn config_read(&mut self, byte: usize, data: &mut [u8]) {
        let Some((device, register)) = self
            .selected()
            .and_then(|(slot, register)| Some((self.device(slot)?, register)))
        else {
            data.fill(0xFF);
            return;
        };
        let dword = lock(device).read_config(register).to_le_bytes();
        data.copy_from_slice(&dword[byte..byte + data.len()]);
    }

    fn config_write(&mut self, byte: usize, data: &[u8]) {
        let Some((slot, register)) = self.selected() else {
            return;
        };
        if let Some(device) = self.device(slot) {
            lock(device).write_config(register + byte, data);
        }
        self.remap(slot);
    }

    /// Rebuilds the mappings of `slot` from its header (none while it is empty).
    fn remap(&mut self, slot: usize) {
        self.mappings.retain(|m| m.slot != slot);
        let Some(device) = self.device(slot).cloned() else {
            return;
        };
        let device = lock(&device);
        for (bar, address, size) in device.config().decoded_bars() {
            // A BAR only decodes inside the window (the guest may park it elsewhere, e.g. at
            // all ones while sizing).
            let Some(end) = address.checked_add(size) else {
                continue;
            };
            if address >= MMIO_WINDOW.start && end <= MMIO_WINDOW.end {
                self.mappings.push(Mapping {
                    range: address..end,
                    slot,
                    bar,
                });
            }
        }
        drop(device);
        self.mappings.sort_by_key(|m| m.range.start);
    }

    /// The device, BAR and offset for an access of `len` bytes at `addr`.
    fn decode(&self, addr: u64, len: usize) -> Option<(&SharedPciDevice, usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        let m = self
            .mappings
            .iter()
            .find(|m| m.range.start <= addr && end <= m.range.end)?;
        Some((self.device(m.slot)?, m.bar, addr - m.range.start))
    }

    /// MMIO read at guest-physical `addr`; `false` if no BAR decodes it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.decode(addr, data.len()) {
            Some((device, bar, offset)) => {
                lock(device).read_bar(bar, offset, data);
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    /// MMIO write at guest-physical `addr`; `false` if no BAR decodes it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.decode(addr, data.len()) {
            Some((device, bar, offset)) => {
                lock(device).write_bar(bar, offset, data);
                true
            }
            None => false,
        }
    }
}

impl Persist for PciRoot {
    type State = PciRootState;

    /// The bus for migration (functions save their own headers).
    fn save(&self) -> PciRootState {
        let bridge = self
            .device(0)
            .map(|d| lock(d).config().save_state())
            .unwrap_or_else(|| HostBridge::new().config.save_state());
        PciRootState {
            address: self.address,
            bridge,
            next_bar: self.next_bar,
            slots: self.slots[1..]
                .iter()
                .map(|s| PciSlotState {
                    vendor: s.ids.0,
                    device: s.ids.1,
                    plugged: s.device.is_some(),
                    bars: s.bars.iter().map(|a| (a.index as u8, a.address)).collect(),
                })
                .collect(),
        }
    }

    /// Applies a saved bus to this one, built with the same devices in the same slots and
    /// with their states already restored: checks slots, IDs and firmware addresses, then
    /// sets CONFIG_ADDRESS and the bridge's header, unplugs slots empty on the source, and
    /// rebuilds BAR decoding. Nothing changes if a check fails, except when two functions'
    /// BARs overlap, which is found only while decoding is rebuilt (the bus then decodes
    /// neither of them, and the error says so).
    fn restore(&mut self, state: PciRootState) -> Result<(), DeviceStateError> {
        const DEV: &str = "pci";
        let mine = self.slots.len() - 1;
        // Hot-pluggable devices come last (the VF): the source may have one more slot, if
        // it was empty at the save (the VF left before the move), and this bus may have more
        // (a VF the source lacked), which stay unplugged until plugged in after arrival.
        if let Some(n) = state.slots[mine.min(state.slots.len())..]
            .iter()
            .position(|s| s.plugged)
        {
            return Err(DeviceStateError::mismatch(
                DEV,
                "slots",
                format!(
                    "slot {} is plugged on the source; this bus has {mine} slots",
                    mine + n + 1
                ),
            ));
        }
        if !(MMIO_WINDOW.start..=MMIO_WINDOW.end).contains(&state.next_bar) {
            return Err(DeviceStateError::invalid(
                DEV,
                "next BAR address",
                format!("{:#x} is outside the MMIO window", state.next_bar),
            ));
        }
        let bridge = HostBridge::new();
        let bridge_config = bridge
            .config
            .check_state(&state.bridge, DEV, &MMIO_WINDOW)?;
        for (n, (saved, slot)) in state.slots.iter().zip(&self.slots[1..]).enumerate() {
            let field = |f: &str| format!("slot {} {f}", n + 1);
            if (saved.vendor, saved.device) != slot.ids {
                return Err(DeviceStateError::mismatch(
                    DEV,
                    field("IDs"),
                    format!(
                        "{:04x}:{:04x} saved, this slot has {:04x}:{:04x}",
                        saved.vendor, saved.device, slot.ids.0, slot.ids.1
                    ),
                ));
            }
            if saved.plugged && slot.device.is_none() {
                return Err(DeviceStateError::mismatch(
                    DEV,
                    field("presence"),
                    "plugged on the source, empty here",
                ));
            }
            let layout: Vec<(u8, u64)> = slot
                .bars
                .iter()
                .map(|a| (a.index as u8, a.bar.size))
                .collect();
            if saved.bars.len() != layout.len()
                || saved.bars.iter().zip(&layout).any(|(s, m)| s.0 != m.0)
            {
                return Err(DeviceStateError::mismatch(
                    DEV,
                    field("BARs"),
                    "another BAR layout",
                ));
            }
            for (&(bar, address), &(_, size)) in saved.bars.iter().zip(&layout) {
                let fits = address.is_multiple_of(size)
                    && address >= MMIO_WINDOW.start
                    && address
                        .checked_add(size)
                        .is_some_and(|end| end <= MMIO_WINDOW.end);
                if !fits {
                    return Err(DeviceStateError::invalid(
                        DEV,
                        field(&format!("firmware address of BAR {bar}")),
                        format!(
                            "{address:#x} is not an aligned {size:#x}-byte place in the window"
                        ),
                    ));
                }
            }
        }
        self.address = state.address & 0x80FF_FFFC;
        self.next_bar = state.next_bar;
        self.slots[0].device = Some(Arc::new(Mutex::new(HostBridge {
            config: bridge_config,
        })));
        for (n, saved) in state.slots.iter().enumerate() {
            let Some(slot) = self.slots.get_mut(n + 1) else {
                break;
            };
            for (a, &(_, address)) in slot.bars.iter_mut().zip(&saved.bars) {
                a.address = address;
            }
            if !saved.plugged {
                slot.device = None;
            }
        }
        let extra = (state.slots.len() + 1).min(self.slots.len());
        for slot in &mut self.slots[extra..] {
            slot.device = None;
        }
        for slot in 0..self.slots.len() {
            self.remap(slot);
        }
        let overlap = self
            .mappings
            .windows(2)
            .find(|p| p[1].range.start < p[0].range.end)
            .map(|p| (p[0].slot, p[0].bar, p[1].slot, p[1].bar));
        if let Some((a, bar_a, b, bar_b)) = overlap {
            self.mappings.retain(|m| m.slot != a && m.slot != b);
            return Err(DeviceStateError::invalid(
                DEV,
                format!("slot {b} BAR {bar_b}"),
                format!("overlaps BAR {bar_a} of slot {a}"),
            ));
        }
        Ok(())
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes firmware's BAR addresses into `d` and turns memory decoding on, through the same
/// configuration path the guest uses.
fn program_bars(d: &mut dyn PciDevice, bars: &[Assigned]) {
    for a in bars {
        let reg = config::BAR0 + 4 * a.index;
        d.write_config(reg, &(a.address as u32).to_le_bytes());
        if let BarKind::Memory64 { .. } = a.bar.kind {
            d.write_config(reg + 4, &((a.address >> 32) as u32).to_le_bytes());
        }
    }
    let command = d.config().command() | COMMAND_MEMORY;
    d.write_config(COMMAND, &command.to_le_bytes());
}

/// Ports 0xCF8..0xD00 on the port bus.
#[derive(Debug)]
pub struct PciConfigPorts(pub Arc<Mutex<PciRoot>>);

impl BusDevice for PciConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut root = lock(&self.0);
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&root.address.to_le_bytes()),
            // CONFIG_DATA: any naturally aligned access of 1, 2 or 4 bytes.
            (4..=7, 1 | 2 | 4) if ((offset - 4) as usize).is_multiple_of(data.len()) => {
                root.config_read((offset - 4) as usize, data)
            }
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut root = lock(&self.0);
        match (offset, data.len()) {
            (0, 4) => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                root.address = value & 0x80FF_FFFC;
            }
            (4..=7, 1 | 2 | 4) if ((offset - 4) as usize).is_multiple_of(data.len()) => {
                root.config_write((offset - 4) as usize, data)
            }
            // Byte writes to 0xCF8..0xCFB (mechanism #2, reset control) mean nothing here.
            _ => {}
        }
    }
}

/// The memory window on the MMIO bus.
#[derive(Debug)]
pub struct PciMmioWindow(pub Arc<Mutex<PciRoot>>);

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = MMIO_WINDOW.start + offset;
        if !lock(&self.0).mmio_read(addr, data) {
            log::trace!("pci: no BAR at {addr:#x}");
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = MMIO_WINDOW.start + offset;
        if !lock(&self.0).mmio_write(addr, data) {
            log::trace!("pci: no BAR at {addr:#x}");
        }
    }
}

/// 00:00.0, a host bridge with no BARs (it identifies as QEMU's i440FX host bridge, which
/// every PCI enumerator knows).
#[derive(Debug)]
struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(PciIds {
                vendor: 0x8086,
                device: 0x1237,
                revision: 2,
                class: 0x06_00_00,
                subsystem_vendor: 0x1AF4,
                subsystem: 0x1100,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::config::{BarInfo, COMMAND_MEMORY};
    use super::*;

    /// A function with a 4 KiB BAR 1 and a 16 KiB 64-bit BAR 4 that records BAR accesses.
    struct Dummy {
        config: ConfigSpace,
        writes: Vec<(usize, u64, Vec<u8>)>,
    }

    impl Dummy {
        fn new() -> Self {
            let mut config = ConfigSpace::new(PciIds {
                vendor: 0x1AF4,
                device: 0x1041,
                revision: 1,
                class: 0x02_00_00,
                subsystem_vendor: 0x1AF4,
                subsystem: 1,
            });
            let b32 = BarInfo {
                size: 0x1000,
                kind: BarKind::Memory32,
            };
            let b64 = BarInfo {
                size: 0x4000,
                kind: BarKind::Memory64 { prefetchable: true },
            };
            config.add_bar(1, b32).unwrap();
            config.add_bar(4, b64).unwrap();
            Dummy {
                config,
                writes: Vec::new(),
            }
        }
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
    }

    fn select(ports: &mut PciConfigPorts, device: u32, register: u32) {
        ports.write(0, &(0x8000_0000 | device << 11 | register).to_le_bytes());
    }

    fn read32(ports: &mut PciConfigPorts, device: u32, register: u32) -> u32 {
        select(ports, device, register);
        let mut b = [0u8; 4];
        ports.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(ports: &mut PciConfigPorts, device: u32, register: u32, value: u32) {
        select(ports, device, register);
        ports.write(4, &value.to_le_bytes());
    }

    fn bus() -> (PciConfigPorts, PciMmioWindow, Arc<Mutex<Dummy>>) {
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let dummy = Arc::new(Mutex::new(Dummy::new()));
        let slot = root.lock().unwrap().add_device(dummy.clone()).unwrap();
        assert_eq!(slot, 1);
        (PciConfigPorts(root.clone()), PciMmioWindow(root), dummy)
    }

    #[test]
    fn enumeration_finds_the_bridge_and_the_device() {
        let (mut ports, _, _) = bus();
        assert_eq!(read32(&mut ports, 0, 0), 0x1237_8086);
        assert_eq!(read32(&mut ports, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(read32(&mut ports, 1, 0), 0x1041_1AF4);
        assert_eq!(read32(&mut ports, 2, 0), 0xFFFF_FFFF, "empty slot");
        // Other functions, other buses and a clear enable bit read as nothing.
        ports.write(0, &(0x8000_0100u32 | 1 << 11).to_le_bytes());
        let mut b = [0u8; 4];
        ports.read(4, &mut b);
        assert_eq!(b, [0xFF; 4]);
        ports.write(0, &0x8001_0800u32.to_le_bytes());
        ports.read(4, &mut b);
        assert_eq!(b, [0xFF; 4]);
        ports.write(0, &0x0000_0800u32.to_le_bytes());
        ports.read(4, &mut b);
        assert_eq!(b, [0xFF; 4]);
        // CONFIG_ADDRESS reads back without its reserved bits.
        ports.write(0, &0xFF00_0803u32.to_le_bytes());
        ports.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0800);
    }

    #[test]
    fn byte_and_word_config_accesses_pick_their_lanes() {
        let (mut ports, _, _) = bus();
        select(&mut ports, 1, 0);
        let mut w = [0u8; 2];
        ports.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1041);
        let mut b = [0u8; 1];
        ports.read(5, &mut b);
        assert_eq!(b[0], 0x1A);
        ports.read(5, &mut w);
        assert_eq!(w, [0xFF; 2], "misaligned word");
    }

    #[test]
    fn firmware_assignment_places_bars_in_the_window_with_decoding_on() {
        let (mut ports, mut window, dummy) = bus();
        assert_eq!(read32(&mut ports, 1, 0x14), 0xC000_0000);
        assert_eq!(read32(&mut ports, 1, 0x20), 0xC000_400C);
        assert_eq!(read32(&mut ports, 1, 0x24), 0);
        assert_ne!(read32(&mut ports, 1, 4) & u32::from(COMMAND_MEMORY), 0);
        let mut b = [0u8; 4];
        window.read(0x4000 + 0x10, &mut b);
        assert_eq!(b, [0x40 | 0x10; 4]);
        window.write(0x24, &[1, 2, 3, 4]);
        window.write(0x7FFE, &[1, 2, 3, 4]); // straddles BAR 4's end: nobody's
        assert_eq!(
            dummy.lock().unwrap().writes,
            vec![(1, 0x24, vec![1, 2, 3, 4])]
        );
    }

    #[test]
    fn the_guest_can_size_and_move_bars() {
        let (mut ports, mut window, _) = bus();
        // Sizing with decoding off, as drivers do.
        write32(&mut ports, 1, 4, 0);
        write32(&mut ports, 1, 0x20, 0xFFFF_FFFF);
        write32(&mut ports, 1, 0x24, 0xFFFF_FFFF);
        assert_eq!(read32(&mut ports, 1, 0x20), 0xFFFF_C00C);
        assert_eq!(read32(&mut ports, 1, 0x24), 0xFFFF_FFFF);
        // Move BAR 4 to 0xD000_0000 and turn decoding back on.
        write32(&mut ports, 1, 0x20, 0xD000_0000);
        write32(&mut ports, 1, 0x24, 0);
        let mut b = [0u8; 4];
        window.read(0x4000, &mut b);
        assert_eq!(b, [0xFF; 4], "decoding is off");
        write32(&mut ports, 1, 4, u32::from(COMMAND_MEMORY));
        window.read(0x1000_0000 + 8, &mut b);
        assert_eq!(b, [0x48; 4]);
        window.read(0x4000, &mut b);
        assert_eq!(b, [0xFF; 4], "the old place is empty");
    }

    #[test]
    fn an_unplugged_slot_reads_all_ones_and_its_bars_stop_decoding() {
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let dummy = Arc::new(Mutex::new(Dummy::new()));
        root.lock().unwrap().add_device(dummy.clone()).unwrap();
        let mut ports = PciConfigPorts(root.clone());
        let mut window = PciMmioWindow(root.clone());
        let taken = root.lock().unwrap().unplug(1).expect("a device was there");
        assert!(!root.lock().unwrap().is_plugged(1));
        assert_eq!(read32(&mut ports, 1, 0), 0xFFFF_FFFF);
        assert_eq!(read32(&mut ports, 1, 0x14), 0xFFFF_FFFF);
        write32(&mut ports, 1, 4, 0); // dropped: nobody there
        let mut b = [0u8; 4];
        window.read(0x4000 + 0x10, &mut b);
        assert_eq!(b, [0xFF; 4]);
        window.write(0x24, &[1, 2, 3, 4]);
        assert!(
            dummy.lock().unwrap().writes.is_empty(),
            "writes are dropped"
        );
        assert!(Arc::ptr_eq(&taken, &(dummy.clone() as SharedPciDevice)));
        // Nothing more to take; the bridge is never taken.
        assert!(root.lock().unwrap().unplug(1).is_none());
        assert!(root.lock().unwrap().unplug(0).is_none());
        assert!(root.lock().unwrap().unplug(9).is_none());
        assert_eq!(read32(&mut ports, 0, 0), 0x1237_8086);
    }

    #[test]
    fn a_replugged_device_gets_the_first_addresses_with_decoding_on() {
        let (mut ports, mut window, _) = bus();
        let root = ports.0.clone();
        // The guest moved BAR 4 before the card was pulled.
        write32(&mut ports, 1, 0x20, 0xD000_0000);
        let _old = root.lock().unwrap().unplug(1).unwrap();
        let fresh = Arc::new(Mutex::new(Dummy::new()));
        assert_eq!(fresh.lock().unwrap().config.command() & COMMAND_MEMORY, 0);
        root.lock().unwrap().replug(1, fresh.clone()).unwrap();
        assert!(root.lock().unwrap().is_plugged(1));
        assert_eq!(read32(&mut ports, 1, 0), 0x1041_1AF4);
        assert_eq!(read32(&mut ports, 1, 0x14), 0xC000_0000);
        assert_eq!(read32(&mut ports, 1, 0x20), 0xC000_400C);
        assert_ne!(read32(&mut ports, 1, 4) & u32::from(COMMAND_MEMORY), 0);
        let mut b = [0u8; 4];
        window.read(0x4000 + 0x10, &mut b);
        assert_eq!(b, [0x40 | 0x10; 4]);
        window.write(0x24, &[9; 4]);
        assert_eq!(fresh.lock().unwrap().writes, vec![(1, 0x24, vec![9; 4])]);
        assert_eq!(
            root.lock().unwrap().replug(1, fresh.clone()),
            Err(PciError::SlotOccupied(1))
        );
        assert_eq!(
            root.lock().unwrap().replug(5, fresh.clone()),
            Err(PciError::NoSuchSlot(5))
        );
        assert_eq!(
            root.lock().unwrap().replug(0, fresh),
            Err(PciError::NoSuchSlot(0))
        );
    }

    #[test]
    fn a_device_with_other_bars_is_refused_at_replug() {
        let (ports, _, _) = bus();
        let root = ports.0.clone();
        root.lock().unwrap().unplug(1).unwrap();
        let bridge = Arc::new(Mutex::new(HostBridge::new()));
        assert_eq!(
            root.lock().unwrap().replug(1, bridge),
            Err(PciError::BarLayout(1))
        );
        assert!(!root.lock().unwrap().is_plugged(1));
        // A later device still gets the next free addresses, after the empty slot's.
        let next = Arc::new(Mutex::new(Dummy::new()));
        assert_eq!(root.lock().unwrap().add_device(next.clone()).unwrap(), 2);
        assert_eq!(
            next.lock().unwrap().config.bar_address(1),
            Some(0xC000_8000)
        );
    }

    #[test]
    fn the_bus_fills_up() {
        let mut root = PciRoot::new();
        for _ in 1..MAX_DEVICES {
            root.add_device(Arc::new(Mutex::new(HostBridge::new())))
                .unwrap();
        }
        assert_eq!(
            root.add_device(Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::BusFull)
        );
    }

    type TwoSlots = (Arc<Mutex<PciRoot>>, Arc<Mutex<Dummy>>, Arc<Mutex<Dummy>>);

    /// Two dummies at slots 1 and 2 on a fresh bus, as the destination builds it.
    fn two_slot_bus() -> TwoSlots {
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let a = Arc::new(Mutex::new(Dummy::new()));
        let b = Arc::new(Mutex::new(Dummy::new()));
        root.lock().unwrap().add_device(a.clone()).unwrap();
        root.lock().unwrap().add_device(b.clone()).unwrap();
        (root, a, b)
    }

    #[test]
    fn the_bus_state_survives_save_restore_save_and_decoding_follows_the_functions() {
        let (root, a, _b) = two_slot_bus();
        let mut ports = PciConfigPorts(root.clone());
        // The guest moves slot 1's BAR 4, then slot 2 is pulled; CONFIG_ADDRESS points at 1.
        write32(&mut ports, 1, 0x20, 0xD000_0000);
        root.lock().unwrap().unplug(2).unwrap();
        write32(&mut ports, 0, 0x0C, 0x0000_4000); // the bridge's latency timer
        select(&mut ports, 1, 0);
        let saved = root.lock().unwrap().save();
        assert_eq!(saved.slots.len(), 2);
        assert!(!saved.slots[1].plugged);
        let function = a.lock().unwrap().config.save_state();

        let (fresh, fa, _fb) = two_slot_bus();
        let restored = {
            let d = fa.lock().unwrap();
            d.config
                .check_state(&function, "dummy", &MMIO_WINDOW)
                .unwrap()
        };
        fa.lock().unwrap().config = restored;
        fresh.lock().unwrap().restore(saved.clone()).unwrap();
        assert_eq!(fresh.lock().unwrap().save(), saved);
        let mut ports = PciConfigPorts(fresh.clone());
        let mut window = PciMmioWindow(fresh.clone());
        let mut b = [0u8; 4];
        ports.read(4, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            0x1041_1AF4,
            "CONFIG_ADDRESS restored"
        );
        assert_eq!(read32(&mut ports, 2, 0), 0xFFFF_FFFF, "slot 2 is empty");
        assert_eq!(read32(&mut ports, 0, 0x0C), 0x0000_4000);
        window.read(0x1000_0000 + 8, &mut b);
        assert_eq!(b, [0x48; 4], "BAR 4 decodes where the guest put it");
        window.read(0x4000, &mut b);
        assert_eq!(b, [0xFF; 4]);
    }

    #[test]
    fn a_last_slot_only_one_side_has_is_taken_when_it_is_empty_on_the_source() {
        // The source had one slot more, emptied before the save (its VF left): accepted.
        let (root, _, _) = two_slot_bus();
        let mut saved = root.lock().unwrap().save();
        let mut gone = saved.slots[1].clone();
        gone.plugged = false;
        saved.slots.push(gone);
        let (fresh, _, _) = two_slot_bus();
        fresh.lock().unwrap().restore(saved).unwrap();
        assert!(fresh.lock().unwrap().is_plugged(2));
        // This bus has one slot more than the source (a VF the source lacked): accepted,
        // and that slot stays empty until it is plugged in.
        let mut saved = root.lock().unwrap().save();
        saved.slots.pop();
        let (fresh, _, _) = two_slot_bus();
        fresh.lock().unwrap().restore(saved).unwrap();
        assert!(fresh.lock().unwrap().is_plugged(1));
        assert!(!fresh.lock().unwrap().is_plugged(2));
    }

    #[test]
    fn a_bus_state_for_other_slots_or_bars_is_refused() {
        let (root, _, _) = two_slot_bus();
        let saved = root.lock().unwrap().save();
        type Mutation = fn(&mut PciRootState);
        let cases: [(&str, Mutation); 5] = [
            ("slots", |s| {
                let extra = s.slots[1].clone();
                s.slots.push(extra);
            }),
            ("slot 1 IDs", |s| s.slots[0].device = 0x1000),
            ("slot 2 BARs", |s| s.slots[1].bars.clear()),
            ("firmware address of BAR 4", |s| {
                s.slots[0].bars[1].1 = 0xFFFF_F000
            }),
            ("next BAR address", |s| s.next_bar = 0),
        ];
        for (field, mutate) in cases {
            let mut bad = saved.clone();
            mutate(&mut bad);
            let (fresh, _, _) = two_slot_bus();
            let before = fresh.lock().unwrap().save();
            let err = fresh.lock().unwrap().restore(bad).unwrap_err();
            assert!(err.to_string().contains(field), "{err} should name {field}");
            assert_eq!(fresh.lock().unwrap().save(), before);
        }
        // Two functions decoding the same addresses.
        let (fresh, fa, fb) = two_slot_bus();
        let at = fa.lock().unwrap().config.bar_address(4).unwrap();
        fb.lock().unwrap().config.set_bar_address(4, at);
        let err = fresh.lock().unwrap().restore(saved).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
    }
}
