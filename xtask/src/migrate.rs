//! Moving a guest between the two hosts of a [`TwoHosts`] topology with host-vmm, the way a
//! user does: `host-vmm run ... --api-socket SRC` on one host, `host-vmm receive --listen ...`
//! on the other, `host-vmm ctl SRC migrate ...`, then the receiver's control socket is the
//! new source, so the guest can go back and forth.
//!
//! - **Pre-copy**: the stream runs over TCP on the hosts' migration link
//!   (`tcp:198.19.0.X:PORT`, a fresh port per move), inside mutual TLS with a certificate
//!   directory the guest's helper makes ([`CertDir`]); plain TCP only when a benchmark asks
//!   for it ([`Transport::InsecurePlainTcp`]).
//! - **Zero-copy**: over a Unix socket under the temp directory (both host namespaces share
//!   the filesystem), with `--zero-copy`, so guest RAM is handed over as a memfd.
//!
//! Every process started here is killed by its PID when its owner drops, and every socket
//! file named here is removed.

use crate::bench::migrate::Mode;
use crate::certs::CertDir;
use crate::ctl::{Control, Nic, Status};
use crate::net::{GUEST_MAC, Nics, Side, TAP, TwoHosts, VF_TAP};
use crate::pingd;
use crate::proc::{self, Background};
use crate::vm::{Boot, Vmm};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on a boot until the guest answers ping.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on `host-vmm receive` getting ready to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one `host-vmm ctl ... migrate` (a 1 GiB pre-copy is a few seconds here).
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on the old source exiting once the move is done.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the guest agent answering `status` (after boot or a move).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// What a source host-vmm says as it exits 0 after a move.
const MOVED_AWAY: &str = "the guest moved away; exiting";
/// Output kept from VMMs that moved their guest away (the tail is what matters).
const HISTORY_MAX: usize = 64 * 1024;

/// The `migrated ...` line `host-vmm ctl SRC migrate` prints on success.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// How memory crossed.
    pub mode: Mode,
    /// The whole move, ms.
    pub total_ms: f64,
    /// Source vCPU stop to destination vCPU run, ms.
    pub pause_ms: f64,
    /// Bytes sent on the migration stream.
    pub bytes_sent: u64,
    /// Bytes of guest memory copied (0 for zero-copy).
    pub memory_bytes_copied: u64,
    /// Memory passes.
    pub passes: u64,
    /// Pages sent during the pause.
    pub pause_pages: u64,
    /// Frames for the guest carried in the state (they reached the source during the pause).
    pub frames_carried: u64,
    /// Frames for the guest forwarded to the destination after the state (the hand-over
    /// window).
    pub frames_forwarded: u64,
}

/// The summary's keys, in the order host-vmm prints them.
const SUMMARY_KEYS: [&str; 9] = [
    "mode",
    "total_ms",
    "pause_ms",
    "bytes_sent",
    "memory_bytes_copied",
    "passes",
    "pause_pages",
    "frames_carried",
    "frames_forwarded",
];

impl Summary {
    /// Finds and parses the one `migrated ...` line in `stdout`: every key of the contract
    /// exactly once, nothing else.
    pub fn parse(stdout: &str) -> Result<Summary> {
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("migrated "))
            .collect();
        let [line] = lines.as_slice() else {
            bail!(
                "expected one `migrated ...` line, found {}:\n{stdout}",
                lines.len()
            );
        };
        let mut values: [Option<&str>; SUMMARY_KEYS.len()] = [None; SUMMARY_KEYS.len()];
        for word in line.split_whitespace().skip(1) {
            let (key, value) = word
                .split_once('=')
                .with_context(|| format!("`{word}` is not key=value in `{line}`"))?;
            let i = SUMMARY_KEYS
                .iter()
                .position(|k| *k == key)
                .with_context(|| format!("unknown key `{key}` in `{line}`"))?;
            if values[i].replace(value).is_some() {
                bail!("`{key}` twice in `{line}`");
            }
        }
        let get = |i: usize| -> Result<&str> {
            values[i].with_context(|| format!("no `{}` in `{line}`", SUMMARY_KEYS[i]))
        };
        let float = |i: usize| -> Result<f64> {
            let v = get(i)?;
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .with_context(|| format!("`{}={v}` is not a duration in ms", SUMMARY_KEYS[i]))
        };
        let int = |i: usize| -> Result<u64> {
            let v = get(i)?;
            v.parse::<u64>()
                .with_context(|| format!("`{}={v}` is not a count", SUMMARY_KEYS[i]))
        };
        let mode = match get(0)? {
            "pre-copy" => Mode::PreCopy,
            "zero-copy" => Mode::ZeroCopy,
            other => bail!("unknown mode `{other}` in `{line}`"),
        };
        Ok(Summary {
            mode,
            total_ms: float(1)?,
            pause_ms: float(2)?,
            bytes_sent: int(3)?,
            memory_bytes_copied: int(4)?,
            passes: int(5)?,
            pause_pages: int(6)?,
            frames_carried: int(7)?,
            frames_forwarded: int(8)?,
        })
    }
}

