//! The source of a migration: stream the guest to a `host-vmm receive`, pause it, send the
//! last pages and the machine state, and stop only once the destination runs it. Any
//! failure before that resumes the guest here (rollback).
//!
//! Pre-copy: dirty logging on (KVM's log for the vCPU's writes, the RAM bitmap for
//! host-vmm's own), a first pass over every populated page, then passes over the pages
//! dirtied meanwhile until the estimated pause (dirty bytes at the measured bandwidth) fits
//! `downtime` or `max_passes` is reached; then the pause. A guest that dirties pages as fast
//! as they are sent is throttled until it fits (auto-converge, [`super::converge`]); the
//! throttle ends once the vCPU is paused for the last pages, or at a rollback.
//! Zero-copy (`unix:` only): the memfd is handed over while the guest runs; the destination
//! maps it and builds its VM; only the machine state crosses during the pause.

use super::converge::AutoConverge;
use super::handover::Forwarder;
use super::target::{Address, AddressError, Protection, Security, Stream};
use crate::devices::ixgbevf::VfOperator;
use crate::memory::PAGE_SIZE;
use crate::pause::{Pause, PauseError};
use crate::vcpu_gate::{Stopped, Throttle};
use crate::vmm::Machine;
use migration_wire::{
    Hello, Message, Mode, WireError, encode_state, kind, read_message, write_message, write_pages,
};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// Default target for the pause (as QEMU and Cloud Hypervisor).
pub const DEFAULT_DOWNTIME: Duration = Duration::from_millis(300);
/// Dirty passes at most before pausing anyway.
pub const MAX_PASSES: u32 = 30;
/// Pages per batch (1 MiB).
const BATCH: usize = 256;
/// How long the destination may take to answer (Accept, Ready, Running).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the destination listens.
    pub target: Address,
    /// The pause to aim for.
    pub downtime: Duration,
    /// Hand the memfd over instead of copying pages (same machine, `unix:`).
    pub zero_copy: bool,
    /// How a `tcp:` stream is protected (mutual TLS, or plain TCP asked for by name; a
    /// `unix:` one checks the peer's user): loaded into the [`Security`] `migrate` takes.
    pub protection: Protection,
    /// Move even if the guest agent refuses or misses PREPARE: the host removes the VF
    /// itself (as a hot-unplug) and goes on; the progress says why ([`Progress::forced`]).
    pub force: bool,
}

/// The guest's agent, when there is one (migration-client over the control channel).
pub trait Agent {
    /// Moves traffic to virtio-net and releases the VF.
    fn prepare(&mut self) -> Result<(), String>;
    /// Re-probes the VF, switches back, announces.
    fn resumed(&mut self) -> Result<(), String>;
}

/// What a finished move did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Pre-copy or zero-copy.
    pub mode: Mode,
    /// From the start to the destination's "running" (the hand-over window after it is
    /// not counted).
    pub total: Duration,
    /// From this vCPU's stop to the destination's "running".
    pub pause: Duration,
    /// Everything written to the stream.
    pub bytes_sent: u64,
    /// Guest-memory bytes copied (0 for zero-copy).
    pub memory_bytes: u64,
    /// Page passes (the first, the dirty ones, the last one in the pause).
    pub passes: u32,
    /// Pages sent during the pause.
    pub pause_pages: u64,
    /// Frames for the guest that reached this side's port during the pause and travelled
    /// in the state.
    pub frames_carried: u64,
    /// Frames for the guest that reached this side's port after the state was sent,
    /// forwarded to the destination until it announced the guest.
    pub frames_forwarded: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "migrated mode={} total_ms={:.3} pause_ms={:.3} bytes_sent={} memory_bytes_copied={} passes={} pause_pages={} frames_carried={} frames_forwarded={}",
            match self.mode {
                Mode::PreCopy => "pre-copy",
                Mode::ZeroCopy => "zero-copy",
            },
            self.total.as_secs_f64() * 1e3,
            self.pause.as_secs_f64() * 1e3,
            self.bytes_sent,
            self.memory_bytes,
            self.passes,
            self.pause_pages,
            self.frames_carried,
            self.frames_forwarded
        )
    }
}

/// Why a move failed; the guest runs here again.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// No connection.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The stream broke or the destination answered wrongly.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A step on this side failed.
    #[error("{0}")]
    Local(String),
    /// The vCPU or device I/O could not be paused.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The operator cancelled the move.
    #[error("cancelled by the operator")]
    Cancelled,
}

