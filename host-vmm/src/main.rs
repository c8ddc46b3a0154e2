//! `host-vmm`: command line, logger and error printing over the `host_vmm` library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use host_vmm::api::ApiServer;
use host_vmm::config::{NetConfig, VfConfig};
use host_vmm::control::{self, ApiBackend, Controller, Mode};
use host_vmm::events::EventMonitor;
use host_vmm::vmm::Vmm;
use host_vmm::{
    Cmdline, DeviceConfig, EXIT_NO_GUEST_STATUS, EXIT_VMM_FAILED, MemSize, Outcome, RunConfig,
};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Roam's KVM VMM: boots a Roam unikernel ELF on one vCPU, serves an HTTP+JSON API on a
/// Unix socket (Cloud Hypervisor's endpoints and bodies), and moves its guest live to
/// another host-vmm.
///
/// Three ways to start: `host-vmm --api-socket PATH` waits for `vm.create` + `vm.boot` or
/// `vm.receive-migration` (and runs until `vmm.shutdown`); `host-vmm run IMAGE` boots at
/// once; `host-vmm receive --listen ADDR` waits for a migrated guest. `host-vmm ctl` talks
/// to a running one. The API is described in host-vmm/openapi.yaml.
///
/// The guest's serial console (COM1) goes to stdout through a bounded buffer: the guest
/// never waits for a slow reader; what does not fit is dropped and counted (logged at exit,
/// `ctl PATH counters`). `run` and `receive` exit with the
/// status the guest writes to port 0xF4, with 124 if the guest stopped without one (triple
/// fault, KVM error), with 0 once it moved away or was shut down, and with 125 if host-vmm
/// itself failed (bad input, no KVM). Set RUST_LOG (e.g. RUST_LOG=debug) for logs on
/// stderr; the default level is warn. `host-vmm ctl` exits with 0, or 1 when the command
/// failed.
#[derive(Debug, Parser)]
#[command(name = "host-vmm", version)]
struct Cli {
    /// Serve the API on a Unix socket at PATH (and give the guest a virtio-console for its
    /// agent). Without a command, host-vmm starts with no VM and waits for API calls. The
    /// socket is the operator's only: mode 0600 whatever the umask, and a connection from
    /// a process of another user (not root) is logged and closed unserved. It is removed
    /// on exit; a stale one left by a killed host-vmm is replaced, a live one is refused.
    #[arg(long, value_name = "PATH", global = true, visible_alias = "control")]
    api_socket: Option<PathBuf>,

    /// Write one JSON event per line to PATH (boot, pause, resume, migration phases,
    /// rollback, NIC switches, VF changes), in Cloud Hypervisor's event-monitor format.
    #[arg(long, value_name = "PATH", global = true)]
    event_monitor: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot IMAGE and run it until the guest exits.
    Run(RunArgs),
    /// Send a command to a running host-vmm (one started with --api-socket PATH).
    #[command(after_help = CTL_HELP)]
    Ctl(CtlArgs),
    /// Wait for one guest migrated from another host-vmm, then run it.
    #[command(after_help = RECEIVE_HELP)]
    Receive(ReceiveArgs),
    /// Be a Mobile IPv4 home agent (RFC 5944): keep moved VMs reachable at their home
    /// addresses by tunnelling their packets (IP-in-IP) to where they run now.
    #[command(after_help = HOME_AGENT_HELP)]
    HomeAgent(HomeAgentArgs),
    /// Be an address-translation edge of network paging: map moved VMs' addresses to their
    /// location addresses (nftables), told by the same registrations a home agent takes.
    #[command(after_help = NAT_EDGE_HELP)]
    NatEdge(NatEdgeArgs),
}

/// More on `host-vmm nat-edge`, for its --help.
const NAT_EDGE_HELP: &str = "\
Registrations are Mobile IPv4 Registration Requests, checked as the home agent checks
them (134, 131, 133, 136, 139; the same key file): home address = the VM's address A,
care-of address = its location address L at the site it runs on, Home Agent = this
edge's --listen address; lifetime 0 with care-of = A means the VM is home (its entries
go). Two home addresses may not share a location (129). Lifetimes are capped at 600 s.

