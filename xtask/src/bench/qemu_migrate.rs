//! The stock-QEMU peer for migration: `qemu-system-x86_64 -M pc` (QEMU 7.2, virtio-net-pci on
//! a TAP) booting a Roam image on one host of a [`TwoHosts`] topology and moved to the other
//! by a second QEMU started with `-incoming defer`, driven and timed over QMP.
//!
//! - **Pre-copy**: QEMU's own RAM, streamed over TCP on the hosts' migration link.
//! - **Zero-copy** (co-located): both QEMUs back guest RAM with the same file in /dev/shm
//!   (`memory-backend-file,share=on`, `-machine memory-backend=mem`) and turn on the
//!   `x-ignore-shared` capability, so the stream over a Unix socket skips guest RAM and
//!   carries only device state and QEMU's small ROM blocks. This is QEMU's nearest equivalent
//!   of passing host-vmm's memfd.
//!
//! The pause compared with host-vmm's is taken from QMP events, on the wall clock both QEMUs
//! share: the source's STOP (raised once its vCPU has stopped for the last part of the move)
//! to the destination's RESUME (raised just before its vCPU runs). QEMU's own `downtime`
//! ends on the source, when the stream is done, before the destination has loaded the
//! state; it is kept as the VMM's own figure. The NIC has no option ROM (`romfile=`): the
//! guest never runs it, and it would be one more RAM block to migrate.
//!
//! QEMU throttles migration to 32 MiB/s by default; the peer raises `max-bandwidth` to
//! [`MAX_BANDWIDTH`] so it is not handicapped against host-vmm, which has no bandwidth cap.
//! The downtime limit stays at QEMU's default (300 ms, as host-vmm's `--downtime-ms`).
//! `auto-converge` is off unless a case turns it on ([`QemuMigration::set_auto_converge`]:
//! the memtouch cases, to compare with host-vmm's own auto-converge).

use super::migrate::{Case, Mode, MoveReport, Mover, Moving, pause_between};
use crate::net::{Nics, Side, TwoHosts};
use crate::pingd;
use crate::proc::Background;
use crate::qmp::{MigrationInfo, Qmp};
use crate::vm::{Boot, Vmm};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// QEMU's `max-bandwidth` during the move: 10 GiB/s, i.e. no throttle on these links.
pub const MAX_BANDWIDTH: u64 = 10 << 30;
/// The CPU both QEMUs of a move get (see [`QemuVm::start`]).
pub const MIGRATABLE_CPU: &str = "host,vmware-cpuid-freq=off,-arch-capabilities";
/// TCP port a destination QEMU listens on, on its host's migration address.
pub const PORT: u16 = 4444;
/// How often `query-migrate` is polled.
const POLL: Duration = Duration::from_millis(5);
/// Bound on one move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on a boot until the guest answers ping (SeaBIOS takes ~2 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for a STOP or RESUME event to reach us once the move has ended.
const EVENT_LAG: Duration = Duration::from_secs(5);

/// A path in the temp directory (or /dev/shm) removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn unique(dir: &Path, what: &str) -> TempPath {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempPath(dir.join(format!("roam-qmig-{}-{n}-{what}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One QEMU process and its QMP session. Fields drop in order: QMP, the process (killed by
/// PID), then its socket's file.
pub struct QemuVm {
    qmp: Qmp,
    /// The QEMU process.
    pub vm: Background,
    /// The host it runs on.
    pub side: Side,
    _qmp_path: TempPath,
}

/// What a QEMU boot needs besides the topology.
#[derive(Clone, Debug)]
pub struct QemuSpec {
    /// The guest image.
    pub image: PathBuf,
    /// Guest RAM, MiB.
    pub mem_mib: u32,
    /// Kernel command line.
    pub cmdline: String,
    /// Back guest RAM with this file (shared, for `x-ignore-shared`), or QEMU's own RAM.
    pub shared_ram: Option<PathBuf>,
}

