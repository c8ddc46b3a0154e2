//! Clock arithmetic: TSC ticks to nanoseconds and back, calibration results, kvmclock's
//! scale, and `timespec` conversion. Pure integer math (the guest is soft-float), unit-tested
//! on the host; the running clock is in `timer`.

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A fixed-point factor `value * mult / 2^32`: one 64x64->128 multiply per conversion.
/// The multiplier is truncated, so conversions run slow by under 1 part in 2^31 (0.5 ppb,
/// under 2 µs per hour): far below any clock source's own error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scale {
    mult: u64,
}

impl Scale {
    /// The factor `numerator / denominator` (denominator nonzero). Saturates if the factor
    /// exceeds 2^32.
    pub fn ratio(numerator: u64, denominator: u64) -> Scale {
        let denominator = denominator.max(1);
        // One 64-bit DIV when the shifted numerator fits (all realistic clock rates below
        // 4.29 GHz); a 128-bit division is a slow library call in the guest.
        if numerator < 1 << 32 {
            return Scale {
                mult: (numerator << 32) / denominator,
            };
        }
        let mult = (u128::from(numerator) << 32) / u128::from(denominator);
        Scale {
            mult: u64::try_from(mult).unwrap_or(u64::MAX),
        }
    }

    /// The factor's raw 32.32 fixed-point multiplier, for storing it.
    pub fn mult(self) -> u64 {
        self.mult
    }

    /// A factor from a multiplier [`Scale::mult`] returned.
    pub fn from_mult(mult: u64) -> Scale {
        Scale { mult }
    }

    /// `value` times the factor, saturating at `u64::MAX`.
    pub fn apply(self, value: u64) -> u64 {
        let product = (u128::from(value) * u128::from(self.mult)) >> 32;
        u64::try_from(product).unwrap_or(u64::MAX)
    }
}

/// Converts between TSC values and nanoseconds: `base_ns` at TSC `origin`, counting on at
/// `hz` from there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscClock {
    /// TSC value at `base_ns`.
    pub origin: u64,
    /// TSC frequency.
    pub hz: u64,
    /// Nanoseconds the clock reads at `origin` (0 from boot; moved by [`TscClock::rebased`]).
    pub base_ns: u64,
    to_ns: Scale,
    to_ticks: Scale,
}

impl TscClock {
    /// A clock that reads zero at TSC `origin` and ticks at `hz` (nonzero).
    pub fn new(origin: u64, hz: u64) -> TscClock {
        TscClock {
            origin,
            hz,
            base_ns: 0,
            to_ns: Scale::ratio(NS_PER_SEC, hz),
            to_ticks: Scale::ratio(hz, NS_PER_SEC),
        }
    }

    /// A clock from parts computed earlier (`Scale::ratio` divides, which is slow in the
    /// guest: compute once, store the multipliers, rebuild with this). It reads zero at
    /// `origin`; set `base_ns` for another reading there.
    pub fn from_parts(origin: u64, hz: u64, to_ns: Scale, to_ticks: Scale) -> TscClock {
        TscClock {
            origin,
            hz,
            base_ns: 0,
            to_ns,
            to_ticks,
        }
    }

    /// The parts [`TscClock::from_parts`] takes: origin, frequency and the two scales.
    pub fn parts(&self) -> (u64, u64, Scale, Scale) {
        (self.origin, self.hz, self.to_ns, self.to_ticks)
    }

    /// Nanoseconds at TSC value `tsc` (`base_ns` at and before the origin).
    pub fn ns_at(&self, tsc: u64) -> u64 {
        self.base_ns
            .saturating_add(self.to_ns.apply(tsc.saturating_sub(self.origin)))
    }

    /// The TSC value at `ns` nanoseconds (the origin for times at or before `base_ns`).
    pub fn tsc_at(&self, ns: u64) -> u64 {
        self.origin
            .saturating_add(self.to_ticks.apply(ns.saturating_sub(self.base_ns)))
    }

    /// The same clock, reading `ns` at TSC `tsc` from now on.
    pub fn rebased(&self, tsc: u64, ns: u64) -> TscClock {
        TscClock {
            origin: tsc,
            base_ns: ns,
            ..*self
        }
    }

    /// The reading at `tsc` if it is not below `last` (the last reading handed out); if it
    /// is (the TSC went back: the machine moved to a host whose TSC is behind), `Err` with
    /// the clock to use instead, which reads `last` at `tsc` and counts on from there. The
    /// common case costs one compare.
    pub fn read_at_least(&self, tsc: u64, last: u64) -> Result<u64, TscClock> {
        let ns = self.ns_at(tsc);
        if ns >= last {
            Ok(ns)
        } else {
            Err(self.rebased(tsc, last))
        }
    }
}

