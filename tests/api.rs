//! host-vmm's HTTP API driven as users and orchestrators drive it: a host-vmm started with
//! only `--api-socket`, stock `curl --unix-socket` for every call, real KVM, real TAPs in
//! namespaces and stock ping from the client namespace. Every test makes its own topology
//! and removes it; every process it starts is killed by PID, also when it fails.

use roam_tests::{image, kvm_present, say};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use xtask::api::ApiVmm;
use xtask::net::{GUEST_IP, GUEST_MAC, Side, TAP, TwoHosts, VF_TAP};

/// Guest RAM: small, so moves stay quick on a shared machine.
const MEM: u64 = 64 << 20;
/// Bound for a guest to answer ping after boot or a move.
const ANSWER: Duration = Duration::from_secs(60);
/// Bound for one move.
const MOVE: Duration = Duration::from_secs(90);
/// Bound for the guest agent to put traffic back on the VF.
const SETTLE: Duration = Duration::from_secs(20);

fn nics() -> (Value, Value) {
    (
        json!([{ "tap": TAP, "mac": GUEST_MAC }]),
        json!({ "tap": VF_TAP, "mac": GUEST_MAC }),
    )
}

/// `vm.create`'s body for `image_name` on the topology's guest address.
fn vm_config(image_name: &str) -> Value {
    let (net, vf) = nics();
    json!({
        "payload": {
            "kernel": image(image_name).display().to_string(),
            "cmdline": xtask::net::guest_cmdline(),
        },
        "memory": { "size": MEM },
        "net": net,
        "vf": vf,
    })
}

