//! Where a migration stream goes (`tcp:ADDR:PORT` or `unix:PATH`), how it is protected,
//! and the one stream type both ends read and write.
//!
//! Over TCP the stream runs inside mutual TLS ([`migration_wire::tls`]) unless plain TCP
//! was asked for by name ([`Security::InsecurePlainTcp`], which warns). Over a Unix socket
//! each end checks the other's credentials (SO_PEERCRED): the peer runs as this user or
//! as root.

use migration_wire::tls::rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned,
};
use migration_wire::tls::{self, TlsError};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A migration endpoint as the operator writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `tcp:ADDR:PORT` (pre-copy between any two hosts).
    Tcp(String),
    /// `unix:PATH` (same machine; required for zero-copy).
    Unix(PathBuf),
}

/// Why an endpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Neither `tcp:` nor `unix:`.
    #[error("`{0}` is not a migration address: use tcp:ADDR:PORT or unix:PATH")]
    Syntax(String),
    /// A TCP address that does not resolve.
    #[error("`{0}`: {1}")]
    Resolve(String, io::Error),
    /// connect(2) failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(Address, io::Error),
    /// bind(2) or listen(2) failed.
    #[error("cannot listen on {0}: {1}")]
    Listen(Address, io::Error),
    /// The Unix socket path holds something that is not a stale socket.
    #[error("cannot listen on {0}: {1}")]
    PathInUse(Address, String),
    /// The TLS handshake with the destination failed.
    #[error("TLS with {0} failed: {1}")]
    Tls(Address, io::Error),
    /// The Unix peer runs as another user.
    #[error("{0}: {1}")]
    Peer(Address, String),
    /// The protection asked for does not fit the address.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// How a stream to or from an [`Address`] is protected; made by [`Security::new`], which
/// refuses an unprotected `tcp:` address.
#[derive(Clone, Debug)]
pub enum Security {
    /// `unix:`: the peer must run as this user or as root (SO_PEERCRED).
    PeerCredentials,
    /// `tcp:` with mutual TLS, as the source.
    TlsClient(Arc<ClientConfig>),
    /// `tcp:` with mutual TLS, as the destination.
    TlsServer(Arc<ServerConfig>),
    /// `tcp:` in the clear, neither authenticated nor encrypted: asked for by name.
    InsecurePlainTcp,
}

/// Which end of a move builds its [`Security`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The source (connects; presents the client certificate).
    Source,
    /// The destination (listens; presents the server certificate).
    Destination,
}

/// Why a protection cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Plain TCP that was not asked for.
    #[error(
        "{0}: a tcp: move is authenticated and encrypted: give a TLS directory (--tls-dir DIR, \
         `tls_dir` in the API; `cargo xtask certs DIR` makes one) or, on a network you trust, \
         ask for plain TCP by name (--insecure-plain-tcp, `insecure_plain_tcp`)"
    )]
    Unprotected(Address),
    /// Both TLS and plain TCP asked for.
    #[error("{0}: give a TLS directory or --insecure-plain-tcp, not both")]
    Both(Address),
    /// TLS or plain TCP asked for on a `unix:` address.
    #[error(
        "{0}: a unix: move checks the peer's user instead (same user or root); a TLS directory \
         and --insecure-plain-tcp apply to tcp: only"
    )]
    NotTcp(Address),
    /// The TLS directory cannot be used.
    #[error("TLS directory {0}")]
    Tls(#[from] TlsError),
}

/// What the operator asked for (a TLS directory, or plain TCP by name), checked against
/// the address but not yet read: [`Protection::load`] makes the [`Security`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// `--tls-dir` / `tls_dir`.
    pub tls_dir: Option<PathBuf>,
    /// `--insecure-plain-tcp` / `insecure_plain_tcp`.
    pub insecure_plain_tcp: bool,
}

impl Protection {
    /// Checks the choice for `address` ([`check_choice`]).
    pub fn check(&self, address: &Address) -> Result<(), SecurityError> {
        check_choice(address, self.tls_dir.is_some(), self.insecure_plain_tcp)
    }

    /// Reads the TLS directory, if any, for this end ([`Security::new`]).
    pub fn load(&self, address: &Address, role: Role) -> Result<Security, SecurityError> {
        Security::new(
            address,
            role,
            self.tls_dir.as_deref(),
            self.insecure_plain_tcp,
        )
    }
}

