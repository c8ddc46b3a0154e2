//! Interrupt entry stubs and the IDT.
//!
//! The IDT itself is built by the linker (kernel/link.ld) from the stub addresses below, so
//! boot only runs LIDT: no loop over gates. Present gates: the 32 exception vectors, the
//! LAPIC timer ([`super::apic::TIMER_VECTOR`]), virtio-net's two vectors
//! ([`super::apic::NET_QUEUE_VECTOR`], [`super::apic::NET_CONFIG_VECTOR`]), the VF's two
//! ([`super::apic::VF_QUEUE_VECTOR`], [`super::apic::VF_OTHER_VECTOR`]), the control
//! channel's ([`super::apic::CONTROL_VECTOR`]), virtio-net's virtio-mmio line
//! ([`super::apic::NET_LINE_VECTOR`]) and the spurious
//! vector ([`super::apic::SPURIOUS_VECTOR`]). Any other vector hits a not-present gate, which the
//! CPU turns into #NP with the vector in the error code, and that is reported like any
//! other exception.
//!
//! The timer and device stubs send EOI (devices also record their event); once the app has
//! threads they then call the scheduler ([`interrupt_entry`]), which may switch threads.
//!
//! Every exception is fatal: the stub pushes the vector (and a zero error code where the CPU
//! pushes none) and calls [`exception_entry`], which hands a copy of the frame to
//! [`crate::fault`]. No general registers are saved because nothing returns.

use super::cpu;
use super::paging::{PAGE_2M, STACK_BASE};
use crate::fault::{self, Exception};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Set by the NIC's "frames arrived" interrupt.
pub const NET_QUEUE_EVENT: u8 = 1 << 0;
/// Set by the NIC's "configuration changed" interrupt.
pub const NET_CONFIG_EVENT: u8 = 1 << 1;

/// Set by the VF's queue interrupt.
pub const VF_QUEUE_EVENT: u8 = 1 << 2;
/// Set by the VF's mailbox/link interrupt.
pub const VF_OTHER_EVENT: u8 = 1 << 3;
/// Set by the control channel's interrupt.
pub const CONTROL_EVENT: u8 = 1 << 4;

/// NIC events seen by the interrupt stubs since the idle loop last looked. The stubs only
/// OR bits in (one instruction, atomic on this one CPU); all work happens in the idle loop.
static NET_EVENTS: AtomicU8 = AtomicU8::new(0);

/// Takes the NIC events (`NET_*_EVENT` bits) signalled since the last call.
#[inline]
pub fn take_net_events() -> u8 {
    NET_EVENTS.swap(0, Ordering::Relaxed)
}

/// Whether NIC events are waiting, without taking them.
#[inline]
pub fn net_events_pending() -> bool {
    NET_EVENTS.load(Ordering::Relaxed) != 0
}

/// virtio-net's virtio-mmio register base, for the line's stub to acknowledge the device
/// (0 until [`set_net_line`]).
static NET_LINE_BASE: AtomicU64 = AtomicU64::new(0);

/// Points the virtio-mmio line's stub at the device whose registers (mapped uncached) start
/// at `base`; call before routing the line. The stub reads `InterruptStatus` (bit 0: used
/// buffers, bit 1: configuration change, the same bits as [`NET_QUEUE_EVENT`] and
/// [`NET_CONFIG_EVENT`]), writes them to `InterruptAck`, which lowers the line, records them
/// and sends EOI: two MMIO accesses per interrupt, nothing left for the idle loop to ack.
pub fn set_net_line(base: u64) {
    NET_LINE_BASE.store(base, Ordering::Relaxed);
}

/// Nonzero once threads run: the timer and device stubs then call [`interrupt_entry`].
static THREADS: AtomicU8 = AtomicU8::new(0);

/// From now on every timer and device interrupt goes through the scheduler
/// (`crate::sched::on_interrupt`), which may switch threads.
pub fn enable_preemption() {
    THREADS.store(1, Ordering::Relaxed);
}

/// Called by the timer and device stubs once threads run, on the interrupted thread's stack
/// with interrupts off, after the EOI.
extern "C" fn interrupt_entry() {
    crate::sched::on_interrupt();
}

/// What the stubs and the CPU leave on the stack, lowest address first.
#[repr(C)]
struct Frame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

