//! Switching a guest between the emulated 82599 VF and virtio-net (both on one MAC, on two
//! TAPs of the host's bridge) while stock tools talk to it from the client namespace: ping
//! every 10 ms, a kv session checking every reply, `iperf3 -c`; by the operator
//! (`host-vmm ctl PATH switch ...`), and on its own when the VF's link goes down or the VF is
//! removed. Every test makes its own topology and control socket and removes them, and its
//! VM, also when it fails; every wait is bounded.

use roam_tests::{image, kvm_present, say};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::ctl::{Control, Nic, Status};
use xtask::net::{self, GUEST_IP, Nics};
use xtask::pingd::{self, PingLog, Pinger};
use xtask::proc::{self, Watched};
use xtask::vm::Vmm;

/// The ping interval (guest code is emulated here; one echo costs it ~1 ms).
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Switches per test.
const SWITCHES: u32 = 10;
/// Time between switches in the loaded tests.
const SPACING: Duration = Duration::from_millis(500);
/// Bound for the guest to act on its own (link down, removal) or come back to the VF.
const REACT: Duration = Duration::from_secs(10);
/// The longest failover the tests accept, from the operator's command to `status` showing
/// the guest on the other NIC (polled): generous, for nested KVM on a shared machine.
const MAX_FAILOVER: Duration = Duration::from_secs(3);

/// A guest with both NICs (or one) and a control socket, on its own test network.
struct Guest(net::NetGuest);

impl Guest {
    /// Boots `image_name` with `nics` and `--control`, and waits until it answers ping.
    fn start(image_name: &str, tag: &str, nics: Nics) -> Guest {
        roam_tests::host_vmm();
        let guest = net::NetGuest::start_with(
            Vmm::HostVmm,
            &image(image_name),
            tag,
            "log=info",
            nics,
            true,
        )
        .unwrap_or_else(|e| panic!("starting {image_name} with {}: {e:#}", nics.key()));
        Guest(guest)
    }

    fn ctl(&self) -> &Control {
        self.0.ctl().expect("booted with --control")
    }

    /// The last lines of the guest's console and host-vmm's stderr.
    fn console(&self) -> String {
        let out = self.0.vm.output();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `r`'s value, or a panic with `what`, the error and the console.
    fn check<T>(&self, r: anyhow::Result<T>, what: &str) -> T {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}\n--- guest console ---\n{}", self.console()))
    }

    fn status(&self) -> Status {
        self.check(self.ctl().status(), "host-vmm ctl status")
    }

    /// `switch NIC`, then `status` must name it.
    fn switch(&self, to: Nic) {
        self.check(
            self.ctl().switch(to),
            &format!("host-vmm ctl switch {}", to.name()),
        );
        let status = self.status();
        assert_eq!(
            status.active,
            Some(to),
            "after `switch {}` status says {status:?}\n--- guest console ---\n{}",
            to.name(),
            self.console()
        );
    }

    /// Waits (bounded by [`REACT`]) until `status` satisfies `want`.
    fn wait_for(&self, what: &str, want: impl Fn(&Status) -> bool) -> Status {
        self.check(self.ctl().wait_for(what, REACT, want), what)
    }

    /// Starts on the VF: the guest's choice when its link is up; switches if not yet.
    fn on_vf(&self) {
        let status = self.wait_for("both NICs up", |s| s.vf.link_up && s.virtio.link_up);
        if status.active != Some(Nic::Vf) {
            self.switch(Nic::Vf);
        }
    }

    /// `ping -D` every 10 ms from the client namespace, bounded to 60 s.
    fn pinger(&self) -> Pinger {
        let count = (60_000 / PING_INTERVAL.as_millis()) as u32;
        self.check(
            Pinger::start(self.0.client("ping"), GUEST_IP, PING_INTERVAL, count),
            "starting ping",
        )
    }

