//! vCPU and VM state for migration: plain data (serde) taken from KVM on a paused source and
//! put back into a fresh destination VM.
//!
//! # What is saved
//!
//! [`VcpuState`], read by [`Vcpu::save_state`] in this order:
//! 1. `KVM_GET_MP_STATE` first: it makes KVM accept pending INIT/SIPI events, which may change
//!    the LAPIC and registers read next (Firecracker and Cloud Hypervisor read it first too);
//! 2. `KVM_GET_REGS`, `KVM_GET_SREGS`, `KVM_GET_FPU` (always: it is small and is the fallback
//!    when the destination has no XSAVE), `KVM_GET_XSAVE` or `KVM_GET_XSAVE2` (with
//!    `KVM_CAP_XSAVE`; the buffer is `KVM_CAP_XSAVE2` bytes), `KVM_GET_XCRS` (with
//!    `KVM_CAP_XCRS`), `KVM_GET_DEBUGREGS`, `KVM_GET_LAPIC`;
//! 3. `KVM_GET_MSRS` for every MSR of the VM's list (`KVM_GET_MSR_INDEX_LIST` plus `IA32_TSC`
//!    and the kvmclock MSRs, `IA32_TSC` first) that this vCPU can read: the list is filtered
//!    once per vCPU, because `KVM_GET_MSRS` stops at the first index it cannot read (it returns
//!    how many it read: the next one is dropped and the batch goes on after it);
//! 4. `KVM_GET_VCPU_EVENTS` last: pending exceptions, NMI and interrupt shadow, which the
//!    other reads might still update.
//!
//! [`VmState`], read by [`Vm::save_state`]: the three in-kernel irqchip models
//! (`KVM_GET_IRQCHIP` for the master PIC, the slave PIC and the IOAPIC) and the kvmclock
//! (`KVM_GET_CLOCK`). The LAPIC is per vCPU.
//!
//! # Restore order
//!
//! [`Vm::restore_state`] first (irqchip, then `KVM_SET_CLOCK` with `KVM_CLOCK_TSC_STABLE`
//! cleared — KVM treats it as output only and the destination's TSC is not the source's;
//! `KVM_CLOCK_REALTIME` is kept, so KVM adds the wall time the pause took, never a negative
//! amount), then [`Vcpu::restore_state`] on each vCPU, after its CPUID was set as at boot
//! (which MSRs exist depends on it), in this order:
//! 1. `KVM_SET_MP_STATE`, `KVM_SET_REGS`, `KVM_SET_SREGS` (EFER, CR*, APIC base: setting the
//!    APIC base can reset the LAPIC, so the LAPIC comes after);
//! 2. `KVM_SET_FPU`, then `KVM_SET_XSAVE` (the superset wins), `KVM_SET_XCRS`,
//!    `KVM_SET_DEBUGREGS`;
//! 3. `KVM_SET_LAPIC` (after sregs, see above; it also resets the LAPIC timer);
//! 4. `KVM_SET_MSRS`, after the LAPIC and sregs (docs/kvm.md §8.4): `IA32_TSC_DEADLINE`
//!    only arms a timer once the LAPIC is in TSC-deadline mode, `IA32_TSC` goes first so the
//!    deadline is relative to the restored TSC, and the x2APIC MSRs need the APIC mode;
//! 5. `KVM_SET_VCPU_EVENTS` last, so nothing after it can clobber a pending event.
//!
//! # MSRs the destination will not set
//!
//! `KVM_SET_MSRS` also stops at the first MSR it refuses. For that MSR the destination
//! probes the host: it reads the MSR from this vCPU and writes that same value back.
//! - If the host cannot read it, or refuses even its own value, the MSR is not settable on
//!   this host: it is skipped with a debug log and the rest goes on.
//! - If it is a feature MSR (`KVM_GET_MSR_FEATURE_INDEX_LIST`: `IA32_ARCH_CAPABILITIES`
//!   0x10a, `IA32_PERF_CAPABILITIES`, the microcode revision, ...), the value describes the
//!   source's CPU, not state the guest made, and KVM refuses any bit this host's CPU lacks
//!   (why QEMU aborts on 0x10a between unlike hosts): it is skipped with a debug log and the
//!   destination's own value stays, as a CPUID difference would.
//! - Otherwise the host can set the MSR but refuses the guest's saved value: the state does
//!   not fit this host, and the restore fails with [`KvmError::MsrRefused`] (the source can
//!   then resume the guest).
//!
//! # Hostile streams
//!
//! Everything variable in size is checked before use ([`VcpuState::validate`]): the MSR
//! count (at most `KVM_MAX_MSR_ENTRIES`), the XSAVE area (exactly the size this host's KVM
//! uses), the XCR count, the irqchip blobs (512 bytes each). The fixed-size KVM structs are
//! decoded by kvm-bindings' serde as byte strings of their size.

