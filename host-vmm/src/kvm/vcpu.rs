//! One vCPU: its register state and its run loop step.
//!
//! [`Vcpu::run`] enters the guest once, serves port I/O and MMIO exits from the given buses,
//! and returns what happened as a [`VcpuExit`]; deciding what to do next (keep going, stop,
//! pause for a migration) is the caller's business.
//!
//! Pausing from another thread: a [`VcpuKicker`] sets `kvm_run.immediate_exit` and then
//! sends the vCPU thread [`kick_signal`] (installed without `SA_RESTART`, its handler does
//! nothing). The two together close the race with entering the guest: a kick that lands
//! before the thread's next `KVM_RUN` is seen by KVM's `immediate_exit` check on entry; one
//! that lands while the thread is inside `KVM_RUN` is a pending signal, which KVM checks
//! before every guest entry. Either way `KVM_RUN` returns `EINTR` ([`VcpuExit::Interrupted`]),
//! and keeps doing so until [`Vcpu::clear_immediate_exit`].

use super::{KvmError, cpuid_table};
use crate::devices::Bus;
use kvm_bindings::{
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, kvm_cpuid_entry2, kvm_regs, kvm_run, kvm_sregs,
};
use kvm_ioctls::VcpuFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};

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

/// What the VM's KVM offers for vCPU state, asked once when the vCPU is created.
#[derive(Clone, Debug)]
pub(super) struct VcpuCaps {
    /// Bytes of `KVM_GET_XSAVE(2)` state, or 0 without `KVM_CAP_XSAVE`.
    pub xsave_size: usize,
    /// `KVM_CAP_XCRS`.
    pub xcrs: bool,
    /// `KVM_GET_MSR_INDEX_LIST` plus the MSRs migration must carry (TSC, kvmclock).
    pub msr_index: Arc<[u32]>,
    /// `KVM_GET_MSR_FEATURE_INDEX_LIST`: MSRs that describe the host CPU.
    pub feature_msrs: Arc<[u32]>,
}

/// A vCPU.
#[derive(Debug)]
pub struct Vcpu {
    pub(super) fd: VcpuFd,
    pub(super) caps: VcpuCaps,
    /// The MSRs `KVM_GET_MSRS` returns on this vCPU, found once (see `state`).
    pub(super) readable_msrs: OnceLock<Vec<u32>>,
    /// What a [`VcpuKicker`] needs; cut off when the vCPU is dropped.
    kick: Arc<Mutex<KickTarget>>,
    /// `kvm_run.immediate_exit`, written only atomically (kickers write it from other threads).
    immediate_exit: *const AtomicU8,
}

// SAFETY: `immediate_exit` points into the vCPU's own `kvm_run` mapping, owned by `fd`, which
// moves with the `Vcpu`; it is only accessed atomically, so which thread holds the `Vcpu`
// does not matter.
unsafe impl Send for Vcpu {}

/// Where a kick goes: the `immediate_exit` byte (null once the vCPU is gone) and the thread
/// inside [`Vcpu::run`], if one is.
#[derive(Debug)]
struct KickTarget {
    immediate_exit: *const AtomicU8,
    thread: Option<libc::pthread_t>,
}

// SAFETY: the pointer is only dereferenced under the mutex and while non-null, i.e. while the
// `Vcpu` (and its `kvm_run` mapping) lives: `Vcpu::drop` nulls it first. The thread id is only
// signalled under the same mutex while that thread is inside `Vcpu::run`, so it is alive.
unsafe impl Send for KickTarget {}

/// Makes a vCPU's `KVM_RUN` return [`VcpuExit::Interrupted`] from any thread.
#[derive(Clone, Debug)]
pub struct VcpuKicker {
    target: Arc<Mutex<KickTarget>>,
}

/// The real-time signal that kicks vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the kicker set `immediate_exit` before signalling, and the signal's only
    // job is to make a running `KVM_RUN` return.
}

/// Installs the kick signal's handler once per process (`SA_SIGINFO`, no `SA_RESTART`).
fn install_kick_handler() -> Result<(), KvmError> {
    static ONCE: Once = Once::new();
    static RESULT: OnceLock<Result<(), i32>> = OnceLock::new();
    ONCE.call_once(|| {
        let r = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick_signal);
        let _ = RESULT.set(r.map_err(|e| e.errno()));
    });
    match RESULT.get() {
        Some(Ok(())) => Ok(()),
        Some(Err(errno)) => Err(KvmError::KickSignal(vmm_sys_util::errno::Error::new(
            *errno,
        ))),
        None => Err(KvmError::KickSignal(vmm_sys_util::errno::Error::new(
            libc::EINVAL,
        ))),
    }
}

