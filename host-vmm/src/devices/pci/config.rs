//! One function's 256-byte type-0 configuration header: the bytes, and a mask of the bits the
//! guest may change.
//!
//! Everything the guest can write is described by the mask, so a write is always
//! `bytes = (bytes & !mask) | (value & mask)` and never fails. That covers BAR sizing for free
//! (PCI 3.0, 6.2.5.1): the address bits below the BAR's size are read-only zeros, so writing
//! all ones reads back the size. What a write *means* (a BAR moved, MSI-X enabled) is for the
//! device to react to after the fact.

use crate::devices::DeviceStateError;
use serde::{Deserialize, Serialize};

/// Size of a conventional configuration space.
pub const CONFIG_SIZE: usize = 256;

/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Offset of the status register.
pub const STATUS: usize = 0x06;
/// Offset of BAR 0.
pub const BAR0: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const BAR_COUNT: usize = 6;
/// Offset of the capability pointer.
pub const CAPABILITY_POINTER: usize = 0x34;
/// Offset of the interrupt line register.
pub const INTERRUPT_LINE: usize = 0x3C;
/// First byte available to capabilities.
pub const CAPABILITIES_START: usize = 0x40;

/// Command: decode I/O space.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command: decode memory space (BARs).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx assertion disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status: an INTx interrupt is pending (read-only).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// The identity of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, subclass and programming interface (24 bits).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// A memory BAR's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit address, one register.
    Memory32,
    /// 64-bit address, two registers (this index and the next).
    Memory64 {
        /// Prefetchable memory.
        prefetchable: bool,
    },
}

/// A memory BAR the function implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// Size in bytes: a power of two, at least 16 and below 4 GiB.
    pub size: u64,
    /// Its type.
    pub kind: BarKind,
}

/// Why a header layout was refused (a programming error in a device model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// BAR index out of range, or a 64-bit BAR in the last slot, or the slot is taken.
    #[error("BAR {0} cannot be placed there")]
    BarSlot(usize),
    /// BAR size not a power of two between 16 bytes and 2 GiB.
    #[error("BAR size {0:#x} is not a power of two between 16 B and 2 GiB")]
    BarSize(u64),
    /// The capability list is full.
    #[error("no room for a {0}-byte capability")]
    NoRoom(usize),
}

/// A type-0 configuration header.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Option<BarInfo>; BAR_COUNT],
    /// Where the next capability goes.
    next_capability: usize,
    /// The `next` byte of the last capability added (or the capability pointer).
    last_link: usize,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(0)))
            .field("device", &format_args!("{:#06x}", self.read_u16(2)))
            .field("command", &format_args!("{:#06x}", self.command()))
            .field("bars", &self.bars)
            .finish()
    }
}