/// Checks the choice alone (nothing read): exactly one of a TLS directory and plain TCP
/// for `tcp:`, neither for `unix:`.
pub fn check_choice(
    address: &Address,
    tls_dir: bool,
    insecure_plain_tcp: bool,
) -> Result<(), SecurityError> {
    match (address, tls_dir, insecure_plain_tcp) {
        (Address::Unix(_), false, false) => Ok(()),
        (Address::Unix(_), _, _) => Err(SecurityError::NotTcp(address.clone())),
        (Address::Tcp(_), true, true) => Err(SecurityError::Both(address.clone())),
        (Address::Tcp(_), false, false) => Err(SecurityError::Unprotected(address.clone())),
        (Address::Tcp(_), _, _) => Ok(()),
    }
}

impl Security {
    /// The protection for `address` at this end: mutual TLS from `tls_dir`, or plain TCP if
    /// `insecure_plain_tcp`; exactly one for `tcp:`, neither for `unix:` ([`check_choice`]).
    pub fn new(
        address: &Address,
        role: Role,
        tls_dir: Option<&Path>,
        insecure_plain_tcp: bool,
    ) -> Result<Security, SecurityError> {
        check_choice(address, tls_dir.is_some(), insecure_plain_tcp)?;
        match (address, tls_dir, insecure_plain_tcp) {
            (Address::Unix(_), None, false) => Ok(Security::PeerCredentials),
            (Address::Unix(_), _, _) => Err(SecurityError::NotTcp(address.clone())),
            (Address::Tcp(_), Some(_), true) => Err(SecurityError::Both(address.clone())),
            (Address::Tcp(_), None, false) => Err(SecurityError::Unprotected(address.clone())),
            (Address::Tcp(_), None, true) => Ok(Security::InsecurePlainTcp),
            (Address::Tcp(_), Some(dir), false) => Ok(match role {
                Role::Source => Security::TlsClient(tls::client_config(dir)?),
                Role::Destination => Security::TlsServer(tls::server_config(dir)?),
            }),
        }
    }

    /// A word for logs: `mutual TLS`, `plain TCP (insecure)`, `peer credentials`.
    pub fn name(&self) -> &'static str {
        match self {
            Security::PeerCredentials => "peer credentials",
            Security::TlsClient(_) | Security::TlsServer(_) => "mutual TLS",
            Security::InsecurePlainTcp => "plain TCP (insecure)",
        }
    }
}

/// Whether a Unix peer may take part: it runs as `own` (this process's effective user) or
/// as root.
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own || peer == 0
}

/// Checks the user at the other end of `s` ([`peer_allowed`]).
fn check_peer(s: &UnixStream) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(s)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let own = rustix::process::geteuid().as_raw();
    let peer = cred.uid.as_raw();
    if peer_allowed(peer, own) {
        Ok(())
    } else {
        Err(format!(
            "the peer (pid {}) runs as uid {peer}; only uid {own} (this user) or root may take part in a move",
            cred.pid.as_raw_nonzero()
        ))
    }
}

