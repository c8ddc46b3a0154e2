//! `host-vmm home-agent`: one thread, one epoll loop over four descriptors (the termination
//! signals, the registration socket, the TUN, the raw IP-in-IP socket), woken otherwise only
//! when the next binding ends or the next gratuitous ARP is due: no busy loop, no polling.
//!
//! A registration is decided ([`super::registration::decide`]), carried out (data path
//! first: if the kernel refuses, the Request is denied with 130 and nothing changes), the
//! state file rewritten, the event written, and only then the Reply sent. A move between
//! two care-of addresses changes only the binding list: the route already points into the
//! TUN and the care-of address is looked up per packet.

use super::binding::{BindingList, Bound};
use super::datapath::{DataPath, DataPathError};
use super::front::{BATCH, Front};
use super::registration::{Decision, Outcome};
use super::state::{self, StateError};
use super::sys;
use crate::events::EventMonitor;
use mip::{KeyTable, ReplyCode};
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The TUN device's name unless `--tun` says otherwise.
pub const DEFAULT_TUN: &str = "mip0";
/// Registrations handled per readiness before the loop looks at its other sources again.
/// Where events come from, in the event monitor's `source` field.
const SOURCE: &str = "home-agent";

/// How the home agent runs.
#[derive(Debug)]
pub struct Config {
    /// Where registrations arrive (UDP) and the tunnels' outer source address.
    pub listen: SocketAddrV4,
    /// The home link: where home addresses live and proxy ARP answers for them.
    pub home_link: String,
    /// The security associations, by SPI.
    pub keys: KeyTable,
    /// The state file, if any.
    pub state: Option<PathBuf>,
    /// The TUN device's name.
    pub tun: String,
    /// Where events go.
    pub events: EventMonitor,
}

/// Why the home agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HomeAgentError {
    /// The registration socket could not be bound.
    #[error("--listen {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddrV4,
        /// What the system said.
        error: io::Error,
    },
    /// The data path could not be set up (or a restored binding re-applied).
    #[error(transparent)]
    DataPath(#[from] DataPathError),
    /// The state file could not be read.
    #[error("--state")]
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

fn system(what: &'static str) -> impl Fn(io::Error) -> HomeAgentError {
    move |error| HomeAgentError::System { what, error }
}

/// Parses `--listen ADDR[:PORT]`: a unicast IPv4 address (the tunnels need a real source
/// address), port 434 unless given.
pub fn parse_listen(text: &str) -> Result<SocketAddrV4, String> {
    let addr = match text.parse::<SocketAddrV4>() {
        Ok(addr) => addr,
        Err(_) => match text.parse::<Ipv4Addr>() {
            Ok(ip) => SocketAddrV4::new(ip, mip::MIP_PORT),
            Err(_) => {
                return Err(format!(
                    "`{text}` is not an IPv4 address with an optional port (ADDR[:PORT])"
                ));
            }
        },
    };
    let ip = *addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(format!(
            "`{text}`: give one of this host's unicast addresses (it is the tunnels' source)"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("`{text}`: port 0"));
    }
    Ok(addr)
}

/// Event tokens.
const SIGNAL: u64 = 0;
const REGISTRATION: u64 = 1;
const TUN: u64 = 2;
const RAW: u64 = 3;

/// The running home agent.
struct HomeAgent {
    /// Registrations in and out; our addresses are the --listen one first, then the home
    /// link's.
    front: Front,
    datapath: DataPath,
}

/// Blocks SIGTERM and SIGINT in this thread (so they wait for the signalfd) and returns the
/// signalfd.
pub(super) fn termination_signals() -> Result<File, HomeAgentError> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        match vmm_sys_util::signal::block_signal(signal) {
            Ok(()) | Err(vmm_sys_util::signal::Error::SignalAlreadyBlocked(_)) => {}
            Err(e) => {
                return Err(HomeAgentError::System {
                    what: "blocking SIGTERM and SIGINT",
                    error: io::Error::other(e.to_string()),
                });
            }
        }
    }
    sys::termination_signals().map_err(system("signalfd"))
}