/// One move as the harness saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Moved {
    /// host-vmm's summary.
    pub summary: Summary,
    /// Where the guest went.
    pub to: Side,
    /// When `host-vmm ctl ... migrate` was started (seconds since the epoch, `pingd::now`).
    pub started: f64,
    /// When it returned with the summary.
    pub ended: f64,
    /// Its progress lines (stderr).
    pub progress: String,
}

/// A socket path in the temp directory, removed when dropped.
struct SocketPath(PathBuf);

impl SocketPath {
    fn unique(what: &str) -> SocketPath {
        SocketPath(std::env::temp_dir().join(format!(
            "roam-mig-{}-{}-{what}.sock",
            std::process::id(),
            next()
        )))
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A number unique within this process (socket names, ports).
fn next() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A TCP port for the next pre-copy move: fresh each time, so a listener never meets a
/// previous move's connection in TIME_WAIT.
fn next_port() -> u16 {
    40_000 + (next() % 20_000) as u16
}

/// One host-vmm process serving the guest (or waiting for it), with its control socket.
/// Fields drop in order: the process (killed by PID), then the socket's file.
struct Instance {
    vm: Background,
    control: Control,
    side: Side,
}

/// The `--net` and `--vf` flags for `nics`: a host's TAPs, all with the one guest MAC.
fn device_args(nics: Nics) -> Vec<String> {
    let mut args = Vec::new();
    if nics != Nics::Vf {
        args.extend(["--net".into(), format!("tap={TAP},mac={GUEST_MAC}")]);
    }
    if nics != Nics::Virtio {
        args.extend(["--vf".into(), format!("tap={VF_TAP},mac={GUEST_MAC}")]);
    }
    args
}

/// How a pre-copy move's TCP stream is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS (`--tls-dir`), what users run.
    Tls,
    /// Plain TCP (`--insecure-plain-tcp`), for measuring what TLS costs.
    InsecurePlainTcp,
}

impl Transport {
    /// Its name in tables: `tls`, `plain-tcp`.
    pub fn key(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::InsecurePlainTcp => "plain-tcp",
        }
    }
}

/// A guest under host-vmm on one host of a [`TwoHosts`] topology, movable to the other.
pub struct HostVmmGuest {
    current: Instance,
    nics: Nics,
    history: String,
    moves: u32,
    certs: CertDir,
    transport: Transport,
    move_timeout: Duration,
    receiver_env: Vec<(String, String)>,
}

impl HostVmmGuest {
    /// Boots `image` with `mem_mib` MiB on the source host, both NICs on the one guest MAC
    /// and `--api-socket`, `extra_cmdline` after the network settings; returns once the guest
    /// answers ping from the client and its agent answers `status`.
    pub fn boot(
        hosts: &TwoHosts,
        image: &Path,
        mem_mib: u32,
        extra_cmdline: &str,
    ) -> Result<HostVmmGuest> {
        HostVmmGuest::boot_with(hosts, image, mem_mib, extra_cmdline, Nics::Both)
    }

