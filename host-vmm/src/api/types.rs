//! The JSON bodies of the API, as serde types: what requests carry and what answers hold.
//!
//! Field names follow Cloud Hypervisor's `cloud-hypervisor.yaml` wherever CH has the
//! endpoint; Roam's extensions (`vf`, `roam.nic`, `roam.vf`, migration progress) follow the
//! same style. Fields a request does not know are ignored (CH tools send many); a known
//! field with the wrong type, or a missing required one, is refused naming the field.
//! `to_*` methods turn a body into the VMM's own, validated configuration; the server runs
//! them before the backend sees the request, so a bad value is a 400 naming its field.

use crate::config::{self, Cmdline, MacAddr, MemSize};
use crate::migration::source;
use crate::migration::target::{Address, Protection};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Default guest RAM when `memory` is absent (the same as `host-vmm run`).
pub const DEFAULT_MEMORY_BYTES: u64 = 128 * config::MIB;
/// Pause a migration aims for when `downtime_ms` is absent.
pub const DEFAULT_DOWNTIME_MS: u64 = 300;
/// Largest `downtime_ms` accepted (as `host-vmm ctl ... migrate --downtime-ms`).
pub const MAX_DOWNTIME_MS: u64 = 60_000;

/// A value that parsed but does not fit: the field (a JSON path such as `net[0].mac`) and
/// why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct FieldError {
    /// Where in the body, e.g. `memory.size`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl ToString) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// vm.create
// ---------------------------------------------------------------------------------------

/// `vm.create`'s body (and `vm.info`'s `config`): the subset of CH's `VmConfig` Roam uses.
///
/// Accepts CH's older top-level `kernel: {path}` and `cmdline: {args}` too; they are folded
/// into `payload`, the only form written back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawVmConfig")]
pub struct VmConfig {
    /// What to boot.
    pub payload: PayloadConfig,
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// virtio-net cards (at most one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// Roam: the emulated 82599 VF, on a TAP of its own (`--vf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf: Option<NetConfig>,
}

/// CH's `PayloadConfig`: the guest kernel and its command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// Path of the guest ELF, on the host.
    pub kernel: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// CH's `MemoryConfig`: guest RAM size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes: 16 MiB to 3 GiB, a multiple of 2 MiB.
    pub size: u64,
}

/// A NIC on a TAP (CH's `NetConfig` subset); also the shape of Roam's `vf`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The TAP interface (created if it does not exist); none with `mip`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tap: String,
    /// Roam: no TAP; the card's frames go through the tunnel to the guest's home agent
    /// (a guest away from home; needs `mobility`). Not for `vf`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mip: bool,
    /// Roam: the TAP (`nat0` unless `tap` names one) is routed, not bridged: this host
    /// routes the guest's address into it (network paging, a guest away from home; needs
    /// a `nat:` `mobility`). Not for `vf`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat: bool,
    /// The guest's MAC, e.g. `52:54:00:12:34:56` (default: derived from the TAP name; the
    /// VF's default is the virtio-net card's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// CH's older `kernel: {path}`.
#[derive(Deserialize)]
struct LegacyKernel {
    path: String,
}

/// CH's older `cmdline: {args}`.
#[derive(Deserialize)]
struct LegacyCmdline {
    args: String,
}

/// `VmConfig` as it arrives, before the older form is folded in.
#[derive(Deserialize)]
struct RawVmConfig {
    #[serde(default)]
    payload: Option<PayloadConfig>,
    #[serde(default)]
    kernel: Option<LegacyKernel>,
    #[serde(default)]
    cmdline: Option<LegacyCmdline>,
    #[serde(default)]
    memory: Option<MemoryConfig>,
    #[serde(default)]
    net: Option<Vec<NetConfig>>,
    #[serde(default)]
    vf: Option<NetConfig>,
}

impl TryFrom<RawVmConfig> for VmConfig {
    type Error = String;

