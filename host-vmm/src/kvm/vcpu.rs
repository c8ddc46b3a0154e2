//! One vCPU: its register state and its run loop step.
//!
//! [`Vcpu::run`] enters the guest once, serves port I/O and MMIO exits from the given buses,
//! and returns what happened as a [`VcpuExit`]; deciding what to do next (keep going, stop,
//! pause for a migration) is the caller's business.

use super::{KvmError, cpuid_table};
use crate::devices::Bus;
use kvm_bindings::{
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, kvm_cpuid_entry2, kvm_regs, kvm_run, kvm_sregs,
};
use kvm_ioctls::VcpuFd;

/// What one entry into the guest ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// Port I/O, already served by the port bus.
    Io {
        /// The first port of the access.
        port: u16,
        /// Whether the guest wrote.
        write: bool,
    },
    /// MMIO, already served by the MMIO bus.
    Mmio,
    /// A signal or `immediate_exit` interrupted `KVM_RUN` (how a pause will work).
    Interrupted,
    /// `HLT` reached user space (it should not with the in-kernel irqchip).
    Halted,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// KVM could not emulate or handle something (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// `KVM_INTERNAL_ERROR_*`.
        suberror: u32,
        /// Extra words KVM reported (at most 16).
        data: Vec<u64>,
    },
    /// The hardware refused to enter the guest (`KVM_EXIT_FAIL_ENTRY`).
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
    },
    /// The guest asked for a reset, shutdown or reported a crash (`KVM_EXIT_SYSTEM_EVENT`).
    SystemEvent {
        /// `KVM_SYSTEM_EVENT_*`.
        kind: u32,
    },
    /// Anything else: KVM's name for it.
    Unexpected(String),
}

/// Where a pending port access's data is, taken out of kvm-ioctls' exit so the borrow of the
/// vCPU can end before the access size is read from `kvm_run`.
struct PendingIo {
    port: u16,
    /// Writable only for an `IN` (for an `OUT` it is only read through).
    data: *mut u8,
    len: usize,
    write: bool,
}

/// A vCPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
}

impl Vcpu {
    pub(super) fn new(fd: VcpuFd) -> Self {
        Vcpu { fd }
    }

    /// `KVM_GET_TSC_KHZ`, or `None` when KVM cannot tell (no stable TSC).
    pub fn tsc_khz(&self) -> Option<u32> {
        match self.fd.get_tsc_khz() {
            Ok(0) => None,
            Ok(khz) => Some(khz),
            Err(e) => {
                log::warn!("KVM_GET_TSC_KHZ failed ({e}); the guest will calibrate its TSC");
                None
            }
        }
    }