global_asm!(
    r#"
    .pushsection .text.roam_entry, "ax"

    .macro ROAM_ISR vector, cpu_pushes_error_code
    .globl roam_isr_\vector
roam_isr_\vector:
    .if \cpu_pushes_error_code == 0
    push 0
    .endif
    push \vector
    jmp roam_exception_common
    .endm

    ROAM_ISR 0, 0
    ROAM_ISR 1, 0
    ROAM_ISR 2, 0
    ROAM_ISR 3, 0
    ROAM_ISR 4, 0
    ROAM_ISR 5, 0
    ROAM_ISR 6, 0
    ROAM_ISR 7, 0
    ROAM_ISR 8, 1
    ROAM_ISR 9, 0
    ROAM_ISR 10, 1
    ROAM_ISR 11, 1
    ROAM_ISR 12, 1
    ROAM_ISR 13, 1
    ROAM_ISR 14, 1
    ROAM_ISR 15, 0
    ROAM_ISR 16, 0
    ROAM_ISR 17, 1
    ROAM_ISR 18, 0
    ROAM_ISR 19, 0
    ROAM_ISR 20, 0
    ROAM_ISR 21, 1
    ROAM_ISR 22, 0
    ROAM_ISR 23, 0
    ROAM_ISR 24, 0
    ROAM_ISR 25, 0
    ROAM_ISR 26, 0
    ROAM_ISR 27, 0
    ROAM_ISR 28, 0
    ROAM_ISR 29, 1
    ROAM_ISR 30, 1
    ROAM_ISR 31, 0

    /* CLD: the System V ABI wants the direction flag clear at every call, and the
       interrupted code may be inside memmove's backward copy (STD ... CLD), where Rust's
       string instructions would run downwards over whatever lies below their buffers. */
roam_exception_common:
    cld
    mov rdi, rsp
    and rsp, -16
    call {exception_entry}
    ud2

    /* LAPIC timer: with one thread it only has to wake the HLT in
       `cpu::wait_for_interrupt`, so all it does is the EOI (a write to LAPIC register 0xB0;
       MOVABS because the address does not fit a sign-extended 32-bit displacement). Once
       threads run it is also the scheduler's tick (roam_isr_schedule). */
    .globl roam_isr_timer
roam_isr_timer:
    jmp roam_eoi_return

    /* NIC interrupts (MSI-X, or INTx through the IOAPIC): record the event for the idle
       loop, EOI, return. Nothing else runs at interrupt time: with threads, the scheduler
       may switch to the idle thread, which does the network's work. */
    .globl roam_isr_net_queue
roam_isr_net_queue:
    or byte ptr [rip + {net_events}], {queue_event}
    jmp roam_eoi_return

    .globl roam_isr_net_config
roam_isr_net_config:
    or byte ptr [rip + {net_events}], {config_event}
    jmp roam_eoi_return

    .globl roam_isr_vf_queue
roam_isr_vf_queue:
    or byte ptr [rip + {net_events}], {vf_queue_event}
    jmp roam_eoi_return

    .globl roam_isr_vf_other
roam_isr_vf_other:
    or byte ptr [rip + {net_events}], {vf_other_event}
    jmp roam_eoi_return

    /* virtio-net's virtio-mmio line (level-triggered): acknowledge the device first, so
       the line is low again at the EOI unless a new event came meanwhile (then the IOAPIC
       delivers once more). Status bits 0 and 1 are NET_QUEUE_EVENT and NET_CONFIG_EVENT. */
    .globl roam_isr_net_line
roam_isr_net_line:
    push rax
    push rcx
    mov rcx, qword ptr [rip + {net_line_base}]
    test rcx, rcx
    jz 2f
    mov eax, dword ptr [rcx + {interrupt_status}]
    mov dword ptr [rcx + {interrupt_ack}], eax
    and al, {queue_event} | {config_event}
    or byte ptr [rip + {net_events}], al
2:
    pop rcx
    pop rax
    jmp roam_eoi_return

    .globl roam_isr_control
roam_isr_control:
    or byte ptr [rip + {net_events}], {control_event}
roam_eoi_return:
    push rax
    xor eax, eax
    movabs dword ptr [{eoi}], eax
    cmp byte ptr [rip + {threads}], 0
    jne roam_isr_schedule
    pop rax
    iretq

    /* Threads run (`enable_preemption`): save the registers a call may clobber (RAX is
       already pushed) and let the scheduler switch threads. The CPU aligned RSP to 16 before
       its 5-word frame; with these 9 pushes the CALL sees it aligned again. The EOI came
       first, so the next tick arrives whichever thread runs when this one resumes. CLD as
       for exceptions: a thread preempted in memmove's backward copy has the direction flag
       set, and the scheduler, and whichever thread it resumes, must not run with it (IRETQ
       gives the preempted thread its own flags back). */
roam_isr_schedule:
    cld
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call {interrupt_entry}
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq

    /* Spurious LAPIC interrupts take no EOI. */
    .globl roam_isr_spurious
roam_isr_spurious:
    iretq

    .popsection
    "#,
    exception_entry = sym exception_entry,
    interrupt_entry = sym interrupt_entry,
    threads = sym THREADS,
    eoi = const super::apic::EOI_ADDRESS,
    net_events = sym NET_EVENTS,
    queue_event = const NET_QUEUE_EVENT,
    config_event = const NET_CONFIG_EVENT,
    vf_queue_event = const VF_QUEUE_EVENT,
    vf_other_event = const VF_OTHER_EVENT,
    control_event = const CONTROL_EVENT,
    net_line_base = sym NET_LINE_BASE,
    interrupt_status = const drivers::virtio_mmio::reg::INTERRUPT_STATUS,
    interrupt_ack = const drivers::virtio_mmio::reg::INTERRUPT_ACK,
);

/// Called by the exception stubs with the frame they built; never returns.
extern "C" fn exception_entry(frame: *const Frame) -> ! {
    // SAFETY: the stub passes its stack pointer, below which the stub pushed the vector and
    // error code and the CPU pushed RIP, CS, RFLAGS, RSP and SS: a complete `Frame`.
    let frame = unsafe { frame.read() };
    let cr2 = (frame.vector == fault::PAGE_FAULT).then(cpu::cr2);
    let guard = STACK_BASE - PAGE_2M..STACK_BASE + 4096;
    let stack_overflow = frame.vector == fault::DOUBLE_FAULT && guard.contains(&frame.rsp);
    fault::exception(&Exception {
        vector: frame.vector,
        error_code: frame.error_code,
        rip: frame.rip,
        rsp: frame.rsp,
        rflags: frame.rflags,
        cs: frame.cs,
        ss: frame.ss,
        cr2,
        stack_overflow,
    })
}

/// Loads the IDT built by the linker.
#[inline]
pub fn load() {
    // SAFETY: roam_idt_ptr (link.ld) describes the static 256-gate IDT, whose present gates
    // point at the stubs above with the kernel code selector.
    unsafe {
        asm!(
            "lidt [rip + roam_idt_ptr]",
            options(nostack, preserves_flags)
        )
    };
}
