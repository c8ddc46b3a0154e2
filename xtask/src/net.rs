//! The test network: network namespaces, bridges, veths and TAPs, in 198.18.0.0/15 only.
//!
//! ```text
//!  <p>-cl (client)            <p>-sw (switch)                  <p>-h1 (host of the VM)
//!  eth0 198.18.0.2/24 ─veth─ cl0 ┐                      ┌ h1 ─veth─ up0 ┐
//!                                br0 198.18.0.1/24 (gw) ┘               br0 ┬ tap0 ── guest
//!                                                                           │ (virtio-net)
//!                                                                           └ tap1 ── guest
//!                                                                             (82599 VF)
//! ```
//!
//! The switch namespace is the L2 segment every host joins, so a later host namespace
//! (`<p>-h2`) can take over a guest's MAC without the client noticing a new path. host-vmm (or
//! QEMU) runs inside the host namespace and attaches to `tap0` there, and host-vmm's emulated
//! VF to `tap1`: both NICs carry the guest's one MAC and IP (198.18.0.10/24), and the host's
//! bridge learns which TAP the MAC is behind from the frames the guest sends (a switch of NIC
//! sends a gratuitous ARP through the new one). A TAP nobody opened stays down and gets
//! nothing. Nothing here routes to anything outside the namespaces; `down` deletes them,
//! which removes every interface.

use crate::proc;
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The guest's address and prefix on the test network.
pub const GUEST_IP: &str = "198.18.0.10";
/// The client namespace's address.
pub const CLIENT_IP: &str = "198.18.0.2";
/// The gateway, on the switch's bridge.
pub const GATEWAY_IP: &str = "198.18.0.1";
/// Prefix length of the test subnet.
pub const PREFIX_LEN: u8 = 24;
/// The TAP a guest's virtio-net attaches to inside its host namespace.
pub const TAP: &str = "tap0";
/// The TAP a guest's emulated VF attaches to, on the same bridge as [`TAP`].
pub const VF_TAP: &str = "tap1";

/// The kernel command line that puts a guest on this network.
pub fn guest_cmdline() -> String {
    format!("ip={GUEST_IP}/{PREFIX_LEN} gw={GATEWAY_IP}")
}

/// One instance of the test network, named by a prefix so runs cannot collide.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    verbose: bool,
}

