//! Finding the VF on PCI (`docs/ixgbevf.md` §1): IDs, the register BAR, bus mastering and MSI-X.
//!
//! The kernel maps what [`probe`] returns (the register region as the driver's
//! [`RegisterIo`], the MSI-X table region for [`VfFunction::enable_msix`]), so this module
//! never maps memory itself.

use super::Error;
use crate::hal::RegisterIo;
use crate::pci::bar::{self, Region, Window};
use crate::pci::msix::{MsiMessage, Msix, MsixTable};
use crate::pci::{self, Bdf, ConfigAccess};
use ixgbevf_regs::{BAR_SIZE, DEVICE_ID_82599_VF, REGS_BAR, VENDOR_ID};

/// MSI-X table entry (and VTIVAR vector) of queue 0's receive and transmit causes.
pub const QUEUE_ENTRY: u16 = 0;
/// MSI-X table entry (and VTIVAR_MISC vector) of mailbox and link causes.
pub const OTHER_ENTRY: u16 = 1;

/// Whether `function` is an 82599 VF.
pub fn matches(function: &pci::Function) -> bool {
    function.vendor_id == VENDOR_ID && function.device_id == DEVICE_ID_82599_VF
}

/// The interrupts the caller wants: IDT vectors on one local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptRequest {
    /// Destination local APIC.
    pub apic_id: u8,
    /// Vector for "frames arrived or were sent" (queue 0).
    pub queue_vector: u8,
    /// Vector for "mailbox message or link change" (call [`super::Ixgbevf::service`]).
    pub other_vector: u8,
}

/// A VF found on the bus and turned on (memory decoding and bus mastering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfFunction {
    /// Its address.
    pub bdf: Bdf,
    /// The register space (BAR0): map it and hand it to [`super::Ixgbevf::new`].
    pub registers: Region,
    /// Its MSI-X capability (at least two entries).
    pub msix: Msix,
    /// The MSI-X table (entries 0 and 1): map it for [`VfFunction::enable_msix`].
    pub msix_table: Region,
}

/// Checks that `bdf` is an 82599 VF, sizes its BARs (giving unassigned memory BARs addresses
/// from `window` when given) and goes on as [`probe_sized`].
pub fn probe(
    access: &mut impl ConfigAccess,
    bdf: Bdf,
    window: Option<&mut Window>,
) -> Result<VfFunction, Error> {
    check_ids(access, bdf)?;
    let bars = bar::read_assigned(access, bdf, window).map_err(Error::Bar)?;
    probe_sized(access, bdf, &bars)
}

fn check_ids(access: &impl ConfigAccess, bdf: Bdf) -> Result<(), Error> {
    let ids = access.read32(bdf, pci::VENDOR_DEVICE);
    let (vendor, device) = (ids as u16, (ids >> 16) as u16);
    if vendor != VENDOR_ID || device != DEVICE_ID_82599_VF {
        return Err(Error::NotAVf(vendor, device));
    }
    Ok(())
}

/// [`probe`] with the BARs the caller already sized ([`bar::read_assigned`], when it had to
/// map them anyway), so nothing sizes them twice: checks the IDs, finds the register BAR and
/// the MSI-X table, and turns on memory decoding and bus mastering (INTx off: VFs have none).
pub fn probe_sized(
    access: &mut impl ConfigAccess,
    bdf: Bdf,
    bars: &[Option<bar::Bar>; bar::BAR_COUNT as usize],
) -> Result<VfFunction, Error> {
    check_ids(access, bdf)?;
    let registers = bars[usize::from(REGS_BAR)]
        .and_then(|b| b.region(0, BAR_SIZE))
        .ok_or(Error::BadBar(REGS_BAR))?;
    let msix = match Msix::find(access, bdf) {
        Ok(Some(m)) if m.table_size >= 2 => m,
        Ok(_) => return Err(Error::NoMsix),
        Err(e) => return Err(Error::Msix(e)),
    };
    let table_bar = msix.table.bar;
    let msix_table = bars
        .get(usize::from(table_bar))
        .copied()
        .flatten()
        .and_then(|b| {
            b.region(
                u64::from(msix.table.offset),
                2 * crate::pci::msix::ENTRY_SIZE,
            )
        })
        .ok_or(Error::BadBar(table_bar))?;
    let command = pci::command(access, bdf);
    pci::set_command(
        access,
        bdf,
        command | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE,
    );
    Ok(VfFunction {
        bdf,
        registers,
        msix,
        msix_table,
    })
}

