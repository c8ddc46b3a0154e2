//! The wide-area test network (xtask/src/net/wan.rs draws it): it comes up and goes down
//! leaving nothing, every site answers the correspondent, a full IP-in-IP-tunnelled packet fits
//! the WAN's MTU, the delay line delays what the router forwards (and only that), and
//! IP-in-IP from the home agent reaches a site over raw protocol-4 sockets. No VM: these need
//! root (namespaces) but not KVM. Every test makes its own uniquely named topology, removed
//! when the test ends, also when it fails.

use roam_tests::{root, say};
use std::process::Command;
use std::time::Duration;
use xtask::net::wan::{
    DELAY_DEV, H1_WAN_IP, HA_HOME_IP, HA_WAN_IP, ROUTER_CN_IP, SITE_A_IP, SITE_B_IP,
};
use xtask::net::{Site, Wan};
use xtask::proc::Background;

/// A topology for one test, named after `tag`, with a one-way WAN delay of `delay_ms`.
fn wan(tag: &str, delay_ms: u32) -> Wan {
    Wan::unique(tag)
        .and_then(|w| w.with_delay_ms(delay_ms).up())
        .unwrap_or_else(|e| panic!("bringing up the wide-area network: {e:#}"))
}

/// The namespaces whose names start with `<prefix>-`.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `count` pings from the correspondent to `dst`, 50 ms apart, every one answered; their RTTs
/// in ms. `size` is the ICMP payload, sent with Don't Fragment when given.
fn pings(w: &Wan, dst: &str, count: u32, size: Option<u32>) -> Vec<f64> {
    let mut cmd = w.correspondent("ping");
    cmd.args(["-n", "-c", &count.to_string(), "-i", "0.05", "-W", "2"]);
    if let Some(size) = size {
        cmd.args(["-M", "do", "-s", &size.to_string()]);
    }
    let text = run(cmd.arg(dst));
    assert!(
        text.contains(&format!("{count} received, 0% packet loss")),
        "{text}"
    );
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(rtts.len(), count as usize, "{text}");
    rtts
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn up_and_down_leave_no_namespace_and_no_delay_line() {
    root("up_and_down_leave_no_namespace_and_no_delay_line");
    let w = Wan::unique("wud").unwrap();
    let prefix = w.prefix().to_string();
    // A half-made earlier run (one namespace left behind) is cleared by `up`.
    run(Command::new("ip").args(["netns", "add", &w.router_ns()]));
    let w = w
        .with_delay_ms(5)
        .up()
        .expect("up over a leftover namespace");
    let mut all = w.namespaces();
    all.sort();
    let mut found = namespaces_of(&prefix);
    found.sort();
    assert_eq!(found, all);
    assert_eq!(all.len(), 7);
    let pid = w.delayline_pid().expect("a delay line runs with a delay");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(w);
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the delay line (PID {pid}) outlived its topology"
    );
}

#[test]
fn every_site_answers_the_correspondent_and_tunnelled_full_packets_fit() {
    root("every_site_answers_the_correspondent_and_tunnelled_full_packets_fit");
    let w = wan("wre", 0);
    for dst in [HA_WAN_IP, SITE_A_IP, SITE_B_IP, H1_WAN_IP, HA_HOME_IP] {
        pings(&w, dst, 3, None);
    }
    // 1544 bytes of ICMP payload make a 1572-byte packet: over a 1500 MTU, under the WAN's
    // 1600, so a 1500-byte packet plus a 20-byte IP-in-IP header fits too.
    for dst in [SITE_A_IP, SITE_B_IP, HA_WAN_IP, H1_WAN_IP] {
        pings(&w, dst, 2, Some(1544));
    }
    // Without a delay there is no delay line: no device, no process.
    assert!(w.delayline_pid().is_none());
    let link = Wan::exec_in(&w.router_ns(), "ip")
        .args(["link", "show", DELAY_DEV])
        .output()
        .unwrap();
    assert!(!link.status.success(), "{DELAY_DEV} exists without a delay");
    // Tunnelled traffic has foreign sources: no reverse-path filter anywhere.
    for ns in w.namespaces() {
        let values = run(Wan::exec_in(&ns, "sh")
            .args(["-c", "cat /proc/sys/net/ipv4/conf/*/rp_filter | sort -u"]));
        assert_eq!(values.trim(), "0", "rp_filter in {ns}");
    }
}

#[test]
fn without_delay_a_round_trip_takes_under_5_ms() {
    root("without_delay_a_round_trip_takes_under_5_ms");
    let w = wan("wd0", 0);
    let m = median(pings(&w, Site::A.care_of(), 20, None));
    say(&format!(
        "WAN delay 0 ms: median RTT correspondent -> site A {m:.3} ms"
    ));
    assert!(m < 5.0, "median RTT {m} ms");
}

#[test]
fn a_25_ms_delay_makes_round_trips_of_50_ms_and_spares_the_router_itself() {
    root("a_25_ms_delay_makes_round_trips_of_50_ms_and_spares_the_router_itself");
    let w = wan("wd25", 25);
    let m = median(pings(&w, Site::A.care_of(), 20, None));
    say(&format!(
        "WAN delay 25 ms: median RTT correspondent -> site A {m:.3} ms"
    ));
    assert!((50.0..70.0).contains(&m), "median RTT {m} ms");
    // Full-size tunnelled packets also fit through the delay line's TUN.
    let big = median(pings(&w, SITE_B_IP, 3, Some(1544)));
    assert!((50.0..70.0).contains(&big), "1572-byte RTT {big} ms");
    // The router's own address is delivered locally, not forwarded: no delay.
    let own = median(pings(&w, ROUTER_CN_IP, 5, None));
    assert!(own < 5.0, "RTT to the router itself {own} ms");
}

#[test]
fn ip_in_ip_from_the_home_agent_reaches_site_a() {
    root("ip_in_ip_from_the_home_agent_reaches_site_a");
    // Through the delay line too: a packet is a packet to it, whatever its protocol.
    let w = wan("wip", 5);
    let netprobe = env!("CARGO_BIN_EXE_netprobe");
    let mut receiver = Background::spawn(Wan::exec_in(&w.ns(Site::A), netprobe).args([
        "ipip-recv",
        HA_WAN_IP,
        SITE_A_IP,
        "20",
        "20",
    ]))
    .unwrap();
    receiver
        .wait_for("ipip-recv ready", Duration::from_secs(10))
        .unwrap();
    let sent = run(Wan::exec_in(&w.home_agent_ns(), netprobe).args([
        "ipip-send",
        HA_WAN_IP,
        SITE_A_IP,
        "20",
    ]));
    assert!(sent.contains("netprobe: ok"), "{sent}");
    // It exits after its summary line: `ok` with every packet intact, else `FAILED`.
    receiver
        .wait_for("netprobe: ok: ipip-recv", Duration::from_secs(25))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let out = receiver.output();
    assert!(out.contains("ipip-recv 20 IP-in-IP packets"), "{out}");
    assert!(out.contains("largest 1520 bytes outside"), "{out}");
}
