//! One host-vmm's control plane: at most one VM, its lifecycle, and every operation the API
//! offers on it. The HTTP layer ([`crate::api`]) only parses and answers; `host-vmm run` and
//! `receive` drive the same [`Controller`] from the command line.
//!
//! Lifecycle (the `state` of `vm.info`):
//!
//! ```text
//!  (none) ──vm.create──▶ Created ──vm.boot──▶ Running ⇄ Paused (vm.pause / vm.resume)
//!    │                                           │ vm.shutdown, guest exit ──▶ Shutdown
//!    └──vm.receive-migration──▶ Receiving ───────┘ vm.send-migration done ──▶ MigratedAway
//! ```
//!
//! The vCPU runs on a thread of its own (or on `main` for `host-vmm run`); a migration runs
//! on another, reporting its progress here and watching for a cancel. Every VM that
//! arrives by migration goes through [`Controller::after_arrival`], the one post-arrival
//! path.

use super::agent::{AGENT_TIMEOUT, AgentLink};
use super::job::{Job, JobView};
use crate::config::{DeviceConfig, RunConfig, TunnelEnds};
use crate::devices::ixgbevf::{VfOperator, VfState};
use crate::events::EventMonitor;
use crate::migration::destination;
use crate::migration::handover::Handover;
use crate::migration::source::{self, Options};
use crate::migration::target::{Address, Protection, Role, Security};
use crate::pause::Pause;
use crate::roaming::registration::Refresher;
use crate::vcpu_gate::Stopped;
use crate::vmm::{Machine, Outcome, Vmm};
use agent_proto::{Nic, Prepared, Reply, Request, Resumed, Service, Status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// How long a process that is ending waits for its last move's result to be read.
const RESULT_LINGER: Duration = Duration::from_secs(2);
/// How long `vm.shutdown` waits for the vCPU thread to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When the host-vmm process ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `host-vmm run` / `receive`: with its guest (exit, stop, move away, shutdown).
    Cli,
    /// `host-vmm --api-socket`: on `vmm.shutdown` only; VMs come and go.
    Api,
}

/// Why an operation was refused or failed; the API maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// The VM is not in a state that allows it (409).
    #[error("{0}")]
    Conflict(String),
    /// It was tried and failed (500), e.g. the guest agent did not answer.
    #[error("{0}")]
    Failed(String),
    /// Not now (503): e.g. the guest agent is busy with another client's request.
    #[error("{0}")]
    Busy(String),
}

/// What `vm.info` reports.
#[derive(Clone, Debug)]
pub struct Info {
    /// "Created", "Receiving", "Running", "Paused", "Shutdown", "MigratedAway".
    pub state: &'static str,
    /// The configuration it was created with (none for a received guest).
    pub config: Option<RunConfig>,
    /// Its devices.
    pub devices: DeviceConfig,
    /// Guest RAM in bytes (0 before boot).
    pub memory_bytes: u64,
}

/// A NIC operation for the guest agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicOp {
    /// Make this NIC the active one.
    Switch(Nic),
    /// The active NIC and the counters.
    Status,
    /// A move's first agent step on its own (debugging).
    Prepare,
    /// A move's last agent step on its own (debugging).
    Resumed,
}

/// What the guest agent answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicAnswer {
    /// Status (after a switch or a status request), and for a status request the agent's
    /// service figures (`None` from a guest whose agent predates SERVICE).
    Status(Status, Option<Service>),
    /// PREPARE's answer.
    Prepared(Prepared),
    /// RESUMED's answer.
    Resumed(Resumed),
}

/// A host-side VF operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfOp {
    /// Link up or down.
    Link(bool),
    /// Hot-remove.
    Remove,
    /// Plug back in.
    Add,
}

