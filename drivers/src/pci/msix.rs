//! MSI-X (PCI Local Bus Specification 3.0, 6.8.2): the capability, its vector table in a
//! memory BAR, and x86 message addresses.
//!
//! Bring-up order, as the specification asks: mask the whole function, enable MSI-X, program
//! and unmask the table entries, then lift the function mask ([`Msix::enable`] does the
//! first two and the last step around a closure that programs the table).

use super::capability::{self, ID_MSIX};
use super::{Bdf, ConfigAccess};
use crate::hal::RegisterIo;
use core::fmt;

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_TABLE_SIZE: u16 = 0x7FF;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
const ENTRY_VECTOR_CONTROL_MASKED: u32 = 1;

/// Where a structure lives: a BAR and an offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarOffset {
    /// BAR index (0..6).
    pub bar: u8,
    /// Byte offset inside the BAR.
    pub offset: u32,
}

/// A function's MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    /// Offset of the capability in configuration space.
    pub cap_offset: u8,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// The vector table.
    pub table: BarOffset,
    /// The pending-bit array.
    pub pba: BarOffset,
}

/// Why MSI-X cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// The table or PBA names a BAR that does not exist (BIR 6 or 7).
    BadBar(u8),
    /// The table does not fit in its BAR (table end, BAR size).
    TableOutsideBar(u64, u64),
    /// A table entry index beyond the table.
    NoSuchEntry(u16),
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsixError::BadBar(bir) => write!(f, "MSI-X structure in nonexistent BAR {bir}"),
            MsixError::TableOutsideBar(end, size) => {
                write!(
                    f,
                    "MSI-X table ends at {end:#x}, beyond its {size:#x}-byte BAR"
                )
            }
            MsixError::NoSuchEntry(i) => write!(f, "MSI-X table has no entry {i}"),
        }
    }
}

fn bar_offset(word: u32) -> Result<BarOffset, MsixError> {
    let bar = (word & 7) as u8;
    if bar > 5 {
        return Err(MsixError::BadBar(bar));
    }
    Ok(BarOffset {
        bar,
        offset: word & !7,
    })
}

impl Msix {
    /// The MSI-X capability of `bdf`: `Ok(None)` when it has none.
    pub fn find(access: &impl ConfigAccess, bdf: Bdf) -> Result<Option<Msix>, MsixError> {
        let Some(cap) = capability::find(access, bdf, ID_MSIX) else {
            return Ok(None);
        };
        let control = cap.header;
        let table = bar_offset(access.read32(bdf, cap.offset.wrapping_add(4)))?;
        let pba = bar_offset(access.read32(bdf, cap.offset.wrapping_add(8)))?;
        Ok(Some(Msix {
            cap_offset: cap.offset,
            table_size: (control & CONTROL_TABLE_SIZE) + 1,
            table,
            pba,
        }))
    }

    /// Size of the vector table in bytes.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.table_size) * ENTRY_SIZE
    }

    /// Checks that the table fits in its BAR of `bar_size` bytes.
    pub fn check_table_fits(&self, bar_size: u64) -> Result<(), MsixError> {
        let end = u64::from(self.table.offset) + self.table_bytes();
        if end > bar_size {
            return Err(MsixError::TableOutsideBar(end, bar_size));
        }
        Ok(())
    }

    fn control(&self, access: &impl ConfigAccess, bdf: Bdf) -> u32 {
        access.read32(bdf, self.cap_offset)
    }

    fn set_control(&self, access: &mut impl ConfigAccess, bdf: Bdf, dword: u32, control: u16) {
        // The low half (ID, next pointer) is read-only: writing it back changes nothing.
        access.write32(
            bdf,
            self.cap_offset,
            (dword & 0xFFFF) | (u32::from(control) << 16),
        );
    }

    /// Enables MSI-X with the whole function masked, lets `program` set up the table, then
    /// lifts the function mask. Enabling MSI-X turns the function's INTx off.
    pub fn enable<A: ConfigAccess, R>(
        &self,
        access: &mut A,
        bdf: Bdf,
        program: impl FnOnce() -> R,
    ) -> R {
        let dword = self.control(access, bdf);
        let control = (dword >> 16) as u16;
        self.set_control(
            access,
            bdf,
            dword,
            control | CONTROL_ENABLE | CONTROL_FUNCTION_MASK,
        );
        let result = program();
        self.set_control(
            access,
            bdf,
            dword,
            (control | CONTROL_ENABLE) & !CONTROL_FUNCTION_MASK,
        );
        result
    }

    /// Turns MSI-X off (back to INTx).
    pub fn disable(&self, access: &mut impl ConfigAccess, bdf: Bdf) {
        let dword = self.control(access, bdf);
        let control = (dword >> 16) as u16;
        self.set_control(
            access,
            bdf,
            dword,
            control & !(CONTROL_ENABLE | CONTROL_FUNCTION_MASK),
        );
    }
}