/// Warns that a stream is neither authenticated nor encrypted.
fn warn_plain(address: &Address) {
    log::warn!(
        "migration: {address}: plain TCP (--insecure-plain-tcp): the guest's memory crosses \
         unencrypted and the peer is not authenticated"
    );
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            // ADDR:PORT with a port that parses; the address resolves when used.
            let ok = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if ok {
                return Ok(Address::Tcp(rest.to_owned()));
            }
        } else if let Some(path) = s.strip_prefix("unix:")
            && !path.is_empty()
        {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        Err(AddressError::Syntax(s.to_owned()))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp:{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A source's TLS stream.
pub type TlsClientStream = StreamOwned<ClientConnection, Buffered>;
/// A destination's TLS stream.
pub type TlsServerStream = StreamOwned<ServerConnection, Buffered>;

/// Bytes read from the socket at once under TLS.
const READ_AHEAD: usize = 256 << 10;
/// TLS output rustls may hold before a write blocks: a page batch and its frame.
const TLS_WRITE_BUFFER: usize = 2 << 20;

/// A TCP socket read in large pieces: rustls asks for a few KiB at a time, and a page
/// stream is hundreds of MiB.
#[derive(Debug)]
pub struct Buffered {
    sock: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

impl Buffered {
    fn new(sock: TcpStream) -> Buffered {
        Buffered {
            sock,
            buf: vec![0; READ_AHEAD].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }
}

impl Read for Buffered {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            self.len = self.sock.read(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Buffered {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.sock.write(b)
    }

    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.sock.write_vectored(b)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// A connected migration stream.
#[derive(Debug)]
pub enum Stream {
    /// Over plain TCP (`--insecure-plain-tcp`).
    Tcp(TcpStream),
    /// Over a Unix stream socket (can carry the memfd).
    Unix(UnixStream),
    /// Over TLS, as the source.
    TlsClient(Box<TlsClientStream>),
    /// Over TLS, as the destination.
    TlsServer(Box<TlsServerStream>),
}

/// Runs a TLS handshake to its end (the socket's timeouts bound each read and write).
fn handshake<C, S>(conn: &mut C, sock: &mut Buffered) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = migration_wire::tls::rustls::ConnectionCommon<S>>,
    S: migration_wire::tls::rustls::SideData,
{
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    // Flush what the handshake left to write (the client's Finished).
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(())
}

impl Address {
    /// Connects, waiting at most `bound` for TCP's and TLS's handshakes, and checks the
    /// peer as `security` says (the destination's certificate, or its user on `unix:`).
    pub fn connect(&self, security: &Security, bound: Duration) -> Result<Stream, AddressError> {
        let fail = |e| AddressError::Connect(self.clone(), e);
        match (self, security) {
            (Address::Tcp(a), Security::TlsClient(_) | Security::InsecurePlainTcp) => {
                let addr = a
                    .to_socket_addrs()
                    .map_err(|e| AddressError::Resolve(a.clone(), e))?
                    .next()
                    .ok_or_else(|| {
                        AddressError::Resolve(a.clone(), io::Error::other("no address"))
                    })?;
                let s = TcpStream::connect_timeout(&addr, bound).map_err(fail)?;
                // Page batches are large writes; the small replies must not wait.
                s.set_nodelay(true).map_err(fail)?;
                let Security::TlsClient(config) = security else {
                    warn_plain(self);
                    return Ok(Stream::Tcp(s));
                };
                // The host as written: an address is checked against the certificate's
                // IP SANs, a name against its DNS SANs.
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                let name = tls::server_name(host).map_err(SecurityError::from)?;
                let mut conn = ClientConnection::new(config.clone(), name)
                    .map_err(|e| AddressError::Tls(self.clone(), io::Error::other(e)))?;
                s.set_read_timeout(Some(bound)).map_err(fail)?;
                s.set_write_timeout(Some(bound)).map_err(fail)?;
                let mut s = Buffered::new(s);
                handshake(&mut conn, &mut s).map_err(|e| AddressError::Tls(self.clone(), e))?;
                conn.set_buffer_limit(Some(TLS_WRITE_BUFFER));
                Ok(Stream::TlsClient(Box::new(StreamOwned::new(conn, s))))
            }
            (Address::Unix(p), Security::PeerCredentials) => {
                let s = UnixStream::connect(p).map_err(fail)?;
                check_peer(&s).map_err(|e| AddressError::Peer(self.clone(), e))?;
                Ok(Stream::Unix(s))
            }
            _ => Err(SecurityError::NotTcp(self.clone()).into()),
        }
    }

    /// Binds and listens. On `unix:` an existing path is replaced only if it is a stale
    /// socket (a socket nobody answers on); a live socket or any other kind of file is
    /// refused.
    pub fn listen(&self, security: Security) -> Result<Listening, AddressError> {
        let fail = |e| AddressError::Listen(self.clone(), e);
        match (self, &security) {
            (Address::Tcp(a), Security::TlsServer(_) | Security::InsecurePlainTcp) => {
                let l = TcpListener::bind(a.as_str()).map_err(fail)?;
                if matches!(security, Security::InsecurePlainTcp) {
                    warn_plain(self);
                }
                Ok(Listening::Tcp(l, security))
            }
            (Address::Unix(p), Security::PeerCredentials) => {
                remove_stale_socket(p).map_err(|e| AddressError::PathInUse(self.clone(), e))?;
                let l = UnixListener::bind(p).map_err(fail)?;
                let id = std::fs::symlink_metadata(p).map_err(fail)?;
                Ok(Listening::Unix(l, p.clone(), (id.dev(), id.ino())))
            }
            _ => Err(SecurityError::NotTcp(self.clone()).into()),
        }
    }
}

/// Removes `path` if it is a socket nobody listens on (left by a killed receiver);
/// refuses a live socket and anything that is not a socket.
pub fn remove_stale_socket(path: &Path) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket; host-vmm removes only a stale socket there: \
             choose another path or remove it yourself",
            path.display()
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "{} is in use: something listens on it",
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| format!("removing the stale socket: {e}"))
        }
        Err(e) => Err(format!(
            "{} is a socket that cannot be checked: {e}",
            path.display()
        )),
    }
}

/// A bound endpoint waiting for the source; a Unix socket file is removed on drop (if it
/// is still the one bound here).
#[derive(Debug)]
pub enum Listening {
    /// TCP, with the protection every connection gets.
    Tcp(TcpListener, Security),
    /// Unix, with the path to remove and its (device, inode).
    Unix(UnixListener, PathBuf, (u64, u64)),
}

/// A connection accepted but not yet authenticated: [`Incoming::authenticate`] runs the
/// TLS handshake or checks the peer's user.
#[derive(Debug)]
pub enum Incoming {
    /// TCP, with its protection.
    Tcp(TcpStream, Security),
    /// Unix.
    Unix(UnixStream),
}

/// A handle that shuts an [`Incoming`] connection from another thread (its reads then
/// fail at once).
#[derive(Debug)]
pub enum Closer {
    /// TCP.
    Tcp(TcpStream),
    /// Unix.
    Unix(UnixStream),
}

impl Closer {
    /// Shuts both directions.
    pub fn close(&self) {
        let _ = match self {
            Closer::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Closer::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Listening {
    /// Accepts one connection if one is waiting (the listener is made non-blocking):
    /// `None` if none is. Returns it with the peer's address for logs.
    pub fn try_accept(&self) -> io::Result<Option<(Incoming, String)>> {
        let r = match self {
            Listening::Tcp(l, security) => {
                l.set_nonblocking(true)?;
                l.accept().and_then(|(s, peer)| {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    Ok((Incoming::Tcp(s, security.clone()), peer.to_string()))
                })
            }
            Listening::Unix(l, p, _) => {
                l.set_nonblocking(true)?;
                l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    Ok((Incoming::Unix(s), format!("a peer on {}", p.display())))
                })
            }
        };
        match r {
            Ok(x) => Ok(Some(x)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The listening socket, to wait on with poll(2) (readable: a connection is waiting).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Listening::Tcp(l, _) => l.as_fd(),
            Listening::Unix(l, ..) => l.as_fd(),
        }
    }

    /// The local address (the port when TCP port 0 was asked for).
    pub fn local(&self) -> String {
        match self {
            Listening::Tcp(l, _) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_default(),
            Listening::Unix(_, p, _) => format!("unix:{}", p.display()),
        }
    }

    /// How accepted connections are protected.
    pub fn security(&self) -> &'static str {
        match self {
            Listening::Tcp(_, s) => s.name(),
            Listening::Unix(..) => Security::PeerCredentials.name(),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Listening::Unix(_, p, id) = self
            && std::fs::symlink_metadata(&*p).is_ok_and(|m| (m.dev(), m.ino()) == *id)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Incoming {
    /// A handle to shut this connection from another thread.
    pub fn closer(&self) -> io::Result<Closer> {
        Ok(match self {
            Incoming::Tcp(s, _) => Closer::Tcp(s.try_clone()?),
            Incoming::Unix(s) => Closer::Unix(s.try_clone()?),
        })
    }

    /// Bounds every read and write on the connection from now on.
    pub fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Incoming::Tcp(s, _) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Incoming::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    /// Authenticates the peer: the TLS handshake (a client certificate signed by the CA),
    /// or its user on `unix:`. Plain TCP takes anyone.
    pub fn authenticate(self) -> Result<Stream, String> {
        match self {
            Incoming::Tcp(s, Security::TlsServer(config)) => {
                let mut conn = ServerConnection::new(config).map_err(|e| format!("TLS: {e}"))?;
                let mut s = Buffered::new(s);
                handshake(&mut conn, &mut s).map_err(|e| format!("TLS handshake: {e}"))?;
                conn.set_buffer_limit(Some(TLS_WRITE_BUFFER));
                Ok(Stream::TlsServer(Box::new(StreamOwned::new(conn, s))))
            }
            Incoming::Tcp(s, _) => Ok(Stream::Tcp(s)),
            Incoming::Unix(s) => {
                check_peer(&s)?;
                Ok(Stream::Unix(s))
            }
        }
    }
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::TlsClient(s) => Some(&s.get_ref().sock),
            Stream::TlsServer(s) => Some(&s.get_ref().sock),
            Stream::Unix(_) => None,
        }
    }

    /// Bounds every read (`None`: wait as long as it takes).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match (self, self.tcp()) {
            (_, Some(s)) => s.set_read_timeout(t),
            (Stream::Unix(s), None) => s.set_read_timeout(t),
            _ => Ok(()),
        }
    }

    /// Bounds every write.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match (self, self.tcp()) {
            (_, Some(s)) => s.set_write_timeout(t),
            (Stream::Unix(s), None) => s.set_write_timeout(t),
            _ => Ok(()),
        }
    }

    /// The Unix stream, for passing the memfd.
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            _ => None,
        }
    }

    /// Closes both directions (the peer sees end of stream at once); over TLS after a
    /// close_notify.
    pub fn shutdown(&mut self) {
        match self {
            Stream::TlsClient(s) => {
                s.conn.send_close_notify();
                let _ = s.conn.write_tls(&mut s.sock);
            }
            Stream::TlsServer(s) => {
                s.conn.send_close_notify();
                let _ = s.conn.write_tls(&mut s.sock);
            }
            _ => {}
        }
        let _ = match (&*self, self.tcp()) {
            (_, Some(s)) => s.shutdown(std::net::Shutdown::Both),
            (Stream::Unix(s), None) => s.shutdown(std::net::Shutdown::Both),
            _ => Ok(()),
        };
    }
}