An accepted registration is one nftables transaction (`nft -f -`: the old entries
deleted and the new ones added in one batch) on table `ip roam_nat`, applied before the
signed Reply is sent; if nft refuses, the Request is denied with 130 and nothing changes.
The translation is stateless (payload rewrites before routing, untracked), so nothing
is flushed from conntrack and the next packet of every flow follows the new map:
  client edge (in front of the correspondents, --link = their side):
    to A -> to L (prerouting), from L -> from A (postrouting, out of --link)
  site edge (at a foreign site, --link = its WAN side):
    to L -> to A (prerouting, in from --link), from A -> from L (postrouting, out of it)
Without --link the rules match on every interface. The site host itself forwards
(ip_forward=1) and answers ARP for L on its WAN link (e.g. L/32 on that interface);
host-vmm routes A into the VM's TAP (receive --net nat).

With --state FILE the bindings are kept across restarts (`host-vmm nat-edge status
--state FILE` prints them). Runs until SIGTERM or SIGINT (exit 0; the table is removed,
the state file kept); exits 125 with one line on stderr if it cannot start. Events
(--event-monitor, source \"nat-edge\"): started, registration-accepted (with swap-ms),
registration-denied, deregistered, binding-expired, binding-restored, shutdown.";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct NatEdgeArgs {
    #[command(subcommand)]
    action: Option<NatEdgeAction>,

    /// This edge's address, and port for registrations (434 unless given).
    #[arg(long, value_name = "ADDR[:PORT]", required = true)]
    listen: Option<String>,

    /// The security associations: lines `spi=N home=A.B.C.D key=HEX [skew=SECONDS]`.
    #[arg(long, value_name = "FILE", required = true)]
    keys: Option<PathBuf>,

    /// `client` (in front of the correspondents) or `site` (at a foreign site).
    #[arg(long, value_name = "ROLE", required = true)]
    role: Option<String>,

    /// The interface the translation applies on: the correspondents' side of a client
    /// edge, the WAN side of a site edge (default: every interface).
    #[arg(long, value_name = "DEV")]
    link: Option<String>,

    /// Keep the bindings and Identification marks in FILE across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum NatEdgeAction {
    /// Print the live bindings of a state file (a running edge's --state), one a line.
    Status {
        /// The state file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
    },
}

