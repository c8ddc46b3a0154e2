//! The wide-area test network: a VM's home link behind a home agent, a WAN router (with an
//! optional user-space delay line), two foreign sites a VM can move to, and a correspondent
//! that talks to the VM from elsewhere. Namespaces are `<p>-NAME` for a prefix `<p>`;
//! every address is in 198.18.0.0/15.
//!
//! ```text
//!  <p>-h1 (home host)          <p>-sw (switch)           <p>-ha (home agent, ip_forward=1)
//!  tap0, tap1 ─ br0 ─ up0 ─veth─ h1 ─ br0 ─ ha ─veth─ home0 198.18.0.1/24 (the VM's gw)
//!  (the VM, 198.18.0.10/24)          (no address)
//!  ····· home link: one L2 segment, MTU 1500 ·····
//!  wan0 198.18.23.2/24                                    wan0 198.18.20.2/24
//!   │ 198.18.16.0/20 and 198.18.3.0/24 via .23.1           │ default via .20.1
//!   │                                                      │
//!   │        <p>-wan (WAN router, ip_forward=1)            │
//!   └─veth── w-h1 198.18.23.1/24        w-ha 198.18.20.1/24 ─veth─┘
//!            w-a  198.18.21.1/24 ─veth─ wan0 198.18.21.2/24  <p>-fa (site A: its CoA;
//!                                            + 198.18.21.10/32   the VM's location there)
//!            w-b  198.18.22.1/24 ─veth─ wan0 198.18.22.2/24  <p>-fb (site B: its CoA;
//!                                            + 198.18.22.10/32   the VM's location there)
//!            w-c  198.18.3.1/24  ─veth─ eth0 198.18.3.2/24   <p>-cn (correspondent)
//!            dly0 (TUN; only with a delay): the delay line
//!            route 198.18.0.0/24 via 198.18.20.2 (the home agent)
//!  ····· WAN: every veth MTU 1600 ·····
//! ```
//!
//! Every WAN-side veth (both ends, and `dly0`) has MTU 1600 ([`WAN_MTU`]), so a 1500-byte
//! packet tunnelled IP-in-IP (20 more bytes) fits; the home link and the TAPs keep 1500. Every
//! namespace has `rp_filter` 0 (`all`, `default` and each interface): tunnelled traffic
//! arrives with foreign sources. The sites' hosts have default routes through the router; the
//! home host's `wan0` routes only 198.18.16.0/20 (the sites and the home agent's WAN side), for
//! the migration stream, and the correspondent's subnet, so it can answer there; no default
//! route: its guest's traffic is bridged onto the home link and never routed by the host.
//!
//! **Network paging.** Each site's host also owns the VM's location address there
//! ([`Site::location`], a /32 on its `wan0`, so it answers ARP for it) and forwards
//! (`ip_forward=1`): a VM moved there with `--net nat` is routed through a TAP, and the
//! site's `host-vmm nat-edge` translates between that address and the VM's own; the
//! router's client edge translates for the correspondent on `w-c`. Mobile IP ignores both.
//!
//! **Delay line.** The test machines' kernel has no `netem`, so a delay of N ms (one way) is a
//! user-space program, `delayline` (xtask/src/bin/delayline.rs), attached to a TUN device
//! `dly0` in the router. Policy routing in the router sends every forwarded packet through it:
//!
//! ```text
//!  pref 0    lookup local            packets for the router itself: delivered, not delayed
//!  pref 100  iif dly0 lookup main    what the delay line writes back: forwarded as usual
//!  pref 101  iif dly0 unreachable    ... and nothing it writes back can loop into dly0 again
//!  pref 150  iif lo lookup main      the router's own packets: not delayed
//!  pref 200  lookup 100              everything else (forwarded): table 100, default dev dly0
//! ```
//!
//! So a packet crossing the WAN is delayed exactly once (N ms) per crossing and a round trip
//! between two sites takes 2N more; its TTL drops by 2 at the router (it is forwarded twice).
//! With N = 0 there is no TUN, no rule and no process: plain forwarding. If the delay line
//! dies, `dly0` stays (it is made persistent before the program attaches) without a reader,
//! so forwarded packets are dropped rather than silently passed undelayed.

