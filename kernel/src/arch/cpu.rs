//! Single CPU instructions: time stamp counter, RDRAND, halting, control registers, exit.

use super::port;
use core::arch::asm;

/// The debug-exit port (QEMU's isa-debug-exit interface, also served by host-vmm).
pub const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Reads the time stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads a counter into registers (CR4.TSD is clear: ring 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One RDRAND attempt: `None` when the hardware has no random number ready right now.
///
/// Callers must have checked CPUID.1:ECX[30] ([`super::cpuid::Features::rdrand`]).
#[inline]
pub fn rdrand() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: RDRAND writes only its destination register and CF; callers check CPUID first,
    // so the instruction exists (it is emulated correctly here, see docs/kvm.md §3).
    unsafe {
        asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
    };
    (ok != 0).then_some(value)
}

/// Enables interrupts and halts until one arrives, then disables them again.
///
/// STI delays interrupt recognition by one instruction, so an interrupt that became pending
/// before this call wakes the HLT instead of being taken before it (no lost wake-up).
#[inline]
pub fn wait_for_interrupt() {
    // SAFETY: the IDT handles every vector that can arrive (others raise #NP, which is
    // reported); the handlers preserve all registers, so this is a pause with no effect on
    // Rust-visible state except time passing.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Lets interrupts that are already pending in: the one-thread kernel (and the idle thread)
/// runs with interrupts disabled and opens them only here and in [`wait_for_interrupt`]. `sti` takes effect after the next
/// instruction, so the `nop` is the one boundary where they are delivered.
#[inline]
pub fn accept_interrupts() {
    // SAFETY: as for `wait_for_interrupt`: every vector that can arrive has a handler that
    // preserves all registers and only records an event.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Whether interrupts are enabled (RFLAGS.IF): threads run with them on once the scheduler
/// is active, the kernel's idle path and the scheduler itself with them off.
#[inline]
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: PUSHFQ/POP only read RFLAGS through the stack slot they use.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Disables interrupts; returns whether they were enabled, for [`restore_interrupts`].
#[inline]
pub fn disable_interrupts() -> bool {
    let was = interrupts_enabled();
    // SAFETY: CLI only masks maskable interrupts; nothing else changes.
    unsafe { asm!("cli", options(nomem, nostack)) };
    was
}

/// Enables interrupts again if `enabled` (from [`disable_interrupts`]).
#[inline]
pub fn restore_interrupts(enabled: bool) {
    if enabled {
        // SAFETY: every vector that can arrive has a handler (as for `wait_for_interrupt`);
        // this only returns to the state the caller had before `disable_interrupts`.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

/// Reads CR2, the address of the last page fault.
#[inline]
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes `status` to the debug-exit port; the VMM ends the VM if it has that device.
#[inline]
pub fn debug_exit(status: u32) {
    // SAFETY: port 0xF4 is the debug-exit device (or nothing); a write cannot touch memory.
    unsafe { port::outl(DEBUG_EXIT_PORT, status) };
}

/// Switches to the stack ending at `top` and calls `f` there; the old stack is abandoned.
///
/// # Safety
/// `top` must be the 16-byte-aligned end of mapped, writable memory that nothing else uses,
/// large enough for everything `f` does.
pub unsafe fn run_on_stack(top: u64, f: extern "C" fn() -> !) -> ! {
    // SAFETY: the caller guarantees the new stack; `f` never returns, so nothing ever runs
    // on the abandoned stack frame again. CALL keeps the ABI's entry alignment (RSP + 8 ≡ 0
    // mod 16 at the callee).
    unsafe {
        asm!("mov rsp, {top}", "xor ebp, ebp", "call {f}", "ud2", top = in(reg) top, f = in(reg) f, options(noreturn))
    }
}

/// Stops this CPU for good: interrupts off, then HLT in a loop (an NMI can still wake it).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts disabled HLT just stops the CPU; nothing is left to run.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
