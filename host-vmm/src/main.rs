//! `host-vmm`: command line, logger and error printing over the `host_vmm` library.

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use host_vmm::config::NetConfig;
use host_vmm::{Cmdline, EXIT_NO_GUEST_STATUS, EXIT_VMM_FAILED, MemSize, Outcome, RunConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Roam's KVM VMM: boots a Roam unikernel ELF on one vCPU.
///
/// The guest's serial console (COM1) goes to stdout. host-vmm exits with the status the guest
/// writes to port 0xF4, with 124 if the guest stopped without one (triple fault, KVM error),
/// and with 125 if host-vmm itself failed (bad input, no KVM). Set RUST_LOG (e.g.
/// RUST_LOG=debug) for logs on stderr; the default level is warn.
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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print to stdout and succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return fail("no command given: use `host-vmm run <IMAGE>` (see host-vmm --help)");
        }
        Err(e) => return fail(&one_line_usage_error(&e)),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let Command::Run(args) = cli.command;
    match run(args) {
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
    let net = args
        .net
        .as_deref()
        .map(str::parse::<NetConfig>)
        .transpose()
        .context("--net")?;
    let config = RunConfig {
        image: args.image,
        mem: args.mem,
        cmdline,
        net,
    };
    Ok(host_vmm::run(&config)?)
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
