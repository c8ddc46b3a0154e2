//! An in-memory configuration space for host tests: functions with their 256-byte spaces,
//! BARs that answer sizing writes like hardware, and a log of accesses.

use super::{Bdf, COMMAND_STATUS, ConfigAccess, HEADER_TYPE_DWORD};
use alloc::collections::BTreeMap;
use core::cell::RefCell;

/// One fake function.
#[derive(Clone, Debug)]
pub struct FakeFunction {
    space: [u8; 256],
    /// Writable bits of each BAR (0 = not implemented).
    bar_masks: [u32; 6],
}

impl FakeFunction {
    /// A function with the given IDs and class, no BARs, no capabilities.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8) -> FakeFunction {
        let mut f = FakeFunction {
            space: [0; 256],
            bar_masks: [0; 6],
        };
        f.set_dword(0, u32::from(vendor) | (u32::from(device) << 16));
        f.set_byte(0x0B, class);
        f.set_byte(0x0A, subclass);
        f
    }

    /// Sets one byte of the space.
    pub fn set_byte(&mut self, offset: u8, value: u8) {
        self.space[usize::from(offset)] = value;
    }

    /// Sets one dword of the space.
    pub fn set_dword(&mut self, offset: u8, value: u32) {
        let o = usize::from(offset);
        self.space[o..o + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Reads one dword of the space.
    pub fn dword(&self, offset: u8) -> u32 {
        let o = usize::from(offset & !3);
        u32::from_le_bytes(self.space[o..o + 4].try_into().unwrap())
    }

    /// Sets the header type byte.
    pub fn set_header_type(&mut self, header: u8) {
        self.set_byte(HEADER_TYPE_DWORD + 2, header);
    }

    /// Sets the status register.
    pub fn set_status(&mut self, status: u16) {
        self.space[6..8].copy_from_slice(&status.to_le_bytes());
    }

    /// Makes BAR `index` a BAR of `size` bytes (a power of two) with the given low type bits
    /// and current value; a 64-bit BAR also takes `index + 1`.
    pub fn set_bar(&mut self, index: usize, size: u64, type_bits: u32, address: u64) {
        let is_64 = type_bits & 0b111 == 0b100;
        let io = type_bits & 1 == 1;
        let low_flags = if io { 0b11 } else { 0b1111 };
        let mask = !(size - 1);
        self.bar_masks[index] = (mask as u32) & !low_flags;
        self.set_dword(
            0x10 + 4 * index as u8,
            (address as u32 & !low_flags) | type_bits,
        );
        if is_64 {
            self.bar_masks[index + 1] = (mask >> 32) as u32;
            self.set_dword(0x10 + 4 * (index as u8 + 1), (address >> 32) as u32);
        }
    }

    /// Links a capability with `id` at `offset`, followed by `next`, with `body` after its
    /// two header bytes.
    pub fn add_capability(&mut self, offset: u8, id: u8, next: u8, body: &[u8]) {
        self.set_byte(offset, id);
        self.set_byte(offset + 1, next);
        let o = usize::from(offset) + 2;
        self.space[o..o + body.len()].copy_from_slice(body);
    }
}

/// A fake configuration space: the functions that exist, and an access log.
#[derive(Default, Debug)]
pub struct FakeConfig {
    functions: BTreeMap<Bdf, FakeFunction>,
    reads: RefCell<BTreeMap<Bdf, usize>>,
    writes: BTreeMap<Bdf, (u8, u32)>,
    /// All-ones writes to a BAR register (a sizing), per function.
    sizings: BTreeMap<Bdf, usize>,
}

impl FakeConfig {
    /// Adds a function.
    pub fn add(&mut self, bdf: Bdf, function: FakeFunction) {
        self.functions.insert(bdf, function);
    }

    /// The function at `bdf` (which must exist).
    pub fn function(&mut self, bdf: Bdf) -> &mut FakeFunction {
        self.functions.get_mut(&bdf).unwrap()
    }

    /// How many reads `bdf` has seen.
    pub fn reads_of(&self, bdf: Bdf) -> usize {
        self.reads.borrow().get(&bdf).copied().unwrap_or(0)
    }

    /// How many times a BAR of `bdf` was sized (all ones written to it).
    pub fn bar_sizings(&self, bdf: Bdf) -> usize {
        self.sizings.get(&bdf).copied().unwrap_or(0)
    }

    /// The last write to `bdf`: offset and value.
    pub fn last_write(&self, bdf: Bdf) -> Option<(u8, u32)> {
        self.writes.get(&bdf).copied()
    }
}

impl ConfigAccess for FakeConfig {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        *self.reads.borrow_mut().entry(bdf).or_default() += 1;
        self.functions
            .get(&bdf)
            .map_or(u32::MAX, |f| f.dword(offset & !3))
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        let offset = offset & !3;
        self.writes.insert(bdf, (offset, value));
        let Some(f) = self.functions.get_mut(&bdf) else {
            return;
        };
        match offset {
            0x10..=0x27 => {
                if value == u32::MAX {
                    *self.sizings.entry(bdf).or_default() += 1;
                }
                let index = usize::from((offset - 0x10) / 4);
                let mask = f.bar_masks[index];
                let kept = f.dword(offset) & !mask;
                f.set_dword(offset, (value & mask) | kept);
            }
            COMMAND_STATUS => {
                // Status bits are write-one-to-clear.
                let status = (f.dword(offset) >> 16) & !(value >> 16);
                f.set_dword(offset, (status << 16) | (value & 0xFFFF));
            }
            // IDs, class and header type are read-only.
            0x00 | 0x08 | HEADER_TYPE_DWORD => {}
            _ => f.set_dword(offset, value),
        }
    }
}
