//! `host-vmm nat-edge` on the wide-area topology (`xtask::net::Wan`): the client edge in the
//! WAN router (`--link w-c`, the correspondent's side), an edge at each site (`--link
//! wan0`), a test client (the `mip` crate, its datagrams sent from a site's namespace
//! through `netprobe udp-ask`) registering the VM's address 198.18.0.10 at a location
//! address, and a stand-in for the moved VM (`netprobe tap-echo` on a TAP the site host
//! routes that address into, as `host-vmm receive --net nat` does). No VM: root
//! (namespaces), not KVM. Each test builds its own uniquely named topology, removed when
//! it ends, also on failure; the agents it starts are killed by their PIDs first.
//!
//! The translation rewrites addresses in place (stateless), so this is where the checksums
//! are checked on the bytes that arrive: the stand-in reads them from its TAP (the kernel
//! completes checksums before a TAP), the correspondent through raw sockets.
//!
//! Needs the release host-vmm (`cargo build --release -p host-vmm`).

use mip::{RegistrationReply, RegistrationRequest, ReplyCode, SecurityAssociation};
use roam_tests::{TempFile, root, run, say};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::net::wan::{ROUTER_CN_IP, ROUTER_CN_LINK, WAN_LINK};
use xtask::net::{GUEST_IP, Site, Wan};
use xtask::proc::Background;

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
/// The security association the key file and the client share.
const SPI: u32 = 256;
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f";
/// The stand-in's TAP at a site.
const STANDIN_TAP: &str = "sb0";
/// Where the stand-in "listens" (it answers any port).
const PORT: u16 = 9;

fn home() -> Ipv4Addr {
    GUEST_IP.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn sa() -> SecurityAssociation {
    SecurityAssociation::new(SPI, (0..16).collect()).unwrap()
}

/// Which edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    Client,
    Site(Site),
}

/// A wide-area topology with the three edges in it. Fields drop in order: the agents
/// (killed by their PIDs), then the topology, then the files.
struct PagingNet {
    agents: Vec<(Edge, Background)>,
    net: Wan,
    keys: TempFile,
    dir: PathBuf,
}