    /// `count` switches alternating from the VF to virtio-net, `SPACING` apart.
    fn switch_series(&self, count: u32) {
        let mut to = Nic::Virtio;
        for _ in 0..count {
            self.switch(to);
            to = to.other();
            std::thread::sleep(SPACING);
        }
    }

    fn assert_running(&mut self) {
        assert!(self.0.vm.running(), "host-vmm died:\n{}", self.console());
    }
}

/// Runs `cmd` (a client command) in a thread, bounded by `bound`, beside the test.
fn beside(mut cmd: Command, bound: Duration) -> std::thread::JoinHandle<anyhow::Result<Watched>> {
    std::thread::spawn(move || proc::watch(&mut cmd, "", bound))
}

/// Stops `pinger` and fails on a ping that printed no summary.
fn stop(guest: &Guest, pinger: Pinger) -> PingLog {
    guest.check(pinger.stop(), "stopping ping")
}

/// The sequence numbers lost, each with when it was sent, for failure messages.
fn lost_report(log: &PingLog) -> String {
    let lost: Vec<String> = log
        .requests()
        .iter()
        .filter(|r| !r.answered)
        .take(40)
        .map(|r| format!("{} (sent {:.3})", r.seq, r.sent_at.unwrap_or(f64::NAN)))
        .collect();
    lost.join(", ")
}

fn gap_ms(log: &PingLog) -> f64 {
    log.longest_gap().map_or(f64::NAN, |g| g.secs() * 1e3)
}

/// Pings every 10 ms through 10 operator switches VF <-> virtio-net: every request sent
/// before the last reply got its reply (sent and received sequence numbers compared).
#[test]
fn ping_every_10_ms_loses_nothing_through_10_switches() {
    if !kvm_present("ping_every_10_ms_loses_nothing_through_10_switches") {
        return;
    }
    let mut guest = Guest::start("netecho", "wp", Nics::Both);
    guest.on_vf();
    let before = guest.status();
    let mut pinger = guest.pinger();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    guest.switch_series(SWITCHES);
    assert!(
        pinger.running(),
        "ping ended before the switches were done ({:?})",
        started.elapsed()
    );
    let log = stop(&guest, pinger);
    guest.assert_running();
    let after = guest.status();
    say(&format!(
        "ping through {SWITCHES} switches in {:.1} s: {} sent, {} answered, {} lost, {} in flight at the stop, longest gap {:.1} ms",
        started.elapsed().as_secs_f64(),
        log.transmitted.unwrap_or(0),
        log.replies.len(),
        log.lost().len(),
        log.unanswered_at_end(),
        gap_ms(&log)
    ));
    assert!(
        log.replies.len() > 200,
        "too few replies: {}",
        log.replies.len()
    );
    assert!(
        log.lost().is_empty(),
        "{} pings lost: {}\n--- guest console ---\n{}",
        log.lost().len(),
        lost_report(&log),
        guest.console()
    );
    assert!(
        log.unanswered_at_end() <= 3,
        "{} requests unanswered at the end: the guest stopped answering",
        log.unanswered_at_end()
    );
    assert!(
        after.switches >= before.switches + u64::from(SWITCHES),
        "status counted {} switches, expected at least {SWITCHES} more than {}",
        after.switches,
        before.switches
    );
}

/// One kv session, every reply checked, stays up through 10 switches.
#[test]
fn kv_session_checking_every_reply_survives_10_switches() {
    if !kvm_present("kv_session_checking_every_reply_survives_10_switches") {
        return;
    }
    // The session runs until told to stop once the work is done (slow on a busy
    // machine); SESSION_SECS only bounds it.
    const SESSION_SECS: u64 = 180;
    let stop = roam_tests::TempFile::reserve("wk-stop");
    let mut guest = Guest::start("kv", "wk", Nics::Both);
    guest.on_vf();
    let mut probe = guest.0.client(env!("CARGO_BIN_EXE_netprobe"));
    probe.args([
        "kv-for",
        &format!("{GUEST_IP}:6380"),
        &SESSION_SECS.to_string(),
        &stop.path().display().to_string(),
    ]);
    let session = beside(probe, Duration::from_secs(SESSION_SECS + 60));
    std::thread::sleep(Duration::from_secs(1));
    guest.switch_series(SWITCHES);
    assert!(
        !session.is_finished(),
        "the kv session ended before the switches were done"
    );
    stop.write(b"stop");
    let run = session.join().expect("kv thread");
    let run = guest.check(run, "netprobe kv-for");
    guest.assert_running();
    assert!(
        run.status.success() && run.stdout.contains("every reply correct"),
        "kv session failed ({}): {}{}\n--- guest console ---\n{}",
        run.status,
        run.stdout,
        run.stderr,
        guest.console()
    );
    say(run.stdout.trim());
}