    /// Like [`HostVmmGuest::boot`] with only the NICs `nics` (every receiver gets the same),
    /// to tell what the VF's part in a move costs.
    pub fn boot_with(
        hosts: &TwoHosts,
        image: &Path,
        mem_mib: u32,
        extra_cmdline: &str,
        nics: Nics,
    ) -> Result<HostVmmGuest> {
        let control = Control::unique("mg");
        let cmdline = format!("{} {extra_cmdline}", crate::net::guest_cmdline());
        let boot = Boot {
            mem_mib,
            cmdline: cmdline.trim(),
            net: Some(hosts.attach(Side::Source, nics)),
            control: Some(control.path()),
            ..Boot::new(image)
        };
        let mut cmd = Vmm::HostVmm.command(&boot);
        cmd.env("RUST_LOG", "info");
        let mut vm = Background::spawn(&mut cmd)?;
        hosts.wait_until_guest_answers(&mut vm, BOOT_TIMEOUT)?;
        let guest = HostVmmGuest {
            current: Instance {
                vm,
                control,
                side: Side::Source,
            },
            nics,
            history: String::new(),
            moves: 0,
            certs: CertDir::for_tests()?,
            transport: Transport::Tls,
            move_timeout: MOVE_TIMEOUT,
            receiver_env: Vec::new(),
        };
        guest
            .wait_for_agent()
            .map_err(|e| e.context(guest.console_tail(30)))?;
        Ok(guest)
    }

    /// The host the guest runs on now.
    pub fn side(&self) -> Side {
        self.current.side
    }

    /// The control socket of the host-vmm serving the guest now.
    pub fn control(&self) -> &Control {
        &self.current.control
    }

    /// Whether the host-vmm serving the guest is still running.
    pub fn running(&mut self) -> bool {
        self.current.vm.running()
    }

