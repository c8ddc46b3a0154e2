//! The IOAPIC, for the one thing the kernel uses it for: routing a NIC's interrupt line to a
//! vector, a PCI INTx line when the NIC has no usable MSI-X (the documented fallback) or a
//! virtio-mmio line (QEMU microvm).
//!
//! INTx is programmed edge-triggered, active-high: the NIC handler only sets a flag and
//! sends EOI (no masking); the line stays asserted until the idle loop reads the device's
//! ISR, which lowers it, so every new event is a fresh rising edge. virtio-mmio is
//! level-triggered, active-high: its handler acknowledges the device (which lowers the line)
//! before the EOI, and an event that came in between keeps the line up, so the IOAPIC
//! delivers it again after the EOI (an edge would be lost: virtio-mmio's status is read and
//! acknowledged in two accesses). Under QEMU the lines are active-high.

use core::ptr;

/// Register select and data window, at the IOAPIC's standard address (mapped uncached by
/// `paging::init`).
const IOREGSEL: u64 = super::paging::IOAPIC_PAGE;
const IOWIN: u64 = IOREGSEL + 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;

fn write(reg: u32, value: u32) {
    // SAFETY: the IOAPIC page is mapped uncached (paging::init); selecting a register and
    // writing the window only reprograms interrupt routing.
    unsafe {
        ptr::write_volatile(IOREGSEL as *mut u32, reg);
        ptr::write_volatile(IOWIN as *mut u32, value);
    }
}

fn read(reg: u32) -> u32 {
    // SAFETY: as for `write`; reading the window has no side effects.
    unsafe {
        ptr::write_volatile(IOREGSEL as *mut u32, reg);
        ptr::read_volatile(IOWIN as *const u32)
    }
}

/// How an input signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A rising edge per event (PCI INTx as the kernel uses it).
    Edge,
    /// Asserted while the device has an event (virtio-mmio).
    Level,
}

/// Redirection entry bit: level-triggered.
const LEVEL: u32 = 1 << 15;

/// Routes input `gsi` to `vector` on the local APIC `apic_id`: fixed delivery, physical
/// destination, active-high, unmasked, triggered as `trigger` says. `false` if the IOAPIC
/// has no such input.
pub fn route(gsi: u8, vector: u8, apic_id: u8, trigger: Trigger) -> bool {
    let inputs = ((read(REG_VERSION) >> 16) & 0xFF) + 1;
    if u32::from(gsi) >= inputs {
        return false;
    }
    let reg = REG_REDIRECTION + 2 * u32::from(gsi);
    // High half (destination) first, so the entry is never live with a stale destination.
    write(reg + 1, u32::from(apic_id) << 24);
    let mode = match trigger {
        Trigger::Edge => 0,
        Trigger::Level => LEVEL,
    };
    write(reg, u32::from(vector) | mode);
    true
}
