//! PCI configuration space through configuration mechanism #1: the address goes to port
//! 0xCF8, the data moves through port 0xCFC. Both QEMU machine types (`pc`, `q35`) and
//! host-vmm's PCI host bridge implement it. Two exits per access, one when the address is
//! the one the last access selected (sizing a BAR writes, reads and restores one register;
//! updating the command register reads then writes it): each exit costs ~20 µs here.

use super::port;
use core::sync::atomic::{AtomicU32, Ordering};
use drivers::pci::{Bdf, ConfigAccess};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// What CONFIG_ADDRESS holds, as this kernel last wrote it (0, without the enable bit, is
/// no address: the first access writes it). Only this module writes the port, and the VMM
/// keeps its value across a move (it is part of the host bridge's migrated state).
static SELECTED: AtomicU32 = AtomicU32::new(0);

/// Configuration access by port I/O. Copies are interchangeable (the selected address is
/// global, as the port is); the kernel only uses it from one CPU, outside interrupt
/// handlers, so an address/data pair is never interleaved with another.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortConfig;

/// Points CONFIG_ADDRESS at `offset` of `bdf`, unless it already does.
fn select(bdf: Bdf, offset: u8) {
    let address = bdf.config_address() | u32::from(offset & 0xFC);
    if SELECTED.load(Ordering::Relaxed) != address {
        // SAFETY: writing CONFIG_ADDRESS only selects a configuration register; it has no
        // memory effects.
        unsafe { port::outl(CONFIG_ADDRESS, address) };
        SELECTED.store(address, Ordering::Relaxed);
    }
}

impl ConfigAccess for PortConfig {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        select(bdf, offset);
        port::inl(CONFIG_DATA)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        select(bdf, offset);
        // SAFETY: the data write changes the function's configuration; the drivers crate
        // decides what to write (a device could be told to DMA, but only to memory the
        // kernel gave it).
        unsafe { port::outl(CONFIG_DATA, value) };
    }
}
