//! The vCPU thread's side of a pause: the owner asks, the vCPU thread stops at its next
//! exit (finishing a pending I/O exit first), saves its registers and waits to be told to
//! go on ([`Pause::resume`]) or to stop for good ([`VcpuGate::stop`]).
//!
//! Also a partial pause, the [`Throttle`] (pre-copy's auto-converge, docs/migration.md): a
//! ticker thread kicks the vCPU once per period and the vCPU thread sleeps the throttled
//! share of it, as QEMU's CPU throttle does: with `p` %, it runs [`THROTTLE_SLICE`] and then
//! sleeps `p / (100 - p)` of that. A pause or a stop wakes a throttled vCPU at once.

use crate::devices::Bus;
use crate::kvm::snapshot::VcpuState;
use crate::kvm::vcpu::{Vcpu, VcpuKicker};
use crate::pause::{Pause, PauseError};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the vCPU may take to stop.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A throttled vCPU's running time per period (QEMU's `CPU_THROTTLE_TIMESLICE_NS`).
pub const THROTTLE_SLICE: Duration = Duration::from_millis(10);
/// The highest throttle, percent (QEMU's `max-cpu-throttle` default): the guest still runs.
pub const MAX_THROTTLE: u8 = 99;

const WHAT: &str = "vCPU";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops and restarts the vCPU thread at a safe point.
#[derive(Debug)]
pub struct VcpuGate {
    kicker: VcpuKicker,
    state: Mutex<Gate>,
    changed: Condvar,
    /// Set with [`Gate::PauseRequested`], so the vCPU loop checks without locking.
    requested: AtomicBool,
    /// What the throttle's ticker and the vCPU thread share.
    throttle: Arc<ThrottleShared>,
}

/// The throttle's state, shared by [`Throttle`] (and its ticker) and the vCPU thread.
#[derive(Debug, Default)]
struct ThrottleShared {
    /// Percent of each period the vCPU sleeps; 0: not throttled.
    percent: AtomicU8,
    /// The ticker kicked: the vCPU sleeps at its next interrupted exit.
    due: AtomicBool,
}

/// Why the gate ended the vCPU's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The guest runs on another host-vmm now.
    MigratedAway,
    /// The operator shut the VM down (`vm.shutdown`, `vm.delete`, `vmm.shutdown`).
    ShutDown,
}

/// Where the vCPU thread is, as the gate sees it.
#[derive(Debug)]
enum Gate {
    Running,
    PauseRequested,
    /// Stopped at an exit, with its state saved (or why saving failed).
    Paused(Result<Box<VcpuState>, String>),
    Resume,
    Stop(Stopped),
    /// The run loop returned.
    Exited,
}

impl VcpuGate {
    /// A gate for the vCPU that `kicker` interrupts.
    pub fn new(kicker: VcpuKicker) -> Self {
        VcpuGate {
            kicker,
            state: Mutex::new(Gate::Running),
            changed: Condvar::new(),
            requested: AtomicBool::new(false),
            throttle: Arc::default(),
        }
    }

    /// Starts throttling the vCPU at 0 % ([`Throttle::set`] raises it); dropping the
    /// [`Throttle`] lets the vCPU run at full speed again. One at a time (a move holds it).
    pub fn throttle(&self) -> Result<Throttle, std::io::Error> {
        let shared = self.throttle.clone();
        let kicker = self.kicker.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let ticker = std::thread::Builder::new()
            .name("vcpu-throttle".into())
            .spawn(move || {
                loop {
                    let percent = u32::from(shared.percent.load(Ordering::Relaxed));
                    // The whole period: the slice the vCPU runs plus the share it sleeps.
                    let period = THROTTLE_SLICE * 100 / (100 - percent.min(99));
                    match stopped.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if shared.percent.load(Ordering::Relaxed) > 0 {
                        shared.due.store(true, Ordering::SeqCst);
                        kicker.kick();
                    }
                }
            })?;
        Ok(Throttle {
            shared: self.throttle.clone(),
            stop: Some(stop),
            ticker: Some(ticker),
        })
    }

