//! A move that fails before the destination runs the guest leaves it running on the source
//! (issue 5, item 6), and `host-vmm receive` refuses an old, truncated or corrupt stream
//! (item 4).
//!
//! Rollback: a guest with the VF and virtio-net on one MAC runs on host 1 of a two-host test
//! network; each attempt goes through `migproxy` (tests/migproxy.rs) on host 1, which
//! forwards to a fresh `host-vmm receive` on host 2 and, at one phase (the first pass's
//! first batch, the first dirty pass, the STATE frame sent during the pause), cuts both
//! connections, corrupts the frame, or kills the destination. Every attempt must end with
//! `host-vmm ctl migrate` exiting 1 with the reason, the guest answering ping and `status`
//! back on the VF, and a TCP echo stream running through the whole attempt intact. After
//! the three phases a direct move to a fresh destination succeeds and the source exits 0.
//! One guest per fault kind; the tests take a lock so only one guest runs at a time (two
//! shared cores).
//!
//! Zero-copy moves are struck the same way (issue 11, item 7): migproxy sits between two Unix
//! sockets and passes the memfd on; the destination is killed or both streams cut at its
//! READY (memfd mapped, before the pause) and at the STATE frame (during the pause). Each
//! attempt rolls back as above, and afterwards no process but the source maps the guest's
//! memfd or holds a descriptor of it.
//!
//! Rejections: `host-vmm receive` fed hand-made frames (no source) answers FAILED when the
//! connection is still open and starts no guest. Before a Hello is accepted it logs the
//! problem and keeps waiting for the real source; after, it names the problem on stderr
//! and exits 125. Over TLS a stranger's certificate, garbage and a silent peer are dropped
//! (the silent one within the 10 s admission deadline) and a real move then succeeds on
//! the same receiver; a guest larger than `--max-mem` is refused before anything is
//! allocated and stays where it runs.

use migration_wire::{
    HEADER_LEN, Hello, Message, Mode, PAGE_SIZE, PROTOCOL_VERSION, Pages, STATE_VERSION,
    decode_frame, encode_frame_as, kind,
};
use roam_tests::{host_vmm, image, kvm_present, say};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xtask::ctl::{Control, Nic, Status};
use xtask::net::{GUEST_IP, GUEST_MAC, Nics, Side, TwoHosts};
use xtask::pingd::{self, PingLog, Pinger};
use xtask::proc::{self, Background};
use xtask::vm::{Boot, Vmm};

/// One guest at a time across this file's tests.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// Bound for the guest to settle (links up, back on the VF).
const REACT: Duration = Duration::from_secs(15);
/// Bound on one `host-vmm ctl migrate` (host-vmm's own bound is 30 s).
const MIGRATE_BOUND: Duration = Duration::from_secs(45);
/// Pings every 10 ms, as the move tests.
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// The downtime target asked for: tiny, so the source makes dirty passes.
const DOWNTIME_MS: &str = "1";
/// Bytes of the TCP echo stream that runs through each attempt (the emulated guest echoes
/// ~150 KB/s: several seconds, longer than an attempt).
const ECHO_BYTES: u64 = 1 << 20;
/// How long migproxy stops reading the source after its Hello in the dirty-pass case. Host 1's
/// TCP send buffers are made small (a per-namespace sysctl), so the source blocks in its
/// first pass meanwhile; the guest's traffic (virtio-net receive buffers, written by
/// host-vmm) dirties more pages than fit the 1 ms target, so a dirty pass follows.
const HOLD_MS: &str = "1500";

// ---------------------------------------------------------------------------------------
// Frames, made and read with the stream format's own crate (`migration_wire`).

/// `message`'s frame.
fn frame(message: &Message) -> Vec<u8> {
    message.encode().expect("a small message fits a frame")
}

/// A Hello: `protocol`, pre-copy, 128 MiB, one vCPU.
fn hello(protocol: u32) -> Vec<u8> {
    frame(&Message::Hello(Hello {
        protocol,
        ..Hello::new(Mode::PreCopy, 128 << 20, 1)
    }))
}

/// A PAGES frame of one page (frame number `pfn`) filled with `byte`.
fn one_page(pfn: u64, byte: u8) -> Vec<u8> {
    let pages = Pages::new(&[pfn], &[byte; PAGE_SIZE]).expect("one page is a valid batch");
    frame(&Message::Pages(pages))
}

/// The frames in `bytes` as (kind, payload); stops at the first incomplete or bad one.
fn frames_in(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok((kind, payload, used)) = decode_frame(bytes) {
        out.push((kind, payload.to_vec()));
        bytes = &bytes[used..];
    }
    out
}

// ---------------------------------------------------------------------------------------
// Item 4: the destination refuses bad streams.

/// A `host-vmm receive` on a Unix socket with no devices, started by this test.
struct Receiver {
    child: Child,
    path: std::path::PathBuf,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
    err_so_far: std::sync::Arc<Mutex<String>>,
}

