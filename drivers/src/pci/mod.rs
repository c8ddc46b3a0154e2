//! PCI configuration space: function addresses, the [`ConfigAccess`] trait the kernel
//! implements (port I/O at 0xCF8/0xCFC), and bus enumeration.
//!
//! Submodules decode the rest of a type-0 header: [`bar`] (base address registers, sizing,
//! assignment), [`capability`] (the capability list) and [`msix`] (the MSI-X capability and
//! its vector table). Every value read from a device is validated before use: a broken or
//! hostile device makes these functions return errors, never panic or loop forever.
//!
//! Each configuration access is a VM exit (~9 µs here), so enumeration reads as little as
//! possible: one dword per absent device, and bus 0 plus the secondary buses of bridges only.

pub mod bar;
pub mod capability;
#[cfg(test)]
pub(crate) mod fake;
pub mod msix;
pub mod remembered;

use alloc::vec::Vec;
use core::fmt;

/// Offset of the vendor and device IDs (one dword).
pub const VENDOR_DEVICE: u8 = 0x00;
/// Offset of the command (low half) and status (high half) registers.
pub const COMMAND_STATUS: u8 = 0x04;
/// Offset of revision, programming interface, subclass and class.
pub const CLASS_REVISION: u8 = 0x08;
/// Offset of the dword holding the header type (third byte).
pub const HEADER_TYPE_DWORD: u8 = 0x0C;
/// Offset of a bridge's bus numbers (primary, secondary, subordinate).
pub const BRIDGE_BUSES: u8 = 0x18;
/// Offset of the capability pointer (type-0 and type-1 headers).
pub const CAPABILITY_POINTER: u8 = 0x34;
/// Offset of the interrupt line (low byte) and pin (second byte).
pub const INTERRUPT: u8 = 0x3C;

/// Command register: respond to I/O space accesses.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: respond to memory space accesses.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the function may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx assertion disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Header type 0: an endpoint.
pub const HEADER_ENDPOINT: u8 = 0;
/// Header type 1: a PCI-to-PCI bridge.
pub const HEADER_BRIDGE: u8 = 1;
const HEADER_MULTIFUNCTION: u8 = 0x80;

/// The address of one PCI function: bus, device (0..32), function (0..8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, below 32.
    pub device: u8,
    /// Function number, below 8.
    pub function: u8,
}

impl Bdf {
    /// The function `bus:device.function`; `None` when device or function is out of range.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device < 32 && function < 8 {
            Some(Bdf {
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    /// The address word for configuration mechanism #1 (port 0xCF8), without the register.
    pub fn config_address(self) -> u32 {
        0x8000_0000
            | (u32::from(self.bus) << 16)
            | (u32::from(self.device & 31) << 11)
            | (u32::from(self.function & 7) << 8)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// 32-bit access to the 256-byte configuration space of each function.
///
/// `offset` is a dword-aligned register offset; implementations ignore its low two bits.
/// Reads of an absent function return all ones, as the hardware does.
pub trait ConfigAccess {
    /// Reads the dword at `offset` of `bdf`.
    fn read32(&self, bdf: Bdf, offset: u8) -> u32;
    /// Writes the dword at `offset` of `bdf`.
    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32);

    /// Reads the 16-bit register at `offset` (2-byte aligned) through its dword.
    fn read16(&self, bdf: Bdf, offset: u8) -> u16 {
        (self.read32(bdf, offset & !3) >> (u32::from(offset & 2) * 8)) as u16
    }

    /// Reads the byte at `offset` through its dword.
    fn read8(&self, bdf: Bdf, offset: u8) -> u8 {
        (self.read32(bdf, offset & !3) >> (u32::from(offset & 3) * 8)) as u8
    }
}

impl<T: ConfigAccess + ?Sized> ConfigAccess for &mut T {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        (**self).read32(bdf, offset)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        (**self).write32(bdf, offset, value)
    }
}

/// The command register of `bdf`.
pub fn command(access: &impl ConfigAccess, bdf: Bdf) -> u16 {
    access.read16(bdf, COMMAND_STATUS)
}

/// Writes the command register of `bdf`. The status half is written as zeros, which leaves
/// its write-one-to-clear bits alone.
pub fn set_command(access: &mut impl ConfigAccess, bdf: Bdf, command: u16) {
    access.write32(bdf, COMMAND_STATUS, u32::from(command));
}

/// One PCI function found by [`enumerate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Header type (without the multi-function bit).
    pub header_type: u8,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x} header {}",
            self.bdf, self.vendor_id, self.device_id, self.class, self.subclass, self.header_type
        )
    }
}

