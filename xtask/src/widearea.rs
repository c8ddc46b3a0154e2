//! Wide-area moves as a user runs them, with either strategy ([`Strategy`]):
//!
//! - **Mobile IP**: `host-vmm home-agent` in the home agent's namespace of a [`Wan`]; moves
//!   to a site are `host-vmm receive --net mip --mobility mip:...`, back home `--net
//!   tap=... --mobility mip:...`;
//! - **network paging**: `host-vmm nat-edge` as the client edge in the WAN router
//!   (translating for the correspondent on `w-c`) and as each site's edge (on its `wan0`);
//!   moves to a site are `host-vmm receive --net nat --mobility nat:edge=...,site=...,loc=...`,
//!   back home `--net tap=... --mobility nat:edge=...`.
//!
//! The guest is booted on its home link either way. For the tests in `tests/widearea.rs`
//! (both strategies) and `cargo xtask bench widearea`.

use crate::ctl::Control;
use crate::net::wan::{
    H1_WAN_IP, HA_HOME_LINK, HA_WAN_IP, ROUTER_CN_IP, ROUTER_CN_LINK, Site, WAN_LINK, Wan,
};
use crate::net::{GUEST_IP, GUEST_MAC, Nics, TAP};
use crate::proc::{self, Background};
use crate::vm::{Boot, Vmm};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Guest RAM: small, so moves over the WAN stay quick.
pub const MEM_MIB: u32 = 64;
/// The security association's SPI.
pub const SPI: u32 = 300;
/// Bound for one move (`ctl migrate`).
const MOVE: Duration = Duration::from_secs(60);
/// What the destination logs when the guest runs there, with the wall-clock time.
const RESUMED_AT: &str = "(resumed at ";
/// The client edge's address: the router's, on the correspondent's link.
pub const CLIENT_EDGE: &str = ROUTER_CN_IP;

/// How a moved guest keeps its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Mobile IPv4: a home agent tunnels to the site.
    Mip,
    /// Network paging: address-translation edges map the address to a location address.
    Nat,
}

impl Strategy {
    /// Its name (`--mobility`'s prefix).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Mip => "mip",
            Strategy::Nat => "nat",
        }
    }
}

/// A file removed on drop.
#[derive(Debug)]
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(tag: &str) -> TempPath {
    TempPath(std::env::temp_dir().join(format!("roam-wa-{tag}-{}", std::process::id())))
}

/// A 128-bit key as hex, different every run.
fn key_hex() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos())
        ^ u128::from(std::process::id());
    format!(
        "{:032x}",
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// Where the guest is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// On its home link, behind the home host.
    Home,
    /// At a foreign site.
    Site(Site),
}

impl Place {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Place::Home => "home",
            Place::Site(Site::A) => "site A",
            Place::Site(Site::B) => "site B",
        }
    }
}

/// The VMM serving the guest now.
pub struct Current {
    /// The host-vmm process.
    pub vm: Background,
    /// Its API socket.
    pub ctl: Control,
    /// Where it runs.
    pub at: Place,
}

/// One move's result.
#[derive(Clone, Debug)]
pub struct Move {
    /// Where to.
    pub to: Place,
    /// host-vmm's `migrated ...` line.
    pub summary: String,
    /// When the guest resumed at the destination (seconds since the epoch).
    pub resumed_at: f64,
    /// When `ctl migrate` started and returned (seconds since the epoch).
    pub started: f64,
    /// See `started`.
    pub ended: f64,
}

/// A wide-area agent the harness runs: the home agent, or an edge.
pub struct Agent {
    /// What it is: `home agent`, `client edge`, `site A edge`, `site B edge`.
    pub name: String,
    /// The process.
    pub process: Background,
    cmd: Command,
    state: TempPath,
}

impl Agent {
    /// Starts `cmd` and waits until it serves (prints `ready`).
    fn start(name: &str, mut cmd: Command, state: TempPath, ready: &str) -> Result<Agent> {
        let mut process =
            Background::spawn(&mut cmd).with_context(|| format!("starting the {name}"))?;
        process
            .wait_for(ready, Duration::from_secs(10))
            .with_context(|| format!("the {name}"))?;
        Ok(Agent {
            name: name.to_owned(),
            process,
            cmd,
            state,
        })
    }

