//! Live migration with host-vmm, the way a user runs it: `host-vmm run ... --api-socket` on one
//! host namespace of a two-host topology, `host-vmm receive --listen ...` on the other,
//! `host-vmm ctl SRC migrate ...`, and back again (xtask::migrate). Stock tools talk to the
//! guest from the client namespace throughout: `ping -D` every 10 ms, a kv session checking
//! every reply, `iperf3 -c`. And the command-line contract of `receive` and `ctl migrate`.
//! Every test makes its own topology and removes it, and every process it starts is killed
//! by PID, also when it fails; every wait is bounded.

use roam_tests::{
    assert_gap, assert_pause, image, iperf3_longest_silence_ms, iperf3_report, kv_longest_wait_ms,
    kvm_present, say,
};
use std::process::Command;
use std::time::Duration;
use xtask::bench::migrate::Mode;
use xtask::migrate::{HostVmmGuest, Moved, Transport};
use xtask::net::{GUEST_IP, Nics, TwoHosts};
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
/// Pings lost over all ten moves of a run: 5 a move on average (measured: 14 to 18).
const MAX_LOST_TOTAL: usize = 50;
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
        Moving::start_with(image_name, tag, Nics::Both)
    }

    /// [`Moving::start`] with only the NICs `nics` on either host.
    fn start_with(image_name: &str, tag: &str, nics: Nics) -> Moving {
        roam_tests::host_vmm();
        let hosts = TwoHosts::up(tag).expect("two-host topology");
        let guest = HostVmmGuest::boot_with(&hosts, &image(image_name), MEM_MIB, "", nics)
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
        self.check(self.guest.wait_settled(SETTLE), "after boot or a move");
    }

    /// One move by `mode` to the other host; checks the summary against the mode.
    fn move_once(&mut self, mode: Mode) -> Moved {
        let from = self.guest.side();
        let r = self.guest.move_to_other(&self.hosts, mode, None);
        let moved = self.check(
            r,
            &format!("{} move from the {} host", mode.key(), from.key()),
        );
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
        assert_pause(
            &format!("{} move from the {} host", mode.key(), from.key()),
            s.pause_ms,
        );
        moved
    }

    /// The guest's host-vmm still runs; else a panic saying how it ended.
    fn assert_running(&mut self) {
        if let Some(status) = self.guest.exit_status() {
            panic!(
                "host-vmm on the {} host died ({status}):\n{}",
                self.guest.side().key(),
                self.guest.console_tail(60)
            );
        }
    }

    /// `ping -D` every 10 ms from the client namespace, bounded to `seconds`.
    fn pinger(&self, seconds: u32) -> Pinger {
        self.pinger_every(PING_INTERVAL, seconds)
    }

    /// `ping -D` every `interval` from the client namespace, bounded to `seconds`.
    fn pinger_every(&self, interval: Duration, seconds: u32) -> Pinger {
        let count = seconds * 1000 / interval.as_millis() as u32;
        let p = Pinger::start(self.hosts.client("ping"), GUEST_IP, interval, count);
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
    m.assert_running();
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
        assert_gap(&format!("move {}", i + 1), l.longest_gap_ms);
        total += l.lost.len();
    }
    let all_lost = log.lost().len();
    say(&format!(
        "netecho: {} moves, {total} pings lost around them, {all_lost} lost in the whole run of {} requests",
        moves.len(),
        log.transmitted.unwrap_or(0)
    ));
    assert!(
        total <= MAX_LOST_TOTAL && all_lost <= MAX_LOST_TOTAL,
        "{total} pings lost around the moves, {all_lost} in the whole run (bound {MAX_LOST_TOTAL})"
    );
}

