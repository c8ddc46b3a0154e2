//! Std programs that serve the network (ARCHITECTURE.md "Std programs"): `std-echo` (a
//! `TcpListener` with a thread per client, UDP echo on its own thread) and `std-http` (the
//! crates.io HTTP server `tiny_http`, unchanged) serve stock clients (`ping`, `netprobe`,
//! `curl`) under host-vmm and on stock QEMU's virtio-net-pci from the same ELF, and move by
//! pre-copy and zero-copy, back and forth, with all their threads, while their clients keep
//! their connections. Every test makes its own topology and removes it, also when it fails.

use roam_tests::{assert_gap, image, kv_longest_wait_ms, kvm_present, say};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::bench::migrate::Mode;
use xtask::migrate::HostVmmGuest;
use xtask::net::{GUEST_IP, NetGuest, TwoHosts};
use xtask::proc::{self, Watched};

/// What std-echo prints once it listens (images/std-echo/src/main.rs).
const ECHO_READY: &str = "std-echo: listening on port 7 (TCP and UDP)";
/// What std-http prints once it listens (images/std-http/src/main.rs).
const HTTP_READY: &str = "std-http: listening on port 8080";
/// std-http's page for `GET /` (images/std-http/src/main.rs).
const HTTP_PAGE: &str = "Hello from tiny_http, a std program on Roam\n";
/// Bound for the ready line after the guest answers ping.
const READY: Duration = Duration::from_secs(30);
/// Guest RAM for the moved guests (as tests/migrate.rs).
const MEM_MIB: u32 = 64;
/// Bound for the guest to be back on the VF after a move.
const SETTLE: Duration = Duration::from_secs(15);
/// The moves: pre-copy and zero-copy, back and forth.
const MOVES: [Mode; 4] = [Mode::PreCopy, Mode::ZeroCopy, Mode::PreCopy, Mode::ZeroCopy];

fn echo_addr() -> String {
    format!("{GUEST_IP}:7")
}

fn http_url(path: &str) -> String {
    format!("http://{GUEST_IP}:8080{path}")
}

/// Boots `name` under `vmm` on its own test network and waits for its `ready` line.
fn start(vmm: roam_tests::Vmm, name: &str, tag: &str, ready: &str) -> NetGuest {
    let mut guest = NetGuest::start(vmm, &image(name), tag, "")
        .unwrap_or_else(|e| panic!("starting {name} under {}: {e:#}", vmm.key()));
    guest
        .vm
        .wait_for(ready, READY)
        .unwrap_or_else(|e| panic!("{name} under {}: {e:#}", vmm.key()));
    guest
}

/// Runs a client command; its stdout, or a panic with everything and the guest's console.
fn run_ok(mut cmd: Command, console: impl Fn() -> String) -> String {
    let out = cmd.output().expect("client command runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}{}\n--- guest console ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        console()
    );
    stdout
}

/// `count` pings 20 ms apart, every one answered.
fn ping(client: impl Fn(&str) -> Command, count: u32, console: impl Fn() -> String) {
    let mut cmd = client("ping");
    cmd.args(roam_tests::ping_args(count, 0.02)).arg(GUEST_IP);
    let text = run_ok(cmd, console);
    roam_tests::assert_pings_answered("ping", &text, count);
}

/// What netprobe prints for `args`, checked to have succeeded.
fn netprobe(
    client: impl Fn(&str) -> Command,
    args: &[&str],
    console: impl Fn() -> String,
) -> String {
    let mut cmd = client(env!("CARGO_BIN_EXE_netprobe"));
    cmd.args(args);
    run_ok(cmd, console)
}

