//! Live migration with host-vmm, the way a user runs it: `host-vmm run ... --control` on one
//! host namespace of a two-host topology, `host-vmm receive --listen ...` on the other,
//! `host-vmm ctl SRC migrate ...`, and back again (xtask::migrate). Stock tools talk to the
//! guest from the client namespace throughout: `ping -D` every 10 ms, a kv session checking
//! every reply, `iperf3 -c`. And the command-line contract of `receive` and `ctl migrate`.
//! Every test makes its own topology and removes it, and every process it starts is killed
//! by PID, also when it fails; every wait is bounded.

use roam_tests::{image, kvm_present, say};
use std::process::Command;
use std::time::Duration;
use xtask::bench::migrate::Mode;
use xtask::migrate::{HostVmmGuest, Moved};
use xtask::net::{GUEST_IP, TwoHosts};
use xtask::pingd::{PingLog, Pinger};
use xtask::proc::{self, Watched};

/// The ping interval (guest code is emulated here; one echo costs it ~1 ms).
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Guest RAM for the moved guests: small, so ten moves stay quick on a shared machine.
const MEM_MIB: u32 = 64;
/// Moves per mode (the figure).
const MOVES: u32 = 5;
/// Pings one move may lose: 200 ms of silence. host-vmm's pause is ~1 ms; what the network
/// needs to learn the new port is the rest (measured: see the figures the tests print).
const MAX_LOST_PER_MOVE: usize = 20;
/// Bound for the guest to be back on the VF after RESUMED.
const SETTLE: Duration = Duration::from_secs(15);
/// Bound for the first reply after a move.
const ANSWER: Duration = Duration::from_secs(5);

/// The sequence: five moves by pre-copy, then five by zero-copy, back and forth.
fn sequence() -> Vec<Mode> {
    let mut v = vec![Mode::PreCopy; MOVES as usize];
    v.extend(vec![Mode::ZeroCopy; MOVES as usize]);
    v
}

/// A guest under host-vmm on a two-host topology. Fields drop in order: the guest's VMMs,
/// then the topology.
struct Moving {
    guest: HostVmmGuest,
    hosts: TwoHosts,
}

impl Moving {
    /// Boots `image_name` on the source host of a new topology named after `tag`, and waits
    /// until it answers ping and sends through the VF.
    fn start(image_name: &str, tag: &str) -> Moving {
        roam_tests::host_vmm();
        let hosts = TwoHosts::up(tag).expect("two-host topology");
        let guest = HostVmmGuest::boot(&hosts, &image(image_name), MEM_MIB, "")
            .unwrap_or_else(|e| panic!("booting {image_name} under host-vmm: {e:#}"));
        let m = Moving { guest, hosts };
        m.settle();
        m
    }

    /// `r`'s value, or a panic with `what`, the error and the VMMs' output.
    fn check<T>(&self, r: anyhow::Result<T>, what: &str) -> T {
        r.unwrap_or_else(|e| {
            panic!(
                "{what}: {e:#}\n--- host-vmm output (last lines) ---\n{}",
                self.guest.console_tail(60)
            )
        })
    }

    /// Waits until the guest agent answers and the guest is on the VF again.
    fn settle(&self) {
        self.check(self.guest.wait_on_vf(SETTLE), "after boot or a move");
    }

    /// One move by `mode` to the other host; checks the summary against the mode.
    fn move_once(&mut self, mode: Mode) -> Moved {
        let from = self.guest.side();
        let r = self.guest.move_to_other(&self.hosts, mode, None);
        let moved = self.check(r, &format!("{} move from the {} host", mode.key(), from.key()));
        assert_eq!(self.guest.side(), from.other());
        let s = &moved.summary;
        match mode {
            Mode::ZeroCopy => assert_eq!(
                s.memory_bytes_copied, 0,
                "zero-copy copied guest memory: {s:?}"
            ),
            Mode::PreCopy => assert!(
                s.memory_bytes_copied > 0 && s.passes >= 1,
                "pre-copy copied no guest memory: {s:?}"
            ),
        }
        assert!(s.bytes_sent > 0 && s.pause_ms <= s.total_ms, "{s:?}");
        moved
    }

    /// `ping -D` every 10 ms from the client namespace, bounded to `seconds`.
    fn pinger(&self, seconds: u32) -> Pinger {
        let count = seconds * 1000 / PING_INTERVAL.as_millis() as u32;
        let p = Pinger::start(self.hosts.client("ping"), GUEST_IP, PING_INTERVAL, count);
        self.check(p, "starting ping")
    }