use super::{GATEWAY_IP, GUEST_MAC, Nics, PREFIX_LEN, TAP, Topology, VF_TAP};
use crate::proc;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The home link's prefix (the VM's home subnet), routed by the WAN router to the home agent.
pub const HOME_PREFIX: &str = "198.18.0.0/24";
/// The home agent's address on the home link: the VM's gateway (`gw=`), same as
/// [`GATEWAY_IP`] of the one-host topology.
pub const HA_HOME_IP: &str = GATEWAY_IP;
/// The home agent's home-link interface (a veth to the switch's `br0`).
pub const HA_HOME_LINK: &str = "home0";
/// The home agent's WAN address.
pub const HA_WAN_IP: &str = "198.18.20.2";
/// The router's address towards the home agent (the home agent's default gateway).
pub const ROUTER_HA_IP: &str = "198.18.20.1";
/// Site A's care-of address (its host's WAN address).
pub const SITE_A_IP: &str = "198.18.21.2";
/// The router's address towards site A (site A's default gateway).
pub const ROUTER_A_IP: &str = "198.18.21.1";
/// Site B's care-of address.
pub const SITE_B_IP: &str = "198.18.22.2";
/// The router's address towards site B.
pub const ROUTER_B_IP: &str = "198.18.22.1";
/// The VM's location address at site A (network paging), owned by site A's host.
pub const SITE_A_LOC: &str = "198.18.21.10";
/// The VM's location address at site B.
pub const SITE_B_LOC: &str = "198.18.22.10";
/// The correspondent's address (where ping, kv and iperf3 clients run).
pub const CN_IP: &str = "198.18.3.2";
/// The router's address towards the correspondent (its default gateway).
pub const ROUTER_CN_IP: &str = "198.18.3.1";
/// The home host's WAN address (its end of the migration stream).
pub const H1_WAN_IP: &str = "198.18.23.2";
/// The router's address towards the home host.
pub const ROUTER_H1_IP: &str = "198.18.23.1";
/// What the home host routes through the router: the sites and the home agent's WAN side
/// (198.18.16.0 to 198.18.31.255), not a default route.
pub const H1_WAN_ROUTE: &str = "198.18.16.0/20";
/// The correspondent's subnet, which the home host also routes through the router so it can
/// answer the correspondent (a test pings its WAN address); still no default route.
pub const CN_PREFIX: &str = "198.18.3.0/24";
/// Prefix length of every WAN subnet.
pub const WAN_PREFIX_LEN: u8 = 24;
/// MTU of every WAN-side link: at least 1520, so IP-in-IP-tunnelled 1500-byte packets fit.
pub const WAN_MTU: u32 = 1600;
/// The WAN interface of the home agent, the sites' hosts and the home host.
pub const WAN_LINK: &str = "wan0";
/// The correspondent's interface.
pub const CN_LINK: &str = "eth0";
/// The router's interface towards the home agent.
pub const ROUTER_HA_LINK: &str = "w-ha";
/// The router's interface towards site A.
pub const ROUTER_A_LINK: &str = "w-a";
/// The router's interface towards site B.
pub const ROUTER_B_LINK: &str = "w-b";
/// The router's interface towards the correspondent.
pub const ROUTER_CN_LINK: &str = "w-c";
/// The router's interface towards the home host.
pub const ROUTER_H1_LINK: &str = "w-h1";
/// The switch's end of the home agent's home-link veth.
pub const SWITCH_HA_LINK: &str = "ha";
/// The delay line's TUN device in the router.
pub const DELAY_DEV: &str = "dly0";
/// The routing table that sends forwarded packets into [`DELAY_DEV`].
pub const DELAY_TABLE: u32 = 100;
/// The largest delay [`Wan`] accepts (the delay line's own bound).
pub const MAX_DELAY_MS: u32 = 10_000;

/// `--help` text of `cargo xtask net up|down --wan`: the sites and their addresses.
pub const HELP: &str = "\
Wide-area topology (--wan): namespaces <p>-NAME, drawn in xtask/src/net/wan.rs

  namespace  role                 interface   address          routes
  <p>-sw     home link switch     br0         (none)
  <p>-h1     home host            tap0, tap1  on br0           VM 198.18.0.10/24, gw 198.18.0.1
                                  wan0        198.18.23.2/24   198.18.16.0/20 via 198.18.23.1,
                                                               198.18.3.0/24 via 198.18.23.1
  <p>-ha     home agent           home0       198.18.0.1/24    (on br0; ip_forward=1)
                                  wan0        198.18.20.2/24   default via 198.18.20.1
  <p>-wan    WAN router           w-ha        198.18.20.1/24   198.18.0.0/24 via 198.18.20.2
                                  w-a         198.18.21.1/24
                                  w-b         198.18.22.1/24
                                  w-c         198.18.3.1/24
                                  w-h1        198.18.23.1/24
                                  dly0        (delay line)     only with --wan-delay-ms > 0
  <p>-fa     foreign site A       wan0        198.18.21.2/24   default via 198.18.21.1 (CoA)
                                              198.18.21.10/32  the VM's location (ip_forward=1)
  <p>-fb     foreign site B       wan0        198.18.22.2/24   default via 198.18.22.1 (CoA)
                                              198.18.22.10/32  the VM's location (ip_forward=1)
  <p>-cn     correspondent        eth0        198.18.3.2/24    default via 198.18.3.1