/// std-echo under `vmm`: 100 pings; a 1 MiB TCP echo; four clients at once (each served by
/// its own thread: they all finish, so none waited on another's close); 500 UDP datagrams.
fn std_echo_serves(vmm: roam_tests::Vmm, tag: &str) {
    let mut guest = start(vmm, "std-echo", tag, ECHO_READY);
    let client = |p: &str| guest.client(p);
    let console = || guest.vm.output();
    ping(client, 100, console);
    let one = netprobe(
        client,
        &["tcp-echo", &echo_addr(), "1048576", "20261207"],
        console,
    );
    assert!(one.contains("1048576 bytes identical"), "{one}");
    say(&format!("std-echo under {}: {}", vmm.key(), one.trim()));

    // Four connections open at once: a server with one thread would serve the first to
    // its end and leave the others unanswered; netprobe fails a step after 10 s.
    let clients: Vec<_> = (0..4u64)
        .map(|k| {
            let mut cmd = guest.client(env!("CARGO_BIN_EXE_netprobe"));
            cmd.args(["tcp-echo", &echo_addr(), "262144", &(100 + k).to_string()]);
            std::thread::spawn(move || proc::watch(&mut cmd, "", Duration::from_secs(120)))
        })
        .collect();
    for (k, c) in clients.into_iter().enumerate() {
        let run = c.join().expect("client thread").expect("netprobe runs");
        assert!(
            run.status.success() && run.stdout.contains("262144 bytes identical"),
            "concurrent client {k} under {} ({}): {}{}\n--- guest console ---\n{}",
            vmm.key(),
            run.status,
            run.stdout,
            run.stderr,
            guest.vm.output()
        );
    }
    let udp = netprobe(client, &["udp-echo", &echo_addr(), "500", "9"], console);
    assert!(udp.contains("500 datagrams"), "{udp}");
    assert!(guest.vm.running(), "the VMM died:\n{}", guest.vm.output());
}

#[test]
fn std_echo_serves_tcp_and_udp_on_host_vmm() {
    if kvm_present("std_echo_serves_tcp_and_udp_on_host_vmm") {
        std_echo_serves(roam_tests::Vmm::HostVmm, "se");
    }
}

/// The same ELF on stock QEMU microvm, its NIC QEMU's virtio-net-device (virtio-mmio).
#[test]
fn std_echo_serves_tcp_and_udp_on_qemu_microvm() {
    if kvm_present("std_echo_serves_tcp_and_udp_on_qemu_microvm") {
        std_echo_serves(roam_tests::Vmm::QemuMicrovm, "sq");
    }
}

/// `curl` with `args`; its stdout.
fn curl(client: impl Fn(&str) -> Command, args: &[&str], console: impl Fn() -> String) -> String {
    let mut cmd = client("curl");
    cmd.args(["-sS", "--max-time", "60"]).args(args);
    run_ok(cmd, console)
}

/// std-http under `vmm`: the page byte for byte, the counter over one keep-alive
/// connection (curl reuses it for the three URLs: one connect), 404 for anything else.
fn std_http_serves(vmm: roam_tests::Vmm, tag: &str) {
    let guest = start(vmm, "std-http", tag, HTTP_READY);
    let client = |p: &str| guest.client(p);
    let console = || guest.vm.output();
    let page = curl(client, &[&http_url("/")], console);
    assert_eq!(page, HTTP_PAGE, "GET / under {}", vmm.key());
    let counted = curl(
        client,
        &[
            "-w",
            "connects %{num_connects}\\n",
            &http_url("/count"),
            &http_url("/count"),
            &http_url("/count"),
        ],
        console,
    );
    assert_eq!(
        counted,
        "count 1\nconnects 1\ncount 2\nconnects 0\ncount 3\nconnects 0\n",
        "three GET /count over one connection under {}",
        vmm.key()
    );
    let missing = curl(
        client,
        &["-o", "/dev/null", "-w", "%{http_code}", &http_url("/nope")],
        console,
    );
    assert_eq!(missing, "404", "GET /nope under {}", vmm.key());
    say(&format!(
        "std-http under {}: page, 3 counts over one connection, 404",
        vmm.key()
    ));
}

#[test]
fn std_http_serves_curl_on_host_vmm() {
    if kvm_present("std_http_serves_curl_on_host_vmm") {
        std_http_serves(roam_tests::Vmm::HostVmm, "sh");
    }
}