/// Where a move is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the destination.
    #[default]
    Connecting,
    /// The guest agent moves traffic off the VF; the VF is detached.
    Preparing,
    /// Pre-copy: the first pass over every populated page.
    FirstPass,
    /// Pre-copy: a pass over the pages dirtied meanwhile.
    DirtyPass,
    /// Zero-copy: the destination maps guest RAM and builds its VM.
    HandingOver,
    /// The guest is paused: the last pages and the machine state go out.
    Paused,
    /// Done sent: the destination takes over (too late to cancel).
    Completing,
}

impl Phase {
    /// The name the API and the events use.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Preparing => "preparing",
            Phase::FirstPass => "first-pass",
            Phase::DirtyPass => "dirty-pass",
            Phase::HandingOver => "handing-over",
            Phase::Paused => "paused",
            Phase::Completing => "completing",
        }
    }
}

/// A move's progress, reported at every step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Where it is.
    pub phase: Phase,
    /// Page passes so far.
    pub pass: u32,
    /// Everything written to the stream so far.
    pub bytes_sent: u64,
    /// Guest-memory bytes copied so far.
    pub memory_bytes: u64,
    /// Pages dirtied since the last pass (pre-copy).
    pub dirty_pages: u64,
    /// Measured bandwidth, bytes per second (pre-copy).
    pub rate: f64,
    /// The pause the dirty pages would take at that rate.
    pub predicted_pause: Duration,
    /// Share of its time the vCPU is made to sleep (auto-converge), percent; 0: none.
    pub throttle_percent: u8,
    /// This step for a person, e.g. "pass 2: 310 dirty pages, ...".
    pub message: String,
    /// Set when the move goes on without the guest agent's PREPARE ([`Options::force`]):
    /// what the agent answered, or that it did not answer in time.
    pub forced: Option<String>,
}

/// Whether a move may still be cancelled, shared between the move and whoever cancels it.
#[derive(Debug, Default)]
pub struct Cancel(Mutex<CancelState>);

#[derive(Debug, Default, PartialEq, Eq)]
enum CancelState {
    #[default]
    Open,
    Requested,
    /// The destination was told to take over.
    Committed,
}

/// A cancel that came after the destination was told to take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the destination is already taking the guest over; the move can no longer be cancelled")]
pub struct TooLate;

impl Cancel {
    /// Asks the move to stop and roll back at its next step.
    pub fn request(&self) -> Result<(), TooLate> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match *s {
            CancelState::Committed => Err(TooLate),
            _ => {
                *s = CancelState::Requested;
                Ok(())
            }
        }
    }

    fn check(&self) -> Result<(), MigrateError> {
        match *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            CancelState::Requested => Err(MigrateError::Cancelled),
            _ => Ok(()),
        }
    }

    /// From here on a cancel is refused; fails if one came first.
    fn commit(&self) -> Result<(), MigrateError> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match *s {
            CancelState::Requested => Err(MigrateError::Cancelled),
            _ => {
                *s = CancelState::Committed;
                Ok(())
            }
        }
    }
}

/// Progress reports, at every step.
pub type Report<'a> = &'a mut dyn FnMut(&Progress);

/// Moves the guest of `machine` to `options.target`, the stream protected by `security`
/// (`options.protection` loaded for the source). On success the vCPU is stopped for
/// good ([`crate::Outcome::MigratedAway`]); on failure or `cancel` everything is as before
/// and the error says why.
pub fn migrate(
    machine: &Machine,
    options: &Options,
    security: &Security,
    mut agent: Option<&mut dyn Agent>,
    cancel: &Cancel,
    report: Report<'_>,
) -> Result<Summary, MigrateError> {
    if options.zero_copy && !matches!(options.target, Address::Unix(_)) {
        return Err(MigrateError::Usage(
            "--zero-copy needs a unix:PATH destination on this machine".into(),
        ));
    }
    let start = Instant::now();
    let mut stream = options.target.connect(security, Duration::from_secs(5))?;
    let mut run = Run {
        machine,
        stream: &mut stream,
        cancel,
        report,
        progress: Progress::default(),
        start,
        sent: 0,
        memory: 0,
        passes: 0,
        paused: None,
        vf_removed: false,
        dirty_logging: false,
        io_paused: false,
        throttle: None,
        forwarder: Forwarder::new(&machine.devices),
    };
    let result = run.go(options, &mut agent);
    match result {
        Ok(summary) => {
            machine.gate.stop(Stopped::MigratedAway);
            Ok(summary)
        }
        Err(e) => {
            // A write that failed because the destination gave up: its FAILED says why.
            // (and the frames it read for the guest before, which go back to the guest here).
            let e = match e {
                MigrateError::Wire(WireError::Io(io)) => {
                    match run.forwarder.last_words(run.stream, Duration::from_secs(1)) {
                        Some(reason) => MigrateError::Wire(WireError::PeerFailed(reason)),
                        None => MigrateError::Wire(WireError::Io(io)),
                    }
                }
                other => other,
            };
            let why = e.to_string();
            let _ = write_message(run.stream, &Message::Abort(why.clone()));
            run.stream.shutdown();
            run.roll_back(&mut agent);
            Err(e)
        }
    }
}

