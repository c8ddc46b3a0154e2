//! host-vmm as a [`Mover`] for `cargo xtask bench migrate`: the guest boots with
//! `host-vmm run ... --net ... --vf ... --api-socket` (both NICs on one MAC) on the source host,
//! and each move is `host-vmm receive --listen ...` on the other host plus
//! `host-vmm ctl SRC migrate ... [--zero-copy]` ([`crate::migrate`]). Total, bytes sent,
//! guest memory copied and passes are host-vmm's own `migrated ...` summary; so is the
//! VMM's own pause (I/O parked on the source to Running back at the source). The pause the
//! benchmark compares is measured as QEMU's is (docs/measuring.md §3): from the source's
//! log line `migration: guest paused` (written once its vCPU has stopped; env_logger's
//! wall-clock stamp) to the destination's own record `running (resumed at EPOCH)` (wall
//! clock, just before its vCPU runs). host-vmm runs with its default `--downtime-ms` (300, as
//! QEMU's downtime limit); its auto-converge never throttles netecho, which dirties little.

use super::migrate::{Case, MoveReport, Mover, Moving, pause_between};
use crate::migrate::HostVmmGuest;
use crate::net::{Side, TwoHosts};
use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bound for the guest to be back on the VF before a move starts (it re-probes it after
/// RESUMED, then switches back).
const SETTLE: Duration = Duration::from_secs(15);
/// Bound for the VMMs' log lines to reach us once the move has ended.
const LOG_LAG: Duration = Duration::from_secs(3);
/// What the source logs once the guest's vCPU has stopped for the move.
const PAUSED: &str = "] migration: guest paused";

/// host-vmm as a [`Mover`].
pub struct HostVmmMover;

/// A guest under host-vmm in the benchmark, with the case's mode.
struct HostVmmMoving {
    guest: HostVmmGuest,
    case: Case,
}

impl Mover for HostVmmMover {
    fn key(&self) -> &'static str {
        "host_vmm"
    }

    fn boot(&self, hosts: &TwoHosts, image: &Path, case: Case) -> Result<Box<dyn Moving>> {
        let guest = HostVmmGuest::boot(hosts, image, case.mem_mib, "")?;
        guest.wait_settled(SETTLE)?;
        Ok(Box::new(HostVmmMoving { guest, case }))
    }
}

impl Moving for HostVmmMoving {
    fn side(&self) -> Side {
        self.guest.side()
    }

    fn move_once(&mut self, hosts: &TwoHosts) -> Result<MoveReport> {
        // Every move starts from the steady state: the agent answers, traffic on the VF.
        self.guest.wait_settled(SETTLE)?;
        let m = self.guest.move_to_other(hosts, self.case.mode, None)?;
        let s = m.summary;
        let (stopped, resumed) = pause_stamps(&self.guest, m.started)?;
        Ok(MoveReport {
            pause_ms: Some(pause_between(stopped, resumed, m.started, m.ended)?),
            vmm_pause_ms: Some(s.pause_ms),
            ram_blocks_bytes: None,
            total_ms: Some(s.total_ms),
            bytes: Some(s.bytes_sent),
            memory_copied_bytes: Some(s.memory_bytes_copied),
            passes: Some(s.passes),
            started: m.started,
            ended: m.ended,
        })
    }

    fn console(&self) -> String {
        self.guest.console()
    }
}

/// (source vCPU stopped, destination about to run), seconds since the epoch, of the move of
/// `guest` started at `started`: the last such lines of the VMMs' output, waited for a
/// little (the pipes are read by threads).
pub fn pause_stamps(guest: &HostVmmGuest, started: f64) -> Result<(f64, f64)> {
    let deadline = Instant::now() + LOG_LAG;
    loop {
        let out = guest.console();
        let stopped = paused_at_last(&out).filter(|&t| t >= started);
        let resumed = crate::widearea::resumed_at_last(&out).filter(|&t| t >= started);
        if let (Some(s), Some(r)) = (stopped, resumed) {
            return Ok((s, r));
        }
        if Instant::now() >= deadline {
            let said = |t: Option<f64>| if t.is_some() { "found" } else { "missing" };
            bail!(
                "host-vmm did not log both ends of the pause within {LOG_LAG:?} (`{}` on the source: {}; `(resumed at` on the destination: {}); is RUST_LOG at info?",
                &PAUSED[2..],
                said(stopped),
                said(resumed),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The wall-clock stamp of the last `migration: guest paused` line in `log`.
pub fn paused_at_last(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .filter(|l| l.contains(PAUSED))
        .find_map(|l| rfc3339_utc(l.strip_prefix('[')?.split(' ').next()?))
}

/// Seconds since the epoch of an RFC 3339 UTC stamp as env_logger writes it
/// (`2026-12-07T10:08:51.123456Z`).
pub fn rfc3339_utc(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 {
        return None;
    }
    // Days since 1970-01-01 in the proleptic Gregorian calendar, counting years from March
    // so that the leap day is the last day of a year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_logger_stamps_are_read() {
        // `date -u -d 2026-12-07T10:08:51Z +%s`
        assert_eq!(rfc3339_utc("2026-12-07T10:08:51Z"), Some(1_796_638_131.0));
        assert_eq!(rfc3339_utc("2024-02-29T23:59:59Z"), Some(1_709_251_199.0));
        let t = rfc3339_utc("2026-12-07T10:08:51.123456Z").unwrap();
        assert!((t - 1_796_638_131.123_456).abs() < 1e-6, "{t}");
        assert_eq!(rfc3339_utc("2026-12-07 10:08:51Z"), None);
        assert_eq!(rfc3339_utc("2026-13-07T10:08:51Z"), None);
    }

    #[test]
    fn the_last_pause_line_is_taken() {
        let log = "[2026-12-07T10:08:50.000000Z INFO  host_vmm::control::controller] migration: guest paused\n\
                   guest: something\n\
                   [2026-12-07T10:08:51.500000Z INFO  host_vmm::control::controller] migration: guest paused\n\
                   [2026-12-07T10:08:51.600000Z INFO  host_vmm::control::controller] migration: machine state sent\n";
        let t = paused_at_last(log).unwrap();
        assert!((t - 1_796_638_131.5).abs() < 1e-6, "{t}");
        assert_eq!(paused_at_last("migration: guest paused\n"), None);
    }
}
