//! The destination host-vmm's side of Mobile IPv4 (HyperMIP): it registers the guest's home
//! address with the home agent, its own address as the co-located care-of address (flags D
//! and T), authenticated with HMAC-MD5, Identification an NTP timestamp; retransmits with
//! backoff; takes a Reply only once it is authenticated and matches the Request; follows
//! the home agent's clock on code 133; refreshes the binding before its lifetime ends; and
//! deregisters when the guest comes home.

use mip::{
    Flags, Message, MipSetting, RegistrationRequest, ReplyCode, RequestClock, SecurityAssociation,
    read_key_file, reply_matches, sign_request, verify,
};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The first wait for a Reply; each retransmission doubles it.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait for one Reply.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a move waits for the home agent's acknowledgment before it rolls back.
pub const MOVE_BOUND: Duration = Duration::from_secs(3);
/// Code 133 resynchronisations per registration at most.
const MAX_RESYNC: u32 = 2;

/// Why a registration did not take.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The security association's key could not be read.
    #[error("the Mobile IP key: {0}")]
    Key(#[from] mip::ClientKeyError),
    /// The key or SPI does not make an association.
    #[error("the Mobile IP security association: {0}")]
    Association(#[from] mip::SaError),
    /// The UDP socket to the home agent.
    #[error("cannot reach the home agent {home_agent}: {error}")]
    Socket {
        /// The home agent.
        home_agent: Ipv4Addr,
        /// What failed.
        error: io::Error,
    },
    /// No authenticated Reply in time.
    #[error("the home agent {home_agent} did not answer the registration within {waited:?}")]
    Timeout {
        /// The home agent.
        home_agent: Ipv4Addr,
        /// How long it was given.
        waited: Duration,
    },
    /// The home agent said no.
    #[error("the home agent {home_agent} refused the registration: code {code} ({code:?})", code = code.to_u8())]
    Denied {
        /// The home agent.
        home_agent: Ipv4Addr,
        /// Its reason.
        code: ReplyCode,
    },
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

/// A guest's registrations with its home agent.
#[derive(Debug)]
pub struct Registrar {
    setting: MipSetting,
    sa: SecurityAssociation,
    socket: UdpSocket,
    care_of: Ipv4Addr,
    clock: RequestClock,
}

impl Registrar {
    /// Reads the key and opens a UDP socket toward the home agent; this host's address on
    /// the route to it becomes the care-of address.
    pub fn new(setting: &MipSetting) -> Result<Registrar, RegistrationError> {
        let key = read_key_file(&setting.key_file)?;
        let sa = SecurityAssociation::new(setting.spi, key)?;
        let ha = setting.home_agent;
        let fail = |error| RegistrationError::Socket {
            home_agent: ha,
            error,
        };
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(fail)?;
        socket
            .connect(SocketAddrV4::new(ha, mip::MIP_PORT))
            .map_err(fail)?;
        let care_of = match socket.local_addr().map_err(fail)? {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => {
                return Err(fail(io::Error::other("no IPv4 route to the home agent")));
            }
        };
        Ok(Registrar {
            setting: setting.clone(),
            sa,
            socket,
            care_of,
            clock: RequestClock::new(),
        })
    }

    /// This host's care-of address.
    pub fn care_of(&self) -> Ipv4Addr {
        self.care_of
    }

    /// Binds the home address to this host (the guest runs here, away from home).
    pub fn register(&mut self, bound: Duration) -> Result<Granted, RegistrationError> {
        self.exchange(self.setting.lifetime, self.care_of, bound)
    }

    /// Removes every binding of the home address (the guest is home again).
    pub fn deregister(&mut self, bound: Duration) -> Result<Granted, RegistrationError> {
        self.exchange(mip::LIFETIME_DEREGISTER, self.setting.home_address, bound)
    }

    fn request(&mut self, lifetime: u16, care_of: Ipv4Addr) -> (u64, Vec<u8>) {
        let identification = self.clock.next_identification();
        let mut request = RegistrationRequest {
            flags: Flags {
                decapsulation_by_mn: true,
                reverse_tunnel: true,
                ..Flags::default()
            },
            lifetime,
            home_address: self.setting.home_address,
            home_agent: self.setting.home_agent,
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
        let ha = self.setting.home_agent;
        let start = Instant::now();
        let deadline = start + bound;
        let socket_error = |error| RegistrationError::Socket {
            home_agent: ha,
            error,
        };
        let (mut id, mut bytes) = self.request(lifetime, care_of);
        let mut wait = FIRST_WAIT;
        let mut resyncs = 0;
        let mut buf = [0u8; 1500];
        'send: loop {
            if let Err(e) = self.socket.send(&bytes) {
                // An unreachable home agent (ICMP error) is worth retrying until the bound.
                log::debug!("roaming: registration not sent: {e}");
            }
            let resend_at = Instant::now() + wait;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(RegistrationError::Timeout {
                        home_agent: ha,
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
                            "roaming: a reply from the home agent failed authentication: {e}"
                        );
                        continue;
                    }
                };
                if !reply_matches(id, reply.identification)
                    || reply.home_address != self.setting.home_address
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
                    log::info!("roaming: following the home agent's clock (code 133)");
                    continue 'send;
                }
                return Err(RegistrationError::Denied {
                    home_agent: ha,
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
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Starts refreshing what `granted` gave `registrar`.
    pub fn start(mut registrar: Registrar, granted: Granted) -> io::Result<Refresher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
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
            thread: Some(thread),
        })
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