/// The hand-over window (issue 12, item 3): netecho on virtio-net alone (no VF, whose
/// switches at PREPARE and RESUMED are not this test's subject) moves 3 times by pre-copy
/// and 3 times by zero-copy, back and forth, while the client pings every 2 ms. Each
/// receiver holds the arrival 20 ms before it announces and runs the guest (host-vmm's test
/// knob), so the window is open long enough for pings to reach the source after it sent
/// the final state (ping slows to one request per 10 ms while replies are outstanding: 0 to
/// 4 a move, ~13 a run): the run must forward some (the summaries count them), and not one
/// ping may be lost in the whole run (with the source dropping those frames instead, 12 of
/// ~1200 were). A single move may forward none: a frame the guest sends from the
/// destination during the hold (say, a reply still queued on its transmit ring) teaches the
/// bridge its new port, and the pings after it go there directly.
#[test]
fn no_ping_is_lost_in_the_hand_over_window() {
    if !kvm_present("no_ping_is_lost_in_the_hand_over_window") {
        return;
    }
    const FAST: Duration = Duration::from_millis(2);
    const HOLD_MS: u32 = 20;
    let mut m = Moving::start_with("netecho", "ho", Nics::Virtio);
    m.guest
        .set_receiver_env("ROAM_TEST_HOLD_ARRIVAL_MS", &HOLD_MS.to_string());
    let pinger = m.pinger_every(FAST, 120);
    std::thread::sleep(Duration::from_millis(500));
    let mut moves = Vec::new();
    for mode in [Mode::PreCopy, Mode::ZeroCopy].repeat(3) {
        m.settle();
        std::thread::sleep(Duration::from_millis(200));
        let moved = m.move_once(mode);
        m.answers_after(&pinger, &moved);
        moves.push(moved);
    }
    std::thread::sleep(Duration::from_millis(300));
    m.assert_running();
    let log = m.check(pinger.stop(), "stopping ping");
    for (i, moved) in moves.iter().enumerate() {
        let s = &moved.summary;
        let l = loss(&log, moved);
        say(&format!(
            "hand-over move {} {:<9} to {:<11}: pause {:.3} ms, {} frames carried in the state, {} forwarded after it; lost {}, longest gap {:.1} ms",
            i + 1,
            s.mode.key(),
            moved.to.key(),
            s.pause_ms,
            s.frames_carried,
            s.frames_forwarded,
            l.lost.len(),
            l.longest_gap_ms
        ));
    }
    let lost = log.lost();
    say(&format!(
        "hand-over: {} moves, {} frames forwarded, {} of {} pings lost, {} duplicates",
        moves.len(),
        moves
            .iter()
            .map(|m| m.summary.frames_forwarded)
            .sum::<u64>(),
        lost.len(),
        log.transmitted.unwrap_or(0),
        log.duplicates
    ));
    let forwarded: u64 = moves.iter().map(|m| m.summary.frames_forwarded).sum();
    assert!(
        forwarded > 0,
        "{} moves forwarded no frame although each receiver held the arrival {HOLD_MS} ms \
         while pings came every {FAST:?}: {:?}",
        moves.len(),
        moves.iter().map(|m| &m.summary).collect::<Vec<_>>()
    );
    assert!(
        lost.is_empty(),
        "pings lost: {lost:?} (sequence numbers)\n--- host-vmm output ---\n{}",
        m.guest.console_tail(80)
    );
}

/// kv moves 5 times by pre-copy and 5 times by zero-copy while one `netprobe kv-for`
/// session checks every reply: it must end with every reply correct.
/// The destination may lack a VF (RESUMED finds none: the guest stays on virtio-net) or
/// have one the source lacked (RESUMED finds it: the guest takes it); ping goes on.
#[test]
fn moves_to_a_host_without_a_vf_and_back_to_one_with_a_vf() {
    if !kvm_present("moves_to_a_host_without_a_vf_and_back_to_one_with_a_vf") {
        return;
    }
    let mut m = Moving::start("netecho", "mn");
    let pinger = m.pinger(60);
    std::thread::sleep(Duration::from_millis(500));
    m.guest.set_receiver_nics(Nics::Virtio);
    let to_plain = m.move_once(Mode::PreCopy);
    m.settle();
    let status = m.check(
        m.guest.control().status(),
        "status on the host without a VF",
    );
    assert!(!status.vf.present, "a VF on a host without one: {status:?}");
    m.answers_after(&pinger, &to_plain);
    m.guest.set_receiver_nics(Nics::Both);
    let to_vf = m.move_once(Mode::ZeroCopy);
    m.settle();
    m.answers_after(&pinger, &to_vf);
    m.assert_running();
    let log = m.check(pinger.stop(), "stopping ping");
    let (plain, vf) = (loss(&log, &to_plain), loss(&log, &to_vf));
    say(&format!(
        "to a host without a VF: pause {:.3} ms, lost {}, longest gap {:.1} ms; back to one with a VF: pause {:.3} ms, lost {}, longest gap {:.1} ms",
        to_plain.summary.pause_ms,
        plain.lost.len(),
        plain.longest_gap_ms,
        to_vf.summary.pause_ms,
        vf.lost.len(),
        vf.longest_gap_ms
    ));
    assert_gap("the move to a host without a VF", plain.longest_gap_ms);
    assert_gap("the move back to a host with a VF", vf.longest_gap_ms);
}