/// The same ELF on stock QEMU microvm (virtio-mmio).
#[test]
fn std_http_serves_curl_on_qemu_microvm() {
    if kvm_present("std_http_serves_curl_on_qemu_microvm") {
        std_http_serves(roam_tests::Vmm::QemuMicrovm, "sp");
    }
}

/// A std program under host-vmm on a two-host topology, ready to move. Fields drop in
/// order: the guest's VMMs, then the topology.
struct Moving {
    guest: HostVmmGuest,
    hosts: TwoHosts,
}

impl Moving {
    fn start(name: &str, tag: &str, ready: &str) -> Moving {
        roam_tests::host_vmm();
        let hosts = TwoHosts::up(tag).expect("two-host topology");
        let guest = HostVmmGuest::boot(&hosts, &image(name), MEM_MIB, "")
            .unwrap_or_else(|e| panic!("booting {name} under host-vmm: {e:#}"));
        let m = Moving { guest, hosts };
        let deadline = Instant::now() + READY;
        while !m.guest.console().contains(ready) {
            assert!(
                Instant::now() < deadline,
                "{name} never printed `{ready}`:\n{}",
                m.guest.console_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m.settle();
        m
    }

    fn settle(&self) {
        if let Err(e) = self.guest.wait_settled(SETTLE) {
            panic!("settling: {e:#}\n{}", self.guest.console_tail(60));
        }
    }

    fn client(&self, program: &str) -> Command {
        self.hosts.client(program)
    }

    /// A client command run in a thread beside the test, bounded by `bound`.
    fn beside(
        &self,
        mut cmd: Command,
        bound: Duration,
    ) -> std::thread::JoinHandle<anyhow::Result<Watched>> {
        std::thread::spawn(move || proc::watch(&mut cmd, "", bound))
    }

    /// The moves of [`MOVES`], each from a settled guest, 300 ms apart; `after` runs after
    /// each, once the guest settled. Returns one `mode pause` line per move.
    fn move_around(&mut self, mut after: impl FnMut(&Moving, usize)) -> Vec<String> {
        let mut pauses = Vec::new();
        for (k, mode) in MOVES.into_iter().enumerate() {
            self.settle();
            std::thread::sleep(Duration::from_millis(300));
            let from = self.guest.side();
            let moved = self
                .guest
                .move_to_other(&self.hosts, mode, None)
                .unwrap_or_else(|e| {
                    panic!(
                        "move {k} ({}): {e:#}\n{}",
                        mode.key(),
                        self.guest.console_tail(60)
                    )
                });
            assert_eq!(self.guest.side(), from.other());
            let s = &moved.summary;
            match mode {
                Mode::ZeroCopy => assert_eq!(s.memory_bytes_copied, 0, "{s:?}"),
                Mode::PreCopy => assert!(s.memory_bytes_copied > 0, "{s:?}"),
            }
            roam_tests::assert_pause(&format!("move {k} ({})", mode.key()), s.pause_ms);
            pauses.push(format!("{} {:.2}", mode.key(), s.pause_ms));
            // As tests/std.rs: the checks start from the settled guest (a ping sent while
            // the network learns the new port may be lost, and that is not what they test).
            self.settle();
            after(self, k);
        }
        pauses
    }

    fn console(&self) -> impl Fn() -> String + '_ {
        || self.guest.console_tail(60)
    }
}

/// std-echo moves four times (pre-copy, zero-copy, back and forth) while two clients keep
/// one TCP connection each busy (every chunk read back and compared): both connections
/// survive every move with every byte intact, and after each move ping and UDP echo answer.
#[test]
fn std_echo_moves_with_its_threads_and_connections() {
    if !kvm_present("std_echo_moves_with_its_threads_and_connections") {
        return;
    }
    // The sessions run until told to stop once the moves are done (a busy machine makes the
    // moves slow); SESSION_SECS only bounds them.
    const SESSION_SECS: u64 = 180;
    let stop = roam_tests::TempFile::reserve("sem-stop");
    let mut m = Moving::start("std-echo", "sem", ECHO_READY);
    let sessions: Vec<_> = (0..2u64)
        .map(|k| {
            let mut cmd = m.client(env!("CARGO_BIN_EXE_netprobe"));
            cmd.args([
                "tcp-echo-for",
                &echo_addr(),
                &SESSION_SECS.to_string(),
                &(7 + k).to_string(),
                &stop.path().display().to_string(),
            ]);
            m.beside(cmd, Duration::from_secs(SESSION_SECS + 60))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let pauses = m.move_around(|m, k| {
        let udp = netprobe(
            |p| m.client(p),
            &["udp-echo", &echo_addr(), "50", &k.to_string()],
            m.console(),
        );
        assert!(udp.contains("50 datagrams"), "{udp}");
        ping(|p| m.client(p), 10, m.console());
    });
    for (k, s) in sessions.iter().enumerate() {
        assert!(
            !s.is_finished(),
            "echo session {k} ended before the moves were done"
        );
    }
    stop.write(b"stop");
    for (k, s) in sessions.into_iter().enumerate() {
        let run = s
            .join()
            .expect("session thread")
            .expect("netprobe tcp-echo-for runs");
        assert!(
            run.status.success() && run.stdout.contains("every byte identical"),
            "echo session {k} ({}): {}{}\n{}",
            run.status,
            run.stdout,
            run.stderr,
            m.guest.console_tail(60)
        );
        say(&format!(
            "std-echo session {k} through {} moves (pause ms: {}): {}",
            pauses.len(),
            pauses.join(", "),
            run.stdout.trim()
        ));
        assert_gap("a std-echo session", kv_longest_wait_ms(&run.stdout));
    }
}

/// std-http moves four times while one `curl` asks `GET /count` 20 times a second over one
/// keep-alive connection: every answer arrives in order (count 1, 2, ...: the counter in
/// guest memory survives the moves and no request is lost or repeated) and curl connected
/// once. A fresh `curl` afterwards gets the page and the next count.
#[test]
fn std_http_moves_with_its_threads_and_keep_alive_client() {
    if !kvm_present("std_http_moves_with_its_threads_and_keep_alive_client") {
        return;
    }
    // 20 a second for 15 s: longer than the four moves take here (about 5 s).
    const REQUESTS: u32 = 300;
    let mut m = Moving::start("std-http", "shm", HTTP_READY);
    let mut cmd = m.client("curl");
    cmd.args(["-sS", "--max-time", "120", "--rate", "20/s"])
        .args(["-w", "connects %{num_connects}\\n"])
        .arg(http_url(&format!("/count?n=[1-{REQUESTS}]")));
    let session = m.beside(cmd, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(1));
    let pauses = m.move_around(|m, _| ping(|p| m.client(p), 10, m.console()));
    assert!(
        !session.is_finished(),
        "the curl session ended before the moves were done"
    );
    let run = session
        .join()
        .expect("curl thread")
        .unwrap_or_else(|e| panic!("curl: {e:#}\n{}", m.guest.console_tail(60)));
    assert!(
        run.status.success(),
        "curl ({}): {}{}\n{}",
        run.status,
        run.stdout,
        run.stderr,
        m.guest.console_tail(60)
    );
    let mut expected = String::new();
    for n in 1..=REQUESTS {
        expected.push_str(&format!(
            "count {n}\nconnects {}\n",
            if n == 1 { 1 } else { 0 }
        ));
    }
    assert!(
        run.stdout == expected,
        "curl's {REQUESTS} counts over one connection through the moves: got\n{}",
        run.stdout
    );
    let page = curl(|p| m.client(p), &[&http_url("/")], m.console());
    assert_eq!(page, HTTP_PAGE);
    let next = curl(|p| m.client(p), &[&http_url("/count")], m.console());
    assert_eq!(next, format!("count {}\n", REQUESTS + 1));
    say(&format!(
        "std-http through {} moves (pause ms: {}): {REQUESTS} counts in order over one keep-alive connection",
        pauses.len(),
        pauses.join(", ")
    ));
}
