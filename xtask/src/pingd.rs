//! Stock `ping -D` output, read back: when each reply came, which sequence numbers never got
//! one, and the longest silence between replies, overall or in a time window.
//!
//! `ping -D` (iputils) prefixes every reply with the wall-clock time it arrived,
//! `[1700000000.123456] 64 bytes from 198.18.0.10: icmp_seq=7 ttl=64 time=1.25 ms`, and its
//! closing summary says how many requests went out (`N packets transmitted, ...`); sequence
//! numbers start at 1 and wrap at 65536. [`Pinger`] runs such a ping in the background and
//! stops it with SIGINT, as a person would with Ctrl-C, so the summary is printed.

use anyhow::{Context, Result, bail};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One echo reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reply {
    /// Sequence number, unwrapped past 65535 (the first request is 1).
    pub seq: u64,
    /// When it arrived: seconds since the Unix epoch (ping's `-D` stamp).
    pub at: f64,
    /// Round-trip time in milliseconds.
    pub rtt_ms: f64,
}

impl Reply {
    /// When its request left (arrival minus round trip), seconds since the epoch.
    pub fn sent_at(&self) -> f64 {
        self.at - self.rtt_ms / 1e3
    }
}

/// The longest silence between two consecutive replies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gap {
    /// Arrival of the reply before the silence (seconds since the epoch).
    pub from: f64,
    /// Arrival of the reply that ended it.
    pub to: f64,
}

impl Gap {
    /// Its length in seconds.
    pub fn secs(&self) -> f64 {
        self.to - self.from
    }
}

/// What one `ping -D` run printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingLog {
    /// Every first reply per sequence number, in arrival order.
    pub replies: Vec<Reply>,
    /// Replies to a sequence number already answered (`(DUP!)`).
    pub duplicates: u64,
    /// Requests sent, from the closing summary (absent if ping died without one).
    pub transmitted: Option<u64>,
}

/// Figures for one window of time.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Requests sent in the window (estimated from the neighbours' send times for lost ones).
    pub sent: u64,
    /// Sequence numbers sent in the window that got no reply.
    pub lost: Vec<u64>,
    /// The longest silence that ended or began inside the window.
    pub longest_gap: Option<Gap>,
}

impl PingLog {
    /// Parses `ping -D` output; lines that are not replies or the summary are ignored.
    pub fn parse(text: &str) -> PingLog {
        let mut log = PingLog::default();
        let mut seen = std::collections::HashSet::new();
        let mut last_seq: Option<u64> = None;
        for line in text.lines() {
            if let Some(n) = transmitted(line) {
                log.transmitted = Some(n);
                continue;
            }
            let Some((raw_seq, at, rtt_ms)) = reply_fields(line) else {
                continue;
            };
            let seq = unwrap_seq(last_seq, raw_seq);
            if line.contains("(DUP!)") || !seen.insert(seq) {
                log.duplicates += 1;
                continue;
            }
            last_seq = Some(last_seq.map_or(seq, |l| l.max(seq)));
            log.replies.push(Reply { seq, at, rtt_ms });
        }
        log
    }

    /// The highest sequence number answered.
    pub fn last_answered(&self) -> Option<u64> {
        self.replies.iter().map(|r| r.seq).max()
    }

    /// Sequence numbers up to the last one answered that got no reply: lost on the way, as
    /// opposed to [`PingLog::unanswered_at_end`], which were still in flight when ping stopped.
    pub fn lost(&self) -> Vec<u64> {
        let answered: std::collections::HashSet<u64> = self.replies.iter().map(|r| r.seq).collect();
        (1..=self.last_answered().unwrap_or(0))
            .filter(|s| !answered.contains(s))
            .collect()
    }

    /// Requests sent after the last one answered (in flight when ping was stopped, or lost
    /// when it ran to its count).
    pub fn unanswered_at_end(&self) -> u64 {
        self.transmitted
            .unwrap_or(0)
            .saturating_sub(self.last_answered().unwrap_or(0))
    }

    /// The longest silence between consecutive replies.
    pub fn longest_gap(&self) -> Option<Gap> {
        self.gaps().max_by(|a, b| a.secs().total_cmp(&b.secs()))
    }