/// Stock `iperf3 -c` both ways, each through 10 switches: exits 0 with bytes moved.
#[test]
fn iperf3_runs_survive_10_switches_both_ways() {
    if !kvm_present("iperf3_runs_survive_10_switches_both_ways") {
        return;
    }
    // Long enough that 10 switches, each with its `status` check, fit inside the run even
    // when the machine is busy (a switch costs the guest's agent tens to hundreds of ms).
    const SECONDS: u64 = 20;
    let mut guest = Guest::start("iperf3", "w3", Nics::Both);
    for reverse in [false, true] {
        guest.on_vf();
        let mut cmd = guest.0.client("timeout");
        cmd.args([&(SECONDS + 30).to_string(), "iperf3", "-c", GUEST_IP])
            .args(["-t", &SECONDS.to_string(), "--json"]);
        if reverse {
            cmd.arg("-R");
        }
        let what = if reverse { "iperf3 -c -R" } else { "iperf3 -c" };
        let client = beside(cmd, Duration::from_secs(SECONDS + 60));
        std::thread::sleep(Duration::from_millis(500));
        guest.switch_series(SWITCHES);
        let early = client.is_finished();
        let run = guest.check(client.join().expect("iperf3 thread"), what);
        assert!(
            !early,
            "{what} ended before the switches were done ({}):\n{}{}\n--- guest console ---\n{}",
            run.status,
            run.stdout,
            run.stderr,
            guest.console()
        );
        guest.assert_running();
        assert!(
            run.status.success(),
            "{what} failed ({}):\n{}{}\n--- guest console ---\n{}",
            run.status,
            run.stdout,
            run.stderr,
            guest.console()
        );
        let json = roam_tests::iperf3_report(what, &run.stdout);
        let received = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        say(&format!(
            "{what} through {SWITCHES} switches: {received} bytes, {:.3} Mbit/s",
            json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e6
        ));
    }
}

/// Fails unless the failover `what` (from `from` to `to`, seconds since the epoch) took at
/// most [`MAX_FAILOVER`].
fn assert_failover(what: &str, from: f64, to: f64) {
    assert!(
        to - from <= MAX_FAILOVER.as_secs_f64(),
        "{what} took {:.0} ms (bound {MAX_FAILOVER:?})",
        (to - from) * 1e3
    );
}

/// Asserts that every request sent in `[from, to)` was answered, and that there were some.
fn all_answered(guest: &Guest, log: &PingLog, from: f64, to: f64, what: &str) {
    let w = log.window(from, to);
    assert!(
        w.sent >= 20,
        "{what}: only {} pings sent in {:.2} s",
        w.sent,
        to - from
    );
    assert!(
        w.lost.is_empty(),
        "{what}: {} of {} pings lost: {:?}\n--- guest console ---\n{}",
        w.lost.len(),
        w.sent,
        w.lost,
        guest.console()
    );
}