/// One move in progress, with what must be undone if it fails.
struct Run<'a, 'r> {
    machine: &'a Machine,
    stream: &'a mut Stream,
    cancel: &'a Cancel,
    report: Report<'r>,
    progress: Progress,
    start: Instant,
    sent: u64,
    memory: u64,
    passes: u32,
    /// When the vCPU stopped.
    paused: Option<Instant>,
    vf_removed: bool,
    dirty_logging: bool,
    io_paused: bool,
    /// The vCPU's throttle while auto-converge holds one.
    throttle: Option<Throttle>,
    /// The hand-over window's frames (see [`super::handover`]).
    forwarder: Forwarder<'a>,
}

impl Run<'_, '_> {
    /// Reports a step (the counters are kept up to date by the senders).
    fn step(&mut self, phase: Phase, message: String) {
        self.progress.phase = phase;
        self.progress.pass = self.passes;
        self.progress.bytes_sent = self.sent;
        self.progress.memory_bytes = self.memory;
        self.progress.message = message;
        (self.report)(&self.progress);
    }

    fn go(
        &mut self,
        options: &Options,
        agent: &mut Option<&mut dyn Agent>,
    ) -> Result<Summary, MigrateError> {
        let mode = if options.zero_copy {
            Mode::ZeroCopy
        } else {
            Mode::PreCopy
        };
        let ram_size = self.machine.ram.size();
        self.stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(WireError::Io)?;
        // A destination that stops reading without closing must not hang the source (and
        // the guest, once paused): a write that makes no progress for this long fails.
        self.stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(WireError::Io)?;
        self.send(&Message::Hello(Hello::new(mode, ram_size, 1)))?;
        self.reply(kind::ACCEPT)?;
        self.step(
            Phase::Preparing,
            format!(
                "connected to {}: {} of RAM, {}",
                options.target,
                ram_size,
                if options.zero_copy {
                    "zero-copy"
                } else {
                    "pre-copy"
                }
            ),
        );
        self.cancel.check()?;
        if options.zero_copy {
            // First, so the destination maps guest RAM and builds its VM while the guest
            // prepares (it runs nothing before the state arrives; an Abort ends it).
            let unix = self.stream.unix().ok_or_else(|| {
                MigrateError::Usage("--zero-copy needs a unix: destination".into())
            })?;
            super::fd::send_fd(unix, self.machine.ram.memfd(), b"guest-ram")?;
        }
        // The guest leaves the VF before anything else: it cannot move with it. A guest
        // that refuses or stalls is moved only when the operator forces it; the VF is then
        // pulled from under it below, as a hot-unplug it survives on virtio-net.
        if let Some(agent) = agent
            && let Err(e) = agent.prepare()
        {
            if !options.force {
                return Err(MigrateError::Local(format!(
                    "the guest agent did not prepare the move: {e}; to move the guest anyway \
                     (host-vmm then removes the VF itself), use --force (\"force\": true)"
                )));
            }
            log::warn!("migration: forced: the guest agent did not prepare the move: {e}");
            self.progress.forced = Some(e.clone());
            self.step(
                Phase::Preparing,
                format!(
                    "forced: the guest agent did not prepare the move ({e}); removing the VF \
                     from the host side"
                ),
            );
        }
        if let Some(vf) = self.machine.devices.vf()
            && vf.state().present
        {
            vf.remove()
                .map_err(|e| MigrateError::Local(format!("cannot detach the VF: {e}")))?;
            self.vf_removed = true;
        }
        let mut pending = Vec::new();
        if options.zero_copy {
            self.step(Phase::HandingOver, "handing guest RAM over".into());
            self.reply(kind::READY)?;
            self.step(
                Phase::HandingOver,
                "destination mapped guest RAM and built its VM".into(),
            );
        } else {
            pending = self.precopy(options.downtime)?;
            // The pause starts only when the destination has everything sent so far, so it
            // carries only its own pages (a round trip when `precopy` caught up already).
            self.catch_up()?;
        }
        self.cancel.check()?;
        // The pause: devices first (no more DMA), then the vCPU.
        self.io_paused = true;
        self.machine.io().pause()?;
        let paused_at = Instant::now();
        // Marked before asking: a pause that times out must still be undone.
        self.paused = Some(paused_at);
        self.machine.gate.pause()?;
        // Paused, the vCPU sleeps anyway; it runs unthrottled wherever it runs next.
        self.throttle = None;
        self.progress.throttle_percent = 0;
        self.step(Phase::Paused, "guest paused".into());
        // Frames that reach the TAP from here on would die with it: they travel too.
        let held = self.machine.devices.hold_net_frames();
        let mut pause_pages = 0;
        if !options.zero_copy {
            let dirty = self.take_dirty(pending)?;
            pause_pages = dirty.len() as u64;
            self.send_pages(&dirty)?;
            self.passes += 1;
        }
        let state = self
            .machine
            .save()
            .map_err(|e| MigrateError::Local(e.to_string()))?;
        let bytes = encode_state(&state)?;
        self.send(&Message::State(bytes))?;
        self.cancel.commit()?;
        self.step(
            Phase::Completing,
            "machine state sent; the destination takes over".into(),
        );
        self.send(&Message::Done)?;
        // From here until the destination has announced the guest, what reaches this
        // side's port for it is forwarded (before Running, the destination's Frames are
        // the ones it read for the guest: kept for a rollback).
        self.forwarder.open();
        self.forwarder
            .next_message(self.stream, REPLY_TIMEOUT)
            .map_err(|e| match e {
                WireError::Truncated { .. } => WireError::Malformed(
                    "the destination closed the connection (did it exit? see its stderr)".into(),
                ),
                other => other,
            })?
            .expect(kind::RUNNING)?;
        let pause = paused_at.elapsed();
        let total = self.start.elapsed();
        self.forwarder.commit();
        if held > 0 {
            log::info!("migration: {held} frames for the guest carried in the state");
        }
        // Committed: the guest runs there whatever happens to the forwarding.
        let forwarded = match self.forwarder.until_announced(self.stream) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("migration: forwarding the guest's frames ended early: {e}");
                self.forwarder.counts()
            }
        };
        log::info!(
            "migration: {} frames for the guest forwarded to the destination after the state{}",
            forwarded.frames,
            match forwarded.dropped {
                0 => String::new(),
                d => format!(" ({d} dropped beyond {})", super::handover::MAX_FORWARDED),
            }
        );
        Ok(Summary {
            mode,
            total,
            pause,
            bytes_sent: self.sent + self.forwarder.bytes_sent(),
            memory_bytes: self.memory,
            passes: self.passes,
            pause_pages,
            frames_carried: held as u64,
            frames_forwarded: forwarded.frames,
        })
    }

    /// The first pass and the dirty passes; returns the dirty pages left for the pause.
    fn precopy(&mut self, downtime: Duration) -> Result<Vec<u64>, MigrateError> {
        let local = |e: &dyn std::fmt::Display| MigrateError::Local(e.to_string());
        self.machine
            .vm
            .set_dirty_logging(true)
            .map_err(|e| local(&e))?;
        self.dirty_logging = true;
        // Start both logs clean: what is dirtied from here on is sent again.
        self.machine.vm.take_dirty_log().map_err(|e| local(&e))?;
        self.machine.ram.take_host_dirty();
        let ranges = self.machine.ram.populated().map_err(|e| local(&e))?;
        let first: Vec<u64> = ranges
            .iter()
            .flat_map(|r| (r.start / PAGE_SIZE)..r.end.div_ceil(PAGE_SIZE))
            .collect();
        let t = Instant::now();
        self.step(
            Phase::FirstPass,
            format!("pass 1: {} populated pages", first.len()),
        );
        self.send_pages(&first)?;
        self.passes = 1;
        let mut rate = rate(first.len(), t.elapsed());
        self.progress.rate = rate;
        self.step(
            Phase::FirstPass,
            format!(
                "pass 1: {} pages ({} bytes sent, {:.0} MB/s)",
                first.len(),
                self.sent,
                rate / 1e6
            ),
        );
        let mut converge = AutoConverge::default();
        let mut sent = first.len();
        // Pages of a harvest that fitted, kept while the destination caught up.
        let mut fitted: Option<Vec<u64>> = None;
        loop {
            let rechecked = fitted.is_some();
            let dirty = self.take_dirty(fitted.take().unwrap_or_default())?;
            let predicted = Duration::from_secs_f64(dirty.len() as f64 * PAGE_SIZE as f64 / rate);
            if !rechecked
                && let Some(percent) = converge.after_pass(sent, dirty.len(), predicted > downtime)
            {
                self.throttle(percent)?;
            }
            self.progress.dirty_pages = dirty.len() as u64;
            self.progress.rate = rate;
            self.progress.predicted_pause = predicted;
            self.step(
                Phase::DirtyPass,
                format!(
                    "pass {}: {} dirty pages, {} bytes sent, {:.0} MB/s, predicted pause {:.3} ms{}",
                    self.passes + 1,
                    dirty.len(),
                    self.sent,
                    rate / 1e6,
                    predicted.as_secs_f64() * 1e3,
                    match self.progress.throttle_percent {
                        0 => String::new(),
                        p => format!(", vCPU throttled {p}%"),
                    }
                ),
            );
            if (predicted <= downtime && rechecked) || self.passes >= MAX_PASSES {
                return Ok(dirty);
            }
            if predicted <= downtime {
                // What the guest dirties while the destination catches up (the queued
                // passes, seconds on a slow link) is in the pause too: catch up, then
                // predict again with those pages.
                self.catch_up()?;
                fitted = Some(dirty);
                continue;
            }
            self.cancel.check()?;
            let t = Instant::now();
            self.send_pages(&dirty)?;
            self.passes += 1;
            sent = dirty.len();
            rate = rate_blend(rate, rate_of(dirty.len(), t.elapsed()));
        }
    }

    /// Waits until the destination has everything sent so far (Sync, Synced). Writes
    /// return once the kernel has the bytes, not once they arrived: over a long or slow
    /// path most of the passes may still be queued.
    fn catch_up(&mut self) -> Result<(), MigrateError> {
        let t = Instant::now();
        self.send(&Message::Sync)?;
        self.reply(kind::SYNCED)?;
        log::debug!("migration: the destination caught up in {:?}", t.elapsed());
        Ok(())
    }

    /// Sleeps the vCPU `percent` % of the time from now on (auto-converge).
    fn throttle(&mut self, percent: u8) -> Result<(), MigrateError> {
        if self.throttle.is_none() {
            let throttle = self.machine.gate.throttle().map_err(|e| {
                MigrateError::Local(format!("cannot start the vCPU throttle's thread: {e}"))
            })?;
            self.throttle = Some(throttle);
        }
        if let Some(throttle) = &self.throttle {
            throttle.set(percent);
            self.progress.throttle_percent = throttle.percent();
        }
        log::info!("migration: auto-converge: vCPU throttled {percent}%");
        Ok(())
    }

    /// The pages dirtied since the last call by the vCPU or by host-vmm, with `also`,
    /// sorted and without repeats.
    fn take_dirty(&mut self, also: Vec<u64>) -> Result<Vec<u64>, MigrateError> {
        let kvm = self
            .machine
            .vm
            .take_dirty_log()
            .map_err(|e| MigrateError::Local(e.to_string()))?;
        let host = self.machine.ram.take_host_dirty();
        let words = kvm.len().max(host.len());
        let mut pages = also;
        for i in 0..words {
            let mut w = kvm.get(i).copied().unwrap_or(0) | host.get(i).copied().unwrap_or(0);
            while w != 0 {
                let bit = w.trailing_zeros() as u64;
                pages.push(i as u64 * 64 + bit);
                w &= w - 1;
            }
        }
        pages.sort_unstable();
        pages.dedup();
        let limit = self.machine.ram.size() / PAGE_SIZE;
        pages.retain(|p| *p < limit);
        Ok(pages)
    }

    /// Sends `pages` (sorted) in batches, read straight from guest RAM into the frame.
    fn send_pages(&mut self, pages: &[u64]) -> Result<(), MigrateError> {
        let mem = self.machine.ram.memory();
        let mut buf = Vec::new();
        for batch in pages.chunks(BATCH) {
            // Before the pause a cancel stops the move at the next batch.
            if self.paused.is_none() {
                self.cancel.check()?;
            }
            write_pages(self.stream, &mut buf, batch, |pfn, dst| {
                mem.read_slice(dst, GuestAddress(pfn * PAGE_SIZE))
                    .map_err(|e| WireError::Malformed(format!("page {pfn:#x}: {e}")))
            })?;
            self.sent += buf.len() as u64;
            self.memory += batch.len() as u64 * PAGE_SIZE;
        }
        Ok(())
    }

    fn send(&mut self, msg: &Message) -> Result<(), MigrateError> {
        let bytes = msg.encode()?;
        use std::io::Write;
        self.stream.write_all(&bytes).map_err(WireError::Io)?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Reads the destination's next message, which must be `expected` (its `Failed` is
    /// the error).
    fn reply(&mut self, expected: u16) -> Result<(), MigrateError> {
        let msg = read_message(self.stream).map_err(|e| match e {
            WireError::Truncated { .. } => WireError::Malformed(
                "the destination closed the connection (did it exit? see its stderr)".into(),
            ),
            other => other,
        })?;
        msg.into_result()?.expect(expected)?;
        Ok(())
    }

    /// Undoes what this move did, newest first, and lets the guest run on here.
    fn roll_back(&mut self, agent: &mut Option<&mut dyn Agent>) {
        self.throttle = None;
        self.progress.throttle_percent = 0;
        if self.paused.take().is_some() {
            self.machine.gate.resume();
        }
        if self.io_paused {
            // What went to the destination before it failed, and what it sent back, reach
            // the guest here after the frames it held, before anything newer.
            let back = self.forwarder.give_back();
            if back.frames > 0 {
                log::info!(
                    "migration: {} frames for the guest delivered here again after the rollback ({} dropped)",
                    back.frames,
                    back.dropped
                );
            }
            self.machine.io().resume();
            self.machine.devices.kick_net();
        }
        if self.dirty_logging {
            let _ = self.machine.vm.set_dirty_logging(false);
        }
        if self.vf_removed
            && let Some(vf) = self.machine.devices.vf()
            && let Err(e) = vf.add()
        {
            log::warn!("migration: cannot plug the VF back in: {e}");
        }
        if let Some(agent) = agent
            && let Err(e) = agent.resumed()
        {
            log::warn!("migration: the guest agent did not take RESUMED after the rollback: {e}");
        }
        self.progress.message = "rolled back: the guest runs here".into();
        (self.report)(&self.progress);
    }
}