    /// Waits until `pinger` has seen a reply sent after `moved` ended.
    fn answers_after(&self, pinger: &Pinger, moved: &Moved) {
        let deadline = std::time::Instant::now() + ANSWER;
        loop {
            let log = PingLog::parse(&pinger.output());
            if log.replies.iter().any(|r| r.sent_at() > moved.ended) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no ping reply within {ANSWER:?} after the move to the {} host ({:?})\n--- host-vmm output ---\n{}",
                moved.to.key(),
                moved.summary,
                self.guest.console_tail(60)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client command run in a thread beside the test, bounded by `bound`.
    fn beside(
        &self,
        mut cmd: Command,
        bound: Duration,
    ) -> std::thread::JoinHandle<anyhow::Result<Watched>> {
        let _ = &self.hosts;
        std::thread::spawn(move || proc::watch(&mut cmd, "", bound))
    }
}

/// Per move: pings lost around it and where they fell relative to `ctl migrate` starting
/// (ms), plus the longest silence.
struct MoveLoss {
    lost: Vec<f64>,
    longest_gap_ms: f64,
}

fn loss(log: &PingLog, m: &Moved) -> MoveLoss {
    // From just before the move to just before the next one could start.
    let (from, to) = (m.started - 0.2, m.ended + 0.3);
    let w = log.window(from, to);
    let at: std::collections::HashMap<u64, f64> = log
        .requests()
        .iter()
        .filter_map(|r| Some((r.seq, r.sent_at?)))
        .collect();
    MoveLoss {
        lost: w
            .lost
            .iter()
            .filter_map(|s| at.get(s))
            .map(|t| (t - m.started) * 1e3)
            .collect(),
        longest_gap_ms: w.longest_gap.map_or(0.0, |g| g.secs() * 1e3),
    }
}

/// netecho moves 5 times by pre-copy and 5 times by zero-copy, back and forth, with ping
/// every 10 ms: it answers after every move, loses a bounded number of pings, and the
/// summaries say what each mode copied.
#[test]
fn netecho_moves_back_and_forth_by_pre_copy_and_zero_copy_while_pinging() {
    if !kvm_present("netecho_moves_back_and_forth_by_pre_copy_and_zero_copy_while_pinging") {
        return;
    }
    let mut m = Moving::start("netecho", "mp");
    let pinger = m.pinger(180);
    std::thread::sleep(Duration::from_millis(500));
    let mut moves = Vec::new();
    for mode in sequence() {
        m.settle();
        // A quiet stretch before each move, so its losses are its own.
        std::thread::sleep(Duration::from_millis(300));
        let moved = m.move_once(mode);
        m.answers_after(&pinger, &moved);
        moves.push(moved);
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = m.check(pinger.stop(), "stopping ping");
    let mut total = 0;
    for (i, moved) in moves.iter().enumerate() {
        let l = loss(&log, moved);
        let s = &moved.summary;
        say(&format!(
            "netecho move {:>2} {:<9} to {:<11}: pause {:.3} ms, total {:.1} ms, ctl {:.1} ms, {} bytes sent, {} copied, {} passes; lost {} at {:?} ms after ctl started; longest gap {:.1} ms",
            i + 1,
            s.mode.key(),
            moved.to.key(),
            s.pause_ms,
            s.total_ms,
            (moved.ended - moved.started) * 1e3,
            s.bytes_sent,
            s.memory_bytes_copied,
            s.passes,
            l.lost.len(),
            l.lost.iter().map(|t| t.round() as i64).collect::<Vec<_>>(),
            l.longest_gap_ms
        ));
        assert!(
            l.lost.len() <= MAX_LOST_PER_MOVE,
            "move {} lost {} pings (bound {MAX_LOST_PER_MOVE})",
            i + 1,
            l.lost.len()
        );
        total += l.lost.len();
    }
    let all_lost = log.lost().len();
    say(&format!(
        "netecho: {} moves, {total} pings lost around them, {all_lost} lost in the whole run of {} requests",
        moves.len(),
        log.transmitted.unwrap_or(0)
    ));
    assert!(
        all_lost <= MAX_LOST_PER_MOVE * moves.len(),
        "{all_lost} pings lost in the whole run"
    );
}