/// `vf link down`: the guest moves to virtio-net on its own and pings keep getting replies;
/// `vf link up`: it is back on the VF, whose receive counter grows again.
#[test]
fn vf_link_down_moves_traffic_to_virtio_and_link_up_brings_it_back() {
    if !kvm_present("vf_link_down_moves_traffic_to_virtio_and_link_up_brings_it_back") {
        return;
    }
    let mut guest = Guest::start("netecho", "wl", Nics::Both);
    guest.on_vf();
    let pinger = guest.pinger();
    std::thread::sleep(Duration::from_secs(1));

    let down_at = pingd::now();
    guest.check(guest.ctl().vf_link(false), "host-vmm ctl vf link down");
    let moved = guest.wait_for("active=virtio with the VF link down", |s| {
        s.active == Some(Nic::Virtio) && !s.vf.link_up
    });
    let moved_at = pingd::now();
    std::thread::sleep(Duration::from_secs(2));
    let steady = guest.status();
    assert_eq!(steady.active, Some(Nic::Virtio), "{steady:?}");
    assert!(
        steady.virtio.rx > moved.virtio.rx,
        "virtio-net received nothing while active: {moved:?} then {steady:?}"
    );

    let up_at = pingd::now();
    guest.check(guest.ctl().vf_link(true), "host-vmm ctl vf link up");
    let back = guest.wait_for("active=vf with the VF link up", |s| {
        s.active == Some(Nic::Vf) && s.vf.link_up
    });
    let back_at = pingd::now();
    std::thread::sleep(Duration::from_secs(2));
    let later = guest.status();
    let log = stop(&guest, pinger);
    guest.assert_running();

    say(&format!(
        "vf link down: on virtio after {:.0} ms, {} pings lost around it; link up: back on the VF after {:.0} ms, {} lost around it; longest gap {:.1} ms",
        (moved_at - down_at) * 1e3,
        log.window(down_at - 0.5, up_at).lost.len(),
        (back_at - up_at) * 1e3,
        log.window(up_at, f64::INFINITY).lost.len(),
        gap_ms(&log)
    ));
    assert_failover("the switch to virtio-net on link down", down_at, moved_at);
    assert_failover("the switch back to the VF on link up", up_at, back_at);
    assert_eq!(later.active, Some(Nic::Vf), "{later:?}");
    assert!(
        later.vf.rx > back.vf.rx,
        "the VF received nothing after coming back: {back:?} then {later:?}"
    );
    assert!(
        later.switches > moved.switches && moved.switches >= 1,
        "the automatic switches were not counted: {moved:?}, {later:?}"
    );
    // Traffic continued without an operator: every ping once the guest is on virtio-net,
    // and once it is back on the VF; no silence of a second or more anywhere.
    all_answered(
        &guest,
        &log,
        moved_at + 0.2,
        up_at,
        "on virtio-net with the VF link down",
    );
    all_answered(&guest, &log, back_at + 0.2, f64::INFINITY, "back on the VF");
    assert!(
        gap_ms(&log) < 1000.0,
        "pings went unanswered for {:.0} ms",
        gap_ms(&log)
    );
}

