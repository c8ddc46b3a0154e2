//! The operator's side of a running guest's control socket: `host-vmm ctl PATH COMMAND...`,
//! run and read back as the contract in host-vmm's `control` module fixes it.
//!
//! ```text
//! host-vmm ctl PATH switch vf|virtio     prints active=vf|virtio
//! host-vmm ctl PATH status               prints the lines parse_status (and parse_service) read
//! host-vmm ctl PATH vf link up|down      host side: the VF's link
//! host-vmm ctl PATH vf remove|add        host side: hot-unplug / re-plug the VF
//! ```

use crate::proc;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on one `host-vmm ctl` call (host-vmm gives the guest agent 5 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The status types are the agent protocol's: `host-vmm ctl status` prints the guest's
/// STATUS reply, and [`parse_status`] reads it back.
pub use agent_proto::{Nic, NicStatus, Service, Status};

/// Parses exactly the contract's four `status` lines and the optional fifth (a trailing
/// newline is fine; [`parse_service`] reads the fifth):
///
/// ```text
/// active=vf|virtio|none
/// vf present=yes|no link=up|down rx=N tx=N rx_errors=N tx_dropped=N
/// virtio present=yes|no link=up|down rx=N tx=N rx_errors=N tx_dropped=N
/// switches=N
/// agent longest_step_us=N steps=N deferred=N
/// ```
pub fn parse_status(text: &str) -> Result<Status> {
    let lines: Vec<&str> = text.lines().collect();
    let [active, vf, virtio, switches, rest @ ..] = lines.as_slice() else {
        bail!("status has {} lines, not 4 or 5:\n{text}", lines.len());
    };
    match rest {
        [] => {}
        [agent] if agent.starts_with("agent ") => {}
        _ => bail!("status has lines after `switches=` other than one `agent ...`:\n{text}"),
    }
    let active = match active.strip_prefix("active=") {
        Some("none") => None,
        Some(name) => Some(
            Nic::from_name(name).with_context(|| format!("unknown active NIC in `{active}`"))?,
        ),
        None => bail!("first status line is not `active=...`: `{active}`"),
    };
    let switches = switches
        .strip_prefix("switches=")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("last status line is not `switches=N`: `{switches}`"))?;
    Ok(Status {
        active,
        vf: nic_line(vf, Nic::Vf)?,
        virtio: nic_line(virtio, Nic::Virtio)?,
        switches,
    })
}

/// The `agent longest_step_us=N steps=N deferred=N` line of `status`, if the guest sent
/// one (its agent predates SERVICE otherwise); `longest_step_ns` at µs resolution.
pub fn parse_service(text: &str) -> Result<Option<Service>> {
    let Some(line) = text.lines().find(|l| l.starts_with("agent ")) else {
        return Ok(None);
    };
    let mut words = line.split(' ').skip(1);
    let mut value = |key: &str| -> Result<u64> {
        words
            .next()
            .and_then(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .with_context(|| format!("bad agent status line `{line}`: expected `{key}=N` next"))
    };
    let service = Service {
        longest_step_ns: value("longest_step_us")?.saturating_mul(1000),
        steps: value("steps")?,
        deferred: value("deferred")?,
    };
    if words.next().is_some() {
        bail!("bad agent status line `{line}`: more after `deferred=`");
    }
    Ok(Some(service))
}

/// `NAME present=.. link=.. rx=N tx=N rx_errors=N tx_dropped=N`, every key exactly once and
/// in that order.
fn nic_line(line: &str, nic: Nic) -> Result<NicStatus> {
    let bad = || format!("bad {} status line `{line}`", nic.name());
    let mut words = line.split(' ');
    if words.next() != Some(nic.name()) {
        bail!("{}: it must start with `{}`", bad(), nic.name());
    }
    let mut value = |key: &str| -> Result<&str> {
        words
            .next()
            .and_then(|w| w.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("{}: expected `{key}=` next", bad()))
    };
    let flag = |v: &str, yes: &str, no: &str| -> Result<bool> {
        match v {
            v if v == yes => Ok(true),
            v if v == no => Ok(false),
            _ => bail!("{}: `{v}` is neither {yes} nor {no}", bad()),
        }
    };
    let number = |v: &str| -> Result<u64> { v.parse().with_context(bad) };
    let present = flag(value("present")?, "yes", "no")?;
    let link_up = flag(value("link")?, "up", "down")?;
    let status = NicStatus {
        present,
        link_up,
        rx: number(value("rx")?)?,
        tx: number(value("tx")?)?,
        rx_errors: number(value("rx_errors")?)?,
        tx_dropped: number(value("tx_dropped")?)?,
    };
    if words.next().is_some() {
        bail!("{}: unexpected words at the end", bad());
    }
    Ok(status)
}

/// A guest's control socket and the commands run against it.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    /// We named the socket, so we remove it.
    owned: bool,
}

impl Control {
    /// The socket at `path` (host-vmm creates it with `--control PATH`).
    pub fn at(path: &Path) -> Control {
        Control {
            path: path.to_path_buf(),
            owned: false,
        }
    }