WAN links have MTU 1600 (IP-in-IP fits), the home link 1500; rp_filter is 0 everywhere.
--wan-delay-ms N delays every packet the router forwards by N ms (a round trip gets 2N).";

/// A foreign site a VM can move to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Site A (`<p>-fa`).
    A,
    /// Site B (`<p>-fb`).
    B,
}

impl Site {
    /// Both sites.
    pub const ALL: [Site; 2] = [Site::A, Site::B];

    /// The site host's WAN address: the care-of address of a VM that moved there.
    pub fn care_of(self) -> &'static str {
        match self {
            Site::A => SITE_A_IP,
            Site::B => SITE_B_IP,
        }
    }

    /// The VM's location address at this site (network paging).
    pub fn location(self) -> &'static str {
        match self {
            Site::A => SITE_A_LOC,
            Site::B => SITE_B_LOC,
        }
    }

    /// The router's address on this site's link (the site host's default gateway).
    pub fn router_ip(self) -> &'static str {
        match self {
            Site::A => ROUTER_A_IP,
            Site::B => ROUTER_B_IP,
        }
    }

    /// The router's interface towards this site.
    pub fn router_link(self) -> &'static str {
        match self {
            Site::A => ROUTER_A_LINK,
            Site::B => ROUTER_B_LINK,
        }
    }

    /// The namespace suffix (`fa`, `fb`).
    pub fn key(self) -> &'static str {
        match self {
            Site::A => "fa",
            Site::B => "fb",
        }
    }
}

/// The router's namespace for `prefix` (also used by [`Topology`] to refuse a name clash).
pub(super) fn router_ns(prefix: &str) -> String {
    format!("{prefix}-wan")
}

/// One instance of the wide-area test network, named by a prefix. Built by [`Wan::up`];
/// removed (its delay line killed by PID, its namespaces deleted) when dropped, unless
/// [`Wan::keep`] asked it to stay; removed also when `up` fails half-way, kept or not.
#[derive(Debug)]
pub struct Wan {
    /// The home link's switch and home host, built by the one-host topology's code.
    home: Topology,
    /// The home host's namespace, kept for [`Wan::home_attach`] to lend.
    home_host: String,
    prefix: String,
    delay_ms: u32,
    verbose: bool,
    keep: bool,
    /// Set once `up` starts building: only then does dropping remove anything.
    owned: bool,
    /// Set once `up` finished: a kept topology is left up only then (a failed `up` is
    /// removed, kept or not).
    complete: bool,
    delayline: Option<DelayLine>,
}

/// The running delay line.
#[derive(Debug)]
enum DelayLine {
    /// Our child, stopped through its lifeline (stdin) when the topology is dropped.
    Attached(proc::Background),
    /// Left running for a later `net down --wan` (found there by namespace and PID).
    Detached { pid: u32, log: PathBuf },
}

impl Wan {
    /// The topology whose namespaces start with `prefix` (not created yet), without delay.
    pub fn named(prefix: &str) -> Result<Wan> {
        let home = Topology::named(prefix)?;
        Ok(Wan {
            home_host: home.host_ns(1),
            home,
            prefix: prefix.to_string(),
            delay_ms: 0,
            verbose: false,
            keep: false,
            owned: false,
            complete: false,
            delayline: None,
        })
    }

    /// A topology with a name unique to this process and call, for tests.
    pub fn unique(tag: &str) -> Result<Wan> {
        Wan::named(&super::unique_prefix(tag))
    }

    /// Delays every packet the router forwards by `ms` (0: no delay line).
    pub fn with_delay_ms(mut self, ms: u32) -> Wan {
        self.delay_ms = ms;
        self
    }

    /// Prints each step and command (the `cargo xtask net` commands do).
    pub fn verbose(mut self) -> Wan {
        self.home.verbose = true;
        self.verbose = true;
        self
    }

