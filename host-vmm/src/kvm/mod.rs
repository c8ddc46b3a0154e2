//! The KVM layer: thin owning wrappers over `/dev/kvm`, the VM and its vCPU
//! (kvm-ioctls), in the order KVM needs them. Every ioctl host-vmm issues lives under this
//! module, together with the `unsafe` that some of them need.
//!
//! Nothing here knows the boot ABI or the devices' semantics: [`vm::Vm`] registers memory
//! and sets up the in-kernel irqchip, [`vcpu::Vcpu::run`] dispatches port and MMIO exits to
//! a [`crate::devices::Bus`] and returns a typed [`vcpu::VcpuExit`], and
//! [`routing::KvmVmOps`] serves devices' requests (MSI routes, ioeventfds).
//!
//! For migration: [`snapshot`] saves and restores everything KVM holds for a vCPU and the VM
//! (and documents what, in which order, and why); [`vm::Vm`] switches and harvests the dirty
//! log; a [`vcpu::VcpuKicker`] pauses a vCPU from another thread.

pub mod routing;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Cap;
use std::io;

/// The device node.
pub const KVM_PATH: &str = "/dev/kvm";
/// The only stable KVM API version.
const KVM_API_VERSION: i32 = 12;

/// Why a KVM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// There is no `/dev/kvm`.
    #[error("/dev/kvm not found: this needs a Linux host with KVM enabled")]
    NotFound,
    /// `/dev/kvm` exists but may not be opened by this user.
    #[error(
        "cannot open /dev/kvm: permission denied; run as root or add your user to the kvm group"
    )]
    PermissionDenied,
    /// Opening `/dev/kvm` failed otherwise.
    #[error("cannot open /dev/kvm")]
    Open(#[source] io::Error),
    /// The kernel speaks another KVM API.
    #[error("unsupported KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    /// An ioctl failed.
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// The CPUID table does not fit KVM's limit.
    #[error("the CPUID table has too many entries ({0})")]
    CpuidTooLarge(usize),
    /// Saved state (from a migration stream) does not fit this host or is malformed.
    #[error("invalid saved state: {0}")]
    InvalidState(String),
    /// This host can set the MSR but refused the saved value.
    #[error("KVM refused the saved value {value:#x} of MSR {index:#x}")]
    MsrRefused {
        /// The MSR.
        index: u32,
        /// The value from the saved state.
        value: u64,
    },
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU did not come to rest under `immediate_exit`.
    #[error("the vCPU did not stop under immediate_exit: {0}")]
    NotPaused(String),
}

impl KvmError {
    /// Wraps an ioctl error with the name of the ioctl.
    pub(crate) fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |e| KvmError::Ioctl(name, e)
    }
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks the API version.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = kvm_ioctls::Kvm::new_with_path(c"/dev/kvm").map_err(|e| {
            match io::Error::from_raw_os_error(e.errno()).kind() {
                io::ErrorKind::NotFound => KvmError::NotFound,
                io::ErrorKind::PermissionDenied => KvmError::PermissionDenied,
                _ => KvmError::Open(io::Error::from_raw_os_error(e.errno())),
            }
        })?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        Ok(Kvm { kvm })
    }

    /// Whether the in-kernel LAPIC timer has TSC-deadline mode.
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// `KVM_GET_SUPPORTED_CPUID` (about 0.4 ms: call it once per process).
    pub fn supported_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, KvmError> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().to_vec())
    }

    pub(crate) fn raw(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }
}

/// Builds the table `KVM_SET_CPUID2` takes.
pub(crate) fn cpuid_table(entries: &[kvm_cpuid_entry2]) -> Result<CpuId, KvmError> {
    CpuId::from_entries(entries).map_err(|_| KvmError::CpuidTooLarge(entries.len()))
}