#[test]
fn kv_session_checking_every_reply_survives_10_moves() {
    if !kvm_present("kv_session_checking_every_reply_survives_10_moves") {
        return;
    }
    // The session runs until told to stop once the work is done (slow on a busy
    // machine); SESSION_SECS only bounds it.
    const SESSION_SECS: u64 = 180;
    let stop = roam_tests::TempFile::reserve("mk-stop");
    let mut m = Moving::start("kv", "mk");
    let mut probe = m.hosts.client(env!("CARGO_BIN_EXE_netprobe"));
    probe.args([
        "kv-for",
        &format!("{GUEST_IP}:6380"),
        &SESSION_SECS.to_string(),
        &stop.path().display().to_string(),
    ]);
    let session = m.beside(probe, Duration::from_secs(SESSION_SECS + 60));
    std::thread::sleep(Duration::from_secs(1));
    let mut pauses = Vec::new();
    for mode in sequence() {
        m.settle();
        std::thread::sleep(Duration::from_millis(300));
        let moved = m.move_once(mode);
        pauses.push(format!("{} {:.2}", mode.key(), moved.summary.pause_ms));
    }
    assert!(
        !session.is_finished(),
        "the kv session ended before the moves were done"
    );
    stop.write(b"stop");
    let run = session.join().expect("kv thread");
    let run = m.check(run, "netprobe kv-for");
    m.assert_running();
    assert!(
        run.status.success() && run.stdout.contains("every reply correct"),
        "kv session failed ({}): {}{}\n--- host-vmm output ---\n{}",
        run.status,
        run.stdout,
        run.stderr,
        m.guest.console_tail(60)
    );
    say(&format!(
        "kv through {} moves (pause ms: {}): {}",
        pauses.len(),
        pauses.join(", "),
        run.stdout.trim()
    ));
    // The session's longest wait for a reply spans the worst move.
    assert_gap("the kv session", kv_longest_wait_ms(&run.stdout));
}

/// A stock `iperf3 -c` run (bounded by timeout, --json) through 2 pre-copy and 2 zero-copy
/// moves exits 0 with bytes received.
#[test]
fn iperf3_run_survives_moves() {
    if !kvm_present("iperf3_run_survives_moves") {
        return;
    }
    const SECONDS: u64 = 10;
    let mut m = Moving::start("iperf3", "mi");
    let mut cmd = m.hosts.client("timeout");
    cmd.args([&(SECONDS + 30).to_string(), "iperf3", "-c", GUEST_IP])
        .args(["-t", &SECONDS.to_string(), "--json"]);
    let client = m.beside(cmd, Duration::from_secs(SECONDS + 60));
    std::thread::sleep(Duration::from_secs(1));
    let mut moved = Vec::new();
    for mode in [Mode::PreCopy, Mode::ZeroCopy, Mode::PreCopy, Mode::ZeroCopy] {
        m.settle();
        std::thread::sleep(Duration::from_millis(500));
        moved.push(m.move_once(mode));
    }
    let early = client.is_finished();
    let run = m.check(client.join().expect("iperf3 thread"), "iperf3 -c");
    m.assert_running();
    assert!(
        !early,
        "iperf3 ended before the moves were done ({}):\n{}{}",
        run.status, run.stdout, run.stderr
    );
    assert!(
        run.status.success(),
        "iperf3 -c failed ({}):\n{}{}\n--- host-vmm output ---\n{}",
        run.status,
        run.stdout,
        run.stderr,
        m.guest.console_tail(60)
    );
    let json = iperf3_report("iperf3 -c through moves", &run.stdout);
    let received = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let silence = iperf3_longest_silence_ms(&json);
    let summaries: Vec<String> = moved
        .iter()
        .map(|x| {
            format!(
                "{} pause {:.2} ms, {} bytes, {} copied",
                x.summary.mode.key(),
                x.summary.pause_ms,
                x.summary.bytes_sent,
                x.summary.memory_bytes_copied
            )
        })
        .collect();
    say(&format!(
        "iperf3 -c through {} moves ({}): {received} bytes, {:.3} Mbit/s, longest silence {silence:.0} ms",
        moved.len(),
        summaries.join("; "),
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    ));
    assert_gap("iperf3 through the moves", silence);
}