/// `vf remove`: traffic goes on over virtio-net; `vf add`: it is back on the VF (status
/// active=vf, the VF's receive counter grows).
#[test]
fn vf_removed_then_re_added_traffic_continues_and_returns_to_the_vf() {
    if !kvm_present("vf_removed_then_re_added_traffic_continues_and_returns_to_the_vf") {
        return;
    }
    let mut guest = Guest::start("netecho", "wr", Nics::Both);
    guest.on_vf();
    let pinger = guest.pinger();
    std::thread::sleep(Duration::from_secs(1));

    let removed_at = pingd::now();
    guest.check(guest.ctl().vf_remove(), "host-vmm ctl vf remove");
    let moved = guest.wait_for("active=virtio with the VF removed", |s| {
        s.active == Some(Nic::Virtio) && !s.vf.present
    });
    let moved_at = pingd::now();
    std::thread::sleep(Duration::from_secs(2));

    let added_at = pingd::now();
    guest.check(guest.ctl().vf_add(), "host-vmm ctl vf add");
    let back = guest.wait_for("active=vf with the VF re-added", |s| {
        s.active == Some(Nic::Vf) && s.vf.present && s.vf.link_up
    });
    let back_at = pingd::now();
    std::thread::sleep(Duration::from_secs(2));
    let later = guest.status();
    let log = stop(&guest, pinger);
    guest.assert_running();

    say(&format!(
        "vf remove: on virtio after {:.0} ms, {} pings lost around it; vf add: back on the VF after {:.0} ms, {} lost around it; longest gap {:.1} ms",
        (moved_at - removed_at) * 1e3,
        log.window(removed_at - 0.5, added_at).lost.len(),
        (back_at - added_at) * 1e3,
        log.window(added_at, f64::INFINITY).lost.len(),
        gap_ms(&log)
    ));
    assert!(!moved.vf.present, "{moved:?}");
    assert_failover("the switch to virtio-net on removal", removed_at, moved_at);
    assert_failover("the switch back to the re-added VF", added_at, back_at);
    assert_eq!(later.active, Some(Nic::Vf), "{later:?}");
    assert!(
        later.vf.rx > back.vf.rx,
        "the re-added VF received nothing: {back:?} then {later:?}"
    );
    all_answered(
        &guest,
        &log,
        moved_at + 0.2,
        added_at,
        "on virtio-net with the VF removed",
    );
    all_answered(
        &guest,
        &log,
        back_at + 0.2,
        f64::INFINITY,
        "back on the re-added VF",
    );
    assert!(
        gap_ms(&log) < 1000.0,
        "pings went unanswered for {:.0} ms",
        gap_ms(&log)
    );
}

/// The guest boots with `nics` and serves: 20 pings answered, 64 KiB TCP echo identical, and
/// `status` shows the NICs it has, the right one active.
fn boots_and_serves(nics: Nics, tag: &str) {
    let mut guest = Guest::start("netecho", tag, nics);
    let out = guest
        .0
        .client("ping")
        .args(roam_tests::ping_args(20, 0.02))
        .arg(GUEST_IP)
        .output()
        .expect("ping runs");
    let text = String::from_utf8_lossy(&out.stdout);
    roam_tests::assert_pings_answered(
        &format!("{}\n--- guest console ---\n{}", nics.key(), guest.console()),
        &text,
        20,
    );
    let out = guest
        .0
        .client(env!("CARGO_BIN_EXE_netprobe"))
        .args(["tcp-echo", &format!("{GUEST_IP}:7"), "65536", "11"])
        .output()
        .expect("netprobe runs");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && summary.contains("65536 bytes identical"),
        "{}: {summary}\n--- guest console ---\n{}",
        nics.key(),
        guest.console()
    );
    guest.assert_running();
    let status = guest.status();
    let (vf, virtio, active) = match nics {
        Nics::Vf => (true, false, Nic::Vf),
        Nics::Virtio => (false, true, Nic::Virtio),
        Nics::Both => (true, true, Nic::Vf),
    };
    assert_eq!(
        (status.vf.present, status.virtio.present, status.active),
        (vf, virtio, Some(active)),
        "{}: {status:?}",
        nics.key()
    );
    assert!(
        status.nic(active).rx > 0 && status.nic(active).tx > 0,
        "{}: the active NIC counted no traffic: {status:?}",
        nics.key()
    );
}

#[test]
fn guest_boots_and_serves_with_only_the_vf() {
    if !kvm_present("guest_boots_and_serves_with_only_the_vf") {
        return;
    }
    boots_and_serves(Nics::Vf, "wf");
}

#[test]
fn guest_boots_and_serves_with_only_virtio_net() {
    if !kvm_present("guest_boots_and_serves_with_only_virtio_net") {
        return;
    }
    boots_and_serves(Nics::Virtio, "wv");
}

#[test]
fn guest_boots_and_serves_with_both_nics() {
    if !kvm_present("guest_boots_and_serves_with_both_nics") {
        return;
    }
    boots_and_serves(Nics::Both, "wb");
}
