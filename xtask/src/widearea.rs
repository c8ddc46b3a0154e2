//! Wide-area moves as a user runs them: `host-vmm home-agent` in the home agent's namespace
//! of a [`Wan`], the guest booted on its home link, and moves by pre-copy over the WAN to a
//! site (`host-vmm receive --net mip --mobility mip:...`) or back home (`--net tap=...
//! --mobility mip:...`). For the tests in `tests/widearea.rs` and `cargo xtask bench
//! widearea`.

use crate::ctl::Control;
use crate::net::wan::{H1_WAN_IP, HA_HOME_LINK, HA_WAN_IP, Site, Wan};
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

/// A guest on a wide-area topology with its home agent running.
pub struct WideArea {
    // Drop order: the guest's VMM, the home agent, then the topology and the files.
    /// The VMM serving the guest now.
    pub current: Current,
    /// The home agent.
    pub ha: Background,
    ha_cmd: Command,
    mobility: String,
    /// The topology.
    pub wan: Wan,
    files: [TempPath; 3],
    port: u16,
}

impl WideArea {
    /// The topology (one-way WAN delay `delay_ms`), the home agent, and `image` booted on
    /// its home link; returns once it answers the correspondent and its agent answers.
    pub fn start(image: &Path, tag: &str, delay_ms: u32) -> Result<WideArea> {
        let wan = Wan::unique(tag)?.with_delay_ms(delay_ms).up()?;
        let key = key_hex();
        let keys = temp(&format!("{tag}-keys"));
        std::fs::write(&keys.0, format!("spi={SPI} home={GUEST_IP} key={key}\n"))?;
        let client_key = temp(&format!("{tag}-key"));
        std::fs::write(&client_key.0, format!("{key}\n"))?;
        let state = temp(&format!("{tag}-state"));
        let mobility = format!(
            "mip:ha={HA_WAN_IP},home={GUEST_IP}/24,spi={SPI},key=@{}",
            client_key.0.display()
        );
        let mut ha_cmd = Wan::exec_in(&wan.home_agent_ns(), crate::host_vmm_path());
        ha_cmd
            .args([
                "home-agent",
                "--listen",
                HA_WAN_IP,
                "--home-link",
                HA_HOME_LINK,
            ])
            .arg("--keys")
            .arg(&keys.0)
            .arg("--state")
            .arg(&state.0)
            .env("RUST_LOG", "info");
        let ha = Background::spawn(&mut ha_cmd).context("starting the home agent")?;
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
            ha,
            ha_cmd,
            mobility,
            wan,
            files: [keys, client_key, state],
            port: 7600,
        };
        w.wait_answers(Duration::from_secs(60))?;
        w.wait_agent()?;
        Ok(w)
    }

    /// The `--mobility` setting every receiver gets.
    pub fn mobility(&self) -> &str {
        &self.mobility
    }

    /// The home agent's state file.
    pub fn state_file(&self) -> &Path {
        &self.files[2].0
    }

    /// Stops the home agent (SIGTERM, then SIGKILL).
    pub fn stop_home_agent(&mut self) {
        self.ha.stop(Duration::from_secs(2));
    }

    /// Starts the home agent again, with the same keys and state file.
    pub fn restart_home_agent(&mut self) -> Result<()> {
        self.ha = Background::spawn(&mut self.ha_cmd).context("restarting the home agent")?;
        Ok(())
    }

    /// Where a receiver for `to` runs, listens, and what its `--net` is.
    fn receiver_spec(&self, to: Place) -> (String, &'static str, String) {
        match to {
            Place::Home => (
                self.wan.home_host_ns(),
                H1_WAN_IP,
                format!("tap={TAP},mac={GUEST_MAC}"),
            ),
            Place::Site(s) => (self.wan.ns(s), s.care_of(), format!("mip,mac={GUEST_MAC}")),
        }
    }

    /// Starts `host-vmm receive` for `to`; returns it, its API socket and its address.
    pub fn receiver(&mut self, to: Place) -> Result<(Background, Control, String)> {
        let (ns, ip, net) = self.receiver_spec(to);
        self.port += 1;
        let listen = format!("tcp:{ip}:{}", self.port);
        let ctl = Control::unique("wa");
        let mut cmd = Wan::exec_in(&ns, crate::host_vmm_path());
        cmd.args(["receive", "--listen", &listen, "--net", &net])
            .args(["--mobility", &self.mobility])
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
            .args(["migrate", &listen]);
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

    /// The home agent's bindings (`home-agent status`).
    pub fn bindings(&self) -> Result<String> {
        let out = Command::new(crate::host_vmm_path())
            .args(["home-agent", "status", "--state"])
            .arg(self.state_file())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
