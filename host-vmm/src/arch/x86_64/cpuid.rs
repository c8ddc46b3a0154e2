//! The guest's CPUID: KVM's supported table, patched for the Boot ABI.
//!
//! - leaf 1: the hypervisor bit, the TSC-deadline bit when the in-kernel LAPIC supports it,
//!   and initial APIC ID 0;
//! - leaves 0xB and 0x1F: x2APIC ID 0 on every sub-leaf;
//! - the hypervisor range: KVM's leaves 0x4000_0000/0x4000_0001 are kept (the guest reads
//!   kvmclock's features there), the range is raised to 0x4000_0010, and leaf 0x4000_0010
//!   gives the TSC and LAPIC bus frequencies (the VMware/QEMU timing-leaf convention).

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: TSC-deadline mode of the LAPIC timer.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// The hypervisor signature leaf.
pub const HYPERVISOR_BASE: u32 = 0x4000_0000;
/// The timing leaf: EAX = TSC kHz, EBX = LAPIC bus kHz.
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's LAPIC timer counts at 1 GHz (one tick per ns).
pub const LAPIC_BUS_KHZ: u32 = 1_000_000;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// What the patch depends on, from KVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidParams {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`.
    pub tsc_deadline: bool,
    /// `KVM_GET_TSC_KHZ`, if KVM could tell; 0 is written otherwise (the guest then falls
    /// back to its own calibration).
    pub tsc_khz: Option<u32>,
}

fn entry(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// Patches KVM's supported CPUID `entries` in place (see the module doc).
pub fn patch(entries: &mut Vec<kvm_cpuid_entry2>, params: CpuidParams) {
    entries.retain(|e| e.function != TIMING_LEAF);
    let mut has_base = false;
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if params.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                // EBX[31:24] is the initial APIC ID of this (only) vCPU.
                e.ebx &= 0x00FF_FFFF;
            }
            // EDX of every sub-leaf is the x2APIC ID.
            0xB | 0x1F => e.edx = 0,
            HYPERVISOR_BASE => {
                e.eax = e.eax.max(TIMING_LEAF);
                has_base = true;
            }
            _ => {}
        }
    }
    if !has_base {
        let [ebx, ecx, edx] = KVM_SIGNATURE;
        entries.push(entry(HYPERVISOR_BASE, TIMING_LEAF, ebx, ecx, edx));
    }
    entries.push(entry(
        TIMING_LEAF,
        params.tsc_khz.unwrap_or(0),
        LAPIC_BUS_KHZ,
        0,
        0,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm_like() -> Vec<kvm_cpuid_entry2> {
        let [ebx, ecx, edx] = KVM_SIGNATURE;
        vec![
            entry(0, 0xD, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0x806f8, 0x0701_0800, 0x0020_0000, 0x0f8b_fbff),
            kvm_cpuid_entry2 {
                index: 1,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..entry(0xB, 1, 1, 0x201, 7)
            },
            entry(HYPERVISOR_BASE, 0x4000_0001, ebx, ecx, edx),
            entry(0x4000_0001, 0x0100_7afb, 0, 0, 0),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32) -> Vec<kvm_cpuid_entry2> {
        entries
            .iter()
            .copied()
            .filter(|e| e.function == function)
            .collect()
    }

    #[test]
    fn leaf_1_gets_the_hypervisor_and_tsc_deadline_bits_and_apic_id_0() {
        let mut e = kvm_like();
        patch(
            &mut e,
            CpuidParams {
                tsc_deadline: true,
                tsc_khz: Some(2_100_000),
            },
        );
        let leaf1 = find(&e, 1)[0];
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(leaf1.ecx & 0x0020_0000, 0x0020_0000, "other bits kept");
        assert_eq!(leaf1.ebx, 0x0001_0800);
    }

    #[test]
    fn no_tsc_deadline_bit_without_the_capability() {
        let mut e = kvm_like();
        patch(
            &mut e,
            CpuidParams {
                tsc_deadline: false,
                tsc_khz: None,
            },
        );
        assert_eq!(find(&e, 1)[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn x2apic_ids_are_zero() {
        let mut e = kvm_like();
        patch(
            &mut e,
            CpuidParams {
                tsc_deadline: true,
                tsc_khz: None,
            },
        );
        let leaf_b = find(&e, 0xB)[0];
        assert_eq!(leaf_b.edx, 0);
        assert_eq!((leaf_b.index, leaf_b.eax, leaf_b.ebx), (1, 1, 1));
    }

    #[test]
    fn the_timing_leaf_is_added_and_announced_beside_the_kvm_leaves() {
        let mut e = kvm_like();
        patch(
            &mut e,
            CpuidParams {
                tsc_deadline: true,
                tsc_khz: Some(2_100_000),
            },
        );
        let base = find(&e, HYPERVISOR_BASE);
        assert_eq!(base.len(), 1);
        assert_eq!(base[0].eax, TIMING_LEAF);
        assert_eq!(
            [base[0].ebx, base[0].ecx, base[0].edx],
            KVM_SIGNATURE,
            "KVM's signature kept"
        );
        assert_eq!(find(&e, 0x4000_0001)[0].eax, 0x0100_7afb, "kvmclock kept");
        let timing = find(&e, TIMING_LEAF);
        assert_eq!(timing.len(), 1);
        assert_eq!((timing[0].eax, timing[0].ebx), (2_100_000, 1_000_000));
    }

    #[test]
    fn patching_twice_leaves_one_timing_leaf() {
        let mut e = kvm_like();
        let p = CpuidParams {
            tsc_deadline: true,
            tsc_khz: Some(1),
        };
        patch(&mut e, p);
        patch(&mut e, p);
        assert_eq!(find(&e, TIMING_LEAF).len(), 1);
        assert_eq!(find(&e, HYPERVISOR_BASE)[0].eax, TIMING_LEAF);
    }

    #[test]
    fn an_unknown_tsc_frequency_is_written_as_zero() {
        let mut e = kvm_like();
        patch(
            &mut e,
            CpuidParams {
                tsc_deadline: false,
                tsc_khz: None,
            },
        );
        assert_eq!(find(&e, TIMING_LEAF)[0].eax, 0);
    }

    #[test]
    fn a_missing_hypervisor_leaf_is_created_with_kvms_signature() {
        let mut e = vec![entry(1, 0, 0, 0, 0)];
        patch(
            &mut e,
            CpuidParams {
                tsc_deadline: false,
                tsc_khz: Some(5),
            },
        );
        let base = find(&e, HYPERVISOR_BASE)[0];
        assert_eq!(base.eax, TIMING_LEAF);
        assert_eq!([base.ebx, base.ecx, base.edx], KVM_SIGNATURE);
    }
}
