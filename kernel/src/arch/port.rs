//! x86 port I/O. Under KVM every access is a VM exit (~9 µs here), so callers batch.

use core::arch::asm;

/// Reads a byte from `port`.
///
/// Port reads have no memory effects; the devices the kernel reads (COM1 status, PIT
/// status) have no read side effects that could break memory safety.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` only moves a byte from the I/O space into a register; it touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to `port`.
///
/// # Safety
/// The caller must know what the device at `port` does with the write: some ports (DMA
/// controllers, for instance) can write memory.
#[inline(always)]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device's reaction; the instruction itself touches no
    // memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit value to `port`.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit value from `port`.
///
/// Like [`inb`], callers only read ports whose reads have no memory effects (PCI
/// configuration data, here).
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: `in` only moves a dword from the I/O space into a register; it touches no memory.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}