/// More on `host-vmm home-agent`, for its --help.
const HOME_AGENT_HELP: &str = "\
Registrations (UDP, port 434 by default) must carry a Mobile-Home Authentication
Extension (HMAC-MD5) with an SPI the key file gives for the Request's home address, and
an NTP-timestamp Identification within that association's skew of this host's clock and
newer than the last one accepted. Checks, in order: poorly formed (134), authentication
(131), Identification (133, answered with this host's clock to resynchronise), Home
Agent field not one of ours (136), minimal or GRE encapsulation asked for (139). S is
accepted as S=0 with code 1; lifetimes are capped at 600 s; lifetime 0 deregisters
(care-of = home address: every binding of it). Requests that do not authenticate get an
unsigned denial; Replies to the others are signed with their association.

Key file, one association per line (# starts a comment):
  spi=N home=A.B.C.D key=HEX [skew=SECONDS]
N >= 256, at least 128-bit keys, skew 7 s unless given.

For every bound home address the home agent routes HOME/32 into its TUN device (--tun,
mip0 by default), answers ARP for it on the home link (a neighbour proxy entry;
proxy_delay 0) and sends 3 gratuitous ARPs when it first leaves home. Packets read from
the TUN go IP-in-IP (protocol 4, TTL 64, DF cleared) from the --listen address to the
care-of address; IP-in-IP packets from a bound care-of address whose inner source is its
home address (T set) are decapsulated and forwarded. The kernel configuration is made
through rtnetlink; ip_forward is turned on.

With --state FILE every change is written to FILE (atomically); on start the bindings
in it that have not expired are applied again, and replayed Identifications are still
refused. `host-vmm home-agent status --state FILE` prints the live bindings, one a line:
  HOME care-of=ADDR lifetime-left=Ns identification=0x... spi=N reverse=yes|no

Events (--event-monitor, source \"home-agent\"): started, registration-accepted,
registration-denied, deregistered, binding-expired, binding-restored, shutdown.
Runs until SIGTERM or SIGINT (exit 0; the kernel configuration is removed, the state
file kept); exits 125 with one line on stderr if it cannot start.";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct HomeAgentArgs {
    #[command(subcommand)]
    action: Option<HomeAgentAction>,

    /// This home agent's address, and port for registrations (434 unless given); the
    /// source address of the tunnels.
    #[arg(long, value_name = "ADDR[:PORT]", required = true)]
    listen: Option<String>,

    /// The home link: the interface home addresses live on (proxy ARP answers there).
    #[arg(long, value_name = "DEV", required = true)]
    home_link: Option<String>,

    /// The security associations: lines `spi=N home=A.B.C.D key=HEX [skew=SECONDS]`.
    #[arg(long, value_name = "FILE", required = true)]
    keys: Option<PathBuf>,

    /// Keep the bindings and Identification marks in FILE across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// The TUN device packets for bound home addresses are routed into.
    #[arg(long, value_name = "NAME", default_value = host_vmm::mobility::DEFAULT_TUN)]
    tun: String,
}

#[derive(Debug, Subcommand)]
enum HomeAgentAction {
    /// Print the live bindings of a state file (a running home agent's --state), one a
    /// line.
    Status {
        /// The state file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
    },
}

/// More on `host-vmm receive`, for its --help.
const RECEIVE_HELP: &str = "\
The source is a running host-vmm told to move its guest here:
  host-vmm ctl SOURCE.sock migrate tcp:ADDR:PORT --tls-dir DIR [--downtime-ms N]
  host-vmm ctl SOURCE.sock migrate unix:PATH [--zero-copy]
(or the API's vm.send-migration). Give this side the same devices as the source (--net,
--vf, --api-socket for the guest agent's channel; the same MACs,
TAPs of this host). Guest RAM size comes from the source. Pre-copy streams the pages;
zero-copy (unix: only, same machine) maps the source's guest-RAM memfd, so only the
vCPU and device state cross during the pause. Once the guest runs here, host-vmm
announces its MAC (RARP) on virtio-net's TAP, where the guest's traffic is until its
agent re-attaches the VF, plugs the VF in and tells the guest agent
(RESUMED); from then on it behaves like `host-vmm run` (same exit statuses). If, once
the source's Hello is accepted, the stream turns out truncated or corrupt, or the state
does not fit this side, nothing runs here, the source is told why (it resumes the guest)
and host-vmm exits 125.
A host-vmm started with only --api-socket does the same on vm.receive-migration.

Who may send: over tcp: the source must present a client certificate signed by the CA
of --tls-dir (mutual TLS 1.3; the source checks this side's server certificate against
the same CA and the address it connects to); over unix: it must run as this user or as
root. Plain TCP (--insecure-plain-tcp) takes anyone and is for trusted networks only.
Every connection must finish its handshake and send its Hello within 10 s; one that
fails to authenticate, sends garbage, stays silent or asks for more than --max-mem is
dropped (told why when it got that far, logged as a warning), and host-vmm keeps
waiting for the real source.";

/// The commands of `host-vmm ctl`, for its --help.
const CTL_HELP: &str = "\
Commands:
  switch vf         Ask the guest agent to send traffic through the VF; prints active=vf.
  switch virtio     Ask the guest agent to send traffic through virtio-net; prints
                    active=virtio.
  status            Ask the guest agent for the active NIC and each NIC's counters; prints
                      active=vf|virtio|none
                      vf present=yes|no link=up|down rx=N tx=N rx_errors=N tx_dropped=N
                      virtio present=yes|no link=up|down rx=N tx=N rx_errors=N tx_dropped=N
                      switches=N
                    (switches counts every change of the active NIC, explicit or automatic).
  vf link up        Host side: bring the VF's link up (VFLINKS and a PF control message to
                    the guest); prints the VF's state, e.g. vf present=yes link=up.
  vf link down      Host side: take the VF's link down; the guest moves to virtio-net on
                    its own.
  vf remove         Host side: hot-remove the VF (its registers read all ones, its TAP is
                    no longer served); the guest moves to virtio-net on its own.
  vf add            Host side: plug the VF back in, reset, with its link up.
  migrate TARGET [--downtime-ms N] [--zero-copy] [--force] [--tls-dir DIR] [--insecure-plain-tcp]
                    Move the guest to a `host-vmm receive --listen TARGET`
                    (tcp:ADDR:PORT or unix:PATH). A tcp: move runs over mutual TLS with
                    the certificates in DIR (ca-cert.pem, client-cert.pem, client-key.pem;
                    `cargo xtask certs DIR` makes a directory): the destination's
                    certificate must be signed by the CA and name ADDR (an IP SAN for an
                    address, a DNS SAN for a name). Plain TCP only with
                    --insecure-plain-tcp (trusted networks; warns). Pre-copy by default: pages are sent while
                    the guest runs, then again as they are dirtied, until the remaining
                    pause is predicted to fit N ms (default 300) at the measured rate;
                    --zero-copy (unix: only, same machine) hands guest RAM over instead.
                    The guest agent moves traffic off the VF first (PREPARE); a guest
                    that refuses or does not answer within 5 s fails the move, unless
                    --force: host-vmm then removes the VF itself (the guest survives it
                    on virtio-net), moves it anyway and says so. Progress
                    lines go to stderr; on success it prints
                      migrated mode=... total_ms=... pause_ms=... bytes_sent=...
                      memory_bytes_copied=... passes=... pause_pages=...
                      frames_carried=... frames_forwarded=...
                    and the source host-vmm exits 0. On any failure before the destination
                    runs the guest, the guest runs on here and the error says why.
  progress          The running or last migration's progress, as JSON: state, phase,
                    pass, bytes_sent, dirty_pages, rate_mbps, predicted_pause_ms, ...
  cancel            Cancel the running migration: it rolls back and the guest runs on
                    here. Refused once the destination is taking the guest over.
  info              The VM's state and configuration, as JSON (vm.info).
  counters          The devices' host-side counters, as JSON (vm.counters): the serial
                    output dropped because stdout did not keep up, the frames a NIC
                    dropped for a foreign source MAC (tx_spoofed) or an absurd TSO MSS,
                    the KVM_IOEVENTFD calls of the virtio devices (kvm.ioeventfd_calls).
  pause, resume     Pause the VM (device I/O, then the vCPU) and let it run again.

Each command is one call to the host-vmm's HTTP API (host-vmm/openapi.yaml); curl
--unix-socket PATH http://localhost/api/v1/... does the same.

The guest commands need a guest running migration-client (it answers once the guest has
brought up its network) and time out after 5 s; the vf commands need a VM started with --vf.
Exit status: 0 on success; 1 on failure, with one line `host-vmm: error: ...` on stderr.";

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// The API socket of the running host-vmm (its --api-socket PATH).
    #[arg(value_name = "PATH")]
    socket: PathBuf,

    /// The command and its words (see Commands below).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct ReceiveArgs {
    /// Where to wait for the source: tcp:ADDR:PORT (pre-copy) or unix:PATH (pre-copy or
    /// zero-copy). A stale socket at PATH (nobody listening) is replaced; a live one, or
    /// any other kind of file, is refused.
    #[arg(long, value_name = "ADDRESS")]
    listen: String,

    /// For tcp:, mutual TLS with the certificates in DIR (ca-cert.pem, server-cert.pem,
    /// server-key.pem; the layout of Cloud Hypervisor and QEMU; `cargo xtask certs DIR`
    /// makes one): the source must present a client certificate signed by the CA.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,

    /// For tcp:, take the guest in the clear from anyone who connects: no authentication,
    /// no encryption (a warning is logged). Without this or --tls-dir, tcp: is refused.
    #[arg(long)]
    insecure_plain_tcp: bool,

    /// The largest guest RAM taken in (same syntax as run's --mem); a source asking for
    /// more is refused before anything is allocated. Default: any size run accepts.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    max_mem: Option<MemSize>,

    /// As for `run`: the virtio-net card, tap=NAME[,mac=MAC] (the source's MAC). Away from
    /// home: `mip[,mac=MAC]` (the tunnel to the home agent, with a mip: --mobility) or
    /// `nat[,tap=NAME][,mac=MAC]` (a TAP, nat0 by default, this host routes the guest's
    /// address into, with a nat: --mobility).
    #[arg(long, value_name = "SPEC")]
    net: Option<String>,

    /// As for `run`: the emulated VF, tap=NAME[,mac=MAC].
    #[arg(long, value_name = "SPEC")]
    vf: Option<String>,

    /// How the guest keeps its IPv4 address when it arrives from another subnet:
    /// `mip:ha=ADDR,home=HOA/PREFIX,spi=N,key=@FILE[,lifetime=S]` registers it with its
    /// Mobile IPv4 home agent (this host's address as care-of address; no acknowledgment
    /// within 3 s and the move rolls back); with `--net mip` its traffic goes through the
    /// home agent's tunnel, with `--net tap=...` the guest is home and the binding is
    /// removed. `nat:edge=ADDR[,edge=ADDR...],home=A/PREFIX,loc=L,spi=N,key=@FILE
    /// [,site=ADDR][,lifetime=S]` is network paging: the site edge (`site=`, before the
    /// guest pauses) and the client edges (`edge=`, while it is paused) map A to L, its
    /// location address here (`host-vmm nat-edge`; no acknowledgment within 3 s and the
    /// move rolls back); with `--net nat` this host routes A into the guest's TAP, with
    /// `--net tap=...` the guest is home and the edges' entries are removed. Default: none.
    #[arg(long, value_name = "SPEC", default_value = "none")]
    mobility: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The guest kernel: a 64-bit x86_64 ELF executable loaded at or above 1 MiB.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// Guest RAM: a byte count or a whole number with K, M or G (or KiB, MiB, GiB), e.g.
    /// 64M or 1GiB. At least 16 MiB, at most 3 GiB, a multiple of 2 MiB.
    // Hyphen values are taken so that `--mem -1M` is reported as a bad size, not a bad flag.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "128M",
        allow_hyphen_values = true
    )]
    mem: MemSize,

    /// Kernel command line, e.g. "log=debug" (at most 4095 bytes).
    #[arg(
        long,
        value_name = "STR",
        default_value = "",
        allow_hyphen_values = true
    )]
    cmdline: String,

    /// A virtio-net card on a TAP: tap=NAME[,mac=MAC]. The TAP is created (and brought up)
    /// if it does not exist, else host-vmm attaches to it; the default MAC is 52:54:00 plus
    /// a hash of NAME. Needs CAP_NET_ADMIN (or a TAP owned by this user).
    #[arg(long, value_name = "SPEC")]
    net: Option<String>,

    /// An emulated Intel 82599 SR-IOV VF (8086:10ED) on a TAP of its own: tap=NAME[,mac=MAC].
    /// The default MAC is --net's (both NICs share one address), else the one --net would
    /// pick for NAME. `host-vmm ctl PATH vf link up|down` and `vf remove|add` act on it.
    #[arg(long, value_name = "SPEC")]
    vf: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print to stdout and succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // `ctl` fails with status 1, bad usage included (the contract).
        Err(e) if std::env::args().nth(1).as_deref() == Some("ctl") => {
            return ctl_fail(
                &one_line_usage_error(&e).replace("host-vmm --help", "host-vmm ctl --help"),
            );
        }
        Err(e) => return fail(&one_line_usage_error(&e)),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let result = match cli.command {
        Some(Command::Ctl(args)) => return ctl(args),
        Some(Command::Run(args)) => run(args, cli.api_socket, cli.event_monitor),
        Some(Command::Receive(args)) => receive(args, cli.api_socket, cli.event_monitor),
        Some(Command::HomeAgent(HomeAgentArgs {
            action: Some(HomeAgentAction::Status { state }),
            ..
        })) => return home_agent_status(&state),
        Some(Command::HomeAgent(args)) => home_agent(args, cli.api_socket, cli.event_monitor),
        Some(Command::NatEdge(NatEdgeArgs {
            action: Some(NatEdgeAction::Status { state }),
            ..
        })) => return home_agent_status(&state),
        Some(Command::NatEdge(args)) => nat_edge(args, cli.api_socket, cli.event_monitor),
        None => match cli.api_socket {
            Some(path) => serve(path, cli.event_monitor),
            None => {
                return fail(
                    "no command given: use `host-vmm run <IMAGE>`, `host-vmm receive --listen ADDR`, \
                     or `host-vmm --api-socket PATH` to wait for API calls (see host-vmm --help)",
                );
            }
        },
    };
    match result {
        Ok(Outcome::MigratedAway) => {
            eprintln!("host-vmm: the guest moved away; exiting");
            ExitCode::SUCCESS
        }
        Ok(Outcome::ShutDown) => {
            eprintln!("host-vmm: shut down");
            ExitCode::SUCCESS
        }
        Ok(Outcome::GuestExit(status)) => ExitCode::from(status),
        Ok(Outcome::GuestStopped(stop)) => {
            eprintln!("host-vmm: error: {stop}");
            ExitCode::from(EXIT_NO_GUEST_STATUS)
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// The control plane and, with `--api-socket`, its API socket: bound at once (a path in
/// use is bad input too), served from [`ControlPlane::serve`].
struct ControlPlane {
    controller: Arc<Controller>,
    listener: Option<(UnixListener, PathBuf)>,
    // Dropped before the controller: stops serving and removes the socket.
    server: Option<ApiServer>,
}

impl ControlPlane {
    fn start(
        mode: Mode,
        api_socket: Option<PathBuf>,
        event_monitor: Option<PathBuf>,
    ) -> anyhow::Result<ControlPlane> {
        let events = match &event_monitor {
            Some(path) => EventMonitor::open(path)
                .with_context(|| format!("--event-monitor {}", path.display()))?,
            None => EventMonitor::none(),
        };
        let listener = match api_socket {
            Some(path) => Some((host_vmm::api::bind(&path)?, path)),
            None => None,
        };
        Ok(ControlPlane {
            controller: Controller::new(mode, events),
            listener,
            server: None,
        })
    }

    /// Starts answering API requests.
    fn serve(&mut self) -> anyhow::Result<()> {
        if let Some((listener, path)) = self.listener.take() {
            let backend = Arc::new(ApiBackend::new(self.controller.clone()));
            self.server = Some(ApiServer::start(listener, path, backend)?);
        }
        Ok(())
    }
}

/// `host-vmm --api-socket PATH`: no VM until the API says so; runs until `vmm.shutdown`.
fn serve(api_socket: PathBuf, event_monitor: Option<PathBuf>) -> anyhow::Result<Outcome> {
    let mut plane = ControlPlane::start(Mode::Api, Some(api_socket), event_monitor)?;
    plane.serve()?;
    if let Some(server) = &plane.server {
        eprintln!("host-vmm: API on {}", server.path().display());
    }
    let ended = plane.controller.wait();
    drop(plane);
    match ended {
        Some(Err(e)) => Err(anyhow::anyhow!(e)),
        _ => Ok(Outcome::ShutDown),
    }
}

fn run(
    args: RunArgs,
    api_socket: Option<PathBuf>,
    event_monitor: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    let cmdline = Cmdline::new(&args.cmdline).context("--cmdline")?;
    let devices = devices(
        args.net.as_deref(),
        args.vf.as_deref(),
        api_socket.is_some(),
    )?;
    let config = RunConfig {
        image: args.image,
        mem: args.mem,
        cmdline,
        devices: devices.clone(),
    };
    let mut plane = ControlPlane::start(Mode::Cli, api_socket, event_monitor)?;
    let vmm = Vmm::new(&config, Box::new(std::io::stdout()))?;
    // Served once the VM is there: a request never finds it half built.
    let adopted = plane.controller.adopt(vmm, Some(config), devices, None);
    plane.serve()?;
    let outcome = adopted.run();
    plane.controller.linger();
    drop(plane);
    outcome.map_err(|e| anyhow::anyhow!(e))
}

/// Parses --net and --vf (the VF defaults to the card's MAC).
fn devices(net: Option<&str>, vf: Option<&str>, agent: bool) -> anyhow::Result<DeviceConfig> {
    let net = net
        .map(str::parse::<NetConfig>)
        .transpose()
        .context("--net")?;
    let vf = vf
        .map(|spec| VfConfig::parse(spec, net.as_ref()))
        .transpose()
        .context("--vf")?;
    Ok(DeviceConfig {
        net,
        vf,
        agent,
        tunnel: None,
        routed: None,
    })
}

fn receive(
    args: ReceiveArgs,
    api_socket: Option<PathBuf>,
    event_monitor: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    use host_vmm::migration::target::{Address, Protection};
    let listen = args.listen.parse::<Address>().context("--listen")?;
    let protection = Protection {
        tls_dir: args.tls_dir,
        insecure_plain_tcp: args.insecure_plain_tcp,
    };
    protection
        .check(&listen)
        .map_err(|e| anyhow::anyhow!("--listen {e}"))?;
    let devices = devices(
        args.net.as_deref(),
        args.vf.as_deref(),
        api_socket.is_some(),
    )?;
    let mobility = args
        .mobility
        .parse::<mip::Mobility>()
        .context("--mobility")?;
    let mut plane = ControlPlane::start(Mode::Cli, api_socket, event_monitor)?;
    plane.serve()?;
    let local = plane
        .controller
        .receive_migration(
            &listen,
            &protection,
            devices,
            mobility,
            args.max_mem.map(MemSize::bytes),
        )
        .map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    eprintln!("host-vmm: waiting for a guest on {local}");
    let ended = plane.controller.wait();
    drop(plane);
    match ended {
        Some(outcome) => outcome.map_err(|e| anyhow::anyhow!(e)),
        None => Ok(Outcome::ShutDown),
    }
}

/// `host-vmm home-agent status --state FILE`: the live bindings on stdout.
fn home_agent_status(state: &std::path::Path) -> ExitCode {
    match host_vmm::mobility::status(state) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("--state {e}")),
    }
}

