//! The `host-vmm` binary end to end: exit statuses, stdout, one-line errors. Bad input needs
//! no KVM; the boots use tiny hand-assembled guests and need `/dev/kvm` (`xtask::skip`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const HOST_VMM: &str = env!("CARGO_BIN_EXE_host-vmm");

/// A 64-bit ELF with `code` loaded and entered at 1 MiB.
fn tiny_guest(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x10_0000;
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    for v in [BASE, 64, 0] {
        b.extend_from_slice(&v.to_le_bytes()); // e_entry, e_phoff, e_shoff
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes());
    let len = code.len() as u64;
    for v in [120, BASE, BASE, len, len, 0x1000] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(code);
    b
}

/// Writes "H\n" to COM1, then status 42 to port 0xF4.
const HELLO: &[u8] = &[
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xB0, 0x48, // mov al, 'H'
    0xEE, // out dx, al
    0xB0, 0x0A, // mov al, '\n'
    0xEE, // out dx, al
    0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
    0xB8, 0x2A, 0x00, 0x00, 0x00, // mov eax, 42
    0xEF, // out dx, eax
    0xF4, // hlt (not reached)
];

/// Writes 256 KiB to COM1 (64 `rep outsb` of 4 KiB of its own memory), then exits 42
/// through port 0xF4 (`tail`: [`EXIT_42`]) or idles ([`IDLE`]).
fn flood_then(tail: &[u8]) -> Vec<u8> {
    let mut code = vec![
        0xBA, 0xF8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xBB, 0x40, 0x00, 0x00, 0x00, // mov ebx, 64
        // loop:
        0xBE, 0x00, 0x00, 0x10, 0x00, // mov esi, 0x100000
        0xB9, 0x00, 0x10, 0x00, 0x00, // mov ecx, 4096
        0xF3, 0x6E, // rep outsb
        0xFF, 0xCB, // dec ebx
        0x75, 0xF0, // jnz loop
    ];
    code.extend_from_slice(tail);
    code
}

/// Serial bytes [`flood_then`] writes.
const FLOOD_BYTES: u64 = 64 * 4096;

/// Status 42 to port 0xF4.
const EXIT_42: &[u8] = &[
    0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
    0xB8, 0x2A, 0x00, 0x00, 0x00, // mov eax, 42
    0xEF, // out dx, eax
    0xF4, // hlt (not reached)
];

/// `ud2` without an IDT: a triple fault.
const UD2: &[u8] = &[0x0F, 0x0B];

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("host-vmm-cli-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// For a test that needs KVM: fails without a usable /dev/kvm, or skips (counted) under
/// `cargo xtask test --no-kvm` (`xtask::skip`).
fn kvm_available(test: &str) -> bool {
    xtask::skip::kvm_or_skip(test)
}

fn host_vmm(args: &[&str]) -> Output {
    Command::new(HOST_VMM).args(args).output().unwrap()
}

/// Asserts host-vmm failed on its own (125) with one `host-vmm: error:` line containing `what`.
fn assert_one_line_error(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("host-vmm: error: "), "{stderr}");
    assert!(lines[0].contains(what), "{stderr}");
}

#[test]
fn bad_input_is_one_line_and_status_125() {
    assert_one_line_error(
        &host_vmm(&["run", "/nonexistent/image.elf"]),
        "/nonexistent/image.elf",
    );
    let text = TempFile::new("text", b"not an elf\n");
    let path = text.0.to_str().unwrap();
    assert_one_line_error(&host_vmm(&["run", path]), "not an ELF file");
    assert_one_line_error(&host_vmm(&["run", path, "--mem", "12Q"]), "--mem");
    assert_one_line_error(&host_vmm(&["run", path, "--mem", "-1M"]), "--mem");
    assert_one_line_error(&host_vmm(&["run", path, "--mem", "65M"]), "2 MiB");
    let long = "x".repeat(4096);
    let elf = TempFile::new("elf", &tiny_guest(HELLO));
    let path = elf.0.to_str().unwrap();
    assert_one_line_error(
        &host_vmm(&["run", path, "--cmdline", &long]),
        "command line",
    );
    assert_one_line_error(&host_vmm(&["run", path, "--bogus"]), "--bogus");
    assert_one_line_error(&host_vmm(&[]), "host-vmm run");
}

