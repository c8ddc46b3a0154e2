//! The Identification field with timestamp replay protection (RFC 5944 §5.7; Roam's spec
//! §6): 64-bit NTP timestamps, the home agent's check, its resynchronising answer to a
//! failed check (code 133), and the mobile node's side of both. Nonces are not
//! implemented.
//!
//! Timestamps compare by their wrapping difference (as NTP does), so the roll-over of the
//! 32-bit seconds in February 2036 is just another second.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

const LOW: u64 = 0xFFFF_FFFF;
const HIGH: u64 = LOW << 32;

/// The NTP timestamp of `time`: seconds since 1900 (modulo 2³²) in the high 32 bits, the
/// binary fraction of a second in the low 32. Times before 1970 count as 1970.
pub fn ntp_from_system_time(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs().wrapping_add(NTP_UNIX_OFFSET) & LOW;
    // nanos < 10⁹, so the fraction is < 2³².
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | fraction
}

/// Now as an NTP timestamp, for a Request's Identification. The clock gives nanoseconds,
/// so the two lowest fraction bits carry no time: they are random, as RFC 5944 asks of
/// bits the clock cannot fill (distinct nanoseconds still give increasing values).
pub fn ntp_now() -> u64 {
    let random = RandomState::new().build_hasher().finish() & 0b11;
    (ntp_from_system_time(SystemTime::now()) & !0b11) | random
}

/// `a - b` in NTP units (2⁻³² s), for timestamps within 68 years of each other.
fn ntp_diff(a: u64, b: u64) -> i64 {
    // Reinterpreting the wrapped difference as signed is the point.
    a.wrapping_sub(b) as i64
}

/// A duration in NTP units, saturating.
fn ntp_units(d: Duration) -> u64 {
    let fraction = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    d.as_secs()
        .checked_mul(1 << 32)
        .and_then(|secs| secs.checked_add(fraction))
        .unwrap_or(u64::MAX)
}

/// NTP units as a duration.
fn from_ntp_units(units: u64) -> Duration {
    let nanos = ((units & LOW) * 1_000_000_000) >> 32;
    // nanos < 10⁹: it fits.
    Duration::new(units >> 32, u32::try_from(nanos).unwrap_or(999_999_999))
}

/// Why a home agent refuses an Identification (it answers 133).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum IdentificationError {
    /// Further from the home agent's clock than the security association's skew.
    #[error("Identification is {by:?} {} the home agent's clock, more than the allowed {skew:?}", if *ahead { "ahead of" } else { "behind" })]
    OutsideWindow {
        /// Whether it is ahead of (true) or behind the clock.
        ahead: bool,
        /// By how much.
        by: Duration,
        /// The allowed skew.
        skew: Duration,
    },
    /// Not greater than the last Identification accepted from this mobile node: a replay.
    #[error("Identification {id:#018x} is not newer than the last accepted {last:#018x}")]
    NotNewer {
        /// The Identification received.
        id: u64,
        /// The last one accepted.
        last: u64,
    },
}

/// The home agent's timestamp check: `id` must be within `skew` of `now` (both NTP
/// timestamps; the clock first) and greater than `last_accepted`, the last Identification
/// accepted from this mobile node, if any.
pub fn check_timestamp(
    id: u64,
    last_accepted: Option<u64>,
    now: u64,
    skew: Duration,
) -> Result<(), IdentificationError> {
    let offset = ntp_diff(id, now);
    if offset.unsigned_abs() > ntp_units(skew) {
        return Err(IdentificationError::OutsideWindow {
            ahead: offset > 0,
            by: from_ntp_units(offset.unsigned_abs()),
            skew,
        });
    }
    match last_accepted {
        Some(last) if ntp_diff(id, last) <= 0 => Err(IdentificationError::NotNewer { id, last }),
        _ => Ok(()),
    }
}

/// The Identification of a home agent's code 133 Reply: its own clock's seconds (`ha_now`'s
/// high 32 bits) and the Request's low 32 bits, so the mobile node can match the Reply and
/// resynchronise.
pub fn resync_identification(ha_now: u64, request_id: u64) -> u64 {
    (ha_now & HIGH) | (request_id & LOW)
}

/// Whether a Reply's Identification answers a Request's: the low 32 bits are equal (the
/// high 32 may be the home agent's clock).
pub fn reply_matches(request_id: u64, reply_id: u64) -> bool {
    request_id & LOW == reply_id & LOW
}

/// The mobile node's Identification source: this host's clock, corrected by what the home
/// agent said in its last code 133 Reply, and strictly increasing between corrections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestClock {
    offset_secs: i64,
    last: Option<u64>,
}

impl RequestClock {
    /// A clock with no correction.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Identification for the next Request.
    pub fn next_identification(&mut self) -> u64 {
        self.next_identification_at(ntp_now())
    }

    /// [`Self::next_identification`] when the local clock reads `now` (an NTP timestamp).
    pub fn next_identification_at(&mut self, now: u64) -> u64 {
        // |offset| < 2³¹ s (it comes from a 32-bit difference), so the shift cannot overflow.
        let mut id = now.wrapping_add_signed(self.offset_secs << 32);
        if let Some(last) = self.last.filter(|&last| ntp_diff(id, last) <= 0) {
            id = last.wrapping_add(1);
        }
        self.last = Some(id);
        id
    }

    /// Adopts the home agent's clock from a code 133 Reply's Identification. Call it only
    /// for a Reply that was authenticated and [matches](reply_matches) a Request we sent:
    /// anyone can send a 133.
    pub fn resync(&mut self, reply_identification: u64) {
        self.resync_at(reply_identification, ntp_now());
    }