/// One MSI message: what the device writes, and where, to raise an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

impl MsiMessage {
    /// A fixed, edge-triggered interrupt on `vector` of the local APIC `apic_id`, in
    /// physical destination mode (Intel SDM vol. 3, 11.11: address 0xFEE0_0000 with the
    /// destination in bits 19:12, data = the vector).
    pub fn x86(apic_id: u8, vector: u8) -> MsiMessage {
        MsiMessage {
            address: 0xFEE0_0000 | (u64::from(apic_id) << 12),
            data: u32::from(vector),
        }
    }
}

/// The MSI-X vector table, over its registers.
#[derive(Debug)]
pub struct MsixTable<R: RegisterIo> {
    io: R,
    entries: u16,
}

impl<R: RegisterIo> MsixTable<R> {
    /// The table of `entries` entries at the start of `io` (which must cover
    /// `entries * 16` bytes; accesses beyond it are dropped).
    pub fn new(io: R, entries: u16) -> MsixTable<R> {
        MsixTable { io, entries }
    }

    /// Programs entry `index` with `message` and unmasks it. The vector-control word is
    /// written last, so the entry is never live half-written.
    pub fn program(&mut self, index: u16, message: MsiMessage) -> Result<(), MsixError> {
        let base = self.entry(index)?;
        self.io.write32(base + 12, ENTRY_VECTOR_CONTROL_MASKED);
        self.io.write32(base, message.address as u32);
        self.io.write32(base + 4, (message.address >> 32) as u32);
        self.io.write32(base + 8, message.data);
        self.io.write32(base + 12, 0);
        Ok(())
    }

    /// Masks entry `index`.
    pub fn mask(&mut self, index: u16) -> Result<(), MsixError> {
        let base = self.entry(index)?;
        self.io.write32(base + 12, ENTRY_VECTOR_CONTROL_MASKED);
        Ok(())
    }

    fn entry(&self, index: u16) -> Result<usize, MsixError> {
        if index >= self.entries {
            return Err(MsixError::NoSuchEntry(index));
        }
        Ok(usize::from(index) * ENTRY_SIZE as usize)
    }

    /// The register access, back.
    pub fn into_inner(self) -> R {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeConfig, FakeFunction};
    use super::super::{COMMAND_STATUS, STATUS_CAPABILITIES};
    use super::*;

    const F: Bdf = Bdf {
        bus: 0,
        device: 3,
        function: 0,
    };