    fn try_from(raw: RawVmConfig) -> Result<VmConfig, String> {
        let payload = match (raw.payload, raw.kernel) {
            (Some(_), Some(_)) => {
                return Err("give the kernel in `payload.kernel` or in the older \
                            `kernel.path`, not both"
                    .into());
            }
            (Some(p), None) => {
                if raw.cmdline.is_some() && p.cmdline.is_some() {
                    return Err("give the command line in `payload.cmdline` or in the \
                                older `cmdline.args`, not both"
                        .into());
                }
                PayloadConfig {
                    cmdline: p.cmdline.or(raw.cmdline.map(|c| c.args)),
                    kernel: p.kernel,
                }
            }
            (None, Some(k)) => PayloadConfig {
                kernel: k.path,
                cmdline: raw.cmdline.map(|c| c.args),
            },
            (None, None) => return Err("missing field `payload`".into()),
        };
        Ok(VmConfig {
            payload,
            memory: raw.memory.unwrap_or(MemoryConfig {
                size: DEFAULT_MEMORY_BYTES,
            }),
            net: raw.net.unwrap_or_default(),
            vf: raw.vf,
        })
    }
}

impl VmConfig {
    /// Checks every value and builds what `host-vmm run` takes (a VM made through the API
    /// always has the guest agent's channel).
    pub fn to_run_config(&self) -> Result<config::RunConfig, FieldError> {
        if self.payload.kernel.is_empty() {
            return Err(FieldError::new("payload.kernel", "empty path"));
        }
        let cmdline = Cmdline::new(self.payload.cmdline.as_deref().unwrap_or(""))
            .map_err(|e| FieldError::new("payload.cmdline", e))?;
        let mem = MemSize::new(self.memory.size).map_err(|e| FieldError::new("memory.size", e))?;
        let (net, vf) = devices(&self.net, self.vf.as_ref())?;
        Ok(config::RunConfig {
            image: PathBuf::from(&self.payload.kernel),
            mem,
            cmdline,
            devices: config::DeviceConfig {
                net,
                vf,
                agent: true,
                tunnel: None,
                routed: None,
            },
        })
    }
}

/// Checks `net` (at most one card) and `vf` and builds the VMM's device configurations,
/// with `--net`/`--vf`'s defaults.
fn devices(
    net: &[NetConfig],
    vf: Option<&NetConfig>,
) -> Result<(Option<config::NetConfig>, Option<config::VfConfig>), FieldError> {
    if net.len() > 1 {
        return Err(FieldError::new(
            "net",
            format!(
                "{} cards given; Roam has at most one virtio-net card",
                net.len()
            ),
        ));
    }
    let net = match net.first() {
        Some(n) if n.mip && n.nat => {
            return Err(FieldError::new(
                "net[0].nat",
                "give mip: true or nat: true, not both",
            ));
        }
        Some(n) if n.nat => {
            let tap = if n.tap.is_empty() {
                config::DEFAULT_NAT_TAP.to_owned()
            } else {
                tap_and_mac(n, "net[0]")?.0
            };
            let mac = n
                .mac
                .as_deref()
                .map(str::parse::<MacAddr>)
                .transpose()
                .map_err(|e| FieldError::new("net[0].mac", e))?;
            Some(config::NetConfig {
                mac: mac.unwrap_or_else(|| MacAddr::for_tap(&tap)),
                tap,
                mip: false,
                nat: true,
            })
        }
        Some(n) if n.mip => {
            if !n.tap.is_empty() {
                return Err(FieldError::new(
                    "net[0].tap",
                    "give a TAP or mip: true, not both",
                ));
            }
            let mac = n
                .mac
                .as_deref()
                .map(str::parse::<MacAddr>)
                .transpose()
                .map_err(|e| FieldError::new("net[0].mac", e))?;
            Some(config::NetConfig {
                tap: String::new(),
                mip: true,
                nat: false,
                mac: mac.unwrap_or_else(|| MacAddr::for_tap("mip")),
            })
        }
        Some(n) => {
            let (tap, mac) = tap_and_mac(n, "net[0]")?;
            Some(config::NetConfig {
                mac: mac.unwrap_or_else(|| MacAddr::for_tap(&tap)),
                mip: false,
                nat: false,
                tap,
            })
        }
        None => None,
    };
    let vf = match vf {
        Some(v) => {
            let (tap, mac) = tap_and_mac(v, "vf")?;
            if net.as_ref().is_some_and(|n| n.tap == tap) {
                return Err(FieldError::new(
                    "vf.tap",
                    format!("TAP `{tap}` is already net[0]'s; the VF needs a TAP of its own"),
                ));
            }
            // Both NICs share one address by default, so the guest can move between them.
            let mac = mac
                .or(net.as_ref().map(|n| n.mac))
                .unwrap_or_else(|| MacAddr::for_tap(&tap));
            Some(config::VfConfig { tap, mac })
        }
        None => None,
    };
    Ok((net, vf))
}

