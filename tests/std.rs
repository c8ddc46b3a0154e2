//! Std programs: an ordinary Rust program built with std (`cargo xtask image`, ARCHITECTURE.md
//! "Std programs") boots under host-vmm and stock QEMU microvm from the same ELF, gets its
//! arguments and environment from the command line, runs threads (mutexes, channels,
//! condition variables, preemption), and ends with its exit status; a panic prints its
//! message and ends the VM with a non-zero status. A thread spinning forever starves
//! neither the network nor the main thread, and a threaded program moves with its threads.

use roam_tests::{GuestRun, Vmm, boot, image, kvm_present};
use std::path::PathBuf;
use std::time::Duration;
use xtask::bench::migrate::Mode;
use xtask::migrate::HostVmmGuest;
use xtask::net::{self, NetGuest, TwoHosts};

const APP_READY: &str = "Hello from std on Roam";
/// What std-hello checks for (images/std-hello/src/main.rs).
const CMDLINE: &str = "env=ROAM_GREETING=hi -- alpha beta";
/// A std program's panic: std prints the message, then aborts (docs/boot-abi.md §6).
const STATUS_PANIC: i32 = 101;

fn transcript(run: &GuestRun) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        run.status, run.watched.stdout, run.watched.stderr
    )
}

fn std_hello_passes(vmm: Vmm) {
    let run = boot(vmm, "std-hello", CMDLINE, APP_READY);
    assert_eq!(
        run.status,
        0,
        "std-hello failed under {}:\n{}",
        vmm.key(),
        transcript(&run)
    );
    let out = &run.watched.stdout;
    assert!(
        out.lines().next() == Some(APP_READY)
            && out.contains("std-hello: all checks passed")
            && !out.contains("FAILED"),
        "std-hello's output under {}:\n{}",
        vmm.key(),
        transcript(&run)
    );
    // Each check by name, so a silently skipped one fails here.
    for check in [
        "arguments after the program name are [alpha, beta]",
        "ROAM_GREETING=hi in the environment",
        "thread::sleep(20ms) took",
        "Instant never goes back",
        "stdout's write_vectored wrote both buffers",
        "two RandomStates hash differently",
        "a thread-local starts at its initial value",
        "4 threads ran, sent over a channel and joined",
        "4 threads x 500 increments of one Mutex: 2000",
        "each thread's thread-local starts from the template",
        "Instant::now in other threads is not before the spawn",
        "thread-local destructors ran once per thread: 4",
        "a Condvar is notified by a thread",
        "an unnotified Condvar wait times out",
        "a parked thread is unparked",
        "a OnceLock is initialised once by 4 racing threads",
        "an RwLock is read by 3 threads at once, then written",
        "50 round trips over two rendezvous channels",
        "main sleeps 20ms and wakes while a thread spins without yielding",
        "a sleeping thread wakes while main spins without yielding",
        "forward copies stay right while another thread is preempted in backward ones",
        "a thread with a 1 TiB stack fails with an io::Error",
        "available_parallelism is 1",
        "reading a file fails cleanly",
    ] {
        assert!(
            out.contains(&format!("std-hello: ok: {check}")),
            "no `ok: {check}` under {}:\n{}",
            vmm.key(),
            transcript(&run)
        );
    }
}

#[test]
fn std_hello_passes_its_checks_on_host_vmm() {
    if kvm_present("std_hello_passes_its_checks_on_host_vmm") {
        std_hello_passes(Vmm::HostVmm);
    }
}

#[test]
fn std_hello_passes_its_checks_on_qemu_microvm() {
    if kvm_present("std_hello_passes_its_checks_on_qemu_microvm") {
        std_hello_passes(Vmm::QemuMicrovm);
    }
}

/// The checks can fail: without its arguments and environment std-hello says so and exits 1.
#[test]
fn std_hello_exits_1_without_its_arguments() {
    if !kvm_present("std_hello_exits_1_without_its_arguments") {
        return;
    }
    let run = boot(Vmm::HostVmm, "std-hello", "", APP_READY);
    assert_eq!(run.status, 1, "{}", transcript(&run));
    assert!(
        run.watched
            .stdout
            .contains("std-hello: FAILED: arguments after the program name")
            && run
                .watched
                .stdout
                .contains("std-hello: FAILED: ROAM_GREETING=hi"),
        "{}",
        transcript(&run)
    );
}

fn panic_exits_nonzero_with_its_message(vmm: Vmm) {
    let run = boot(vmm, "std-hello", "-- panic", APP_READY);
    assert_eq!(
        run.status,
        STATUS_PANIC,
        "a std panic under {}:\n{}",
        vmm.key(),
        transcript(&run)
    );
    let out = &run.watched.stdout;
    assert!(
        out.contains("thread 'main'")
            && out.contains("panicked at images/std-hello/src/main.rs")
            && out.contains("std-hello: deliberate panic (argument `panic`)"),
        "the panic message under {}:\n{}",
        vmm.key(),
        transcript(&run)
    );
}

#[test]
fn std_panic_exits_101_with_its_message_on_host_vmm() {
    if kvm_present("std_panic_exits_101_with_its_message_on_host_vmm") {
        panic_exits_nonzero_with_its_message(Vmm::HostVmm);
    }
}