    fn gaps(&self) -> impl Iterator<Item = Gap> + '_ {
        self.replies.windows(2).map(|w| Gap {
            from: w[0].at,
            to: w[1].at,
        })
    }

    /// Every request up to the last one answered, in sequence order, with when it left: its
    /// reply's send time, or for an unanswered one the send times of the nearest answered
    /// requests on either side, interpolated by sequence number.
    pub fn requests(&self) -> Vec<Request> {
        let mut answered: Vec<&Reply> = self.replies.iter().collect();
        answered.sort_by_key(|r| r.seq);
        let mut out = Vec::new();
        let mut before: Option<&Reply> = None;
        for after in answered {
            let from = before.map_or(1, |b| b.seq + 1);
            for seq in from..after.seq {
                let sent_at = before.map(|b| {
                    let f = (seq - b.seq) as f64 / (after.seq - b.seq) as f64;
                    b.sent_at() + f * (after.sent_at() - b.sent_at())
                });
                out.push(Request {
                    seq,
                    sent_at,
                    answered: false,
                });
            }
            out.push(Request {
                seq: after.seq,
                sent_at: Some(after.sent_at()),
                answered: true,
            });
            before = Some(after);
        }
        out
    }

    /// Requests sent in `[from, to)` (seconds since the epoch), the lost ones among them, and
    /// the longest silence between replies that touches the window.
    pub fn window(&self, from: f64, to: f64) -> Window {
        let mut sent = 0;
        let mut lost = Vec::new();
        for r in self.requests() {
            if r.sent_at.is_some_and(|t| t >= from && t < to) {
                sent += 1;
                if !r.answered {
                    lost.push(r.seq);
                }
            }
        }
        let longest_gap = self
            .gaps()
            .filter(|g| g.to > from && g.from < to)
            .max_by(|a, b| a.secs().total_cmp(&b.secs()));
        Window {
            sent,
            lost,
            longest_gap,
        }
    }
}

/// One echo request, answered or not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    /// Its sequence number (unwrapped).
    pub seq: u64,
    /// When it left (seconds since the epoch), if it can be told.
    pub sent_at: Option<f64>,
    /// Whether a reply came.
    pub answered: bool,
}

/// `(icmp_seq, arrival, rtt ms)` of a `-D` reply line.
fn reply_fields(line: &str) -> Option<(u16, f64, f64)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, rest) = rest.split_once(']')?;
    let at: f64 = stamp.parse().ok()?;
    if !rest.contains(" bytes from ") {
        return None;
    }
    let seq = field(rest, "icmp_seq=")?.parse().ok()?;
    let rtt = field(rest, "time=")?.parse().ok()?;
    Some((seq, at, rtt))
}

/// The word after `key` in `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_once(key)?.1.split_whitespace().next()
}

/// `N` of the summary line `N packets transmitted, M received, ...`.
fn transmitted(line: &str) -> Option<u64> {
    line.split_once(" packets transmitted")?
        .0
        .trim()
        .parse()
        .ok()
}

/// The sequence number nearest to `last` whose low 16 bits are `raw`.
fn unwrap_seq(last: Option<u64>, raw: u16) -> u64 {
    const WRAP: u64 = 1 << 16;
    let Some(last) = last else {
        return u64::from(raw);
    };
    let base = last - last % WRAP + u64::from(raw);
    [base.checked_sub(WRAP), Some(base), Some(base + WRAP)]
        .into_iter()
        .flatten()
        .min_by_key(|c| c.abs_diff(last))
        .unwrap_or(base)
}

/// Seconds since the Unix epoch now, on the clock `ping -D` stamps with.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A `ping -D` left running in the background (started by us, stopped by its PID).
pub struct Pinger {
    run: crate::proc::Background,
    /// When it was started (seconds since the epoch).
    pub started: f64,
}