    /// Called by the vCPU thread at an interrupted exit that was no pause: if the
    /// throttle's ticker kicked, sleeps the throttled share of the period (woken early by
    /// a pause or a stop).
    pub fn throttle_wait(&self) {
        if !self.throttle.due.swap(false, Ordering::SeqCst) {
            return;
        }
        let percent = u32::from(
            self.throttle
                .percent
                .load(Ordering::Relaxed)
                .min(MAX_THROTTLE),
        );
        if percent == 0 {
            return;
        }
        let deadline = Instant::now() + THROTTLE_SLICE * percent / (100 - percent);
        let mut g = lock(&self.state);
        while matches!(*g, Gate::Running) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The registers saved when the vCPU stopped (only while it is paused).
    pub fn saved_state(&self) -> Result<VcpuState, PauseError> {
        match &*lock(&self.state) {
            Gate::Paused(Ok(state)) => Ok((**state).clone()),
            Gate::Paused(Err(e)) => Err(PauseError::Failed {
                what: WHAT,
                reason: format!("cannot save its state: {e}"),
            }),
            Gate::Exited => Err(PauseError::Exited(WHAT)),
            _ => Err(PauseError::Failed {
                what: WHAT,
                reason: "it is not paused".into(),
            }),
        }
    }

    /// Whether the vCPU is stopped at the gate now.
    pub fn is_paused(&self) -> bool {
        matches!(*lock(&self.state), Gate::Paused(_))
    }

    /// Ends the vCPU's run, paused or not: the run loop returns `why`.
    pub fn stop(&self, why: Stopped) {
        let mut g = lock(&self.state);
        match *g {
            Gate::Exited => {}
            Gate::Paused(_) | Gate::PauseRequested => {
                *g = Gate::Stop(why);
                self.changed.notify_all();
            }
            _ => {
                *g = Gate::Stop(why);
                self.requested.store(true, Ordering::SeqCst);
                self.kicker.kick();
                self.changed.notify_all();
            }
        }
    }

    /// Checked by the vCPU loop after every exit, without locking.
    pub fn requested(&self) -> bool {
        // SeqCst: read after the vCPU clears `immediate_exit`, a `false` here means a pause
        // asked later will kick again (its store comes after ours).
        self.requested.load(Ordering::SeqCst)
    }

    /// Called by the vCPU thread after an exit when [`VcpuGate::requested`]: saves the
    /// state and waits for the verdict: `Some` ends the run.
    pub fn park(&self, vcpu: &mut Vcpu, pio: &Bus, mmio: &Bus) -> Option<Stopped> {
        let mut g = lock(&self.state);
        match *g {
            Gate::PauseRequested => {}
            Gate::Stop(why) => return Some(why),
            _ => {
                // The pause was given up before the vCPU got here (it timed out and the
                // move rolled back): forget the kick and run on.
                self.requested.store(false, Ordering::SeqCst);
                vcpu.clear_immediate_exit();
                if matches!(*g, Gate::Resume) {
                    *g = Gate::Running;
                    self.changed.notify_all();
                }
                return None;
            }
        }
        let saved = vcpu
            .complete_pending_io(pio, mmio)
            .and_then(|()| vcpu.save_state())
            .map(Box::new)
            .map_err(|e| format!("{e}"));
        *g = Gate::Paused(saved);
        self.changed.notify_all();
        loop {
            match *g {
                Gate::Resume => {
                    self.requested.store(false, Ordering::SeqCst);
                    // Cleared before saying so: nothing kicks between here and the next pause.
                    vcpu.clear_immediate_exit();
                    *g = Gate::Running;
                    self.changed.notify_all();
                    return None;
                }
                Gate::Stop(why) => return Some(why),
                _ => {
                    g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    /// The run loop returned: pauses from now on fail at once.
    pub fn exited(&self) {
        *lock(&self.state) = Gate::Exited;
        self.changed.notify_all();
    }
}

/// A running throttle on the vCPU (see the module docs); dropped, the vCPU runs freely.
#[derive(Debug)]
pub struct Throttle {
    shared: Arc<ThrottleShared>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl Throttle {
    /// Sleeps the vCPU `percent` % of the time from the next period on (at most
    /// [`MAX_THROTTLE`]).
    pub fn set(&self, percent: u8) {
        self.shared
            .percent
            .store(percent.min(MAX_THROTTLE), Ordering::Relaxed);
    }

    /// The throttle now, percent.
    pub fn percent(&self) -> u8 {
        self.shared.percent.load(Ordering::Relaxed)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.shared.percent.store(0, Ordering::Relaxed);
        drop(self.stop.take());
        if let Some(ticker) = self.ticker.take()
            && ticker.join().is_err()
        {
            log::warn!("vcpu: the throttle's ticker panicked");
        }
        // A kick not yet taken must not make a later throttle sleep early.
        self.shared.due.store(false, Ordering::SeqCst);
    }
}

impl Pause for VcpuGate {
    /// Stops the vCPU at its next exit (its state saved, see [`VcpuGate::saved_state`]); it
    /// stays stopped until [`Pause::resume`] or [`VcpuGate::stop`].
    fn pause(&self) -> Result<(), PauseError> {
        let mut g = lock(&self.state);
        match *g {
            Gate::Exited | Gate::Stop(_) => return Err(PauseError::Exited(WHAT)),
            Gate::Running | Gate::Resume => {
                *g = Gate::PauseRequested;
                // A throttled vCPU sleeping in `throttle_wait` wakes now.
                self.changed.notify_all();
            }
            _ => {}
        }
        self.requested.store(true, Ordering::SeqCst);
        self.kicker.kick();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            match &*g {
                Gate::Paused(Ok(_)) => return Ok(()),
                Gate::Paused(Err(e)) => {
                    return Err(PauseError::Failed {
                        what: WHAT,
                        reason: format!("cannot save its state: {e}"),
                    });
                }
                Gate::Exited | Gate::Stop(_) => return Err(PauseError::Exited(WHAT)),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PauseError::Timeout {
                    what: WHAT,
                    bound: PAUSE_TIMEOUT,
                });
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets a paused vCPU run on.
    fn resume(&self) {
        let mut g = lock(&self.state);
        if matches!(*g, Gate::Paused(_) | Gate::PauseRequested) {
            *g = Gate::Resume;
            self.changed.notify_all();
        }
    }
}
