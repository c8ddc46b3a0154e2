//! The operator's control over a guest that does not cooperate, through host-vmm's API and
//! stock `curl --unix-socket`: a guest that refuses or stalls PREPARE is moved only with
//! `"force": true` (and the event says so); a guest flooding its control channel still
//! gets its requests answered, and a request it never answers still ends at the agent's
//! deadline; one client stalled mid-request, and a move waiting on a silent destination,
//! hold up no other client. The guests are `netecho` with the kernel's `agent.test=` knobs
//! (docs/boot-abi.md). Moves go over `unix:` sockets; every process is ended by PID and
//! every wait is bounded.

use roam_tests::{image, kvm_present, say};
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xtask::api::ApiVmm;
use xtask::net::{GUEST_MAC, Side, TAP, TwoHosts, VF_TAP};

/// Guest RAM: small, so moves stay quick on a shared machine.
const MEM: u64 = 64 << 20;
/// Bound for a guest to answer ping after boot or a move.
const ANSWER: Duration = Duration::from_secs(60);
/// Bound for one move (a stalled PREPARE adds the agent's 5 s).
const MOVE: Duration = Duration::from_secs(90);
/// host-vmm's guest-agent deadline.
const AGENT_DEADLINE: Duration = Duration::from_secs(5);
/// What an agent call may take past that deadline (curl, the API, a busy shared machine).
const SLACK: Duration = Duration::from_secs(3);
/// Bound for a call that waits on nothing (ping, info, progress) while others stall.
const PROMPT: Duration = Duration::from_secs(2);

/// `vm.create`'s body: netecho with both NICs, `extra` after the network settings.
fn vm_config(extra: &str) -> Value {
    json!({
        "payload": {
            "kernel": image("netecho").display().to_string(),
            "cmdline": format!("{} {extra}", xtask::net::guest_cmdline()),
        },
        "memory": { "size": MEM },
        "net": [{ "tap": TAP, "mac": GUEST_MAC }],
        "vf": { "tap": VF_TAP, "mac": GUEST_MAC },
    })
}

/// `vm.receive-migration`'s body for `url` with the same NICs.
fn receive_body(url: &str) -> Value {
    json!({
        "receiver_url": url,
        "net": [{ "tap": TAP, "mac": GUEST_MAC }],
        "vf": { "tap": VF_TAP, "mac": GUEST_MAC },
    })
}