/// `host-vmm home-agent`: runs until SIGTERM or SIGINT.
fn home_agent(
    args: HomeAgentArgs,
    api_socket: Option<PathBuf>,
    event_monitor: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    if api_socket.is_some() {
        anyhow::bail!("--api-socket: the home agent has no API socket");
    }
    // clap makes these required when no subcommand is given.
    let (Some(listen), Some(home_link), Some(keys)) = (args.listen, args.home_link, args.keys)
    else {
        anyhow::bail!("--listen, --home-link and --keys are required");
    };
    let listen =
        host_vmm::mobility::parse_listen(&listen).map_err(|e| anyhow::anyhow!("--listen {e}"))?;
    let keys = mip::KeyTable::load(&keys).context("--keys")?;
    let events = match &event_monitor {
        Some(path) => EventMonitor::open(path)
            .with_context(|| format!("--event-monitor {}", path.display()))?,
        None => EventMonitor::none(),
    };
    let config = host_vmm::mobility::Config {
        listen,
        home_link,
        keys,
        state: args.state,
        tun: args.tun,
        events,
    };
    host_vmm::mobility::run(config, |line| eprintln!("host-vmm: {line}"))?;
    Ok(Outcome::ShutDown)
}

/// `host-vmm nat-edge`: runs until SIGTERM or SIGINT.
fn nat_edge(
    args: NatEdgeArgs,
    api_socket: Option<PathBuf>,
    event_monitor: Option<PathBuf>,
) -> anyhow::Result<Outcome> {
    if api_socket.is_some() {
        anyhow::bail!("--api-socket: the nat edge has no API socket");
    }
    // clap makes these required when no subcommand is given.
    let (Some(listen), Some(keys), Some(role)) = (args.listen, args.keys, args.role) else {
        anyhow::bail!("--listen, --keys and --role are required");
    };
    let listen =
        host_vmm::mobility::parse_listen(&listen).map_err(|e| anyhow::anyhow!("--listen {e}"))?;
    let role = role
        .parse::<host_vmm::mobility::nft::Role>()
        .map_err(|e| anyhow::anyhow!("--role {e}"))?;
    let keys = mip::KeyTable::load(&keys).context("--keys")?;
    let events = match &event_monitor {
        Some(path) => EventMonitor::open(path)
            .with_context(|| format!("--event-monitor {}", path.display()))?,
        None => EventMonitor::none(),
    };
    let config = host_vmm::mobility::nat_edge::Config {
        listen,
        role,
        link: args.link,
        keys,
        state: args.state,
        events,
        nft: host_vmm::mobility::nat_edge::NFT.to_owned(),
    };
    host_vmm::mobility::nat_edge::run(config, |line| eprintln!("host-vmm: {line}"))?;
    Ok(Outcome::ShutDown)
}

/// `host-vmm ctl`: one command to a running host-vmm; its output on stdout.
fn ctl(args: CtlArgs) -> ExitCode {
    let command = match control::Command::parse(&args.command) {
        Ok(command) => command,
        Err(e) => return ctl_fail(&format!("{e} (see host-vmm ctl --help)")),
    };
    let mut progress = |line: &str| eprintln!("host-vmm: {line}");
    match control::ctl::run(&args.socket, &command, &mut progress) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => ctl_fail(&e.to_string()),
    }
}

/// Prints a `ctl` failure as one line and returns status 1.
fn ctl_fail(message: &str) -> ExitCode {
    eprintln!("host-vmm: error: {}", message.replace('\n', " "));
    ExitCode::FAILURE
}

/// Prints host-vmm's own failure as one line and returns its exit status.
fn fail(message: &str) -> ExitCode {
    let line = message.replace('\n', " ");
    eprintln!("host-vmm: error: {line}");
    ExitCode::from(EXIT_VMM_FAILED)
}

/// clap's message without its "error: " prefix, usage and tips, joined into one line.
fn one_line_usage_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:")
            || line.starts_with("For more information")
            || line.starts_with("tip:")
        {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    format!("{} (see host-vmm --help)", parts.join(" "))
}