use super::vcpu::Vcpu;
use super::vm::Vm;
use super::{Kvm, KvmError};
use kvm_bindings::{
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_MSR_ENTRIES, KVM_MAX_XCRS, Msrs, Xsave, kvm_clock_data, kvm_debugregs, kvm_fpu,
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// The kvmclock MSRs: wall clock and system time, old and new numbers.
pub const MSR_KVM_CLOCK: [u32; 4] = [0x11, 0x12, 0x4b56_4d00, 0x4b56_4d01];
/// Bytes of one irqchip model as `KVM_GET_IRQCHIP` returns it (the `chip` union).
pub const IRQCHIP_SIZE: usize = 512;

/// The x87/SSE state of `KVM_GET_FPU` (kvm-bindings has no serde for `kvm_fpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 registers (80 bits each, padded).
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM0–15.
    pub xmm: [[u8; 16]; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// One MSR and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrEntry {
    /// The MSR number.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// Everything KVM holds for one vCPU (see the module docs for what and in which order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// `KVM_GET_MP_STATE`.
    pub mp_state: kvm_mp_state,
    /// `KVM_GET_REGS`.
    pub regs: kvm_regs,
    /// `KVM_GET_SREGS`.
    pub sregs: kvm_sregs,
    /// `KVM_GET_FPU`.
    pub fpu: FpuState,
    /// The XSAVE area as 32-bit words (`KVM_GET_XSAVE`/`KVM_GET_XSAVE2`), without XSAVE none.
    pub xsave: Option<Vec<u32>>,
    /// `KVM_GET_XCRS`, without `KVM_CAP_XCRS` none.
    pub xcrs: Option<kvm_xcrs>,
    /// `KVM_GET_DEBUGREGS`.
    pub debug_regs: kvm_debugregs,
    /// `KVM_GET_LAPIC`.
    pub lapic: kvm_lapic_state,
    /// `KVM_GET_MSRS` of every readable MSR, `IA32_TSC` first.
    pub msrs: Vec<MsrEntry>,
    /// `KVM_GET_VCPU_EVENTS`.
    pub events: kvm_vcpu_events,
}

/// The VM-wide state KVM holds: irqchip models and the kvmclock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259 (`KVM_IRQCHIP_PIC_MASTER`), [`IRQCHIP_SIZE`] bytes.
    pub pic_master: Vec<u8>,
    /// The slave 8259 (`KVM_IRQCHIP_PIC_SLAVE`), [`IRQCHIP_SIZE`] bytes.
    pub pic_slave: Vec<u8>,
    /// The IOAPIC (`KVM_IRQCHIP_IOAPIC`), [`IRQCHIP_SIZE`] bytes.
    pub ioapic: Vec<u8>,
    /// `KVM_GET_CLOCK`.
    pub clock: kvm_clock_data,
}

fn invalid(what: impl Into<String>) -> KvmError {
    KvmError::InvalidState(what.into())
}

/// A shared list of MSR numbers.
pub(super) type MsrNumbers = Arc<[u32]>;

/// The MSRs vCPU state carries, `KVM_GET_MSR_INDEX_LIST` plus `IA32_TSC` and the kvmclock
/// MSRs if KVM left them out, with `IA32_TSC` first (see the restore order); and the feature
/// MSRs (`KVM_GET_MSR_FEATURE_INDEX_LIST`).
pub(super) fn msr_index(kvm: &Kvm) -> Result<(MsrNumbers, MsrNumbers), KvmError> {
    let listed = kvm
        .raw()
        .get_msr_index_list()
        .map_err(KvmError::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    let mut list = vec![MSR_IA32_TSC];
    for &index in listed.as_slice().iter().chain(&MSR_KVM_CLOCK) {
        if !list.contains(&index) {
            list.push(index);
        }
    }
    // Older kernels have no feature list: then no MSR counts as one.
    let features = kvm
        .raw()
        .get_msr_feature_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    Ok((list.into(), features.into()))
}

/// Reads `indices` in batches; an index KVM cannot read ends a batch early (`KVM_GET_MSRS`
/// returns how many it read), so it is dropped and the batch goes on after it.
fn read_msrs(vcpu: &Vcpu, indices: &[u32]) -> Result<Vec<MsrEntry>, KvmError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| invalid(format!("{} MSRs in one batch", entries.len())))?;
        let n = vcpu
            .fd
            .get_msrs(&mut msrs)
            .map_err(KvmError::ioctl("KVM_GET_MSRS"))?
            .min(batch.len());
        out.extend(msrs.as_slice()[..n].iter().map(|e| MsrEntry {
            index: e.index,
            data: e.data,
        }));
        if n < batch.len() {
            log::debug!("vcpu: MSR {:#x} is not readable here, left out", batch[n]);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[batch.len()..];
        }
    }
    Ok(out)
}

