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
//! Layout: this file is the bus (the root, its ports and window, the host bridge);
//! `state.rs` holds the bus's migration state as plain data ([`PciRootState`],
//! [`PciSlotState`]), [`config`] the header and its write mask, [`msix`] MSI-X (each with the
//! saved state of that part of a function, which the function's own state embeds), and
//! `tests.rs` the unit tests.

pub mod config;
pub mod msix;
mod state;

#[cfg(test)]
mod tests;

pub use state::{PciRootState, PciSlotState};

use super::{BusDevice, DeviceStateError, Persist};
use config::{BarKind, COMMAND, COMMAND_MEMORY, ConfigSpace, PciIds};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC..0xD00.
pub const CONFIG_PORT_BASE: u64 = 0xCF8;
/// The two registers, four ports each.
pub const CONFIG_PORT_LEN: u64 = 8;
/// Where BARs live: above the 3 GiB of RAM at most, below the IOAPIC (docs/boot-abi.md).
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
        let bridge_config = bridge.config.check_state(&state.bridge, DEV)?;
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