impl Pinger {
    /// Starts `ping -D -i INTERVAL TARGET` through `ping` (a `Command` for the `ping` program,
    /// e.g. made by `Topology::exec_in`); `count` bounds it, so it stops by itself.
    pub fn start(
        mut ping: Command,
        target: &str,
        interval: Duration,
        count: u32,
    ) -> Result<Pinger> {
        ping.args(["-D", "-n", "-W", "1", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .args(["-c", &count.to_string(), target]);
        let started = now();
        let run = crate::proc::Background::spawn(&mut ping)?;
        Ok(Pinger { run, started })
    }

    /// Whether ping is still running.
    pub fn running(&mut self) -> bool {
        self.run.running()
    }

    /// Everything ping printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.run.output()
    }

    /// Stops ping with SIGINT (it prints its summary) and parses what it printed.
    pub fn stop(mut self) -> Result<PingLog> {
        if self.run.running() {
            let pid = self.run.pid().to_string();
            // The shell's own `kill` (sh is on every Debian; procps's kill may not be).
            let status = Command::new("sh")
                .args(["-c", "kill -INT \"$1\"", "sh", &pid])
                .status()
                .context("running sh -c kill")?;
            if !status.success() && self.run.running() {
                bail!("could not interrupt ping (PID {pid})");
            }
        }
        self.wait(Duration::from_secs(5))
    }

    /// Waits up to `bound` for ping to finish by itself and parses what it printed.
    pub fn wait(mut self, bound: Duration) -> Result<PingLog> {
        let deadline = Instant::now() + bound;
        while self.run.running() {
            if Instant::now() >= deadline {
                bail!(
                    "ping did not finish within {bound:?}:\n{}",
                    tail(&self.run.output())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The readers finish when the pipes close; give them a moment after the exit.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.run.output().contains("packets transmitted") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = self.run.output();
        let log = PingLog::parse(&text);
        if log.transmitted.is_none() {
            bail!("ping printed no summary:\n{}", tail(&text));
        }
        Ok(log)
    }
}

/// The last lines of a long output, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "PING 198.18.0.10 (198.18.0.10) 56(84) bytes of data.\n\
        [1795607850.875939] 64 bytes from 198.18.0.10: icmp_seq=1 ttl=64 time=0.528 ms\n\
        [1795607850.890565] 64 bytes from 198.18.0.10: icmp_seq=2 ttl=64 time=1.036 ms\n\
        [1795607850.950000] 64 bytes from 198.18.0.10: icmp_seq=5 ttl=64 time=1.000 ms\n\
        [1795607850.950100] 64 bytes from 198.18.0.10: icmp_seq=5 ttl=64 time=1.100 ms (DUP!)\n\
        [1795607850.960000] 64 bytes from 198.18.0.10: icmp_seq=6 ttl=64 time=1.000 ms\n\
        \n\
        --- 198.18.0.10 ping statistics ---\n\
        8 packets transmitted, 4 received, +1 duplicates, 50% packet loss, time 80ms\n\
        rtt min/avg/max/mdev = 0.528/0.891/1.036/0.210 ms\n";

    #[test]
    fn replies_summary_and_duplicates_are_read() {
        let log = PingLog::parse(RUN);
        assert_eq!(log.replies.len(), 4);
        assert_eq!(log.duplicates, 1);
        assert_eq!(log.transmitted, Some(8));
        assert_eq!(log.replies[1].seq, 2);
        assert!((log.replies[1].at - 1_795_607_850.890_565).abs() < 1e-6);
        assert!((log.replies[1].rtt_ms - 1.036).abs() < 1e-9);
    }

    #[test]
    fn lost_is_the_holes_and_the_tail_is_separate() {
        let log = PingLog::parse(RUN);
        assert_eq!(log.lost(), vec![3, 4]);
        assert_eq!(log.unanswered_at_end(), 2);
    }

    #[test]
    fn longest_gap_spans_the_lost_replies() {
        let gap = PingLog::parse(RUN).longest_gap().unwrap();
        assert!((gap.from - 1_795_607_850.890_565).abs() < 1e-6);
        assert!((gap.secs() - 0.059_435).abs() < 1e-6);
    }

    #[test]
    fn lost_requests_get_interpolated_send_times_and_fall_into_windows() {
        let log = PingLog::parse(RUN);
        let requests = log.requests();
        let seqs: Vec<u64> = requests.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            vec![1, 2, 3, 4, 5, 6],
            "nothing is known after the last reply"
        );
        let at = |seq: usize| requests[seq - 1].sent_at.unwrap();
        let (s2, s3, s5) = (at(2), at(3), at(5));
        assert!(s2 < s3 && s3 < s5);
        assert!((s3 - (s2 + (s5 - s2) / 3.0)).abs() < 1e-9);
        assert!((s2 - (1_795_607_850.890_565 - 0.001_036)).abs() < 1e-9);
        assert!(!requests[2].answered && requests[4].answered);
        // A window around the hole holds both lost requests and the long silence.
        let w = log.window(s2 + 0.001, s5 + 0.001);
        assert_eq!(w.lost, vec![3, 4]);
        assert_eq!(w.sent, 3);
        assert!((w.longest_gap.unwrap().secs() - 0.059_435).abs() < 1e-6);
        // A window after it has neither.
        let w = log.window(s5 + 0.001, s5 + 1.0);
        assert!(w.lost.is_empty());
        assert_eq!(w.sent, 1);
        assert!(w.longest_gap.unwrap().secs() < 0.011);
    }

    #[test]
    fn sequence_numbers_unwrap_past_65535() {
        let text = "[10.000] 64 bytes from x: icmp_seq=65534 ttl=64 time=1 ms\n\
                    [10.010] 64 bytes from x: icmp_seq=65535 ttl=64 time=1 ms\n\
                    [10.020] 64 bytes from x: icmp_seq=0 ttl=64 time=1 ms\n\
                    [10.030] 64 bytes from x: icmp_seq=2 ttl=64 time=1 ms\n\
                    [10.031] 64 bytes from x: icmp_seq=1 ttl=64 time=1 ms\n";
        let log = PingLog::parse(text);
        let seqs: Vec<u64> = log.replies.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![65534, 65535, 65536, 65538, 65537]);
        assert_eq!(log.last_answered(), Some(65538));
        assert_eq!(log.lost().len(), 65533, "1..=65533 never answered");
    }

    #[test]
    fn other_lines_are_ignored() {
        let text = "From 198.18.0.1 icmp_seq=3 Destination Host Unreachable\n\
                    [12.5] From 198.18.0.1 icmp_seq=4 Destination Host Unreachable\n\
                    [12.6] no answer yet for icmp_seq=5\n\
                    ping: sendmsg: No buffer space available\n\
                    [garbage] 64 bytes from x: icmp_seq=1 ttl=64 time=1 ms\n\
                    [12.7] 64 bytes from x: icmp_seq=notanumber ttl=64 time=1 ms\n\
                    2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1002ms\n";
        let log = PingLog::parse(text);
        assert!(log.replies.is_empty());
        assert_eq!(log.transmitted, Some(2));
        assert_eq!(log.longest_gap(), None);
        assert!(log.lost().is_empty());
        assert_eq!(log.unanswered_at_end(), 2);
    }

    /// Stock ping, from PATH; fails saying what to install when it is missing.
    fn ping() -> Command {
        assert!(
            crate::prereq::on_path("ping"),
            "`ping` is not on PATH: install the Debian package iputils-ping"
        );
        Command::new("ping")
    }

    /// The shortest interval ping allows us: 10 ms as root, 200 ms (its floor) otherwise.
    fn allowed_interval() -> Duration {
        if crate::prereq::is_root() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(200)
        }
    }