/// Runs the home agent until SIGTERM or SIGINT. `started` is called once it serves, with a
/// line saying where and how many bindings it restored.
pub fn run(config: Config, started: impl FnOnce(&str)) -> Result<(), HomeAgentError> {
    let signals = termination_signals()?;
    let mut bindings = match &config.state {
        Some(path) => state::load(path)?,
        None => BindingList::new(),
    };
    let listen_ip = *config.listen.ip();
    let datapath = DataPath::open(&config.home_link, &config.tun, listen_ip)?;
    let udp = UdpSocket::bind(config.listen).map_err(|error| HomeAgentError::Listen {
        addr: config.listen,
        error,
    })?;
    udp.set_nonblocking(true)
        .map_err(system("registration socket"))?;
    let mut ours = vec![listen_ip];
    ours.extend(
        datapath
            .home_addrs()
            .iter()
            .filter(|a| **a != listen_ip)
            .copied(),
    );

    // Bindings that ended while the home agent was away go, with what they left configured
    // (the routes went with the old TUN; the proxy entries stayed on the home link).
    let expired = bindings.expire(SystemTime::now());
    // Written at once, before any binding is applied: a state file that cannot be written is
    // bad input, found now rather than at the first registration.
    if let Some(path) = &config.state {
        state::save(&bindings, path)?;
    }
    let mut ha = HomeAgent {
        front: Front {
            keys: config.keys,
            ours,
            bindings,
            udp,
            state: config.state,
            events: config.events,
            who: "home agent",
            source: SOURCE,
            place: "care-of",
        },
        datapath,
    };
    for b in &expired {
        if let Err(e) = ha.datapath.release(b.home) {
            log::warn!("home agent: removing what {} left: {e}", b.home);
        }
        ha.front.event("binding-expired", b.home, b.care_of, &[]);
    }
    let now = Instant::now();
    for b in ha.front.bindings.bindings() {
        ha.datapath.capture(b.home, true, now)?;
        let left = b.left(SystemTime::now()).as_secs().to_string();
        ha.front.event(
            "binding-restored",
            b.home,
            b.care_of,
            &[("lifetime-left", left)],
        );
    }
    let restored = ha.front.bindings.bindings().count();

    let epoll = Epoll::new().map_err(system("epoll"))?;
    for (fd, token) in [
        (signals.as_raw_fd(), SIGNAL),
        (ha.front.udp.as_raw_fd(), REGISTRATION),
        (ha.datapath.tunnel.tun_fd(), TUN),
        (ha.datapath.tunnel.raw_fd(), RAW),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(system("epoll"))?;
    }
    ha.front.events.emit(
        SOURCE,
        "started",
        &[
            ("listen", config.listen.to_string()),
            ("home-link", config.home_link.clone()),
            ("restored", restored.to_string()),
        ],
    );
    started(&format!(
        "home agent on {} (home link {}, tunnel {}), {restored} binding(s) restored",
        config.listen,
        config.home_link,
        ha.datapath.tunnel.name()
    ));

    let mut events = vec![EpollEvent::default(); 8];
    let mut signals = signals;
    loop {
        let timeout = ha.timeout_ms(SystemTime::now(), Instant::now());
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
                    ha.shutdown(signal);
                    return Ok(());
                }
                REGISTRATION => ha.registrations(),
                TUN => {
                    let bindings = &ha.front.bindings;
                    ha.datapath.tunnel.forward(|dst| bindings.care_of(dst));
                }
                RAW => {
                    let bindings = &ha.front.bindings;
                    ha.datapath
                        .tunnel
                        .reverse(|care_of, home| bindings.reverse_allowed(care_of, home));
                }
                _ => {}
            }
        }
        ha.expire(SystemTime::now());
        ha.datapath.announce_due(Instant::now());
    }
}

impl HomeAgent {
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

    /// Milliseconds until the next binding ends or gratuitous ARP is due (-1: none), rounded
    /// up so the loop never wakes just before a deadline and spins.
    fn timeout_ms(&self, wall: SystemTime, mono: Instant) -> i32 {
        let expiry = self
            .front
            .bindings
            .next_expiry()
            .map(|at| at.duration_since(wall).unwrap_or(Duration::ZERO));
        let garp = self
            .datapath
            .next_announcement()
            .map(|at| at.saturating_duration_since(mono));
        match [expiry, garp].into_iter().flatten().min() {
            None => -1,
            Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        }
    }

