//! Wide-area moves as a user runs them (`xtask::widearea`), with either strategy: Mobile
//! IPv4 (HyperMIP: `host-vmm home-agent` in the home agent's namespace; `host-vmm receive
//! --net mip --mobility mip:...` at the sites) and network paging (Kanada & Tarui:
//! `host-vmm nat-edge` as the client edge in the WAN router and as each site's edge;
//! `--net nat --mobility nat:...` at the sites). The guest, booted on its home link, is
//! moved by pre-copy over the WAN home -> site A -> site B -> home (`--net tap=...` back
//! home) while the correspondent pings it every 10 ms and a TCP stream, a kv session or
//! iperf3 runs through it. The guest never changes: same address, same gateway; the
//! correspondent only ever sees that address. Real KVM, the real Linux data path
//! (IP-in-IP, nftables) between namespaces, stock ping, iperf3 and tshark; every process is
//! ended by PID and the topology removed, also on failure.

use roam_tests::{
    assert_gap, assert_pause, image, iperf3_longest_silence_ms, iperf3_report, kv_longest_wait_ms,
    kvm_present, say,
};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::net::GUEST_IP;
use xtask::net::wan::{Site, Wan};
use xtask::pingd::{PingLog, Pinger};
use xtask::proc;
use xtask::widearea::{Place, Strategy, WideArea};

/// Bound for the guest to answer again after a move.
const ANSWER: Duration = Duration::from_secs(10);
/// Pings lost per move at most: the pause, the registration's round trips and the first
/// packets on the new path (measured: see the figures the tests print).
const MAX_LOST_PER_MOVE: usize = 30;

fn start(image_name: &str, tag: &str, strategy: Strategy) -> WideArea {
    roam_tests::host_vmm();
    WideArea::start(&image(image_name), tag, 0, strategy)
        .unwrap_or_else(|e| panic!("wide-area start with {image_name}: {e:#}"))
}

