//! `host-vmm nat-edge`: an address-translation edge of network paging (Kanada & Tarui):
//! where a VM is, as a map from its address to its location address, kept in nftables
//! ([`super::nft`]) and changed by the same authenticated Registration Requests a home
//! agent takes ([`super::registration::decide`]: 134, 131, 133, 136, 139, in that order).
//!
//! A Request's home address is the VM's address A, its care-of address the VM's location
//! address L at the site it now runs on, its Home Agent field this edge's address. An
//! accepted registration rewrites the map in one nftables transaction (old entries out,
//! new ones in); a deregistration (lifetime 0; care-of = A: the VM is home) takes them
//! out. Only then are the binding list and the state file updated and the signed Reply
//! sent: an acknowledgment means the new map is live. If the kernel refuses, the Request is
//! denied with 130 and nothing changes. Two home addresses may not share one location
//! (129). Bindings expire with their lifetime (at most 600 s), as at the home agent.
//!
//! The table is made (and removed) with `nft -f -`; a move's transaction goes straight to
//! nf_tables over a netlink socket the edge keeps ([`super::nfnetlink`]: ~15 ms less per
//! move than `nft`), or through `nft -f -` with the same batch as text if that socket
//! cannot be opened.
//!
//! Nothing is flushed from conntrack: the translation is stateless and untracked (see
//! [`super::nft`]), so no conntrack entry holds an old mapping.
//!
//! One thread, one epoll loop over the termination signals and the registration socket,
//! woken otherwise only when the next binding ends.

use super::binding::{BindingList, Bound};
use super::front::{BATCH, Front};
use super::home_agent::termination_signals;
use super::netlink::NetlinkError;
use super::nfnetlink::Nftables;
use super::nft::{self, NftError, Role};
use super::registration::{Decision, Outcome};
use super::state::{self, StateError};
use crate::events::EventMonitor;
use mip::{KeyTable, ReplyCode};
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Where events come from, in the event monitor's `source` field.
const SOURCE: &str = "nat-edge";
/// Registrations handled per readiness before the loop looks at its signals again.
/// The program that applies the batches.
pub const NFT: &str = "nft";

/// How the edge runs.
#[derive(Debug)]
pub struct Config {
    /// Where registrations arrive (UDP); the address Requests must name.
    pub listen: SocketAddrV4,
    /// Which side it translates for.
    pub role: Role,
    /// The interface the rules match on (the correspondents' side of a client edge, the
    /// WAN side of a site edge); every interface if none.
    pub link: Option<String>,
    /// The security associations, by home address and SPI.
    pub keys: KeyTable,
    /// The state file, if any.
    pub state: Option<PathBuf>,
    /// Where events go.
    pub events: EventMonitor,
    /// The nft program.
    pub nft: String,
}

