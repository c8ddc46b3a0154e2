//! Auto-converge: when the guest dirties memory faster than pre-copy sends it, slow the
//! vCPU down until the dirty set fits the pause target (docs/migration.md §"Auto-converge").
//!
//! The rule is QEMU's with its defaults (`cpu-throttle-initial` 20, `cpu-throttle-increment`
//! 10, `throttle-trigger-threshold` 50, `max-cpu-throttle` 99): a dirty pass is *high* when
//! the guest dirtied, while it ran, more than half as many pages as it sent and the
//! predicted pause is still above the target; after two high passes in a row the throttle
//! starts at 20 % or rises by 10 points, up to 99 %. This is only the decision; the vCPU
//! side is [`crate::vcpu_gate::Throttle`].

use crate::vcpu_gate::MAX_THROTTLE;

/// The first throttle, percent.
pub const INITIAL: u8 = 20;
/// Each later step, percentage points.
pub const INCREMENT: u8 = 10;
/// A pass is high when it dirtied more than this share of the pages it sent, percent.
pub const TRIGGER_PERCENT: u64 = 50;
/// High passes in a row before a step.
pub const HIGH_PASSES: u32 = 2;

/// Where auto-converge is: the throttle it asks for and the high passes it has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoConverge {
    percent: u8,
    high: u32,
}

impl AutoConverge {
    /// After a dirty pass that sent `sent` pages while the guest dirtied `dirtied`, with
    /// the predicted pause for those still `over_target`: the new throttle, percent, when
    /// it changes.
    pub fn after_pass(&mut self, sent: usize, dirtied: usize, over_target: bool) -> Option<u8> {
        let high = over_target && dirtied as u64 * 100 > sent as u64 * TRIGGER_PERCENT;
        if !high {
            self.high = 0;
            return None;
        }
        self.high += 1;
        if self.high < HIGH_PASSES || self.percent >= MAX_THROTTLE {
            return None;
        }
        self.high = 0;
        self.percent = if self.percent == 0 {
            INITIAL
        } else {
            self.percent.saturating_add(INCREMENT).min(MAX_THROTTLE)
        };
        Some(self.percent)
    }

    /// The throttle asked for so far, percent (0: none).
    pub fn percent(&self) -> u8 {
        self.percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_high_passes_start_the_throttle_then_each_pair_raises_it() {
        let mut ac = AutoConverge::default();
        assert_eq!(ac.after_pass(1000, 900, true), None);
        assert_eq!(ac.after_pass(1000, 900, true), Some(20));
        assert_eq!(ac.after_pass(1000, 900, true), None);
        assert_eq!(ac.after_pass(1000, 900, true), Some(30));
        assert_eq!(ac.percent(), 30);
    }

    #[test]
    fn a_pass_that_shrinks_enough_or_fits_the_target_resets_the_count() {
        let mut ac = AutoConverge::default();
        assert_eq!(ac.after_pass(1000, 900, true), None);
        // Dirtied less than half of what it sent: converging on its own.
        assert_eq!(ac.after_pass(1000, 400, true), None);
        assert_eq!(ac.after_pass(1000, 900, true), None);
        // The prediction fits the target: no throttle, whatever the ratio.
        assert_eq!(ac.after_pass(1000, 900, false), None);
        assert_eq!(ac.after_pass(1000, 900, true), None);
        assert_eq!(ac.percent(), 0);
    }

    #[test]
    fn the_throttle_stops_at_its_maximum() {
        let mut ac = AutoConverge::default();
        let steps: Vec<u8> = (0..40)
            .filter_map(|_| ac.after_pass(1000, 1000, true))
            .collect();
        assert_eq!(steps, [20, 30, 40, 50, 60, 70, 80, 90, 99]);
        assert_eq!(ac.percent(), MAX_THROTTLE);
    }
}