/// The frequency of a clock that advanced `ticks` while a reference clock of `reference_hz`
/// advanced `reference_ticks` (nonzero).
pub fn frequency(ticks: u64, reference_ticks: u64, reference_hz: u64) -> u64 {
    let hz = u128::from(ticks) * u128::from(reference_hz) / u128::from(reference_ticks.max(1));
    u64::try_from(hz).unwrap_or(u64::MAX)
}

/// kvmclock's TSC-to-nanoseconds scale (`tsc_to_system_mul`, `tsc_shift`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvclockScale {
    /// 32.32 fixed-point multiplier.
    pub mul: u32,
    /// Power-of-two pre-shift of the TSC delta.
    pub shift: i8,
}

impl PvclockScale {
    /// Nanoseconds in `ticks` TSC ticks: `((ticks << shift) * mul) >> 32`, as the pvclock
    /// ABI defines it.
    pub fn ticks_to_ns(self, ticks: u64) -> u64 {
        let shifted = if self.shift >= 0 {
            ticks << self.shift.unsigned_abs().min(63)
        } else {
            ticks >> self.shift.unsigned_abs().min(63)
        };
        ((u128::from(shifted) * u128::from(self.mul)) >> 32) as u64
    }

    /// The TSC frequency this scale implies, in Hz (0 for a zero multiplier).
    pub fn tsc_hz(self) -> u64 {
        if self.mul == 0 {
            return 0;
        }
        // ns per tick = mul * 2^shift / 2^32, so hz = 1e9 * 2^32 / (mul * 2^shift).
        let mut numerator = u128::from(NS_PER_SEC) << 32;
        let mut denominator = u128::from(self.mul);
        if self.shift >= 0 {
            denominator <<= self.shift.unsigned_abs().min(63);
        } else {
            numerator <<= self.shift.unsigned_abs().min(63);
        }
        u64::try_from(numerator / denominator).unwrap_or(u64::MAX)
    }
}

/// `ns` as a `timespec`'s (seconds, nanoseconds).
pub fn split_ns(ns: u64) -> (i64, i32) {
    ((ns / NS_PER_SEC) as i64, (ns % NS_PER_SEC) as i32)
}