    /// Leaves the topology up (and its delay line running, detached, logging to a file)
    /// when this value is dropped: for `cargo xtask net up --wan`.
    pub fn keep(mut self) -> Wan {
        self.keep = true;
        self
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The one-way delay of the router, in ms.
    pub fn delay_ms(&self) -> u32 {
        self.delay_ms
    }

    /// Whether the router's namespace exists (a wide-area network with this prefix is up).
    pub fn router_ns_exists(&self) -> bool {
        Topology::ns_exists(&self.router_ns())
    }

    /// The switch namespace (the home link's bridge `br0`).
    pub fn switch_ns(&self) -> String {
        self.home.switch_ns()
    }

    /// The home host's namespace: where the VM's VMM runs at home, on `tap0`/`tap1`.
    pub fn home_host_ns(&self) -> String {
        self.home.host_ns(1)
    }

    /// The home agent's namespace.
    pub fn home_agent_ns(&self) -> String {
        format!("{}-ha", self.prefix)
    }

    /// The WAN router's namespace (and the delay line's).
    pub fn router_ns(&self) -> String {
        router_ns(&self.prefix)
    }

    /// The namespace of `site`'s host.
    pub fn ns(&self, site: Site) -> String {
        format!("{}-{}", self.prefix, site.key())
    }

    /// The correspondent's namespace (where clients run).
    pub fn correspondent_ns(&self) -> String {
        format!("{}-cn", self.prefix)
    }

    /// `site`'s care-of address.
    pub fn care_of(&self, site: Site) -> &'static str {
        site.care_of()
    }

    /// Every namespace of this topology, in the order `up` creates them.
    pub fn namespaces(&self) -> Vec<String> {
        vec![
            self.switch_ns(),
            self.home_host_ns(),
            self.home_agent_ns(),
            self.router_ns(),
            self.ns(Site::A),
            self.ns(Site::B),
            self.correspondent_ns(),
        ]
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn exec_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        Topology::exec_in(ns, program)
    }

    /// A command that runs `program` in the correspondent's namespace.
    pub fn correspondent(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        Topology::exec_in(&self.correspondent_ns(), program)
    }