    /// A socket path in the temp directory unique to this process and call. The file is
    /// removed when the returned `Control` drops, in case host-vmm was killed before it could.
    pub fn unique(tag: &str) -> Control {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("roam-ctl-{tag}-{}-{n}.sock", std::process::id());
        Control {
            path: std::env::temp_dir().join(name),
            owned: true,
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `host-vmm ctl PATH ARGS...` (bounded by [`CALL_TIMEOUT`]) and returns its stdout;
    /// a non-zero exit is an error carrying host-vmm's message.
    pub fn call(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(crate::host_vmm_path());
        cmd.arg("ctl").arg(&self.path).args(args);
        let run = proc::watch(&mut cmd, "", CALL_TIMEOUT)?;
        if !run.status.success() {
            bail!(
                "`{}` failed ({}): {}{}",
                proc::display(&cmd),
                run.status,
                run.stderr.trim(),
                run.stdout.trim()
            );
        }
        Ok(run.stdout)
    }

    /// `status`, parsed.
    pub fn status(&self) -> Result<Status> {
        parse_status(&self.call(&["status"])?)
    }

    /// `status`'s agent line: how the guest's agent work shared its CPU with the network.
    pub fn service(&self) -> Result<Option<Service>> {
        let out = self.call(&["status"])?;
        parse_status(&out)?;
        parse_service(&out)
    }

    /// `switch vf|virtio`; fails unless host-vmm answers `active=<nic>`.
    pub fn switch(&self, nic: Nic) -> Result<()> {
        let out = self.call(&["switch", nic.name()])?;
        let want = format!("active={}", nic.name());
        if out.trim() != want {
            bail!(
                "`switch {}` answered `{}`, not `{want}`",
                nic.name(),
                out.trim()
            );
        }
        Ok(())
    }

    /// `vf link up` or `vf link down`.
    pub fn vf_link(&self, up: bool) -> Result<()> {
        self.call(&["vf", "link", if up { "up" } else { "down" }])
            .map(drop)
    }

    /// `vf remove`.
    pub fn vf_remove(&self) -> Result<()> {
        self.call(&["vf", "remove"]).map(drop)
    }

    /// `vf add`.
    pub fn vf_add(&self) -> Result<()> {
        self.call(&["vf", "add"]).map(drop)
    }

    /// Asks for `status` until `want` holds, for at most `bound`; returns the status that
    /// satisfied it, or an error with the last one seen.
    pub fn wait_for(
        &self,
        what: &str,
        bound: Duration,
        want: impl Fn(&Status) -> bool,
    ) -> Result<Status> {
        let deadline = Instant::now() + bound;
        loop {
            let last = match self.status() {
                Ok(status) if want(&status) => return Ok(status),
                Ok(status) => format!("{status:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("status did not show {what} within {bound:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // Only a socket we named; host-vmm normally removed it already.
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "active=vf\n\
        vf present=yes link=up rx=120 tx=118 rx_errors=0 tx_dropped=1\n\
        virtio present=yes link=up rx=7 tx=3 rx_errors=2 tx_dropped=0\n\
        switches=4\n";

    #[test]
    fn status_is_parsed() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(s.active, Some(Nic::Vf));
        assert_eq!(
            s.vf,
            NicStatus {
                present: true,
                link_up: true,
                rx: 120,
                tx: 118,
                rx_errors: 0,
                tx_dropped: 1
            }
        );
        assert_eq!(s.nic(Nic::Virtio).rx, 7);
        assert_eq!(s.virtio.rx_errors, 2);
        assert_eq!(s.switches, 4);
    }

    #[test]
    fn the_agent_line_is_parsed_and_checked() {
        let with = format!("{STATUS}agent longest_step_us=812 steps=40 deferred=2\n");
        assert_eq!(parse_status(&with).unwrap(), parse_status(STATUS).unwrap());
        assert_eq!(
            parse_service(&with).unwrap(),
            Some(Service {
                longest_step_ns: 812_000,
                steps: 40,
                deferred: 2
            })
        );
        assert_eq!(parse_service(STATUS).unwrap(), None, "an older guest");
        for bad in [
            "agent longest_step_us=x steps=1 deferred=0\n",
            "agent steps=1 longest_step_us=1 deferred=0\n",
            "agent longest_step_us=1 steps=1 deferred=0 more=1\n",
        ] {
            assert!(parse_service(&format!("{STATUS}{bad}")).is_err(), "{bad}");
        }
        assert!(parse_status(&format!("{STATUS}other=1\n")).is_err());
    }

    #[test]
    fn removed_vf_and_no_active_nic() {
        let text = "active=none\n\
            vf present=no link=down rx=0 tx=0 rx_errors=0 tx_dropped=0\n\
            virtio present=yes link=down rx=1 tx=1 rx_errors=0 tx_dropped=0\n\
            switches=0";
        let s = parse_status(text).unwrap();
        assert_eq!(s.active, None);
        assert!(!s.vf.present && !s.vf.link_up);
        assert!(s.virtio.present && !s.virtio.link_up);
    }

    #[test]
    fn anything_off_contract_is_refused() {
        let bad = [
            "",
            "active=vf\n",
            &STATUS.replace("active=vf", "active=eth0"),
            &STATUS.replace("active=vf", "active: vf"),
            &STATUS.replace("vf present", "virtio present"),
            &STATUS.replace("present=yes link=up rx=120", "present=maybe link=up rx=120"),
            &STATUS.replace("link=up rx=120", "link=UP rx=120"),
            &STATUS.replace("rx=120", "rx=-1"),
            &STATUS.replace("rx=120", "rx=0x10"),
            &STATUS.replace("tx=118 ", ""),
            &STATUS.replace("tx_dropped=1", "tx_dropped=1 extra=2"),
            &STATUS.replace("switches=4", "switches=four"),
            &format!("{STATUS}trailing line\n"),
        ];
        for text in bad {
            assert!(parse_status(text).is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn unique_paths_differ_and_fit_a_unix_socket() {
        let (a, b) = (Control::unique("t"), Control::unique("t"));
        assert_ne!(a.path(), b.path());
        // sun_path holds 108 bytes including the NUL.
        assert!(a.path().as_os_str().len() < 108);
    }
}