#[test]
fn std_panic_exits_101_with_its_message_on_qemu_microvm() {
    if kvm_present("std_panic_exits_101_with_its_message_on_qemu_microvm") {
        panic_exits_nonzero_with_its_message(Vmm::QemuMicrovm);
    }
}

/// `std-hello spin`: one thread spins forever without yielding. The guest still answers
/// every ping (the idle thread gets the CPU on the NIC's interrupts and the timer's ticks),
/// a thread blocked in `recv_from` echoes 200 UDP datagrams, and the main thread's 200 ms
/// heartbeat goes on while the spinner keeps counting.
fn spinning_thread_starves_nothing(vmm: Vmm) {
    let mut guest = NetGuest::start(vmm, &image("std-hello"), "spin", "-- spin")
        .unwrap_or_else(|e| panic!("starting std-hello spin under {}: {e:#}", vmm.key()));
    guest
        .vm
        .wait_for("std-hello: main thread beat 1,", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("no heartbeat while a thread spins: {e:#}"));
    let before = last_beat(&guest.vm.output());

    let out = guest
        .client("ping")
        .args(roam_tests::ping_args(50, 0.05))
        .arg(net::GUEST_IP)
        .output()
        .expect("ping runs");
    let text = String::from_utf8_lossy(&out.stdout);
    roam_tests::assert_pings_answered(
        &format!(
            "ping while a thread spins under {}\n--- guest console ---\n{}",
            vmm.key(),
            guest.vm.output()
        ),
        &text,
        50,
    );
    if let Some(rtt) = text.lines().find(|l| l.starts_with("rtt ")) {
        roam_tests::say(&format!(
            "ping while a thread spins under {}: {rtt}",
            vmm.key()
        ));
    }
    // A thread blocked in recv_from is woken for each datagram despite the spinner
    // (netprobe fails after more than 5 resends).
    let echo = guest
        .client(env!("CARGO_BIN_EXE_netprobe"))
        .args(["udp-echo", &format!("{}:7", net::GUEST_IP), "200", "7"])
        .output()
        .expect("netprobe runs");
    let summary = String::from_utf8_lossy(&echo.stdout);
    assert!(
        echo.status.success(),
        "UDP echo while a thread spins under {}:\n{summary}{}\n--- guest console ---\n{}",
        vmm.key(),
        String::from_utf8_lossy(&echo.stderr),
        guest.vm.output()
    );
    roam_tests::say(&format!(
        "UDP echo while a thread spins under {}: {}",
        vmm.key(),
        summary.trim()
    ));
    let after = last_beat(&guest.vm.output());
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "the heartbeat (beat, spinner count) went from {before:?} to {after:?} over 50 pings and 200 datagrams under {}:\n{}",
        vmm.key(),
        guest.vm.output()
    );
    assert!(guest.vm.running(), "the VMM died:\n{}", guest.vm.output());
}

#[test]
fn a_spinning_thread_starves_neither_ping_nor_the_main_thread_on_host_vmm() {
    if kvm_present("a_spinning_thread_starves_neither_ping_nor_the_main_thread_on_host_vmm") {
        spinning_thread_starves_nothing(Vmm::HostVmm);
    }
}

/// The same on stock QEMU microvm (its virtio-net-device on virtio-mmio).
#[test]
fn a_spinning_thread_starves_neither_ping_nor_the_main_thread_on_qemu_microvm() {
    if kvm_present("a_spinning_thread_starves_neither_ping_nor_the_main_thread_on_qemu_microvm") {
        spinning_thread_starves_nothing(Vmm::QemuMicrovm);
    }
}

