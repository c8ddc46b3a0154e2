//! PCI configuration space through configuration mechanism #1: the address goes to port
//! 0xCF8, the data moves through port 0xCFC. Both QEMU machine types (`pc`, `q35`) and
//! host-vmm's PCI host bridge implement it. Two exits per access.

use super::port;
use drivers::pci::{Bdf, ConfigAccess};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Configuration access by port I/O. Stateless, so copies are interchangeable; the kernel
/// only uses it from one CPU, outside interrupt handlers, so an address/data pair is never
/// interleaved with another.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortConfig;

impl ConfigAccess for PortConfig {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        // SAFETY: writing CONFIG_ADDRESS only selects a configuration register; it has no
        // memory effects.
        unsafe {
            port::outl(
                CONFIG_ADDRESS,
                bdf.config_address() | u32::from(offset & 0xFC),
            )
        };
        port::inl(CONFIG_DATA)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        // SAFETY: as for `read32`. The data write changes the function's configuration; the
        // drivers crate decides what to write (a device could be told to DMA, but only to
        // memory the kernel gave it).
        unsafe {
            port::outl(
                CONFIG_ADDRESS,
                bdf.config_address() | u32::from(offset & 0xFC),
            );
            port::outl(CONFIG_DATA, value);
        }
    }
}