    /// Where a guest's NICs attach at home: `tap0` (virtio-net) and, per `nics`, `tap1` (the
    /// VF) in the home host, with the one guest MAC. Put it in [`crate::vm::Boot::net`], with
    /// [`super::guest_cmdline`] (its gateway is the home agent).
    pub fn home_attach(&self, nics: Nics) -> crate::vm::NetAttach<'_> {
        crate::vm::NetAttach {
            netns: &self.home_host,
            tap: (nics != Nics::Vf).then_some(TAP),
            vf_tap: (nics != Nics::Virtio).then_some(VF_TAP),
            mac: GUEST_MAC,
        }
    }

    /// The delay line's PID while it runs.
    pub fn delayline_pid(&self) -> Option<u32> {
        match &self.delayline {
            Some(DelayLine::Attached(bg)) => Some(bg.pid()),
            Some(DelayLine::Detached { pid, .. }) => Some(*pid),
            None => None,
        }
    }

    /// The delay line's log file, when it runs detached ([`Wan::keep`]).
    pub fn delayline_log(&self) -> Option<&std::path::Path> {
        match &self.delayline {
            Some(DelayLine::Detached { log, .. }) => Some(log),
            _ => None,
        }
    }

    /// Where a detached delay line logs.
    fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("roam-{}-delayline.log", self.prefix))
    }

    fn step(&self, what: &str) {
        if self.verbose {
            eprintln!("wan: {what}");
        }
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        self.home.ip(args)
    }

    /// `sysctl -w` each of `settings` inside `ns`.
    fn sysctl(&self, ns: &str, settings: &[String]) -> Result<()> {
        let mut cmd = Topology::exec_in(ns, "sysctl");
        cmd.args(["-q", "-w"]).args(settings);
        self.home.run(&mut cmd)
    }

    /// Builds the topology, first removing any earlier one with this prefix (so `up` is
    /// idempotent in effect), and starts the delay line if there is a delay. On failure
    /// everything made so far is removed.
    pub fn up(mut self) -> Result<Wan> {
        if self.delay_ms > MAX_DELAY_MS {
            bail!(
                "a WAN delay of {} ms is over the {MAX_DELAY_MS} ms bound",
                self.delay_ms
            );
        }
        if Topology::ns_exists(&self.home.client_ns()) {
            bail!(
                "the test network `{}` (one or two hosts) uses these names; take it down first (`cargo xtask net down --prefix {0}`) or use another prefix",
                self.prefix
            );
        }
        let delayline = crate::delayline_path();
        if self.delay_ms > 0 && !delayline.is_file() {
            self.step("building the delay line");
            crate::artifacts::build_delayline()?;
        }
        // From here on, dropping `self` (an error below) removes what was made.
        self.owned = true;
        if self.namespaces().iter().any(|ns| Topology::ns_exists(ns)) {
            self.step(&format!(
                "removing the earlier wide-area network `{}`",
                self.prefix
            ));
            self.down()?;
        }
        self.build()?;
        if self.delay_ms > 0 {
            self.start_delay_line(&delayline)?;
        }
        self.step(&format!(
            "up: {} namespaces, WAN delay {} ms one way",
            self.namespaces().len(),
            self.delay_ms
        ));
        self.complete = true;
        Ok(self)
    }

    fn build(&self) -> Result<()> {
        let (sw, h1, ha) = (self.switch_ns(), self.home_host_ns(), self.home_agent_ns());
        let (wan, fa, fb, cn) = (
            self.router_ns(),
            self.ns(Site::A),
            self.ns(Site::B),
            self.correspondent_ns(),
        );
        let rp_off = |ifaces: &[&str]| -> Vec<String> {
            ifaces
                .iter()
                .map(|i| format!("net.ipv4.conf.{i}.rp_filter=0"))
                .collect()
        };
        let forward = "net.ipv4.ip_forward=1".to_string();

        self.step(&format!(
            "home link: switch {sw} with br0 (no address), home host {h1} with {TAP} and {VF_TAP} on its br0"
        ));
        self.home.add_switch(None)?;
        self.home.add_host(1)?;
        for ns in [&sw, &h1] {
            self.sysctl(ns, &rp_off(&["all", "default"]))?;
        }
        for ns in [&ha, &wan, &fa, &fb, &cn] {
            self.step(&format!("namespace {ns}"));
            self.ip(&["netns", "add", ns])?;
            self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Before any interface exists, so each one inherits `default`.
            let mut settings = rp_off(&["all", "default"]);
            // The sites forward for a VM routed through a TAP (network paging).
            if *ns == ha || *ns == wan || *ns == fa || *ns == fb {
                settings.push(forward.clone());
            }
            self.sysctl(ns, &settings)?;
        }

        self.step(&format!(
            "home agent {ha}: {HA_HOME_LINK} {HA_HOME_IP}/{PREFIX_LEN} on {sw}'s br0 (the VM's gateway)"
        ));
        self.veth(&ha, HA_HOME_LINK, &sw, SWITCH_HA_LINK, None)?;
        self.ip(&[
            "-n",
            &sw,
            "link",
            "set",
            SWITCH_HA_LINK,
            "master",
            "br0",
            "up",
        ])?;
        self.address(&ha, HA_HOME_LINK, HA_HOME_IP, PREFIX_LEN)?;

        // The WAN links: (namespace, its interface, address, router interface, router address).
        let links = [
            (&ha, WAN_LINK, HA_WAN_IP, ROUTER_HA_LINK, ROUTER_HA_IP),
            (&fa, WAN_LINK, SITE_A_IP, ROUTER_A_LINK, ROUTER_A_IP),
            (&fb, WAN_LINK, SITE_B_IP, ROUTER_B_LINK, ROUTER_B_IP),
            (&cn, CN_LINK, CN_IP, ROUTER_CN_LINK, ROUTER_CN_IP),
            (&h1, WAN_LINK, H1_WAN_IP, ROUTER_H1_LINK, ROUTER_H1_IP),
        ];
        for (ns, link, ip, router_link, router_ip) in links {
            self.step(&format!(
                "WAN link: {ns} {link} {ip}/{WAN_PREFIX_LEN} <-> {wan} {router_link} {router_ip}/{WAN_PREFIX_LEN}, MTU {WAN_MTU}"
            ));
            self.veth(ns, link, &wan, router_link, Some(WAN_MTU))?;
            self.address(ns, link, ip, WAN_PREFIX_LEN)?;
            self.address(&wan, router_link, router_ip, WAN_PREFIX_LEN)?;
        }

        for site in Site::ALL {
            self.step(&format!(
                "{}: the VM's location address {}/32 on {WAN_LINK}",
                self.ns(site),
                site.location()
            ));
            self.address(&self.ns(site), WAN_LINK, site.location(), 32)?;
        }

        self.step(&format!("routes: the sites, the home agent and the correspondent by default via the router; the home subnet via the home agent; the home host's {H1_WAN_ROUTE} and {CN_PREFIX} via the router"));
        for (ns, gw) in [
            (&ha, ROUTER_HA_IP),
            (&fa, ROUTER_A_IP),
            (&fb, ROUTER_B_IP),
            (&cn, ROUTER_CN_IP),
        ] {
            self.ip(&["-n", ns, "route", "add", "default", "via", gw])?;
        }
        for prefix in [H1_WAN_ROUTE, CN_PREFIX] {
            self.ip(&["-n", &h1, "route", "add", prefix, "via", ROUTER_H1_IP])?;
        }
        self.ip(&["-n", &wan, "route", "add", HOME_PREFIX, "via", HA_WAN_IP])?;

        self.step("rp_filter 0 on every interface");
        self.sysctl(&sw, &rp_off(&[SWITCH_HA_LINK, "br0"]))?;
        self.sysctl(&h1, &rp_off(&[WAN_LINK, "br0", "up0", TAP, VF_TAP]))?;
        self.sysctl(&ha, &rp_off(&[HA_HOME_LINK, WAN_LINK]))?;
        self.sysctl(
            &wan,
            &rp_off(&[
                ROUTER_HA_LINK,
                ROUTER_A_LINK,
                ROUTER_B_LINK,
                ROUTER_CN_LINK,
                ROUTER_H1_LINK,
            ]),
        )?;
        for ns in [&fa, &fb] {
            self.sysctl(ns, &rp_off(&[WAN_LINK]))?;
        }
        self.sysctl(&cn, &rp_off(&[CN_LINK]))
    }

    /// A veth `a_link` in `a` to `b_link` in `b`, both up, with `mtu` on both ends if given.
    fn veth(&self, a: &str, a_link: &str, b: &str, b_link: &str, mtu: Option<u32>) -> Result<()> {
        self.ip(&[
            "-n", a, "link", "add", a_link, "type", "veth", "peer", "name", b_link, "netns", b,
        ])?;
        for (ns, link) in [(a, a_link), (b, b_link)] {
            if let Some(mtu) = mtu {
                self.ip(&["-n", ns, "link", "set", link, "mtu", &mtu.to_string()])?;
            }
            self.ip(&["-n", ns, "link", "set", link, "up"])?;
        }
        Ok(())
    }

    fn address(&self, ns: &str, link: &str, ip: &str, prefix_len: u8) -> Result<()> {
        let addr = format!("{ip}/{prefix_len}");
        self.ip(&["-n", ns, "addr", "add", &addr, "dev", link])
    }

    /// The TUN device, the delay line on it, then the policy rules that send forwarded
    /// traffic through it (see the module documentation).
    fn start_delay_line(&mut self, program: &std::path::Path) -> Result<()> {
        let wan = self.router_ns();
        let mtu = WAN_MTU.to_string();
        let table = DELAY_TABLE.to_string();
        self.step(&format!(
            "delay line: persistent TUN {DELAY_DEV} in {wan}, MTU {WAN_MTU}, {} ms one way",
            self.delay_ms
        ));
        self.ip(&["-n", &wan, "tuntap", "add", DELAY_DEV, "mode", "tun"])?;
        // A queue deep enough for a migration's burst: at the default 500 packets the TUN
        // dropped what the delay line had not read yet, and TCP's recovery then dominated.
        self.ip(&[
            "-n",
            &wan,
            "link",
            "set",
            DELAY_DEV,
            "mtu",
            &mtu,
            "txqueuelen",
            "10000",
            "up",
        ])?;
        self.sysctl(&wan, &[format!("net.ipv4.conf.{DELAY_DEV}.rp_filter=0")])?;

        let delay = self.delay_ms.to_string();
        let mut cmd = Topology::exec_in(&wan, program);
        cmd.args(["--dev", DELAY_DEV, "--delay-ms", &delay]);
        let ready = format!("delayline: {DELAY_DEV} delay {} ms", self.delay_ms);
        let bound = Duration::from_secs(10);
        if self.keep {
            let log = self.log_path();
            let file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            if self.verbose {
                eprintln!(
                    "==> {} (detached, log {})",
                    proc::display(&cmd),
                    log.display()
                );
            }
            use std::os::unix::process::CommandExt;
            let child = cmd
                .stdin(std::process::Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                // Its own process group: a later Ctrl-C in this terminal does not reach it.
                .process_group(0)
                .spawn()
                .with_context(|| format!("cannot start `{}`", proc::display(&cmd)))?;
            let pid = child.id();
            self.delayline = Some(DelayLine::Detached {
                pid,
                log: log.clone(),
            });
            let deadline = Instant::now() + bound;
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains(&ready) {
                    break;
                }
                if !is_running(pid) {
                    bail!("the delay line exited before it was ready:\n{text}");
                }
                if Instant::now() >= deadline {
                    bail!("the delay line was not ready within {bound:?}:\n{text}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            cmd.arg("--lifeline");
            if self.verbose {
                eprintln!("==> {}", proc::display(&cmd));
            }
            let mut bg = proc::Background::spawn_with_lifeline(&mut cmd)?;
            let started = bg.wait_for(&ready, bound);
            self.delayline = Some(DelayLine::Attached(bg));
            started?;
        }

        self.step(&format!(
            "policy routing in {wan}: forwarded packets -> table {DELAY_TABLE} (default dev {DELAY_DEV}); from {DELAY_DEV} and the router's own -> main"
        ));
        self.ip(&[
            "-n", &wan, "route", "add", "default", "dev", DELAY_DEV, "table", &table,
        ])?;
        self.ip(&[
            "-n", &wan, "rule", "add", "iif", DELAY_DEV, "lookup", "main", "pref", "100",
        ])?;
        self.ip(&[
            "-n",
            &wan,
            "rule",
            "add",
            "iif",
            DELAY_DEV,
            "unreachable",
            "pref",
            "101",
        ])?;
        self.ip(&[
            "-n", &wan, "rule", "add", "iif", "lo", "lookup", "main", "pref", "150",
        ])?;
        self.ip(&["-n", &wan, "rule", "add", "lookup", &table, "pref", "200"])
    }

    /// Stops the delay line (ours by its lifeline, or one a detached `up` left, found in the
    /// router's namespace and ended by PID), then deletes every namespace of this prefix.
    /// Idempotent.
    pub fn down(&mut self) -> Result<()> {
        self.complete = false;
        if Topology::ns_exists(&self.home.client_ns()) {
            bail!(
                "`{}-sw` and `{0}-h1` belong to the test network `{0}` (one or two hosts), not to a wide-area one; take it down with `cargo xtask net down --prefix {0}`",
                self.prefix
            );
        }
        match self.delayline.take() {
            Some(DelayLine::Attached(mut bg)) => {
                self.step(&format!("stopping the delay line (PID {})", bg.pid()));
                bg.stop(Duration::from_secs(2));
                if self.verbose {
                    eprint!("{}", bg.output());
                }
            }
            // A detached one is ended below, like any other left in the namespace.
            Some(DelayLine::Detached { .. }) | None => {}
        }
        self.stop_left_delay_lines()?;
        let log = self.log_path();
        if let Ok(text) = std::fs::read_to_string(&log) {
            if self.verbose {
                eprint!("{text}");
            }
            let _ = std::fs::remove_file(&log);
        }
        for ns in self.namespaces().iter().rev() {
            if Topology::ns_exists(ns) {
                self.step(&format!("deleting namespace {ns}"));
                self.ip(&["netns", "del", ns])?;
            }
        }
        Ok(())
    }

    /// Ends, by PID, every `delayline` process in the router's namespace (a detached one,
    /// from `cargo xtask net up --wan`): SIGTERM, then SIGKILL after 2 s.
    fn stop_left_delay_lines(&self) -> Result<()> {
        let wan = self.router_ns();
        if !Topology::ns_exists(&wan) {
            return Ok(());
        }
        let out = Command::new("ip")
            .args(["netns", "pids", &wan])
            .output()
            .context("cannot run `ip netns pids`")?;
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|pid| is_delayline(*pid))
            .collect();
        for pid in pids {
            self.step(&format!("stopping the delay line (PID {pid})"));
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while is_delayline(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if is_delayline(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        Ok(())
    }
}

/// The name and state letter of process `pid`, from /proc/PID/stat.
fn process(pid: u32) -> Option<(String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) STATE ...": the name is in parentheses and may itself contain them.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let state = stat[close + 1..].split_whitespace().next()?;
    Some((stat[open + 1..close].to_string(), state.to_string()))
}

/// Whether `pid` is running (exists and is not a zombie).
fn is_running(pid: u32) -> bool {
    process(pid).is_some_and(|(_, state)| state != "Z")
}

/// Whether `pid` is a running `delayline` process.
fn is_delayline(pid: u32) -> bool {
    process(pid).is_some_and(|(name, state)| name == "delayline" && state != "Z")
}

impl Drop for Wan {
    fn drop(&mut self) {
        if !self.owned || (self.keep && self.complete) {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!(
                "cleaning up the wide-area test network `{}`: {e:#}",
                self.prefix
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let w = Wan::named("roam").unwrap();
        assert_eq!(
            w.namespaces(),
            [
                "roam-sw", "roam-h1", "roam-ha", "roam-wan", "roam-fa", "roam-fb", "roam-cn"
            ]
        );
        assert_eq!(w.ns(Site::B), "roam-fb");
        assert_eq!(w.care_of(Site::A), "198.18.21.2");
        assert!(Wan::named("a/b").is_err());
        let u = Wan::unique("w").unwrap();
        assert!(u.prefix().starts_with("rtw-"), "{}", u.prefix());
        assert_ne!(Wan::unique("w").unwrap().prefix(), u.prefix());
        // Interface names fit IFNAMSIZ.
        for link in [
            HA_HOME_LINK,
            WAN_LINK,
            CN_LINK,
            ROUTER_HA_LINK,
            ROUTER_H1_LINK,
            DELAY_DEV,
        ] {
            assert!(link.len() < 16, "{link}");
        }
    }

    #[test]
    fn every_address_is_in_the_benchmark_range_and_in_the_help() {
        let addresses = [
            SITE_A_LOC,
            SITE_B_LOC,
            HA_HOME_IP,
            HA_WAN_IP,
            ROUTER_HA_IP,
            SITE_A_IP,
            ROUTER_A_IP,
            SITE_B_IP,
            ROUTER_B_IP,
            CN_IP,
            ROUTER_CN_IP,
            H1_WAN_IP,
            ROUTER_H1_IP,
            HOME_PREFIX,
            H1_WAN_ROUTE,
            CN_PREFIX,
        ];
        for a in addresses {
            let first: Vec<u8> = a
                .split(['.', '/'])
                .take(2)
                .map(|o| o.parse().unwrap())
                .collect();
            assert!(first == [198, 18] || first == [198, 19], "{a}");
            assert!(HELP.contains(a), "the --help table lacks {a}");
        }
        assert_eq!(HA_HOME_IP, "198.18.0.1");
        assert_eq!(super::super::GUEST_IP, "198.18.0.10");
        // The home host's route covers the sites and the home agent's WAN side, not the
        // correspondent (its guest's traffic goes through the home link).
        for covered in [HA_WAN_IP, SITE_A_IP, SITE_B_IP, H1_WAN_IP] {
            let third: u8 = covered.split('.').nth(2).unwrap().parse().unwrap();
            assert!((16..32).contains(&third), "{covered}");
        }
        assert!(!(16..32).contains(&3u8), "the correspondent is outside");
        for link in [
            HA_HOME_LINK,
            WAN_LINK,
            CN_LINK,
            ROUTER_HA_LINK,
            ROUTER_A_LINK,
            ROUTER_B_LINK,
            ROUTER_CN_LINK,
            ROUTER_H1_LINK,
            DELAY_DEV,
        ] {
            assert!(HELP.contains(link), "the --help table lacks {link}");
        }
    }

    #[test]
    fn the_mtu_fits_a_tunnelled_full_packet() {
        const { assert!(WAN_MTU >= 1500 + 20) };
    }

    #[test]
    fn delays_are_bounded_and_a_wan_not_up_removes_nothing() {
        let w = Wan::unique("b").unwrap().with_delay_ms(MAX_DELAY_MS + 1);
        assert!(w.up().is_err());
        // Dropping a Wan that never went up must not touch namespaces of its prefix.
        let w = Wan::named("roam-not-up").unwrap();
        assert!(!w.owned);
    }

    #[test]
    fn sites_map_to_their_addresses() {
        assert_eq!(Site::A.router_ip(), ROUTER_A_IP);
        assert_eq!(Site::B.router_link(), "w-b");
        assert_eq!(Site::ALL.map(Site::care_of), [SITE_A_IP, SITE_B_IP]);
        assert_eq!(Site::ALL.map(Site::location), [SITE_A_LOC, SITE_B_LOC]);
    }
}
