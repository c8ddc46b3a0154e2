//! The destination host-vmm's registrations: with a Mobile IPv4 home agent (HyperMIP: the
//! guest's home address, this host's own address as the co-located care-of address, flags
//! D and T), or with the edges of network paging (the same Requests: the guest's address,
//! its location address at this site as the care-of address, no flags). Authenticated with
//! HMAC-MD5, Identification an NTP timestamp; retransmitted with backoff; a Reply taken
//! only once it is authenticated and matches the Request; the agent's clock followed on
//! code 133; the binding refreshed before its lifetime ends; deregistered when the guest
//! comes home.

use mip::{
    Flags, Message, MipSetting, NatSetting, RegistrationRequest, ReplyCode, RequestClock,
    SecurityAssociation, read_key_file, reply_matches, sign_request, verify,
};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The first wait for a Reply; each retransmission doubles it.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait for one Reply.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a move waits for the home agent's (or an edge's) acknowledgment before it
/// rolls back.
pub const MOVE_BOUND: Duration = Duration::from_secs(3);
/// Code 133 resynchronisations per registration at most.
const MAX_RESYNC: u32 = 2;

/// Why a registration did not take.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The security association's key could not be read.
    #[error("the registration key: {0}")]
    Key(#[from] mip::ClientKeyError),
    /// The key or SPI does not make an association.
    #[error("the registration's security association: {0}")]
    Association(#[from] mip::SaError),
    /// The UDP socket to the agent.
    #[error("cannot reach the {role} {agent}: {error}")]
    Socket {
        /// What the agent is ("home agent", "edge").
        role: &'static str,
        /// Its address.
        agent: Ipv4Addr,
        /// What failed.
        error: io::Error,
    },
    /// No authenticated Reply in time.
    #[error("the {role} {agent} did not answer the registration within {waited:?}")]
    Timeout {
        /// What the agent is.
        role: &'static str,
        /// Its address.
        agent: Ipv4Addr,
        /// How long it was given.
        waited: Duration,
    },
    /// The agent said no.
    #[error("the {role} {agent} refused the registration: code {code} ({code:?})", code = code.to_u8())]
    Denied {
        /// What the agent is.
        role: &'static str,
        /// Its address.
        agent: Ipv4Addr,
        /// Its reason.
        code: ReplyCode,
    },
}

/// The care-of address a registration gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CareOf {
    /// This host's address on the route to the agent (Mobile IP's co-located care-of
    /// address).
    Local,
    /// This address (network paging: the guest's location address at this site).
    Given(Ipv4Addr),
}

/// Who registrations go to, and what they say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What the agent is, for messages: "home agent" or "edge".
    pub role: &'static str,
    /// The agent: UDP port 434 there, and the Requests' Home Agent field.
    pub agent: Ipv4Addr,
    /// The guest's (home) address.
    pub home: Ipv4Addr,
    /// Where it is while it runs here.
    pub care_of: CareOf,
    /// The Requests' flags.
    pub flags: Flags,
    /// The security association's SPI.
    pub spi: u32,
    /// The file holding its key.
    pub key_file: PathBuf,
    /// Seconds to request.
    pub lifetime: u16,
}

impl Target {
    /// The home agent of a `mip:` setting: this host is the co-located care-of address,
    /// flags D and T.
    pub fn home_agent(setting: &MipSetting) -> Target {
        Target {
            role: "home agent",
            agent: setting.home_agent,
            home: setting.home_address,
            care_of: CareOf::Local,
            flags: Flags {
                decapsulation_by_mn: true,
                reverse_tunnel: true,
                ..Flags::default()
            },
            spi: setting.spi,
            key_file: setting.key_file.clone(),
            lifetime: setting.lifetime,
        }
    }