/// Why the edge could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NatEdgeError {
    /// The registration socket could not be bound.
    #[error("--listen {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddrV4,
        /// What the system said.
        error: io::Error,
    },
    /// `--link` cannot be an interface name.
    #[error("--link `{0}`: not an interface name")]
    Link(String),
    /// The table could not be set up.
    #[error("setting up the translation: {0}")]
    Nft(#[from] NftError),
    /// The state file could not be read.
    #[error("--state {0}")]
    State(#[from] StateError),
    /// The loop's own machinery (epoll, signalfd) failed.
    #[error("{what}: {error}")]
    System {
        /// What failed.
        what: &'static str,
        /// What the system said.
        error: io::Error,
    },
}

fn system(what: &'static str) -> impl Fn(io::Error) -> NatEdgeError {
    move |error| NatEdgeError::System { what, error }
}

/// Event tokens.
const SIGNAL: u64 = 0;
const REGISTRATION: u64 = 1;

/// The running edge.
struct Edge {
    role: Role,
    /// Registrations in and out.
    front: Front,
    nft: String,
    /// The kernel's nf_tables, for moves (`None`: `nft -f -` does them).
    netlink: Option<Nftables>,
}

/// Why a move's transaction did not apply.
#[derive(Debug, thiserror::Error)]
enum SwapError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// Runs the edge until SIGTERM or SIGINT: the table is (re)made with the bindings of the
/// state file that have not expired, then registrations are answered. `started` is
/// called once it serves. On the way out the table goes; the state file stays.
pub fn run(config: Config, started: impl FnOnce(&str)) -> Result<(), NatEdgeError> {
    if let Some(link) = &config.link
        && !nft::valid_link(link)
    {
        return Err(NatEdgeError::Link(link.clone()));
    }
    let signals = termination_signals().map_err(|e| NatEdgeError::System {
        what: "termination signals",
        error: io::Error::other(e.to_string()),
    })?;
    let mut bindings = match &config.state {
        Some(path) => state::load(path)?,
        None => BindingList::new(),
    };
    let expired = bindings.expire(SystemTime::now());
    let udp = UdpSocket::bind(config.listen).map_err(|error| NatEdgeError::Listen {
        addr: config.listen,
        error,
    })?;
    udp.set_nonblocking(true)
        .map_err(system("registration socket"))?;
    let pairs: Vec<(Ipv4Addr, Ipv4Addr)> =
        bindings.bindings().map(|b| (b.home, b.care_of)).collect();
    let took = nft::apply(
        &config.nft,
        &nft::ruleset(config.role, config.link.as_deref(), &pairs),
    )?;
    let netlink = Nftables::open()
        .map_err(|e| log::warn!("nat edge: moves go through `nft -f -`: {e}"))
        .ok();
    let edge = Edge {
        role: config.role,
        front: Front {
            keys: config.keys,
            ours: vec![*config.listen.ip()],
            bindings,
            udp,
            state: config.state,
            events: config.events,
            who: "nat edge",
            source: SOURCE,
            place: "location",
        },
        nft: config.nft,
        netlink,
    };
    for b in &expired {
        edge.front.event("binding-expired", b.home, b.care_of, &[]);
    }
    for b in edge.front.bindings.bindings() {
        edge.front.event(
            "binding-restored",
            b.home,
            b.care_of,
            &[(
                "lifetime-left",
                b.left(SystemTime::now()).as_secs().to_string(),
            )],
        );
    }
    edge.front.persist();
    let restored = pairs.len();
    let epoll = Epoll::new().map_err(system("epoll"))?;
    for (fd, token) in [
        (signals.as_raw_fd(), SIGNAL),
        (edge.front.udp.as_raw_fd(), REGISTRATION),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(system("epoll"))?;
    }
    let link = config.link.as_deref().unwrap_or("every interface");
    edge.front.events.emit(
        SOURCE,
        "started",
        &[
            ("listen", config.listen.to_string()),
            ("role", config.role.name().into()),
            ("link", link.into()),
            ("restored", restored.to_string()),
        ],
    );
    started(&format!(
        "nat edge ({} side) on {}, translating on {link}, {restored} binding(s) restored \
         (table made in {:.1} ms)",
        config.role.name(),
        config.listen,
        took.as_secs_f64() * 1e3
    ));
    serve(edge, &epoll, signals)
}

fn serve(mut edge: Edge, epoll: &Epoll, mut signals: File) -> Result<(), NatEdgeError> {
    let mut events = vec![EpollEvent::default(); 4];
    loop {
        let timeout = edge.timeout_ms(SystemTime::now());
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(system("epoll_wait")(e)),
        };
        for event in &events[..n] {
            match event.data() {
                SIGNAL => {
                    let mut info = [0u8; 128];
                    let signal = signals
                        .read(&mut info)
                        .ok()
                        .map(|_| u32::from_ne_bytes([info[0], info[1], info[2], info[3]]));
                    edge.shutdown(signal);
                    return Ok(());
                }
                REGISTRATION => edge.registrations(),
                _ => {}
            }
        }
        edge.expire(SystemTime::now());
    }
}

impl Edge {
    /// Answers the Requests waiting on the socket (up to a batch).
    fn registrations(&mut self) {
        for _ in 0..BATCH {
            let Some((mut decision, from)) = self.front.next_request() else {
                return;
            };
            self.carry_out(&mut decision, from);
            self.front.reply(&decision, from);
        }
    }

