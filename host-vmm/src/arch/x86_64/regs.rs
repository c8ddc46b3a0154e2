//! vCPU register state at the 64-bit entry: long mode with paging on, the flat GDT
//! segments, interrupts off, `RIP` = the ELF entry and `RDI` = the `hvm_start_info`.
//!
//! No MSRs are written: KVM's reset values (the LAPIC enabled at 0xFEE0_0000 as the boot
//! CPU, the default PAT, TSC 0) are what the kernel expects, and EFER travels with the
//! special registers.

use super::gdt::{self, CODE_SELECTOR, DATA_SELECTOR};
use super::{GDT_ADDR, PML4_ADDR, START_INFO_ADDR};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// CR0: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: bit 1 is reserved and always set; IF (bit 9) is clear.
pub const RFLAGS_BOOT: u64 = 0x2;

/// General-purpose registers at entry. `RSP` is left 0: the ABI leaves it undefined and the
/// kernel switches to its own stack before using one.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi: START_INFO_ADDR,
        rflags: RFLAGS_BOOT,
        ..Default::default()
    }
}

/// Puts `sregs` (as read from a fresh vCPU, so the APIC base and the TR/LDT reset state stay
/// as KVM set them) into long mode with the boot GDT's segments and identity map.
pub fn set_boot_sregs(sregs: &mut kvm_sregs) {
    sregs.cs = gdt::segment(CODE_SELECTOR);
    let data = gdt::segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt::GDT_SIZE - 1) as u16;
    // No IDT until the kernel loads its own: an early exception then ends in a triple fault
    // (reported as such) rather than in a jump through garbage.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // Replace CR0 outright: the reset value has CD and NW set, which would disable caching.
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_at_entry() {
        let r = boot_regs(0x10_0040);
        assert_eq!(r.rip, 0x10_0040);
        assert_eq!(r.rdi, 0x6000);
        assert_eq!(r.rflags, 0x2);
        assert_eq!(r.rsp, 0);
    }

    #[test]
    fn long_mode_with_paging_and_the_boot_gdt() {
        let mut s = kvm_sregs {
            apic_base: 0xFEE0_0900,
            cr0: 0x6000_0010,
            ..Default::default()
        };
        s.tr.type_ = 11;
        set_boot_sregs(&mut s);
        assert_eq!(s.cr0, 0x8000_0031, "PE|ET|NE|PG, caching on");
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 23));
        assert_eq!(s.cs.selector, 0x08);
        assert_eq!(s.cs.l, 1);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x10);
            assert_eq!(seg.present, 1);
        }
        assert_eq!(s.apic_base, 0xFEE0_0900, "APIC base untouched");
        assert_eq!(s.tr.type_, 11, "TR reset state untouched");
    }
}