fn tap_and_mac(nic: &NetConfig, at: &str) -> Result<(String, Option<MacAddr>), FieldError> {
    if nic.tap.is_empty() {
        return Err(FieldError::new(
            format!("{at}.tap"),
            "missing: give the TAP's name (or, for net away from home, mip: true)",
        ));
    }
    if !config::valid_ifname(&nic.tap) {
        return Err(FieldError::new(
            format!("{at}.tap"),
            format!(
                "invalid TAP name `{}`: use 1 to 15 characters, no '/', ':' or whitespace, \
                 not . or ..",
                nic.tap
            ),
        ));
    }
    let mac = nic
        .mac
        .as_deref()
        .map(str::parse::<MacAddr>)
        .transpose()
        .map_err(|e| FieldError::new(format!("{at}.mac"), e))?;
    Ok((nic.tap.clone(), mac))
}

// ---------------------------------------------------------------------------------------
// Migration
// ---------------------------------------------------------------------------------------

/// `vm.send-migration`'s body (CH's `SendMigrationData`, its Roam subset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMigrationData {
    /// Where the destination listens: `tcp:ADDR:PORT` or `unix:PATH`.
    pub destination_url: String,
    /// Hand guest RAM over (its memfd) instead of copying it: same machine, `unix:` only.
    #[serde(default)]
    pub local: bool,
    /// The pause to aim for, in ms (1 to 60000).
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// Roam: move even if the guest agent refuses or misses PREPARE (host-vmm removes the
    /// VF itself); the `migration forced` event says why.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Roam: for `tcp:`, the certificate directory of mutual TLS (`ca-cert.pem`,
    /// `client-cert.pem`, `client-key.pem` are read here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// Roam: for `tcp:`, send in the clear, unauthenticated (warns); refused otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plain_tcp: bool,
}

/// The protection for `address` from a body's `tls_dir` and `insecure_plain_tcp`, checked
/// (the directory is read when the move starts).
fn protection(
    address: &Address,
    tls_dir: Option<&PathBuf>,
    insecure_plain_tcp: bool,
) -> Result<Protection, FieldError> {
    let p = Protection {
        tls_dir: tls_dir.cloned(),
        insecure_plain_tcp,
    };
    p.check(address).map_err(|e| {
        let field = if insecure_plain_tcp {
            "insecure_plain_tcp"
        } else {
            "tls_dir"
        };
        FieldError::new(field, e)
    })?;
    Ok(p)
}

fn default_downtime_ms() -> u64 {
    DEFAULT_DOWNTIME_MS
}

impl SendMigrationData {
    /// Checks the body and builds the migration's options.
    pub fn to_options(&self) -> Result<source::Options, FieldError> {
        let target = self
            .destination_url
            .parse::<Address>()
            .map_err(|e| FieldError::new("destination_url", e))?;
        if self.local && !matches!(target, Address::Unix(_)) {
            return Err(FieldError::new(
                "local",
                "a local (zero-copy) migration needs a unix:PATH destination_url",
            ));
        }
        if !(1..=MAX_DOWNTIME_MS).contains(&self.downtime_ms) {
            return Err(FieldError::new(
                "downtime_ms",
                format!("{} ms: give 1 to {MAX_DOWNTIME_MS} ms", self.downtime_ms),
            ));
        }
        let protection = protection(&target, self.tls_dir.as_ref(), self.insecure_plain_tcp)?;
        Ok(source::Options {
            target,
            downtime: Duration::from_millis(self.downtime_ms),
            zero_copy: self.local,
            protection,
            force: self.force,
        })
    }
}