impl QemuVm {
    /// Starts QEMU for `spec` on host `side`: running, or with `incoming` waiting for a guest
    /// (`-incoming defer`; the caller sets capabilities, then `migrate-incoming`).
    pub fn start(hosts: &TwoHosts, side: Side, spec: &QemuSpec, incoming: bool) -> Result<QemuVm> {
        let boot = Boot {
            mem_mib: spec.mem_mib,
            cmdline: &spec.cmdline,
            net: Some(hosts.attach(side, Nics::Virtio)),
            qemu_tsc_leaf: false,
            ..Boot::new(&spec.image)
        };
        let mut cmd = Vmm::QemuPc.command(&boot);
        // The last -cpu wins. QEMU refuses to migrate a guest with `invtsc` unless it is given
        // the TSC frequency, which xtask cannot read without an ioctl; without invtsc there is
        // no frequency leaf either, so the kernel calibrates its TSC against the PIT (-M pc
        // has one). Both QEMUs of a move get the same CPU.
        cmd.args(["-cpu", MIGRATABLE_CPU]);
        // No option ROM on the NIC (the guest boots by -kernel and never runs it): one RAM
        // block fewer to migrate, which host-vmm's guest does not have either.
        cmd.args(["-global", "virtio-net-pci.romfile="]);
        let qmp_path = TempPath::unique(&std::env::temp_dir(), "qmp.sock");
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.0.display()));
        if let Some(file) = &spec.shared_ram {
            cmd.arg("-object")
                .arg(format!(
                    "memory-backend-file,id=mem,size={}M,mem-path={},share=on",
                    spec.mem_mib,
                    file.display()
                ))
                .args(["-machine", "memory-backend=mem"]);
        }
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let mut vm = Background::spawn(&mut cmd)?;
        let qmp = match Qmp::connect(&qmp_path.0, Duration::from_secs(10)) {
            Ok(q) => q,
            Err(e) => {
                std::thread::sleep(Duration::from_millis(100));
                let running = vm.running();
                return Err(e.context(format!(
                    "QEMU on the {} host ({}):\n{}",
                    side.key(),
                    if running { "running" } else { "exited" },
                    vm.output()
                )));
            }
        };
        Ok(QemuVm {
            qmp,
            vm,
            side,
            _qmp_path: qmp_path,
        })
    }

    /// Its QMP session.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }
}

/// What one QEMU move measured.
#[derive(Clone, Debug)]
pub struct QemuMoved {
    /// The source's final `query-migrate`.
    pub info: MigrationInfo,
    /// When `migrate` was sent (seconds since the epoch).
    pub started: f64,
    /// When the source reported `completed`.
    pub ended: f64,
    /// When the destination reported `running`.
    pub running_at: f64,
    /// The source's STOP event (seconds since the epoch, QEMU's stamp).
    pub stopped_at: f64,
    /// The destination's RESUME event (seconds since the epoch, QEMU's stamp).
    pub resumed_at: f64,
}

/// A guest under QEMU on one host of a two-host topology, movable to the other. Fields drop in
/// order: the QEMU process, then the shared RAM file.
pub struct QemuMigration {
    current: QemuVm,
    spec: QemuSpec,
    mode: Mode,
    auto_converge: bool,
    move_bound: Duration,
    /// The source's `query-migrate` just before the last move was cancelled.
    cancelled: Option<MigrationInfo>,
    _shared_ram: Option<TempPath>,
}

impl QemuMigration {
    /// Boots `image` with `mem_mib` on the source host for moves by `mode`, and waits until the
    /// guest answers ping from the client.
    pub fn boot(
        hosts: &TwoHosts,
        image: &Path,
        mem_mib: u32,
        cmdline: &str,
        mode: Mode,
    ) -> Result<QemuMigration> {
        let shared_ram =
            (mode == Mode::ZeroCopy).then(|| TempPath::unique(Path::new("/dev/shm"), "ram"));
        let spec = QemuSpec {
            image: image.to_path_buf(),
            mem_mib,
            cmdline: format!("{} {cmdline}", crate::net::guest_cmdline())
                .trim()
                .to_string(),
            shared_ram: shared_ram.as_ref().map(|p| p.0.clone()),
        };
        let mut current = QemuVm::start(hosts, Side::Source, &spec, false)?;
        hosts.wait_until_guest_answers(&mut current.vm, BOOT_TIMEOUT)?;
        Ok(QemuMigration {
            current,
            spec,
            mode,
            auto_converge: false,
            move_bound: MOVE_TIMEOUT,
            cancelled: None,
            _shared_ram: shared_ram,
        })
    }

    /// Turns QEMU's `auto-converge` capability on or off for the next moves (off by default):
    /// it throttles the vCPU (20 %, then +10 points) when passes do not shrink.
    pub fn set_auto_converge(&mut self, on: bool) {
        self.auto_converge = on;
    }

    /// How long a move may run before it is cancelled (the guest runs on here) and counts as
    /// failed; two minutes by default.
    pub fn set_move_bound(&mut self, bound: Duration) {
        self.move_bound = bound;
    }

    /// Where the last move stood when it was cancelled for running past its bound.
    pub fn cancelled(&self) -> Option<&MigrationInfo> {
        self.cancelled.as_ref()
    }