impl VcpuKicker {
    /// Asks the vCPU to leave (or not enter) the guest: its current or next `KVM_RUN`
    /// returns [`VcpuExit::Interrupted`], and so does every later one until
    /// [`Vcpu::clear_immediate_exit`]. Does nothing once the vCPU is gone.
    pub fn kick(&self) {
        let target = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        if target.immediate_exit.is_null() {
            return;
        }
        // SAFETY: non-null under the mutex means the vCPU's `kvm_run` is still mapped (see
        // `KickTarget`); the byte is only ever accessed atomically from user space.
        unsafe { &*target.immediate_exit }.store(1, Ordering::SeqCst);
        if let Some(thread) = target.thread {
            // SAFETY: `thread` is inside `Vcpu::run` (it clears the field under this mutex
            // before leaving), so the id names a live thread; the handler is installed (a
            // kicker exists only after `install_kick_handler` succeeded).
            let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
            if rc != 0 {
                log::warn!("vcpu: cannot signal the vCPU thread (error {rc})");
            }
        }
    }
}

/// Marks the calling thread as the one inside `KVM_RUN` (or none), for kickers.
fn set_running_thread(kick: &Mutex<KickTarget>, running: bool) {
    let mut target = kick.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: pthread_self has no preconditions.
    target.thread = running.then(|| unsafe { libc::pthread_self() });
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // Before `fd` (and the `kvm_run` mapping) goes: no kicker may touch it afterwards.
        let mut target = self.kick.lock().unwrap_or_else(PoisonError::into_inner);
        target.immediate_exit = std::ptr::null();
        target.thread = None;
    }
}

impl Vcpu {
    pub(super) fn new(mut fd: VcpuFd, caps: VcpuCaps) -> Self {
        let immediate_exit: *const AtomicU8 =
            std::ptr::from_mut(&mut fd.get_kvm_run().immediate_exit).cast();
        Vcpu {
            fd,
            caps,
            readable_msrs: OnceLock::new(),
            kick: Arc::new(Mutex::new(KickTarget {
                immediate_exit,
                thread: None,
            })),
            immediate_exit,
        }
    }

    /// A handle other threads use to pause this vCPU (installs the kick signal's handler
    /// on first use).
    pub fn kicker(&self) -> Result<VcpuKicker, KvmError> {
        install_kick_handler()?;
        Ok(VcpuKicker {
            target: self.kick.clone(),
        })
    }

    fn immediate_exit(&self) -> &AtomicU8 {
        // SAFETY: the pointer is into `self.fd`'s `kvm_run` mapping, alive as long as `self`;
        // `u8` and `AtomicU8` have the same layout, and every user-space access is atomic.
        unsafe { &*self.immediate_exit }
    }

    /// Whether `immediate_exit` is set (a kick or [`Vcpu::set_immediate_exit`] is pending).
    pub fn pause_requested(&self) -> bool {
        self.immediate_exit().load(Ordering::SeqCst) != 0
    }

    /// Clears `immediate_exit`, to resume after a kick.
    pub fn clear_immediate_exit(&mut self) {
        self.set_immediate_exit(false);
    }

    /// Finishes a port or MMIO access KVM is still waiting to complete (the last exit was
    /// [`VcpuExit::Io`] or [`VcpuExit::Mmio`]) with `KVM_RUN` under `immediate_exit`, so that
    /// saved state is consistent (docs/kvm.md §8.4); a no-op `EINTR` otherwise. Leaves
    /// `immediate_exit` set: the vCPU stays paused.
    pub fn complete_pending_io(&mut self, pio: &Bus, mmio: &Bus) -> Result<(), KvmError> {
        self.set_immediate_exit(true);
        // A string access may need a few more exits before KVM can return; bound them.
        for _ in 0..16 {
            match self.run(pio, mmio)? {
                VcpuExit::Interrupted => return Ok(()),
                VcpuExit::Io { .. } | VcpuExit::Mmio => {}
                other => return Err(KvmError::NotPaused(format!("{other:?}"))),
            }
        }
        Err(KvmError::NotPaused("port or MMIO exits keep coming".into()))
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
        // Not through kvm-ioctls' plain write: kickers store to the same byte concurrently.
        self.immediate_exit().store(u8::from(on), Ordering::SeqCst);
    }

    /// Enters the guest once; serves port I/O from `pio` and MMIO from `mmio`.
    pub fn run(&mut self, pio: &Bus, mmio: &Bus) -> Result<VcpuExit, KvmError> {
        use kvm_ioctls::VcpuExit as Kvm;
        set_running_thread(&self.kick, true);
        let result = self.fd.run();
        // `result` borrows `self.fd`, not the kick state.
        set_running_thread(&self.kick, false);
        let pending = match result {
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
