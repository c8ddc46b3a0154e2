//! Wide-area moves with Mobile IPv4 (HyperMIP), as a user runs them (`xtask::widearea`):
//! `host-vmm home-agent` in the home agent's namespace, the guest booted on its home link,
//! moved by pre-copy over the WAN home -> site A -> site B -> home (`host-vmm receive --net
//! mip --mobility mip:...` at the sites, `--net tap=... --mobility mip:...` back home), while
//! the correspondent pings it every 10 ms and a TCP stream, a kv session or iperf3 runs
//! through it. The guest never changes: same address, same gateway. Real KVM, the real
//! Linux data path between namespaces, stock ping and iperf3; every process is ended by PID
//! and the topology removed, also on failure.

use roam_tests::{image, kvm_present, say};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::net::GUEST_IP;
use xtask::net::wan::{Site, Wan};
use xtask::pingd::{PingLog, Pinger};
use xtask::proc;
use xtask::widearea::{Place, Strategy, WideArea};

/// Bound for the guest to answer again after a move.
const ANSWER: Duration = Duration::from_secs(10);
/// Pings lost per move at most: the pause, the registration's round trip and the first
/// tunnelled packets (measured: see the figures the tests print).
const MAX_LOST_PER_MOVE: usize = 30;

fn start(image_name: &str, tag: &str) -> WideArea {
    roam_tests::host_vmm();
    WideArea::start(&image(image_name), tag, 0, Strategy::Mip)
        .unwrap_or_else(|e| panic!("wide-area start with {image_name}: {e:#}"))
}

/// The moves home -> site A -> site B -> home; says what each did.
fn tour(w: &mut WideArea) {
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
            "widearea: -> {}: {}; answered {back:?} after ctl returned ({moved:?})",
            to.name(),
            m.summary
        ));
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

/// Checks the pings of a tour: few lost, and says how many.
fn check_pings(w: &WideArea, pinger: Pinger, what: &str) {
    let log = PingLog::parse(&pinger.output());
    drop(pinger);
    let lost = log.lost();
    say(&format!(
        "widearea {what}: {} pings, {} lost over 3 moves, longest gap {:.1} ms",
        log.replies.len() + lost.len(),
        lost.len(),
        log.longest_gap().map_or(0.0, |g| g.secs() * 1e3)
    ));
    assert!(
        lost.len() <= 3 * MAX_LOST_PER_MOVE,
        "{what}: {} pings lost over 3 moves\n{}",
        lost.len(),
        w.agents_output()
    );
}

#[test]
fn netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home() {
    if !kvm_present("netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = start("netecho", "wae");
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
    let pinger = pinger(&w, 60);
    let echo = client(
        &w,
        env!("CARGO_BIN_EXE_netprobe"),
        &[
            "tcp-echo".into(),
            format!("{GUEST_IP}:7"),
            (1u64 << 20).to_string(),
            "5".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    tour(&mut w);
    let run = echo.join().expect("echo thread").expect("netprobe ran");
    assert!(
        run.status.success(),
        "the TCP stream through the moves lost or changed bytes: {}{}\n{}",
        run.stdout,
        run.stderr,
        w.agents_output()
    );
    check_pings(&w, pinger, "netecho");
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
fn kv_checks_every_reply_home_to_a_to_b_and_home() {
    if !kvm_present("kv_checks_every_reply_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = start("kv", "wak");
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
    say(&format!("widearea kv: {}", run.stdout.trim()));
    check_pings(&w, pinger, "kv");
}

#[test]
fn iperf3_runs_home_to_a_to_b_and_home() {
    if !kvm_present("iperf3_runs_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = start("iperf3", "wai");
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
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("iperf3 --json: {e}: {}", run.stdout));
    assert!(
        run.status.success() && json.get("error").is_none(),
        "iperf3 through the moves: {} {}",
        run.status,
        json.get("error").map_or(String::new(), |e| e.to_string())
    );
    let bytes = json["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    say(&format!(
        "widearea iperf3: {bytes} bytes received through 3 moves"
    ));
    assert!(bytes > 0, "iperf3 moved nothing");
}

#[test]
fn a_move_with_the_home_agent_down_rolls_back_and_the_source_keeps_serving() {
    if !kvm_present("a_move_with_the_home_agent_down_rolls_back_and_the_source_keeps_serving") {
        return;
    }
    let mut w = start("netecho", "wad");
    w.stop_home_agent().expect("home agent stops");
    let (mut receiver, _ctl, listen) = w
        .receiver(Place::Site(Site::A))
        .expect("host-vmm receive at site A");
    let mut cmd = Command::new(roam_tests::host_vmm());
    cmd.arg("ctl")
        .arg(w.current.ctl.path())
        .args(["migrate", &listen]);
    let t = Instant::now();
    let run = proc::watch(&mut cmd, "", Duration::from_secs(60)).expect("ctl migrate runs");
    assert!(!run.status.success(), "a move with no home agent succeeded");
    assert!(
        run.stderr.contains("migration failed, the guest runs here")
            && run.stderr.contains("home agent"),
        "the reason: {}",
        run.stderr
    );
    say(&format!(
        "widearea: home agent down: rolled back after {:?}: {}",
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
    // The home agent back (same state file): the next move goes through.
    w.restart_home_agent().expect("home agent restarts");
    std::thread::sleep(Duration::from_millis(300));
    w.wait_agent().expect("guest agent");
    let m = w
        .move_to(Place::Site(Site::A))
        .expect("the move after the home agent came back");
    w.wait_answers(ANSWER).expect("the guest answers at site A");
    say(&format!(
        "widearea: after the home agent came back: {}",
        m.summary
    ));
}