impl Stream {
    /// Whether a read would find something within `timeout`: bytes TLS already took off
    /// the socket (a record read ahead, or plaintext not yet consumed), else the socket
    /// becoming readable (or closed) within `timeout`. Lets one thread wait for the peer
    /// while it does other work between polls.
    pub fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        let buffered = |b: &Buffered| b.pos < b.len;
        let tls_has = |state: Result<migration_wire::tls::rustls::IoState, _>| match state {
            Ok(s) => Ok(s.plaintext_bytes_to_read() > 0),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        let ready = match self {
            Stream::TlsClient(s) => buffered(&s.sock) || tls_has(s.conn.process_new_packets())?,
            Stream::TlsServer(s) => buffered(&s.sock) || tls_has(s.conn.process_new_packets())?,
            _ => false,
        };
        if ready {
            return Ok(true);
        }
        let timeout = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let flags = rustix::event::PollFlags::IN;
        let n = match (&*self, self.tcp()) {
            (_, Some(s)) => {
                rustix::event::poll(&mut [rustix::event::PollFd::new(s, flags)], Some(&timeout))
            }
            (Stream::Unix(s), None) => {
                rustix::event::poll(&mut [rustix::event::PollFd::new(s, flags)], Some(&timeout))
            }
            _ => Ok(0),
        };
        match n {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads what the peer sent without first writing what is left to send (over TLS, rustls
/// otherwise flushes its pending output before each read): after a failed write, the
/// peer's last words (its Failed) can still be read.
pub struct ReadOnly<'a>(&'a mut Stream);

impl Stream {
    /// See [`ReadOnly`].
    pub fn read_only(&mut self) -> ReadOnly<'_> {
        ReadOnly(self)
    }
}

fn read_no_flush<C, S>(conn: &mut C, sock: &mut Buffered, buf: &mut [u8]) -> io::Result<usize>
where
    C: std::ops::DerefMut<Target = migration_wire::tls::rustls::ConnectionCommon<S>>,
    S: migration_wire::tls::rustls::SideData,
{
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if conn.read_tls(sock)? == 0 {
            return Ok(0);
        }
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

impl Read for ReadOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.0 {
            Stream::TlsClient(s) => read_no_flush(&mut s.conn, &mut s.sock, buf),
            Stream::TlsServer(s) => read_no_flush(&mut s.conn, &mut s.sock, buf),
            other => other.read(buf),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tls = match self {
            Stream::Tcp(s) => return s.read(buf),
            Stream::Unix(s) => return s.read(buf),
            Stream::TlsClient(s) => s.read(buf),
            Stream::TlsServer(s) => s.read(buf),
        };
        match tls {
            // A peer gone without close_notify reads as the end of the stream, as on plain
            // TCP: frames carry their own length and checksum, so a cut stream is still
            // refused as truncated.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::TlsClient(s) => s.write(buf),
            Stream::TlsServer(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::TlsClient(s) => s.flush(),
            Stream::TlsServer(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            "tcp:198.18.0.1:7000".parse::<Address>().unwrap(),
            Address::Tcp("198.18.0.1:7000".into())
        );
        assert_eq!(
            "unix:/tmp/m.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/m.sock".into())
        );
        for bad in [
            "",
            "tcp:",
            "tcp:1.2.3.4",
            "tcp::80",
            "tcp:h:99999",
            "unix:",
            "udp:x:1",
        ] {
            let e = bad.parse::<Address>().unwrap_err().to_string();
            assert!(e.contains("tcp:ADDR:PORT or unix:PATH"), "{bad}: {e}");
        }
    }

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("roam-target-{tag}-{}", std::process::id()))
    }

    #[test]
    fn tcp_is_tls_unless_plain_tcp_is_asked_for_by_name() {
        let tcp: Address = "tcp:127.0.0.1:7000".parse().unwrap();
        let unix: Address = "unix:/tmp/x.sock".parse().unwrap();
        let e = Security::new(&tcp, Role::Source, None, false).unwrap_err();
        assert!(matches!(e, SecurityError::Unprotected(_)));
        let text = e.to_string();
        assert!(
            text.contains("--tls-dir") && text.contains("--insecure-plain-tcp"),
            "{text}"
        );
        assert!(matches!(
            Security::new(&tcp, Role::Destination, None, true),
            Ok(Security::InsecurePlainTcp)
        ));
        assert!(matches!(
            Security::new(&tcp, Role::Source, Some(Path::new("/x")), true),
            Err(SecurityError::Both(_))
        ));
        assert!(matches!(
            Security::new(&tcp, Role::Source, Some(Path::new("/nonexistent")), false),
            Err(SecurityError::Tls(_))
        ));
        assert!(matches!(
            Security::new(&unix, Role::Source, None, false),
            Ok(Security::PeerCredentials)
        ));
        for (dir, plain) in [(Some(Path::new("/x")), false), (None, true)] {
            assert!(matches!(
                Security::new(&unix, Role::Destination, dir, plain),
                Err(SecurityError::NotTcp(_))
            ));
        }
        let d = temp("certs");
        migration_wire::tls::generate(&["127.0.0.1".into()])
            .unwrap()
            .write(&d)
            .unwrap();
        assert!(matches!(
            Security::new(&tcp, Role::Source, Some(&d), false),
            Ok(Security::TlsClient(_))
        ));
        assert!(matches!(
            Security::new(&tcp, Role::Destination, Some(&d), false),
            Ok(Security::TlsServer(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_this_user_or_root_may_be_the_peer() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(1000, 0));
        // A real peer: this process, on both ends.
        let (a, _b) = UnixStream::pair().unwrap();
        check_peer(&a).unwrap();
    }

    #[test]
    fn a_unix_listener_replaces_only_a_stale_socket() {
        let path = temp("stale.sock");
        let _ = std::fs::remove_file(&path);
        let address = Address::Unix(path.clone());
        // A stale socket (bound, nobody listening any more) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = address.listen(Security::PeerCredentials).unwrap();
        // A live one is refused, and left alone.
        let e = address.listen(Security::PeerCredentials).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(path.exists());
        drop(live);
        assert!(!path.exists(), "the listener removes its socket");
        // A regular file is never removed.
        std::fs::write(&path, b"precious").unwrap();
        let e = address.listen(Security::PeerCredentials).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        // Nor a directory.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(address.listen(Security::PeerCredentials).is_err());
        assert!(path.is_dir());
        std::fs::remove_dir(&path).unwrap();
        // A socket file that replaced ours is not removed by our drop.
        let live = address.listen(Security::PeerCredentials).unwrap();
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        drop(live);
        assert!(path.exists(), "another listener's socket is left alone");
        drop(other);
        let _ = std::fs::remove_file(&path);
    }
}