    /// How the host-vmm serving the guest ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.current.vm.exit_status()
    }

    /// The PID of the host-vmm serving the guest now (its `/proc` entry: memory, fds).
    pub fn pid(&self) -> u32 {
        self.current.vm.pid()
    }

    /// Moves done so far.
    pub fn moves(&self) -> u32 {
        self.moves
    }

    /// What the VMMs printed: those that moved the guest away (their tails), then the
    /// current one.
    pub fn console(&self) -> String {
        format!("{}{}", self.history, self.current.vm.output())
    }

    /// The last `lines` lines of [`HostVmmGuest::console`].
    pub fn console_tail(&self, lines: usize) -> String {
        let out = self.console();
        let all: Vec<&str> = out.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the guest agent answers `status`; returns it.
    pub fn wait_for_agent(&self) -> Result<Status> {
        self.control()
            .wait_for("the guest agent answering", AGENT_TIMEOUT, |_| true)
    }

    /// Waits until the guest sends through the VF again (it does after RESUMED when the
    /// host has one), or through virtio-net when it has no VF: the steady state a move
    /// starts from.
    pub fn wait_settled(&self, bound: Duration) -> Result<Status> {
        let want = if self.nics == Nics::Virtio {
            Nic::Virtio
        } else {
            Nic::Vf
        };
        self.control().wait_for(
            &format!("the guest sending through {}", want.name()),
            bound,
            |s| s.active == Some(want) && s.nic(want).present,
        )
    }

    /// Bounds each later `host-vmm ctl ... migrate` by `bound` ([`MOVE_TIMEOUT`] unless set):
    /// a move over a slow link takes minutes.
    pub fn set_move_timeout(&mut self, bound: Duration) {
        self.move_timeout = bound;
    }

    /// Protects the next pre-copy moves' streams with `transport` (TLS by default).
    pub fn set_transport(&mut self, transport: Transport) {
        self.transport = transport;
    }

    /// The certificate directory the moves use (for a proxy in between).
    pub fn certs(&self) -> &CertDir {
        &self.certs
    }

    /// The flags that protect a move to `target` (none for `unix:`).
    fn security_args(&self, target: &str) -> Vec<String> {
        match (target.starts_with("tcp:"), self.transport) {
            (false, _) => Vec::new(),
            (true, Transport::Tls) => vec!["--tls-dir".into(), self.certs.arg()],
            (true, Transport::InsecurePlainTcp) => vec!["--insecure-plain-tcp".into()],
        }
    }

    /// Sets `key=value` in the environment of the next receivers (`host-vmm receive`), e.g.
    /// a test knob of host-vmm's.
    pub fn set_receiver_env(&mut self, key: &str, value: &str) {
        self.receiver_env.retain(|(k, _)| k != key);
        self.receiver_env.push((key.into(), value.into()));
    }

    /// Gives the next receivers `nics` (and makes [`HostVmmGuest::wait_settled`] expect
    /// them): a move to a host without a VF leaves the guest on virtio-net, a move to one
    /// with a VF gives it one back.
    pub fn set_receiver_nics(&mut self, nics: Nics) {
        self.nics = nics;
    }

    /// Moves the guest to the other host by `mode` (`--downtime-ms` if given): a
    /// `host-vmm receive` waits there, `host-vmm ctl ... migrate` drives the source, the old
    /// source must exit. On an error the guest still runs where it was if the source rolled
    /// back (see [`HostVmmGuest::running`]); the receiver is killed.
    pub fn move_to_other(
        &mut self,
        hosts: &TwoHosts,
        mode: Mode,
        downtime_ms: Option<u32>,
    ) -> Result<Moved> {
        let to = self.current.side.other();
        let socket = (mode == Mode::ZeroCopy).then(|| SocketPath::unique("listen"));
        let target = match &socket {
            Some(path) => format!("unix:{}", path.0.display()),
            None => format!("tcp:{}:{}", to.migration_ip(), next_port()),
        };
        let control = Control::unique("mg");
        let mut receive = hosts.exec_on(to, crate::host_vmm_path());
        receive
            .args(["receive", "--listen", &target])
            .args(self.security_args(&target))
            .args(device_args(self.nics))
            .arg("--api-socket")
            .arg(control.path())
            .env("RUST_LOG", "info")
            .envs(self.receiver_env.iter().map(|(k, v)| (k, v)));
        let mut receiver = Background::spawn(&mut receive)?;
        receiver
            .wait_for("waiting for a guest", LISTEN_TIMEOUT)
            .context("starting host-vmm receive")?;

        let mut ctl = Command::new(crate::host_vmm_path());
        ctl.arg("ctl")
            .arg(self.current.control.path())
            .args(["migrate", &target])
            .args(self.security_args(&target));
        if mode == Mode::ZeroCopy {
            ctl.arg("--zero-copy");
        }
        if let Some(ms) = downtime_ms {
            ctl.args(["--downtime-ms", &ms.to_string()]);
        }
        let started = pingd::now();
        let run = proc::watch(&mut ctl, "", self.move_timeout);
        let ended = pingd::now();
        // Whether either side died during the move, and how (a signal says it was killed).
        let ended_how = |s: Option<std::process::ExitStatus>| {
            s.map_or("running".to_string(), |s| format!("exited ({s})"))
        };
        let states = format!(
            "receiver {}, source {}",
            ended_how(receiver.exit_status()),
            ended_how(self.current.vm.exit_status())
        );
        let fail = |what: String, receiver: &Background| {
            anyhow::anyhow!(
                "{what}\n({states} when ctl returned)\n--- receiver on the {} host ---\n{}",
                to.key(),
                tail(&receiver.output(), 30)
            )
        };
        let run = run.map_err(|e| fail(format!("{e:#}"), &receiver))?;
        if !run.status.success() {
            return Err(fail(
                format!(
                    "`{}` failed ({}): {}{}",
                    proc::display(&ctl),
                    run.status,
                    run.stderr.trim(),
                    run.stdout.trim()
                ),
                &receiver,
            ));
        }
        let summary = Summary::parse(&run.stdout).map_err(|e| fail(format!("{e:#}"), &receiver))?;
        if summary.mode != mode {
            return Err(fail(
                format!("asked for {}, host-vmm says {summary:?}", mode.key()),
                &receiver,
            ));
        }
        // The old source lets go of the guest and exits (0, after saying so).
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while self.current.vm.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let old = std::mem::replace(
            &mut self.current,
            Instance {
                vm: receiver,
                control,
                side: to,
            },
        );
        let mut old = old;
        let exited = !old.vm.running();
        // Its last lines may still be in the pipe when it has exited: the readers drain it
        // soon after.
        let said = Instant::now() + Duration::from_secs(2);
        while exited && !old.vm.output().contains(MOVED_AWAY) && Instant::now() < said {
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = old.vm.output();
        self.history.push_str(&format!(
            "--- host-vmm on the {} host (move {} away) ---\n{}",
            old.side.key(),
            self.moves + 1,
            tail(&out, 200)
        ));
        if self.history.len() > HISTORY_MAX {
            let mut cut = self.history.len() - HISTORY_MAX;
            while !self.history.is_char_boundary(cut) {
                cut += 1;
            }
            self.history.drain(..cut);
        }
        drop(old);
        self.moves += 1;
        if !exited {
            bail!(
                "the old source host-vmm still runs {EXIT_TIMEOUT:?} after the move:\n{}",
                tail(&out, 30)
            );
        }
        if !out.contains(MOVED_AWAY) {
            bail!(
                "the old source host-vmm exited without saying the guest moved away:\n{}",
                tail(&out, 30)
            );
        }
        if let Some(status) = self.current.vm.exit_status() {
            bail!(
                "host-vmm on the {} host exited ({status}) right after the move:\n{}",
                to.key(),
                tail(&self.current.vm.output(), 30)
            );
        }
        Ok(Moved {
            summary,
            to,
            started,
            ended,
            progress: run.stderr,
        })
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "migrated mode=pre-copy total_ms=812.250 pause_ms=0.840 bytes_sent=134742016 memory_bytes_copied=134217728 passes=3 pause_pages=12 frames_carried=2 frames_forwarded=5\n";

    #[test]
    fn the_summary_is_parsed() {
        let s = Summary::parse(&format!("some other line\n{LINE}")).unwrap();
        assert_eq!(
            s,
            Summary {
                mode: Mode::PreCopy,
                total_ms: 812.25,
                pause_ms: 0.84,
                bytes_sent: 134_742_016,
                memory_bytes_copied: 134_217_728,
                passes: 3,
                pause_pages: 12,
                frames_carried: 2,
                frames_forwarded: 5,
            }
        );
        let z = Summary::parse(&LINE.replace("pre-copy", "zero-copy")).unwrap();
        assert_eq!(z.mode, Mode::ZeroCopy);
    }

    #[test]
    fn a_summary_off_the_contract_is_an_error() {
        let bad = [
            String::new(),
            format!("{LINE}{LINE}"),
            LINE.replace("mode=pre-copy", "mode=post-copy"),
            LINE.replace(" passes=3", ""),
            LINE.replace("passes=3", "passes=3 passes=3"),
            LINE.replace("passes=3", "passes=-3"),
            LINE.replace("pause_ms=0.840", "pause_ms=NaN"),
            LINE.replace("pause_ms=0.840", "pause_ms"),
            LINE.replace("pause_pages=12", "pause_pages=12 extra=1"),
            LINE.replace(" frames_forwarded=5", ""),
        ];
        for text in bad {
            assert!(Summary::parse(&text).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn ports_and_sockets_are_fresh() {
        assert_ne!(next_port(), next_port());
        let (a, b) = (SocketPath::unique("x"), SocketPath::unique("x"));
        assert_ne!(a.0, b.0);
        // sun_path holds 108 bytes including the NUL.
        assert!(a.0.as_os_str().len() < 108);
        let args = device_args(Nics::Both);
        assert_eq!(args[1], format!("tap=tap0,mac={GUEST_MAC}"));
        assert_eq!(args[3], format!("tap=tap1,mac={GUEST_MAC}"));
        assert_eq!(
            device_args(Nics::Virtio),
            ["--net", "tap=tap0,mac=52:54:00:12:34:56"]
        );
        assert_eq!(device_args(Nics::Vf)[0], "--vf");
    }
}