    /// Its state file.
    pub fn state_file(&self) -> &Path {
        &self.state.0
    }
}

/// A guest on a wide-area topology with its home agent (or its edges) running.
pub struct WideArea {
    // Drop order: the guest's VMM, the agents, then the topology and the files.
    /// The VMM serving the guest now.
    pub current: Current,
    /// The home agent, or the client edge and the sites' edges.
    pub agents: Vec<Agent>,
    strategy: Strategy,
    /// The topology.
    pub wan: Wan,
    files: [TempPath; 2],
    port: u16,
    /// The moves' mutual TLS.
    certs: crate::certs::CertDir,
}

impl WideArea {
    /// The topology (one-way WAN delay `delay_ms`), the agents of `strategy`, and `image`
    /// booted on its home link; returns once it answers the correspondent and its agent
    /// answers.
    pub fn start(image: &Path, tag: &str, delay_ms: u32, strategy: Strategy) -> Result<WideArea> {
        let wan = Wan::unique(tag)?.with_delay_ms(delay_ms).up()?;
        let key = key_hex();
        let keys = temp(&format!("{tag}-keys"));
        std::fs::write(&keys.0, format!("spi={SPI} home={GUEST_IP} key={key}\n"))?;
        let client_key = temp(&format!("{tag}-key"));
        std::fs::write(&client_key.0, format!("{key}\n"))?;
        let agent = |ns: &str, args: &[&str], state: &TempPath| {
            let mut cmd = Wan::exec_in(ns, crate::host_vmm_path());
            cmd.args(args)
                .arg("--keys")
                .arg(&keys.0)
                .arg("--state")
                .arg(&state.0)
                .env("RUST_LOG", "info");
            cmd
        };
        let agents = match strategy {
            Strategy::Mip => {
                let state = temp(&format!("{tag}-state"));
                let cmd = agent(
                    &wan.home_agent_ns(),
                    &[
                        "home-agent",
                        "--listen",
                        HA_WAN_IP,
                        "--home-link",
                        HA_HOME_LINK,
                    ],
                    &state,
                );
                vec![Agent::start("home agent", cmd, state, "home agent on")?]
            }
            Strategy::Nat => {
                let state = temp(&format!("{tag}-client-state"));
                let cmd = agent(
                    &wan.router_ns(),
                    &[
                        "nat-edge",
                        "--listen",
                        CLIENT_EDGE,
                        "--role",
                        "client",
                        "--link",
                        ROUTER_CN_LINK,
                    ],
                    &state,
                );
                let mut agents = vec![Agent::start("client edge", cmd, state, "nat edge (")?];
                for site in Site::ALL {
                    let state = temp(&format!("{tag}-{}-state", site.key()));
                    let cmd = agent(
                        &wan.ns(site),
                        &[
                            "nat-edge",
                            "--listen",
                            site.care_of(),
                            "--role",
                            "site",
                            "--link",
                            WAN_LINK,
                        ],
                        &state,
                    );
                    let name = format!("site {} edge", site_letter(site));
                    agents.push(Agent::start(&name, cmd, state, "nat edge (")?);
                }
                agents
            }
        };
        let ctl = Control::unique("wa");
        let cmdline = crate::net::guest_cmdline();
        let boot = Boot {
            mem_mib: MEM_MIB,
            cmdline: &cmdline,
            net: Some(wan.home_attach(Nics::Virtio)),
            control: Some(ctl.path()),
            ..Boot::new(image)
        };
        let mut cmd = Vmm::HostVmm.command(&boot);
        cmd.env("RUST_LOG", "info");
        let vm = Background::spawn(&mut cmd).context("booting the guest at home")?;
        let mut w = WideArea {
            current: Current {
                vm,
                ctl,
                at: Place::Home,
            },
            agents,
            strategy,
            wan,
            files: [keys, client_key],
            port: 7600,
            certs: crate::certs::CertDir::for_tests()?,
        };
        w.wait_answers(Duration::from_secs(60))?;
        w.wait_agent()?;
        Ok(w)
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The `--mobility` setting a receiver for `to` gets.
    pub fn mobility(&self, to: Place) -> String {
        let key = self.files[1].0.display();
        match (self.strategy, to) {
            (Strategy::Mip, _) => {
                format!("mip:ha={HA_WAN_IP},home={GUEST_IP}/24,spi={SPI},key=@{key}")
            }
            (Strategy::Nat, Place::Home) => {
                format!("nat:edge={CLIENT_EDGE},home={GUEST_IP}/24,spi={SPI},key=@{key}")
            }
            (Strategy::Nat, Place::Site(s)) => format!(
                "nat:edge={CLIENT_EDGE},site={},home={GUEST_IP}/24,loc={},spi={SPI},key=@{key}",
                s.care_of(),
                s.location()
            ),
        }
    }

    /// The agent called `name`.
    pub fn agent(&mut self, name: &str) -> Result<&mut Agent> {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .with_context(|| format!("no {name} in this wide-area run"))
    }

    /// What every agent printed, each under its name (for a failure's message).
    pub fn agents_output(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- {} ---\n{}", a.name, a.process.output()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the agent `name` as an operator would (SIGTERM, then SIGKILL after 2 s).
    pub fn stop_agent(&mut self, name: &str) -> Result<()> {
        let agent = self.agent(name)?;
        let _ = Command::new("kill")
            .args(["-TERM", &agent.process.pid().to_string()])
            .status();
        agent.process.stop(Duration::from_secs(2));
        Ok(())
    }

    /// Starts the agent `name` again, with the same keys and state file.
    pub fn restart_agent(&mut self, name: &str) -> Result<()> {
        let agent = self.agent(name)?;
        agent.process = Background::spawn(&mut agent.cmd)
            .with_context(|| format!("restarting the {}", agent.name))?;
        let ready = if name == "home agent" {
            "home agent on"
        } else {
            "nat edge ("
        };
        agent
            .process
            .wait_for(ready, Duration::from_secs(10))
            .with_context(|| format!("the {name}"))
    }

    /// Stops the home agent.
    pub fn stop_home_agent(&mut self) -> Result<()> {
        self.stop_agent("home agent")
    }

    /// Starts the home agent again, with the same keys and state file.
    pub fn restart_home_agent(&mut self) -> Result<()> {
        self.restart_agent("home agent")
    }

    /// Where a receiver for `to` runs, listens, and what its `--net` is.
    fn receiver_spec(&self, to: Place) -> (String, &'static str, String) {
        match to {
            Place::Home => (
                self.wan.home_host_ns(),
                H1_WAN_IP,
                format!("tap={TAP},mac={GUEST_MAC}"),
            ),
            Place::Site(s) => (
                self.wan.ns(s),
                s.care_of(),
                format!("{},mac={GUEST_MAC}", self.strategy.name()),
            ),
        }
    }

    /// The TLS directory of the moves (for a `ctl migrate` of a test's own).
    pub fn tls_dir(&self) -> String {
        self.certs.arg()
    }

    /// Starts `host-vmm receive` for `to`; returns it, its API socket and its address.
    pub fn receiver(&mut self, to: Place) -> Result<(Background, Control, String)> {
        let (ns, ip, net) = self.receiver_spec(to);
        self.port += 1;
        let listen = format!("tcp:{ip}:{}", self.port);
        let ctl = Control::unique("wa");
        let mut cmd = Wan::exec_in(&ns, crate::host_vmm_path());
        cmd.args(["receive", "--listen", &listen, "--net", &net])
            .args(["--tls-dir", &self.certs.arg()])
            .args(["--mobility", &self.mobility(to)])
            .arg("--api-socket")
            .arg(ctl.path())
            .env("RUST_LOG", "info");
        let mut vm = Background::spawn(&mut cmd).context("starting host-vmm receive")?;
        vm.wait_for("waiting for a guest", Duration::from_secs(10))
            .with_context(|| format!("host-vmm receive in {ns}"))?;
        Ok((vm, ctl, listen))
    }

    /// Moves the guest to `to` by pre-copy over the WAN.
    pub fn move_to(&mut self, to: Place) -> Result<Move> {
        let (mut vm, ctl, listen) = self.receiver(to)?;
        let mut cmd = Command::new(crate::host_vmm_path());
        cmd.arg("ctl")
            .arg(self.current.ctl.path())
            .args(["migrate", &listen])
            .args(["--tls-dir", &self.certs.arg()]);
        let started = crate::pingd::now();
        let run = proc::watch(&mut cmd, "", MOVE)?;
        let ended = crate::pingd::now();
        if !run.status.success() {
            bail!(
                "move {} -> {} failed: {}{}\n--- receiver ---\n{}\n--- source ---\n{}",
                self.current.at.name(),
                to.name(),
                run.stderr,
                run.stdout,
                vm.output(),
                self.current.vm.output()
            );
        }
        // The receiver logs the resume with its wall-clock time (right after Running).
        let deadline = Instant::now() + Duration::from_secs(5);
        let resumed_at = loop {
            if let Some(t) = resumed_at(&vm.output()) {
                break t;
            }
            if Instant::now() >= deadline || !vm.running() {
                bail!("the receiver did not log its resume:\n{}", vm.output());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.current = Current { vm, ctl, at: to };
        Ok(Move {
            to,
            summary: run.stdout.trim().to_owned(),
            resumed_at,
            started,
            ended,
        })
    }

    /// Waits until the guest answers one ping from the correspondent; returns how long.
    pub fn wait_answers(&mut self, bound: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < bound {
            if !self.current.vm.running() {
                bail!(
                    "the VMM at {} exited:\n{}",
                    self.current.at.name(),
                    self.current.vm.output()
                );
            }
            let out = self
                .wan
                .correspondent("ping")
                .args(["-c", "1", "-W", "1", GUEST_IP])
                .output()?;
            if out.status.success() {
                return Ok(start.elapsed());
            }
        }
        bail!(
            "the guest at {} does not answer ping within {bound:?}:\n{}",
            self.current.at.name(),
            self.current.vm.output()
        )
    }

    /// Waits until the guest agent answers (a move needs it for PREPARE).
    pub fn wait_agent(&self) -> Result<()> {
        self.current
            .ctl
            .wait_for("the guest agent answering", Duration::from_secs(20), |_| {
                true
            })
            .map(drop)
            .with_context(|| format!("at {}", self.current.at.name()))
    }

    /// The bindings of the agent `name` (`home-agent status` / `nat-edge status`).
    pub fn bindings(&mut self, name: &str) -> Result<String> {
        let command = if name == "home agent" {
            "home-agent"
        } else {
            "nat-edge"
        };
        let state = self.agent(name)?.state_file().to_owned();
        let out = Command::new(crate::host_vmm_path())
            .args([command, "status", "--state"])
            .arg(state)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The nftables ruleset in namespace `ns` (`nft list ruleset`).
    pub fn ruleset(&self, ns: &str) -> Result<String> {
        let out = Wan::exec_in(ns, "nft").args(["list", "ruleset"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `A` or `B`.
fn site_letter(site: Site) -> &'static str {
    match site {
        Site::A => "A",
        Site::B => "B",
    }
}

/// The wall-clock resume time in a receiver's log, if it logged one.
pub fn resumed_at(log: &str) -> Option<f64> {
    log.lines().find_map(resumed_in)
}

/// The last resume time in `log` (a log of several moves).
pub fn resumed_at_last(log: &str) -> Option<f64> {
    log.lines().rev().find_map(resumed_in)
}

fn resumed_in(l: &str) -> Option<f64> {
    {
        let at = l.find(RESUMED_AT)?;
        l[at + RESUMED_AT.len()..]
            .split(')')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_time_is_read_from_the_receivers_log() {
        let log = "[..] migration: guest received (221 pages) after 10ms; running (resumed at 1796632590.483034)\n";
        assert_eq!(resumed_at(log), Some(1_796_632_590.483_034));
        assert_eq!(resumed_at("nothing"), None);
    }
}
