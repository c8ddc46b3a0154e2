//! One outgoing migration as the control plane follows it: its progress as the move reports
//! it, its cancel handle, and its result once it ended.

use crate::migration::source::{Cancel, MigrateError, Options, Phase, Progress, Summary, TooLate};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Under way.
    Running,
    /// The destination runs the guest.
    Succeeded,
    /// It failed and rolled back: the guest runs here.
    Failed,
    /// The operator cancelled it and it rolled back: the guest runs here.
    Cancelled,
}

impl JobState {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A snapshot of a migration for `vm.migration-progress`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    /// Running, or how it ended.
    pub state: JobState,
    /// Where the destination listens.
    pub destination: String,
    /// "pre-copy" or "zero-copy".
    pub mode: &'static str,
    /// The last step reported.
    pub progress: Progress,
    /// Since the start (to the end, once ended).
    pub elapsed: Duration,
    /// The result line of a finished move (`migrated mode=... pause_ms=...`).
    pub summary: Option<Summary>,
    /// Why it failed.
    pub error: Option<String>,
    /// Every step's message so far, oldest first (at most [`MAX_LOG`]).
    pub log: Vec<String>,
}

/// Steps kept per move (a move has at most 30 passes and a handful of other steps).
pub const MAX_LOG: usize = 256;

struct Status {
    log: Vec<String>,
    /// How it ended was put in an answer ([`Job::view`]).
    result_served: bool,
    /// ... and that answer was written ([`Job::result_answered`]).
    result_read: bool,
    state: JobState,
    progress: Progress,
    ended: Option<Instant>,
    summary: Option<Summary>,
    error: Option<String>,
}

/// A migration started from here.
pub struct Job {
    /// Signalled when the result was read.
    read: Condvar,
    destination: String,
    mode: &'static str,
    started: Instant,
    cancel: Cancel,
    status: Mutex<Status>,
}

impl Job {
    /// A job for a move with `options`, just started.
    pub fn new(options: &Options) -> Job {
        Job {
            read: Condvar::new(),
            destination: options.target.to_string(),
            mode: if options.zero_copy {
                "zero-copy"
            } else {
                "pre-copy"
            },
            started: Instant::now(),
            cancel: Cancel::default(),
            status: Mutex::new(Status {
                log: Vec::new(),
                result_served: false,
                result_read: false,
                state: JobState::Running,
                progress: Progress {
                    phase: Phase::Connecting,
                    ..Progress::default()
                },
                ended: None,
                summary: None,
                error: None,
            }),
        }
    }

    /// Whether it is still under way.
    pub fn running(&self) -> bool {
        lock(&self.status).state == JobState::Running
    }

    /// The move's side of the cancel.
    pub fn cancel_handle(&self) -> &Cancel {
        &self.cancel
    }

    /// Asks the move to roll back.
    pub fn cancel(&self) -> Result<(), TooLate> {
        self.cancel.request()
    }

    /// A step of the move.
    pub fn report(&self, progress: &Progress) {
        let mut s = lock(&self.status);
        if s.log.len() < MAX_LOG && !progress.message.is_empty() {
            s.log.push(progress.message.clone());
        }
        s.progress = progress.clone();
    }

    /// The move's end.
    pub fn finish(&self, result: Result<Summary, MigrateError>) {
        let mut s = lock(&self.status);
        self.read.notify_all();
        s.ended = Some(Instant::now());
        match result {
            Ok(summary) => {
                s.state = JobState::Succeeded;
                s.summary = Some(summary);
            }
            Err(MigrateError::Cancelled) => {
                s.state = JobState::Cancelled;
                s.error = Some(MigrateError::Cancelled.to_string());
            }
            Err(e) => {
                s.state = JobState::Failed;
                s.error = Some(e.to_string());
            }
        }
    }

    /// Waits (at most `bound`) until the job has ended and its result was read (the vCPU
    /// of a guest that moved away stops just before the move reports its end).
    pub fn wait_read(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut s = lock(&self.status);
        while s.state == JobState::Running || !s.result_read {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            s = self
                .read
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// An answer to a progress request was written: if it carried the result, the result
    /// has been read.
    pub fn result_answered(&self) {
        let mut s = lock(&self.status);
        if s.result_served {
            s.result_read = true;
            self.read.notify_all();
        }
    }

    /// Where it stands now.
    pub fn view(&self) -> JobView {
        let mut s = lock(&self.status);
        if s.state != JobState::Running {
            s.result_served = true;
        }
        JobView {
            state: s.state,
            destination: self.destination.clone(),
            mode: self.mode,
            progress: s.progress.clone(),
            elapsed: s.ended.unwrap_or_else(Instant::now) - self.started,
            summary: s.summary.clone(),
            error: s.error.clone(),
            log: s.log.clone(),
        }
    }
}