/// host-vmm's status for its own failures, `receive` included.
const HOST_VMM_FAILED: i32 = 125;

/// Runs host-vmm with `args`; returns its status and its stderr's non-empty lines.
fn host_vmm_run(args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let out = Command::new(roam_tests::host_vmm())
        .args(args)
        .output()
        .expect("host-vmm starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Asserts one `host-vmm: error: ...` line mentioning every word of `says`, and `status`.
fn assert_error(args: &[&str], status: i32, says: &[&str]) {
    let (code, lines, stdout) = host_vmm_run(args);
    assert_eq!(code, Some(status), "{args:?}: stderr {lines:?}");
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line: {lines:?}"
    );
    assert!(
        lines[0].starts_with("host-vmm: error: "),
        "{args:?}: {}",
        lines[0]
    );
    for word in says {
        assert!(
            lines[0].contains(word),
            "{args:?}: `{word}` not in {}",
            lines[0]
        );
    }
    assert!(stdout.is_empty(), "{args:?}: stdout {stdout:?}");
}

/// `receive --help` documents its flags and the way a move is driven; bad `receive` flags
/// exit 125 with one line; bad `ctl ... migrate` arguments exit 1 with one line naming the
/// problem, before any socket is touched.
#[test]
fn receive_and_ctl_migrate_command_lines() {
    let (code, _, help) = host_vmm_run(&["receive", "--help"]);
    assert_eq!(code, Some(0));
    for text in [
        "--listen",
        "tcp:ADDR:PORT",
        "unix:PATH",
        "--net",
        "--vf",
        "--control",
        "--zero-copy",
        "--downtime-ms",
        "exits 125",
        "--tls-dir",
        "--insecure-plain-tcp",
        "--max-mem",
        "within 10 s",
    ] {
        assert!(
            help.contains(text),
            "receive --help lacks `{text}`:\n{help}"
        );
    }
    let (code, _, help) = host_vmm_run(&["ctl", "--help"]);
    assert_eq!(code, Some(0));
    for text in [
        "migrate TARGET",
        "--zero-copy",
        "migrated mode=",
        "--tls-dir",
    ] {
        assert!(help.contains(text), "ctl --help lacks `{text}`:\n{help}");
    }

    let f = HOST_VMM_FAILED;
    assert_error(&["receive"], f, &["--listen"]);
    assert_error(
        &["receive", "--listen", "udp:1.2.3.4:5"],
        f,
        &["--listen", "udp:1.2.3.4:5"],
    );
    assert_error(
        &["receive", "--listen", "tcp:127.0.0.1:99999"],
        f,
        &["--listen"],
    );
    assert_error(
        &["receive", "--listen", "unix:/nonexistent-roam-dir/m.sock"],
        f,
        &["/nonexistent-roam-dir/m.sock"],
    );
    // TCP is mutual TLS, or plain TCP asked for by name; nothing is bound otherwise.
    assert_error(
        &["receive", "--listen", "tcp:127.0.0.1:7000"],
        f,
        &["--tls-dir", "--insecure-plain-tcp", "cargo xtask certs"],
    );
    assert_error(
        &[
            "receive",
            "--listen",
            "tcp:127.0.0.1:7000",
            "--tls-dir",
            "/nonexistent-roam-tls",
        ],
        f,
        &["/nonexistent-roam-tls/ca-cert.pem"],
    );
    assert_error(
        &[
            "receive",
            "--listen",
            "tcp:127.0.0.1:7000",
            "--max-mem",
            "1K",
        ],
        f,
        &["--max-mem"],
    );
    let sock = std::env::temp_dir().join(format!("roam-mig-cli-{}.sock", std::process::id()));
    let listen = format!("unix:{}", sock.display());
    assert_error(
        &["receive", "--listen", &listen, "--net", "tap=,mac=zz"],
        f,
        &["--net"],
    );
    assert!(!sock.exists(), "a refused receive left its socket behind");

    // No socket is needed to reject the words: the same socket that does not exist gets
    // the usage error, not "no API socket".
    let ctl = sock.display().to_string();
    for (words, says) in [
        (&[][..], "give the destination"),
        (&["udp:x:1"][..], "tcp:ADDR:PORT or unix:PATH"),
        (&["tcp:h:1", "--downtime-ms"][..], "needs a value"),
        (&["tcp:h:1", "--downtime-ms", "0"][..], "1 to 60000"),
        (&["tcp:h:1", "--downtime-ms", "60001"][..], "1 to 60000"),
        (&["tcp:h:1", "--zero-copy"][..], "unix:PATH"),
        (&["tcp:h:1", "tcp:h:2"][..], "unexpected"),
        (&["tcp:h:1", "--fast"][..], "unknown flag"),
        (&["tcp:h:1"][..], "--insecure-plain-tcp"),
    ] {
        let mut args = vec!["ctl", &ctl, "migrate"];
        args.extend(words);
        assert_error(&args, 1, &["migrate: ", says]);
    }
    // Well-formed, but nobody listens on the control socket.
    assert_error(
        &["ctl", &ctl, "migrate", &listen, "--zero-copy"],
        1,
        &["no API socket", &ctl],
    );
}

/// A `receive` fed garbage instead of a hello tells that peer why (a `FAILED` frame), logs
/// a warning, and keeps waiting for the real source.
#[test]
fn receive_answers_garbage_and_keeps_waiting() {
    use std::io::{Read, Write};
    let sock = std::env::temp_dir().join(format!("roam-mig-junk-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(roam_tests::host_vmm());
    cmd.args(["receive", "--listen"])
        .arg(format!("unix:{}", sock.display()));
    let mut receiver = proc::Background::spawn(&mut cmd).expect("receive starts");
    receiver
        .wait_for("waiting for a guest", Duration::from_secs(10))
        .expect("receive listens");
    for round in 0..2 {
        let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("receive listens");
        conn.write_all(b"GET / HTTP/1.0\r\n\r\nthis is not a migration stream")
            .expect("write");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        // It told the peer why, in a frame of the stream format.
        let Ok((migration_wire::Message::Failed(why), _)) =
            migration_wire::Message::decode(&answer)
        else {
            panic!("round {round}: answer {answer:?}\n{}", receiver.output());
        };
        assert!(why.contains("RMIG"), "{why}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        receiver.running(),
        "receive gave up:\n{}",
        receiver.output()
    );
    let out = receiver.output();
    let warnings = out.lines().filter(|l| l.contains("dropped")).count();
    assert_eq!(warnings, 2, "one warning per peer dropped:\n{out}");
    assert!(out.contains("still waiting for the source"), "{out}");
    assert!(
        sock.exists(),
        "the socket is still there for the real source"
    );
    drop(receiver);
    let _ = std::fs::remove_file(&sock);
    say("receive answered garbage twice and kept waiting");
}

/// Plain TCP, asked for by name (`--insecure-plain-tcp` on both ends), still moves the
/// guest, and both ends warn that it is neither authenticated nor encrypted. (Without it,
/// or a TLS directory, both ends refuse: `receive_and_ctl_migrate_command_lines`.)
#[test]
fn plain_tcp_moves_only_when_asked_for_by_name_and_warns() {
    if !kvm_present("plain_tcp_moves_only_when_asked_for_by_name_and_warns") {
        return;
    }
    let hosts = TwoHosts::up("mpl").unwrap_or_else(|e| panic!("topology: {e:#}"));
    let mut guest = HostVmmGuest::boot_with(&hosts, &image("netecho"), MEM_MIB, "", Nics::Virtio)
        .unwrap_or_else(|e| panic!("boot: {e:#}"));
    guest.set_transport(Transport::InsecurePlainTcp);
    let moved = guest
        .move_to_other(&hosts, Mode::PreCopy, None)
        .unwrap_or_else(|e| panic!("plain TCP move: {e:#}"));
    assert_eq!(moved.summary.mode, Mode::PreCopy);
    assert!(moved.summary.memory_bytes_copied > 0, "{:?}", moved.summary);
    let out = guest.console();
    let warned = out
        .lines()
        .filter(|l| l.contains("plain TCP (--insecure-plain-tcp)"))
        .count();
    assert!(
        warned >= 2,
        "the source and the destination each warn ({warned} warnings):\n{out}"
    );
    guest
        .wait_for_agent()
        .unwrap_or_else(|e| panic!("the guest after the move: {e:#}"));
    say(&format!(
        "plain TCP move: pause {:.3} ms, {} bytes; {warned} warnings",
        moved.summary.pause_ms, moved.summary.bytes_sent
    ));
}