/// Writes `msrs` in order. For each MSR KVM refuses, asks the host whether it can set that
/// MSR at all (the module docs' policy): skipped if not, [`KvmError::MsrRefused`] if it can
/// but refuses the saved value.
fn write_msrs(vcpu: &Vcpu, msrs: &[MsrEntry]) -> Result<(), KvmError> {
    let mut rest = msrs;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let n = set_msrs(vcpu, batch)?;
        if n >= batch.len() {
            rest = &rest[batch.len()..];
            continue;
        }
        let refused = batch[n];
        if !host_can_set(vcpu, refused.index)? {
            log::debug!(
                "vcpu: MSR {:#x} cannot be set on this host, value {:#x} skipped",
                refused.index,
                refused.data
            );
        } else if vcpu.caps.feature_msrs.contains(&refused.index) {
            log::debug!(
                "vcpu: feature MSR {:#x} = {:#x} is beyond this host's CPU, its own value stays",
                refused.index,
                refused.data
            );
        } else {
            return Err(KvmError::MsrRefused {
                index: refused.index,
                value: refused.data,
            });
        }
        rest = &rest[n + 1..];
    }
    Ok(())
}

/// `KVM_SET_MSRS` of at most `KVM_MAX_MSR_ENTRIES`; returns how many KVM wrote.
fn set_msrs(vcpu: &Vcpu, batch: &[MsrEntry]) -> Result<usize, KvmError> {
    let entries: Vec<kvm_msr_entry> = batch
        .iter()
        .map(|e| kvm_msr_entry {
            index: e.index,
            data: e.data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|_| invalid(format!("{} MSRs in one batch", entries.len())))?;
    vcpu.fd
        .set_msrs(&msrs)
        .map_err(KvmError::ioctl("KVM_SET_MSRS"))
}

/// The probe: whether this host reads `index` and takes its own value back.
fn host_can_set(vcpu: &Vcpu, index: u32) -> Result<bool, KvmError> {
    match read_msrs(vcpu, &[index])?.first() {
        None => Ok(false),
        Some(own) => Ok(set_msrs(vcpu, std::slice::from_ref(own))? == 1),
    }
}

impl VcpuState {
    /// Checks every size and count against what `vcpu`'s KVM takes, before any ioctl.
    pub fn validate(&self, vcpu: &Vcpu) -> Result<(), KvmError> {
        if self.msrs.len() > KVM_MAX_MSR_ENTRIES {
            return Err(invalid(format!(
                "{} MSRs (at most {KVM_MAX_MSR_ENTRIES})",
                self.msrs.len()
            )));
        }
        match (&self.xsave, vcpu.caps.xsave_size) {
            (Some(_), 0) => return Err(invalid("XSAVE state, but this host has no XSAVE")),
            (Some(words), size) if words.len() != size.div_ceil(4) => {
                return Err(invalid(format!(
                    "XSAVE area of {} bytes, this host's is {size}",
                    words.len() * 4
                )));
            }
            _ => {}
        }
        if let Some(xcrs) = &self.xcrs {
            if !vcpu.caps.xcrs {
                return Err(invalid("XCRs, but this host has no KVM_CAP_XCRS"));
            }
            if xcrs.nr_xcrs > KVM_MAX_XCRS {
                return Err(invalid(format!(
                    "{} XCRs (at most {KVM_MAX_XCRS})",
                    xcrs.nr_xcrs
                )));
            }
        }
        Ok(())
    }
}

impl Vcpu {
    /// Finds which MSRs this vCPU can read (once; [`Vcpu::save_state`] does it on first use,
    /// call this early to keep it out of the pause).
    pub fn probe_msrs(&self) -> Result<&[u32], KvmError> {
        if let Some(list) = self.readable_msrs.get() {
            return Ok(list);
        }
        let readable: Vec<u32> = read_msrs(self, &self.caps.msr_index)?
            .iter()
            .map(|e| e.index)
            .collect();
        Ok(self.readable_msrs.get_or_init(|| readable))
    }

    /// Reads the vCPU's whole state (see the module docs). The vCPU must be paused, with no
    /// pending I/O ([`Vcpu::complete_pending_io`]).
    pub fn save_state(&self) -> Result<VcpuState, KvmError> {
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(KvmError::ioctl("KVM_GET_MP_STATE"))?;
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let fpu = self.fd.get_fpu().map_err(KvmError::ioctl("KVM_GET_FPU"))?;
        let xsave = self.get_xsave_words()?;
        let xcrs = match self.caps.xcrs {
            true => Some(
                self.fd
                    .get_xcrs()
                    .map_err(KvmError::ioctl("KVM_GET_XCRS"))?,
            ),
            false => None,
        };
        let debug_regs = self
            .fd
            .get_debug_regs()
            .map_err(KvmError::ioctl("KVM_GET_DEBUGREGS"))?;
        let lapic = self
            .fd
            .get_lapic()
            .map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
        let readable = self.probe_msrs()?;
        let msrs = read_msrs(self, readable)?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            fpu: FpuState::from(&fpu),
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
        })
    }

    /// Puts `state` into this (not yet running) vCPU, in the order of the module docs, after
    /// checking it ([`VcpuState::validate`]).
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), KvmError> {
        state.validate(self)?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(KvmError::ioctl("KVM_SET_MP_STATE"))?;
        self.set_regs(&state.regs)?;
        self.set_sregs(&state.sregs)?;
        self.fd
            .set_fpu(&kvm_fpu::from(&state.fpu))
            .map_err(KvmError::ioctl("KVM_SET_FPU"))?;
        if let Some(words) = &state.xsave {
            self.set_xsave_words(words)?;
        }
        if let Some(xcrs) = &state.xcrs {
            self.fd
                .set_xcrs(xcrs)
                .map_err(KvmError::ioctl("KVM_SET_XCRS"))?;
        }
        self.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(KvmError::ioctl("KVM_SET_DEBUGREGS"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(KvmError::ioctl("KVM_SET_LAPIC"))?;
        write_msrs(self, &state.msrs)?;
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(KvmError::ioctl("KVM_SET_VCPU_EVENTS"))
    }

    fn get_xsave_words(&self) -> Result<Option<Vec<u32>>, KvmError> {
        let size = self.caps.xsave_size;
        let base = std::mem::size_of::<kvm_xsave>();
        if size == 0 {
            return Ok(None);
        }
        if size <= base {
            let xsave = self
                .fd
                .get_xsave()
                .map_err(KvmError::ioctl("KVM_GET_XSAVE"))?;
            return Ok(Some(xsave.region.to_vec()));
        }
        let mut xsave = Xsave::new((size - base).div_ceil(4))
            .map_err(|_| invalid(format!("an XSAVE area of {size} bytes")))?;
        // SAFETY: the buffer holds at least the KVM_CAP_XSAVE2 size KVM reported for this VM
        // (no XSTATE features are enabled dynamically after that), so KVM writes inside it.
        unsafe { self.fd.get_xsave2(&mut xsave) }.map_err(KvmError::ioctl("KVM_GET_XSAVE2"))?;
        let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(xsave.as_slice());
        Ok(Some(words))
    }

    /// `words` has exactly this host's XSAVE size (checked by `validate`).
    fn set_xsave_words(&self, words: &[u32]) -> Result<(), KvmError> {
        let base = std::mem::size_of::<kvm_xsave>() / 4;
        let (region, extra) = words
            .split_at_checked(base.min(words.len()))
            .ok_or_else(|| invalid("XSAVE area"))?;
        if extra.is_empty() {
            let mut xsave = kvm_xsave::default();
            xsave.region[..region.len()].copy_from_slice(region);
            // SAFETY: this host's XSAVE size is at most `size_of::<kvm_xsave>()` (checked by
            // `validate`), so KVM reads no further than the struct.
            return unsafe { self.fd.set_xsave(&xsave) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"));
        }
        let mut xsave = Xsave::new(extra.len())
            .map_err(|_| invalid(format!("an XSAVE area of {} words", words.len())))?;
        // SAFETY: only the fixed `region` header is written; the FAM length field, which
        // `as_mut_fam_struct` would let us break, is left alone.
        unsafe { xsave.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(region);
        xsave.as_mut_slice().copy_from_slice(extra);
        // SAFETY: the buffer is exactly the KVM_CAP_XSAVE2 size of this VM (checked by
        // `validate`), so KVM reads inside it.
        unsafe { self.fd.set_xsave2(&xsave) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"))
    }
}

impl Vm {
    /// Reads the irqchip models and the kvmclock (vCPUs paused).
    pub fn save_state(&self) -> Result<VmState, KvmError> {
        Ok(VmState {
            pic_master: self.irqchip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.irqchip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.irqchip(KVM_IRQCHIP_IOAPIC)?,
            clock: self
                .fd
                .get_clock()
                .map_err(KvmError::ioctl("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts `state` into this VM, before any vCPU state (see the module docs).
    pub fn restore_state(&self, state: &VmState) -> Result<(), KvmError> {
        let chips = [
            (KVM_IRQCHIP_PIC_MASTER, &state.pic_master, "master PIC"),
            (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave, "slave PIC"),
            (KVM_IRQCHIP_IOAPIC, &state.ioapic, "IOAPIC"),
        ];
        let mut decoded = Vec::with_capacity(chips.len());
        for (id, bytes, name) in chips {
            let bytes: &[u8; IRQCHIP_SIZE] = bytes.as_slice().try_into().map_err(|_| {
                invalid(format!(
                    "{name} state of {} bytes (expected {IRQCHIP_SIZE})",
                    bytes.len()
                ))
            })?;
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            // Writing a union field is safe; `dummy` spans the whole union.
            chip.chip.dummy = bytes.map(|b| b as libc::c_char);
            decoded.push(chip);
        }
        for chip in &decoded {
            self.fd
                .set_irqchip(chip)
                .map_err(KvmError::ioctl("KVM_SET_IRQCHIP"))?;
        }
        let clock = kvm_clock_data {
            flags: state.clock.flags & !KVM_CLOCK_TSC_STABLE,
            ..state.clock
        };
        self.fd
            .set_clock(&clock)
            .map_err(KvmError::ioctl("KVM_SET_CLOCK"))
    }

    fn irqchip(&self, id: u32) -> Result<Vec<u8>, KvmError> {
        let mut chip = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(KvmError::ioctl("KVM_GET_IRQCHIP"))?;
        // SAFETY: `dummy` spans the whole union, every byte of which is initialized (zeroed
        // by `Default`, then written by KVM); any byte value is a valid `c_char`.
        let bytes = unsafe { chip.chip.dummy };
        Ok(bytes.iter().map(|&b| b as u8).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::{self as arch, boot, cpuid, regs};
    use crate::config::Cmdline;
    use crate::devices::Bus;
    use crate::kvm::vcpu::{VcpuExit, VcpuKicker};
    use crate::kvm::vm::KvmPages;
    use crate::memory::GuestRam;
    use crate::test_utils::{GUEST_BASE, kvm_available};
    use std::fs::File;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    const MEM: u64 = 16 << 20;
    /// Where the counting guest keeps its counter.
    const COUNTER: u64 = 0x20_0000;
    const MARKER: u64 = 0x1234_5678_9abc_def0;
    /// How long a kicked vCPU may take to stop before the test calls it stuck.
    const STOP_BOUND: Duration = Duration::from_secs(5);

    /// `mov r15, MARKER; xor eax, eax; 1: inc rax; mov [COUNTER], rax; jmp 1b`.
    const COUNT: &[u8] = &[
        0x49, 0xBF, 0xF0, 0xDE, 0xBC, 0x9A, 0x78, 0x56, 0x34, 0x12, // mov r15, MARKER
        0x31, 0xC0, // xor eax, eax
        0x48, 0xFF, 0xC0, // 1: inc rax
        0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rax
        0xEB, 0xF3, // jmp 1b
    ];

    /// Writes one page of the data 2 MiB page (so its page-table entries are accessed and
    /// dirty), exits on port 0x80, writes three known pages, exits again, then spins.
    const DIRTY: &[u8] = &[
        0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rax
        0xE6, 0x80, // out 0x80, al
        0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, // mov [0x300000], rax
        0x48, 0x89, 0x04, 0x25, 0x00, 0x10, 0x30, 0x00, // mov [0x301000], rax
        0x48, 0x89, 0x04, 0x25, 0x00, 0x50, 0x30, 0x00, // mov [0x305000], rax
        0xE6, 0x80, // out 0x80, al
        0xEB, 0xFE, // jmp $
    ];

    /// `jmp $`.
    const SPIN: &[u8] = &[0xEB, 0xFE];

    fn pages() -> KvmPages {
        KvmPages {
            tss: arch::KVM_TSS_ADDR,
            identity_map: arch::KVM_IDENTITY_MAP_ADDR,
        }
    }

    /// A VM with one vCPU whose CPUID is set as `Vmm::new` sets it; with `code`, RAM holds
    /// the boot structures and `code` at [`GUEST_BASE`] and the vCPU is at its 64-bit entry.
    fn vm(kvm: &Kvm, ram: &GuestRam, code: Option<&[u8]>) -> (Vm, Vcpu) {
        let vm = Vm::new(kvm, ram, pages()).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut entries = kvm.supported_cpuid().unwrap();
        cpuid::patch(
            &mut entries,
            cpuid::CpuidParams {
                tsc_deadline: kvm.has_tsc_deadline_timer(),
                tsc_khz: vcpu.tsc_khz(),
            },
        );
        vcpu.set_cpuid(&entries).unwrap();
        if let Some(code) = code {
            boot::write_boot_structures(ram.memory(), ram.size(), &Cmdline::new("").unwrap())
                .unwrap();
            ram.memory()
                .write_slice(code, GuestAddress(GUEST_BASE))
                .unwrap();
            let mut sregs = vcpu.sregs().unwrap();
            regs::set_boot_sregs(&mut sregs);
            vcpu.set_sregs(&sregs).unwrap();
            vcpu.set_regs(&regs::boot_regs(GUEST_BASE)).unwrap();
        }
        (vm, vcpu)
    }

    fn buses() -> (Bus, Bus) {
        (Bus::new("pio"), Bus::new("mmio"))
    }

    /// Runs `vcpu` on a thread until a kick stops it; hands it back with the exit.
    fn run_until_kicked(mut vcpu: Vcpu) -> mpsc::Receiver<(Vcpu, VcpuExit)> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (pio, mmio) = buses();
            loop {
                let exit = vcpu.run(&pio, &mmio).unwrap();
                if !matches!(exit, VcpuExit::Io { .. } | VcpuExit::Mmio) {
                    let _ = tx.send((vcpu, exit));
                    return;
                }
            }
        });
        rx
    }

    /// Runs for `ms`, kicks, and returns the paused vCPU (asserting it stopped by the kick).
    fn run_for(vcpu: Vcpu, kicker: &VcpuKicker, ms: u64) -> Vcpu {
        let rx = run_until_kicked(vcpu);
        std::thread::sleep(Duration::from_millis(ms));
        kicker.kick();
        let (vcpu, exit) = rx.recv_timeout(STOP_BOUND).expect("the kick stopped it");
        assert_eq!(exit, VcpuExit::Interrupted);
        vcpu
    }

    fn counter(ram: &GuestRam) -> u64 {
        ram.memory().read_obj(GuestAddress(COUNTER)).unwrap()
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
        postcard::from_bytes(&postcard::to_allocvec(value).unwrap()).unwrap()
    }

    #[test]
    fn a_counting_guest_continues_in_a_second_vm_from_where_it_was_saved() {
        if !kvm_available("a_counting_guest_continues_in_a_second_vm_from_where_it_was_saved") {
            return;
        }
        let kvm = Kvm::open().unwrap();
        let ram = GuestRam::new(MEM).unwrap();
        let (src_vm, src) = vm(&kvm, &ram, Some(COUNT));
        src.probe_msrs().unwrap();
        let kicker = src.kicker().unwrap();
        let mut src = run_for(src, &kicker, 100);
        let (pio, mmio) = buses();
        src.complete_pending_io(&pio, &mmio).unwrap();

        let t = Instant::now();
        let vcpu_state = src.save_state().unwrap();
        let save_vcpu = t.elapsed();
        let t = Instant::now();
        let vm_state = src_vm.save_state().unwrap();
        let save_vm = t.elapsed();
        let saved = counter(&ram);
        assert!(saved > 0, "the guest counted before the pause");
        assert_eq!(vcpu_state.regs.r15, MARKER);
        // The pause fell between `inc` and the store, or after the store.
        assert!(vcpu_state.regs.rax == saved || vcpu_state.regs.rax == saved + 1);
        assert!(vcpu_state.msrs.iter().any(|m| m.index == MSR_IA32_TSC));
        // What crosses is the encoded form.
        let vcpu_state = round_trip(&vcpu_state);
        let vm_state = round_trip(&vm_state);

        let memfd = File::from(ram.memfd().try_clone_to_owned().unwrap());
        let dst_ram = GuestRam::from_memfd(memfd, MEM).unwrap();
        let (dst_vm, dst) = vm(&kvm, &dst_ram, None);
        let t = Instant::now();
        dst_vm.restore_state(&vm_state).unwrap();
        let restore_vm = t.elapsed();
        let t = Instant::now();
        dst.restore_state(&vcpu_state).unwrap();
        let restore_vcpu = t.elapsed();
        eprintln!(
            "state timings: vcpu save {save_vcpu:?} ({} MSRs), vm save {save_vm:?}, \
             vm restore {restore_vm:?}, vcpu restore {restore_vcpu:?}",
            vcpu_state.msrs.len()
        );
        assert_eq!(dst.regs().unwrap(), vcpu_state.regs);
        assert_eq!(dst.sregs().unwrap(), vcpu_state.sregs);
        let again = dst.save_state().unwrap();
        assert_eq!(again.lapic, vcpu_state.lapic);
        assert_eq!(again.debug_regs, vcpu_state.debug_regs);
        assert_eq!(again.xcrs, vcpu_state.xcrs);
        assert!(
            dst_vm.save_state().unwrap().clock.clock >= vm_state.clock.clock,
            "the kvmclock does not go back"
        );

        let kicker = dst.kicker().unwrap();
        let dst = run_for(dst, &kicker, 50);
        let now = counter(&dst_ram);
        assert!(now > saved, "the count went on: {now} after {saved}");
        let regs = dst.regs().unwrap();
        assert_eq!(regs.r15, MARKER, "the marker register survived");
        assert!(regs.rax >= now);
        drop(src);
    }

    #[test]
    fn the_dirty_log_holds_exactly_the_pages_the_guest_wrote_and_empties_when_taken() {
        if !kvm_available(
            "the_dirty_log_holds_exactly_the_pages_the_guest_wrote_and_empties_when_taken",
        ) {
            return;
        }
        let kvm = Kvm::open().unwrap();
        let ram = GuestRam::new(MEM).unwrap();
        let (vm, mut vcpu) = vm(&kvm, &ram, Some(DIRTY));
        let (pio, mmio) = buses();
        vm.set_dirty_logging(true).unwrap();
        let port = VcpuExit::Io {
            port: 0x80,
            write: true,
        };
        assert_eq!(vcpu.run(&pio, &mmio).unwrap(), port);
        let first = vm.take_dirty_log().unwrap();
        assert_eq!(first.len(), (MEM / 4096 / 64) as usize);
        let page = (COUNTER / 4096) as usize;
        assert_ne!(first[page / 64] & (1 << (page % 64)), 0, "the first write");

        assert_eq!(vcpu.run(&pio, &mmio).unwrap(), port);
        let log = vm.take_dirty_log().unwrap();
        let mut expected = vec![0u64; log.len()];
        for addr in [0x30_0000u64, 0x30_1000, 0x30_5000] {
            let page = (addr / 4096) as usize;
            expected[page / 64] |= 1 << (page % 64);
        }
        assert_eq!(log, expected, "exactly the three pages written");
        assert!(vm.take_dirty_log().unwrap().iter().all(|w| *w == 0));

        vm.set_dirty_logging(false).unwrap();
        assert!(vm.take_dirty_log().is_err(), "no log while logging is off");
    }

    #[test]
    fn a_kick_stops_a_spinning_guest_every_time_even_before_it_enters() {
        if !kvm_available("a_kick_stops_a_spinning_guest_every_time_even_before_it_enters") {
            return;
        }
        let kvm = Kvm::open().unwrap();
        let ram = GuestRam::new(MEM).unwrap();
        let (_vm, mut vcpu) = vm(&kvm, &ram, Some(SPIN));
        let kicker = vcpu.kicker().unwrap();
        let (pio, mmio) = buses();
        // A kick before KVM_RUN is not lost: the next entry returns at once.
        kicker.kick();
        assert!(vcpu.pause_requested());
        assert_eq!(vcpu.run(&pio, &mmio).unwrap(), VcpuExit::Interrupted);
        assert_eq!(vcpu.run(&pio, &mmio).unwrap(), VcpuExit::Interrupted);

        // Kicks at varied moments, racing with the thread entering KVM_RUN.
        let (resumed_tx, resumed_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        let (exit_tx, exit_rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let (pio, mmio) = buses();
            while go_rx.recv() == Ok(true) {
                vcpu.clear_immediate_exit();
                resumed_tx.send(()).unwrap();
                exit_tx.send(vcpu.run(&pio, &mmio).unwrap()).unwrap();
            }
        });
        for round in 0..30u64 {
            go_tx.send(true).unwrap();
            resumed_rx.recv().unwrap();
            match round % 3 {
                0 => {}
                1 => std::thread::yield_now(),
                _ => std::thread::sleep(Duration::from_micros(round * 100)),
            }
            kicker.kick();
            let exit = exit_rx
                .recv_timeout(STOP_BOUND)
                .unwrap_or_else(|_| panic!("round {round}: the kick did not stop the vCPU"));
            assert_eq!(exit, VcpuExit::Interrupted, "round {round}");
        }
        go_tx.send(false).unwrap();
        worker.join().unwrap();
        // Once the vCPU is gone a kick is a no-op, not a write into freed memory.
        kicker.kick();
    }

    #[test]
    fn malformed_or_unfitting_state_is_an_error_not_a_panic() {
        if !kvm_available("malformed_or_unfitting_state_is_an_error_not_a_panic") {
            return;
        }
        let kvm = Kvm::open().unwrap();
        let ram = GuestRam::new(MEM).unwrap();
        let (_vm, vcpu) = vm(&kvm, &ram, Some(SPIN));
        let good = vcpu.save_state().unwrap();
        let invalid = |state: &VcpuState| {
            let err = vcpu.restore_state(state).unwrap_err();
            assert!(matches!(err, KvmError::InvalidState(_)), "{err}");
        };

        let mut too_many = good.clone();
        too_many.msrs = vec![good.msrs[0]; KVM_MAX_MSR_ENTRIES + 1];
        invalid(&too_many);
        if let Some(words) = &good.xsave {
            let mut longer = good.clone();
            longer.xsave = Some([words.as_slice(), &[0]].concat());
            invalid(&longer);
            let mut shorter = good.clone();
            shorter.xsave = Some(words[..words.len() - 1].to_vec());
            invalid(&shorter);
        }
        if good.xcrs.is_some() {
            let mut xcrs = good.clone();
            xcrs.xcrs.as_mut().unwrap().nr_xcrs = KVM_MAX_XCRS + 1;
            invalid(&xcrs);
        }
        let (vm2, _vcpu2) = vm(&kvm, &ram, None);
        let mut chip = vm2.save_state().unwrap();
        chip.ioapic.truncate(100);
        let err = vm2.restore_state(&chip).unwrap_err();
        assert!(matches!(err, KvmError::InvalidState(_)), "{err}");

        // An MSR this host does not have is skipped (the policy of the module docs) ...
        let mut unknown = good.clone();
        unknown.msrs.push(MsrEntry {
            index: 0xdead_beef,
            data: 1,
        });
        vcpu.restore_state(&unknown).unwrap();
        // ... so is a feature MSR value beyond this host's CPU (KVM refuses any bit of
        // IA32_ARCH_CAPABILITIES the host lacks) ...
        const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
        if vcpu.caps.feature_msrs.contains(&IA32_ARCH_CAPABILITIES) {
            let mut foreign = good.clone();
            foreign.msrs.push(MsrEntry {
                index: IA32_ARCH_CAPABILITIES,
                data: u64::MAX,
            });
            vcpu.restore_state(&foreign).unwrap();
        }
        // ... but a value this host refuses for an ordinary MSR it can set is an error.
        const IA32_LSTAR: u32 = 0xc000_0082;
        let mut bad = good.clone();
        bad.msrs.push(MsrEntry {
            index: IA32_LSTAR,
            data: 0x8000_0000_0000_0000, // not canonical
        });
        let err = vcpu.restore_state(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                KvmError::MsrRefused {
                    index: IA32_LSTAR,
                    ..
                }
            ),
            "{err}"
        );
        // The saved state itself goes back in.
        vcpu.restore_state(&good).unwrap();
    }

    #[test]
    fn ia32_arch_capabilities_is_listed_but_a_restore_does_not_fail_on_it() {
        if !kvm_available("ia32_arch_capabilities_is_listed_but_a_restore_does_not_fail_on_it") {
            return;
        }
        let kvm = Kvm::open().unwrap();
        let ram = GuestRam::new(MEM).unwrap();
        let (_vm, vcpu) = vm(&kvm, &ram, Some(SPIN));
        let mut state = vcpu.save_state().unwrap();
        eprintln!(
            "MSRs saved: {} of {} listed; feature MSRs: {:x?}",
            state.msrs.len(),
            vcpu.caps.msr_index.len(),
            vcpu.caps.feature_msrs
        );
        // As if from a host whose CPU has every capability bit: this host refuses it. A host
        // that does not save the MSR gets it added, as if the state came from one that does.
        match state.msrs.iter_mut().find(|m| m.index == 0x10a) {
            Some(entry) => entry.data = u64::MAX,
            None => state.msrs.push(MsrEntry {
                index: 0x10a,
                data: u64::MAX,
            }),
        }
        let (_vm2, fresh) = vm(&kvm, &ram, None);
        fresh.restore_state(&state).unwrap();
    }
}
