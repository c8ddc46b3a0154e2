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

/// A guest on a wide-area topology with its home agent running.
struct WideArea {
    // Drop order: the guest's VMM, the home agent, then the topology and the files.
    current: Current,
    ha: Background,
    ha_cmd: Command,
    mobility: String,
    wan: Wan,
    _files: [TempPath; 3],
}

impl WideArea {
    /// The topology, the home agent, and `image` booted on its home link.
    fn start(image_name: &str, tag: &str) -> WideArea {
        roam_tests::host_vmm();
        let wan = Wan::unique(tag)
            .and_then(Wan::up)
            .expect("wide-area topology");
        let key = key_hex();
        let keys = temp(&format!("{tag}-keys"));
        std::fs::write(&keys.0, format!("spi={SPI} home={GUEST_IP} key={key}\n")).unwrap();
        let client_key = temp(&format!("{tag}-key"));
        std::fs::write(&client_key.0, format!("{key}\n")).unwrap();
        let state = temp(&format!("{tag}-state"));
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
        let ctl = Control::unique("wa");
        let img = image(image_name);
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
        let mut w = WideArea {
            current: Current {
                vm,
                ctl,
                at: "home",
            },
            ha,
            ha_cmd,
            mobility,
            wan,
            _files: [keys, client_key, state],
        };
        wait_answers(&w.wan, &mut w.current, Duration::from_secs(60));
        ctl_wait_agent(&w.current);
        w
    }

    fn state_file(&self) -> &Path {
        &self._files[2].0
    }

    /// The moves home -> site A -> site B -> home; returns each `migrated` line.
    fn tour(&mut self) -> Vec<String> {
        let away = format!("mip,mac={GUEST_MAC}");
        let home = format!("tap={TAP},mac={GUEST_MAC}");
        let steps = [
            (
                self.wan.ns(Site::A),
                Site::A.care_of(),
                away.clone(),
                "site A",
            ),
            (
                self.wan.ns(Site::B),
                Site::B.care_of(),
                away.clone(),
                "site B",
            ),
            (self.wan.home_host_ns(), H1_WAN_IP, home.clone(), "home"),
        ];
        let mut lines = Vec::new();
        for (i, (ns, ip, net, at)) in steps.into_iter().enumerate() {
            let t = Instant::now();
            let line = move_to(
                &mut self.current,
                &ns,
                ip,
                7600 + i as u16,
                &net,
                &self.mobility,
                at,
            );
            let moved = t.elapsed();
            let back = wait_answers(&self.wan, &mut self.current, ANSWER);
            say(&format!(
                "widearea: -> {at}: {line}; answered {back:?} after ctl returned ({moved:?})"
            ));
            lines.push(line);
            ctl_wait_agent(&self.current);
            std::thread::sleep(Duration::from_millis(300));
        }
        lines
    }

    /// `ping -D` every 10 ms from the correspondent, bounded to `seconds`.
    fn pinger(&self, seconds: u32) -> Pinger {
        Pinger::start(
            self.wan.correspondent("ping"),
            GUEST_IP,
            Duration::from_millis(10),
            seconds * 100,
        )
        .expect("ping -D from the correspondent")
    }

    /// `program args` in the correspondent's namespace, in a thread, bounded.
    fn client(
        &self,
        program: &str,
        args: &[String],
    ) -> std::thread::JoinHandle<anyhow::Result<proc::Watched>> {
        let mut cmd = self.wan.correspondent(program);
        cmd.args(args);
        std::thread::spawn(move || proc::watch(&mut cmd, "", Duration::from_secs(240)))
    }

    /// Checks the pings of a tour: few lost, and says how many.
    fn check_pings(&self, pinger: Pinger, what: &str) {
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
            "{what}: {} pings lost over 3 moves\n--- home agent ---\n{}",
            lost.len(),
            self.ha.output()
        );
    }

    /// The home agent's bindings (`home-agent status`).
    fn bindings(&self) -> String {
        let out = Command::new(roam_tests::host_vmm())
            .args(["home-agent", "status", "--state"])
            .arg(self.state_file())
            .output()
            .expect("home-agent status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home() {
    if !kvm_present("netecho_keeps_its_address_and_a_tcp_stream_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = WideArea::start("netecho", "wae");
    let pinger = w.pinger(60);
    let echo = w.client(
        env!("CARGO_BIN_EXE_netprobe"),
        &[
            "tcp-echo".into(),
            format!("{GUEST_IP}:7"),
            (1u64 << 20).to_string(),
            "5".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    w.tour();
    let run = echo.join().expect("echo thread").expect("netprobe ran");
    assert!(
        run.status.success(),
        "the TCP stream through the moves lost or changed bytes: {}{}\n--- home agent ---\n{}",
        run.stdout,
        run.stderr,
        w.ha.output()
    );
    w.check_pings(pinger, "netecho");
    let bindings = w.bindings();
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
    let mut w = WideArea::start("kv", "wak");
    let pinger = w.pinger(60);
    let kv = w.client(
        env!("CARGO_BIN_EXE_netprobe"),
        &["kv-for".into(), format!("{GUEST_IP}:6380"), "8".into()],
    );
    std::thread::sleep(Duration::from_millis(800));
    w.tour();
    let run = kv.join().expect("kv thread").expect("netprobe ran");
    assert!(
        run.status.success(),
        "the kv session through the moves failed: {}{}",
        run.stdout,
        run.stderr
    );
    say(&format!("widearea kv: {}", run.stdout.trim()));
    w.check_pings(pinger, "kv");
}

#[test]
fn iperf3_runs_home_to_a_to_b_and_home() {
    if !kvm_present("iperf3_runs_home_to_a_to_b_and_home") {
        return;
    }
    let mut w = WideArea::start("iperf3", "wai");
    let iperf = w.client(
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
    w.tour();
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
    let mut w = WideArea::start("netecho", "wad");
    w.ha.stop(Duration::from_secs(2));
    let listen = format!("tcp:{}:7650", Site::A.care_of());
    let (mut receiver, _ctl) = receiver(
        &w.wan.ns(Site::A),
        &listen,
        &format!("mip,mac={GUEST_MAC}"),
        &w.mobility,
    );
    let mut cmd = Command::new(roam_tests::host_vmm());
    cmd.arg("ctl")
        .arg(w.current.ctl.path())
        .args(["migrate", &listen]);
    let t = Instant::now();
    let run = proc::watch(&mut cmd, "", MOVE).expect("ctl migrate runs");
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
    wait_answers(&w.wan, &mut w.current, ANSWER);
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !receiver.running(),
        "the destination ran nothing and exited"
    );
    // The home agent back (same state file): the next move goes through.
    w.ha = Background::spawn(&mut w.ha_cmd).expect("restarting the home agent");
    std::thread::sleep(Duration::from_millis(300));
    ctl_wait_agent(&w.current);
    let line = move_to(
        &mut w.current,
        &w.wan.ns(Site::A),
        Site::A.care_of(),
        7651,
        &format!("mip,mac={GUEST_MAC}"),
        &w.mobility.clone(),
        "site A",
    );
    wait_answers(&w.wan, &mut w.current, ANSWER);
    say(&format!("widearea: after the home agent came back: {line}"));
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