    /// [`Self::resync`] when the local clock reads `now`.
    pub fn resync_at(&mut self, reply_identification: u64, now: u64) {
        let ha = (reply_identification >> 32) as u32;
        let ours = (now >> 32) as u32;
        // The wrapped difference of two 32-bit second counts, as a signed offset.
        self.offset_secs = i64::from(ha.wrapping_sub(ours) as i32);
        // The home agent's clock decides from here; our earlier values say nothing.
        self.last = None;
    }

    /// Seconds added to the local clock.
    pub fn offset_secs(&self) -> i64 {
        self.offset_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1 << 32;

    #[test]
    fn ntp_epoch_and_fraction() {
        assert_eq!(ntp_from_system_time(UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
        let t = UNIX_EPOCH + Duration::new(1, 500_000_000);
        assert_eq!(
            ntp_from_system_time(t),
            ((NTP_UNIX_OFFSET + 1) << 32) | 0x8000_0000
        );
        let t = UNIX_EPOCH + Duration::from_millis(250);
        assert_eq!(ntp_from_system_time(t) & LOW, 0x4000_0000);
        // 2026-12-07T00:00:00Z = Unix 1796601600.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_601_600);
        assert_eq!(
            ntp_from_system_time(t) >> 32,
            1_796_601_600 + NTP_UNIX_OFFSET
        );
    }

    #[test]
    fn ntp_era_wraps_in_2036() {
        // Era 1 starts at Unix 2085978496 (2036-02-07T06:28:16Z).
        let t = UNIX_EPOCH + Duration::from_secs(2_085_978_496 + 5);
        assert_eq!(ntp_from_system_time(t), 5 << 32);
        // One second before, in era 0, still compares as earlier.
        let before = ntp_from_system_time(UNIX_EPOCH + Duration::from_secs(2_085_978_495));
        assert_eq!(before >> 32, 0xFFFF_FFFF);
        assert!(check_timestamp(5 << 32, Some(before), 5 << 32, Duration::from_secs(7)).is_ok());
    }

    #[test]
    fn ntp_now_is_near_system_time() {
        let before = ntp_from_system_time(SystemTime::now());
        let now = ntp_now();
        let after = ntp_from_system_time(SystemTime::now());
        assert!(ntp_diff(now, before) >= -3 && ntp_diff(after, now) >= -3);
    }

    #[test]
    fn window_edges() {
        let now = 0xED00_0000_8000_0000;
        let skew = Duration::from_secs(7);
        assert!(check_timestamp(now, None, now, skew).is_ok());
        assert!(check_timestamp(now + 7 * SEC, None, now, skew).is_ok());
        assert!(check_timestamp(now - 7 * SEC, None, now, skew).is_ok());
        assert_eq!(
            check_timestamp(now + 7 * SEC + 1, None, now, skew),
            Err(IdentificationError::OutsideWindow {
                ahead: true,
                by: from_ntp_units(7 * SEC + 1),
                skew
            })
        );
        let err = check_timestamp(now - 8 * SEC, None, now, skew).unwrap_err();
        assert_eq!(
            err,
            IdentificationError::OutsideWindow {
                ahead: false,
                by: Duration::from_secs(8),
                skew
            }
        );
        assert_eq!(
            err.to_string(),
            "Identification is 8s behind the home agent's clock, more than the allowed 7s"
        );
    }

    #[test]
    fn replays_and_older_values_are_refused() {
        let now = 0xED00_0000_0000_0000;
        let skew = Duration::from_secs(7);
        let last = now - SEC;
        assert!(check_timestamp(last + 1, Some(last), now, skew).is_ok());
        assert_eq!(
            check_timestamp(last, Some(last), now, skew),
            Err(IdentificationError::NotNewer { id: last, last })
        );
        assert!(check_timestamp(last - 1, Some(last), now, skew).is_err());
    }

    #[test]
    fn fractional_skew() {
        let now = 0xED00_0000_0000_0000;
        let skew = Duration::from_millis(500);
        assert!(check_timestamp(now + SEC / 2, None, now, skew).is_ok());
        assert!(check_timestamp(now + SEC / 2 + 1, None, now, skew).is_err());
        assert_eq!(ntp_units(Duration::MAX), u64::MAX);
    }

    #[test]
    fn resync_and_matching() {
        let request = 0xED00_0010_1234_5678;
        let ha_now = 0xED00_0100_9999_9999;
        let reply = resync_identification(ha_now, request);
        assert_eq!(reply, 0xED00_0100_1234_5678);
        assert!(reply_matches(request, reply));
        assert!(!reply_matches(request, reply ^ 1));
        assert!(reply_matches(request, request));
    }

    #[test]
    fn request_clock_follows_the_home_agent() {
        let local = 0xED00_0010_0000_0000;
        let mut clock = RequestClock::new();
        assert_eq!(clock.next_identification_at(local), local);
        // The same reading again still gives a greater value.
        assert_eq!(clock.next_identification_at(local), local + 1);
        // The home agent is 240 s behind: it answers 133 with its clock.
        let reply = resync_identification(local - 240 * SEC, local);
        clock.resync_at(reply, local);
        assert_eq!(clock.offset_secs(), -240);
        let id = clock.next_identification_at(local + SEC);
        assert_eq!(id, local - 239 * SEC);
        assert!(check_timestamp(id, None, local - 239 * SEC, Duration::from_secs(7)).is_ok());
        // Ahead across the era boundary works the same way.
        let mut clock = RequestClock::new();
        clock.resync_at(resync_identification(3 * SEC, 0), (0xFFFF_FFFE) << 32);
        assert_eq!(clock.offset_secs(), 5);
    }
}