/// Lists every function on bus 0 and on the buses behind its bridges (each bus scanned once,
/// so a bridge loop cannot recurse forever).
pub fn enumerate(access: &impl ConfigAccess) -> Vec<Function> {
    let mut found = Vec::new();
    let mut scanned = [false; 256];
    let mut pending: Vec<u8> = alloc::vec![0];
    while let Some(bus) = pending.pop() {
        if core::mem::replace(&mut scanned[usize::from(bus)], true) {
            continue;
        }
        for device in 0..32 {
            let Some(first) = probe(access, bus, device, 0) else {
                continue;
            };
            let functions = if first.1 & HEADER_MULTIFUNCTION != 0 {
                8
            } else {
                1
            };
            for function in 0..functions {
                let probed = if function == 0 {
                    Some(first)
                } else {
                    probe(access, bus, device, function)
                };
                let Some((f, _)) = probed else { continue };
                if f.header_type == HEADER_BRIDGE {
                    let secondary = access.read8(f.bdf, BRIDGE_BUSES + 1);
                    if secondary != 0 && !scanned[usize::from(secondary)] {
                        pending.push(secondary);
                    }
                }
                found.push(f);
            }
        }
    }
    found
}

/// Reads the identity of one function; `None` if it is absent. Also returns the raw header
/// type byte (with the multi-function bit).
fn probe(access: &impl ConfigAccess, bus: u8, device: u8, function: u8) -> Option<(Function, u8)> {
    let bdf = Bdf::new(bus, device, function)?;
    let ids = access.read32(bdf, VENDOR_DEVICE);
    let vendor_id = ids as u16;
    if vendor_id == 0xFFFF || vendor_id == 0 {
        return None;
    }
    let class = access.read32(bdf, CLASS_REVISION);
    let header = access.read8(bdf, HEADER_TYPE_DWORD + 2);
    Some((
        Function {
            bdf,
            vendor_id,
            device_id: (ids >> 16) as u16,
            class: (class >> 24) as u8,
            subclass: (class >> 16) as u8,
            header_type: header & !HEADER_MULTIFUNCTION,
        },
        header,
    ))
}

/// A function's legacy interrupt: the pin it uses and the line firmware routed it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intx {
    /// INTA# = 1 ... INTD# = 4.
    pub pin: u8,
    /// The interrupt line (the IOAPIC input on PC machines).
    pub line: u8,
}