/// `vm.receive-migration`'s body (CH's `ReceiveMigrationData`, plus Roam's devices: the
/// source's MACs on this host's TAPs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveMigrationData {
    /// Where to wait for the source: `tcp:ADDR:PORT` or `unix:PATH`.
    pub receiver_url: String,
    /// Roam: the virtio-net card (at most one), as in `vm.create`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// Roam: the VF, as in `vm.create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf: Option<NetConfig>,
    /// Roam: how the guest keeps its address after a move to another subnet, as
    /// `host-vmm receive --mobility` takes it: `none`,
    /// `mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S]` (Mobile IPv4), or
    /// `nat:edge=ADDR,home=A/PREFIX,loc=L,spi=N,key=@FILE[,site=ADDR][,lifetime=S]`
    /// (network paging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobility: Option<String>,
    /// Roam: for `tcp:`, the certificate directory of mutual TLS (`ca-cert.pem`,
    /// `server-cert.pem`, `server-key.pem` are read here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// Roam: for `tcp:`, take the guest in the clear from anyone (warns); refused otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plain_tcp: bool,
}

/// What `host-vmm receive` needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivePlan {
    /// Where to listen.
    pub listen: Address,
    /// How a connection there is authenticated.
    pub protection: Protection,
    /// How the guest keeps its address if it arrives from another subnet.
    pub mobility: mip::Mobility,
    /// This side's devices (the source's set).
    pub devices: config::DeviceConfig,
}

impl ReceiveMigrationData {
    /// Checks the body and builds the receiving side's plan.
    pub fn to_plan(&self) -> Result<ReceivePlan, FieldError> {
        let listen = self
            .receiver_url
            .parse::<Address>()
            .map_err(|e| FieldError::new("receiver_url", e))?;
        let (net, vf) = devices(&self.net, self.vf.as_ref())?;
        let mobility = match &self.mobility {
            Some(m) => m
                .parse::<mip::Mobility>()
                .map_err(|e| FieldError::new("mobility", e))?,
            None => mip::Mobility::None,
        };
        let protection = protection(&listen, self.tls_dir.as_ref(), self.insecure_plain_tcp)?;
        Ok(ReceivePlan {
            listen,
            protection,
            mobility,
            devices: config::DeviceConfig {
                net,
                vf,
                agent: true,
                tunnel: None,
                routed: None,
            },
        })
    }
}

/// Where a migration is (`vm.migration-progress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// None was started.
    #[default]
    None,
    /// One is under way.
    Running,
    /// The last one finished: the guest runs at the destination.
    Succeeded,
    /// The last one failed: the guest runs here.
    Failed,
    /// The last one was cancelled: the guest runs here.
    Cancelled,
}

/// `vm.migration-progress`'s answer: the current or last migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// Overall state.
    pub state: MigrationState,
    /// The step under way or last reached: `connecting`, `preparing`, `first-pass`, `dirty-pass`,
    /// `handing-over`, `paused`, `completing` (`source::Phase::name`).
    pub phase: String,
    /// Memory passes so far.
    pub pass: u32,
    /// Everything written to the stream.
    pub bytes_sent: u64,
    /// Guest-memory bytes copied.
    pub memory_bytes: u64,
    /// Pages dirtied since the last pass.
    pub dirty_pages: u64,
    /// Measured rate, in Mbit/s.
    pub rate_mbps: f64,
    /// The pause the dirty pages would take now, in ms.
    pub predicted_pause_ms: f64,
    /// Share of its time the vCPU sleeps so pre-copy converges (auto-converge), percent.
    #[serde(default)]
    pub throttle_percent: u8,
    /// Start to finish, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// The guest's pause, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<f64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the guest goes (`tcp:...` or `unix:...`).
    #[serde(default)]
    pub destination: String,
    /// "pre-copy" or "zero-copy".
    #[serde(default)]
    pub mode: String,
    /// The last step, for a person.
    #[serde(default)]
    pub message: String,
    /// A finished move's result line (`migrated mode=... pause_ms=...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Every step's message so far, oldest first (a poller prints those it has not seen).
    #[serde(default)]
    pub log: Vec<String>,
    /// Roam: set when the move went on without the guest agent's PREPARE (`force`): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Roam: NICs and the VF
