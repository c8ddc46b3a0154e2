//! Switching the CPU between kernel threads, and a new thread's first stack.
//!
//! A thread that is not running is its stack pointer: [`switch`] pushes the callee-saved
//! registers (RBX, RBP, R12–R15) on the old stack, stores RSP, loads the new one and pops
//! them back. Everything else the System V ABI lets a call clobber; guest code is
//! soft-float, so there is no FPU or SSE state to keep. A preempted thread's other registers
//! sit below it on the same stack, where the interrupt stub saved them (`idt`).
//!
//! Stacks come from the heap (identity-mapped 2 MiB pages: no room for a 4 KiB guard page),
//! with a canary word at the lowest address that the scheduler checks whenever the thread is
//! switched out, so an overflow is reported instead of silently corrupting the heap for long.

use crate::heap::HEAP;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::naked_asm;

/// The word at the bottom of every thread stack while it has not overflowed.
pub const STACK_CANARY: u64 = 0x524f_414d_5354_4b21;

/// Stacks are page-aligned allocations.
const STACK_ALIGN: usize = 4096;

/// Saves the running thread's callee-saved registers on its stack and its stack pointer at
/// `*save`, then resumes the thread whose stack pointer is `next`. Returns when another
/// switch names the stack pointer stored at `*save`.
///
/// # Safety
/// Interrupts must be off. `save` must be valid for a write; `next` must come from an
/// earlier [`switch`] (stored through its `save`) or from [`new_stack`], its stack mapped
/// and not in use by the running thread.
#[unsafe(naked)]
pub unsafe extern "C" fn switch(save: *mut u64, next: u64) {
    // SAFETY: the caller guarantees both stacks; the pushes and pops are symmetric, so the
    // resumed thread finds exactly the registers it saved, and RET returns into its caller.
    naked_asm!(
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov [rdi], rsp",
        "mov rsp, rsi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "ret",
    )
}

/// Where a new thread starts: [`switch`] pops R12 = `func`, R13 = `arg`, R14 = `exit` and
/// returns here. Interrupts come on (threads are preemptible), `func(arg)` runs, then
/// `exit`, which never returns.
#[unsafe(naked)]
unsafe extern "C" fn thread_start() -> ! {
    // SAFETY: reached only by `switch`'s RET on a stack `new_stack` built, whose saved
    // registers hold valid function pointers; AND realigns RSP for the calls.
    naked_asm!(
        "sti",
        "mov rdi, r13",
        "and rsp, -16",
        "call r12",
        "call r14",
        "ud2",
    )
}

/// A thread's stack: the heap allocation and the stack pointer [`switch`] starts it from.
#[derive(Clone, Copy, Debug)]
pub struct Stack {
    /// Lowest address (the canary's).
    pub base: u64,
    /// Bytes.
    pub size: u64,
    /// The initial stack pointer.
    pub rsp: u64,
}

/// Allocates a `size`-byte stack (rounded up to 4 KiB) whose first switch runs `func(arg)`
/// with interrupts on, then `exit`. `None` when the heap has no room.
pub fn new_stack(
    size: usize,
    func: extern "C" fn(usize),
    arg: usize,
    exit: extern "C" fn() -> !,
) -> Option<Stack> {
    let size = size.checked_next_multiple_of(STACK_ALIGN)?.max(STACK_ALIGN);
    let layout = Layout::from_size_align(size, STACK_ALIGN).ok()?;
    // SAFETY: the layout's size is nonzero.
    let base = unsafe { HEAP.alloc(layout) };
    if base.is_null() {
        return None;
    }
    let top = base as u64 + size as u64;
    // The frame `switch` pops, lowest address first, below an empty slot at the top.
    let frame: [u64; 7] = [
        0,                                // R15
        exit as usize as u64,             // R14
        arg as u64,                       // R13
        func as usize as u64,             // R12
        0,                                // RBP
        0,                                // RBX
        thread_start as *const () as u64, // return address
    ];
    let rsp = top - 8 * (frame.len() as u64 + 1);
    // SAFETY: `base..top` is a fresh allocation of `size >= 4096` bytes, page-aligned; the
    // frame (56 bytes at `rsp`, 8-aligned) and the canary (8 bytes at `base`) lie inside it
    // and do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(frame.as_ptr(), rsp as *mut u64, frame.len());
        (base as *mut u64).write(STACK_CANARY);
    }
    Some(Stack {
        base: base as u64,
        size: size as u64,
        rsp,
    })
}

/// Whether the canary at the bottom of the stack at `base` is intact.
pub fn canary_intact(base: u64) -> bool {
    // SAFETY: `base` is a live stack from `new_stack` (the caller's record), whose first 8
    // bytes are the canary; a volatile read because overflowing code wrote it behind Rust's back.
    unsafe { (base as *const u64).read_volatile() == STACK_CANARY }
}

/// Returns a stack from [`new_stack`] to the heap.
///
/// # Safety
/// No thread runs on it any more, and it is freed once.
pub unsafe fn free_stack(base: u64, size: u64) {
    if let Ok(layout) = Layout::from_size_align(size as usize, STACK_ALIGN) {
        // SAFETY: the caller guarantees the stack came from `new_stack` with this size (the
        // same layout) and is no longer used.
        unsafe { HEAP.dealloc(base as *mut u8, layout) };
    }
}