/// The legacy interrupt of `bdf`; `None` when it has no pin or firmware did not route it
/// (line 0xFF, the "unknown" value).
pub fn intx(access: &impl ConfigAccess, bdf: Bdf) -> Option<Intx> {
    let word = access.read16(bdf, INTERRUPT);
    let (line, pin) = (word as u8, (word >> 8) as u8);
    ((1..=4).contains(&pin) && line != 0xFF).then_some(Intx { pin, line })
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeConfig, FakeFunction};
    use super::*;

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(bus, device, function).unwrap()
    }

    #[test]
    fn config_address_matches_mechanism_one() {
        assert_eq!(bdf(0, 3, 0).config_address(), 0x8000_1800);
        assert_eq!(bdf(1, 31, 7).config_address(), 0x8001_FF00);
        assert_eq!(Bdf::new(0, 32, 0), None);
        assert_eq!(Bdf::new(0, 0, 8), None);
        assert_eq!(bdf(0, 3, 1).to_string(), "00:03.1");
    }

    #[test]
    fn enumerates_bus_zero_functions_and_bridges() {
        let mut config = FakeConfig::default();
        config.add(bdf(0, 0, 0), FakeFunction::new(0x8086, 0x1237, 0x06, 0x00));
        // A multi-function device: functions 0 and 2 exist.
        let mut f0 = FakeFunction::new(0x8086, 0x7000, 0x06, 0x01);
        f0.set_header_type(0x80);
        config.add(bdf(0, 1, 0), f0);
        config.add(bdf(0, 1, 2), FakeFunction::new(0x8086, 0x7010, 0x01, 0x01));
        // Function 1 of a single-function device is never probed, even if it answers.
        config.add(bdf(0, 2, 0), FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00));
        config.add(bdf(0, 2, 1), FakeFunction::new(0xdead, 0xbeef, 0, 0));
        // A bridge to bus 1, and one on bus 1 that points back at bus 0 (a loop).
        let mut bridge = FakeFunction::new(0x1b36, 0x0001, 0x06, 0x04);
        bridge.set_header_type(HEADER_BRIDGE);
        bridge.set_byte(BRIDGE_BUSES + 1, 1);
        config.add(bdf(0, 5, 0), bridge);
        let mut back = FakeFunction::new(0x1b36, 0x0001, 0x06, 0x04);
        back.set_header_type(HEADER_BRIDGE);
        back.set_byte(BRIDGE_BUSES + 1, 0);
        config.add(bdf(1, 0, 0), back);
        config.add(bdf(1, 3, 0), FakeFunction::new(0x1af4, 0x1000, 0x02, 0x00));

        let found: Vec<_> = enumerate(&config).iter().map(|f| f.bdf).collect();
        assert_eq!(
            found,
            vec![
                bdf(0, 0, 0),
                bdf(0, 1, 0),
                bdf(0, 1, 2),
                bdf(0, 2, 0),
                bdf(0, 5, 0),
                bdf(1, 0, 0),
                bdf(1, 3, 0)
            ]
        );
        let nic = enumerate(&config)[3];
        assert_eq!(
            (nic.vendor_id, nic.device_id, nic.class),
            (0x1af4, 0x1041, 0x02)
        );
        assert_eq!(config.reads_of(bdf(0, 2, 1)), 0);
    }

    #[test]
    fn intx_needs_a_pin_and_a_routed_line() {
        let mut config = FakeConfig::default();
        let mut f = FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00);
        f.set_byte(INTERRUPT, 11);
        f.set_byte(INTERRUPT + 1, 1);
        config.add(bdf(0, 3, 0), f);
        assert_eq!(intx(&config, bdf(0, 3, 0)), Some(Intx { pin: 1, line: 11 }));
        config.function(bdf(0, 3, 0)).set_byte(INTERRUPT, 0xFF);
        assert_eq!(intx(&config, bdf(0, 3, 0)), None);
        config.function(bdf(0, 3, 0)).set_byte(INTERRUPT + 1, 0);
        config.function(bdf(0, 3, 0)).set_byte(INTERRUPT, 11);
        assert_eq!(intx(&config, bdf(0, 3, 0)), None);
    }

    #[test]
    fn command_writes_leave_status_alone() {
        let mut config = FakeConfig::default();
        let mut f = FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00);
        f.set_status(0xFFFF);
        config.add(bdf(0, 3, 0), f);
        set_command(
            &mut config,
            bdf(0, 3, 0),
            COMMAND_MEMORY | COMMAND_BUS_MASTER,
        );
        assert_eq!(command(&config, bdf(0, 3, 0)), 0b110);
        assert_eq!(
            config.last_write(bdf(0, 3, 0)),
            Some((COMMAND_STATUS, 0b110))
        );
    }
}