    /// The edge `edge` of a `nat:` setting: the guest's location address (the home
    /// address if none is given: only a deregistration can use that), no flags.
    pub fn edge(setting: &NatSetting, edge: Ipv4Addr) -> Target {
        Target {
            role: "edge",
            agent: edge,
            home: setting.home_address,
            care_of: CareOf::Given(setting.location.unwrap_or(setting.home_address)),
            flags: Flags::default(),
            spi: setting.spi,
            key_file: setting.key_file.clone(),
            lifetime: setting.lifetime,
        }
    }
}

/// What the home agent granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Seconds the binding lasts (0: deregistered).
    pub lifetime: u16,
    /// The care-of address registered.
    pub care_of: Ipv4Addr,
    /// From the first Request to the accepted Reply.
    pub took: Duration,
}

/// A guest's registrations with one agent (its home agent, or one edge).
#[derive(Debug)]
pub struct Registrar {
    target: Target,
    sa: SecurityAssociation,
    socket: UdpSocket,
    care_of: Ipv4Addr,
    clock: RequestClock,
}

impl Registrar {
    /// Reads the key and opens a UDP socket toward the agent; with [`CareOf::Local`] this
    /// host's address on the route to it becomes the care-of address.
    pub fn new(target: Target) -> Result<Registrar, RegistrationError> {
        let key = read_key_file(&target.key_file)?;
        let sa = SecurityAssociation::new(target.spi, key)?;
        let (role, agent) = (target.role, target.agent);
        let fail = |error| RegistrationError::Socket { role, agent, error };
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(fail)?;
        socket
            .connect(SocketAddrV4::new(agent, mip::MIP_PORT))
            .map_err(fail)?;
        let care_of = match (target.care_of, socket.local_addr().map_err(fail)?) {
            (CareOf::Given(addr), _) => addr,
            (CareOf::Local, SocketAddr::V4(a)) => *a.ip(),
            (CareOf::Local, SocketAddr::V6(_)) => {
                return Err(fail(io::Error::other("no IPv4 route to the agent")));
            }
        };
        Ok(Registrar {
            target,
            sa,
            socket,
            care_of,
            clock: RequestClock::new(),
        })
    }

    /// The care-of address it registers.
    pub fn care_of(&self) -> Ipv4Addr {
        self.care_of
    }

    /// Who it registers with.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Binds the home address to this host (the guest runs here, away from home).
    pub fn register(&mut self, bound: Duration) -> Result<Granted, RegistrationError> {
        self.exchange(self.target.lifetime, self.care_of, bound)
    }

    /// Removes every binding of the home address (the guest is home again).
    pub fn deregister(&mut self, bound: Duration) -> Result<Granted, RegistrationError> {
        self.exchange(mip::LIFETIME_DEREGISTER, self.target.home, bound)
    }

    /// Removes the binding at this care-of address only (a move that did not happen):
    /// whatever binding another host made since stays.
    pub fn withdraw(&mut self, bound: Duration) -> Result<Granted, RegistrationError> {
        self.exchange(mip::LIFETIME_DEREGISTER, self.care_of, bound)
    }

    fn request(&mut self, lifetime: u16, care_of: Ipv4Addr) -> (u64, Vec<u8>) {
        let identification = self.clock.next_identification();
        let mut request = RegistrationRequest {
            flags: self.target.flags,
            lifetime,
            home_address: self.target.home,
            home_agent: self.target.agent,
            care_of,
            identification,
            extensions: Vec::new(),
        };
        sign_request(&mut request, &self.sa);
        (identification, request.encode())
    }

