//! GDT and TSS.
//!
//! The descriptors themselves are built by the linker (kernel/link.ld: the TSS descriptor
//! splits the TSS address into bit fields, which only the linker can compute), so loading
//! them is two instructions. The TSS carries one interrupt stack (IST1) for double faults:
//! a kernel stack overflow then still ends in a fault report instead of a triple fault.

use core::arch::{asm, global_asm};

/// Kernel code selector (64-bit), as the boot ABI promises.
pub const KERNEL_CODE: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DATA: u16 = 0x10;
/// TSS selector.
pub const TSS: u16 = 0x18;

/// Size of the double-fault stack.
const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;

// The TSS (104 bytes, Intel SDM Vol. 3 §8.7): only IST1 is used; no I/O permission bitmap
// (its offset points past the limit).
global_asm!(
    r#"
    .pushsection .data.roam_tss, "aw"
    .balign 16
    .globl roam_tss
roam_tss:
    .long 0                     /* reserved */
    .quad 0, 0, 0               /* RSP0-2: unused, the kernel never leaves ring 0 */
    .quad 0                     /* reserved */
    .quad roam_df_stack_top     /* IST1: double fault */
    .quad 0, 0, 0, 0, 0, 0      /* IST2-7 */
    .quad 0                     /* reserved */
    .short 0                    /* reserved */
    .short 104                  /* I/O map base = limit + 1: no bitmap */
    .popsection

    .pushsection .bss.roam_df_stack, "aw", @nobits
    .balign 16
    .skip {df_stack_size}
roam_df_stack_top:
    .popsection
    "#,
    df_stack_size = const DOUBLE_FAULT_STACK_SIZE,
);

/// Loads the kernel's GDT and TSS.
///
/// The code and data selectors keep their values (0x08, 0x10), and both boot entries arrive
/// with descriptors equivalent to ours already cached in CS/DS/SS, so no segment reload is
/// needed: the next IRETQ reloads CS and SS from this GDT.
#[inline]
pub fn load() {
    // SAFETY: roam_gdt_ptr (link.ld) describes the static GDT, whose selectors 0x08/0x10 match
    // the segments in use and whose 0x18 entry is an available TSS; LTR marks it busy, a write
    // the GDT (in .data) can take.
    unsafe {
        asm!(
            "lgdt [rip + roam_gdt_ptr]",
            "ltr {tss:x}",
            tss = in(reg) TSS,
            options(nostack, preserves_flags),
        )
    };
}
