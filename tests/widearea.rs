//! Wide-area moves with Mobile IPv4 (HyperMIP), as a user runs them: `host-vmm home-agent`
//! in the home agent's namespace, the guest booted on its home link, moved by pre-copy over
//! the WAN home → site A → site B → home (`host-vmm receive --net mip --mobility mip:...` at
//! the sites, `--net tap=... --mobility mip:...` back home), while the correspondent pings
//! it every 10 ms and a TCP stream through it compares every byte. The guest never changes:
//! same address, same gateway. Real KVM, the real Linux data path between namespaces, stock
//! ping; every process is ended by PID and the topology removed, also on failure.

use roam_tests::{image, kvm_present, say};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::ctl::Control;
use xtask::net::wan::{H1_WAN_IP, HA_HOME_LINK, HA_WAN_IP, Site, Wan};
use xtask::net::{GUEST_IP, GUEST_MAC, Nics, TAP};
use xtask::pingd::{PingLog, Pinger};
use xtask::proc::{self, Background};
use xtask::vm::{Boot, Vmm};

/// Guest RAM: small, so the moves over the WAN stay quick.
const MEM_MIB: u32 = 64;
/// The security association's SPI.
const SPI: u32 = 300;
/// Bound for one move (`ctl migrate`).
const MOVE: Duration = Duration::from_secs(60);
/// Bound for the guest to answer again after a move.
const ANSWER: Duration = Duration::from_secs(10);
/// Pings lost per move at most: the pause, the registration's round trip and the first
/// tunnelled packets (measured: see the figures the test prints).
const MAX_LOST_PER_MOVE: usize = 30;

/// A file removed on drop.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(tag: &str) -> TempPath {
    TempPath(std::env::temp_dir().join(format!("roam-wa-{tag}-{}", std::process::id())))
}

