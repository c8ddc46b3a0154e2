//! Operator commands: what `host-vmm ctl` accepts and how results are printed (the `status` lines are parsed by tests: change them only with the
//! contract).

use crate::api::types::VfStatus;
use crate::migration::target::Address;
use agent_proto::{Nic, NicStatus, Service, Status};
use std::fmt::{self, Write};
use std::path::PathBuf;

/// The commands, as usage errors list them.
pub const COMMANDS: &str = "switch vf|virtio, status, vf link up|down, vf remove, vf add, migrate tcp:ADDR:PORT|unix:PATH [--downtime-ms N] [--zero-copy] [--force] [--tls-dir DIR] [--insecure-plain-tcp], progress, cancel, info, counters, pause, resume";

/// One operator command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Ask the guest agent to make this NIC the active one.
    Switch(Nic),
    /// Ask the guest agent for the active NIC and per-NIC counters.
    Status,
    /// Take the VF's link up or down (host side).
    VfLink {
        /// Up (true) or down.
        up: bool,
    },
    /// Hot-remove the VF (host side).
    VfRemove,
    /// Plug the VF back in (host side).
    VfAdd,
    /// Move the guest to a `host-vmm receive` listening at `target`.
    Migrate {
        /// The destination.
        target: Address,
        /// The pause to aim for, in ms.
        downtime_ms: u64,
        /// Hand guest RAM over instead of copying it (same machine, `unix:` target).
        zero_copy: bool,
        /// `tcp:` with mutual TLS from this certificate directory (made absolute: the
        /// host-vmm reading it may run elsewhere).
        tls_dir: Option<PathBuf>,
        /// `tcp:` in the clear, asked for by name.
        insecure_plain_tcp: bool,
        /// Move even if the guest agent refuses or misses PREPARE (the host removes the VF).
        force: bool,
    },
    /// The running or last migration's progress (`vm.migration-progress`).
    Progress,
    /// Cancel the running migration (`vm.cancel-migration`).
    Cancel,
    /// The VM's state and configuration (`vm.info`).
    Info,
    /// The devices' host-side counters (`vm.counters`).
    Counters,
    /// Pause the VM (`vm.pause`).
    Pause,
    /// Resume the VM (`vm.resume`).
    Resume,
    // --- Debug commands (not in COMMANDS): a move's guest-agent steps on their own, for
    // tests/agent.rs and for trying the agent by hand. The `migrate` command drives the
    // same AgentLink calls.
    /// `agent prepare`: send the guest agent PREPARE.
    AgentPrepare,
    /// `agent resumed`: send the guest agent RESUMED.
    AgentResumed,
}

/// Longest command text quoted back in an error.
const QUOTE_MAX: usize = 60;

/// A command line that is not one of [`COMMANDS`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// Nothing given.
    #[error("no command given: use one of {COMMANDS}")]
    Empty,
    /// Something else.
    #[error("unknown command `{0}`: use one of {COMMANDS}")]
    Unknown(String),
    /// `migrate` with bad arguments.
    #[error("migrate: {0}")]
    Migrate(String),
}