    /// Makes `decision` true: data path, binding list, state file, event.
    fn carry_out(&mut self, decision: &mut Decision, from: SocketAddr) {
        match decision.outcome.clone() {
            Outcome::Ignored { reason } => {
                log::info!("home agent: ignored a datagram from {from}: {reason}");
            }
            Outcome::Denied { .. } => self.front.denied(decision, from),
            Outcome::Register { binding, code } => {
                let (home, care_of) = (binding.home, binding.care_of);
                if self.front.bindings.get(home).is_none()
                    && let Err(e) = self.datapath.capture(home, true, Instant::now())
                {
                    decision.fail(ReplyCode::HaInsufficientResources, e.to_string());
                    return self.front.denied(decision, from);
                }
                let lifetime = binding.lifetime;
                let moved_from = match self.front.bindings.bind(binding) {
                    Bound::Left => "home".to_owned(),
                    Bound::Replaced(old) => old.care_of.to_string(),
                };
                self.front.persist();
                log::info!("home agent: {home} bound to {care_of} for {lifetime} s (code {code})");
                self.front.event(
                    "registration-accepted",
                    home,
                    care_of,
                    &[
                        ("code", code.to_u8().to_string()),
                        ("lifetime", lifetime.to_string()),
                        ("from", moved_from),
                    ],
                );
            }
            Outcome::Deregister {
                home,
                care_of,
                identification,
            } => {
                let removed = self
                    .front
                    .bindings
                    .deregister(home, care_of, identification);
                if removed.is_some()
                    && let Err(e) = self.datapath.release(home)
                {
                    log::warn!("home agent: deregistering {home}: {e}");
                }
                self.front.persist();
                log::info!(
                    "home agent: {home} deregistered at {care_of}{}",
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
                self.front
                    .event("deregistered", home, left, &[("removed", was.into())]);
            }
        }
    }

    /// Removes the bindings whose lifetime ended by `now`.
    fn expire(&mut self, now: SystemTime) {
        let ended = self.front.bindings.expire(now);
        if ended.is_empty() {
            return;
        }
        for b in &ended {
            if let Err(e) = self.datapath.release(b.home) {
                log::warn!("home agent: expiring {}: {e}", b.home);
            }
            log::info!(
                "home agent: the binding of {} to {} expired",
                b.home,
                b.care_of
            );
            self.front.event("binding-expired", b.home, b.care_of, &[]);
        }
        self.front.persist();
    }

    /// Stops: the kernel configuration goes (the bindings stay in the state file, for the
    /// next start to re-apply).
    fn shutdown(&mut self, signal: Option<u32>) {
        let homes: Vec<Ipv4Addr> = self.front.bindings.bindings().map(|b| b.home).collect();
        for home in homes {
            if let Err(e) = self.datapath.release(home) {
                log::warn!("home agent: releasing {home}: {e}");
            }
        }
        let c = self.datapath.tunnel.counters;
        log::info!(
            "home agent: stopping on signal {}; {} tunnelled, {} reverse-tunnelled, {} unbound, \
             {} refused, {} errors",
            signal.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            c.encapsulated,
            c.decapsulated,
            c.unbound,
            c.refused,
            c.errors
        );
        self.front.events.emit(
            SOURCE,
            "shutdown",
            &[
                ("tunnelled", c.encapsulated.to_string()),
                ("reverse-tunnelled", c.decapsulated.to_string()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_address_with_an_optional_port() {
        assert_eq!(
            parse_listen("198.18.20.2"),
            Ok("198.18.20.2:434".parse().unwrap())
        );
        assert_eq!(
            parse_listen("198.18.20.2:4340"),
            Ok("198.18.20.2:4340".parse().unwrap())
        );
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1:434",
            "198.18.20.2:0",
            "ha",
            "198.18.20.2:x",
            "[::1]:434",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