/// A `timespec` duration in nanoseconds (saturating), or `None` if it is negative or its
/// nanoseconds are not below one second.
pub fn timespec_ns(sec: i64, nsec: i32) -> Option<u64> {
    let sec = u64::try_from(sec).ok()?;
    let nsec = u64::try_from(nsec).ok().filter(|n| *n < NS_PER_SEC)?;
    Some(sec.saturating_mul(NS_PER_SEC).saturating_add(nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_clock_round_trips_at_common_frequencies() {
        for hz in [1_000_000_000, 2_100_000_000, 2_995_200_000, 3_600_000_000] {
            let clock = TscClock::new(1_000, hz);
            assert_eq!(clock.ns_at(1_000), 0);
            assert_eq!(clock.ns_at(500), 0, "before the origin");
            // One second of ticks is one second, to within a nanosecond.
            let one_sec = clock.ns_at(1_000 + hz);
            assert!(one_sec.abs_diff(NS_PER_SEC) <= 1, "{hz}: {one_sec}");
            // 32.32 fixed point truncates by under 1 part in 2^31: < 2 µs in an hour.
            let hour = clock.ns_at(1_000 + hz * 3600);
            assert!(hour.abs_diff(3600 * NS_PER_SEC) < 2_000, "{hz}: {hour}");
            let rebuilt = TscClock::from_parts(
                1_000,
                hz,
                Scale::ratio(NS_PER_SEC, hz),
                Scale::ratio(hz, NS_PER_SEC),
            );
            assert_eq!(rebuilt, clock);
            let (origin, h, to_ns, to_ticks) = clock.parts();
            assert_eq!(TscClock::from_parts(origin, h, to_ns, to_ticks), clock);
            let ten_ms = clock.tsc_at(10_000_000);
            assert!((ten_ms - 1_000).abs_diff(hz / 100) <= 1, "{hz}: {ten_ms}");
        }
    }

    #[test]
    fn tsc_clock_does_not_overflow_after_a_century() {
        let clock = TscClock::new(0, 3_000_000_000);
        let century_ticks = 3_000_000_000u64 * 3600 * 24 * 365 * 100;
        let ns = clock.ns_at(century_ticks);
        assert!(ns.abs_diff(3600 * 24 * 365 * 100 * NS_PER_SEC) < NS_PER_SEC);
        assert_eq!(clock.tsc_at(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_tsc_that_goes_back_never_takes_the_clock_back() {
        let hz = 2_000_000_000;
        let clock = TscClock::new(1_000, hz);
        // Normal readings pass through.
        let t1 = 1_000 + 2 * hz; // 2 s
        assert_eq!(clock.read_at_least(t1, 0), Ok(2 * NS_PER_SEC));
        assert_eq!(clock.read_at_least(t1, 2 * NS_PER_SEC), Ok(2 * NS_PER_SEC));
        // After a move the TSC reads 5 (even below the origin): the clock holds 2 s...
        let last = 2 * NS_PER_SEC;
        let Err(rebased) = clock.read_at_least(5, last) else {
            panic!("a step back was not caught")
        };
        assert_eq!(rebased.ns_at(5), last);
        assert_eq!((rebased.origin, rebased.base_ns, rebased.hz), (5, last, hz));
        // ...and counts on at the same rate from there, not stalling until the old TSC.
        assert_eq!(
            rebased.read_at_least(5 + hz / 1000, last),
            Ok(last + 1_000_000)
        );
        // Deadlines convert through the new origin: 10 ms later is 10 ms of new TSC.
        assert_eq!(rebased.tsc_at(last + 10_000_000), 5 + hz / 100);
        assert_eq!(
            rebased.tsc_at(last - 1),
            5,
            "a past deadline is due at once"
        );
        // A TSC that jumps forward moves the clock forward (timers fire early, never late).
        assert!(rebased.read_at_least(u64::MAX / 2, last).is_ok());
    }

    #[test]
    fn frequency_from_a_pit_interval() {
        // 10 ms of PIT (11932 ticks at 1.193182 MHz) and 21,001,140 TSC ticks: ~2.1 GHz.
        let hz = frequency(21_001_140, 11_932, 1_193_182);
        assert!(hz.abs_diff(2_100_000_000) < 500_000, "{hz}");
        assert_eq!(
            frequency(5, 0, 10),
            50,
            "a zero reference does not divide by zero"
        );
    }

    #[test]
    fn scale_ratio_is_the_same_on_both_division_paths() {
        // Below 2^32 the 64-bit path runs; compare with the 128-bit formula.
        for (n, d) in [
            (1_000_000_000, 2_599_998_000),
            (2_599_998_000, 1_000_000_000),
            (1, 3),
            ((1 << 32) - 1, 7),
        ] {
            let wide = ((u128::from(n) << 32) / u128::from(d)) as u64;
            assert_eq!(Scale::ratio(n, d).mult(), wide, "{n}/{d}");
        }
        assert_eq!(Scale::ratio(1 << 40, 1).mult(), u64::MAX, "saturates");
        assert_eq!(
            Scale::ratio(6, 0).mult(),
            6 << 32,
            "a zero denominator counts as 1"
        );
    }

    #[test]
    fn pvclock_scale_matches_the_abi_formula() {
        // KVM's scale for a 2 GHz TSC: shift -1, mul 2^32 (0.5 ns per tick). mul is u32, so
        // use the equivalent shift 0, mul 2^31.
        let s = PvclockScale {
            mul: 1 << 31,
            shift: 0,
        };
        assert_eq!(s.ticks_to_ns(2_000_000_000), 1_000_000_000);
        assert_eq!(s.tsc_hz(), 2_000_000_000);
        let s = PvclockScale {
            mul: 0x8000_0000,
            shift: -1,
        };
        assert_eq!(s.ticks_to_ns(4_000_000_000), 1_000_000_000);
        assert_eq!(s.tsc_hz(), 4_000_000_000);
        let s = PvclockScale {
            mul: 0xA000_0000,
            shift: 1,
        };
        assert_eq!(s.ticks_to_ns(800), 1_000);
        assert_eq!(s.tsc_hz(), 800_000_000);
        assert_eq!(PvclockScale::default().tsc_hz(), 0);
    }

    #[test]
    fn timespec_conversions() {
        assert_eq!(split_ns(1_500_000_001), (1, 500_000_001));
        assert_eq!(timespec_ns(1, 500_000_001), Some(1_500_000_001));
        assert_eq!(timespec_ns(0, 999_999_999), Some(999_999_999));
        assert_eq!(timespec_ns(0, 1_000_000_000), None);
        assert_eq!(timespec_ns(-1, 0), None);
        assert_eq!(timespec_ns(0, -1), None);
        assert_eq!(timespec_ns(i64::MAX, 0), Some(u64::MAX));
    }
}