impl VfFunction {
    /// Enables MSI-X with entry [`QUEUE_ENTRY`] → `irq.queue_vector` and [`OTHER_ENTRY`] →
    /// `irq.other_vector`; `table` is the mapped [`VfFunction::msix_table`]. The VF's own
    /// interrupt registers are programmed by the driver.
    pub fn enable_msix(
        &self,
        access: &mut impl ConfigAccess,
        table: impl RegisterIo,
        irq: InterruptRequest,
    ) -> Result<(), Error> {
        let mut table = MsixTable::new(table, 2);
        let programmed = self.msix.enable(access, self.bdf, || {
            table.program(QUEUE_ENTRY, MsiMessage::x86(irq.apic_id, irq.queue_vector))?;
            table.program(OTHER_ENTRY, MsiMessage::x86(irq.apic_id, irq.other_vector))
        });
        if let Err(e) = programmed {
            self.msix.disable(access, self.bdf);
            return Err(Error::Msix(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::ID_MSIX;
    use crate::pci::fake::{FakeConfig, FakeFunction};
    use crate::pci::{CAPABILITY_POINTER, STATUS_CAPABILITIES};
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    const VF: Bdf = Bdf {
        bus: 0,
        device: 4,
        function: 0,
    };

    /// An 82599 VF as host-vmm presents it: BAR0 64-bit 16 KiB registers, BAR3 16 KiB with
    /// the MSI-X table at 0 (3 entries) and the PBA at 0x2000.
    fn vf(table_entries: u16) -> FakeConfig {
        let mut f = FakeFunction::new(VENDOR_ID, DEVICE_ID_82599_VF, 0x02, 0x00);
        f.set_status(STATUS_CAPABILITIES);
        f.set_byte(CAPABILITY_POINTER, 0x70);
        let control = (table_entries - 1).to_le_bytes();
        f.add_capability(0x70, ID_MSIX, 0x00, &control);
        f.set_dword(0x70 + 4, 3);
        f.set_dword(0x70 + 8, 0x2000 | 3);
        f.set_bar(0, 0x4000, 0b0100, 0xC000_0000);
        f.set_bar(3, 0x4000, 0b0100, 0xC000_4000);
        let mut c = FakeConfig::default();
        c.add(VF, f);
        c
    }

    #[test]
    fn finds_registers_and_msix_table_and_turns_on_bus_mastering() {
        let mut c = vf(3);
        let found = probe(&mut c, VF, None).unwrap();
        assert_eq!(
            (found.registers.phys(), found.registers.len()),
            (0xC000_0000, 0x4000)
        );
        assert_eq!(
            (found.msix_table.phys(), found.msix_table.len()),
            (0xC000_4000, 32)
        );
        assert_eq!(found.msix.table_size, 3);
        let command = crate::pci::command(&c, VF);
        assert_eq!(
            command & (pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE),
            pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE
        );
    }

    #[test]
    fn probe_sized_takes_the_callers_bars_and_sizes_none() {
        let mut c = vf(3);
        let bars = bar::read_assigned(&mut c, VF, None).unwrap();
        let sized = c.bar_sizings(VF);
        assert!(sized > 0, "reading the BARs sizes them");
        let found = probe_sized(&mut c, VF, &bars).unwrap();
        assert_eq!(c.bar_sizings(VF), sized, "probe_sized sized again");
        assert_eq!(found, probe(&mut vf(3), VF, None).unwrap());
        let mut other = vf(3);
        other.add(VF, FakeFunction::new(VENDOR_ID, 0x10FB, 0x02, 0x00));
        assert_eq!(
            probe_sized(&mut other, VF, &bars),
            Err(Error::NotAVf(0x8086, 0x10FB))
        );
    }

    #[test]
    fn refuses_other_devices_missing_bars_and_short_msix() {
        let mut c = vf(3);
        c.add(VF, FakeFunction::new(VENDOR_ID, 0x10FB, 0x02, 0x00));
        assert_eq!(probe(&mut c, VF, None), Err(Error::NotAVf(0x8086, 0x10FB)));
        assert_eq!(probe(&mut vf(1), VF, None), Err(Error::NoMsix));
        // An unassigned BAR0 without a window to assign it from.
        let mut c = vf(3);
        c.function(VF).set_bar(0, 0x4000, 0b0100, 0);
        assert_eq!(probe(&mut c, VF, None), Err(Error::BadBar(0)));
        // ... is assigned from one.
        let mut window = bar::Window::new(0xD000_0000, 0xD001_0000);
        let found = probe(&mut c, VF, Some(&mut window)).unwrap();
        assert_eq!(found.registers.phys(), 0xD000_0000);
        // A register BAR too small for the register map.
        let mut c = vf(3);
        c.function(VF).set_bar(0, 0x1000, 0, 0xC000_0000);
        assert_eq!(probe(&mut c, VF, None), Err(Error::BadBar(0)));
    }

    /// The MSI-X table as memory, shared with the test.
    #[derive(Clone, Default)]
    struct Table(Rc<RefCell<Vec<u32>>>);

    impl RegisterIo for Table {
        fn read8(&self, _: usize) -> u8 {
            0
        }
        fn read16(&self, _: usize) -> u16 {
            0
        }
        fn read32(&self, offset: usize) -> u32 {
            self.0.borrow().get(offset / 4).copied().unwrap_or(u32::MAX)
        }
        fn write16(&mut self, _: usize, _: u16) {}
        fn write32(&mut self, offset: usize, value: u32) {
            if let Some(w) = self.0.borrow_mut().get_mut(offset / 4) {
                *w = value;
            }
        }
    }

    #[test]
    fn programs_queue_and_other_entries() {
        let mut c = vf(3);
        let found = probe(&mut c, VF, None).unwrap();
        let table = Table(Rc::new(RefCell::new(alloc::vec![0xFFFF_FFFF; 12])));
        let irq = InterruptRequest {
            apic_id: 2,
            queue_vector: 40,
            other_vector: 41,
        };
        found.enable_msix(&mut c, table.clone(), irq).unwrap();
        let t = table.0.borrow();
        assert_eq!(&t[0..4], &[0xFEE0_2000, 0, 40, 0]);
        assert_eq!(&t[4..8], &[0xFEE0_2000, 0, 41, 0]);
        // Entry 2 is left alone (masked since reset).
        assert_eq!(t[8..12], [0xFFFF_FFFF; 4]);
        // MSI-X on, function mask off.
        let control = c.function(VF).dword(0x70) >> 16;
        assert_eq!(control & 0xC000, 0x8000);
    }
}