/// A VM whose vCPU runs (or is paused).
struct Live {
    machine: Arc<Machine>,
    agent: Option<Mutex<AgentLink>>,
    config: Option<RunConfig>,
    devices: DeviceConfig,
    paused: AtomicBool,
    /// Holds the refreshes of the guest's bindings while it is being moved on.
    refresh_holds: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Live {
    /// Holds (or lets go) the refreshes of the guest's bindings: a refresh during a move
    /// could point a binding back here after the next host took it.
    fn hold_refreshes(&self, hold: bool) {
        for h in lock(&self.refresh_holds).iter() {
            h.store(hold, Ordering::SeqCst);
        }
    }
}

enum Slot {
    Empty,
    Created(RunConfig),
    Receiving(DeviceConfig),
    Live(Arc<Live>),
    Ended {
        outcome: Result<Outcome, String>,
        config: Option<RunConfig>,
        devices: DeviceConfig,
    },
}

impl Slot {
    fn name(&self) -> &'static str {
        match self {
            Slot::Empty => "none",
            Slot::Created(_) => "Created",
            Slot::Receiving(_) => "Receiving",
            Slot::Live(l) if l.paused.load(Ordering::SeqCst) => "Paused",
            Slot::Live(_) => "Running",
            Slot::Ended {
                outcome: Ok(Outcome::MigratedAway),
                ..
            } => "MigratedAway",
            Slot::Ended { .. } => "Shutdown",
        }
    }
}

struct Inner {
    slot: Slot,
    /// The last migration sent from here (its progress stays readable after the end).
    job: Option<Arc<Job>>,
    /// `vmm.shutdown` was asked.
    exit: bool,
}

/// The control plane of one host-vmm.
pub struct Controller {
    mode: Mode,
    events: EventMonitor,
    agent_timeout: Duration,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("mode", &self.mode)
            .field("state", &lock(&self.inner).slot.name())
            .finish_non_exhaustive()
    }
}

/// A test knob: how long a received guest waits, restored and not yet announced nor
/// running, before the post-arrival path goes on (milliseconds, at most
/// [`MAX_ARRIVAL_HOLD`]). It keeps a move's hand-over window open so that tests see the
/// source forward frames; unset (or invalid, with a warning) it is 0.
pub const HOLD_ARRIVAL_VAR: &str = "ROAM_TEST_HOLD_ARRIVAL_MS";
/// The longest hold [`HOLD_ARRIVAL_VAR`] may ask for.
const MAX_ARRIVAL_HOLD: Duration = Duration::from_secs(1);

/// The hold [`HOLD_ARRIVAL_VAR`] asks for, if any.
fn test_arrival_hold() -> Option<Duration> {
    let v = std::env::var(HOLD_ARRIVAL_VAR).ok()?;
    match v.parse::<u64>().map(Duration::from_millis) {
        Ok(d) if d <= MAX_ARRIVAL_HOLD => Some(d).filter(|d| !d.is_zero()),
        _ => {
            log::warn!(
                "{HOLD_ARRIVAL_VAR}={v} ignored: milliseconds up to {} expected",
                MAX_ARRIVAL_HOLD.as_millis()
            );
            None
        }
    }
}

fn no_vm(state: &str) -> OpError {
    OpError::Conflict(format!(
        "no VM is running (state: {state}); create and boot one, or receive one"
    ))
}

impl Controller {
    /// A control plane with no VM yet.
    pub fn new(mode: Mode, events: EventMonitor) -> Arc<Controller> {
        Arc::new(Controller {
            mode,
            events,
            agent_timeout: AGENT_TIMEOUT,
            inner: Mutex::new(Inner {
                slot: Slot::Empty,
                job: None,
                exit: false,
            }),
            changed: Condvar::new(),
        })
    }

    /// The event monitor (for the layers that report through the controller).
    pub fn events(&self) -> &EventMonitor {
        &self.events
    }

    fn live(&self) -> Result<Arc<Live>, OpError> {
        let inner = lock(&self.inner);
        match &inner.slot {
            Slot::Live(l) => Ok(l.clone()),
            other => Err(no_vm(other.name())),
        }
    }

    /// `vm.create`: keeps `config` for `vm.boot`.
    pub fn create(&self, config: RunConfig) -> Result<(), OpError> {
        let mut inner = lock(&self.inner);
        match inner.slot {
            Slot::Empty | Slot::Ended { .. } => {
                inner.slot = Slot::Created(config);
                self.events.emit("vm", "created", &[]);
                Ok(())
            }
            ref other => Err(OpError::Conflict(format!(
                "a VM exists already (state: {}); delete it first (vm.delete)",
                other.name()
            ))),
        }
    }

