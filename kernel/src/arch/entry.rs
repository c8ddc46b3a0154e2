//! The two ways into the kernel (docs/boot-abi.md).
//!
//! - `roam_entry64` (the ELF entry, used by host-vmm): long mode and an identity map are
//!   already on, RDI holds the `hvm_start_info` address.
//! - `roam_entry_pvh` (the `XEN_ELFNOTE_PHYS32_ENTRY` note, used by QEMU `-kernel`): 32-bit
//!   protected mode without paging, EBX holds the `hvm_start_info` address. It turns on long
//!   mode with the static boot page tables below and joins the 64-bit path.
//!
//! Both paths are straight-line code: the boot page tables are assembled as data
//! (`.rept`), so no loop runs before Rust code.

use crate::boot::kernel_main;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Size of the boot stack. The app runs on its own guarded 2 MiB stack
/// (`paging::STACK_BASE`), or on this one if RAM has no room for that.
const BOOT_STACK_SIZE: usize = 64 * 1024;

/// TSC at the first instruction of the 64-bit entry: the zero of the monotonic clock.
static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);

/// The TSC value the kernel was entered at.
pub fn entry_tsc() -> u64 {
    ENTRY_TSC.load(Ordering::Relaxed)
}

global_asm!(
    r#"
    /* XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen"): the 32-bit PVH entry point. */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz */
    .long 4                     /* descsz */
    .long 18                    /* type */
    .asciz "Xen"
    .balign 4
    .long roam_entry_pvh
    .popsection

    .pushsection .text.roam_entry, "ax"

    .code32
    .globl roam_entry_pvh
roam_entry_pvh:
    /* EBX = hvm_start_info; CS/DS/SS flat 32-bit, paging off, interrupts off. */
    mov eax, offset roam_pvh_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20                /* CR4.PAE */
    mov cr4, eax
    mov ecx, 0xC0000080         /* IA32_EFER */
    rdmsr
    or eax, 0x100               /* EFER.LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001          /* CR0.PG | CR0.PE: long mode becomes active */
    mov cr0, eax
    lgdt [roam_gdt_ptr]
    /* A far return through the 64-bit code selector leaves compatibility mode. PVH gives
       no stack, so borrow the top of the boot stack for the two pushes. */
    mov esp, offset roam_boot_stack_top
    mov eax, offset roam_pvh_long
    push 0x08
    push eax
    retf

    .code64
roam_pvh_long:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov edi, ebx                /* zero-extends: the 64-bit entry's RDI */

    /* 64-bit entry: RDI = hvm_start_info, RSP undefined, interrupts off. */
    .globl roam_entry64
roam_entry64:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [rip + {entry_tsc}], rax
    lea rsp, [rip + roam_boot_stack_top]
    cld
    call {kernel_main}
    ud2

    .popsection

    /* The stack the kernel boots on. Zeroed RAM: no initialisation. */
    .pushsection .bss.roam_boot_stack, "aw", @nobits
    .balign 16
    .skip {stack_size}
roam_boot_stack_top:
    .popsection

    /* PVH boot page tables: identity map of the first GiB with 2 MiB pages (present,
       writable, PS). Enough for the image (link.ld asserts it ends below 1 GiB) and the
       low-memory boot structures; the kernel replaces them with its own map of RAM. */
    .pushsection .data.roam_page_tables, "aw"
    .balign 4096
roam_pvh_pml4:
    .quad roam_pvh_pdpt + 0x3
    .fill 511, 8, 0
roam_pvh_pdpt:
    .quad roam_pvh_pd + 0x3
    .fill 511, 8, 0
roam_pvh_pd:
    .set roam_pvh_page, 0
    .rept 512
    .quad (roam_pvh_page << 21) | 0x83
    .set roam_pvh_page, roam_pvh_page + 1
    .endr
    .popsection
    "#,
    entry_tsc = sym ENTRY_TSC,
    kernel_main = sym kernel_main,
    stack_size = const BOOT_STACK_SIZE,
);
