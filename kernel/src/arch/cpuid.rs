//! CPUID leaves the kernel reads. CPUID exits to the hypervisor, so each leaf is read once.

use core::arch::x86_64::{__cpuid_count, CpuidResult};

/// Runs CPUID for `leaf` (sub-leaf 0).
#[inline]
pub fn cpuid(leaf: u32) -> CpuidResult {
    // CPUID is safe to execute on every x86_64 CPU; unknown leaves return zeros or the
    // highest basic leaf, which callers guard against by checking the leaf ranges first.
    __cpuid_count(leaf, 0)
}

/// Leaf 1 ECX: the LAPIC timer supports TSC-deadline mode.
pub const FEATURE_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: RDRAND is available.
pub const FEATURE_RDRAND: u32 = 1 << 30;
/// Leaf 1 ECX: running under a hypervisor (the 0x4000_0000 range is meaningful).
pub const FEATURE_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x4000_0001 EAX: KVM's kvmclock with the new MSR numbers.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// What the kernel needs to know about the CPU and hypervisor, read once at boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// The LAPIC timer has TSC-deadline mode.
    pub tsc_deadline: bool,
    /// RDRAND is available.
    pub rdrand: bool,
    /// The hypervisor is KVM (signature "KVMKVMKVM").
    pub kvm: bool,
    /// KVM's pvclock (new MSRs) is available.
    pub kvm_clock: bool,
    /// TSC frequency in kHz from the timing leaf 0x4000_0010, if the hypervisor has it.
    pub tsc_khz: Option<u32>,
    /// LAPIC timer (bus) frequency in kHz from the same leaf, if given.
    pub apic_bus_khz: Option<u32>,
}

/// Reads the CPU and hypervisor features: four CPUID exits at most.
pub fn features() -> Features {
    let leaf1 = cpuid(1);
    let mut f = Features {
        tsc_deadline: leaf1.ecx & FEATURE_TSC_DEADLINE != 0,
        rdrand: leaf1.ecx & FEATURE_RDRAND != 0,
        ..Features::default()
    };
    if leaf1.ecx & FEATURE_HYPERVISOR == 0 {
        return f;
    }
    let base = cpuid(0x4000_0000);
    let max_leaf = base.eax;
    // "KVMKVMKVM\0\0\0" in EBX, ECX, EDX.
    f.kvm = base.ebx == 0x4b4d_564b && base.ecx == 0x564b_4d56 && base.edx == 0x4d;
    if f.kvm && max_leaf >= 0x4000_0001 {
        f.kvm_clock = cpuid(0x4000_0001).eax & KVM_FEATURE_CLOCKSOURCE2 != 0;
    }
    if max_leaf >= 0x4000_0010 {
        let timing = cpuid(0x4000_0010);
        f.tsc_khz = (timing.eax != 0).then_some(timing.eax);
        f.apic_bus_khz = (timing.ebx != 0).then_some(timing.ebx);
    }
    f
}
