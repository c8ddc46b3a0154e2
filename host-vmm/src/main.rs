//! `host-vmm`: command line, logger and error printing over the `host_vmm` library.

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use host_vmm::config::{NetConfig, VfConfig};
use host_vmm::control;
use host_vmm::{Cmdline, EXIT_NO_GUEST_STATUS, EXIT_VMM_FAILED, MemSize, Outcome, RunConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Roam's KVM VMM: boots a Roam unikernel ELF on one vCPU, and moves it live to another
/// host-vmm (`ctl ... migrate`, `receive`).
///
/// The guest's serial console (COM1) goes to stdout. host-vmm exits with the status the guest
/// writes to port 0xF4, with 124 if the guest stopped without one (triple fault, KVM error),
/// and with 125 if host-vmm itself failed (bad input, no KVM). Set RUST_LOG (e.g.
/// RUST_LOG=debug) for logs on stderr; the default level is warn. `host-vmm ctl` exits with
/// 0, or 1 when the command failed.
#[derive(Debug, Parser)]
#[command(name = "host-vmm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot IMAGE and run it until the guest exits.
    Run(RunArgs),
    /// Send a command to a running host-vmm (one started with --control PATH).
    #[command(after_help = CTL_HELP)]
    Ctl(CtlArgs),
    /// Wait for one guest migrated from another host-vmm, then run it.
    #[command(after_help = RECEIVE_HELP)]
    Receive(ReceiveArgs),
}

/// More on `host-vmm receive`, for its --help.
const RECEIVE_HELP: &str = "\
The source is a running host-vmm told to move its guest here:
  host-vmm ctl SOURCE.sock migrate tcp:ADDR:PORT [--downtime-ms N]
  host-vmm ctl SOURCE.sock migrate unix:PATH [--zero-copy]
Give this side the same devices as the source (--net, --vf, --control; the same MACs,
TAPs of this host). Guest RAM size comes from the source. Pre-copy streams the pages;
zero-copy (unix: only, same machine) maps the source's guest-RAM memfd, so only the
vCPU and device state cross during the pause. Once the guest runs here, host-vmm
announces its MAC (RARP) on virtio-net's TAP, where the guest's traffic is until its
agent re-attaches the VF, plugs the VF in and tells the guest agent
(RESUMED); from then on it behaves like `host-vmm run` (same exit statuses). If the
stream is old, truncated or corrupt, or the state does not fit this side, nothing runs
here, the source is told why (it resumes the guest) and host-vmm exits 125.";

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
  migrate TARGET [--downtime-ms N] [--zero-copy]
                    Move the guest to a `host-vmm receive --listen TARGET`
                    (tcp:ADDR:PORT or unix:PATH). Pre-copy by default: pages are sent while
                    the guest runs, then again as they are dirtied, until the remaining
                    pause is predicted to fit N ms (default 300) at the measured rate;
                    --zero-copy (unix: only, same machine) hands guest RAM over instead.
                    The guest agent moves traffic off the VF first (PREPARE). Progress
                    lines go to stderr; on success it prints
                      migrated mode=... total_ms=... pause_ms=... bytes_sent=...
                      memory_bytes_copied=... passes=... pause_pages=...
                    and the source host-vmm exits 0. On any failure before the destination
                    runs the guest, the guest runs on here and the error says why.

The guest commands need a guest running migration-client (it answers once the guest has
brought up its network) and time out after 5 s; the vf commands need a VM started with --vf.
Exit status: 0 on success; 1 on failure, with one line `host-vmm: error: ...` on stderr.";

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// The control socket of the running host-vmm (its --control PATH).
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
    /// zero-copy).
    #[arg(long, value_name = "ADDRESS")]
    listen: String,

    /// As for `run`: the virtio-net card, tap=NAME[,mac=MAC] (the source's MAC).
    #[arg(long, value_name = "SPEC")]
    net: Option<String>,

    /// As for `run`: the emulated VF, tap=NAME[,mac=MAC].
    #[arg(long, value_name = "SPEC")]
    vf: Option<String>,

    /// As for `run`: the control socket (and the guest agent's channel).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
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

    /// Listen for `host-vmm ctl` on a Unix socket at PATH, and give the guest a
    /// virtio-console for its agent (migration-client). The socket is removed on exit; a
    /// stale one left by a killed host-vmm is replaced, a live one is refused.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
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
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return fail("no command given: use `host-vmm run <IMAGE>` (see host-vmm --help)");
        }
        Err(e) => return fail(&one_line_usage_error(&e)),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Ctl(args) => return ctl(args),
        Command::Receive(args) => receive(args),
    };
    match result {
        Ok(Outcome::MigratedAway) => {
            eprintln!("host-vmm: the guest moved away; exiting");
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

fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let cmdline = Cmdline::new(&args.cmdline).context("--cmdline")?;
    let (net, vf) = devices(args.net.as_deref(), args.vf.as_deref())?;
    let config = RunConfig {
        image: args.image,
        mem: args.mem,
        cmdline,
        net,
        vf,
        control: args.control,
    };
    Ok(host_vmm::run(&config)?)
}

/// Parses --net and --vf (the VF defaults to the card's MAC).
fn devices(
    net: Option<&str>,
    vf: Option<&str>,
) -> anyhow::Result<(Option<NetConfig>, Option<VfConfig>)> {
    let net = net
        .map(str::parse::<NetConfig>)
        .transpose()
        .context("--net")?;
    let vf = vf
        .map(|spec| VfConfig::parse(spec, net.as_ref()))
        .transpose()
        .context("--vf")?;
    Ok((net, vf))
}

fn receive(args: ReceiveArgs) -> anyhow::Result<Outcome> {
    let listen = args
        .listen
        .parse::<host_vmm::migration::target::Address>()
        .context("--listen")?;
    let (net, vf) = devices(args.net.as_deref(), args.vf.as_deref())?;
    let config = host_vmm::migration::destination::ReceiveConfig {
        listen,
        devices: host_vmm::vmm::DeviceConfig {
            net,
            vf,
            control: args.control,
        },
    };
    Ok(host_vmm::migration::destination::receive(
        &config,
        Box::new(std::io::stdout()),
    )?)
}

/// `host-vmm ctl`: one command to a running host-vmm; its output on stdout.
fn ctl(args: CtlArgs) -> ExitCode {
    let command = match control::Command::parse(&args.command) {
        Ok(command) => command,
        Err(e) => return ctl_fail(&format!("{e} (see host-vmm ctl --help)")),
    };
    // A migration's progress lines go to stderr as they come; its quiet steps (the guest
    // agent, the destination's answer) each take at most ~10 s.
    let timeout = match command {
        control::Command::Migrate { .. } => std::time::Duration::from_secs(30),
        _ => control::client::TIMEOUT,
    };
    let mut progress = |line: &str| eprintln!("host-vmm: {line}");
    match control::client::request_with_progress(&args.socket, &command, timeout, &mut progress) {
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
