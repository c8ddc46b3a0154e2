//! Stock QEMU moving a Roam guest between two host namespaces on one L2 (xtask's two-host
//! topology), the peer the migration benchmark compares host-vmm with; and the downtime
//! scripts in tests/bench/ measured against such a move. QEMU is not our product: these stay
//! light. Every QEMU is killed by its PID when dropped, and every topology removed, also when
//! a test fails.

use roam_tests::{image, kvm_present};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::bench::migrate::Mode;
use xtask::bench::qemu_migrate::{QemuMigration, QemuMoved};
use xtask::net::{GUEST_IP, Side, TwoHosts};
use xtask::pingd::Pinger;

/// The ping interval (guest code is emulated here; one echo costs it ~1 ms).
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Pings a QEMU pre-copy move of an idle guest may lose: 200 ms of silence (measured here:
/// 0 to 5).
const MAX_LOST: usize = 20;

fn boot(hosts: &TwoHosts, image_name: &str, mode: Mode) -> QemuMigration {
    QemuMigration::boot(hosts, &image(image_name), 128, "", mode)
        .unwrap_or_else(|e| panic!("booting {image_name} under QEMU: {e:#}"))
}

fn move_guest(guest: &mut QemuMigration, hosts: &TwoHosts) -> QemuMoved {
    let from = guest.side();
    let moved = guest.move_to_other(hosts).unwrap_or_else(|e| {
        panic!(
            "QEMU move from the {} host: {e:#}\n--- console ---\n{}",
            from.key(),
            guest.current().vm.output()
        )
    });
    assert_eq!(guest.side(), from.other());
    moved
}

#[test]
fn qemu_moves_netecho_by_pre_copy_while_pinging() {
    if !kvm_present("qemu_moves_netecho_by_pre_copy_while_pinging") {
        return;
    }
    let hosts = TwoHosts::up("qm").expect("two-host topology");
    let mut guest = boot(&hosts, "netecho", Mode::PreCopy);
    let pinger = Pinger::start(hosts.client("ping"), GUEST_IP, PING_INTERVAL, 3000).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let moved = move_guest(&mut guest, &hosts);
    std::thread::sleep(Duration::from_secs(1));
    let log = pinger.stop().unwrap();

    assert_eq!(moved.info.status, "completed");
    assert!(moved.info.downtime_ms.is_some(), "{:?}", moved.info);
    assert!(
        moved.info.transferred_bytes.unwrap_or(0) > 0,
        "pre-copy sent RAM: {:?}",
        moved.info
    );
    // The destination answered after the move, on the other host.
    let last = log.replies.iter().map(|r| r.at).fold(f64::MIN, f64::max);
    assert!(
        last > moved.running_at + 0.5,
        "no reply in the second after the move:\n{}",
        guest.current().vm.output()
    );
    let lost = log.lost();
    assert!(
        lost.len() <= MAX_LOST,
        "{} pings lost (bound {MAX_LOST}): {lost:?}",
        lost.len()
    );
    // And it still answers a fresh client afterwards.
    let out = hosts
        .client("ping")
        .args(roam_tests::ping_args(3, 0.2))
        .arg(GUEST_IP)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    roam_tests::say(&format!(
        "qemu pre-copy 128M: downtime {:?} ms, total {:?} ms, {:?} bytes, {} pings lost, longest gap {:.1} ms",
        moved.info.downtime_ms,
        moved.info.total_time_ms,
        moved.info.transferred_bytes,
        lost.len(),
        log.longest_gap().map_or(0.0, |g| g.secs() * 1e3)
    ));
    // QEMU's own pause (its `downtime`) and the silence the clients saw, held to the bounds
    // host-vmm's moves are held to.
    roam_tests::assert_pause(
        "QEMU's pre-copy move",
        moved.info.downtime_ms.unwrap_or(0) as f64,
    );
    roam_tests::assert_gap(
        "QEMU's pre-copy move",
        log.longest_gap().map_or(0.0, |g| g.secs() * 1e3),
    );
}

/// A file path unique to this test run, removed when dropped.
struct Flag(PathBuf);

impl Flag {
    fn new(what: &str) -> Flag {
        let p = std::env::temp_dir().join(format!("roam-qmt-{}-{what}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Flag(p)
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `script` with `args` and, as its move command, a handshake: the script's move
/// command creates `go` and waits for `done`; this thread moves the guest in between.
fn script_around_a_move(
    script: &str,
    args: &[&str],
    guest: &mut QemuMigration,
    hosts: &TwoHosts,
) -> (xtask::proc::Watched, QemuMoved) {
    let (go, done) = (Flag::new("go"), Flag::new("done"));
    let path = xtask::root().join("tests/bench").join(script);
    let mut cmd = Command::new(&path);
    cmd.args(args).args([
        "--",
        "sh",
        "-c",
        "echo > \"$1\"; while [ ! -e \"$2\" ]; do sleep 0.005; done",
        "sh",
    ]);
    cmd.arg(&go.0).arg(&done.0);
    let run = std::thread::spawn(move || xtask::proc::watch(&mut cmd, "", Duration::from_secs(90)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !go.0.exists() && Instant::now() < deadline && !run.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let moved = go.0.exists().then(|| guest.move_to_other(hosts));
    // Released in every case, so the script ends and reports.
    std::fs::write(&done.0, b"").unwrap();
    let watched = run.join().unwrap().unwrap();
    let moved = match moved {
        Some(Ok(m)) => m,
        Some(Err(e)) => panic!("the move failed: {e:#}\n{}", guest.current().vm.output()),
        None => panic!(
            "{script} never ran its move command:\n{}{}",
            watched.stdout, watched.stderr
        ),
    };
    (watched, moved)
}

fn key_values(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(kv: &HashMap<String, String>, key: &str) -> f64 {
    kv.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number `{key}` in {kv:?}"))
}

#[test]
fn downtime_scripts_measure_a_qemu_move() {
    if !kvm_present("downtime_scripts_measure_a_qemu_move") {
        return;
    }
    let hosts = TwoHosts::up("qs").expect("two-host topology");
    let mut guest = boot(&hosts, "iperf3", Mode::ZeroCopy);
    let client_ns = hosts.client_ns();
    let common = ["--ns", &client_ns, "--target", GUEST_IP];

    let mut args = common.to_vec();
    args.extend(["--lead", "0.5", "--tail", "1"]);
    let (run, moved) = script_around_a_move("downtime-ping.sh", &args, &mut guest, &hosts);
    assert!(
        run.status.success(),
        "downtime-ping.sh failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let kv = key_values(&run.stdout);
    let gap = number(&kv, "longest_gap_ms");
    let lost = number(&kv, "lost");
    assert!(gap >= 5.0, "a 10 ms ping sees gaps of about 10 ms: {kv:?}");
    // The move's silence is at least QEMU's own pause.
    let downtime = moved.info.downtime_ms.unwrap_or(0) as f64;
    assert!(
        gap >= downtime,
        "gap {gap} ms < QEMU's downtime {downtime} ms"
    );
    assert!(lost <= MAX_LOST as f64, "{kv:?}");
    assert_eq!(kv.get("move_exit").map(String::as_str), Some("0"));
    assert_eq!(guest.side(), Side::Destination);
    roam_tests::say(&format!(
        "downtime-ping.sh around a QEMU zero-copy move: {kv:?}"
    ));

    let mut args = common.to_vec();
    args.extend(["--time", "4", "--lead", "2"]);
    let (run, _) = script_around_a_move("downtime-iperf.sh", &args, &mut guest, &hosts);
    assert!(
        run.status.success(),
        "downtime-iperf.sh failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let kv = key_values(&run.stdout);
    assert_eq!(
        kv.get("iperf3_exit").map(String::as_str),
        Some("0"),
        "{kv:?}"
    );
    let dip = number(&kv, "dip_mbps");
    let (median, mean) = (number(&kv, "median_mbps"), number(&kv, "mean_mbps"));
    // QEMU's emulated guest manages a few Mbit/s in bursts: empty intervals are normal.
    assert!(mean > 0.0 && dip <= median && dip <= mean, "{kv:?}");
    assert!(number(&kv, "intervals") >= 20.0, "{kv:?}");
    assert_eq!(guest.side(), Side::Source, "moved back");
    roam_tests::say(&format!(
        "downtime-iperf.sh around a QEMU zero-copy move back: {kv:?}"
    ));
}