    /// Milliseconds until the next binding ends (-1: none), rounded up.
    fn timeout_ms(&self, now: SystemTime) -> i32 {
        match self.front.bindings.next_expiry() {
            None => -1,
            Some(at) => {
                let d = at.duration_since(now).unwrap_or(Duration::ZERO);
                i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        }
    }

    /// Moves `home` from `old` to `new` in the maps: one transaction.
    fn swap(
        &mut self,
        home: Ipv4Addr,
        old: Option<Ipv4Addr>,
        new: Option<Ipv4Addr>,
    ) -> Result<Duration, SwapError> {
        match &mut self.netlink {
            Some(n) => Ok(n.swap(self.role, home, old, new)?),
            None => Ok(nft::apply(
                &self.nft,
                &nft::swap(self.role, home, old, new),
            )?),
        }
    }

    /// [`Edge::swap`]; on failure turns `decision` into a 130 denial.
    fn apply(
        &mut self,
        home: Ipv4Addr,
        old: Option<Ipv4Addr>,
        new: Option<Ipv4Addr>,
        decision: &mut Decision,
    ) -> Option<Duration> {
        match self.swap(home, old, new) {
            Ok(took) => Some(took),
            Err(e) => {
                decision.fail(ReplyCode::HaInsufficientResources, e.to_string());
                None
            }
        }
    }

    /// Makes `decision` true: nftables first, then the binding list, the state file and
    /// the event.
    fn carry_out(&mut self, decision: &mut Decision, from: SocketAddr) {
        match decision.outcome.clone() {
            Outcome::Ignored { reason } => {
                log::info!("nat edge: ignored a datagram from {from}: {reason}");
            }
            Outcome::Denied { .. } => self.front.denied(decision, from),
            Outcome::Register { binding, code } => {
                let (home, location) = (binding.home, binding.care_of);
                if let Some(other) = self
                    .front
                    .bindings
                    .bindings()
                    .find(|b| b.care_of == location && b.home != home)
                {
                    let reason = format!("location {location} is {}'s already", other.home);
                    decision.fail(ReplyCode::HaProhibited, reason);
                    return self.front.denied(decision, from);
                }
                let old = self.front.bindings.care_of(home);
                let Some(took) = self.apply(home, old, Some(location), decision) else {
                    return self.front.denied(decision, from);
                };
                let lifetime = binding.lifetime;
                let moved_from = match self.front.bindings.bind(binding) {
                    Bound::Left => "home".to_owned(),
                    Bound::Replaced(old) => old.care_of.to_string(),
                };
                self.front.persist();
                let ms = format!("{:.2}", took.as_secs_f64() * 1e3);
                log::info!(
                    "nat edge: {home} at {location} for {lifetime} s (from {moved_from}; \
                     transaction {ms} ms)"
                );
                self.front.event(
                    "registration-accepted",
                    home,
                    location,
                    &[
                        ("code", code.to_u8().to_string()),
                        ("lifetime", lifetime.to_string()),
                        ("from", moved_from),
                        ("swap-ms", ms),
                    ],
                );
            }
            Outcome::Deregister {
                home,
                care_of,
                identification,
            } => {
                // What the binding list will remove: the whole binding when the VM is home
                // (care-of = home), else only a binding at that location.
                let bound = self
                    .front
                    .bindings
                    .get(home)
                    .filter(|b| care_of == home || b.care_of == care_of)
                    .map(|b| b.care_of);
                let Some(took) = self.apply(home, bound, None, decision) else {
                    return self.front.denied(decision, from);
                };
                let removed = self
                    .front
                    .bindings
                    .deregister(home, care_of, identification);
                self.front.persist();
                let ms = format!("{:.2}", took.as_secs_f64() * 1e3);
                log::info!(
                    "nat edge: {home} deregistered at {care_of}{} (transaction {ms} ms)",
                    if removed.is_some() {
                        ""
                    } else {
                        " (no binding there)"
                    }
                );
                let (left, was) = match removed {
                    Some(b) => (b.care_of, "yes"),
                    None => (care_of, "no"),
                };
                self.front.event(
                    "deregistered",
                    home,
                    left,
                    &[("removed", was.into()), ("swap-ms", ms)],
                );
            }
        }
    }

    /// Removes the bindings whose lifetime ended by `now`, and their map entries.
    fn expire(&mut self, now: SystemTime) {
        let ended = self.front.bindings.expire(now);
        if ended.is_empty() {
            return;
        }
        for b in &ended {
            if let Err(e) = self.swap(b.home, Some(b.care_of), None) {
                log::warn!("nat edge: expiring {}: {e}", b.home);
            }
            log::info!(
                "nat edge: the binding of {} to {} expired",
                b.home,
                b.care_of
            );
            self.front.event("binding-expired", b.home, b.care_of, &[]);
        }
        self.front.persist();
    }

    /// Stops: the table goes (the bindings stay in the state file, for the next start).
    fn shutdown(&mut self, signal: Option<u32>) {
        if let Err(e) = nft::apply(&self.nft, &nft::remove()) {
            log::warn!("nat edge: removing the table: {e}");
        }
        log::info!(
            "nat edge: stopping on signal {}; {} binding(s) kept in the state file",
            signal.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            self.front.bindings.bindings().count()
        );
        self.front.events.emit(SOURCE, "shutdown", &[]);
    }
}
