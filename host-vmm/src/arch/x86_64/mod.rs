//! The x86_64 boot state of docs/boot-abi.md: what host-vmm writes below 1 MiB
//! (GDT, `hvm_start_info`, memory map, command line, page tables) and the vCPU state the
//! 64-bit entry expects (long mode, flat segments, CPUID).
//!
//! These modules compute values and write bytes into guest memory; they never call KVM, so
//! they are unit-tested without `/dev/kvm`.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod paging;
pub mod regs;
pub mod start_info;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Guest-physical address of the `hvm_start_info` (passed in RDI).
pub const START_INFO_ADDR: u64 = 0x6000;
/// Guest-physical address of the memory map the `hvm_start_info` points at.
pub const MEMMAP_ADDR: u64 = 0x6100;
/// Guest-physical address of the NUL-terminated command line.
pub const CMDLINE_ADDR: u64 = 0x7000;
/// Guest-physical address of the PML4; the PDPT and one PD per GiB follow, 4 KiB apart.
pub const PML4_ADDR: u64 = 0x9000;
/// Guest-physical address of the PDPT.
pub const PDPT_ADDR: u64 = 0xA000;
/// Guest-physical address of the first page directory (the first GiB).
pub const PD_ADDR: u64 = 0xB000;
/// Lowest address an image may load at: everything below belongs to the boot structures.
pub const IMAGE_MIN_ADDR: u64 = 0x10_0000;

/// Where KVM puts the real-mode TSS it needs on Intel (three pages), inside the MMIO hole and
/// so never in guest RAM (which ends at 3 GiB at most).
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;
/// Where KVM puts its identity-map page on Intel, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;

// KVM's own pages must never land in guest RAM.
const _: () = assert!(
    KVM_IDENTITY_MAP_ADDR >= crate::config::MEM_MAX && KVM_TSS_ADDR >= crate::config::MEM_MAX
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CMDLINE_MAX, MEM_MAX};

    #[test]
    fn boot_structures_do_not_overlap_and_stay_below_1_mib() {
        let gib = MEM_MAX.div_ceil(1 << 30);
        let regions = [
            (GDT_ADDR, gdt::GDT_SIZE as u64),
            (START_INFO_ADDR, start_info::START_INFO_SIZE as u64),
            (MEMMAP_ADDR, start_info::MEMMAP_ENTRY_SIZE as u64),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, gib * 0x1000),
        ];
        for (i, &(a, alen)) in regions.iter().enumerate() {
            assert!(a + alen <= IMAGE_MIN_ADDR);
            for &(b, blen) in &regions[i + 1..] {
                assert!(a + alen <= b || b + blen <= a, "{a:#x} overlaps {b:#x}");
            }
        }
    }
}