    /// `KVM_SET_CPUID2`.
    pub fn set_cpuid(&self, entries: &[kvm_cpuid_entry2]) -> Result<(), KvmError> {
        self.fd
            .set_cpuid2(&cpuid_table(entries)?)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))
    }

    /// `KVM_GET_SREGS`.
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.fd
            .get_sregs()
            .map_err(KvmError::ioctl("KVM_GET_SREGS"))
    }

    /// `KVM_SET_SREGS`.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), KvmError> {
        self.fd
            .set_sregs(sregs)
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))
    }

    /// `KVM_GET_REGS`.
    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        self.fd.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))
    }

    /// `KVM_SET_REGS`.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), KvmError> {
        self.fd
            .set_regs(regs)
            .map_err(KvmError::ioctl("KVM_SET_REGS"))
    }

    /// Sets `kvm_run.immediate_exit`: while set, `KVM_RUN` returns [`VcpuExit::Interrupted`]
    /// at once (after completing a pending I/O), which is how a pause will stop the vCPU.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Enters the guest once; serves port I/O from `pio` and MMIO from `mmio`.
    pub fn run(&mut self, pio: &Bus, mmio: &Bus) -> Result<VcpuExit, KvmError> {
        use kvm_ioctls::VcpuExit as Kvm;
        let pending = match self.fd.run() {
            Ok(Kvm::IoIn(port, data)) => PendingIo {
                port,
                data: data.as_mut_ptr(),
                len: data.len(),
                write: false,
            },
            Ok(Kvm::IoOut(port, data)) => PendingIo {
                port,
                data: data.as_ptr().cast_mut(),
                len: data.len(),
                write: true,
            },
            Ok(Kvm::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    log::debug!("mmio: unhandled {}-byte read at {addr:#x}", data.len());
                }
                return Ok(VcpuExit::Mmio);
            }
            Ok(Kvm::MmioWrite(addr, data)) => {
                if !mmio.write(addr, data) {
                    log::debug!("mmio: unhandled write of {data:02x?} at {addr:#x}");
                }
                return Ok(VcpuExit::Mmio);
            }
            Ok(Kvm::Intr) => return Ok(VcpuExit::Interrupted),
            Ok(Kvm::Hlt) => return Ok(VcpuExit::Halted),
            Ok(Kvm::Shutdown) => return Ok(VcpuExit::Shutdown),
            Ok(Kvm::FailEntry(reason, _cpu)) => return Ok(VcpuExit::FailEntry { reason }),
            Ok(Kvm::SystemEvent(kind, _)) => return Ok(VcpuExit::SystemEvent { kind }),
            Ok(Kvm::InternalError) => return Ok(self.internal_error()),
            Ok(other) => return Ok(VcpuExit::Unexpected(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR => return Ok(VcpuExit::Interrupted),
            Err(e) => return Err(KvmError::Ioctl("KVM_RUN", e)),
        };
        Ok(self.serve_pio(pending, pio))
    }

    /// Splits a port access into `count` accesses of `size` bytes (string I/O moves several
    /// at once) and serves them from `bus`.
    fn serve_pio(&mut self, pending: PendingIo, bus: &Bus) -> VcpuExit {
        let run = self.fd.get_kvm_run();
        debug_assert_eq!(run.exit_reason, KVM_EXIT_IO);
        // SAFETY: `run()` just returned an I/O exit, so `io` is the union member KVM filled
        // in; it is plain data, copied out.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let exit = VcpuExit::Io {
            port: pending.port,
            write: pending.write,
        };
        // KVM puts the data on the page after `struct kvm_run` (KVM_PIO_PAGE_OFFSET); check
        // that, and the size, rather than assume them.
        let beyond_run = usize::try_from(io.data_offset)
            .is_ok_and(|offset| offset >= std::mem::size_of::<kvm_run>());
        if size == 0 || size * io.count as usize != pending.len || !beyond_run {
            log::debug!(
                "pio: malformed exit (size {size}, count {}, offset {})",
                io.count,
                io.data_offset
            );
            return exit;
        }
        let port = u64::from(pending.port);
        // The data pointer and length describe the slice kvm-ioctls handed out for this exit:
        // the PIO data area at `data_offset` inside the vCPU's `kvm_run` mapping, which stays
        // mapped as long as `self.fd`. That area lies past the end of `struct kvm_run`
        // (checked above), so the `run` reference (no longer used) never covered it, and
        // nothing else refers to it until the next `KVM_RUN`.
        if pending.write {
            // SAFETY: see above; an OUT's data is only read.
            let data = unsafe { std::slice::from_raw_parts(pending.data, pending.len) };
            for access in data.chunks_exact(size) {
                bus.write(port, access);
            }
        } else {
            // SAFETY: see above; the pointer came from kvm-ioctls' `&mut [u8]` for an IN.
            let data = unsafe { std::slice::from_raw_parts_mut(pending.data, pending.len) };
            for access in data.chunks_exact_mut(size) {
                bus.read(port, access);
            }
        }
        exit
    }

    fn internal_error(&mut self) -> VcpuExit {
        let run = self.fd.get_kvm_run();
        debug_assert_eq!(run.exit_reason, KVM_EXIT_INTERNAL_ERROR);
        // SAFETY: `run()` just returned an internal-error exit, so `internal` is the union
        // member KVM filled in; it is plain data, copied out.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        VcpuExit::InternalError {
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
    }
}
