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
//! The two-host variant ([`TwoHosts`], for moves) adds `<p>-h2`, built like `<p>-h1` with its
//! own `tap0` and `tap1` and its uplink `h2` on the switch's `br0`, so a guest with one MAC
//! and IP can run behind either host; and a veth `mig0` straight between the two hosts
//! (198.19.0.1/24 in h1, 198.19.0.2/24 in h2) that carries the migration stream:
//!
//! ```text
//!  <p>-h1 br0 ┬ tap0, tap1 ── source VMM          <p>-h2 br0 ┬ tap0, tap1 ── destination VMM
//!             └ up0 ─veth─ h1 ┐  <p>-sw br0  ┌ h2 ─veth─ up0 ┘
//!  <p>-h1 mig0 198.19.0.1 ──────────── veth ──────────── mig0 198.19.0.2 <p>-h2
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
//!
//! [`Wan`] (module [`wan`]) is the wide-area variant: the same home link behind a home agent,
//! a WAN router with an optional delay line, two foreign sites and a correspondent.

use crate::proc;
use anyhow::{Context, Result, bail};
use std::process::Command;

pub mod wan;
pub use wan::{Site, Wan};

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

/// The addresses of hosts 1 and 2 on their migration link (two-host topologies only).
pub const MIGRATION_IPS: [&str; 2] = ["198.19.0.1", "198.19.0.2"];
/// The migration link's name in both host namespaces.
pub const MIGRATION_LINK: &str = "mig0";

/// The kernel command line that puts a guest on this network.
pub fn guest_cmdline() -> String {
    format!("ip={GUEST_IP}/{PREFIX_LEN} gw={GATEWAY_IP}")
}