/// A std program's threads move with it: `std-hello spin` (a thread spinning, one blocked
/// in `recv_from`, the main thread sleeping between heartbeats) moves by pre-copy and
/// zero-copy, back and forth, and after each move still echoes UDP, answers ping, beats and
/// spins.
#[test]
fn a_threaded_std_program_moves_with_all_its_threads() {
    if !kvm_present("a_threaded_std_program_moves_with_all_its_threads") {
        return;
    }
    roam_tests::host_vmm();
    let hosts = TwoHosts::up("stm").expect("two-host topology");
    let mut guest = HostVmmGuest::boot(&hosts, &image("std-hello"), 64, "-- spin")
        .unwrap_or_else(|e| panic!("booting std-hello spin: {e:#}"));
    let settle = Duration::from_secs(30);
    guest
        .wait_settled(settle)
        .unwrap_or_else(|e| panic!("after boot: {e:#}\n{}", guest.console_tail(40)));
    let mut before = last_beat(&guest.console());
    for (k, mode) in [Mode::PreCopy, Mode::ZeroCopy, Mode::PreCopy, Mode::ZeroCopy]
        .into_iter()
        .enumerate()
    {
        let moved = guest.move_to_other(&hosts, mode, None).unwrap_or_else(|e| {
            panic!(
                "move {k} ({}): {e:#}\n{}",
                mode.key(),
                guest.console_tail(40)
            )
        });
        guest
            .wait_settled(settle)
            .unwrap_or_else(|e| panic!("after move {k}: {e:#}\n{}", guest.console_tail(40)));
        let echo = hosts
            .client(env!("CARGO_BIN_EXE_netprobe"))
            .args([
                "udp-echo",
                &format!("{}:7", net::GUEST_IP),
                "50",
                &k.to_string(),
            ])
            .output()
            .expect("netprobe runs");
        assert!(
            echo.status.success(),
            "UDP echo after move {k} ({}):\n{}{}\n{}",
            mode.key(),
            String::from_utf8_lossy(&echo.stdout),
            String::from_utf8_lossy(&echo.stderr),
            guest.console_tail(40)
        );
        let ping = hosts
            .client("ping")
            .args(roam_tests::ping_args(10, 0.05))
            .arg(net::GUEST_IP)
            .output()
            .expect("ping runs");
        roam_tests::assert_pings_answered(
            &format!("ping after move {k} ({})", mode.key()),
            &String::from_utf8_lossy(&ping.stdout),
            10,
        );
        let after = last_beat(&guest.console());
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "heartbeat (beat, spinner count) {before:?} -> {after:?} around move {k} ({}):\n{}",
            mode.key(),
            guest.console_tail(40)
        );
        roam_tests::say(&format!(
            "std-hello spin move {k} {}: pause {:.2} ms, total {:.1} ms; heartbeat {after:?}",
            mode.key(),
            moved.summary.pause_ms,
            moved.summary.total_ms
        ));
        before = after;
    }
}

/// The last `main thread beat N, spinner at S` line's (N, S).
fn last_beat(console: &str) -> (u64, u64) {
    console
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("std-hello: main thread beat "))
        .find_map(|rest| {
            let (beat, spins) = rest.split_once(", spinner at ")?;
            Some((beat.parse().ok()?, spins.trim().parse().ok()?))
        })
        .unwrap_or((0, 0))
}

/// The kernel object std programs link exports the ABI and nothing else: any other global
/// symbol (`memcpy`, the allocator shims, the panic handler, `compiler_builtins`) could
/// clash with std's own copy or silently replace it.
#[test]
fn the_kernel_object_exports_only_the_abi() {
    let dir = xtask::target_dir().join("roam-kernel");
    let objects: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask image std-hello`", dir.display()))
        .flatten()
        .map(|e| e.path().join("roam-kernel.o"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(
        objects.len(),
        1,
        "one kernel object under {}",
        dir.display()
    );
    let symbols = roam_tests::run(
        std::process::Command::new("readelf")
            .arg("-sW")
            .arg(&objects[0]),
    );
    let (mut defined, mut undefined) = (Vec::new(), Vec::new());
    for fields in symbols
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        // Num: Value Size Type Bind Vis Ndx Name
        if let [_, _, _, _, bind, _, ndx, name] = fields[..]
            && (bind == "GLOBAL" || bind == "WEAK")
        {
            if ndx == "UND" {
                undefined.push(name);
            } else {
                defined.push(name);
            }
        }
    }
    assert!(
        defined.contains(&"sys_write") && defined.contains(&"roam_entry64"),
        "the ABI is missing: {defined:?}"
    );
    let foreign: Vec<_> = defined
        .iter()
        .filter(|s| !s.starts_with("sys_") && !s.starts_with("roam_"))
        .collect();
    assert!(
        foreign.is_empty(),
        "global symbols beyond the ABI: {foreign:?}"
    );
    let unexpected: Vec<_> = undefined
        .iter()
        .filter(|s| **s != "runtime_entry" && !s.starts_with("roam_") && !s.starts_with("__roam_"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the kernel needs symbols neither std nor link.ld provides: {unexpected:?}"
    );
}

/// A crate directory under the temp directory, removed when dropped.
struct TempCrate(PathBuf);

impl Drop for TempCrate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo xtask image --path DIR` builds a std program that lives outside the repository,
/// with its own workspace and nothing Roam-specific in it.
#[test]
fn a_std_program_outside_the_repository_builds_and_runs() {
    if !kvm_present("a_std_program_outside_the_repository_builds_and_runs") {
        return;
    }
    let dir = TempCrate(std::env::temp_dir().join(format!("roam-std-path-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("src")).expect("creating the crate");
    std::fs::write(
        dir.0.join("Cargo.toml"),
        "[package]\nname = \"roam-path-check\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )
    .expect("writing Cargo.toml");
    std::fs::write(
        dir.0.join("src/main.rs"),
        "fn main() {\n    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0);\n    println!(\"path-check: {} squared is {}\", n, n * n);\n    std::process::exit(if n == 12 { 7 } else { 1 });\n}\n",
    )
    .expect("writing main.rs");

    let name = xtask::stdimage::build(&dir.0.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("building {}: {e:#}", dir.0.display()));
    assert_eq!(name, "roam-path-check");
    let run = boot(Vmm::HostVmm, &name, "-- 12", "path-check:");
    assert!(
        run.status == 7 && run.watched.stdout.contains("path-check: 12 squared is 144"),
        "{}",
        transcript(&run)
    );
}