/// One ping from the client; whether it was answered within a second.
fn answers(hosts: &TwoHosts) -> bool {
    hosts
        .client("ping")
        .args(["-c", "1", "-W", "1", GUEST_IP])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Waits until the guest answers ping, failing early if `api`'s host-vmm exits.
fn wait_answers(hosts: &TwoHosts, api: &mut ApiVmm, what: &str) {
    hosts
        .wait_until_guest_answers(&mut api.vm, ANSWER)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// Waits until the guest agent reports the VF active (the state a move starts from).
fn wait_on_vf(api: &ApiVmm, what: &str) {
    let deadline = Instant::now() + SETTLE;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok((200, s)) = api.call("PUT", "roam.nic", Some(&json!({"action": "status"}))) {
            if s["active"] == "vf" {
                return;
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what}: the guest is not on the VF after {SETTLE:?}: {last}\n{}",
        api.vm.output()
    );
}

/// Waits until `vm.info` says `state`.
fn wait_state(api: &ApiVmm, state: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut last = String::new();
    while Instant::now() < deadline {
        last = api.state().unwrap_or_default();
        if last == state {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("state {last:?}, expected {state:?}:\n{}", api.vm.output());
}

/// The events `api` wrote as "source:event" strings.
fn event_names(api: &ApiVmm) -> Vec<String> {
    api.events()
        .expect("the event monitor writes JSON lines")
        .iter()
        .map(|e| {
            for key in ["timestamp", "source", "event", "properties"] {
                assert!(e.get(key).is_some(), "event without {key}: {e}");
            }
            format!(
                "{}:{}",
                e["source"].as_str().unwrap_or_default(),
                e["event"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn assert_has_events(api: &ApiVmm, wanted: &[&str]) {
    let names = event_names(api);
    for w in wanted {
        assert!(names.iter().any(|n| n == w), "no {w} event in {names:?}");
    }
}

#[test]
fn an_idle_host_vmm_creates_boots_pauses_resumes_and_shuts_down_a_guest() {
    if !kvm_present("an_idle_host_vmm_creates_boots_pauses_resumes_and_shuts_down_a_guest") {
        return;
    }
    roam_tests::host_vmm();
    let hosts = TwoHosts::up("apil").expect("topology");
    let mut api =
        ApiVmm::start(hosts.host_ns(Side::Source), "life").expect("host-vmm --api-socket");

    let ping = api.ok("GET", "vmm.ping", None).expect("vmm.ping");
    assert!(ping["pid"].as_i64().is_some_and(|p| p > 0), "{ping}");
    assert!(ping["version"].is_string(), "{ping}");
    let (code, body) = api.call("GET", "vm.info", None).unwrap();
    assert_eq!(code, 409, "no VM yet: {body}");
    assert!(body["error"].is_string(), "{body}");
    let (code, body) = api.call("PUT", "vm.boot", None).unwrap();
    assert_eq!(code, 409, "nothing to boot: {body}");

    let (code, body) = api
        .call("PUT", "vm.create", Some(&vm_config("netecho")))
        .unwrap();
    assert_eq!(code, 204, "{body}");
    assert_eq!(api.state().unwrap(), "Created");
    let (code, body) = api
        .call("PUT", "vm.create", Some(&vm_config("netecho")))
        .unwrap();
    assert_eq!(code, 409, "a second create is refused: {body}");
    let t = Instant::now();
    api.ok("PUT", "vm.boot", None).expect("vm.boot");
    wait_answers(&hosts, &mut api, "after vm.boot");
    say(&format!(
        "api: vm.boot -> first ping answered in {:?}",
        t.elapsed()
    ));
    let info = api.ok("GET", "vm.info", None).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["memory_actual_size"], MEM, "{info}");
    assert_eq!(info["config"]["net"][0]["tap"], TAP, "{info}");
    wait_on_vf(&api, "after boot");

    // Paused: the guest stops answering; resumed: it answers again.
    api.ok("PUT", "vm.pause", None).expect("vm.pause");
    assert_eq!(api.state().unwrap(), "Paused");
    let out = hosts
        .client("ping")
        .args(["-c", "3", "-i", "0.3", "-W", "1", GUEST_IP])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a paused guest answered ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, _) = api.call("PUT", "vm.pause", None).unwrap();
    assert_eq!(code, 409, "pausing twice");
    api.ok("PUT", "vm.resume", None).expect("vm.resume");
    assert_eq!(api.state().unwrap(), "Running");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(&hosts) {
        assert!(Instant::now() < deadline, "no answer after vm.resume");
    }

    let status = api
        .ok("PUT", "roam.nic", Some(&json!({"action": "status"})))
        .unwrap();
    assert_eq!(status["active"], "vf", "{status}");
    assert_eq!(status["vf"]["present"], true, "{status}");

    api.ok("PUT", "vm.shutdown", None).expect("vm.shutdown");
    assert_eq!(api.state().unwrap(), "Shutdown");
    assert!(!answers(&hosts), "the guest answers after vm.shutdown");
    api.ok("PUT", "vm.delete", None).expect("vm.delete");
    let (code, _) = api.call("GET", "vm.info", None).unwrap();
    assert_eq!(code, 409, "no VM after vm.delete");
    assert_has_events(
        &api,
        &[
            "vm:created",
            "vm:booted",
            "vm:paused",
            "vm:resumed",
            "vm:shutdown",
            "vm:deleted",
        ],
    );
    let status = api.shutdown().expect("vmm.shutdown");
    assert!(status.success(), "host-vmm exited {status}");
    assert!(!api.socket().exists(), "the API socket is removed on exit");
}

#[test]
fn moves_by_pre_copy_and_zero_copy_are_driven_only_through_the_api() {
    if !kvm_present("moves_by_pre_copy_and_zero_copy_are_driven_only_through_the_api") {
        return;
    }
    roam_tests::host_vmm();
    let hosts = TwoHosts::up("apim").expect("topology");
    let mut a = ApiVmm::start(hosts.host_ns(Side::Source), "ma").expect("source host-vmm");
    let mut b = ApiVmm::start(hosts.host_ns(Side::Destination), "mb").expect("dest host-vmm");
    a.ok("PUT", "vm.create", Some(&vm_config("netecho")))
        .unwrap();
    a.ok("PUT", "vm.boot", None).unwrap();
    wait_answers(&hosts, &mut a, "after boot");
    wait_on_vf(&a, "after boot");
    let (code, _) = a.call("PUT", "vm.cancel-migration", None).unwrap();
    assert_eq!(code, 409, "nothing to cancel before any move");

    // Pre-copy, A -> B over TCP.
    let (net, vf) = nics();
    let url = format!("tcp:{}:7411", Side::Destination.migration_ip());
    let certs = xtask::certs::CertDir::for_tests().expect("a TLS directory");
    b.ok(
        "PUT",
        "vm.receive-migration",
        Some(&json!({"receiver_url": url, "net": net, "vf": vf, "tls_dir": certs.arg()})),
    )
    .expect("vm.receive-migration");
    assert_eq!(b.state().unwrap(), "Receiving");
    let t = Instant::now();
    let answer = a
        .ok(
            "PUT",
            "vm.send-migration",
            Some(&json!({"destination_url": url, "downtime_ms": 300, "tls_dir": certs.arg()})),
        )
        .expect("vm.send-migration");
    assert!(
        answer.is_null(),
        "send-migration returns at once, without a body"
    );
    let returned = t.elapsed();
    let (p, phases) = a.wait_migration(MOVE).expect("progress");
    assert_eq!(p["state"], "succeeded", "{p}\n{}", a.vm.output());
    assert!(!phases.is_empty(), "progress polled while the move ran");
    assert!(p["bytes_sent"].as_u64().unwrap_or(0) > 0, "{p}");
    assert!(p["pass"].as_u64().unwrap_or(0) >= 2, "{p}");
    let pause_ms = p["pause_ms"].as_f64().expect("pause_ms");
    roam_tests::assert_pause("the pre-copy move through the API", pause_ms);
    assert!(
        p["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("migrated mode=pre-copy")),
        "{p}"
    );
    say(&format!(
        "api: pre-copy move: send-migration answered in {returned:?}, phases {phases:?}, pause {pause_ms:.3} ms, total {} ms",
        p["total_ms"]
    ));
    wait_state(&b, "Running", Duration::from_secs(10));
    wait_state(&a, "MigratedAway", Duration::from_secs(10));
    wait_answers(&hosts, &mut b, "after the pre-copy move");
    wait_on_vf(&b, "after the pre-copy move");
    let (code, body) = a.call("PUT", "vm.cancel-migration", None).unwrap();
    assert_eq!(code, 409, "a cancel after the move is refused: {body}");
    assert!(body["error"].is_string(), "{body}");
    assert_has_events(
        &a,
        &[
            "migration:started",
            "migration:first-pass",
            "migration:paused",
            "migration:completing",
            "migration:succeeded",
        ],
    );
    assert_has_events(
        &b,
        &[
            "migration:receiving",
            "migration:arrived",
            "migration:handed-over",
        ],
    );

    // Zero-copy, B -> A: A (whose guest moved away) takes it back over a Unix socket.
    let sock = std::env::temp_dir().join(format!("roam-api-zc-{}.sock", std::process::id()));
    let url = format!("unix:{}", sock.display());
    a.ok(
        "PUT",
        "vm.receive-migration",
        Some(&json!({"receiver_url": url, "net": net, "vf": vf})),
    )
    .expect("vm.receive-migration on the old source");
    b.ok(
        "PUT",
        "vm.send-migration",
        Some(&json!({"destination_url": url, "local": true})),
    )
    .expect("zero-copy send");
    let (p, phases) = b.wait_migration(MOVE).expect("progress");
    assert_eq!(p["state"], "succeeded", "{p}\n{}", b.vm.output());
    assert_eq!(p["memory_bytes"], 0, "zero-copy copies no page: {p}");
    assert_has_events(&b, &["migration:handing-over", "migration:succeeded"]);
    assert!(
        p["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("migrated mode=zero-copy")),
        "{p}"
    );
    say(&format!(
        "api: zero-copy move: phases {phases:?}, pause {} ms",
        p["pause_ms"]
    ));
    roam_tests::assert_pause(
        "the zero-copy move through the API",
        p["pause_ms"].as_f64().expect("pause_ms"),
    );
    wait_state(&a, "Running", Duration::from_secs(10));
    wait_answers(&hosts, &mut a, "after the zero-copy move");
    let _ = std::fs::remove_file(&sock);
    for api in [&mut a, &mut b] {
        let status = api.shutdown().expect("vmm.shutdown");
        assert!(status.success(), "host-vmm exited {status}");
    }
}

#[test]
fn a_cancel_during_a_dirty_pass_rolls_back_and_a_tcp_stream_loses_no_byte() {
    if !kvm_present("a_cancel_during_a_dirty_pass_rolls_back_and_a_tcp_stream_loses_no_byte") {
        return;
    }
    roam_tests::host_vmm();
    let hosts = TwoHosts::up("apic").expect("topology");
    let mut a = ApiVmm::start(hosts.host_ns(Side::Source), "ca").expect("source host-vmm");
    let b = ApiVmm::start(hosts.host_ns(Side::Destination), "cb").expect("dest host-vmm");
    a.ok("PUT", "vm.create", Some(&vm_config("netecho")))
        .unwrap();
    a.ok("PUT", "vm.boot", None).unwrap();
    wait_answers(&hosts, &mut a, "after boot");
    wait_on_vf(&a, "after boot");
    // Small socket buffers on the source's host (its namespace only, where migproxy runs
    // too): a stream its reader stops reading blocks the source instead of vanishing into
    // buffers.
    let out = hosts
        .exec_on(Side::Source, "sysctl")
        .args(["-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536"])
        .args(["-w", "net.ipv4.tcp_rmem=4096 16384 65536"])
        .output()
        .expect("sysctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (net, vf) = nics();
    let dst = format!("tcp:{}:7431", Side::Destination.migration_ip());
    let certs = xtask::certs::CertDir::for_tests().expect("a TLS directory");
    b.ok(
        "PUT",
        "vm.receive-migration",
        Some(&json!({"receiver_url": dst, "net": net, "vf": vf, "tls_dir": certs.arg()})),
    )
    .unwrap();
    // migproxy is a slow link (1 MB/s): every pass takes long, the guest dirties pages
    // meanwhile, and with a 1 ms downtime target dirty passes go on: the window for the
    // cancel.
    let mut proxy_cmd = hosts.exec_on(Side::Source, env!("CARGO_BIN_EXE_migproxy"));
    proxy_cmd
        .args(["--listen", "tcp:127.0.0.1:7432", "--to", &dst])
        .args(["--rate-kbps", "1000", "--tls-dir", &certs.arg()]);
    let mut proxy = xtask::proc::Background::spawn(&mut proxy_cmd).expect("migproxy");
    proxy
        .wait_for("listening on", Duration::from_secs(10))
        .expect("migproxy listens");

    // A TCP stream through the guest the whole time; every byte is compared.
    let mut echo = hosts.client(env!("CARGO_BIN_EXE_netprobe"));
    echo.args([
        "tcp-echo",
        &format!("{GUEST_IP}:7"),
        &(1u64 << 20).to_string(),
        "77",
    ]);
    let echo =
        std::thread::spawn(move || xtask::proc::watch(&mut echo, "", Duration::from_secs(240)));
    std::thread::sleep(Duration::from_millis(500));

    a.ok(
        "PUT",
        "vm.send-migration",
        Some(&json!({"destination_url": "tcp:127.0.0.1:7432", "downtime_ms": 1, "tls_dir": certs.arg()})),
    )
    .expect("vm.send-migration");
    let deadline = Instant::now() + Duration::from_secs(30);
    let in_dirty_pass = loop {
        let p = a.ok("GET", "vm.migration-progress", None).unwrap();
        if p["phase"] == "dirty-pass" && p["state"] == "running" {
            break p;
        }
        assert!(
            p["state"] == "running" && Instant::now() < deadline,
            "no dirty pass to cancel in: {p}\n--- migproxy ---\n{}",
            proxy.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (code, body) = a.call("PUT", "vm.cancel-migration", None).unwrap();
    assert_eq!(code, 204, "cancel in {in_dirty_pass}: {body}");
    let (p, _) = a.wait_migration(MOVE).expect("the move ends");
    assert_eq!(p["state"], "cancelled", "{p}\n{}", a.vm.output());
    say(&format!(
        "api: cancelled in pass {} ({} dirty pages); rolled back after {} ms",
        in_dirty_pass["pass"], in_dirty_pass["dirty_pages"], p["total_ms"]
    ));
    assert_eq!(a.state().unwrap(), "Running", "the source keeps the guest");
    assert!(
        answers(&hosts),
        "the guest answers at the source after the cancel"
    );
    let run = echo
        .join()
        .expect("echo thread")
        .expect("netprobe tcp-echo ran");
    assert!(
        run.status.success(),
        "the TCP stream lost or changed bytes: {}{}",
        run.stdout,
        run.stderr
    );
    assert_ne!(
        b.state().unwrap_or_default(),
        "Running",
        "nothing runs at the destination"
    );
    let (code, _) = a.call("PUT", "vm.cancel-migration", None).unwrap();
    assert_eq!(code, 409, "nothing left to cancel");
    assert_has_events(
        &a,
        &[
            "migration:dirty-pass",
            "migration:cancel-requested",
            "migration:rolled-back",
        ],
    );
    drop(proxy);
}