/// A socket path for a move, removed on drop.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new(tag: &str) -> SocketPath {
        let p = std::env::temp_dir().join(format!("roam-ctl-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        SocketPath(p)
    }

    fn url(&self) -> String {
        format!("unix:{}", self.0.display())
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates and boots the guest on `api`, waits until it answers ping and its agent answers.
fn boot(hosts: &TwoHosts, api: &mut ApiVmm, extra: &str) {
    api.ok("PUT", "vm.create", Some(&vm_config(extra)))
        .expect("vm.create");
    api.ok("PUT", "vm.boot", None).expect("vm.boot");
    hosts
        .wait_until_guest_answers(&mut api.vm, ANSWER)
        .unwrap_or_else(|e| panic!("after boot: {e:#}"));
    let deadline = Instant::now() + ANSWER;
    loop {
        if let Ok((200, _)) = api.call("PUT", "roam.nic", Some(&json!({"action": "status"}))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guest agent never answered:\n{}",
            api.vm.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One call and how long it took.
fn timed(
    api: &ApiVmm,
    method: &str,
    endpoint: &str,
    body: Option<&Value>,
) -> (u16, Value, Duration) {
    let t = Instant::now();
    let (code, v) = api
        .call(method, endpoint, body)
        .unwrap_or_else(|e| panic!("{method} {endpoint}: {e:#}"));
    (code, v, t.elapsed())
}

/// The reasons of `api`'s `migration forced` events.
fn forced_reasons(api: &ApiVmm) -> Vec<String> {
    api.events()
        .expect("events")
        .iter()
        .filter(|e| e["source"] == "migration" && e["event"] == "forced")
        .map(|e| e["properties"]["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Moves a guest whose agent has `knob` from A to B: refused without force (the guest
/// runs on at A), done with it; returns the forced reason.
fn move_an_uncooperative_guest(knob: &str, tag: &str) -> String {
    roam_tests::host_vmm();
    let hosts = TwoHosts::up(tag).expect("topology");
    let mut a = ApiVmm::start(hosts.host_ns(Side::Source), &format!("{tag}a")).expect("source");
    let mut b = ApiVmm::start(hosts.host_ns(Side::Destination), &format!("{tag}b")).expect("dest");
    boot(&hosts, &mut a, &format!("agent.test={knob}"));

    // Without force: refused, saying how to force it; the guest runs on here.
    let sock = SocketPath::new(tag);
    b.ok(
        "PUT",
        "vm.receive-migration",
        Some(&receive_body(&sock.url())),
    )
    .expect("vm.receive-migration");
    a.ok(
        "PUT",
        "vm.send-migration",
        Some(&json!({"destination_url": sock.url()})),
    )
    .expect("vm.send-migration");
    let (p, _) = a.wait_migration(MOVE).expect("progress");
    assert_eq!(p["state"], "failed", "{knob}: {p}\n{}", a.vm.output());
    let error = p["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("did not prepare the move") && error.contains("--force"),
        "{knob}: {error}"
    );
    assert!(p.get("forced").is_none(), "{p}");
    assert!(forced_reasons(&a).is_empty());
    assert_eq!(a.state().unwrap(), "Running");
    hosts
        .wait_until_guest_answers(&mut a.vm, ANSWER)
        .unwrap_or_else(|e| panic!("{knob}: after the refused move: {e:#}"));

    // With force: host-vmm pulls the VF itself and moves the guest.
    let sock = SocketPath::new(&format!("{tag}2"));
    b.ok(
        "PUT",
        "vm.receive-migration",
        Some(&receive_body(&sock.url())),
    )
    .expect("vm.receive-migration again");
    a.ok(
        "PUT",
        "vm.send-migration",
        Some(&json!({"destination_url": sock.url(), "force": true})),
    )
    .expect("forced vm.send-migration");
    let (p, _) = a.wait_migration(MOVE).expect("progress");
    assert_eq!(p["state"], "succeeded", "{knob}: {p}\n{}", a.vm.output());
    let forced = p["forced"].as_str().unwrap_or_default().to_owned();
    assert!(
        !forced.is_empty(),
        "{knob}: the progress says it was forced: {p}"
    );
    assert_eq!(
        forced_reasons(&a),
        std::slice::from_ref(&forced),
        "{knob}: one migration forced event, with the reason"
    );
    hosts
        .wait_until_guest_answers(&mut b.vm, ANSWER)
        .unwrap_or_else(|e| panic!("{knob}: after the forced move: {e:#}\n{}", b.vm.output()));
    for api in [&mut a, &mut b] {
        let status = api.shutdown().expect("vmm.shutdown");
        assert!(status.success(), "host-vmm exited {status}");
    }
    forced
}

#[test]
fn a_guest_that_refuses_prepare_is_moved_only_with_force() {
    if !kvm_present("a_guest_that_refuses_prepare_is_moved_only_with_force") {
        return;
    }
    let why = move_an_uncooperative_guest("refuse-prepare", "fr");
    assert!(
        why.contains("refused") && why.contains("agent.test=refuse-prepare"),
        "{why}"
    );
    say(&format!("forced move of a refusing guest: {why}"));
}

#[test]
fn a_guest_that_stalls_prepare_is_moved_only_with_force() {
    if !kvm_present("a_guest_that_stalls_prepare_is_moved_only_with_force") {
        return;
    }
    let why = move_an_uncooperative_guest("stall-prepare", "fs");
    assert!(why.contains("did not answer within 5 s"), "{why}");
    say(&format!("forced move of a stalling guest: {why}"));
}

#[test]
fn a_guest_flooding_its_control_channel_cannot_hold_the_agent_past_its_deadline() {
    if !kvm_present("a_guest_flooding_its_control_channel_cannot_hold_the_agent_past_its_deadline")
    {
        return;
    }
    roam_tests::host_vmm();
    let hosts = TwoHosts::up("cf").expect("topology");
    let mut a = ApiVmm::start(hosts.host_ns(Side::Source), "cfa").expect("host-vmm");
    boot(&hosts, &mut a, "agent.test=chatter,stall-prepare");
    let mut slowest = Duration::ZERO;
    // status and switch are answered among the noise, each within the deadline.
    for (i, body) in [
        json!({"action": "status"}),
        json!({"action": "switch", "nic": "virtio"}),
        json!({"action": "status"}),
        json!({"action": "switch", "nic": "vf"}),
        json!({"action": "status"}),
    ]
    .iter()
    .enumerate()
    {
        let (code, v, took) = timed(&a, "PUT", "roam.nic", Some(body));
        assert_eq!(code, 200, "call {i} {body}: {v}\n{}", a.vm.output());
        assert!(took < AGENT_DEADLINE + SLACK, "call {i} took {took:?}");
        slowest = slowest.max(took);
    }
    // A request the flooding guest never answers ends at the deadline.
    let (code, v, took) = timed(&a, "PUT", "roam.nic", Some(&json!({"action": "prepare"})));
    assert_ne!(code, 200, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer within 5 s")),
        "{v}"
    );
    assert!(
        took >= AGENT_DEADLINE && took < AGENT_DEADLINE + SLACK,
        "a stalled PREPARE under a flood took {took:?}"
    );
    // And the next request is answered again.
    let (code, v, _) = timed(&a, "PUT", "roam.nic", Some(&json!({"action": "status"})));
    assert_eq!(code, 200, "{v}");
    // The guest did flood: the channel carried far more than the replies.
    let counters = a.ok("GET", "vm.counters", None).expect("vm.counters");
    let flooded = counters["agent-console"]["from_guest_bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(flooded > 64 * 1024, "{counters}");
    hosts
        .wait_until_guest_answers(&mut a.vm, ANSWER)
        .unwrap_or_else(|e| panic!("the flooding guest answers ping: {e:#}"));
    say(&format!(
        "flooding guest: {flooded} bytes of noise, slowest answered agent call {slowest:?}, \
         stalled PREPARE ended after {took:?}"
    ));
    let status = a.shutdown().expect("vmm.shutdown");
    assert!(status.success(), "host-vmm exited {status}");
}

#[test]
fn a_stalled_client_and_a_waiting_move_hold_up_no_other_client() {
    if !kvm_present("a_stalled_client_and_a_waiting_move_hold_up_no_other_client") {
        return;
    }
    roam_tests::host_vmm();
    let hosts = TwoHosts::up("cs").expect("topology");
    let mut a = ApiVmm::start(hosts.host_ns(Side::Source), "csa").expect("host-vmm");
    boot(&hosts, &mut a, "");
    // A destination that accepts and then says nothing: the move waits on it (bounded).
    let sock = SocketPath::new("cs");
    let silent = UnixListener::bind(&sock.0).expect("silent destination");
    // A client stalled mid-request, and one connected and silent.
    let mut half = UnixStream::connect(a.socket()).expect("connect");
    half.write_all(b"PUT /api/v1/roam.nic HTTP/1.1\r\nContent-Length: 40\r\n\r\n{")
        .expect("half a request");
    let _quiet = UnixStream::connect(a.socket()).expect("connect");
    a.ok(
        "PUT",
        "vm.send-migration",
        Some(&json!({"destination_url": sock.url()})),
    )
    .expect("vm.send-migration");
    let (_peer, _) = silent.accept().expect("the source connects");
    let started = Instant::now();
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    // While the move waits: every other client is answered promptly, several times.
    while started.elapsed() < Duration::from_secs(4) {
        for (method, endpoint) in [
            ("GET", "vmm.ping"),
            ("GET", "vm.info"),
            ("GET", "vm.migration-progress"),
            ("GET", "vm.counters"),
        ] {
            let (code, v, took) = timed(&a, method, endpoint, None);
            assert_eq!(code, 200, "{endpoint}: {v}");
            assert!(took < PROMPT, "{endpoint} took {took:?} during the move");
            if endpoint == "vm.migration-progress" {
                assert_eq!(v["state"], "running", "{v}");
            }
            slowest = slowest.max(took);
            calls += 1;
        }
        let (code, v, took) = timed(&a, "PUT", "roam.nic", Some(&json!({"action": "status"})));
        assert_eq!(code, 200, "roam.nic status during the move: {v}");
        assert!(took < AGENT_DEADLINE, "roam.nic took {took:?}");
    }
    // The move gives up on the silent destination; the guest runs on here.
    let (p, _) = a.wait_migration(MOVE).expect("progress");
    assert_eq!(p["state"], "failed", "{p}");
    assert_eq!(a.state().unwrap(), "Running");
    hosts
        .wait_until_guest_answers(&mut a.vm, ANSWER)
        .unwrap_or_else(|e| panic!("after the failed move: {e:#}"));
    say(&format!(
        "during a waiting move with two stalled clients: {calls} calls, slowest {slowest:?}"
    ));
    drop(half);
    let status = a.shutdown().expect("vmm.shutdown");
    assert!(status.success(), "host-vmm exited {status}");
}