/// A 128-bit key as hex, different every run.
fn key_hex() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos())
        ^ u128::from(std::process::id());
    format!(
        "{:032x}",
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// The `--mobility` setting of every receiver.
fn mobility(key_file: &Path) -> String {
    format!(
        "mip:ha={HA_WAN_IP},home={GUEST_IP}/24,spi={SPI},key=@{}",
        key_file.display()
    )
}

/// The VMM serving the guest now, and where.
struct Current {
    vm: Background,
    ctl: Control,
    at: &'static str,
}

/// Starts `host-vmm receive` in `ns`, listening on `listen`, with `net`, `--mobility`.
fn receiver(ns: &str, listen: &str, net: &str, mobility: &str) -> (Background, Control) {
    let ctl = Control::unique("wa");
    let mut cmd = Wan::exec_in(ns, roam_tests::host_vmm());
    cmd.args([
        "receive",
        "--listen",
        listen,
        "--net",
        net,
        "--mobility",
        mobility,
    ])
    .arg("--api-socket")
    .arg(ctl.path())
    .env("RUST_LOG", "info");
    let mut vm = Background::spawn(&mut cmd).expect("starting host-vmm receive");
    vm.wait_for("waiting for a guest", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("host-vmm receive in {ns}: {e:#}"));
    (vm, ctl)
}

/// Moves the guest from `current` to a receiver in `ns`; returns the `migrated` line.
fn move_to(
    current: &mut Current,
    ns: &str,
    ip: &str,
    port: u16,
    net: &str,
    mobility: &str,
    at: &'static str,
) -> String {
    let listen = format!("tcp:{ip}:{port}");
    let (vm, ctl) = receiver(ns, &listen, net, mobility);
    let mut cmd = Command::new(roam_tests::host_vmm());
    cmd.arg("ctl")
        .arg(current.ctl.path())
        .args(["migrate", &listen]);
    let run = proc::watch(&mut cmd, "", MOVE).expect("ctl migrate runs");
    assert!(
        run.status.success(),
        "move {} -> {at} failed: {}{}\n--- receiver ---\n{}\n--- source ---\n{}",
        current.at,
        run.stderr,
        run.stdout,
        vm.output(),
        current.vm.output()
    );
    let old = std::mem::replace(current, Current { vm, ctl, at });
    drop(old);
    run.stdout.trim().to_owned()
}

/// Waits until the guest answers ping from the correspondent.
fn wait_answers(wan: &Wan, current: &mut Current, bound: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < bound {
        assert!(
            current.vm.running(),
            "the VMM at {} exited:\n{}",
            current.at,
            current.vm.output()
        );
        let out = wan
            .correspondent("ping")
            .args(["-c", "1", "-W", "1", GUEST_IP])
            .output()
            .expect("ping runs");
        if out.status.success() {
            return start.elapsed();
        }
    }
    panic!(
        "the guest at {} does not answer ping within {bound:?}:\n{}",
        current.at,
        current.vm.output()
    );
}

#[test]
fn mobile_ip_keeps_the_address_home_to_site_a_to_site_b_and_home() {
    if !kvm_present("mobile_ip_keeps_the_address_home_to_site_a_to_site_b_and_home") {
        return;
    }
    roam_tests::host_vmm();
    let wan = Wan::unique("wa")
        .and_then(Wan::up)
        .expect("wide-area topology");
    let key = key_hex();
    let keys = temp("keys");
    std::fs::write(&keys.0, format!("spi={SPI} home={GUEST_IP} key={key}\n")).unwrap();
    let client_key = temp("key");
    std::fs::write(&client_key.0, format!("{key}\n")).unwrap();
    let state = temp("state");
    let mobility = mobility(&client_key.0);

    let mut ha_cmd = Wan::exec_in(&wan.home_agent_ns(), roam_tests::host_vmm());
    ha_cmd
        .args([
            "home-agent",
            "--listen",
            HA_WAN_IP,
            "--home-link",
            HA_HOME_LINK,
        ])
        .arg("--keys")
        .arg(&keys.0)
        .arg("--state")
        .arg(&state.0)
        .env("RUST_LOG", "info");
    let ha = Background::spawn(&mut ha_cmd).expect("starting the home agent");

    // Home: the guest on the home link, behind the home agent as its gateway.
    let ctl = Control::unique("wa");
    let img = image("netecho");
    let cmdline = xtask::net::guest_cmdline();
    let boot = Boot {
        mem_mib: MEM_MIB,
        cmdline: &cmdline,
        net: Some(wan.home_attach(Nics::Virtio)),
        control: Some(ctl.path()),
        ..Boot::new(&img)
    };
    let mut cmd = Vmm::HostVmm.command(&boot);
    cmd.env("RUST_LOG", "info");
    let vm = Background::spawn(&mut cmd).expect("booting the guest at home");
    let mut current = Current {
        vm,
        ctl,
        at: "home",
    };
    wait_answers(&wan, &mut current, Duration::from_secs(60));
    ctl_wait_agent(&current);

    let pinger = Pinger::start(
        wan.correspondent("ping"),
        GUEST_IP,
        Duration::from_millis(10),
        6000,
    )
    .expect("ping -D from the correspondent");
    let mut echo_cmd = wan.correspondent(env!("CARGO_BIN_EXE_netprobe"));
    echo_cmd.args([
        "tcp-echo",
        &format!("{GUEST_IP}:7"),
        &(1u64 << 20).to_string(),
        "5",
    ]);
    let echo = std::thread::spawn(move || proc::watch(&mut echo_cmd, "", Duration::from_secs(240)));
    std::thread::sleep(Duration::from_millis(500));

    let away = format!("mip,mac={GUEST_MAC}");
    let home = format!("tap={TAP},mac={GUEST_MAC}");
    let steps: [(&str, &str, &str, &'static str); 3] = [
        (&wan.ns(Site::A), Site::A.care_of(), away.as_str(), "site A"),
        (&wan.ns(Site::B), Site::B.care_of(), away.as_str(), "site B"),
        (&wan.home_host_ns(), H1_WAN_IP, home.as_str(), "home"),
    ];
    let mut figures = Vec::new();
    for (i, (ns, ip, net, at)) in steps.into_iter().enumerate() {
        let t = Instant::now();
        let line = move_to(&mut current, ns, ip, 7600 + i as u16, net, &mobility, at);
        let moved = t.elapsed();
        let back = wait_answers(&wan, &mut current, ANSWER);
        say(&format!(
            "widearea: -> {at}: {line}; answered {back:?} after ctl returned ({moved:?})"
        ));
        figures.push(line);
        ctl_wait_agent(&current);
        std::thread::sleep(Duration::from_millis(500));
    }

    let run = echo.join().expect("echo thread").expect("netprobe ran");
    assert!(
        run.status.success(),
        "the TCP stream through the moves lost or changed bytes: {}{}\n--- home agent ---\n{}",
        run.stdout,
        run.stderr,
        ha.output()
    );
    let log = PingLog::parse(&pinger.output());
    drop(pinger);
    let lost = log.lost();
    say(&format!(
        "widearea: {} pings, {} lost over 3 moves, longest gap {:?}",
        log.replies.len() + lost.len(),
        lost.len(),
        log.longest_gap().map(|g| g.secs())
    ));
    assert!(
        lost.len() <= 3 * MAX_LOST_PER_MOVE,
        "{} pings lost over 3 moves\n--- home agent ---\n{}",
        lost.len(),
        ha.output()
    );
    // Home again: the binding is gone.
    let status = Command::new(roam_tests::host_vmm())
        .args(["home-agent", "status", "--state"])
        .arg(&state.0)
        .output()
        .expect("home-agent status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        !text.contains(GUEST_IP) || text.contains("none"),
        "a binding is left after coming home: {text}"
    );
    drop(current);
    drop(ha);
}

/// Waits until the guest agent answers (a move needs it for PREPARE).
fn ctl_wait_agent(current: &Current) {
    current
        .ctl
        .wait_for("the guest agent answering", Duration::from_secs(20), |_| {
            true
        })
        .unwrap_or_else(|e| panic!("at {}: {e:#}\n{}", current.at, current.vm.output()));
}