/// Bytes per second for `pages` sent in `took` (at least one page per second).
fn rate_of(pages: usize, took: Duration) -> f64 {
    let bytes = (pages as f64 * PAGE_SIZE as f64).max(PAGE_SIZE as f64);
    bytes / took.as_secs_f64().max(1e-6)
}

/// Pages a first pass needs for its rate to be the link's: below, it measures latency.
const RATE_PAGES: usize = 1024;

/// The first pass's rate: as measured over at least [`RATE_PAGES`] (a floor of 100 MB/s
/// would make a slow link's predictions several times too short), else at least 100 MB/s.
fn rate(pages: usize, took: Duration) -> f64 {
    let measured = rate_of(pages, took);
    if pages >= RATE_PAGES {
        measured
    } else {
        measured.max(100e6)
    }
}

/// The next estimate: the last pass's rate weighted in (small passes say little).
fn rate_blend(old: f64, new: f64) -> f64 {
    (old + new) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_first_pass_measures_the_link_and_a_small_one_is_floored() {
        // 64 MiB in 2.684 s: a 25 MB/s link, as measured.
        let r = rate(16384, Duration::from_millis(2684));
        assert!((r - 25e6).abs() < 0.1e6, "{r}");
        // 10 pages in 1 ms says how long a round trip is, not how fast the link is.
        assert_eq!(rate(10, Duration::from_millis(1)), 100e6);
    }
}