    /// QEMU's virtio-net-pci layout: MSI-X at 0x98, 3 vectors, table at BAR 1 offset 0, PBA
    /// at BAR 1 offset 0x800.
    fn config() -> FakeConfig {
        let mut f = FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00);
        f.set_status(STATUS_CAPABILITIES);
        f.set_byte(super::super::CAPABILITY_POINTER, 0x84);
        f.add_capability(0x84, capability::ID_VENDOR, 0x98, &[0x14, 0x03]);
        f.add_capability(0x98, ID_MSIX, 0x00, &[0x02, 0x00]);
        f.set_dword(0x98 + 4, 0x0000_0001);
        f.set_dword(0x98 + 8, 0x0000_0801);
        let mut c = FakeConfig::default();
        c.add(F, f);
        c
    }

    /// A register file backed by memory, for the table.
    #[derive(Default)]
    struct Regs(Vec<u32>);

    impl RegisterIo for Regs {
        fn read8(&self, offset: usize) -> u8 {
            (self.read32(offset & !3) >> ((offset & 3) * 8)) as u8
        }
        fn read16(&self, offset: usize) -> u16 {
            (self.read32(offset & !3) >> ((offset & 2) * 8)) as u16
        }
        fn read32(&self, offset: usize) -> u32 {
            self.0.get(offset / 4).copied().unwrap_or(u32::MAX)
        }
        fn write16(&mut self, _offset: usize, _value: u16) {
            unimplemented!()
        }
        fn write32(&mut self, offset: usize, value: u32) {
            if let Some(w) = self.0.get_mut(offset / 4) {
                *w = value;
            }
        }
    }

    #[test]
    fn finds_the_table_and_pba() {
        let msix = Msix::find(&config(), F).unwrap().unwrap();
        assert_eq!(msix.cap_offset, 0x98);
        assert_eq!(msix.table_size, 3);
        assert_eq!(msix.table, BarOffset { bar: 1, offset: 0 });
        assert_eq!(
            msix.pba,
            BarOffset {
                bar: 1,
                offset: 0x800
            }
        );
        assert_eq!(msix.table_bytes(), 48);
        assert_eq!(msix.check_table_fits(0x1000), Ok(()));
        assert_eq!(
            msix.check_table_fits(32),
            Err(MsixError::TableOutsideBar(48, 32))
        );
    }

    #[test]
    fn no_capability_is_not_an_error() {
        let mut c = config();
        c.function(F).set_status(0);
        assert_eq!(Msix::find(&c, F), Ok(None));
    }

    #[test]
    fn rejects_nonexistent_bars() {
        let mut c = config();
        c.function(F).set_dword(0x98 + 4, 0x0000_1006);
        assert_eq!(Msix::find(&c, F), Err(MsixError::BadBar(6)));
    }

    #[test]
    fn enable_sets_enable_and_lifts_the_function_mask() {
        let mut c = config();
        let msix = Msix::find(&c, F).unwrap().unwrap();
        msix.enable(&mut c, F, || ());
        let control = (c.function(F).dword(0x98) >> 16) as u16;
        assert_eq!(control & CONTROL_ENABLE, CONTROL_ENABLE);
        assert_eq!(control & CONTROL_FUNCTION_MASK, 0);
        assert_eq!(
            control & CONTROL_TABLE_SIZE,
            2,
            "table size is read-only data kept"
        );
        // The capability header bytes were written back unchanged.
        assert_eq!(c.function(F).dword(0x98) & 0xFFFF, 0x0011);
        msix.disable(&mut c, F);
        assert_eq!(c.function(F).dword(0x98) >> 16, 0x0002);
        // Status register untouched.
        assert_eq!(
            c.function(F).dword(COMMAND_STATUS) >> 16,
            u32::from(STATUS_CAPABILITIES)
        );
    }

    #[test]
    fn programs_x86_messages_into_the_table() {
        let mut table = MsixTable::new(Regs(vec![0; 12]), 3);
        table.program(1, MsiMessage::x86(2, 33)).unwrap();
        let regs = table.into_inner();
        assert_eq!(&regs.0[4..8], &[0xFEE0_2000, 0, 33, 0]);
        assert_eq!(&regs.0[0..4], &[0, 0, 0, 0]);
        let mut table = MsixTable::new(regs, 3);
        assert_eq!(
            table.program(3, MsiMessage::x86(0, 33)),
            Err(MsixError::NoSuchEntry(3))
        );
        table.mask(1).unwrap();
        assert_eq!(table.into_inner().0[7], 1);
    }
}