impl PagingNet {
    fn up(tag: &str) -> PagingNet {
        let net = Wan::unique(tag)
            .and_then(Wan::up)
            .unwrap_or_else(|e| panic!("bringing up the wide-area network: {e:#}"));
        let keys = TempFile::new(
            &format!("{tag}-keys"),
            format!(
                "spi={SPI} home={GUEST_IP} key={KEY_HEX}\n\
                 spi=300 home=198.18.0.11 key=ffffffffffffffffffffffffffffffff\n"
            )
            .as_bytes(),
        );
        let dir = PathBuf::from(format!("{}.d", keys.path().display()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = PagingNet {
            agents: Vec::new(),
            net,
            keys,
            dir,
        };
        for edge in [Edge::Client, Edge::Site(Site::A), Edge::Site(Site::B)] {
            p.start(edge);
        }
        p
    }

    fn ns(&self, edge: Edge) -> String {
        match edge {
            Edge::Client => self.net.router_ns(),
            Edge::Site(s) => self.net.ns(s),
        }
    }

    /// The edge's address (where Requests go, and what their Home Agent field says).
    fn addr(edge: Edge) -> &'static str {
        match edge {
            Edge::Client => ROUTER_CN_IP,
            Edge::Site(s) => s.care_of(),
        }
    }

    fn state(&self, edge: Edge) -> PathBuf {
        self.dir.join(format!("{edge:?}.state"))
    }

    /// Starts the edge's `host-vmm nat-edge` and waits until it serves; returns its line.
    fn start(&mut self, edge: Edge) -> String {
        let (role, link) = match edge {
            Edge::Client => ("client", ROUTER_CN_LINK),
            Edge::Site(_) => ("site", WAN_LINK),
        };
        let mut cmd = Wan::exec_in(&self.ns(edge), roam_tests::host_vmm());
        cmd.env("RUST_LOG", "info")
            .args(["nat-edge", "--listen", Self::addr(edge), "--role", role])
            .args(["--link", link, "--keys"])
            .arg(self.keys.path())
            .arg("--state")
            .arg(self.state(edge));
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
        self.agents.retain(|(e, _)| *e != edge);
        self.agents.push((edge, agent));
        line
    }

    fn agent(&mut self, edge: Edge) -> &mut Background {
        &mut self
            .agents
            .iter_mut()
            .find(|(e, _)| *e == edge)
            .expect("the edge runs")
            .1
    }

    /// Sends `request` to `edge` from `from`'s namespace and returns its Reply (checked to
    /// answer it and, when signed, verified), if one came within 3 s.
    fn ask(
        &self,
        edge: Edge,
        from: Site,
        request: &RegistrationRequest,
    ) -> Option<RegistrationReply> {
        self.ask_as(edge, from, request, &sa())
    }

    /// [`PagingNet::ask`] for a Request of the association `sa`.
    fn ask_as(
        &self,
        edge: Edge,
        from: Site,
        request: &RegistrationRequest,
        sa: &SecurityAssociation,
    ) -> Option<RegistrationReply> {
        let hex: String = request
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let out = Wan::exec_in(&self.net.ns(from), NETPROBE)
            .args(["udp-ask", &format!("{}:434", Self::addr(edge)), &hex, "3"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let reply = text
            .lines()
            .find_map(|l| l.strip_prefix("netprobe: ok: reply "))?;
        let bytes: Vec<u8> = (0..reply.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&reply[i..i + 2], 16).unwrap())
            .collect();
        let decoded = RegistrationReply::decode(&bytes).expect("a Registration Reply");
        assert!(decoded.answers(request), "{decoded:?} answers {request:?}");
        if decoded.mhae().is_some() {
            assert!(mip::verify(&bytes, sa).is_ok(), "a signed Reply verifies");
        }
        Some(decoded)
    }

    /// Registers the VM at `at`'s location with `edge` (or, with `None`, tells it the VM
    /// is home), from site `from`; returns the Reply's code.
    fn tell(&self, edge: Edge, from: Site, at: Option<Site>) -> ReplyCode {
        let (care_of, lifetime) = match at {
            Some(s) => (ip(s.location()), 300),
            None => (home(), 0),
        };
        let r = signed(request(edge, care_of, lifetime, fresh_id()));
        self.ask(edge, from, &r).expect("the edge answers").code
    }

    /// The edge's table (`nft list table ip roam_nat`).
    fn table(&self, edge: Edge) -> String {
        run(Wan::exec_in(&self.ns(edge), "nft").args(["list", "table", "ip", "roam_nat"]))
    }

    /// The edge's live bindings (`host-vmm nat-edge status`).
    fn status(&self, edge: Edge) -> String {
        run(Command::new(roam_tests::host_vmm())
            .args(["nat-edge", "status", "--state"])
            .arg(self.state(edge)))
    }

    /// A stand-in for the VM at `site`: a TAP the site host routes the VM's address into.
    fn standin(&self, site: Site) -> Background {
        let ns = self.net.ns(site);
        if !run(Wan::exec_in(&ns, "ip").args(["link", "show"])).contains(STANDIN_TAP) {
            run(Wan::exec_in(&ns, "ip").args(["tuntap", "add", STANDIN_TAP, "mode", "tap"]));
            run(Wan::exec_in(&ns, "ip").args(["link", "set", STANDIN_TAP, "up"]));
        }
        run(Wan::exec_in(&ns, "ip").args([
            "route",
            "replace",
            &format!("{GUEST_IP}/32"),
            "dev",
            STANDIN_TAP,
        ]));
        let mut s = Background::spawn(Wan::exec_in(&ns, NETPROBE).args([
            "tap-echo",
            STANDIN_TAP,
            GUEST_IP,
            "60",
        ]))
        .unwrap();
        s.wait_for("tap-echo ready", Duration::from_secs(10))
            .unwrap();
        s
    }

    /// Pings, UDP echoes and TCP connects from the correspondent to the VM's address, all
    /// answered by the stand-in at `site` with every checksum right at both ends.
    fn through(&self, site: Site) {
        let mut standin = self.standin(site);
        let text = run(self
            .net
            .correspondent("ping")
            .args(["-n", "-c", "3", "-i", "0.05", "-W", "2", GUEST_IP]));
        assert!(text.contains("3 received"), "{text}");
        assert!(
            !text.contains(site.location()),
            "the correspondent sees only {GUEST_IP}: {text}"
        );
        let check = run(self.net.correspondent(NETPROBE).args([
            "csum-check",
            &format!("{GUEST_IP}:{PORT}"),
            "20",
        ]));
        say(&format!("nat edge: via {}: {}", site.key(), check.trim()));
        // It stops on csum-check's last datagram; its summary is read once it has exited
        // (the output is collected by threads that may lag the exit a little).
        assert!(
            eventually(Duration::from_secs(20), || standin.exit_status().is_some()),
            "the stand-in at {site:?} did not stop: {}",
            standin.output()
        );
        let done = eventually(Duration::from_secs(2), || {
            standin.output().contains("netprobe: ok: tap-echo")
        });
        let out = standin.output();
        assert!(done, "the stand-in at {site:?}: {out}");
        say(&format!(
            "nat edge: stand-in at {}: {}",
            site.key(),
            out.lines().last().unwrap_or_default()
        ));
    }
}

impl Drop for PagingNet {
    fn drop(&mut self) {
        self.agents.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Request to `edge` saying the VM is at `care_of`.
fn request(edge: Edge, care_of: Ipv4Addr, lifetime: u16, id: u64) -> RegistrationRequest {
    RegistrationRequest {
        flags: mip::Flags::default(),
        lifetime,
        home_address: home(),
        home_agent: ip(PagingNet::addr(edge)),
        care_of,
        identification: id,
        extensions: Vec::new(),
    }
}

fn signed(mut r: RegistrationRequest) -> RegistrationRequest {
    mip::sign_request(&mut r, &sa());
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

#[test]
fn registrations_move_the_translation_and_checksums_stay_right() {
    root("registrations_move_the_translation_and_checksums_stay_right");
    let p = PagingNet::up("nek");
    let (client, site_a, site_b) = (Edge::Client, Edge::Site(Site::A), Edge::Site(Site::B));
    let table = p.table(client);
    assert!(
        table.contains("iifname \"w-c\" ip daddr set ip daddr map @inbound notrack"),
        "{table}"
    );
    assert!(!table.contains(GUEST_IP), "empty maps at start: {table}");

    // To site A: its own edge first, then the client edge.
    assert_eq!(p.tell(site_a, Site::A, Some(Site::A)), ReplyCode::Accepted);
    assert_eq!(p.tell(client, Site::A, Some(Site::A)), ReplyCode::Accepted);
    let table = p.table(client);
    assert!(
        table.contains(&format!("{GUEST_IP} : {}", Site::A.location()))
            && table.contains(&format!("{} : {GUEST_IP}", Site::A.location())),
        "{table}"
    );
    let table = p.table(site_a);
    assert!(
        table.contains(&format!("{} : {GUEST_IP}", Site::A.location())),
        "{table}"
    );
    assert!(
        p.status(client)
            .starts_with(&format!("{GUEST_IP} care-of={}", Site::A.location())),
        "{}",
        p.status(client)
    );
    p.through(Site::A);

    // To site B: one swap at the client edge.
    assert_eq!(p.tell(site_b, Site::B, Some(Site::B)), ReplyCode::Accepted);
    assert_eq!(p.tell(client, Site::B, Some(Site::B)), ReplyCode::Accepted);
    let table = p.table(client);
    assert!(
        table.contains(&format!("{GUEST_IP} : {}", Site::B.location()))
            && !table.contains(Site::A.location()),
        "{table}"
    );
    p.through(Site::B);

    // Nothing was tracked: the translated flows are untracked at every edge.
    for edge in [client, site_a, site_b] {
        let out = Wan::exec_in(&p.ns(edge), "conntrack")
            .args(["-L"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        for addr in [GUEST_IP, Site::A.location(), Site::B.location()] {
            assert!(
                !listed.contains(&format!("={addr} ")),
                "{edge:?} tracked {addr}: {listed}"
            );
        }
    }

    // Home: the client edge's entries go; the correspondent's pings then go home, where
    // nothing answers in this test (no VM on the home link).
    assert_eq!(p.tell(client, Site::B, None), ReplyCode::Accepted);
    let table = p.table(client);
    assert!(!table.contains(GUEST_IP), "{table}");
    assert_eq!(p.status(client), "");
    // The site edges keep their entries until they expire or are told: harmless, since no
    // client edge sends anything to those locations.
    assert!(p.status(site_b).contains(GUEST_IP));
}

#[test]
fn every_refusal_leaves_the_translation_as_it_was() {
    root("every_refusal_leaves_the_translation_as_it_was");
    let mut p = PagingNet::up("ner");
    let client = Edge::Client;
    assert_eq!(p.tell(client, Site::A, Some(Site::A)), ReplyCode::Accepted);
    let before = p.table(client);
    let la = ip(Site::A.location());
    let code = |p: &PagingNet, r: RegistrationRequest| {
        p.ask(client, Site::A, &r).map(|reply| reply.code.to_u8())
    };

    // 134: a care-of address that cannot be a location (multicast).
    let bad = signed(request(client, ip("224.0.0.1"), 300, fresh_id()));
    assert_eq!(code(&p, bad), Some(134));
    // 131: a wrong key (the denial is not signed).
    let mut forged = request(client, ip(Site::B.location()), 300, fresh_id());
    mip::sign_request(
        &mut forged,
        &SecurityAssociation::new(SPI, vec![7; 16]).unwrap(),
    );
    let reply = p.ask(client, Site::A, &forged).expect("an answer");
    assert_eq!(reply.code.to_u8(), 131);
    assert!(reply.mhae().is_none());
    // 133: a replayed Identification.
    let first = signed(request(client, la, 300, fresh_id()));
    assert_eq!(code(&p, first.clone()), Some(0));
    assert_eq!(code(&p, first), Some(133));
    // 136: another edge's address in the Home Agent field.
    let mut elsewhere = request(client, ip(Site::B.location()), 300, fresh_id());
    elsewhere.home_agent = ip("198.18.99.1");
    assert_eq!(code(&p, signed(elsewhere)), Some(136));
    // 129: a location that is already another VM's.
    let other_sa = SecurityAssociation::new(300, vec![0xff; 16]).unwrap();
    let mut other = request(client, la, 300, fresh_id());
    other.home_address = ip("198.18.0.11");
    mip::sign_request(&mut other, &other_sa);
    let reply = p
        .ask_as(client, Site::A, &other, &other_sa)
        .expect("an answer");
    assert_eq!(reply.code.to_u8(), 129);
    assert_eq!(p.table(client), before, "no refusal changed the maps");

    // Killed (SIGKILL): the table stays as it was (traffic still flows); started again
    // with its state file: the same binding, and the old Identification still a replay.
    let pid = p.agent(client).pid();
    run(Command::new("kill").args(["-KILL", &pid.to_string()]));
    assert!(eventually(Duration::from_secs(5), || p
        .agent(client)
        .exit_status()
        .is_some()));
    assert_eq!(p.table(client), before);
    let line = p.start(client);
    assert!(line.contains("1 binding(s) restored"), "{line}");
    assert_eq!(p.table(client), before);
    // SIGTERM: the table goes, the state file stays.
    let pid = p.agent(client).pid();
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    assert!(eventually(Duration::from_secs(5), || p
        .agent(client)
        .exit_status()
        .is_some()));
    let tables = run(Wan::exec_in(&p.ns(client), "nft").args(["list", "tables"]));
    assert!(!tables.contains("roam_nat"), "{tables}");
    assert!(p.status(client).contains(GUEST_IP));
}

#[test]
fn a_binding_expires_with_its_lifetime() {
    root("a_binding_expires_with_its_lifetime");
    let p = PagingNet::up("nex");
    let client = Edge::Client;
    let r = signed(request(client, ip(Site::A.location()), 2, fresh_id()));
    let reply = p.ask(client, Site::A, &r).expect("an answer");
    assert_eq!((reply.code, reply.lifetime), (ReplyCode::Accepted, 2));
    assert!(p.table(client).contains(GUEST_IP));
    assert!(
        eventually(Duration::from_secs(5), || !p
            .table(client)
            .contains(GUEST_IP)),
        "the entry outlived its lifetime: {}",
        p.table(client)
    );
}