    /// The host the guest runs on now.
    pub fn side(&self) -> Side {
        self.current.side
    }

    /// The running QEMU.
    pub fn current(&mut self) -> &mut QemuVm {
        &mut self.current
    }

    fn capabilities(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("x-ignore-shared", self.mode == Mode::ZeroCopy),
            ("auto-converge", self.auto_converge),
        ]
    }

    /// Moves the guest to the other host: a destination QEMU waits there, the source sends,
    /// the destination must report `running`, then the source QEMU is ended.
    pub fn move_to_other(&mut self, hosts: &TwoHosts) -> Result<QemuMoved> {
        let to = self.current.side.other();
        // The socket file lives as long as this move.
        let (uri, _socket) = match self.mode {
            Mode::PreCopy => (format!("tcp:{}:{PORT}", to.migration_ip()), None),
            Mode::ZeroCopy => {
                // A path-named socket is reachable from every network namespace.
                let path = TempPath::unique(&std::env::temp_dir(), "mig.sock");
                (format!("unix:{}", path.0.display()), Some(path))
            }
        };
        let caps = self.capabilities();
        let mut dest = QemuVm::start(hosts, to, &self.spec, true)?;
        let prepared = (|| {
            dest.qmp().set_capabilities(&caps)?;
            dest.qmp().migrate_incoming(&uri)
        })();
        prepared
            .with_context(|| format!("preparing the destination QEMU:\n{}", dest.vm.output()))?;
        let src = &mut self.current;
        src.qmp().set_capabilities(&caps)?;
        src.qmp()
            .set_parameters(json!({ "max-bandwidth": MAX_BANDWIDTH }))?;
        let started = pingd::now();
        src.qmp().migrate(&uri)?;
        let waited = src.qmp().wait_for_migration(POLL, self.move_bound);
        if waited.is_err() {
            // Still going (or failed): the guest stays here, as after a rollback.
            self.cancelled = src.qmp().query_migrate().ok();
            let _ = src.qmp().execute("migrate_cancel", None);
        }
        let info = waited.with_context(|| {
            format!(
                "moving to the {} host; destination QEMU said:\n{}",
                to.key(),
                dest.vm.output()
            )
        })?;
        let ended = pingd::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = dest.qmp().run_state()?;
            if state == "running" {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the destination QEMU is `{state}`, not running, 10 s after the move:\n{}",
                    dest.vm.output()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let running_at = pingd::now();
        let stopped_at = self
            .current
            .qmp()
            .wait_for_event("STOP", started, EVENT_LAG)
            .context("the source QEMU's STOP")?;
        let resumed_at = dest
            .qmp()
            .wait_for_event("RESUME", started, EVENT_LAG)
            .context("the destination QEMU's RESUME")?;
        // The old source is done (QEMU's postmigrate state): end it, as host-vmm's source exits.
        self.current = dest;
        Ok(QemuMoved {
            info,
            started,
            ended,
            running_at,
            stopped_at,
            resumed_at,
        })
    }
}

/// QEMU as a [`Mover`].
pub struct QemuMover;

impl Mover for QemuMover {
    fn key(&self) -> &'static str {
        "qemu"
    }

    fn boot(&self, hosts: &TwoHosts, image: &Path, case: Case) -> Result<Box<dyn Moving>> {
        let m = QemuMigration::boot(hosts, image, case.mem_mib, "", case.mode)?;
        Ok(Box::new(m))
    }
}

impl Moving for QemuMigration {
    fn side(&self) -> Side {
        self.current.side
    }

    fn move_once(&mut self, hosts: &TwoHosts) -> Result<MoveReport> {
        let m = self.move_to_other(hosts)?;
        // Under x-ignore-shared, `ram.total` leaves the shared guest RAM out.
        let guest_ram = match self.mode {
            Mode::PreCopy => u64::from(self.spec.mem_mib) << 20,
            Mode::ZeroCopy => 0,
        };
        Ok(MoveReport {
            pause_ms: Some(pause_between(
                m.stopped_at,
                m.resumed_at,
                m.started,
                m.running_at,
            )?),
            vmm_pause_ms: m.info.downtime_ms.map(|d| d as f64),
            ram_blocks_bytes: m.info.ram_total_bytes.map(|t| t.saturating_sub(guest_ram)),
            total_ms: m.info.total_time_ms.map(|t| t as f64),
            bytes: m.info.transferred_bytes,
            memory_copied_bytes: m.info.normal_bytes,
            passes: m.info.dirty_sync_count,
            started: m.started,
            ended: m.ended,
        })
    }

    fn console(&self) -> String {
        self.current.vm.output()
    }
}