impl ConfigSpace {
    /// A header with `ids`, no BARs, no capabilities, decoding off.
    pub fn new(ids: PciIds) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [None; BAR_COUNT],
            next_capability: CAPABILITIES_START,
            last_link: CAPABILITY_POINTER,
        };
        c.set_u16(0x00, ids.vendor);
        c.set_u16(0x02, ids.device);
        c.set_u32(0x08, (ids.class << 8) | u32::from(ids.revision));
        c.set_u16(0x2C, ids.subsystem_vendor);
        c.set_u16(0x2E, ids.subsystem);
        let command_bits =
            COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | (1 << 8) | COMMAND_INTX_DISABLE;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&command_bits.to_le_bytes());
        c.wmask[0x0C] = 0xFF; // cache line size: kept, unused
        c.wmask[0x0D] = 0xFF; // latency timer: kept, unused
        c.wmask[INTERRUPT_LINE] = 0xFF; // the interrupt line is firmware's note to the driver
        c
    }

    /// Declares memory BAR `index`.
    pub fn add_bar(&mut self, index: usize, bar: BarInfo) -> Result<(), LayoutError> {
        let slots = match bar.kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 { .. } => 2,
        };
        if index + slots > BAR_COUNT || (index..index + slots).any(|i| self.slot_taken(i)) {
            return Err(LayoutError::BarSlot(index));
        }
        if !bar.size.is_power_of_two() || bar.size < 16 || bar.size > 1 << 31 {
            return Err(LayoutError::BarSize(bar.size));
        }
        let flags: u32 = match bar.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 { prefetchable } => 0b100 | if prefetchable { 0b1000 } else { 0 },
        };
        let reg = BAR0 + 4 * index;
        self.set_u32(reg, flags);
        let low_mask = !((bar.size - 1) as u32) & !0xF;
        self.wmask[reg..reg + 4].copy_from_slice(&low_mask.to_le_bytes());
        if slots == 2 {
            self.wmask[reg + 4..reg + 8].copy_from_slice(&[0xFF; 4]);
        }
        self.bars[index] = Some(bar);
        Ok(())
    }

    fn slot_taken(&self, index: usize) -> bool {
        self.bars[index].is_some()
            || (index > 0
                && matches!(
                    self.bars[index - 1],
                    Some(BarInfo {
                        kind: BarKind::Memory64 { .. },
                        ..
                    })
                ))
    }

    /// Appends a capability with ID `id` whose bytes after the two-byte header are `body`;
    /// `wmask` (same length as `body`) marks what the guest may write. Returns its offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<usize, LayoutError> {
        let len = 2 + body.len();
        let at = self.next_capability;
        if at + len > CONFIG_SIZE || wmask.len() != body.len() {
            return Err(LayoutError::NoRoom(len));
        }
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + len].copy_from_slice(body);
        self.wmask[at + 2..at + len].copy_from_slice(wmask);
        self.bytes[self.last_link] = at as u8;
        self.last_link = at + 1;
        self.next_capability = (at + len).next_multiple_of(4);
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        Ok(at)
    }

    /// Sets the interrupt pin (1 = INTA) and the line firmware would have written.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.bytes[INTERRUPT_LINE] = line;
        self.bytes[INTERRUPT_LINE + 1] = pin;
    }

    /// The dword at `offset` (rounded down to a dword).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let at = (offset & !3) % CONFIG_SIZE;
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    /// The word at `offset` (which must leave room for two bytes).
    pub fn read_u16(&self, offset: usize) -> u16 {
        match self.bytes.get(offset..offset + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => 0xFFFF,
        }
    }

    /// The byte at `offset`.
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0xFF)
    }

    /// A guest write of `data` at `offset`, through the write mask. Writes that leave the
    /// header are cut at its end.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let at = offset + i;
            if at >= CONFIG_SIZE {
                break;
            }
            let mask = self.wmask[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
        }
    }

    /// Sets a word regardless of the write mask (device-owned registers).
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets a dword regardless of the write mask (device-owned registers).
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Reflects a pending INTx in the status register.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let status = self.read_u16(STATUS) & !STATUS_INTERRUPT;
        let bit = if pending { STATUS_INTERRUPT } else { 0 };
        self.set_u16(STATUS, status | bit);
    }

    /// The BAR declared at `index`.
    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` holds now (whatever decoding says).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let reg = BAR0 + 4 * index;
        let low = u64::from(self.read_u32(reg) & !0xF);
        Some(match bar.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 { .. } => low | (u64::from(self.read_u32(reg + 4)) << 32),
        })
    }

    /// Writes `address` into BAR `index` (as firmware does before the guest runs).
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(bar) = self.bar(index) else { return };
        let reg = BAR0 + 4 * index;
        self.write(reg, &(address as u32).to_le_bytes());
        if let BarKind::Memory64 { .. } = bar.kind {
            self.write(reg + 4, &((address >> 32) as u32).to_le_bytes());
        }
    }

    /// The memory BARs the function decodes now: `(index, address, size)` for each, empty
    /// while memory decoding is off.
    pub fn decoded_bars(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let on = self.command() & COMMAND_MEMORY != 0;
        (0..BAR_COUNT)
            .filter(move |_| on)
            .filter_map(|i| Some((i, self.bar_address(i)?, self.bar(i)?.size)))
    }
}

/// A header as migration saves it: the 256 bytes as the guest sees them (command, status,
/// BARs as programmed, interrupt line, capability registers such as MSI-X control). What the
/// guest cannot write (IDs, BAR types, the capability layout) is saved too and must match the
/// destination's device byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSpaceState {
    /// The header bytes.
    pub bytes: Vec<u8>,
}

impl ConfigSpace {
    /// The header as migration saves it.
    pub fn save_state(&self) -> ConfigSpaceState {
        ConfigSpaceState {
            bytes: self.bytes.to_vec(),
        }
    }

    /// Checks `state` against this (freshly built) header and returns the header it
    /// describes, without changing `self`: the read-only bytes must be this device's (the
    /// status register's INTx bit aside, which the device sets). BARs come back as the guest
    /// programmed them, wherever that is: the bus decodes only those inside the MMIO window
    /// and the first of overlapping ones, here as on the source, so a guest caught sizing a
    /// BAR (all ones) or with one parked elsewhere moves like any other.
    pub fn check_state(
        &self,
        state: &ConfigSpaceState,
        device: &'static str,
    ) -> Result<ConfigSpace, DeviceStateError> {
        let bytes: [u8; CONFIG_SIZE] = state.bytes.as_slice().try_into().map_err(|_| {
            DeviceStateError::invalid(
                device,
                "configuration space",
                format!("{} bytes, not {CONFIG_SIZE}", state.bytes.len()),
            )
        })?;
        for (at, ((&saved, &mine), &mask)) in
            bytes.iter().zip(&self.bytes).zip(&self.wmask).enumerate()
        {
            let mut fixed = !mask;
            if at == STATUS {
                fixed &= !(STATUS_INTERRUPT as u8);
            }
            if (saved ^ mine) & fixed != 0 {
                return Err(DeviceStateError::mismatch(
                    device,
                    format!("configuration byte {at:#04x}"),
                    format!("read-only bits {saved:#04x}, this device has {mine:#04x}"),
                ));
            }
        }
        let mut restored = self.clone();
        restored.bytes = bytes;
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1AF4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1AF4,
            subsystem: 1,
        }
    }

    #[test]
    fn identity_reads_back() {
        let c = ConfigSpace::new(ids());
        assert_eq!(c.read_u32(0), 0x1041_1AF4);
        assert_eq!(c.read_u32(8), 0x0200_0001);
        assert_eq!(c.read_u32(0x2C), 0x0001_1AF4);
        assert_eq!(c.read_u32(0x0C) >> 16 & 0xFF, 0, "header type 0");
    }

    #[test]
    fn bar_sizing_reads_back_the_size_and_keeps_the_type() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(
            1,
            BarInfo {
                size: 0x1000,
                kind: BarKind::Memory32,
            },
        )
        .unwrap();
        c.add_bar(
            4,
            BarInfo {
                size: 0x4000,
                kind: BarKind::Memory64 { prefetchable: true },
            },
        )
        .unwrap();
        c.write(0x14, &[0xFF; 4]);
        assert_eq!(c.read_u32(0x14), 0xFFFF_F000);
        c.write(0x20, &[0xFF; 4]);
        c.write(0x24, &[0xFF; 4]);
        assert_eq!(c.read_u32(0x20), 0xFFFF_C00C);
        assert_eq!(c.read_u32(0x24), 0xFFFF_FFFF);
        // Unimplemented BARs and the ROM BAR read as zero whatever is written.
        c.write(0x10, &[0xFF; 4]);
        c.write(0x30, &[0xFF; 4]);
        assert_eq!(c.read_u32(0x10), 0);
        assert_eq!(c.read_u32(0x30), 0);
        c.set_bar_address(4, 0xC000_4000);
        c.set_bar_address(1, 0xC000_1234);
        assert_eq!(c.bar_address(4), Some(0xC000_4000));
        assert_eq!(
            c.bar_address(1),
            Some(0xC000_1000),
            "low bits are not writable"
        );
        assert_eq!(c.decoded_bars().count(), 0, "decoding is off");
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        let bars: Vec<_> = c.decoded_bars().collect();
        assert_eq!(
            bars,
            vec![(1, 0xC000_1000, 0x1000), (4, 0xC000_4000, 0x4000)]
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        let mut c = ConfigSpace::new(ids());
        let b64 = BarInfo {
            size: 0x4000,
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
        };
        assert_eq!(c.add_bar(5, b64), Err(LayoutError::BarSlot(5)));
        c.add_bar(0, b64).unwrap();
        let b32 = BarInfo {
            size: 0x1000,
            kind: BarKind::Memory32,
        };
        assert_eq!(c.add_bar(1, b32), Err(LayoutError::BarSlot(1)));
        let odd = BarInfo {
            size: 0x1800,
            kind: BarKind::Memory32,
        };
        assert_eq!(c.add_bar(2, odd), Err(LayoutError::BarSize(0x1800)));
    }

    #[test]
    fn capabilities_chain_from_the_pointer() {
        let mut c = ConfigSpace::new(ids());
        let a = c.add_capability(0x11, &[1; 10], &[0; 10]).unwrap();
        let b = c.add_capability(0x09, &[2; 14], &[0; 14]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x4C);
        assert_eq!(c.read_u8(CAPABILITY_POINTER), 0x40);
        assert_eq!(c.read_u8(0x41), 0x4C);
        assert_eq!(c.read_u8(0x4D), 0);
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
        // Read-only: the header bytes and the body without a mask.
        c.write(0x40, &[0xFF; 12]);
        assert_eq!(c.read_u8(0x40), 0x11);
        assert_eq!(c.read_u8(0x42), 1);
        assert!(c.add_capability(0x09, &[0; 200], &[0; 200]).is_err());
    }

    #[test]
    fn only_masked_command_bits_are_writable() {
        let mut c = ConfigSpace::new(ids());
        c.write(COMMAND, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.command(), 0x0507);
        c.write(STATUS, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0, "status is read-only here");
    }
}