// ---------------------------------------------------------------------------------------

/// The guest's NICs and their status, as the guest-agent protocol defines them (one
/// definition: `roam-agent-proto`, whose `serde` feature gives them their JSON form).
pub use agent_proto::{Nic, NicStatus, Service, Status};

/// What `roam.nic` asks the guest agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicAction {
    /// Make `nic` the active NIC.
    Switch,
    /// Report the NICs' state.
    Status,
    /// A move's first guest-agent step on its own (debugging).
    Prepare,
    /// A move's last guest-agent step on its own (debugging).
    Resumed,
}

/// `roam.nic`'s body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRequest {
    /// `switch` or `status`.
    pub action: NicAction,
    /// The NIC to switch to (required by `switch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<Nic>,
}

impl NicRequest {
    /// Checks that `switch` names its NIC.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.action == NicAction::Switch && self.nic.is_none() {
            return Err(FieldError::new(
                "nic",
                "`switch` needs the NIC to switch to: \"vf\" or \"virtio\"",
            ));
        }
        Ok(())
    }
}

/// `roam.nic`'s answer: the guest's NICs after the request, and for `prepare` and
/// `resumed` what that step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAnswer {
    /// The active NIC, each NIC's counters, the switch count.
    #[serde(flatten)]
    pub status: Status,
    /// `prepare` only: whether the guest released its VF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_vf: Option<bool>,
    /// `resumed` only: whether the guest re-attached its VF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_attached: Option<bool>,
    /// `resumed` only: whether the guest announced its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<bool>,
    /// `status` only: how the guest agent's work shared the CPU with the network (absent
    /// from a guest whose agent predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
}

impl From<Status> for NicAnswer {
    fn from(status: Status) -> Self {
        NicAnswer {
            status,
            ..NicAnswer::default()
        }
    }
}

/// What `roam.vf` does to the emulated VF (host side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VfAction {
    /// Bring its link up.
    LinkUp,
    /// Take its link down (the guest moves to virtio-net on its own).
    LinkDown,
    /// Hot-remove it.
    Remove,
    /// Plug it back in, reset, link up.
    Add,
}

/// `roam.vf`'s body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfRequest {
    /// `link-up`, `link-down`, `remove` or `add`.
    pub action: VfAction,
}

/// `roam.vf`'s answer: the VF's state, as the VF model defines it.
pub use crate::devices::ixgbevf::VfState as VfStatus;

// ---------------------------------------------------------------------------------------
// vmm.ping, vm.info
// ---------------------------------------------------------------------------------------

/// `vmm.ping`'s answer (CH's `VmmPingResponse`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// The build, e.g. `host-vmm 0.1.0`.
    pub build_version: String,
    /// host-vmm's version.
    pub version: String,
    /// host-vmm's process id.
    pub pid: i64,
    /// Optional features this host-vmm has, e.g. `migration`, `vf`.
    #[serde(default)]
    pub features: Vec<String>,
}

impl VmmPingResponse {
    /// This process's answer, listing `features`.
    pub fn current(features: &[&str]) -> VmmPingResponse {
        VmmPingResponse {
            build_version: concat!("host-vmm ", env!("CARGO_PKG_VERSION")).to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: i64::from(std::process::id()),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        }
    }
}

/// The VM's lifecycle state (CH's `VmState`, plus Roam's `MigratedAway`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Created, not booted.
    Created,
    /// The vCPU runs.
    Running,
    /// Paused (`vm.pause`).
    Paused,
    /// The guest stopped.
    Shutdown,
    /// The guest moved to another host-vmm.
    MigratedAway,
    /// Waiting for a migrated guest (`vm.receive-migration`).
    Receiving,
}

/// `vm.info`'s answer (CH's `VmInfo` subset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The configuration the VM was created with.
    pub config: VmConfig,
    /// Lifecycle state.
    pub state: VmState,
    /// Guest RAM, in bytes.
    pub memory_actual_size: u64,
}

/// The body of every error answer: `{"error": "message"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
}

/// `vm.counters`' answer (CH's shape): counters by device (`kvm`, `serial`, `virtio-net`, `vf`),
/// then by name.
pub type VmCounters = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;