/// `migrate TARGET [--downtime-ms N] [--zero-copy] [--force] [--tls-dir DIR]
/// [--insecure-plain-tcp]`, flags in any order.
fn parse_migrate(words: &[&str]) -> Result<Command, UsageError> {
    let bad = |m: String| UsageError::Migrate(m);
    let mut target = None;
    let mut downtime_ms = crate::migration::source::DEFAULT_DOWNTIME.as_millis() as u64;
    let mut zero_copy = false;
    let mut tls_dir = None;
    let mut insecure_plain_tcp = false;
    let mut force = false;
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match *w {
            "--zero-copy" => zero_copy = true,
            "--insecure-plain-tcp" => insecure_plain_tcp = true,
            "--tls-dir" => {
                let v = it
                    .next()
                    .ok_or_else(|| bad("--tls-dir needs a directory".into()))?;
                tls_dir =
                    Some(std::path::absolute(v).map_err(|e| bad(format!("--tls-dir `{v}`: {e}")))?);
            }
            "--force" => force = true,
            "--downtime-ms" => {
                let v = it
                    .next()
                    .ok_or_else(|| bad("--downtime-ms needs a value in ms".into()))?;
                downtime_ms = v
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or_else(|| bad(format!("--downtime-ms `{v}`: give 1 to 60000 ms")))?;
            }
            flag if flag.starts_with("--") => return Err(bad(format!("unknown flag `{flag}`"))),
            t if target.is_none() => {
                target = Some(t.parse::<Address>().map_err(|e| bad(e.to_string()))?);
            }
            extra => return Err(bad(format!("unexpected `{extra}`"))),
        }
    }
    let target =
        target.ok_or_else(|| bad("give the destination: tcp:ADDR:PORT or unix:PATH".into()))?;
    if zero_copy && !matches!(target, Address::Unix(_)) {
        return Err(bad(
            "--zero-copy needs a unix:PATH destination on this machine".into(),
        ));
    }
    crate::migration::target::check_choice(&target, tls_dir.is_some(), insecure_plain_tcp)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Command::Migrate {
        target,
        downtime_ms,
        zero_copy,
        tls_dir,
        insecure_plain_tcp,
        force,
    })
}

impl Command {
    /// Parses the words after `host-vmm ctl PATH`.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Command, UsageError> {
        let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
        Ok(match words.as_slice() {
            [] => return Err(UsageError::Empty),
            ["switch", "vf"] => Command::Switch(Nic::Vf),
            ["switch", "virtio"] => Command::Switch(Nic::Virtio),
            ["status"] => Command::Status,
            ["vf", "link", "up"] => Command::VfLink { up: true },
            ["vf", "link", "down"] => Command::VfLink { up: false },
            ["vf", "remove"] => Command::VfRemove,
            ["vf", "add"] => Command::VfAdd,
            ["progress"] => Command::Progress,
            ["cancel"] => Command::Cancel,
            ["info"] => Command::Info,
            ["counters"] => Command::Counters,
            ["pause"] => Command::Pause,
            ["resume"] => Command::Resume,
            ["agent", "prepare"] => Command::AgentPrepare,
            ["agent", "resumed"] => Command::AgentResumed,
            ["migrate", rest @ ..] => parse_migrate(rest)?,
            _ => {
                let mut quoted = String::new();
                for (i, w) in words.iter().enumerate() {
                    let _ = write!(quoted, "{}{w}", if i == 0 { "" } else { " " });
                }
                let mut end = quoted.len().min(QUOTE_MAX);
                while !quoted.is_char_boundary(end) {
                    end -= 1;
                }
                if end < quoted.len() {
                    quoted.truncate(end);
                    quoted.push_str("...");
                }
                return Err(UsageError::Unknown(quoted));
            }
        })
    }

    /// Parses one line as the server receives it (words separated by whitespace).
    pub fn parse_line(line: &str) -> Result<Command, UsageError> {
        Command::parse(&line.split_whitespace().collect::<Vec<_>>())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Switch(nic) => write!(f, "switch {nic}"),
            Command::Status => f.write_str("status"),
            Command::VfLink { up: true } => f.write_str("vf link up"),
            Command::VfLink { up: false } => f.write_str("vf link down"),
            Command::VfRemove => f.write_str("vf remove"),
            Command::VfAdd => f.write_str("vf add"),
            Command::Progress => f.write_str("progress"),
            Command::Cancel => f.write_str("cancel"),
            Command::Info => f.write_str("info"),
            Command::Counters => f.write_str("counters"),
            Command::Pause => f.write_str("pause"),
            Command::Resume => f.write_str("resume"),
            Command::AgentPrepare => f.write_str("agent prepare"),
            Command::AgentResumed => f.write_str("agent resumed"),
            Command::Migrate {
                target,
                downtime_ms,
                zero_copy,
                tls_dir,
                insecure_plain_tcp,
                force,
            } => {
                write!(f, "migrate {target} --downtime-ms {downtime_ms}")?;
                if *zero_copy {
                    f.write_str(" --zero-copy")?;
                }
                if let Some(dir) = tls_dir {
                    write!(f, " --tls-dir {}", dir.display())?;
                }
                if *insecure_plain_tcp {
                    f.write_str(" --insecure-plain-tcp")?;
                }
                if *force {
                    f.write_str(" --force")?;
                }
                Ok(())
            }
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn up_down(b: bool) -> &'static str {
    if b { "up" } else { "down" }
}