/// A prefix unique to this process and call (`rt<tag>-<pid>-<n>`), for tests.
fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("rt{tag}-{}-{n}", std::process::id())
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
        Topology::named(&unique_prefix(tag))
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
        self.run(&mut cmd)
    }

    /// Runs `cmd`, printed first when verbose; fails with its stderr unless it exits 0.
    fn run(&self, cmd: &mut Command) -> Result<()> {
        if self.verbose {
            proc::run(cmd)
        } else {
            let out = cmd
                .output()
                .with_context(|| format!("cannot start `{}`", proc::display(cmd)))?;
            if !out.status.success() {
                bail!(
                    "`{}` failed: {}",
                    proc::display(cmd),
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
        self.up_hosts(1)
    }

    /// Like [`Topology::up`] with `hosts` host namespaces (1 or 2) on the one L2 segment; with
    /// two, also the migration link between them ([`MIGRATION_IPS`]).
    pub fn up_hosts(&self, hosts: u32) -> Result<()> {
        if !(1..=2).contains(&hosts) {
            bail!("a topology has 1 or 2 hosts, not {hosts}");
        }
        if Self::ns_exists(&wan::router_ns(&self.prefix)) {
            bail!(
                "the wide-area test network `{}` uses these names; take it down first (`cargo xtask net down --wan --prefix {0}`) or use another prefix",
                self.prefix
            );
        }
        let (sw, cl) = (self.switch_ns(), self.client_ns());
        let mut all = vec![sw.clone(), cl.clone()];
        all.extend((1..=hosts).map(|n| self.host_ns(n)));
        // Exactly this many hosts: a one-host topology asked for two is rebuilt.
        if all.iter().all(|ns| Self::ns_exists(ns)) && !Self::ns_exists(&self.host_ns(hosts + 1)) {
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
            self.add_switch(Some(&gw))?;

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

            for n in 1..=hosts {
                self.add_host(n)?;
            }
            if hosts == 2 {
                self.add_migration_link()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = self.down();
        }
        result
    }

    /// Adds the switch namespace: its bridge `br0`, with `address` (ADDRESS/PREFIX) if given.
    fn add_switch(&self, address: Option<&str>) -> Result<()> {
        let sw = self.switch_ns();
        self.ip(&["netns", "add", &sw])?;
        self.ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        if let Some(address) = address {
            self.ip(&["-n", &sw, "addr", "add", address, "dev", "br0"])?;
        }
        self.ip(&["-n", &sw, "link", "set", "br0", "up"])
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

    /// A veth between hosts 1 and 2 (`mig0` in each) with [`MIGRATION_IPS`]: the migration
    /// stream's own network, so it neither crosses nor competes with the guest's L2.
    fn add_migration_link(&self) -> Result<()> {
        let (h1, h2) = (self.host_ns(1), self.host_ns(2));
        self.ip(&[
            "-n",
            &h1,
            "link",
            "add",
            MIGRATION_LINK,
            "type",
            "veth",
            "peer",
            "name",
            MIGRATION_LINK,
            "netns",
            &h2,
        ])?;
        for (ns, ip) in [(&h1, MIGRATION_IPS[0]), (&h2, MIGRATION_IPS[1])] {
            let addr = format!("{ip}/{PREFIX_LEN}");
            self.ip(&["-n", ns, "addr", "add", &addr, "dev", MIGRATION_LINK])?;
            self.ip(&["-n", ns, "link", "set", MIGRATION_LINK, "up"])?;
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

/// One of the two hosts of a [`TwoHosts`] topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Host 1, where a guest boots.
    Source,
    /// Host 2, where it moves to first.
    Destination,
}

impl Side {
    /// The host number (1 or 2).
    pub fn host(self) -> u32 {
        match self {
            Side::Source => 1,
            Side::Destination => 2,
        }
    }

    /// The other host.
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }

    /// Short name for messages.
    pub fn key(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }

    /// This host's address on the migration link, where its VMM listens for an incoming guest.
    pub fn migration_ip(self) -> &'static str {
        MIGRATION_IPS[self.host() as usize - 1]
    }
}

/// A client, a switch and two host namespaces on one L2 segment, plus the hosts' migration
/// link: where a guest moves between two VMMs. Removed when dropped, also on failure.
pub struct TwoHosts {
    /// The topology (removed when dropped).
    pub net: TopologyGuard,
    host_ns: [String; 2],
}

impl TwoHosts {
    /// Creates a two-host topology named uniquely after `tag`.
    pub fn up(tag: &str) -> Result<TwoHosts> {
        let net = TopologyGuard(Topology::unique(tag)?);
        net.0.up_hosts(2)?;
        let host_ns = [net.0.host_ns(1), net.0.host_ns(2)];
        Ok(TwoHosts { net, host_ns })
    }

    /// The namespace of host `side`.
    pub fn host_ns(&self, side: Side) -> &str {
        &self.host_ns[side.host() as usize - 1]
    }

    /// The client namespace.
    pub fn client_ns(&self) -> String {
        self.net.0.client_ns()
    }

    /// Where a guest's NICs attach on host `side`: its `tap0` (virtio-net) and, per `nics`,
    /// its `tap1` (the VF), with the one guest MAC. Put it in [`crate::vm::Boot::net`].
    pub fn attach(&self, side: Side, nics: Nics) -> crate::vm::NetAttach<'_> {
        crate::vm::NetAttach {
            netns: self.host_ns(side),
            tap: (nics != Nics::Vf).then_some(TAP),
            vf_tap: (nics != Nics::Virtio).then_some(VF_TAP),
            mac: GUEST_MAC,
        }
    }

    /// Caps the migration link at `mbit` Mbit/s both ways (a `tbf` qdisc on each host's
    /// `mig0`): a link slower than the guest dirties memory, where plain pre-copy cannot
    /// converge (the memtouch cases). Both VMMs' streams go through it alike.
    pub fn limit_migration_link(&self, mbit: u32) -> Result<()> {
        for side in [Side::Source, Side::Destination] {
            let mut tc = self.exec_on(side, "tc");
            tc.args(["qdisc", "replace", "dev", MIGRATION_LINK, "root", "tbf"])
                .args([
                    "rate",
                    &format!("{mbit}mbit"),
                    "burst",
                    "64kb",
                    "latency",
                    "100ms",
                ]);
            crate::proc::run(&mut tc)?;
        }
        Ok(())
    }

    /// A command that runs `program` on host `side` (e.g. `host-vmm receive ...`).
    pub fn exec_on(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        Topology::exec_in(self.host_ns(side), program)
    }

    /// A command that runs `program` in the client namespace.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        Topology::exec_in(&self.client_ns(), program)
    }

    /// Waits until the guest answers one ping from the client, failing early if `vm` (the VMM
    /// that should be serving it) exits.
    pub fn wait_until_guest_answers(
        &self,
        vm: &mut crate::proc::Background,
        bound: std::time::Duration,
    ) -> Result<()> {
        wait_for_ping(|p| self.client(p), vm, bound)
    }
}

/// Pings the guest once a second through `client` until it answers, `vm` exits, or `bound`.
fn wait_for_ping(
    client: impl Fn(&str) -> Command,
    vm: &mut crate::proc::Background,
    bound: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + bound;
    while std::time::Instant::now() < deadline {
        if !vm.running() {
            bail!("the VMM exited before the guest answered:\n{}", vm.output());
        }
        let out = client("ping")
            .args(["-c", "1", "-W", "1", GUEST_IP])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
    }
    bail!(
        "the guest did not answer ping within {bound:?}:\n{}",
        vm.output()
    )
}

/// The MAC every test and benchmark guest uses on its own topology.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// How QEMU runs a guest (ignored under host-vmm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qemu {
    /// KVM, modern virtio-mmio.
    Default,
    /// KVM, legacy virtio-mmio.
    LegacyVirtio,
    /// TCG with `-icount shift=0`.
    TcgIcount,
}

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
        NetGuest::boot(vmm, image, tag, extra_cmdline, nics, control, Qemu::Default)
    }

    /// Like [`NetGuest::start`] under QEMU microvm, its NIC's virtio-mmio transport in the
    /// legacy form (QEMU 7.2's default) instead of the modern one.
    pub fn start_qemu_legacy_virtio(
        image: &std::path::Path,
        tag: &str,
        extra_cmdline: &str,
    ) -> Result<NetGuest> {
        let vmm = crate::vm::Vmm::QemuMicrovm;
        NetGuest::boot(
            vmm,
            image,
            tag,
            extra_cmdline,
            Nics::Virtio,
            false,
            Qemu::LegacyVirtio,
        )
    }

    /// Like [`NetGuest::start`] under QEMU microvm with TCG and `-icount shift=0`: the
    /// guest's TSC counts its instructions.
    pub fn start_qemu_icount(
        image: &std::path::Path,
        tag: &str,
        extra_cmdline: &str,
    ) -> Result<NetGuest> {
        let vmm = crate::vm::Vmm::QemuMicrovm;
        NetGuest::boot(
            vmm,
            image,
            tag,
            extra_cmdline,
            Nics::Virtio,
            false,
            Qemu::TcgIcount,
        )
    }

    fn boot(
        vmm: crate::vm::Vmm,
        image: &std::path::Path,
        tag: &str,
        extra_cmdline: &str,
        nics: Nics,
        control: bool,
        qemu: Qemu,
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
            qemu_legacy_virtio: qemu == Qemu::LegacyVirtio,
            qemu_tcg_icount: qemu == Qemu::TcgIcount,
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
        let client_ns = self.net.0.client_ns();
        wait_for_ping(|p| Topology::exec_in(&client_ns, p), &mut self.vm, bound)
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
    fn two_hosts_are_the_most_and_sides_map_to_hosts() {
        let t = Topology::named("roam").unwrap();
        assert!(t.up_hosts(0).is_err());
        assert!(t.up_hosts(3).is_err());
        assert_eq!(Side::Source.host(), 1);
        assert_eq!(Side::Source.other(), Side::Destination);
        assert_eq!(Side::Destination.migration_ip(), "198.19.0.2");
        // Every address stays inside the benchmarking range 198.18.0.0/15.
        for ip in MIGRATION_IPS {
            assert!(ip.starts_with("198.19."), "{ip}");
        }
    }

    #[test]
    fn guest_cmdline_is_in_the_benchmark_range() {
        assert_eq!(guest_cmdline(), "ip=198.18.0.10/24 gw=198.18.0.1");
    }
}