impl Topology {
    /// The topology whose namespaces start with `prefix` (not created yet).
    pub fn named(prefix: &str) -> Result<Topology> {
        // Namespace names become file names under /run/netns; keep them plain.
        if prefix.is_empty()
            || prefix.len() > 24
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("bad network prefix `{prefix}`: use 1-24 letters, digits or '-'");
        }
        Ok(Topology {
            prefix: prefix.to_string(),
            verbose: false,
        })
    }

    /// A topology with a name unique to this process and call, for tests.
    pub fn unique(tag: &str) -> Result<Topology> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Topology::named(&format!("rt{tag}-{}-{n}", std::process::id()))
    }

    /// Print each command as it runs (the `cargo xtask net` commands do).
    pub fn verbose(mut self) -> Topology {
        self.verbose = true;
        self
    }

    /// The client namespace.
    pub fn client_ns(&self) -> String {
        format!("{}-cl", self.prefix)
    }

    /// The switch namespace (the shared L2 segment and the gateway).
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Host namespace `n` (1-based), where a VMM runs and its TAP lives.
    pub fn host_ns(&self, n: u32) -> String {
        format!("{}-h{n}", self.prefix)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        if self.verbose {
            proc::run(&mut cmd)
        } else {
            let out = cmd.output()?;
            if !out.status.success() {
                bail!(
                    "`{}` failed: {}",
                    proc::display(&cmd),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        }
    }

    fn ns_exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    /// Creates the namespaces, bridges, veths and the TAP of host 1. Idempotent: an existing
    /// topology with this prefix is left as it is.
    pub fn up(&self) -> Result<()> {
        let (sw, cl, h1) = (self.switch_ns(), self.client_ns(), self.host_ns(1));
        if [&sw, &cl, &h1].iter().all(|ns| Self::ns_exists(ns)) {
            if self.verbose {
                eprintln!("test network `{}` is already up", self.prefix);
            }
            return Ok(());
        }
        // A half-made topology (an earlier run died midway) is rebuilt from scratch.
        self.down()?;
        let gw = format!("{GATEWAY_IP}/{PREFIX_LEN}");
        let client = format!("{CLIENT_IP}/{PREFIX_LEN}");
        let result = (|| {
            self.ip(&["netns", "add", &sw])?;
            self.ip(&["-n", &sw, "link", "set", "lo", "up"])?;
            self.ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            self.ip(&["-n", &sw, "addr", "add", &gw, "dev", "br0"])?;
            self.ip(&["-n", &sw, "link", "set", "br0", "up"])?;

            self.ip(&["netns", "add", &cl])?;
            self.ip(&["-n", &cl, "link", "set", "lo", "up"])?;
            self.ip(&[
                "-n", &cl, "link", "add", "eth0", "type", "veth", "peer", "name", "cl0", "netns",
                &sw,
            ])?;
            self.ip(&["-n", &cl, "addr", "add", &client, "dev", "eth0"])?;
            self.ip(&["-n", &cl, "link", "set", "eth0", "up"])?;
            self.ip(&["-n", &cl, "route", "add", "default", "via", GATEWAY_IP])?;
            self.ip(&["-n", &sw, "link", "set", "cl0", "master", "br0", "up"])?;

            self.add_host(1)
        })();
        if result.is_err() {
            let _ = self.down();
        }
        result
    }

    /// Adds host namespace `n`: a bridge joining its two TAPs (virtio-net's and the VF's) to
    /// an uplink on the switch.
    pub fn add_host(&self, n: u32) -> Result<()> {
        let (sw, h) = (self.switch_ns(), self.host_ns(n));
        let uplink_peer = format!("h{n}");
        self.ip(&["netns", "add", &h])?;
        self.ip(&["-n", &h, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &h, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &h, "link", "set", "br0", "up"])?;
        self.ip(&[
            "-n",
            &h,
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            &uplink_peer,
            "netns",
            &sw,
        ])?;
        self.ip(&["-n", &h, "link", "set", "up0", "master", "br0", "up"])?;
        self.ip(&[
            "-n",
            &sw,
            "link",
            "set",
            &uplink_peer,
            "master",
            "br0",
            "up",
        ])?;
        for tap in [TAP, VF_TAP] {
            self.ip(&["-n", &h, "tuntap", "add", tap, "mode", "tap"])?;
            self.ip(&["-n", &h, "link", "set", tap, "master", "br0", "up"])?;
        }
        Ok(())
    }

    /// Sets the MTU of every link on the path from the client to host 1's TAPs, so frames of
    /// up to `mtu` bytes reach the guest's NICs (the bad-input tests send oversize frames).
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        let (cl, sw, h1) = (self.client_ns(), self.switch_ns(), self.host_ns(1));
        for (ns, link) in [
            (&cl, "eth0"),
            (&sw, "cl0"),
            (&sw, "h1"),
            (&sw, "br0"),
            (&h1, "up0"),
            (&h1, TAP),
            (&h1, VF_TAP),
            (&h1, "br0"),
        ] {
            self.ip(&["-n", ns, "link", "set", link, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Deletes every namespace of this topology (and with them all its interfaces).
    pub fn down(&self) -> Result<()> {
        let mut names = vec![self.client_ns(), self.switch_ns()];
        // Hosts are numbered from 1; stop at the first gap.
        names.extend(
            (1..)
                .map(|n| self.host_ns(n))
                .take_while(|ns| Self::ns_exists(ns)),
        );
        for ns in names {
            if Self::ns_exists(&ns) {
                self.ip(&["netns", "del", &ns])?;
            }
        }
        Ok(())
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn exec_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

/// Removes the topology when dropped: tests clean up also when they fail.
pub struct TopologyGuard(pub Topology);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.down() {
            eprintln!("cleaning up test network: {e:#}");
        }
    }
}

/// The MAC every test and benchmark guest uses on its own topology.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// Which NICs a guest gets on its host's TAPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nics {
    /// virtio-net on [`TAP`] only.
    Virtio,
    /// The emulated VF on [`VF_TAP`] only (host-vmm).
    Vf,
    /// Both, with one MAC (host-vmm).
    Both,
}

impl Nics {
    /// Short name for messages.
    pub fn key(self) -> &'static str {
        match self {
            Nics::Virtio => "virtio",
            Nics::Vf => "vf",
            Nics::Both => "vf+virtio",
        }
    }
}

/// A guest serving on its own test network. Fields drop in order: the VM, its control
/// socket's file, then the network.
pub struct NetGuest {
    /// The running VMM (killed when dropped).
    pub vm: crate::proc::Background,
    /// Its control socket, when it was booted with one (`--control`).
    pub control: Option<crate::ctl::Control>,
    /// The topology it runs on (removed when dropped).
    pub net: TopologyGuard,
}

impl NetGuest {
    /// Boots `image` under `vmm` on a new topology named after `tag`, with
    /// `extra_cmdline` after the network settings, and waits until it answers ping.
    pub fn start(
        vmm: crate::vm::Vmm,
        image: &std::path::Path,
        tag: &str,
        extra_cmdline: &str,
    ) -> Result<NetGuest> {
        NetGuest::start_with(vmm, image, tag, extra_cmdline, Nics::Virtio, false)
    }

    /// Like [`NetGuest::start`], with the NICs `nics` and, if `control`, a control socket
    /// (host-vmm only for the VF and the socket).
    pub fn start_with(
        vmm: crate::vm::Vmm,
        image: &std::path::Path,
        tag: &str,
        extra_cmdline: &str,
        nics: Nics,
        control: bool,
    ) -> Result<NetGuest> {
        if vmm != crate::vm::Vmm::HostVmm && (nics != Nics::Virtio || control) {
            bail!("the VF and the control socket exist only under host-vmm");
        }
        let net = TopologyGuard(Topology::unique(tag)?);
        net.0.up()?;
        let host_ns = net.0.host_ns(1);
        let cmdline = format!("{} {extra_cmdline}", guest_cmdline());
        let control = control.then(|| crate::ctl::Control::unique(tag));
        let boot = crate::vm::Boot {
            cmdline: cmdline.trim(),
            net: Some(crate::vm::NetAttach {
                netns: &host_ns,
                tap: (nics != Nics::Vf).then_some(TAP),
                vf_tap: (nics != Nics::Virtio).then_some(VF_TAP),
                mac: GUEST_MAC,
            }),
            control: control.as_ref().map(|c| c.path()),
            ..crate::vm::Boot::new(image)
        };
        let vm = crate::proc::Background::spawn(&mut vmm.command(&boot))?;
        let mut guest = NetGuest { vm, control, net };
        guest.wait_until_it_answers(std::time::Duration::from_secs(60))?;
        Ok(guest)
    }

    /// Its control socket; an error if it was booted without one.
    pub fn ctl(&self) -> Result<&crate::ctl::Control> {
        self.control
            .as_ref()
            .context("this guest was booted without a control socket")
    }

    /// A command that runs `program` in the client namespace.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        Topology::exec_in(&self.net.0.client_ns(), program)
    }

    fn wait_until_it_answers(&mut self, bound: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + bound;
        while std::time::Instant::now() < deadline {
            if !self.vm.running() {
                bail!(
                    "the VMM exited before the guest answered:\n{}",
                    self.vm.output()
                );
            }
            let out = self
                .client("ping")
                .args(["-c", "1", "-W", "1", GUEST_IP])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
        }
        bail!(
            "the guest did not answer ping within {bound:?}:\n{}",
            self.vm.output()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(Topology::named("roam").is_ok());
        assert!(Topology::named("").is_err());
        assert!(Topology::named("a/b").is_err());
        assert!(Topology::named(&"x".repeat(25)).is_err());
        let t = Topology::unique("x").unwrap();
        assert!(t.client_ns().starts_with("rtx-"));
        assert_ne!(
            Topology::unique("x").unwrap().client_ns(),
            t.client_ns(),
            "two topologies in one process must not share names"
        );
    }

    #[test]
    fn guest_cmdline_is_in_the_benchmark_range() {
        assert_eq!(guest_cmdline(), "ip=198.18.0.10/24 gw=198.18.0.1");
    }
}