    /// `vm.boot`: builds the created VM and starts its vCPU thread; returns once the guest
    /// runs (or with why it could not be built).
    pub fn boot(self: &Arc<Self>) -> Result<(), OpError> {
        let config = {
            let inner = lock(&self.inner);
            match &inner.slot {
                Slot::Created(c) => c.clone(),
                other => {
                    return Err(OpError::Conflict(format!(
                        "nothing to boot (state: {}): vm.create first",
                        other.name()
                    )));
                }
            }
        };
        let (tx, rx) = mpsc::channel();
        let this = self.clone();
        let thread_config = config.clone();
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(
                move || match Vmm::new(&thread_config, Box::new(std::io::stdout())) {
                    Ok(vmm) => {
                        let _ = tx.send(Ok(()));
                        let devices = thread_config.devices.clone();
                        let _ = this.run(vmm, Some(thread_config), devices);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                },
            )
            .map_err(|e| OpError::Failed(format!("cannot start the vCPU thread: {e}")))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OpError::BadRequest(format!("cannot boot the VM: {e}"))),
            Err(_) => Err(OpError::Failed(
                "the vCPU thread died while building".into(),
            )),
        }
    }

    /// Runs `vmm` on this thread until it ends, as the controller's VM (`host-vmm run`, the
    /// vCPU thread of `vm.boot`).
    pub fn run(
        self: &Arc<Self>,
        vmm: Vmm,
        config: Option<RunConfig>,
        devices: DeviceConfig,
    ) -> Result<Outcome, String> {
        self.adopt(vmm, config, devices, None).run()
    }

    /// Makes `vmm` the controller's VM (API requests reach it from now on); its vCPU runs
    /// once [`Adopted::run`] is called. `arrived`: it came by migration (the source still
    /// forwarding its frames on this stream) and goes through the post-arrival path first.
    pub fn adopt(
        self: &Arc<Self>,
        vmm: Vmm,
        config: Option<RunConfig>,
        devices: DeviceConfig,
        arrived: Option<Handover>,
    ) -> Adopted {
        let machine = vmm.machine().clone();
        let agent = machine
            .devices
            .take_agent_port()
            .map(|port| Mutex::new(AgentLink::new(port, self.agent_timeout)));
        let live = Arc::new(Live {
            machine,
            agent,
            config: config.clone(),
            devices: devices.clone(),
            paused: AtomicBool::new(false),
            refresh_holds: Mutex::new(Vec::new()),
        });
        {
            let mut inner = lock(&self.inner);
            inner.slot = Slot::Live(live.clone());
            self.changed.notify_all();
        }
        if let Some(handover) = arrived {
            self.after_arrival(&live, handover);
        } else {
            self.events.emit("vm", "booted", &[]);
        }
        Adopted {
            controller: self.clone(),
            live,
            vmm,
            config,
            devices,
            refreshers: Vec::new(),
        }
    }

    /// Records how the VM's run ended.
    fn ended(
        &self,
        outcome: Result<Outcome, String>,
        config: Option<RunConfig>,
        devices: DeviceConfig,
    ) -> Result<Outcome, String> {
        let what = match &outcome {
            Ok(Outcome::GuestExit(status)) => format!("guest exit {status}"),
            Ok(Outcome::GuestStopped(stop)) => stop.to_string(),
            Ok(Outcome::MigratedAway) => "migrated away".into(),
            Ok(Outcome::ShutDown) => "shut down".into(),
            Err(e) => e.clone(),
        };
        self.events.emit("vm", "shutdown", &[("reason", what)]);
        let mut inner = lock(&self.inner);
        inner.slot = Slot::Ended {
            outcome: outcome.clone(),
            config,
            devices,
        };
        self.changed.notify_all();
        outcome
    }

    /// The one post-arrival path: a migrated guest runs here now. Announces its MAC on the
    /// TAP it arrives on; then, on threads of their own as the guest runs meanwhile, tells
    /// the source so and delivers the frames it forwarded until then (`handover`), and
    /// plugs this side's VF in and tells the guest agent it has moved (RESUMED).
    fn after_arrival(self: &Arc<Self>, live: &Arc<Live>, handover: Handover) {
        if let Some(hold) = test_arrival_hold() {
            log::warn!(
                "migration: holding the arrival for {hold:?} before announcing the guest \
                 ({HOLD_ARRIVAL_VAR}, for tests: the source forwards meanwhile)"
            );
            std::thread::sleep(hold);
        }
        let sent = live.machine.devices.announce();
        log::info!("migration: announced the guest's MAC ({sent} frames)");
        self.events
            .emit("migration", "arrived", &[("announced", sent.to_string())]);
        let (this, on) = (self.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                let (counts, error) = match handover.finish(&on.machine.devices) {
                    Ok(c) => (c, None),
                    Err((c, e)) => (c, Some(e)),
                };
                log::info!(
                    "migration: {} frames forwarded by the source delivered to the guest ({} dropped)",
                    counts.frames,
                    counts.dropped
                );
                if let Some(e) = &error {
                    log::warn!("migration: the source's forwarding ended early: {e}");
                }
                this.events.emit(
                    "migration",
                    "handed-over",
                    &[
                        ("frames", counts.frames.to_string()),
                        ("dropped", counts.dropped.to_string()),
                    ],
                );
            });
        if let Err(e) = spawned {
            log::warn!("migration: cannot take the source's forwarded frames: {e}");
        }
        let live = live.clone();
        let spawned = std::thread::Builder::new()
            .name("arrival".into())
            .spawn(move || {
                if let Some(vf) = live.machine.devices.vf()
                    && !vf.state().present
                    && let Err(e) = vf.add()
                {
                    log::warn!("migration: cannot plug the VF in: {e}");
                }
                if let Some(agent) = &live.agent {
                    match lock(agent).resumed() {
                        Ok(r) => log::info!(
                            "migration: guest resumed (VF attached: {}, announced: {})",
                            r.vf_attached,
                            r.announced
                        ),
                        Err(e) => {
                            log::warn!("migration: the guest agent did not take RESUMED: {e}")
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("migration: cannot finish the arrival: {e}");
        }
    }

    /// `vm.info`.
    pub fn info(&self) -> Result<Info, OpError> {
        let inner = lock(&self.inner);
        let state = inner.slot.name();
        match &inner.slot {
            Slot::Empty => Err(OpError::Conflict(
                "no VM: create one (vm.create) or receive one (vm.receive-migration)".into(),
            )),
            Slot::Created(c) => Ok(Info {
                state,
                config: Some(c.clone()),
                devices: c.devices.clone(),
                memory_bytes: 0,
            }),
            Slot::Receiving(d) => Ok(Info {
                state,
                config: None,
                devices: d.clone(),
                memory_bytes: 0,
            }),
            Slot::Live(l) => Ok(Info {
                state,
                config: l.config.clone(),
                devices: l.devices.clone(),
                memory_bytes: l.machine.ram.size(),
            }),
            Slot::Ended {
                config, devices, ..
            } => Ok(Info {
                state,
                config: config.clone(),
                devices: devices.clone(),
                memory_bytes: 0,
            }),
        }
    }

    /// `vm.counters`: the running VM's devices' host-side counters.
    pub fn counters(&self) -> Result<crate::device_manager::Counters, OpError> {
        Ok(self.live()?.machine.devices.counters())
    }

    fn migrating(&self) -> bool {
        lock(&self.inner).job.as_ref().is_some_and(|j| j.running())
    }

    /// `vm.pause`: device I/O, then the vCPU.
    pub fn pause(&self) -> Result<(), OpError> {
        let live = self.live()?;
        if self.migrating() {
            return Err(OpError::Conflict(
                "a migration is running; cancel it first (vm.cancel-migration)".into(),
            ));
        }
        if live.paused.swap(true, Ordering::SeqCst) {
            return Err(OpError::Conflict("the VM is paused already".into()));
        }
        if let Err(e) = live.machine.pause() {
            live.paused.store(false, Ordering::SeqCst);
            return Err(OpError::Failed(e.to_string()));
        }
        self.events.emit("vm", "paused", &[]);
        Ok(())
    }

    /// `vm.resume`.
    pub fn resume(&self) -> Result<(), OpError> {
        let live = self.live()?;
        if !live.paused.swap(false, Ordering::SeqCst) {
            return Err(OpError::Conflict("the VM is not paused".into()));
        }
        live.machine.resume();
        self.events.emit("vm", "resumed", &[]);
        Ok(())
    }

    /// `vm.shutdown`: stops the vCPU for good and waits (bounded) until its thread ended.
    pub fn shutdown_vm(&self) -> Result<(), OpError> {
        let live = self.live()?;
        if self.migrating() {
            return Err(OpError::Conflict(
                "a migration is running; cancel it first (vm.cancel-migration)".into(),
            ));
        }
        live.machine.gate.stop(Stopped::ShutDown);
        // A paused VM's I/O thread is let go too: the vCPU no longer runs.
        if live.paused.swap(false, Ordering::SeqCst) {
            live.machine.io().resume();
        }
        drop(live);
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let mut inner = lock(&self.inner);
        while matches!(inner.slot, Slot::Live(_)) {
            let now = Instant::now();
            if now >= deadline {
                return Err(OpError::Failed(format!(
                    "the vCPU did not stop within {SHUTDOWN_WAIT:?}"
                )));
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// `vm.delete`: shuts a running VM down and forgets it.
    pub fn delete(&self) -> Result<(), OpError> {
        let state = lock(&self.inner).slot.name();
        match state {
            "Running" | "Paused" => self.shutdown_vm()?,
            "Receiving" => {
                return Err(OpError::Conflict(
                    "a migration is being received; it cannot be deleted now".into(),
                ));
            }
            _ => {}
        }
        lock(&self.inner).slot = Slot::Empty;
        self.events.emit("vm", "deleted", &[]);
        Ok(())
    }

    /// `vmm.shutdown`: shuts the VM down, if any (a running migration is cancelled
    /// first); [`Controller::exit`] then lets the process end.
    pub fn shutdown_vmm(&self) -> Result<(), OpError> {
        if self.live().is_ok() {
            if let Some(job) = lock(&self.inner).job.clone() {
                let _ = job.cancel();
            }
            let _ = self.shutdown_vm();
        }
        self.events.emit("vmm", "shutdown", &[]);
        Ok(())
    }

    /// Lets [`Controller::wait`] return: the process ends.
    pub fn exit(&self) {
        lock(&self.inner).exit = true;
        self.changed.notify_all();
    }

    /// Blocks until the process should end: in [`Mode::Api`] on `vmm.shutdown`; in
    /// [`Mode::Cli`] also when the VM ended. Returns how the VM ended, if it did.
    pub fn wait(&self) -> Option<Result<Outcome, String>> {
        let mut inner = lock(&self.inner);
        loop {
            let ended = match &inner.slot {
                Slot::Ended { outcome, .. } => Some(outcome.clone()),
                _ => None,
            };
            if inner.exit || (self.mode == Mode::Cli && ended.is_some()) {
                drop(inner);
                self.linger();
                return ended;
            }
            inner = self
                .changed
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Before the process (and its API socket) goes after its guest moved away: gives the
    /// one who started the move, who reads its result by polling, the chance to read it
    /// (bounded).
    pub fn linger(&self) {
        let inner = lock(&self.inner);
        if let (
            Some(job),
            Slot::Ended {
                outcome: Ok(Outcome::MigratedAway),
                ..
            },
        ) = (inner.job.clone(), &inner.slot)
        {
            drop(inner);
            job.wait_read(RESULT_LINGER);
        }
    }

    /// `vm.send-migration`: starts moving the guest to `options.target` and returns at
    /// once; `vm.migration-progress` follows it.
    pub fn send_migration(self: &Arc<Self>, options: Options) -> Result<(), OpError> {
        let live = self.live()?;
        if live.paused.load(Ordering::SeqCst) {
            return Err(OpError::Conflict(
                "the VM is paused; resume it before moving it (vm.resume)".into(),
            ));
        }
        if options.zero_copy && !matches!(options.target, Address::Unix(_)) {
            return Err(OpError::BadRequest(
                "zero-copy (local) needs a unix:PATH destination on this machine".into(),
            ));
        }
        // Read now: a directory that cannot be used is the request's fault.
        let security = options
            .protection
            .load(&options.target, Role::Source)
            .map_err(|e| OpError::BadRequest(e.to_string()))?;
        let job = {
            let mut inner = lock(&self.inner);
            if inner.job.as_ref().is_some_and(|j| j.running()) {
                return Err(OpError::Conflict("a migration is running already".into()));
            }
            let job = Arc::new(Job::new(&options));
            inner.job = Some(job.clone());
            job
        };
        self.events.emit(
            "migration",
            "started",
            &[
                ("destination", options.target.to_string()),
                (
                    "mode",
                    if options.zero_copy {
                        "zero-copy"
                    } else {
                        "pre-copy"
                    }
                    .into(),
                ),
            ],
        );
        let this = self.clone();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || this.migrate(&live, &job, &options, &security))
            .map_err(|e| OpError::Failed(format!("cannot start the migration thread: {e}")))?;
        Ok(())
    }

    fn migrate(&self, live: &Live, job: &Job, options: &Options, security: &Security) {
        log::info!("control: migrate to {}", options.target);
        let mut agent = live.agent.as_ref().map(SharedAgent);
        let mut last_phase = None;
        let mut forced = false;
        let mut throttle = 0;
        let mut report = |p: &source::Progress| {
            log::info!("migration: {}", p.message);
            if p.throttle_percent != throttle {
                throttle = p.throttle_percent;
                self.events.emit(
                    "migration",
                    "throttle",
                    &[("percent", throttle.to_string())],
                );
            }
            if let Some(why) = p.forced.as_ref().filter(|_| !forced) {
                forced = true;
                self.events
                    .emit("migration", "forced", &[("reason", why.clone())]);
            }
            if last_phase != Some(p.phase) {
                last_phase = Some(p.phase);
                self.events.emit(
                    "migration",
                    p.phase.name(),
                    &[
                        ("pass", p.pass.to_string()),
                        ("bytes_sent", p.bytes_sent.to_string()),
                    ],
                );
            }
            job.report(p);
        };
        live.hold_refreshes(true);
        let result = source::migrate(
            &live.machine,
            options,
            security,
            agent.as_mut().map(|a| a as &mut dyn source::Agent),
            job.cancel_handle(),
            &mut report,
        );
        match &result {
            Ok(summary) => {
                log::info!("control: {}", summary.to_string().trim_end());
                self.events.emit(
                    "migration",
                    "succeeded",
                    &[
                        (
                            "pause_ms",
                            format!("{:.3}", summary.pause.as_secs_f64() * 1e3),
                        ),
                        (
                            "total_ms",
                            format!("{:.3}", summary.total.as_secs_f64() * 1e3),
                        ),
                        ("frames_carried", summary.frames_carried.to_string()),
                        ("frames_forwarded", summary.frames_forwarded.to_string()),
                    ],
                );
            }
            Err(e) => {
                log::warn!("control: migration failed, the guest runs here: {e}");
                self.events
                    .emit("migration", "rolled-back", &[("reason", e.to_string())]);
                // The guest stays here: its bindings are this host's to keep alive again.
                live.hold_refreshes(false);
            }
        }
        job.finish(result);
    }

    /// `vm.migration-progress`: the running or last migration sent from here.
    pub fn migration_progress(&self) -> Option<JobView> {
        lock(&self.inner).job.as_ref().map(|j| j.view())
    }

    /// The answer to a `vm.migration-progress` was written (see [`Job::result_answered`]).
    pub fn progress_answered(&self) {
        if let Some(job) = lock(&self.inner).job.clone() {
            job.result_answered();
        }
    }

    /// `vm.cancel-migration`: rolls a running move back (the guest keeps running here).
    pub fn cancel_migration(&self) -> Result<(), OpError> {
        let job = lock(&self.inner).job.clone();
        match job {
            Some(job) if job.running() => {
                job.cancel().map_err(|e| OpError::Conflict(e.to_string()))?;
                self.events.emit("migration", "cancel-requested", &[]);
                Ok(())
            }
            Some(_) => Err(OpError::Conflict(
                "the last migration has ended already; there is nothing to cancel".into(),
            )),
            None => Err(OpError::Conflict("no migration is running".into())),
        }
    }

    /// `vm.receive-migration`: listens on `address` with `protection` (its TLS directory
    /// read now; returns once it listens)
    /// and takes one guest of at most `max_mem` bytes in on a thread of its own with
    /// `devices` (and its `mobility`: the home agent or the edges hear where it is); the
    /// guest then runs here.
    pub fn receive_migration(
        self: &Arc<Self>,
        address: &Address,
        protection: &Protection,
        mut devices: DeviceConfig,
        mobility: mip::Mobility,
        max_mem: Option<u64>,
    ) -> Result<String, OpError> {
        match &mobility {
            mip::Mobility::Mip(s) => {
                devices.tunnel = Some(TunnelEnds {
                    home_agent: s.home_agent,
                    home: s.home_address,
                });
            }
            mip::Mobility::Nat(s) => devices.routed = Some(s.home_address),
            mip::Mobility::None => {}
        }
        let net = devices.net.as_ref();
        if net.is_some_and(|n| n.mip) && devices.tunnel.is_none() {
            return Err(OpError::BadRequest(
                "net mip (the tunnel to the home agent) needs a mip: mobility setting".into(),
            ));
        }
        if net.is_some_and(|n| n.nat) {
            match &mobility {
                mip::Mobility::Nat(s) if s.location.is_some() => {}
                _ => {
                    return Err(OpError::BadRequest(
                        "net nat (a TAP routed to the guest at a foreign site) needs a nat: \
                         mobility setting with loc= (its location address here)"
                            .into(),
                    ));
                }
            }
        }
        let security = protection
            .load(address, Role::Destination)
            .map_err(|e| OpError::BadRequest(e.to_string()))?;
        let previous = {
            let mut inner = lock(&self.inner);
            match &inner.slot {
                Slot::Empty | Slot::Ended { .. } | Slot::Created(_) => {}
                other => {
                    return Err(OpError::Conflict(format!(
                        "a VM is here already (state: {}); delete it first",
                        other.name()
                    )));
                }
            }
            std::mem::replace(&mut inner.slot, Slot::Receiving(devices.clone()))
        };
        let listening = match destination::listen(address, security) {
            Ok(l) => l,
            Err(e) => {
                lock(&self.inner).slot = previous;
                return Err(OpError::BadRequest(e.to_string()));
            }
        };
        let local = listening.local();
        self.events
            .emit("migration", "receiving", &[("address", local.clone())]);
        let this = self.clone();
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let console = Box::new(std::io::stdout());
                match destination::receive(listening, &devices, &mobility, max_mem, console) {
                    Ok(arrival) => {
                        let mut adopted =
                            this.adopt(arrival.vmm, None, devices, Some(arrival.handover));
                        adopted.keep_refreshed(arrival.refreshers);
                        let _ = adopted.run();
                    }
                    Err(e) => {
                        log::info!("migration: no guest arrived: {e}");
                        this.events.emit(
                            "migration",
                            "receive-failed",
                            &[("reason", e.to_string())],
                        );
                        let mut inner = lock(&this.inner);
                        inner.slot = Slot::Ended {
                            outcome: Err(e.to_string()),
                            config: None,
                            devices,
                        };
                        this.changed.notify_all();
                    }
                }
            })
            .map_err(|e| OpError::Failed(format!("cannot start the receiving thread: {e}")))?;
        Ok(local)
    }

    /// `roam.nic`: a request to the guest agent.
    pub fn nic(&self, op: NicOp) -> Result<NicAnswer, OpError> {
        let live = self.live()?;
        let agent = live.agent.as_ref().ok_or_else(|| {
            OpError::Conflict(
                "this VM has no guest-agent channel (start it with an API socket)".into(),
            )
        })?;
        let request = match op {
            NicOp::Switch(nic) => Request::Switch(nic),
            NicOp::Status => Request::Status,
            NicOp::Prepare => Request::Prepare,
            NicOp::Resumed => Request::Resumed,
        };
        let mut link = self.agent_within_deadline(agent)?;
        let reply = link
            .call(request)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        let answer = match reply {
            Reply::Status(s) if op == NicOp::Status => NicAnswer::Status(s, service(&mut link)),
            Reply::Status(s) => NicAnswer::Status(s, None),
            Reply::Prepared(p) => NicAnswer::Prepared(p),
            Reply::Resumed(r) => NicAnswer::Resumed(r),
            Reply::Service(_) | Reply::Error(..) => {
                return Err(OpError::Failed(
                    "the guest agent answered with an unexpected reply".into(),
                ));
            }
        };
        drop(link);
        if let (NicOp::Switch(_), NicAnswer::Status(s, _)) = (op, &answer) {
            self.events.emit(
                "nic",
                "switched",
                &[("active", s.active.map_or("none", Nic::name).into())],
            );
        }
        Ok(answer)
    }

    /// The agent channel, once the request before (another client's, or a move's step)
    /// is done; if it is not within the agent's deadline, 503: one client waiting on a
    /// stalled guest does not queue the others behind it for longer.
    fn agent_within_deadline<'a>(
        &self,
        agent: &'a Mutex<AgentLink>,
    ) -> Result<MutexGuard<'a, AgentLink>, OpError> {
        let deadline = Instant::now() + self.agent_timeout;
        loop {
            match agent.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if Instant::now() >= deadline {
                return Err(OpError::Busy(format!(
                    "the guest agent is still busy with another request after {}; retry later",
                    super::agent::Wait(self.agent_timeout)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `roam.vf`: a host-side operation on the emulated VF.
    pub fn vf(&self, op: VfOp) -> Result<VfState, OpError> {
        let live = self.live()?;
        let vf =
            live.machine.devices.vf().ok_or_else(|| {
                OpError::Conflict("this VM has no VF (start it with --vf)".into())
            })?;
        let (result, event) = match op {
            VfOp::Link(true) => (vf.set_link(true), "link-up"),
            VfOp::Link(false) => (vf.set_link(false), "link-down"),
            VfOp::Remove => (vf.remove(), "removed"),
            VfOp::Add => (vf.add(), "added"),
        };
        result.map_err(|e| OpError::Conflict(e.to_string()))?;
        self.events.emit("vf", event, &[]);
        Ok(vf.state())
    }
}

/// A VM the controller serves, ready to run on the caller's thread.
pub struct Adopted {
    controller: Arc<Controller>,
    live: Arc<Live>,
    vmm: Vmm,
    config: Option<RunConfig>,
    devices: DeviceConfig,
    /// Keep a guest's bindings (home agent, edges) alive while it runs here.
    refreshers: Vec<Refresher>,
}

impl Adopted {
    /// Keeps the guest's bindings refreshed while it runs here (held during a move).
    pub fn keep_refreshed(&mut self, refreshers: Vec<Refresher>) {
        lock(&self.live.refresh_holds).extend(refreshers.iter().map(Refresher::holder));
        self.refreshers.extend(refreshers);
    }

    /// Runs the vCPU on this thread until the guest exits, stops, moves away or is shut
    /// down; the controller then knows how it ended.
    pub fn run(mut self) -> Result<Outcome, String> {
        let outcome = self.vmm.run().map_err(|e| e.to_string());
        // The guest left or stopped: no more refreshes from here.
        drop(self.refreshers);
        drop(self.vmm);
        self.controller.ended(outcome, self.config, self.devices)
    }
}

/// The guest agent as a migration sees it: locked per step, so `roam.nic` requests still
/// get through during a move.
struct SharedAgent<'a>(&'a Mutex<AgentLink>);

impl source::Agent for SharedAgent<'_> {
    fn prepare(&mut self) -> Result<(), String> {
        let p = lock(self.0).prepare().map_err(|e| e.to_string())?;
        log::info!("migration: guest prepared (released VF: {})", p.released_vf);
        Ok(())
    }

    fn resumed(&mut self) -> Result<(), String> {
        let r = lock(self.0).resumed().map_err(|e| e.to_string())?;
        log::info!(
            "migration: guest resumed (VF attached: {}, announced: {})",
            r.vf_attached,
            r.announced
        );
        Ok(())
    }
}

/// The agent's service figures, asked right after a STATUS on the same link; `None` (logged)
/// when the agent cannot tell: a guest from before SERVICE answers UnknownKind.
fn service(link: &mut AgentLink) -> Option<Service> {
    match link.call(Request::Service) {
        Ok(Reply::Service(s)) => Some(s),
        Ok(other) => {
            log::warn!("control: the guest agent answered SERVICE with {other:?}");
            None
        }
        Err(e) => {
            log::info!("control: no service figures from the guest: {e}");
            None
        }
    }
}
