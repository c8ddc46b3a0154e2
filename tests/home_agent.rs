//! `host-vmm home-agent` on the wide-area topology (`xtask::net::Wan`): the home agent runs
//! in `<p>-ha` on `home0`, a test client (the `mip` crate, its datagrams sent from a site's
//! namespace through `netprobe udp-ask`) registers the home address 198.18.0.10, and a
//! stand-in for the moved VM at the care-of address (`netprobe ipip-echo`) answers the
//! correspondent's pings through the tunnel in both directions. No VM: root (namespaces),
//! not KVM. Each test builds its own uniquely named topology, removed when it ends, also on
//! failure; the home agent it starts is killed by its PID first.
//!
//! Needs the release host-vmm (`cargo build --release -p host-vmm`).

use mip::{
    Flags, KeyTable, Message, RegistrationReply, RegistrationRequest, ReplyCode,
    SecurityAssociation,
};
use roam_tests::{TempFile, root, run, say};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use xtask::net::wan::{HA_HOME_LINK, HA_WAN_IP, SITE_A_IP, SITE_B_IP};
use xtask::net::{GUEST_IP, Site, Wan};
use xtask::proc::Background;

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
/// The security association the key file and the client share.
const SPI: u32 = 256;
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f";

fn home() -> Ipv4Addr {
    GUEST_IP.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn sa() -> SecurityAssociation {
    SecurityAssociation::new(SPI, (0..16).collect()).unwrap()
}

/// A wide-area topology with a home agent in it. Fields drop in order: the home agent
/// (killed by its PID), then the topology, then the files.
struct HomeNet {
    agent: Option<Background>,
    net: Wan,
    keys: TempFile,
    state: PathBuf,
    events: PathBuf,
}

impl HomeNet {
    fn up(tag: &str) -> HomeNet {
        let net = Wan::unique(tag)
            .and_then(Wan::up)
            .unwrap_or_else(|e| panic!("bringing up the wide-area network: {e:#}"));
        let keys = TempFile::new(
            &format!("{tag}-keys"),
            format!(
                "# the VM's association\nspi={SPI} home={GUEST_IP} key={KEY_HEX}\n\
                 spi=300 home=198.18.0.11 key=ffffffffffffffffffffffffffffffff skew=30\n"
            )
            .as_bytes(),
        );
        let base = keys.path().to_string_lossy().into_owned();
        let mut net = HomeNet {
            agent: None,
            net,
            state: PathBuf::from(format!("{base}.state")),
            events: PathBuf::from(format!("{base}.events")),
            keys,
        };
        net.start_agent();
        net
    }

    /// Starts `host-vmm home-agent` in the home agent's namespace, waits until it serves and
    /// returns the line saying so.
    fn start_agent(&mut self) -> String {
        let mut cmd = Wan::exec_in(&self.net.home_agent_ns(), roam_tests::host_vmm());
        cmd.env("RUST_LOG", "info").args([
            "home-agent",
            "--listen",
            HA_WAN_IP,
            "--home-link",
            HA_HOME_LINK,
            "--keys",
        ]);
        cmd.arg(self.keys.path())
            .arg("--state")
            .arg(&self.state)
            .arg("--event-monitor")
            .arg(&self.events);
        let mut agent = Background::spawn(&mut cmd).unwrap();
        agent
            .wait_for("binding(s) restored", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let line = agent
            .output()
            .lines()
            .find(|l| l.contains("binding(s) restored"))
            .unwrap_or_default()
            .to_owned();
        self.agent = Some(agent);
        line
    }

    fn agent(&mut self) -> &mut Background {
        self.agent.as_mut().expect("a home agent runs")
    }

    /// Sends `datagram` to the home agent from `site` and returns its answer, if any came
    /// within `seconds`.
    fn ask(&self, site: Site, datagram: &[u8], seconds: u32) -> Option<Vec<u8>> {
        let hex: String = datagram.iter().map(|b| format!("{b:02x}")).collect();
        let out = Wan::exec_in(&self.net.ns(site), NETPROBE)
            .args([
                "udp-ask",
                &format!("{HA_WAN_IP}:434"),
                &hex,
                &seconds.to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let reply = text
            .lines()
            .find_map(|l| l.strip_prefix("netprobe: ok: reply "))?;
        Some(
            (0..reply.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&reply[i..i + 2], 16).unwrap())
                .collect(),
        )
    }

    /// Sends `request` from `site` and returns the Reply, checked to answer it (and, when
    /// signed, verified with the association).
    fn register(&self, site: Site, request: &RegistrationRequest) -> RegistrationReply {
        let bytes = self
            .ask(site, &request.encode(), 3)
            .expect("the home agent answers");
        let reply = RegistrationReply::decode(&bytes).expect("a Registration Reply");
        assert!(
            reply.answers(request),
            "{reply:?} does not answer {request:?}"
        );
        if reply.mhae().is_some() {
            assert_eq!(
                mip::verify(&bytes, &sa()),
                Ok(Message::Reply(reply.clone()))
            );
        }
        reply
    }

    fn ha(&self, program: &str) -> Command {
        Wan::exec_in(&self.net.home_agent_ns(), program)
    }

    /// Whether the home agent's kernel routes the home address into the TUN.
    fn routed(&self) -> bool {
        run(self
            .ha("ip")
            .args(["-4", "route", "show", &format!("{GUEST_IP}/32")]))
        .contains("dev mip0")
    }

    /// Whether the home link has a neighbour proxy entry for the home address.
    fn proxied(&self) -> bool {
        run(self
            .ha("ip")
            .args(["-4", "neigh", "show", "proxy", "dev", HA_HOME_LINK]))
        .contains(GUEST_IP)
    }

    /// `host-vmm home-agent status --state FILE`.
    fn status(&self) -> String {
        run(Command::new(roam_tests::host_vmm())
            .args(["home-agent", "status", "--state"])
            .arg(&self.state))
    }

    /// The event names written so far, in order.
    fn events(&self) -> Vec<(String, serde_json::Value)> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one JSON event a line");
                (
                    v["event"].as_str().unwrap_or("").to_owned(),
                    v["properties"].clone(),
                )
            })
            .collect()
    }

    /// `count` pings from the correspondent to the home address, every one answered by the
    /// stand-in at `site` through the tunnel (it checks the outer header: the home agent to
    /// the care-of address, protocol 4). `size` is the ICMP payload, sent with DF if given.
    fn echo_through(&self, site: Site, count: u32, size: Option<u32>) {
        let mut standin = Background::spawn(Wan::exec_in(&self.net.ns(site), NETPROBE).args([
            "ipip-echo",
            self.net.care_of(site),
            HA_WAN_IP,
            GUEST_IP,
            &count.to_string(),
            "20",
        ]))
        .unwrap();
        standin
            .wait_for("ipip-echo ready", Duration::from_secs(10))
            .unwrap();
        let mut ping = self.net.correspondent("ping");
        ping.args(["-n", "-c", &count.to_string(), "-i", "0.1", "-W", "2"]);
        if let Some(size) = size {
            ping.args(["-M", "do", "-s", &size.to_string()]);
        }
        let text = run(ping.arg(GUEST_IP));
        assert!(
            text.contains(&format!("{count} received, 0% packet loss")),
            "{text}"
        );
        standin
            .wait_for("netprobe: ok: ipip-echo", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Drop for HomeNet {
    fn drop(&mut self) {
        // The home agent goes first (Background kills it by PID), then the namespaces.
        self.agent = None;
        for f in [&self.state, &self.events] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A Request from `care_of` with `lifetime`, Identification `id`, signed with `sa`.
fn request(
    care_of: Ipv4Addr,
    lifetime: u16,
    id: u64,
    sa: Option<&SecurityAssociation>,
) -> RegistrationRequest {
    let mut r = RegistrationRequest {
        flags: Flags::ROAM,
        lifetime,
        home_address: home(),
        home_agent: ip(HA_WAN_IP),
        care_of,
        identification: id,
        extensions: Vec::new(),
    };
    if let Some(sa) = sa {
        mip::sign_request(&mut r, sa);
    }
    r
}

/// A fresh, strictly increasing Identification.
fn fresh_id() -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    mip::ntp_now()
}

/// Waits up to `bound` for `what` to hold.
fn eventually(bound: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

fn names(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_registered_home_address_is_tunnelled_both_ways_and_survives_a_restart() {
    root("a_registered_home_address_is_tunnelled_both_ways_and_survives_a_restart");
    let mut h = HomeNet::up("haok");
    let proxy_delay = run(h.ha("cat").arg(format!(
        "/proc/sys/net/ipv4/neigh/{HA_HOME_LINK}/proxy_delay"
    )));
    assert_eq!(proxy_delay.trim(), "0", "proxy ARP answers at once");
    assert!(!h.routed() && !h.proxied());

    // A host on the home link that cached the VM's own MAC (before it moved).
    let sw = h.net.switch_ns();
    run(Wan::exec_in(&sw, "ip").args(["addr", "add", "198.18.0.5/24", "dev", "br0"]));
    run(Wan::exec_in(&sw, "ip").args([
        "neigh",
        "replace",
        GUEST_IP,
        "lladdr",
        "52:54:00:12:34:56",
        "dev",
        "br0",
        "nud",
        "stale",
    ]));

    // Register at site A.
    let first = request(ip(SITE_A_IP), 300, fresh_id(), Some(&sa()));
    let reply = h.register(Site::A, &first);
    assert_eq!((reply.code, reply.lifetime), (ReplyCode::Accepted, 300));
    assert_eq!(reply.home_agent, ip(HA_WAN_IP));
    assert!(reply.mhae().is_some(), "the Reply is signed");
    assert!(h.routed() && h.proxied());
    let status = h.status();
    assert!(
        status.starts_with(&format!("{GUEST_IP} care-of={SITE_A_IP} lifetime-left=29")),
        "{status}"
    );
    assert!(
        status.contains(&format!("spi={SPI} reverse=yes")),
        "{status}"
    );

    // The correspondent's pings reach site A IP-in-IP and the replies come back through the
    // reverse tunnel; a full 1500-byte packet fits (1520 outside, WAN MTU 1600).
    h.echo_through(Site::A, 3, None);
    h.echo_through(Site::A, 1, Some(1472));

    // The home link: the gratuitous ARPs repointed the stale entry at the home agent, and
    // proxy ARP answers for the home address.
    let ha_mac = run(h
        .ha("cat")
        .arg(format!("/sys/class/net/{HA_HOME_LINK}/address")));
    let neigh = run(Wan::exec_in(&sw, "ip").args(["neigh", "show", GUEST_IP]));
    assert!(
        neigh.contains(ha_mac.trim()),
        "{neigh} (home agent {ha_mac})"
    );
    run(Wan::exec_in(&sw, "ip").args(["neigh", "flush", "dev", "br0"]));
    let mut standin = Background::spawn(Wan::exec_in(&h.net.ns(Site::A), NETPROBE).args([
        "ipip-echo",
        SITE_A_IP,
        HA_WAN_IP,
        GUEST_IP,
        "2",
        "20",
    ]))
    .unwrap();
    standin.wait_for("ready", Duration::from_secs(10)).unwrap();
    let text =
        run(Wan::exec_in(&sw, "ping").args(["-n", "-c", "2", "-i", "0.1", "-W", "2", GUEST_IP]));
    assert!(text.contains("2 received"), "{text}");
    standin
        .wait_for("netprobe: ok", Duration::from_secs(10))
        .unwrap();

    // Killed (SIGKILL, by PID) and started again with the same state file: the binding is
    // back, traffic is tunnelled again, and the old Identification is still a replay.
    let pid = h.agent().pid();
    run(Command::new("kill").args(["-KILL", &pid.to_string()]));
    assert!(
        eventually(Duration::from_secs(5), || !h.routed()),
        "the route goes with the TUN"
    );
    let line = h.start_agent();
    assert!(line.contains("1 binding(s) restored"), "{line}");
    assert!(h.routed() && h.proxied());
    h.echo_through(Site::A, 3, None);
    let replay = h.register(Site::A, &first);
    assert_eq!(replay.code, ReplyCode::HaIdentificationMismatch);

    // A move to site B replaces the binding (S=0).
    let reply = h.register(
        Site::B,
        &request(ip(SITE_B_IP), 300, fresh_id(), Some(&sa())),
    );
    assert_eq!(reply.code, ReplyCode::Accepted);
    assert!(h.status().contains(&format!("care-of={SITE_B_IP}")));
    h.echo_through(Site::B, 3, None);

    // Back home: lifetime 0 with care-of = home address removes everything.
    let reply = h.register(Site::B, &request(home(), 0, fresh_id(), Some(&sa())));
    assert_eq!((reply.code, reply.lifetime), (ReplyCode::Accepted, 0));
    assert!(!h.routed(), "route removed");
    assert!(!h.proxied(), "proxy entry removed");
    assert_eq!(h.status(), "");

    // SIGTERM: an orderly exit.
    let pid = h.agent().pid();
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    assert!(eventually(Duration::from_secs(5), || h
        .agent()
        .exit_status()
        .is_some()));
    assert!(
        h.agent().exit_status().unwrap().success(),
        "{}",
        h.agent().output()
    );
    let events = h.events();
    let names = names(&events);
    for want in [
        "binding-restored",
        "registration-accepted",
        "registration-denied",
        "deregistered",
        "shutdown",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let (_, moved) = events
        .iter()
        .rev()
        .find(|(n, _)| n == "registration-accepted")
        .unwrap();
    assert_eq!(moved["care-of"], SITE_B_IP);
    assert_eq!(moved["from"], SITE_A_IP);
    say(&format!("home agent events: {names:?}"));
}

#[test]
fn refused_registrations_change_nothing() {
    root("refused_registrations_change_nothing");
    let h = HomeNet::up("hano");
    let a = ip(SITE_A_IP);

    // Wrong key: 131, unsigned, no binding.
    let wrong = SecurityAssociation::new(SPI, vec![0x55; 16]).unwrap();
    let reply = h.register(Site::A, &request(a, 300, fresh_id(), Some(&wrong)));
    assert_eq!(reply.code, ReplyCode::HaMobileNodeAuthFailed);
    assert!(reply.mhae().is_none());
    assert!(!h.routed() && !h.proxied());
    assert_eq!(h.status(), "");
    // Unknown SPI, and another home address's SPI: 131.
    let unknown = SecurityAssociation::new(999, (0..16).collect()).unwrap();
    let reply = h.register(Site::A, &request(a, 300, fresh_id(), Some(&unknown)));
    assert_eq!(reply.code, ReplyCode::HaMobileNodeAuthFailed);
    let keys = KeyTable::load(h.keys.path()).unwrap();
    let other = keys.by_spi(300).unwrap().sa.clone();
    let reply = h.register(Site::A, &request(a, 300, fresh_id(), Some(&other)));
    assert_eq!(reply.code, ReplyCode::HaMobileNodeAuthFailed);
    // Malformed: an extension running past the end. 134, echoing the fixed part.
    let mut broken = request(a, 300, fresh_id(), None).encode();
    broken.extend_from_slice(&[32, 20, 0, 0, 1, 0]);
    let reply = RegistrationReply::decode(&h.ask(Site::A, &broken, 3).expect("an answer")).unwrap();
    assert_eq!(reply.code, ReplyCode::HaPoorlyFormedRequest);
    assert_eq!(reply.home_address, home());
    // An unknown non-skippable extension: silently discarded.
    let mut unknown_ext = request(a, 300, fresh_id(), None).encode();
    unknown_ext.extend_from_slice(&[5, 2, 0, 0]);
    assert!(h.ask(Site::A, &unknown_ext, 1).is_none());
    assert_eq!(h.status(), "");

    // A good one, then the same bytes again: 133, resynchronising, binding unchanged.
    let good = request(a, 300, fresh_id(), Some(&sa()));
    assert_eq!(h.register(Site::A, &good).code, ReplyCode::Accepted);
    let before = h.status();
    let replay = h.register(Site::A, &good);
    assert_eq!(replay.code, ReplyCode::HaIdentificationMismatch);
    assert!(replay.mhae().is_some(), "a 133 is signed");
    assert_eq!(
        replay.identification & 0xFFFF_FFFF,
        good.identification & 0xFFFF_FFFF
    );
    let ha_secs = (replay.identification >> 32) as i64;
    let our_secs = (mip::ntp_from_system_time(SystemTime::now()) >> 32) as i64;
    assert!(
        (ha_secs - our_secs).abs() <= 2,
        "the home agent's clock in the high bits"
    );
    // A stale timestamp (an hour old): 133.
    let stale_id = mip::ntp_from_system_time(SystemTime::now() - Duration::from_secs(3600));
    let reply = h.register(Site::B, &request(ip(SITE_B_IP), 300, stale_id, Some(&sa())));
    assert_eq!(reply.code, ReplyCode::HaIdentificationMismatch);
    // Another home agent's address: 136, naming ours.
    let mut elsewhere = request(ip(SITE_B_IP), 300, fresh_id(), None);
    elsewhere.home_agent = ip("198.18.20.99");
    mip::sign_request(&mut elsewhere, &sa());
    let reply = h.register(Site::B, &elsewhere);
    assert_eq!(reply.code, ReplyCode::HaUnknownHomeAgent);
    assert_eq!(reply.home_agent, ip(HA_WAN_IP));
    // GRE: 139.
    let mut gre = request(ip(SITE_B_IP), 300, fresh_id(), None);
    gre.flags.gre = true;
    mip::sign_request(&mut gre, &sa());
    assert_eq!(
        h.register(Site::B, &gre).code,
        ReplyCode::HaEncapsulationUnavailable
    );
    // None of them moved the binding off site A.
    assert_eq!(
        h.status().split(" lifetime-left").next(),
        before.split(" lifetime-left").next()
    );
    assert!(
        before.contains(&format!("identification={:#018x}", good.identification)),
        "{before}"
    );
    h.echo_through(Site::A, 2, None);

    let events = h.events();
    let codes: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "registration-denied")
        .filter_map(|(_, p)| p["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        ["131", "131", "131", "134", "133", "133", "136", "139"],
        "{events:?}"
    );
}

#[test]
fn a_binding_ends_with_its_lifetime_and_the_agent_sleeps_meanwhile() {
    root("a_binding_ends_with_its_lifetime_and_the_agent_sleeps_meanwhile");
    let mut h = HomeNet::up("haex");
    let reply = h.register(Site::A, &request(ip(SITE_A_IP), 2, fresh_id(), Some(&sa())));
    assert_eq!((reply.code, reply.lifetime), (ReplyCode::Accepted, 2));
    assert!(h.routed() && h.proxied());
    let bound = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || !h.routed() && !h.proxied()),
        "route and proxy entry still there 5 s after a 2 s binding"
    );
    let took = bound.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "expired after {took:?}"
    );
    assert_eq!(h.status(), "");
    assert!(names(&h.events()).contains(&"binding-expired"));
    say(&format!("a 2 s binding was gone after {took:?}"));

    // Idle, it sleeps in epoll: at most a few clock ticks of CPU in a second.
    let pid = h.agent().pid();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu() - before;
    assert!(used <= 2, "{used} ticks of CPU while idle");
    assert!(h.agent().running(), "{}", h.agent().output());
}
