//! The one pause protocol of host-vmm: whatever runs the guest or touches its memory (the
//! vCPU, the device I/O thread) can be stopped at a safe point and let go again.
//!
//! A migration pauses device I/O first (no more DMA into guest RAM), then the vCPU; the API's
//! `vm.pause` does the same. Resuming goes the other way round.

use std::time::Duration;

/// Something that can be stopped at a safe point and resumed.
pub trait Pause {
    /// Stops at the next safe point and returns once stopped (at once if stopped already).
    fn pause(&self) -> Result<(), PauseError>;
    /// Lets it run again; a no-op when it is not paused.
    fn resume(&self);
}

/// Why a pause did not take.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// What should stop has ended already (the guest exited).
    #[error("the {0} is not running any more")]
    Exited(&'static str),
    /// It did not stop in time.
    #[error("the {what} did not stop within {bound:?}")]
    Timeout {
        /// "vCPU" or "I/O thread".
        what: &'static str,
        /// How long it was given.
        bound: Duration,
    },
    /// Stopping failed otherwise (a signal not sent, the state not saved).
    #[error("cannot pause the {what}: {reason}")]
    Failed {
        /// "vCPU" or "I/O thread".
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
}