/// The moves home -> site A -> site B -> home; says what each did, and with network paging
/// checks what the client edge translates to after each.
fn tour(w: &mut WideArea) {
    let name = w.strategy().name();
    for to in [Place::Site(Site::A), Place::Site(Site::B), Place::Home] {
        let t = Instant::now();
        let m = w
            .move_to(to)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", w.agents_output()));
        let moved = t.elapsed();
        let back = w
            .wait_answers(ANSWER)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", w.agents_output()));
        say(&format!(
            "widearea {name}: -> {}: {}; answered {back:?} after ctl returned ({moved:?})",
            to.name(),
            m.summary
        ));
        let summary = xtask::migrate::Summary::parse(&m.summary)
            .unwrap_or_else(|e| panic!("the move to {}: {e:#}", to.name()));
        assert_pause(&format!("the move to {}", to.name()), summary.pause_ms);
        if w.strategy() == Strategy::Nat {
            let client = w.bindings("client edge").expect("nat-edge status");
            match to {
                Place::Site(s) => assert!(
                    client.contains(&format!("{GUEST_IP} care-of={}", s.location())),
                    "the client edge after the move to {}: {client}",
                    to.name()
                ),
                Place::Home => assert!(
                    !client.contains(GUEST_IP),
                    "the client edge still translates after coming home: {client}"
                ),
            }
        }
        w.wait_agent().unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `ping -D` every 10 ms from the correspondent, bounded to `seconds`.
fn pinger(w: &WideArea, seconds: u32) -> Pinger {
    Pinger::start(
        w.wan.correspondent("ping"),
        GUEST_IP,
        Duration::from_millis(10),
        seconds * 100,
    )
    .expect("ping -D from the correspondent")
}

/// `program args` in the correspondent's namespace, in a thread, bounded.
fn client(
    w: &WideArea,
    program: &str,
    args: &[String],
) -> std::thread::JoinHandle<anyhow::Result<proc::Watched>> {
    let mut cmd = w.wan.correspondent(program);
    cmd.args(args);
    std::thread::spawn(move || proc::watch(&mut cmd, "", Duration::from_secs(240)))
}

/// Checks the pings of a tour: few lost, every reply from the guest's own address (never
/// a care-of or location address), and says how many.
fn check_pings(w: &WideArea, pinger: Pinger, what: &str) {
    let output = pinger.output();
    let log = PingLog::parse(&output);
    drop(pinger);
    let lost = log.lost();
    say(&format!(
        "widearea {} {what}: {} pings, {} lost over 3 moves, longest gap {:.1} ms",
        w.strategy().name(),
        log.replies.len() + lost.len(),
        lost.len(),
        log.longest_gap().map_or(0.0, |g| g.secs() * 1e3)
    ));
    for line in output.lines().filter(|l| l.contains("bytes from")) {
        assert!(
            line.contains(&format!("from {GUEST_IP}:")),
            "{what}: a reply not from the guest's address: {line}"
        );
    }
    assert!(
        lost.len() <= 3 * MAX_LOST_PER_MOVE,
        "{what}: {} pings lost over 3 moves\n{}",
        lost.len(),
        w.agents_output()
    );
    // The tour's longest silence bounds every move's.
    assert_gap(
        &format!("{what}: pings"),
        log.longest_gap().map_or(0.0, |g| g.secs() * 1e3),
    );
}

/// A tour with a 1 MiB TCP echo through it: every byte comes back.
fn netecho_tour(w: &mut WideArea) {
    let pinger = pinger(w, 60);
    let echo = client(
        w,
        env!("CARGO_BIN_EXE_netprobe"),
        &[
            "tcp-echo".into(),
            format!("{GUEST_IP}:7"),
            (1u64 << 20).to_string(),
            "5".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    tour(w);
    let run = echo.join().expect("echo thread").expect("netprobe ran");
    assert!(
        run.status.success(),
        "the TCP stream through the moves lost or changed bytes: {}{}\n{}",
        run.stdout,
        run.stderr,
        w.agents_output()
    );
    check_pings(w, pinger, "netecho");
}

/// A tour with a kv session checking every reply.
fn kv_tour(strategy: Strategy, tag: &str) {
    let mut w = start("kv", tag, strategy);
    let pinger = pinger(&w, 60);
    let kv = client(
        &w,
        env!("CARGO_BIN_EXE_netprobe"),
        &["kv-for".into(), format!("{GUEST_IP}:6380"), "8".into()],
    );
    std::thread::sleep(Duration::from_millis(800));
    tour(&mut w);
    let run = kv.join().expect("kv thread").expect("netprobe ran");
    assert!(
        run.status.success(),
        "the kv session through the moves failed: {}{}",
        run.stdout,
        run.stderr
    );
    say(&format!(
        "widearea {} kv: {}",
        strategy.name(),
        run.stdout.trim()
    ));
    assert_gap("the kv session", kv_longest_wait_ms(&run.stdout));
    check_pings(&w, pinger, "kv");
}

/// A tour with `iperf3 -c` through it: it exits 0 with no error in its JSON.
fn iperf3_tour(strategy: Strategy, tag: &str) {
    let mut w = start("iperf3", tag, strategy);
    let iperf = client(
        &w,
        "iperf3",
        &[
            "-c".into(),
            GUEST_IP.into(),
            "-t".into(),
            "8".into(),
            "--json".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    tour(&mut w);
    let run = iperf.join().expect("iperf3 thread").expect("iperf3 ran");
    assert!(
        run.status.success(),
        "iperf3 through the moves: {}\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let json = iperf3_report("iperf3 through the moves", &run.stdout);
    let bytes = json["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let silence = iperf3_longest_silence_ms(&json);
    say(&format!(
        "widearea {} iperf3: {bytes} bytes received through 3 moves, longest silence {silence:.0} ms",
        strategy.name()
    ));
    assert_gap("iperf3 through the moves", silence);
}

/// A move to site A that must fail for `why`, with a reason naming each of `says`: the
/// source keeps the guest, the receiver runs nothing and exits.
fn refused_move(w: &mut WideArea, why: &str, says: &[&str]) {
    let (mut receiver, _ctl, listen) = w
        .receiver(Place::Site(Site::A))
        .expect("host-vmm receive at site A");
    let mut cmd = Command::new(roam_tests::host_vmm());
    cmd.arg("ctl")
        .arg(w.current.ctl.path())
        .args(["migrate", &listen, "--tls-dir", &w.tls_dir()]);
    let t = Instant::now();
    let run = proc::watch(&mut cmd, "", Duration::from_secs(60)).expect("ctl migrate runs");
    assert!(!run.status.success(), "a move with {why} succeeded");
    assert!(
        run.stderr.contains("migration failed, the guest runs here")
            && says.iter().all(|s| run.stderr.contains(s)),
        "the reason: {}",
        run.stderr
    );
    say(&format!(
        "widearea {}: {why}: rolled back after {:?}: {}",
        w.strategy().name(),
        t.elapsed(),
        run.stderr.lines().last().unwrap_or_default()
    ));
    assert!(w.current.vm.running(), "the source keeps the guest");
    w.wait_answers(ANSWER)
        .expect("the guest answers at the source");
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !receiver.running(),
        "the destination ran nothing and exited"
    );
}

#[test]
fn mip_netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home() {
    if !kvm_present("mip_netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = start("netecho", "wae", Strategy::Mip);
    // Wireshark's Mobile IP dissector reads what crosses the home agent's WAN link.
    let capture = std::env::temp_dir().join(format!("roam-wa-{}.pcap", std::process::id()));
    let mut tshark_cmd = Wan::exec_in(&w.wan.home_agent_ns(), "tshark");
    tshark_cmd
        .args([
            "-i",
            "wan0",
            "-f",
            "udp port 434",
            "-a",
            "duration:120",
            "-w",
        ])
        .arg(&capture);
    let mut tshark = proc::Background::spawn(&mut tshark_cmd)
        .expect("tshark runs (DEBIAN_FRONTEND=noninteractive apt-get install -y tshark)");
    tshark
        .wait_for("Capturing on", Duration::from_secs(20))
        .expect("tshark captures");
    netecho_tour(&mut w);
    std::thread::sleep(Duration::from_millis(300));
    // SIGINT, as Ctrl-C: tshark stops its dumpcap and writes the file (SIGKILL would leave
    // dumpcap capturing, holding the output pipe).
    let _ = Command::new("sh")
        .args(["-c", "kill -INT \"$1\"", "sh", &tshark.pid().to_string()])
        .status();
    tshark.stop(Duration::from_secs(10));
    let decoded = Command::new("tshark")
        .args(["-r"])
        .arg(&capture)
        .args(["-V", "-Y", "mip"])
        .output()
        .expect("tshark -r runs");
    let _ = std::fs::remove_file(&capture);
    let text = String::from_utf8_lossy(&decoded.stdout);
    let requests = text.matches("Registration Request (1)").count();
    let replies = text.matches("Registration Reply (3)").count();
    say(&format!(
        "widearea: tshark decoded {requests} Requests and {replies} Replies on the home agent's link"
    ));
    assert!(
        requests >= 3 && replies >= 3,
        "tshark saw {requests} Requests, {replies} Replies:\n{text}"
    );
    for (what, needle) in [
        ("site A's care-of address", Site::A.care_of()),
        ("site B's care-of address", Site::B.care_of()),
        ("the home address", GUEST_IP),
        ("an accepted reply", "Reg Accepted"),
    ] {
        assert!(
            text.contains(needle),
            "tshark shows no {what} ({needle}):\n{text}"
        );
    }
    assert!(
        !text.contains("Malformed") && !text.contains("[Expert Info (Error"),
        "tshark flags a captured message:\n{text}"
    );
    let bindings = w.bindings("home agent").expect("home-agent status");
    assert!(
        !bindings.contains(GUEST_IP),
        "a binding is left after coming home: {bindings}"
    );
}

#[test]
fn nat_netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home() {
    if !kvm_present("nat_netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = start("netecho", "wne", Strategy::Nat);
    netecho_tour(&mut w);
    // Home again: the router translates nothing; the translated flows never made a
    // conntrack entry there (they are untracked).
    let router = w.wan.router_ns();
    let ruleset = w.ruleset(&router).expect("nft list ruleset");
    assert!(
        !ruleset.contains(GUEST_IP),
        "the client edge's maps still hold the guest: {ruleset}"
    );
    let tracked = Wan::exec_in(&router, "conntrack")
        .args(["-L", "-d", GUEST_IP])
        .output()
        .expect("conntrack -L");
    let tracked = String::from_utf8_lossy(&tracked.stdout);
    assert!(
        !tracked.contains(GUEST_IP),
        "conntrack entries for translated flows: {tracked}"
    );
}

#[test]
fn mip_kv_checks_every_reply_home_to_a_to_b_and_home() {
    if !kvm_present("mip_kv_checks_every_reply_home_to_a_to_b_and_home") {
        return;
    }
    kv_tour(Strategy::Mip, "wak");
}

#[test]
fn nat_kv_checks_every_reply_home_to_a_to_b_and_home() {
    if !kvm_present("nat_kv_checks_every_reply_home_to_a_to_b_and_home") {
        return;
    }
    kv_tour(Strategy::Nat, "wnk");
}

#[test]
fn mip_iperf3_runs_home_to_a_to_b_and_home() {
    if !kvm_present("mip_iperf3_runs_home_to_a_to_b_and_home") {
        return;
    }
    iperf3_tour(Strategy::Mip, "wai");
}

#[test]
fn nat_iperf3_runs_home_to_a_to_b_and_home() {
    if !kvm_present("nat_iperf3_runs_home_to_a_to_b_and_home") {
        return;
    }
    iperf3_tour(Strategy::Nat, "wni");
}

#[test]
fn a_move_with_the_home_agent_down_rolls_back_and_the_source_keeps_serving() {
    if !kvm_present("a_move_with_the_home_agent_down_rolls_back_and_the_source_keeps_serving") {
        return;
    }
    let mut w = start("netecho", "wad", Strategy::Mip);
    w.stop_home_agent().expect("home agent stops");
    refused_move(&mut w, "no home agent", &["home agent"]);
    // The home agent back (same state file): the next move goes through.
    w.restart_home_agent().expect("home agent restarts");
    std::thread::sleep(Duration::from_millis(300));
    w.wait_agent().expect("guest agent");
    let m = w
        .move_to(Place::Site(Site::A))
        .expect("the move after the home agent came back");
    w.wait_answers(ANSWER).expect("the guest answers at site A");
    say(&format!(
        "widearea mip: after the home agent came back: {}",
        m.summary
    ));
}

#[test]
fn a_move_with_an_edge_down_rolls_back_and_the_source_keeps_serving() {
    if !kvm_present("a_move_with_an_edge_down_rolls_back_and_the_source_keeps_serving") {
        return;
    }
    let mut w = start("netecho", "wnd", Strategy::Nat);
    // The site's edge down: refused before the guest pauses.
    w.stop_agent("site A edge").expect("site A edge stops");
    refused_move(&mut w, "site A's edge down", &["network paging", "edge"]);
    w.restart_agent("site A edge")
        .expect("site A edge restarts");
    // The client edge down: refused while the guest is paused; the site edge's entry is
    // taken back.
    w.stop_agent("client edge").expect("client edge stops");
    refused_move(&mut w, "the client edge down", &["network paging", "edge"]);
    let site = w.bindings("site A edge").expect("nat-edge status");
    assert!(
        !site.contains(GUEST_IP),
        "the site edge still maps the guest after the rollback: {site}"
    );
    // The client edge back (same state file): the next move goes through.
    w.restart_agent("client edge")
        .expect("client edge restarts");
    w.wait_agent().expect("guest agent");
    let m = w
        .move_to(Place::Site(Site::A))
        .unwrap_or_else(|e| panic!("the move after the edge came back: {e:#}"));
    w.wait_answers(ANSWER).expect("the guest answers at site A");
    say(&format!(
        "widearea nat: after the client edge came back: {}",
        m.summary
    ));
}