    #[test]
    fn real_ping_output_on_loopback_parses() {
        let interval = format!("{}", allowed_interval().as_secs_f64());
        let out = ping()
            .args([
                "-D",
                "-n",
                "-c",
                "3",
                "-i",
                &interval,
                "-W",
                "1",
                "127.0.0.1",
            ])
            .output()
            .expect("ping starts");
        assert!(
            out.status.success(),
            "ping 127.0.0.1 failed (without root it needs ICMP sockets: sysctl net.ipv4.ping_group_range): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = PingLog::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(log.transmitted, Some(3));
        assert_eq!(log.replies.len(), 3);
        assert!(log.lost().is_empty());
        assert!((log.replies[0].at - now()).abs() < 60.0);
    }

    #[test]
    fn a_background_ping_stops_on_sigint_with_its_summary() {
        let interval = allowed_interval();
        let pinger = Pinger::start(ping(), "127.0.0.1", interval, 1000).unwrap();
        std::thread::sleep((interval * 8).max(Duration::from_millis(300)));
        let started = pinger.started;
        let log = pinger.stop().unwrap();
        let sent = log.transmitted.unwrap();
        assert!((5..1000).contains(&sent), "{sent} sent");
        assert!(log.lost().is_empty(), "{:?}", log.lost());
        assert!(log.unanswered_at_end() <= 1);
        assert!(log.replies[0].sent_at() >= started - 0.01);
    }
}