/// `active=vf|virtio|none` and a newline.
pub fn format_active(active: Option<Nic>) -> String {
    format!("active={}\n", active.map_or("none", Nic::name))
}

fn format_nic(out: &mut String, name: &str, s: &NicStatus) {
    let _ = writeln!(
        out,
        "{name} present={} link={} rx={} tx={} rx_errors={} tx_dropped={}",
        yes_no(s.present),
        up_down(s.link_up),
        s.rx,
        s.tx,
        s.rx_errors,
        s.tx_dropped
    );
}

/// The four `status` lines of the contract, each ending in a newline.
pub fn format_status(s: &Status) -> String {
    let mut out = format_active(s.active);
    format_nic(&mut out, "vf", &s.vf);
    format_nic(&mut out, "virtio", &s.virtio);
    let _ = writeln!(out, "switches={}", s.switches);
    out
}

/// `status`'s fifth line, from a guest that reports it: the longest time one step of agent
/// work kept the guest's network loop waiting (µs), the steps, the requests answered after
/// more than one step.
pub fn format_service(s: &Service) -> String {
    format!(
        "agent longest_step_us={} steps={} deferred={}\n",
        s.longest_step_ns / 1000,
        s.steps,
        s.deferred
    )
}

/// The VF's state after a host-side command: `vf present=yes|no link=up|down`.
pub fn format_vf(s: VfStatus) -> String {
    format!(
        "vf present={} link={}\n",
        yes_no(s.present),
        up_down(s.link_up)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_and_prints_back_the_same() {
        for line in [
            "switch vf",
            "switch virtio",
            "status",
            "vf link up",
            "vf link down",
            "vf remove",
            "vf add",
            "agent prepare",
            "agent resumed",
            "progress",
            "cancel",
            "info",
            "counters",
            "pause",
            "resume",
        ] {
            let c = Command::parse_line(line).unwrap();
            assert_eq!(c.to_string(), line);
        }
        assert_eq!(
            Command::parse(&["switch", "vf"]),
            Ok(Command::Switch(Nic::Vf))
        );
        assert_eq!(
            Command::parse_line("  vf   link down \n"),
            Ok(Command::VfLink { up: false })
        );
    }

    #[test]
    fn migrate_takes_a_target_and_its_flags_in_any_order() {
        assert_eq!(
            Command::parse_line("migrate tcp:198.18.0.2:7000 --insecure-plain-tcp"),
            Ok(Command::Migrate {
                target: "tcp:198.18.0.2:7000".parse().unwrap(),
                downtime_ms: 300,
                zero_copy: false,
                tls_dir: None,
                insecure_plain_tcp: true,
                force: false,
            })
        );
        let c = Command::parse_line("migrate tcp:198.18.0.2:7000 --tls-dir /etc/roam/tls").unwrap();
        let Command::Migrate { tls_dir, .. } = &c else {
            panic!("{c:?}")
        };
        assert_eq!(
            tls_dir.as_deref(),
            Some(std::path::Path::new("/etc/roam/tls"))
        );
        assert_eq!(Command::parse_line(&c.to_string()), Ok(c));
        // A relative directory is made absolute: the source host-vmm reads it.
        let c = Command::parse_line("migrate tcp:h:1 --tls-dir certs").unwrap();
        let Command::Migrate {
            tls_dir: Some(dir),
            insecure_plain_tcp: false,
            ..
        } = &c
        else {
            panic!("{c:?}")
        };
        assert!(dir.is_absolute() && dir.ends_with("certs"), "{dir:?}");
        let c =
            Command::parse_line("migrate --zero-copy unix:/tmp/m --force --downtime-ms 5").unwrap();
        assert_eq!(
            c,
            Command::Migrate {
                target: "unix:/tmp/m".parse().unwrap(),
                downtime_ms: 5,
                zero_copy: true,
                tls_dir: None,
                insecure_plain_tcp: false,
                force: true,
            }
        );
        // What the client sends is what the server parses.
        assert_eq!(Command::parse_line(&c.to_string()), Ok(c));
        for (bad, says) in [
            ("migrate", "give the destination"),
            ("migrate udp:x:1", "tcp:ADDR:PORT or unix:PATH"),
            ("migrate tcp:h:1 --downtime-ms", "needs a value"),
            ("migrate tcp:h:1 --downtime-ms 0", "1 to 60000"),
            ("migrate tcp:h:1 --downtime-ms x", "1 to 60000"),
            ("migrate tcp:h:1 --zero-copy", "unix:PATH destination"),
            ("migrate tcp:h:1 tcp:h:2", "unexpected"),
            ("migrate tcp:h:1 --fast", "unknown flag"),
            ("migrate tcp:h:1 --tls-dir", "needs a directory"),
            ("migrate tcp:h:1", "--insecure-plain-tcp"),
            (
                "migrate tcp:h:1 --tls-dir d --insecure-plain-tcp",
                "not both",
            ),
            ("migrate unix:/m --insecure-plain-tcp", "tcp: only"),
        ] {
            let e = Command::parse_line(bad).unwrap_err().to_string();
            assert!(e.starts_with("migrate: ") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn anything_else_is_a_usage_error_naming_the_commands() {
        assert_eq!(Command::parse::<&str>(&[]), Err(UsageError::Empty));
        for bad in [
            "switch",
            "switch eth0",
            "status now",
            "vf",
            "vf link",
            "vf link sideways",
            "VF add",
            "agent",
            "agent prepare now",
        ] {
            let e = Command::parse_line(bad).unwrap_err();
            assert_eq!(e, UsageError::Unknown(bad.to_owned()), "{bad}");
            assert!(e.to_string().contains(COMMANDS));
        }
        let long = "x".repeat(200);
        let UsageError::Unknown(quoted) = Command::parse_line(&long).unwrap_err() else {
            panic!()
        };
        assert_eq!(quoted.len(), QUOTE_MAX + 3);
    }

    #[test]
    fn the_service_line_is_in_microseconds() {
        let line = format_service(&Service {
            longest_step_ns: 1_234_999,
            steps: 12,
            deferred: 2,
        });
        assert_eq!(line, "agent longest_step_us=1234 steps=12 deferred=2\n");
    }

    #[test]
    fn status_prints_the_contract_lines() {
        let s = Status {
            active: Some(Nic::Vf),
            vf: NicStatus {
                present: true,
                link_up: true,
                rx: 120,
                tx: 118,
                rx_errors: 0,
                tx_dropped: 1,
            },
            virtio: NicStatus {
                present: true,
                link_up: false,
                rx: 7,
                tx: 3,
                rx_errors: 2,
                tx_dropped: 0,
            },
            switches: 4,
        };
        assert_eq!(
            format_status(&s),
            "active=vf\n\
             vf present=yes link=up rx=120 tx=118 rx_errors=0 tx_dropped=1\n\
             virtio present=yes link=down rx=7 tx=3 rx_errors=2 tx_dropped=0\n\
             switches=4\n"
        );
        assert_eq!(format_active(None), "active=none\n");
        assert_eq!(
            format_vf(VfStatus {
                present: false,
                link_up: false
            }),
            "vf present=no link=down\n"
        );
    }
}