    /// Sends Requests (retransmitted with backoff) until an authenticated, matching Reply
    /// says yes or no, or `bound` passes.
    fn exchange(
        &mut self,
        lifetime: u16,
        care_of: Ipv4Addr,
        bound: Duration,
    ) -> Result<Granted, RegistrationError> {
        let (role, agent) = (self.target.role, self.target.agent);
        let start = Instant::now();
        let deadline = start + bound;
        let socket_error = |error| RegistrationError::Socket { role, agent, error };
        let (mut id, mut bytes) = self.request(lifetime, care_of);
        let mut wait = FIRST_WAIT;
        let mut resyncs = 0;
        let mut buf = [0u8; 1500];
        'send: loop {
            if let Err(e) = self.socket.send(&bytes) {
                // An unreachable agent (ICMP error) is worth retrying until the bound.
                log::debug!("roaming: registration not sent: {e}");
            }
            let resend_at = Instant::now() + wait;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(RegistrationError::Timeout {
                        role,
                        agent,
                        waited: bound,
                    });
                }
                if now >= resend_at {
                    wait = (wait * 2).min(MAX_WAIT);
                    continue 'send;
                }
                self.socket
                    .set_read_timeout(Some(resend_at.min(deadline) - now))
                    .map_err(socket_error)?;
                let n = match self.socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(socket_error(e)),
                };
                // Unauthenticated or unrelated answers are ignored, never acted on.
                let reply = match verify(&buf[..n], &self.sa) {
                    Ok(Message::Reply(r)) => r,
                    Ok(_) => continue,
                    Err(e) => {
                        log::warn!(
                            "roaming: a reply from the {role} {agent} failed authentication: {e}"
                        );
                        continue;
                    }
                };
                if !reply_matches(id, reply.identification)
                    || reply.home_address != self.target.home
                {
                    continue;
                }
                if reply.code.accepted() {
                    return Ok(Granted {
                        lifetime: reply.lifetime,
                        care_of,
                        took: start.elapsed(),
                    });
                }
                if reply.code == ReplyCode::HaIdentificationMismatch && resyncs < MAX_RESYNC {
                    resyncs += 1;
                    self.clock.resync(reply.identification);
                    (id, bytes) = self.request(lifetime, care_of);
                    log::info!("roaming: following the {role} {agent}'s clock (code 133)");
                    continue 'send;
                }
                return Err(RegistrationError::Denied {
                    role,
                    agent,
                    code: reply.code,
                });
            }
        }
    }
}

/// Keeps a binding alive while the guest runs here: re-registers when 3/4 of the granted
/// lifetime has passed. Dropping it stops the refreshes (the guest left or stopped); the
/// next host's registration replaces the binding.
#[derive(Debug)]
pub struct Refresher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    held: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Starts refreshing what `granted` gave `registrar`.
    pub fn start(mut registrar: Registrar, granted: Granted) -> io::Result<Refresher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let held = Arc::new(AtomicBool::new(false));
        let hold = held.clone();
        let failed = AtomicBool::new(false);
        let thread = std::thread::Builder::new()
            .name("mip-refresh".into())
            .spawn(move || {
                let mut lifetime = granted.lifetime;
                loop {
                    let every = Duration::from_secs(u64::from(lifetime.max(4)) * 3 / 4);
                    let (lock, cv) = &*stopped;
                    let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = cv
                        .wait_timeout_while(guard, every, |stop| !*stop)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *guard {
                        return;
                    }
                    drop(guard);
                    // While the guest is being moved on, a refresh could point the binding
                    // back here after the next host took it: look again shortly instead.
                    if hold.load(Ordering::SeqCst) {
                        lifetime = 4;
                        continue;
                    }
                    match registrar.register(MOVE_BOUND) {
                        Ok(g) => {
                            lifetime = g.lifetime;
                            failed.store(false, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Tried again at the next tick; the binding may still hold.
                            if !failed.swap(true, Ordering::Relaxed) {
                                log::warn!("roaming: refreshing the binding failed: {e}");
                            }
                            lifetime = 8;
                        }
                    }
                }
            })?;
        Ok(Refresher {
            stop,
            held,
            thread: Some(thread),
        })
    }

    /// Set while the guest is being moved away: no refresh goes out until it is cleared
    /// (the move rolled back).
    pub fn holder(&self) -> Arc<AtomicBool> {
        self.held.clone()
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