impl Receiver {
    fn start(tag: &str) -> Receiver {
        let path = std::env::temp_dir().join(format!("roam-rx-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut child = Command::new(host_vmm())
            .arg("receive")
            .arg("--listen")
            .arg(format!("unix:{}", path.display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host-vmm receive");
        let mut stdout = child.stdout.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_so_far = std::sync::Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped");
        let sink = err_so_far.clone();
        let err = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
            sink.lock().map(|s| s.clone()).unwrap_or_default()
        });
        let mut rx = Receiver {
            child,
            path,
            out: Some(out),
            err: Some(err),
            err_so_far,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rx.stderr_now().contains("waiting for a guest") {
            if Instant::now() > deadline || !matches!(rx.child.try_wait(), Ok(None)) {
                panic!(
                    "host-vmm receive did not start listening:\n{}",
                    rx.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        rx
    }

    fn stderr_now(&self) -> String {
        self.err_so_far
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).expect("connecting to host-vmm receive");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// Waits (bounded) for the exit: its status code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s.code();
            }
            if Instant::now() > deadline {
                proc::kill(&mut self.child);
                panic!(
                    "host-vmm receive did not exit after refusing the stream:\n{}",
                    self.stderr_now()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        (status, out, err)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            proc::kill(&mut self.child);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One bad stream: what to send, whether to close our sending half after it, what the
/// destination must say, and whether it answers Accept first (the Hello was fine).
struct BadStream {
    name: &'static str,
    send: Vec<u8>,
    close_after: bool,
    accepted: bool,
    says: &'static [&'static str],
}

/// Feeds `case` to a fresh `host-vmm receive` and checks how it refuses it.
fn refuses(case: &BadStream) {
    let rx = Receiver::start(case.name);
    let started = Instant::now();
    let mut s = rx.connect();
    s.write_all(&case.send).expect("sending the stream");
    if case.close_after {
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let (status, stdout, stderr) = rx.finish();
    let took = started.elapsed();
    let frames = frames_in(&answer);
    let kinds: Vec<u16> = frames.iter().map(|f| f.0).collect();
    let context = format!(
        "{}: exit {status:?} after {took:?}, answered kinds {kinds:?}\n--- stderr ---\n{stderr}--- stdout ---\n{stdout}",
        case.name
    );
    assert_eq!(status, Some(125), "{context}");
    let error_line = stderr
        .lines()
        .find(|l| l.starts_with("host-vmm: error: "))
        .unwrap_or_else(|| panic!("no `host-vmm: error:` line; {context}"));
    for word in case.says {
        assert!(
            error_line.contains(word),
            "the error does not say `{word}`; {context}"
        );
    }
    let expected: &[u16] = if case.accepted {
        &[kind::ACCEPT, kind::FAILED]
    } else {
        &[kind::FAILED]
    };
    assert_eq!(kinds, expected, "{context}");
    let reason = String::from_utf8_lossy(&frames.last().expect("a frame").1).into_owned();
    for word in case.says {
        assert!(
            reason.contains(word),
            "the FAILED frame's reason `{reason}` does not say `{word}`; {context}"
        );
    }
    // No guest ran: nothing on its console, no "running" in the log.
    assert!(stdout.is_empty(), "a guest printed something; {context}");
    assert!(
        !stderr.contains("; running"),
        "the destination ran the guest; {context}"
    );
    assert!(took < Duration::from_secs(10), "{context}");
    say(&format!(
        "refused `{}` in {:.0} ms: {}",
        case.name,
        took.as_secs_f64() * 1e3,
        error_line.trim_start_matches("host-vmm: error: ")
    ));
}

/// Feeds `case` to `rx`, which must answer FAILED, log why, and keep waiting.
fn refuses_and_waits(rx: &mut Receiver, case: &BadStream) {
    let started = Instant::now();
    let mut s = rx.connect();
    s.write_all(&case.send).expect("sending the stream");
    if case.close_after {
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let took = started.elapsed();
    let frames = frames_in(&answer);
    let kinds: Vec<u16> = frames.iter().map(|f| f.0).collect();
    let context = format!(
        "{}: after {took:?}, answered kinds {kinds:?}\n--- stderr ---\n{}",
        case.name,
        rx.stderr_now()
    );
    assert_eq!(kinds, [kind::FAILED], "{context}");
    let reason = String::from_utf8_lossy(&frames[0].1).into_owned();
    for word in case.says {
        assert!(
            reason.contains(word),
            "the FAILED frame's reason `{reason}` does not say `{word}`; {context}"
        );
    }
    // Logged (a warning naming the problem), and still waiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rx
        .stderr_now()
        .lines()
        .any(|l| l.contains("dropped") && case.says.iter().all(|w| l.contains(w)))
    {
        assert!(Instant::now() < deadline, "not logged; {context}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        matches!(rx.child.try_wait(), Ok(None)),
        "receive stopped waiting; {context}"
    );
    assert!(took < Duration::from_secs(10), "{context}");
    say(&format!(
        "answered `{}` in {:.0} ms and kept waiting: {reason}",
        case.name,
        took.as_secs_f64() * 1e3
    ));
}

#[test]
fn receive_refuses_old_truncated_and_corrupt_streams_before_the_hello_is_accepted() {
    let mut bad_crc = hello(PROTOCOL_VERSION);
    *bad_crc.last_mut().unwrap() ^= 0x01;
    let mut truncated = hello(PROTOCOL_VERSION);
    truncated.truncate(HEADER_LEN + 6);
    // Format version 0, with a CRC that matches: the version alone is the problem.
    let good = hello(PROTOCOL_VERSION);
    let (_, payload, _) = decode_frame(&good).expect("a good hello");
    let mut old = Vec::new();
    encode_frame_as(0, kind::HELLO, payload, &mut old).expect("a small frame");
    let cases = [
        BadStream {
            name: "format-version-0",
            send: old,
            close_after: false,
            accepted: false,
            says: &["format version 0 is not supported"],
        },
        BadStream {
            name: "truncated-hello",
            send: truncated,
            close_after: true,
            accepted: false,
            says: &["ended early"],
        },
        BadStream {
            name: "hello-bad-crc",
            send: bad_crc,
            close_after: false,
            accepted: false,
            says: &["checksum"],
        },
        BadStream {
            name: "not-a-migration-stream",
            send: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            close_after: false,
            accepted: false,
            says: &["not a Roam migration stream"],
        },
        BadStream {
            name: "done-before-hello",
            send: frame(&Message::Done),
            close_after: false,
            accepted: false,
            says: &["starts with Done instead of a hello"],
        },
        BadStream {
            name: "protocol-version-4",
            send: hello(PROTOCOL_VERSION + 1),
            close_after: false,
            accepted: false,
            says: &[
                "protocol version 4 is not supported",
                "speaks protocol version 3",
            ],
        },
    ];
    // One receiver for all: none of them is the source, so it waits on.
    let mut rx = Receiver::start("prehello");
    for case in &cases {
        refuses_and_waits(&mut rx, case);
    }
    let err = rx.stderr_now();
    assert!(!err.contains("; running"), "a guest ran:\n{err}");
}

#[test]
fn receive_refuses_a_corrupt_or_truncated_stream_after_the_hello_and_runs_nothing() {
    if !kvm_present(
        "receive_refuses_a_corrupt_or_truncated_stream_after_the_hello_and_runs_nothing",
    ) {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let good = hello(PROTOCOL_VERSION);
    let with = |rest: &[u8]| [good.as_slice(), rest].concat();
    let mut bad_page = one_page(0x100, 0xab);
    let mid = bad_page.len() / 2;
    bad_page[mid] ^= 0x20;
    let mut cut_page = one_page(0x100, 0xab);
    cut_page.truncate(2000);
    // The state envelope starts with its version: 0 here, then anything.
    let mut state_v0 = 0u32.to_le_bytes().to_vec();
    state_v0.extend_from_slice(&[0; 64]);
    let cases = [
        BadStream {
            name: "pages-bad-crc",
            send: with(&bad_page),
            close_after: false,
            accepted: true,
            says: &["checksum"],
        },
        BadStream {
            name: "pages-truncated",
            send: with(&cut_page),
            close_after: true,
            accepted: true,
            says: &["ended early"],
        },
        BadStream {
            name: "pages-outside-ram",
            send: with(&one_page(1 << 40, 0)),
            close_after: false,
            accepted: true,
            says: &["outside guest RAM"],
        },
        BadStream {
            name: "state-version-0",
            send: with(&[one_page(0x100, 1), frame(&Message::State(state_v0))].concat()),
            close_after: false,
            accepted: true,
            says: &["machine state version 0 is not supported"],
        },
        BadStream {
            name: "state-garbage",
            send: with(&frame(&Message::State(
                [&STATE_VERSION.to_le_bytes()[..], &[0xff, 0xff, 0xff]].concat(),
            ))),
            close_after: false,
            accepted: true,
            says: &["machine state does not decode"],
        },
        BadStream {
            name: "done-without-state",
            send: with(&frame(&Message::Done)),
            close_after: false,
            accepted: true,
            says: &["without the machine state"],
        },
        BadStream {
            name: "second-hello",
            send: with(&hello(PROTOCOL_VERSION)),
            close_after: false,
            accepted: true,
            says: &["unexpected Hello"],
        },
    ];
    for case in &cases {
        refuses(case);
    }
}

// ---------------------------------------------------------------------------------------
// Item 6: rollback.

/// Where in the move the fault strikes (migproxy's `--at`).
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The first pass's first batch: nothing of guest RAM has arrived yet.
    FirstPass,
    /// The first batch of the first dirty pass (the guest still runs).
    DirtyPass,
    /// The STATE frame: the source's vCPU is paused.
    Pause,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::FirstPass, Phase::DirtyPass, Phase::Pause];

    fn at(self) -> &'static str {
        match self {
            Phase::FirstPass => "pages:1",
            Phase::DirtyPass => "pass:2",
            Phase::Pause => "state",
        }
    }
}

/// What migproxy does there (`--fault`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Cut,
    Corrupt,
    Kill,
}

impl Fault {
    fn key(self) -> &'static str {
        match self {
            Fault::Cut => "cut",
            Fault::Corrupt => "corrupt",
            Fault::Kill => "kill",
        }
    }
}

/// The guest on host 1 of a two-host network, with its pinger.
struct Source {
    vm: Background,
    ctl: Control,
    net: TwoHosts,
    /// Every move's mutual TLS (migproxy ends it on both sides).
    certs: xtask::certs::CertDir,
}

impl Source {
    fn start(tag: &str) -> Source {
        host_vmm();
        let net = TwoHosts::up(tag).unwrap_or_else(|e| panic!("two-host network: {e:#}"));
        let ctl = Control::unique(tag);
        let img = image("netecho");
        let cmdline = format!("{} log=info", xtask::net::guest_cmdline());
        let boot = Boot {
            cmdline: &cmdline,
            net: Some(net.attach(Side::Source, Nics::Both)),
            control: Some(ctl.path()),
            ..Boot::new(&img)
        };
        let mut cmd = Vmm::HostVmm.command(&boot);
        cmd.env("RUST_LOG", "info");
        let mut vm = Background::spawn(&mut cmd).expect("starting the source host-vmm");
        net.wait_until_guest_answers(&mut vm, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the source guest does not answer: {e:#}"));
        // Small send buffers on host 1 (its namespace only): a migration stream that its
        // reader stops reading blocks the source instead of vanishing into the buffers.
        let out = net
            .exec_on(Side::Source, "sysctl")
            .args(["-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536"])
            .output()
            .expect("sysctl runs");
        assert!(
            out.status.success(),
            "sysctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let certs = xtask::certs::CertDir::for_tests().expect("a TLS directory");
        let src = Source {
            vm,
            ctl,
            net,
            certs,
        };
        src.on_vf("the source guest boots on the VF");
        src
    }

    fn console(&self) -> String {
        tail(&self.vm.output(), 60)
    }

    fn on_vf(&self, what: &str) -> (Status, Duration) {
        let t = Instant::now();
        let s = self
            .ctl
            .wait_for(what, REACT, |s| {
                s.active == Some(Nic::Vf) && s.vf.present && s.vf.link_up && s.virtio.link_up
            })
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n--- source ---\n{}", self.console()));
        (s, t.elapsed())
    }

    /// A fresh `host-vmm receive` on host 2 with the same devices, listening on `port`.
    fn destination(&self, port: u16, tag: &str) -> (Background, Control) {
        let listen = format!("tcp:{}:{port}", Side::Destination.migration_ip());
        self.destination_on(&listen, tag, &[])
    }

    /// [`Source::destination`] with `extra` flags for `receive`.
    fn destination_with(&self, port: u16, tag: &str, extra: &[&str]) -> (Background, Control) {
        let listen = format!("tcp:{}:{port}", Side::Destination.migration_ip());
        self.destination_on(&listen, tag, extra)
    }

    /// The same, listening on `listen` (`tcp:` with this source's TLS directory, or `unix:`).
    fn destination_on(&self, listen: &str, tag: &str, extra: &[&str]) -> (Background, Control) {
        let ctl = Control::unique(tag);
        let spec = |tap: &str| format!("tap={tap},mac={GUEST_MAC}");
        let mut cmd = self.net.exec_on(Side::Destination, host_vmm());
        cmd.arg("receive")
            .arg("--listen")
            .arg(listen)
            .args(self.tls_args(listen))
            .arg("--net")
            .arg(spec(xtask::net::TAP))
            .arg("--vf")
            .arg(spec(xtask::net::VF_TAP))
            .arg("--control")
            .arg(ctl.path())
            .args(extra)
            .env("RUST_LOG", "info");
        let mut dst = Background::spawn(&mut cmd).expect("starting host-vmm receive");
        dst.wait_for("waiting for a guest", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        (dst, ctl)
    }

    /// `host-vmm ctl SRC migrate TARGET --downtime-ms 1`, bounded.
    fn migrate(&self, target: &str) -> proc::Watched {
        self.migrate_with(target, &[])
    }

    /// The same with `extra` flags (`--zero-copy`).
    fn migrate_with(&self, target: &str, extra: &[&str]) -> proc::Watched {
        let mut cmd = Command::new(host_vmm());
        cmd.arg("ctl")
            .arg(self.ctl.path())
            .args(["migrate", target, "--downtime-ms", DOWNTIME_MS])
            .args(self.tls_args(target))
            .args(extra);
        proc::watch(&mut cmd, "", MIGRATE_BOUND).unwrap_or_else(|e| {
            panic!(
                "host-vmm ctl migrate: {e:#}\n--- source ---\n{}",
                self.console()
            )
        })
    }

    /// `--tls-dir` with this source's certificates for a `tcp:` address; nothing for `unix:`.
    fn tls_args(&self, address: &str) -> Vec<String> {
        if address.starts_with("tcp:") {
            vec!["--tls-dir".into(), self.certs.arg()]
        } else {
            Vec::new()
        }
    }

    /// `netprobe tcp-echo` of `bytes` from the client, in a thread.
    fn echo_stream(
        &self,
        bytes: u64,
        seed: u64,
    ) -> std::thread::JoinHandle<anyhow::Result<proc::Watched>> {
        let mut cmd = self.net.client(env!("CARGO_BIN_EXE_netprobe"));
        cmd.args([
            "tcp-echo",
            &format!("{GUEST_IP}:7"),
            &bytes.to_string(),
            &seed.to_string(),
        ]);
        std::thread::spawn(move || proc::watch(&mut cmd, "", Duration::from_secs(240)))
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one failed attempt measured.
struct Attempt {
    phase: Phase,
    /// migproxy's fault time (seconds since the epoch).
    fault_at: f64,
    /// From the fault until `ctl migrate` returned.
    noticed: f64,
    /// From the fault until `status` showed the guest back on the VF.
    back_on_vf: f64,
    /// When `ctl migrate` was started.
    started_at: f64,
    /// When `status` showed the guest back on the VF.
    back_at: f64,
    /// When the echo stream through the attempt had finished.
    served_until: f64,
    /// The source's progress line for pass 2 (the dirty-pass case).
    pass2: String,
}

/// Whether `error` names the cause of `fault`: the destination's own complaint about the
/// corrupt frame (its FAILED reason), or that the connection went away (closed, reset,
/// broken pipe), not only that "I/O failed".
fn reason_says_why(fault: Fault, error: &str) -> bool {
    match fault {
        Fault::Corrupt => error.contains("checksum"),
        Fault::Cut | Fault::Kill => ["closed the connection", "reset", "roken pipe"]
            .iter()
            .any(|w| error.contains(w)),
    }
}

/// What a failed attempt left, for its assertions: `ctl migrate`'s run, migproxy, the
/// destination and the source's console.
fn attempt_context(
    what: &str,
    run: &proc::Watched,
    proxy: &Background,
    dst: &Background,
    src: &Source,
) -> String {
    format!(
        "{what}: ctl exited {}\n--- ctl stderr ---\n{}--- ctl stdout ---\n{}\n--- migproxy ---\n{}\n--- destination ---\n{}\n--- source ---\n{}",
        run.status,
        run.stderr,
        run.stdout,
        proxy.output(),
        tail(&dst.output(), 30),
        src.console()
    )
}

/// After the failed attempt `what`, the guest serves on the source: back on the VF, the
/// source process alive, the VF receiving again since `before`. Returns when it was back
/// (seconds since the epoch).
fn serving_again(src: &mut Source, before: &Status, what: &str) -> Result<f64, String> {
    let (after, _) = src.on_vf(&format!("back on the VF after {what}"));
    let back_at = pingd::now();
    if !src.vm.running() {
        return Err("the source exited".into());
    }
    if after.vf.rx <= before.vf.rx {
        return Err(format!(
            "the VF received nothing after the rollback: {before:?} then {after:?}"
        ));
    }
    Ok(back_at)
}

/// The destination of a failed attempt ends (within 10 s) and never ran the guest.
fn destination_gave_up(dst: &mut Background) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dst.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if dst.running() {
        return Err("the destination still runs".into());
    }
    if dst.output().contains("; running") {
        return Err("the destination ran the guest".into());
    }
    Ok(())
}

/// The TCP echo stream through the attempt `run` got every byte back and outlasted it.
fn echo_intact(
    echo: anyhow::Result<proc::Watched>,
    run: &proc::Watched,
) -> Result<proc::Watched, String> {
    let echo = echo.map_err(|e| format!("tcp-echo: {e:#}"))?;
    if !(echo.status.success()
        && echo
            .stdout
            .contains(&format!("{ECHO_BYTES} bytes identical")))
    {
        return Err(format!(
            "the TCP stream through the attempt broke: {}{}",
            echo.stdout, echo.stderr
        ));
    }
    if echo.exited.as_secs_f64() <= run.exited.as_secs_f64() + 0.5 {
        return Err(format!(
            "the echo stream ({:.1} s) did not outlast the attempt ({:.1} s): make it longer",
            echo.exited.as_secs_f64(),
            run.exited.as_secs_f64()
        ));
    }
    Ok(echo)
}

/// The clean `mode` move `run` to `dst` after the rollbacks succeeded and the source exited
/// (within 10 s).
fn moved_clean(src: &mut Source, run: &proc::Watched, dst: &Background, mode: &str) {
    assert!(
        run.status.success() && run.stdout.starts_with(&format!("migrated mode={mode}")),
        "the clean {mode} move after the rollbacks failed ({}):\n{}{}\n--- destination ---\n{}",
        run.status,
        run.stdout,
        run.stderr,
        tail(&dst.output(), 30)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.vm.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!src.vm.running(), "the source did not exit after the move");
}

/// Runs the three phases of `fault` on one source guest, then a clean move.
fn rolls_back_at_every_phase(fault: Fault, tag: &str) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut src = Source::start(tag);
    let mut pinger = Pinger::start(src.net.client("ping"), GUEST_IP, PING_INTERVAL, 30_000)
        .expect("starting ping");
    std::thread::sleep(Duration::from_millis(300));
    let mut attempts = Vec::new();
    let mut vague = Vec::new();
    for (i, phase) in Phase::ALL.into_iter().enumerate() {
        let port = 7100 + i as u16;
        let (mut dst, _dst_ctl) = src.destination(port, &format!("{tag}d{i}"));
        let proxy_port = 7200 + i as u16;
        let mut proxy_cmd = src
            .net
            .exec_on(Side::Source, env!("CARGO_BIN_EXE_migproxy"));
        proxy_cmd
            .args(["--listen", &format!("tcp:127.0.0.1:{proxy_port}")])
            .args([
                "--to",
                &format!("tcp:{}:{port}", Side::Destination.migration_ip()),
            ])
            .args(["--at", phase.at(), "--fault", fault.key()])
            .args(["--pid", &dst.pid().to_string()])
            .args(["--tls-dir", &src.certs.arg()]);
        if matches!(phase, Phase::DirtyPass) {
            // The guest dirties pages while the first pass crawls: a dirty pass follows.
            proxy_cmd.args(["--hold-ms", HOLD_MS]);
        }
        let mut proxy = Background::spawn(&mut proxy_cmd).expect("starting migproxy");
        proxy
            .wait_for("listening on", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));

        let echo = src.echo_stream(ECHO_BYTES, 1000 + i as u64);
        std::thread::sleep(Duration::from_millis(500));
        let before = src.ctl.status().expect("status before the attempt");
        let started_at = pingd::now();
        let run = src.migrate(&format!("tcp:127.0.0.1:{proxy_port}"));
        let returned_at = pingd::now();
        let what = format!("{} at {phase:?}", fault.key());
        macro_rules! context {
            () => {
                attempt_context(&what, &run, &proxy, &dst, &src)
            };
        }
        let fault_at = proxy
            .output()
            .lines()
            .find_map(|l| {
                l.split_once(" at=")
                    .and_then(|(_, t)| t.split(' ').next()?.parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("migproxy did not strike; {}", context!()));
        assert_eq!(run.status.code(), Some(1), "{}", context!());
        let error = run
            .stderr
            .lines()
            .find(|l| l.starts_with("host-vmm: error: "))
            .unwrap_or_else(|| panic!("no error line; {}", context!()))
            .to_owned();
        assert!(
            error.contains("migration failed, the guest runs here"),
            "{}",
            context!()
        );
        // Whether the reason names the cause is collected and asserted at the end, so one
        // vague message does not hide how the other phases behave.
        if !reason_says_why(fault, &error) {
            vague.push(format!("{what}: {error}"));
        }
        if matches!(phase, Phase::DirtyPass) {
            // The fault must have hit a pass sent while the guest ran: the source printed
            // pass 2's prediction above the target (else pass 2 was the pause's pages).
            let predicted = run
                .stderr
                .lines()
                .find(|l| l.contains("pass 2:"))
                .and_then(|l| l.split("predicted pause ").nth(1))
                .and_then(|r| r.split(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no pass 2 prediction; {}", context!()));
            assert!(
                predicted > 1.0,
                "pass 2 went into the pause (predicted {predicted} ms), not a dirty pass; {}",
                context!()
            );
        }
        let back_at = serving_again(&mut src, &before, &what)
            .unwrap_or_else(|e| panic!("{e}; {}", context!()));
        // The destination gave up (or was killed).
        destination_gave_up(&mut dst).unwrap_or_else(|e| panic!("{e}; {}", context!()));
        if fault == Fault::Corrupt {
            assert!(
                dst.output().contains("checksum"),
                "the destination did not name the checksum; {}",
                context!()
            );
        }
        let echo = echo.join().expect("echo thread");
        // At least 300 ms (30 pings) of serving before the next attempt, also when the echo
        // stream ended near the rollback.
        let wait = back_at + 0.3 - pingd::now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        let served_until = pingd::now();
        let echo = echo_intact(echo, &run).unwrap_or_else(|e| panic!("{e}; {}", context!()));
        say(&format!(
            "{what}: {} | echo {}",
            error.trim_start_matches("host-vmm: error: "),
            echo.stdout.trim()
        ));
        attempts.push(Attempt {
            phase,
            fault_at,
            noticed: returned_at - fault_at,
            back_on_vf: back_at - fault_at,
            started_at,
            back_at,
            served_until,
            pass2: match phase {
                Phase::DirtyPass => run
                    .stderr
                    .lines()
                    .find(|l| l.contains("pass 2:"))
                    .unwrap_or_default()
                    .trim_start_matches("host-vmm: ")
                    .to_owned(),
                _ => String::new(),
            },
        });
    }
    // Every ping sent from a second after the last rollback is answered; report the rest.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pinger.running(), "ping ended early");
    let pings_ok_from = pingd::now() - 1.0;
    // A clean move to a fresh destination now succeeds and the source exits 0.
    let (mut dst, _dst_ctl) = src.destination(7300, &format!("{tag}dz"));
    let run = src.migrate(&format!("tcp:{}:7300", Side::Destination.migration_ip()));
    moved_clean(&mut src, &run, &dst, "pre-copy");
    // Its last line may still be in the pipe when it has exited: the reader drains it soon.
    let said = Instant::now() + Duration::from_secs(2);
    while !src.vm.output().contains("the guest moved away; exiting") && Instant::now() < said {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        src.vm.output().contains("the guest moved away; exiting"),
        "{}",
        src.console()
    );
    src.net
        .wait_until_guest_answers(&mut dst, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the moved guest does not answer: {e:#}"));
    let log = pinger.stop().expect("stopping ping");
    report(fault, &attempts, &log, pings_ok_from, run.stdout.trim());
    assert!(
        vague.is_empty(),
        "the guest rolled back every time, but `ctl migrate` did not say why (a source whose \
         write fails should read the destination's FAILED frame, and name the I/O error):\n{}",
        vague.join("\n")
    );
}

fn report(fault: Fault, attempts: &[Attempt], log: &PingLog, steady_from: f64, moved: &str) {
    let gap = |w: &pingd::Window| w.longest_gap.map_or(f64::NAN, |g| g.secs() * 1e3);
    for a in attempts {
        let around = log.window(a.fault_at - 0.5, a.back_at + 0.5);
        let whole = log.window(a.started_at, a.back_at + 0.5);
        say(&format!(
            "rollback {} at {:?}: ctl returned {:.0} ms after the fault, back on the VF after {:.0} ms; \
             pings within 0.5 s of the fault and rollback: {} sent, {} lost, longest gap {:.0} ms; \
             over the whole attempt (PREPARE included): {} sent, {} lost, longest gap {:.0} ms{}",
            fault.key(),
            a.phase,
            a.noticed * 1e3,
            a.back_on_vf * 1e3,
            around.sent,
            around.lost.len(),
            gap(&around),
            whole.sent,
            whole.lost.len(),
            gap(&whole),
            if a.pass2.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.pass2)
            }
        ));
    }
    say(&format!(
        "{}: {} pings sent in total, {} lost, longest gap {:.0} ms; then {moved}",
        fault.key(),
        log.transmitted.unwrap_or(0),
        log.lost().len(),
        log.longest_gap().map_or(f64::NAN, |g| g.secs() * 1e3)
    ));
    for a in attempts {
        // Serving again within a bound, not merely eventually.
        assert!(
            a.back_on_vf < 10.0,
            "{:?}: back on the VF only {:.1} s after the fault",
            a.phase,
            a.back_on_vf
        );
        // Back on the VF, every ping is answered until the next attempt.
        let after = log.window(a.back_at, a.served_until);
        assert!(
            after.sent >= 20 && after.lost.is_empty(),
            "{:?}: pings after the rollback: {after:?}",
            a.phase
        );
    }
    let steady = log.window(steady_from, steady_from + 1.0);
    assert!(
        steady.sent >= 20 && steady.lost.is_empty(),
        "pings after the rollbacks: {steady:?}"
    );
}

#[test]
fn cut_connection_at_each_phase_rolls_back_then_a_clean_move_succeeds() {
    if !kvm_present("cut_connection_at_each_phase_rolls_back_then_a_clean_move_succeeds") {
        return;
    }
    rolls_back_at_every_phase(Fault::Cut, "rbc");
}

#[test]
fn corrupt_frame_at_each_phase_rolls_back_then_a_clean_move_succeeds() {
    if !kvm_present("corrupt_frame_at_each_phase_rolls_back_then_a_clean_move_succeeds") {
        return;
    }
    rolls_back_at_every_phase(Fault::Corrupt, "rbx");
}

#[test]
fn killed_destination_at_each_phase_rolls_back_then_a_clean_move_succeeds() {
    if !kvm_present("killed_destination_at_each_phase_rolls_back_then_a_clean_move_succeeds") {
        return;
    }
    rolls_back_at_every_phase(Fault::Kill, "rbk");
}

// ---------------------------------------------------------------------------------------
// Issue 11, item 7: zero-copy moves fault-injected the same way.

/// Where a zero-copy move is struck (migproxy's `--at`; the memfd passes through it).
#[derive(Clone, Copy, Debug)]
enum ZeroCopyPhase {
    /// The destination's READY: it has mapped the guest's memfd and built the VM; the
    /// source has not paused yet.
    Ready,
    /// The STATE frame: the source's vCPU is paused.
    Pause,
}

impl ZeroCopyPhase {
    const ALL: [ZeroCopyPhase; 2] = [ZeroCopyPhase::Ready, ZeroCopyPhase::Pause];

    fn at(self) -> &'static str {
        match self {
            ZeroCopyPhase::Ready => "ready",
            ZeroCopyPhase::Pause => "state",
        }
    }
}

/// The guest-RAM memfd's inode, as `pid` maps it (`memfd:roam-guest-ram`).
fn guest_ram_inode(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the source's maps");
    maps.lines()
        .find(|l| l.contains("memfd:roam-guest-ram"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or_else(|| panic!("process {pid} maps no guest-RAM memfd:\n{maps}"))
}

/// Whether a `/proc/PID/maps` text maps the guest-RAM memfd with `inode`.
fn maps_guest_ram(maps: &str, inode: u64) -> bool {
    maps.lines().any(|l| {
        l.contains("memfd:roam-guest-ram")
            && l.split_whitespace().nth(4) == Some(inode.to_string().as_str())
    })
}

/// Every process that maps the memfd with `inode` or holds a descriptor of it, and how.
fn memfd_holders(inode: u64) -> Vec<(u32, &'static str)> {
    use std::os::unix::fs::MetadataExt;
    let mut holders = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return holders;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end while we look: whatever cannot be read is not held.
        let maps = std::fs::read_to_string(entry.path().join("maps")).unwrap_or_default();
        if maps_guest_ram(&maps, inode) {
            holders.push((pid, "maps it"));
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_it = std::fs::read_link(fd.path())
                .is_ok_and(|t| t.to_string_lossy().contains("memfd:roam-guest-ram"))
                && std::fs::metadata(fd.path()).is_ok_and(|m| m.ino() == inode);
            if is_it {
                holders.push((pid, "holds an fd"));
                break;
            }
        }
    }
    holders
}

/// Runs a zero-copy move struck by `fault` at each phase on one source guest, then a clean
/// zero-copy move. Each attempt must roll back as a pre-copy one does (the guest serves on,
/// back on the VF, a TCP echo stream through the attempt intact), the destination must be
/// gone, and the source must own its memory alone again: no other process maps the guest's
/// memfd or holds a descriptor of it.
fn zero_copy_rolls_back_at_every_phase(fault: Fault, tag: &str) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut src = Source::start(tag);
    let inode = guest_ram_inode(src.vm.pid());
    let sock = |what: &str| {
        std::env::temp_dir().join(format!("roam-{tag}-{}-{what}.sock", std::process::id()))
    };
    for (i, phase) in ZeroCopyPhase::ALL.into_iter().enumerate() {
        let listen = sock(&format!("dst{i}"));
        let (mut dst, _dst_ctl) = src.destination_on(
            &format!("unix:{}", listen.display()),
            &format!("{tag}d{i}"),
            &[],
        );
        let proxy_at = sock(&format!("proxy{i}"));
        let mut proxy = Background::spawn(
            Command::new(env!("CARGO_BIN_EXE_migproxy"))
                .args(["--listen", &format!("unix:{}", proxy_at.display())])
                .args(["--to", &format!("unix:{}", listen.display())])
                .args(["--at", phase.at(), "--fault", fault.key()])
                .args(["--pid", &dst.pid().to_string()]),
        )
        .expect("starting migproxy");
        proxy
            .wait_for("listening on", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let echo = src.echo_stream(ECHO_BYTES, 2000 + i as u64);
        std::thread::sleep(Duration::from_millis(500));
        let before = src.ctl.status().expect("status before the attempt");
        let run = src.migrate_with(&format!("unix:{}", proxy_at.display()), &["--zero-copy"]);
        // Whether the destination mapped the guest's memory when migproxy struck (it reads
        // /proc at the fault): so "no one but the source has it afterwards" means the
        // destination let go, not that it never had it.
        let dst_mapped = proxy.output().lines().any(|l| {
            l.contains("fault ")
                && l.split("guest-ram-inodes=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .is_some_and(|list| list.split(',').any(|i| i == inode.to_string()))
        });
        let what = format!("zero-copy, {} at {phase:?}", fault.key());
        macro_rules! context {
            () => {
                attempt_context(&what, &run, &proxy, &dst, &src)
            };
        }
        assert!(
            proxy.output().contains("fault "),
            "migproxy did not strike; {}",
            context!()
        );
        assert_eq!(run.status.code(), Some(1), "{}", context!());
        assert!(
            run.stderr.contains("migration failed, the guest runs here"),
            "{}",
            context!()
        );
        serving_again(&mut src, &before, &what).unwrap_or_else(|e| panic!("{e}; {}", context!()));
        // The destination is gone (killed, or it gave up on the cut stream).
        destination_gave_up(&mut dst).unwrap_or_else(|e| panic!("{e}; {}", context!()));
        assert!(
            !std::path::Path::new(&format!("/proc/{}", dst.pid())).exists(),
            "the destination's process is still there; {}",
            context!()
        );
        assert!(
            dst_mapped,
            "the destination never mapped the guest's memory before the fault; {}",
            context!()
        );
        // The memory is the source's alone again (migproxy closed the fd it passed on).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut holders = memfd_holders(inode);
        while holders.iter().any(|(pid, _)| *pid != src.vm.pid()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            holders = memfd_holders(inode);
        }
        let others: Vec<_> = holders
            .iter()
            .filter(|(pid, _)| *pid != src.vm.pid())
            .collect();
        assert!(
            others.is_empty(),
            "after the rollback other processes still have the guest's memory: {others:?}; {}",
            context!()
        );
        assert!(
            holders.contains(&(src.vm.pid(), "maps it")),
            "the source no longer maps its memory: {holders:?}"
        );
        // A TCP stream through the whole attempt lost no byte.
        let echo = echo_intact(echo.join().expect("echo thread"), &run)
            .unwrap_or_else(|e| panic!("{e}; {}", context!()));
        let error = run
            .stderr
            .lines()
            .find(|l| l.starts_with("host-vmm: error: "))
            .unwrap_or_default();
        say(&format!(
            "{what}: {} | memfd held by {holders:?} | echo {}",
            error.trim_start_matches("host-vmm: error: "),
            echo.stdout.trim()
        ));
        let _ = std::fs::remove_file(&listen);
        let _ = std::fs::remove_file(&proxy_at);
    }
    // A clean zero-copy move to a fresh destination now succeeds and the source exits 0.
    let listen = sock("clean");
    let (mut dst, _dst_ctl) = src.destination_on(
        &format!("unix:{}", listen.display()),
        &format!("{tag}dz"),
        &[],
    );
    let run = src.migrate_with(&format!("unix:{}", listen.display()), &["--zero-copy"]);
    let _ = std::fs::remove_file(&listen);
    moved_clean(&mut src, &run, &dst, "zero-copy");
    src.net
        .wait_until_guest_answers(&mut dst, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the moved guest does not answer: {e:#}"));
}

#[test]
fn zero_copy_killed_destination_before_and_during_the_pause_rolls_back() {
    if !kvm_present("zero_copy_killed_destination_before_and_during_the_pause_rolls_back") {
        return;
    }
    zero_copy_rolls_back_at_every_phase(Fault::Kill, "zck");
}

#[test]
fn zero_copy_cut_stream_before_and_during_the_pause_rolls_back() {
    if !kvm_present("zero_copy_cut_stream_before_and_during_the_pause_rolls_back") {
        return;
    }
    zero_copy_rolls_back_at_every_phase(Fault::Cut, "zcc");
}

// ---------------------------------------------------------------------------------------
// Who may send: TLS admission and the memory cap.

/// A `migproxy` on host 1 from a Unix socket here to `to`: with `tls`, a TLS client with
/// that directory's client certificate; without, raw bytes. Returns it and its socket.
fn relay(src: &Source, tag: &str, to: &str, tls: Option<&str>) -> (Background, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("roam-relay-{tag}-{}.sock", std::process::id()));
    let mut cmd = src
        .net
        .exec_on(Side::Source, env!("CARGO_BIN_EXE_migproxy"));
    cmd.args(["--listen", &format!("unix:{}", path.display()), "--to", to]);
    if let Some(dir) = tls {
        cmd.args(["--tls-dir", dir]);
    }
    let mut p = Background::spawn(&mut cmd).expect("starting migproxy");
    p.wait_for("listening on", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    (p, path)
}

/// Waits (bounded) until `dst` has logged `n` dropped peers; returns its output.
fn dropped(dst: &Background, n: usize, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let out = dst.output();
        if out.lines().filter(|l| l.contains("dropped")).count() >= n {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{n} dropped peers not logged within {bound:?}:\n{}",
            tail(&out, 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn receive_over_tls_drops_strangers_garbage_and_silence_then_takes_the_real_source() {
    if !kvm_present(
        "receive_over_tls_drops_strangers_garbage_and_silence_then_takes_the_real_source",
    ) {
        return;
    }
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut src = Source::start("tlsadm");
    let to = format!("tcp:{}:7410", Side::Destination.migration_ip());
    let (mut dst, _dst_ctl) = src.destination(7410, "tlsadmd");

    // A stranger: it trusts our CA (so it accepts the destination), but its client
    // certificate comes from another CA (same names, another key).
    let other_ca = xtask::certs::CertDir::for_tests().expect("another CA");
    std::fs::copy(
        src.certs.path().join(migration_wire::tls::CA_CERT),
        other_ca.path().join(migration_wire::tls::CA_CERT),
    )
    .expect("our CA for the stranger");
    let (_p1, path) = relay(&src, "stranger", &to, Some(&other_ca.arg()));
    let mut s = UnixStream::connect(&path).expect("the relay listens");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(&hello(PROTOCOL_VERSION));
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !frames_in(&answer).iter().any(|f| f.0 == kind::ACCEPT),
        "a stranger was accepted"
    );
    let out = dropped(&dst, 1, Duration::from_secs(10));
    assert!(
        out.contains("invalid peer certificate"),
        "{}",
        tail(&out, 20)
    );

    // Garbage where the TLS handshake should be.
    let (_p2, path) = relay(&src, "garbage", &to, None);
    let mut s = UnixStream::connect(&path).expect("the relay listens");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: roam\r\n\r\n");
    let _ = s.read_to_end(&mut Vec::new());
    dropped(&dst, 2, Duration::from_secs(10));

    // A peer that connects and says nothing: dropped at the 10 s admission deadline.
    let (_p3, path) = relay(&src, "silent", &to, None);
    let t = Instant::now();
    let _silent = UnixStream::connect(&path).expect("the relay listens");
    let out = dropped(&dst, 3, Duration::from_secs(20));
    let waited = t.elapsed();
    assert!(
        out.contains("no TLS handshake within 10 s"),
        "{}",
        tail(&out, 20)
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "the silent peer was dropped after {waited:?}"
    );
    assert!(
        dst.running(),
        "receive stopped waiting:\n{}",
        tail(&out, 20)
    );

    // A receiver capped below this guest's RAM refuses it before allocating anything; the
    // guest runs on at the source and that receiver keeps waiting.
    let capped = format!("tcp:{}:7411", Side::Destination.migration_ip());
    let (mut small, _small_ctl) = src.destination_with(7411, "tlsadmm", &["--max-mem", "32M"]);
    let run = src.migrate(&capped);
    assert_eq!(run.status.code(), Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("--max-mem") && run.stderr.contains("the guest runs here"),
        "{}",
        run.stderr
    );
    assert!(
        small.running(),
        "the capped receiver gave up:\n{}",
        small.output()
    );
    src.on_vf("the guest runs on at the source after the refusal");

    // The real source, on the receiver that dropped the three.
    let run = src.migrate(&to);
    assert!(
        run.status.success() && run.stdout.starts_with("migrated mode=pre-copy"),
        "the real move failed ({}):\n{}{}\n--- destination ---\n{}",
        run.status,
        run.stdout,
        run.stderr,
        tail(&dst.output(), 30)
    );
    src.net
        .wait_until_guest_answers(&mut dst, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the guest at the destination: {e:#}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.vm.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!src.vm.running(), "the source did not exit after the move");
    say(&format!(
        "TLS admission: a stranger, garbage and a silent peer (dropped after {:.1} s) refused, \
         a guest over --max-mem refused, then the real source moved: {}",
        waited.as_secs_f64(),
        run.stdout.trim()
    ));
}
