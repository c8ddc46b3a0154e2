//! Model-specific registers.

use core::arch::asm;

/// `IA32_TSC_DEADLINE`: the LAPIC timer fires when the TSC reaches this value.
pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
/// KVM's wall clock MSR (new numbering): takes the physical address of a wall-clock struct.
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// KVM's per-vCPU system time MSR (new numbering): physical address of the time info | enable.
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

/// Writes `value` to MSR `msr`.
///
/// # Safety
/// Writing an MSR can change how the CPU runs or make the hypervisor write guest memory;
/// the caller must know the effect of this MSR and value.
#[inline(always)]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    let low = value as u32;
    let high = (value >> 32) as u32;
    // SAFETY: the caller vouches for the MSR's effect; the instruction needs no memory.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") low, in("edx") high, options(nostack, preserves_flags))
    };
}