#[test]
fn help_documents_every_flag() {
    let out = host_vmm(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["<IMAGE>", "--mem <SIZE>", "--cmdline <STR>", "128M"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn the_guest_status_is_the_exit_status() {
    if !kvm_available("the_guest_status_is_the_exit_status") {
        return;
    }
    let elf = TempFile::new("hello", &tiny_guest(HELLO));
    let out = host_vmm(&["run", elf.0.to_str().unwrap(), "--mem", "16M"]);
    assert_eq!(out.stdout, b"H\n");
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn a_triple_fault_exits_124_with_the_rip() {
    if !kvm_available("a_triple_fault_exits_124_with_the_rip") {
        return;
    }
    let elf = TempFile::new("ud2", &tiny_guest(UD2));
    let out = host_vmm(&["run", elf.0.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("host-vmm: error: "), "{stderr}");
    assert!(
        stderr.contains("triple fault") && stderr.contains("RIP 0x"),
        "{stderr}"
    );
}

#[test]
fn a_closed_stdout_does_not_stop_the_guest() {
    if !kvm_available("a_closed_stdout_does_not_stop_the_guest") {
        return;
    }
    let elf = TempFile::new("epipe", &tiny_guest(HELLO));
    let mut child = Command::new(HOST_VMM)
        .args(["run", elf.0.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the guest prints
    let stderr = stderr_of(&mut child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Not a pass/fail check (timings vary): prints spawn → first guest byte for the record.
#[test]
fn report_spawn_to_first_guest_byte() {
    if !kvm_available("report_spawn_to_first_guest_byte") {
        return;
    }
    let elf = TempFile::new("timing", &tiny_guest(HELLO));
    let mut best = None;
    for _ in 0..5 {
        let start = Instant::now();
        let mut child = Command::new(HOST_VMM)
            .args(["run", elf.0.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut byte = [0u8];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut byte)
            .unwrap();
        let first = start.elapsed();
        assert_eq!(child.wait().unwrap().code(), Some(42));
        best = Some(best.map_or(first, |b: std::time::Duration| b.min(first)));
    }
    let _ = writeln!(
        std::io::stderr(),
        "host-vmm: spawn -> first guest byte (tiny guest, best of 5): {:?}",
        best.unwrap()
    );
}

/// Asserts `host-vmm ctl` failed (status 1) with one `host-vmm: error:` line containing `what`.
fn assert_ctl_error(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("host-vmm: error: "), "{stderr}");
    assert!(lines[0].contains(what), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// A socket path unique to this test process.
fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("host-vmm-cli-{tag}-{}.sock", std::process::id()))
}

#[test]
fn ctl_bad_input_is_one_line_and_status_1() {
    let missing = socket_path("missing");
    let missing = missing.to_str().unwrap();
    assert_ctl_error(
        &host_vmm(&["ctl", missing, "status"]),
        "is host-vmm running with --api-socket",
    );
    assert_ctl_error(
        &host_vmm(&["ctl", missing, "switch", "eth0"]),
        "unknown command `switch eth0`",
    );
    assert_ctl_error(&host_vmm(&["ctl", missing, "frob"]), "host-vmm ctl --help");
    assert_ctl_error(&host_vmm(&["ctl", missing]), "<COMMAND>");
    assert_ctl_error(&host_vmm(&["ctl"]), "<PATH>");
    // A file that is not a socket.
    let file = TempFile::new("notsock", b"");
    assert_ctl_error(
        &host_vmm(&["ctl", file.0.to_str().unwrap(), "status"]),
        "is not a socket",
    );
}

#[test]
fn ctl_help_explains_every_command() {
    let out = host_vmm(&["ctl", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "<PATH>",
        "switch vf",
        "switch virtio",
        "status",
        "active=vf|virtio|none",
        "vf present=yes|no link=up|down rx=N tx=N rx_errors=N tx_dropped=N",
        "switches=N",
        "vf link up",
        "vf link down",
        "vf remove",
        "vf add",
        "--vf",
        "5 s",
    ] {
        assert!(help.contains(text), "{text}: {help}");
    }
    let out = host_vmm(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--api-socket <PATH>"));
}

/// Waits (up to 10 s) until a host-vmm just started has created its socket `sock`.
fn wait_for_socket(sock: &std::path::Path) {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket at {}", sock.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// All `child` writes to its piped stderr (read to the end, which comes when it exits).
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// `cli; hlt; jmp back`: a guest that runs until killed.
const IDLE: &[u8] = &[0xFA, 0xF4, 0xEB, 0xFD];

#[test]
fn the_control_socket_lives_as_long_as_host_vmm() {
    if !kvm_available("the_control_socket_lives_as_long_as_host_vmm") {
        return;
    }
    let sock = socket_path("life");
    let _ = std::fs::remove_file(&sock);
    let path = sock.to_str().unwrap();
    let idle = TempFile::new("idle", &tiny_guest(IDLE));
    let mut child = Command::new(HOST_VMM)
        .args(["run", idle.0.to_str().unwrap(), "--control", path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    // Served: the VF commands answer at once (no VF here), a second host-vmm is refused.
    assert_ctl_error(
        &host_vmm(&["ctl", path, "vf", "link", "down"]),
        "this VM has no VF (start it with --vf)",
    );
    let hello = TempFile::new("hello-ctl", &tiny_guest(HELLO));
    let hello = hello.0.to_str().unwrap();
    assert_one_line_error(
        &host_vmm(&["run", hello, "--control", path]),
        "another host-vmm is listening there",
    );
    // Killed, it leaves a stale socket, which the next host-vmm replaces and removes.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sock.exists(), "SIGKILL leaves the socket");
    let out = host_vmm(&["run", hello, "--control", path]);
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    assert!(!sock.exists(), "removed on exit");
    assert_ctl_error(&host_vmm(&["ctl", path, "status"]), "no API socket at");
}

/// Whether this test runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn the_control_socket_is_the_operators_only() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let sock = socket_path("owner");
    let _ = std::fs::remove_file(&sock);
    let path = sock.to_str().unwrap();
    // The loosest umask: the socket is 0600 anyway.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "umask 000; exec \"$0\" --api-socket \"$1\"",
            HOST_VMM,
            path,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(&sock);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o} under umask 000");
    // The operator is served (the answer is the controller's: there is no VM).
    assert_ctl_error(&host_vmm(&["ctl", path, "info"]), "no VM");
    if is_root() {
        // `nobody` runs a copy: the checkout may be private (a clone into `mktemp -d`).
        let public = xtask::public_dir::PublicDir::new("ctl-owner");
        let binary = public.copy(std::path::Path::new(HOST_VMM));
        let as_nobody = || {
            Command::new(&binary)
                .args(["ctl", path, "info"])
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap()
        };
        // Another user cannot even open the file...
        assert_ctl_error(&as_nobody(), "permission denied on the API socket");
        // ...and if the file is opened up, the peer check closes its connection unserved.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = as_nobody();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("no VM"),
            "served: {out:?}"
        );
        // The operator still is.
        assert_ctl_error(&host_vmm(&["ctl", path, "info"]), "no VM");
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "the_control_socket_is_the_operators_only: another user's connection not tried \
             (needs root to switch users)"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = stderr_of(&mut child);
    let _ = std::fs::remove_file(&sock);
    if is_root() {
        assert!(
            log.contains("refused a connection from uid 65534"),
            "not logged: {log}"
        );
    }
}

/// Waits up to `bound` for `child` to exit; kills it and fails past that.
fn exit_within(child: &mut std::process::Child, bound: std::time::Duration, what: &str) -> i32 {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: host-vmm did not exit within {bound:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_stdout_nobody_reads_never_stops_the_guest() {
    if !kvm_available("a_stdout_nobody_reads_never_stops_the_guest") {
        return;
    }
    let elf = TempFile::new("flood-exit", &tiny_guest(&flood_then(EXIT_42)));
    // stdout is a pipe kept open and never read: it fills after 64 KiB.
    let mut child = Command::new(HOST_VMM)
        .args(["run", elf.0.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = exit_within(
        &mut child,
        std::time::Duration::from_secs(60),
        "flood then exit",
    );
    let stderr = stderr_of(&mut child);
    assert_eq!(code, 42, "{stderr}");
    assert!(
        stderr.contains("bytes of guest output were dropped: stdout did not keep up"),
        "the drop is logged at exit: {stderr}"
    );
    drop(child.stdout.take());

    // Still running, it answers its API, which counts the drop.
    let sock = socket_path("flood");
    let _ = std::fs::remove_file(&sock);
    let path = sock.to_str().unwrap();
    let idle = TempFile::new("flood-idle", &tiny_guest(&flood_then(IDLE)));
    let mut child = Command::new(HOST_VMM)
        .args(["run", idle.0.to_str().unwrap(), "--control", path])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let counters = loop {
        let out = host_vmm(&["ctl", path, "counters"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["serial"]["out_bytes"].as_u64() == Some(FLOOD_BYTES) {
                break v;
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the guest never finished its output: {out:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let serial = &counters["serial"];
    let (written, dropped) = (
        serial["out_written"].as_u64().unwrap(),
        serial["out_dropped"].as_u64().unwrap(),
    );
    // Only the pipe (64 KiB) took bytes, the buffer (64 KiB) and the chunk being written
    // (16 KiB) hold some; the rest was dropped.
    assert!(written <= 64 * 1024, "{counters}");
    assert!(dropped >= FLOOD_BYTES - 144 * 1024, "{counters}");
}
