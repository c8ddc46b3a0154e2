//! BSD-style sockets over smoltcp: the descriptor table behind the kernel's socket calls.
//!
//! [`SocketTable`] maps descriptors (from [`FIRST_FD`]) to TCP and UDP sockets and gives
//! them POSIX semantics smoltcp does not have by itself: `bind` with port checks and
//! ephemeral ports, `listen` with a backlog (a few smoltcp sockets listening on the same
//! port; `accept` takes an established one and puts a fresh listener in its place),
//! `connect` whose outcome is observed later, half-close, readiness for `poll`, and the
//! options the ABI supports. Every call is non-blocking and returns
//! [`Error::WouldBlock`] when it would wait; blocking, timeouts and errno values are the
//! kernel's business.
//!
//! Closed TCP sockets stay in smoltcp's set until their FIN handshake is done
//! ([`SocketTable::reap`], called after every poll, removes them).

use crate::stack::Stack;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};
use drivers::net::NetDevice;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

/// The first socket descriptor (0, 1, 2 are the console).
pub const FIRST_FD: i32 = 3;
/// Most sockets open at once.
pub const MAX_SOCKETS: usize = 64;
/// Bytes of TCP buffer per direction.
pub const TCP_BUFFER: usize = 16 * 1024;
/// Bytes of UDP payload buffer per direction.
pub const UDP_BUFFER: usize = 16 * 1024;
/// Datagrams each UDP buffer holds.
pub const UDP_PACKETS: usize = 16;
/// Most pending connections a listener holds.
pub const MAX_BACKLOG: usize = 4;
/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// First ephemeral port (IANA dynamic range, 49152..=65535).
const EPHEMERAL_FIRST: u16 = 49152;
/// A connection attempt, or unacknowledged data, gives up after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive interval when `SO_KEEPALIVE` is on.
const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// Why a socket call failed (the kernel maps each to an errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The call would have to wait (`EAGAIN`).
    WouldBlock,
    /// No such socket (`EBADF`).
    BadFd,
    /// Invalid argument or state for the call (`EINVAL`).
    Invalid,
    /// Only IPv4 is supported (`EAFNOSUPPORT`).
    AddressFamily,
    /// Only stream and datagram sockets exist (`ESOCKTNOSUPPORT`).
    SocketType,
    /// The protocol does not match the type (`EPROTONOSUPPORT`).
    Protocol,
    /// Too many sockets (`EMFILE`).
    TooManySockets,
    /// The port is taken (`EADDRINUSE`).
    AddressInUse,
    /// The address is not ours (`EADDRNOTAVAIL`).
    AddressNotAvailable,
    /// Not connected (`ENOTCONN`).
    NotConnected,
    /// Already connected (`EISCONN`).
    IsConnected,
    /// A connection attempt is still in progress (`EALREADY`).
    Already,
    /// A non-blocking connect started (`EINPROGRESS`).
    InProgress,
    /// The peer refused, or the attempt timed out (`ECONNREFUSED`).
    ConnectionRefused,
    /// The connection is closed for sending (`EPIPE`).
    BrokenPipe,
    /// A datagram socket without a peer needs an address (`EDESTADDRREQ`).
    DestinationRequired,
    /// The datagram does not fit (`EMSGSIZE`).
    MessageTooLong,
    /// The operation does not apply to this socket type (`EOPNOTSUPP`).
    NotSupported,
    /// No route to the destination (`ENETUNREACH`).
    Unreachable,
    /// No memory for the socket's buffers (`ENOBUFS`).
    NoBuffers,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Socket types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// TCP.
    Stream,
    /// UDP.
    Datagram,
}

/// Which halves `shutdown` closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// No more receiving.
    Read,
    /// No more sending (TCP sends FIN).
    Write,
    /// Both.
    Both,
}

/// What a socket is ready for (for `poll`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Data, a connection to accept, or end of stream is waiting.
    pub readable: bool,
    /// Data can be queued for sending.
    pub writable: bool,
    /// The connection is closed (or the socket was never connected).
    pub hangup: bool,
    /// An error is pending (read it with [`SocketTable::take_error`]).
    pub error: bool,
}

/// Socket options the ABI supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    /// `SO_REUSEADDR`: `bind` may take a port that connections (open or closing) still
    /// use; only another bound or listening socket conflicts.
    ReuseAddr,
    /// `SO_KEEPALIVE`: TCP keep-alives every 75 s.
    KeepAlive,
    /// `TCP_NODELAY`: Nagle's algorithm off.
    NoDelay,
    /// `SO_BROADCAST`: recorded only.
    Broadcast,
}

#[derive(Debug)]
enum Tcp {
    /// Created, maybe bound; no smoltcp socket yet.
    Fresh { bound: Option<SocketAddrV4> },
    /// Listening: smoltcp sockets waiting for connections.
    Listening {
        local: SocketAddrV4,
        queue: Vec<SocketHandle>,
    },
    /// Connecting or connected.
    Stream {
        handle: SocketHandle,
        connecting: bool,
    },
}

#[derive(Debug)]
struct Udp {
    handle: SocketHandle,
    bound: bool,
    peer: Option<SocketAddrV4>,
}

#[derive(Debug)]
enum Kind {
    Tcp(Tcp),
    Udp(Udp),
}

#[derive(Debug)]
struct Socket {
    kind: Kind,
    nonblocking: bool,
    reuse_addr: bool,
    keep_alive: bool,
    no_delay: bool,
    broadcast: bool,
    shut_read: bool,
    error: Option<Error>,
    recv_timeout_ns: Option<u64>,
    send_timeout_ns: Option<u64>,
}

/// The socket descriptors and their state.
#[derive(Debug)]
pub struct SocketTable {
    slots: Vec<Option<Socket>>,
    /// Closed TCP sockets finishing their handshake.
    closing: Vec<SocketHandle>,
    next_port: u16,
}

fn endpoint(addr: SocketAddrV4) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(*addr.ip()), addr.port())
}

fn listen_endpoint(addr: SocketAddrV4) -> IpListenEndpoint {
    IpListenEndpoint {
        addr: (!addr.ip().is_unspecified()).then_some(IpAddress::Ipv4(*addr.ip())),
        port: addr.port(),
    }
}

fn v4(endpoint: IpEndpoint) -> SocketAddrV4 {
    let IpAddress::Ipv4(ip) = endpoint.addr;
    SocketAddrV4::new(ip, endpoint.port)
}

fn v4_listen(endpoint: IpListenEndpoint) -> SocketAddrV4 {
    let ip = match endpoint.addr {
        Some(IpAddress::Ipv4(ip)) => ip,
        None => Ipv4Addr::UNSPECIFIED,
    };
    SocketAddrV4::new(ip, endpoint.port)
}

fn new_tcp() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    socket.set_timeout(Some(TCP_TIMEOUT));
    socket
}

fn new_udp() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            vec![0; UDP_BUFFER],
        ),
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            vec![0; UDP_BUFFER],
        ),
    )
}

/// A listening TCP socket is ready to be accepted once its handshake is done.
fn accept_ready(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed
    )
}

impl Default for SocketTable {
    fn default() -> Self {
        SocketTable::new(0)
    }
}

impl SocketTable {
    /// An empty table; `seed` picks where ephemeral ports start.
    pub fn new(seed: u64) -> SocketTable {
        let span = u64::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        SocketTable {
            slots: Vec::new(),
            closing: Vec::new(),
            next_port: EPHEMERAL_FIRST + (seed % span) as u16,
        }
    }

    fn index(fd: i32) -> Option<usize> {
        usize::try_from(fd.checked_sub(FIRST_FD)?).ok()
    }

    fn get(&self, fd: i32) -> Result<&Socket, Error> {
        Self::index(fd)
            .and_then(|i| self.slots.get(i))
            .and_then(Option::as_ref)
            .ok_or(Error::BadFd)
    }

    fn get_mut(&mut self, fd: i32) -> Result<&mut Socket, Error> {
        Self::index(fd)
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::as_mut)
            .ok_or(Error::BadFd)
    }

    /// Whether `fd` is a socket of this table.
    pub fn is_socket(&self, fd: i32) -> bool {
        self.get(fd).is_ok()
    }

    fn insert(&mut self, socket: Socket) -> Result<i32, Error> {
        let index = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < MAX_SOCKETS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(Error::TooManySockets),
        };
        self.slots[index] = Some(socket);
        // index < MAX_SOCKETS, so this cannot overflow.
        Ok(FIRST_FD + index as i32)
    }

    /// A new socket of type `ty`; `nonblocking` as from `SOCK_NONBLOCK`.
    pub fn socket<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        ty: Type,
        nonblocking: bool,
    ) -> Result<i32, Error> {
        if self.slots.iter().flatten().count() >= MAX_SOCKETS {
            return Err(Error::TooManySockets);
        }
        let kind = match ty {
            Type::Stream => Kind::Tcp(Tcp::Fresh { bound: None }),
            Type::Datagram => Kind::Udp(Udp {
                handle: stack.sockets_mut().add(new_udp()),
                bound: false,
                peer: None,
            }),
        };
        self.insert(Socket {
            kind,
            nonblocking,
            reuse_addr: false,
            keep_alive: false,
            no_delay: false,
            broadcast: false,
            shut_read: false,
            error: None,
            recv_timeout_ns: None,
            send_timeout_ns: None,
        })
    }

    /// Whether a port is bound by a socket of the same protocol (listening, bound, or a
    /// connection's local end, closing ones included).
    fn port_in_use<D: NetDevice>(&self, stack: &Stack<D>, port: u16, tcp: bool) -> bool {
        let sockets = stack.sockets();
        let tcp_port = |h: SocketHandle| {
            sockets
                .get::<tcp::Socket>(h)
                .local_endpoint()
                .is_some_and(|e| e.port == port)
        };
        let in_table = self.slots.iter().flatten().any(|s| match (&s.kind, tcp) {
            (Kind::Tcp(Tcp::Fresh { bound }), true) => bound.is_some_and(|b| b.port() == port),
            (Kind::Tcp(Tcp::Listening { local, .. }), true) => local.port() == port,
            (Kind::Tcp(Tcp::Stream { handle, .. }), true) => tcp_port(*handle),
            (Kind::Udp(u), false) => {
                u.bound && sockets.get::<udp::Socket>(u.handle).endpoint().port == port
            }
            _ => false,
        });
        in_table || (tcp && self.closing.iter().any(|h| tcp_port(*h)))
    }

    /// Bound ports for listening conflict only with other bound or listening sockets.
    fn listen_port_in_use(&self, port: u16, except: i32) -> bool {
        self.slots.iter().enumerate().any(|(i, s)| {
            FIRST_FD + i as i32 != except
                && match s.as_ref().map(|s| &s.kind) {
                    Some(Kind::Tcp(Tcp::Fresh { bound: Some(b) })) => b.port() == port,
                    Some(Kind::Tcp(Tcp::Listening { local, .. })) => local.port() == port,
                    _ => false,
                }
        })
    }

    fn ephemeral_port<D: NetDevice>(&mut self, stack: &Stack<D>, tcp: bool) -> Result<u16, Error> {
        for _ in EPHEMERAL_FIRST..=u16::MAX {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            let taken =
                self.port_in_use(stack, port, tcp) || (tcp && self.listen_port_in_use(port, -1));
            if !taken {
                return Ok(port);
            }
        }
        Err(Error::AddressInUse)
    }

    fn check_local_address<D: NetDevice>(stack: &Stack<D>, ip: &Ipv4Addr) -> Result<(), Error> {
        if ip.is_unspecified() || *ip == stack.config().address.address() {
            Ok(())
        } else {
            Err(Error::AddressNotAvailable)
        }
    }

    /// Binds `fd` to `addr` (the unspecified address or ours; port 0 picks one).
    pub fn bind<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        addr: SocketAddrV4,
    ) -> Result<(), Error> {
        Self::check_local_address(stack, addr.ip())?;
        let socket = self.get(fd)?;
        let is_tcp = matches!(socket.kind, Kind::Tcp(_));
        // Without SO_REUSEADDR any socket on the port conflicts (connections and closing
        // ones included); with it, only another bound or listening socket does.
        let reuse = socket.reuse_addr;
        match &socket.kind {
            Kind::Tcp(Tcp::Fresh { bound: None }) => {}
            Kind::Udp(u) if !u.bound => {}
            _ => return Err(Error::Invalid),
        }
        let port = match addr.port() {
            0 => self.ephemeral_port(stack, is_tcp)?,
            p if (is_tcp && self.listen_port_in_use(p, fd))
                || (!reuse && self.port_in_use(stack, p, is_tcp)) =>
            {
                return Err(Error::AddressInUse);
            }
            p => p,
        };
        let addr = SocketAddrV4::new(*addr.ip(), port);
        match &mut self.get_mut(fd)?.kind {
            Kind::Tcp(tcp) => *tcp = Tcp::Fresh { bound: Some(addr) },
            Kind::Udp(u) => {
                stack
                    .sockets_mut()
                    .get_mut::<udp::Socket>(u.handle)
                    .bind(listen_endpoint(addr))
                    .map_err(|_| Error::Invalid)?;
                u.bound = true;
            }
        }
        Ok(())
    }

    /// Starts listening on `fd` (binding an ephemeral port if unbound) with room for
    /// `backlog` pending connections (1 to [`MAX_BACKLOG`]).
    pub fn listen<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        backlog: i32,
    ) -> Result<(), Error> {
        let want = usize::try_from(backlog).unwrap_or(0).clamp(1, MAX_BACKLOG);
        let local = match &self.get(fd)?.kind {
            Kind::Udp(_) => return Err(Error::NotSupported),
            Kind::Tcp(Tcp::Stream { .. }) => return Err(Error::Invalid),
            Kind::Tcp(Tcp::Listening { .. }) => return Ok(()),
            Kind::Tcp(Tcp::Fresh { bound: Some(b) }) => *b,
            Kind::Tcp(Tcp::Fresh { bound: None }) => {
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.ephemeral_port(stack, true)?)
            }
        };
        let socket = self.get(fd)?;
        let (no_delay, keep_alive) = (socket.no_delay, socket.keep_alive);
        let mut queue = Vec::with_capacity(want);
        for _ in 0..want {
            let mut s = new_tcp();
            s.set_nagle_enabled(!no_delay);
            s.set_keep_alive(keep_alive.then_some(KEEP_ALIVE));
            if s.listen(listen_endpoint(local)).is_err() {
                for h in queue {
                    stack.sockets_mut().remove(h);
                }
                return Err(Error::Invalid);
            }
            queue.push(stack.sockets_mut().add(s));
        }
        self.get_mut(fd)?.kind = Kind::Tcp(Tcp::Listening { local, queue });
        Ok(())
    }

    /// Takes an established connection from listener `fd`: its new descriptor and the
    /// peer's address.
    pub fn accept<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
    ) -> Result<(i32, SocketAddrV4), Error> {
        let socket = self.get_mut(fd)?;
        let (no_delay, keep_alive) = (socket.no_delay, socket.keep_alive);
        let Kind::Tcp(Tcp::Listening { local, queue }) = &mut socket.kind else {
            return Err(Error::Invalid);
        };
        let local = *local;
        let sockets = stack.sockets_mut();
        let mut ready = None;
        for (i, &h) in queue.iter().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if accept_ready(s.state()) {
                ready = Some(i);
                break;
            }
            if s.state() == tcp::State::Closed {
                // A handshake that was reset: listen again.
                let _ = s.listen(listen_endpoint(local));
            }
        }
        let i = ready.ok_or(Error::WouldBlock)?;
        let mut fresh = new_tcp();
        fresh.set_nagle_enabled(!no_delay);
        fresh.set_keep_alive(keep_alive.then_some(KEEP_ALIVE));
        fresh
            .listen(listen_endpoint(local))
            .map_err(|_| Error::Invalid)?;
        let fresh = sockets.add(fresh);
        let handle = core::mem::replace(&mut queue[i], fresh);
        let peer = sockets
            .get::<tcp::Socket>(handle)
            .remote_endpoint()
            .map(v4)
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let new = Socket {
            kind: Kind::Tcp(Tcp::Stream {
                handle,
                connecting: false,
            }),
            nonblocking: false,
            reuse_addr: false,
            keep_alive,
            no_delay,
            broadcast: false,
            shut_read: false,
            error: None,
            recv_timeout_ns: None,
            send_timeout_ns: None,
        };
        match self.insert(new) {
            Ok(new_fd) => Ok((new_fd, peer)),
            Err(e) => {
                stack.sockets_mut().get_mut::<tcp::Socket>(handle).abort();
                self.closing.push(handle);
                Err(e)
            }
        }
    }

    /// Starts connecting `fd` to `addr`. TCP returns [`Error::InProgress`]: the outcome
    /// comes from [`SocketTable::connect_result`]. UDP just records the peer.
    pub fn connect<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        addr: SocketAddrV4,
    ) -> Result<(), Error> {
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(Error::AddressNotAvailable);
        }
        let socket = self.get(fd)?;
        let (no_delay, keep_alive) = (socket.no_delay, socket.keep_alive);
        match &socket.kind {
            Kind::Udp(u) => {
                if !u.bound {
                    self.bind(stack, fd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                }
                if let Kind::Udp(u) = &mut self.get_mut(fd)?.kind {
                    u.peer = Some(addr);
                }
                return Ok(());
            }
            Kind::Tcp(Tcp::Listening { .. }) => return Err(Error::Invalid),
            Kind::Tcp(Tcp::Stream {
                connecting: true, ..
            }) => return Err(Error::Already),
            Kind::Tcp(Tcp::Stream { .. }) => return Err(Error::IsConnected),
            Kind::Tcp(Tcp::Fresh { .. }) => {}
        }
        let local = match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Fresh { bound: Some(b) }) => *b,
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.ephemeral_port(stack, true)?),
        };
        let mut s = new_tcp();
        s.set_nagle_enabled(!no_delay);
        s.set_keep_alive(keep_alive.then_some(KEEP_ALIVE));
        let (iface, sockets) = stack.iface_and_sockets();
        s.connect(iface.context(), endpoint(addr), listen_endpoint(local))
            .map_err(|_| Error::Unreachable)?;
        let handle = sockets.add(s);
        self.get_mut(fd)?.kind = Kind::Tcp(Tcp::Stream {
            handle,
            connecting: true,
        });
        Err(Error::InProgress)
    }

    /// The outcome of a TCP connect: `Ok` once established, [`Error::WouldBlock`] while
    /// the handshake runs, [`Error::ConnectionRefused`] if it failed (the socket is then
    /// fresh again).
    pub fn connect_result<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
    ) -> Result<(), Error> {
        self.refresh(stack, fd)?;
        let socket = self.get_mut(fd)?;
        if let Some(e) = socket.error.take() {
            return Err(e);
        }
        match &socket.kind {
            Kind::Tcp(Tcp::Stream {
                connecting: true, ..
            }) => Err(Error::WouldBlock),
            Kind::Tcp(Tcp::Stream { .. }) | Kind::Udp(_) => Ok(()),
            _ => Err(Error::NotConnected),
        }
    }

    /// Notices a finished handshake on a connecting TCP socket.
    fn refresh<D: NetDevice>(&mut self, stack: &mut Stack<D>, fd: i32) -> Result<(), Error> {
        let socket = self.get_mut(fd)?;
        let Kind::Tcp(Tcp::Stream {
            handle,
            connecting: true,
        }) = socket.kind
        else {
            return Ok(());
        };
        match stack.sockets().get::<tcp::Socket>(handle).state() {
            tcp::State::SynSent | tcp::State::SynReceived => {}
            tcp::State::Closed => {
                stack.sockets_mut().remove(handle);
                socket.kind = Kind::Tcp(Tcp::Fresh { bound: None });
                socket.error = Some(Error::ConnectionRefused);
            }
            _ => {
                socket.kind = Kind::Tcp(Tcp::Stream {
                    handle,
                    connecting: false,
                })
            }
        }
        Ok(())
    }

    /// Receives into `buf` (`peek` leaves the data queued). TCP returns 0 at end of stream;
    /// UDP returns the datagram's sender too (a longer datagram is cut to `buf`).
    pub fn recv<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        buf: &mut [u8],
        peek: bool,
    ) -> Result<(usize, Option<SocketAddrV4>), Error> {
        self.refresh(stack, fd)?;
        let socket = self.get(fd)?;
        match &socket.kind {
            Kind::Tcp(Tcp::Stream { handle, connecting }) => {
                if socket.shut_read {
                    return Ok((0, None));
                }
                if *connecting {
                    return Err(Error::WouldBlock);
                }
                let s = stack.sockets_mut().get_mut::<tcp::Socket>(*handle);
                if s.can_recv() {
                    let n = if peek {
                        s.peek_slice(buf)
                    } else {
                        s.recv_slice(buf)
                    };
                    return Ok((n.unwrap_or(0), None));
                }
                if s.may_recv() {
                    Err(Error::WouldBlock)
                } else {
                    Ok((0, None))
                }
            }
            Kind::Tcp(_) => Err(Error::NotConnected),
            Kind::Udp(u) => {
                if socket.shut_read {
                    return Ok((0, None));
                }
                let s = stack.sockets_mut().get_mut::<udp::Socket>(u.handle);
                let (data, from) = if peek {
                    s.peek().map(|(d, m)| (d, m.endpoint))
                } else {
                    s.recv().map(|(d, m)| (d, m.endpoint))
                }
                .map_err(|_| Error::WouldBlock)?;
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Ok((n, Some(v4(from))))
            }
        }
    }

    /// Queues `data` for sending; returns how much was taken. UDP sends one datagram to
    /// `to`, or to the connected peer.
    pub fn send<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        data: &[u8],
        to: Option<SocketAddrV4>,
    ) -> Result<usize, Error> {
        self.refresh(stack, fd)?;
        match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Stream { handle, connecting }) => {
                if *connecting {
                    return Err(Error::WouldBlock);
                }
                let s = stack.sockets_mut().get_mut::<tcp::Socket>(*handle);
                if !s.may_send() {
                    return Err(Error::BrokenPipe);
                }
                match s.send_slice(data) {
                    Ok(0) if !data.is_empty() => Err(Error::WouldBlock),
                    Ok(n) => Ok(n),
                    Err(_) => Err(Error::BrokenPipe),
                }
            }
            Kind::Tcp(_) => Err(Error::NotConnected),
            Kind::Udp(u) => {
                let to = to.or(u.peer).ok_or(Error::DestinationRequired)?;
                if to.ip().is_unspecified() || to.port() == 0 {
                    return Err(Error::AddressNotAvailable);
                }
                if !u.bound {
                    self.bind(stack, fd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                }
                let Kind::Udp(u) = &self.get(fd)?.kind else {
                    return Err(Error::Invalid);
                };
                let s = stack.sockets_mut().get_mut::<udp::Socket>(u.handle);
                if data.len() > MAX_UDP_PAYLOAD || data.len() > s.payload_send_capacity() {
                    return Err(Error::MessageTooLong);
                }
                match s.send_slice(data, endpoint(to)) {
                    Ok(()) => Ok(data.len()),
                    Err(udp::SendError::BufferFull) => Err(Error::WouldBlock),
                    Err(udp::SendError::Unaddressable) => Err(Error::Unreachable),
                }
            }
        }
    }

    /// Shuts down one or both halves of a connection.
    pub fn shutdown<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        how: Shutdown,
    ) -> Result<(), Error> {
        self.refresh(stack, fd)?;
        let socket = self.get_mut(fd)?;
        let handle = match &socket.kind {
            Kind::Tcp(Tcp::Stream {
                handle,
                connecting: false,
            }) => Some(*handle),
            Kind::Udp(u) if u.peer.is_some() => None,
            _ => return Err(Error::NotConnected),
        };
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            socket.shut_read = true;
        }
        if let (Some(h), Shutdown::Write | Shutdown::Both) = (handle, how) {
            stack.sockets_mut().get_mut::<tcp::Socket>(h).close();
        }
        Ok(())
    }

    /// Closes `fd`. A TCP connection finishes its FIN handshake in the background, or is
    /// reset if received data was left unread; pending connections of a listener are reset.
    pub fn close<D: NetDevice>(&mut self, stack: &mut Stack<D>, fd: i32) -> Result<(), Error> {
        let index = Self::index(fd).ok_or(Error::BadFd)?;
        let socket = self
            .slots
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(Error::BadFd)?;
        match socket.kind {
            Kind::Tcp(Tcp::Fresh { .. }) => {}
            Kind::Tcp(Tcp::Listening { queue, .. }) => {
                for h in queue {
                    stack.sockets_mut().get_mut::<tcp::Socket>(h).abort();
                    self.closing.push(h);
                }
            }
            Kind::Tcp(Tcp::Stream { handle, .. }) => {
                let tcp = stack.sockets_mut().get_mut::<tcp::Socket>(handle);
                // Data the app never read: reset, as Linux does (RFC 1122 4.2.2.13). A FIN
                // would leave the peer pushing into a window nobody opens again.
                if tcp.recv_queue() > 0 {
                    tcp.abort();
                } else {
                    tcp.close();
                }
                self.closing.push(handle);
            }
            Kind::Udp(u) => {
                stack.sockets_mut().remove(u.handle);
            }
        }
        Ok(())
    }

    /// Frees closed TCP sockets whose handshake is over (call after each poll).
    pub fn reap<D: NetDevice>(&mut self, stack: &mut Stack<D>) {
        if self.closing.is_empty() {
            return;
        }
        self.closing.retain(|&h| {
            let done = matches!(
                stack.sockets().get::<tcp::Socket>(h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            );
            if done {
                stack.sockets_mut().remove(h);
            }
            !done
        });
    }

    /// What `fd` is ready for.
    pub fn readiness<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
    ) -> Result<Readiness, Error> {
        self.refresh(stack, fd)?;
        let socket = self.get(fd)?;
        let error = socket.error.is_some();
        let sockets = stack.sockets();
        let r = match &socket.kind {
            Kind::Tcp(Tcp::Fresh { .. }) => Readiness {
                writable: error,
                hangup: true,
                error,
                ..Readiness::default()
            },
            Kind::Tcp(Tcp::Listening { queue, .. }) => Readiness {
                readable: queue
                    .iter()
                    .any(|&h| accept_ready(sockets.get::<tcp::Socket>(h).state())),
                ..Readiness::default()
            },
            Kind::Tcp(Tcp::Stream {
                connecting: true, ..
            }) => Readiness::default(),
            Kind::Tcp(Tcp::Stream { handle, .. }) => {
                let s = sockets.get::<tcp::Socket>(*handle);
                Readiness {
                    readable: s.can_recv() || !s.may_recv() || socket.shut_read,
                    writable: s.can_send(),
                    hangup: s.state() == tcp::State::Closed,
                    error,
                }
            }
            Kind::Udp(u) => {
                let s = sockets.get::<udp::Socket>(u.handle);
                Readiness {
                    readable: s.can_recv(),
                    writable: s.can_send(),
                    hangup: false,
                    error,
                }
            }
        };
        Ok(r)
    }

    /// The local address of `fd` (unspecified before `bind`).
    pub fn local_addr<D: NetDevice>(
        &self,
        stack: &Stack<D>,
        fd: i32,
    ) -> Result<SocketAddrV4, Error> {
        let unbound = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        Ok(match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Fresh { bound }) => bound.unwrap_or(unbound),
            Kind::Tcp(Tcp::Listening { local, .. }) => *local,
            Kind::Tcp(Tcp::Stream { handle, .. }) => stack
                .sockets()
                .get::<tcp::Socket>(*handle)
                .local_endpoint()
                .map_or(unbound, v4),
            Kind::Udp(u) => v4_listen(stack.sockets().get::<udp::Socket>(u.handle).endpoint()),
        })
    }

    /// The peer address of a connected `fd`.
    pub fn peer_addr<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
    ) -> Result<SocketAddrV4, Error> {
        self.refresh(stack, fd)?;
        match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Stream {
                handle,
                connecting: false,
            }) => stack
                .sockets()
                .get::<tcp::Socket>(*handle)
                .remote_endpoint()
                .map(v4)
                .ok_or(Error::NotConnected),
            Kind::Udp(Udp { peer: Some(p), .. }) => Ok(*p),
            _ => Err(Error::NotConnected),
        }
    }

    /// Sets an option.
    pub fn set_option<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        opt: Opt,
        on: bool,
    ) -> Result<(), Error> {
        let socket = self.get_mut(fd)?;
        let tcp_handles: Vec<SocketHandle> = match &socket.kind {
            Kind::Tcp(Tcp::Stream { handle, .. }) => vec![*handle],
            Kind::Tcp(Tcp::Listening { queue, .. }) => queue.clone(),
            _ => Vec::new(),
        };
        let is_tcp = matches!(socket.kind, Kind::Tcp(_));
        match opt {
            Opt::ReuseAddr => socket.reuse_addr = on,
            Opt::Broadcast => socket.broadcast = on,
            Opt::NoDelay if is_tcp => {
                socket.no_delay = on;
                for h in tcp_handles {
                    stack
                        .sockets_mut()
                        .get_mut::<tcp::Socket>(h)
                        .set_nagle_enabled(!on);
                }
            }
            Opt::KeepAlive if is_tcp => {
                socket.keep_alive = on;
                for h in tcp_handles {
                    stack
                        .sockets_mut()
                        .get_mut::<tcp::Socket>(h)
                        .set_keep_alive(on.then_some(KEEP_ALIVE));
                }
            }
            Opt::NoDelay | Opt::KeepAlive => return Err(Error::NotSupported),
        }
        Ok(())
    }

    /// Reads an option.
    pub fn option(&self, fd: i32, opt: Opt) -> Result<bool, Error> {
        let socket = self.get(fd)?;
        let is_tcp = matches!(socket.kind, Kind::Tcp(_));
        Ok(match opt {
            Opt::ReuseAddr => socket.reuse_addr,
            Opt::Broadcast => socket.broadcast,
            Opt::NoDelay if is_tcp => socket.no_delay,
            Opt::KeepAlive if is_tcp => socket.keep_alive,
            Opt::NoDelay | Opt::KeepAlive => return Err(Error::NotSupported),
        })
    }

    /// Takes the pending error (`SO_ERROR`), if any.
    pub fn take_error(&mut self, fd: i32) -> Result<Option<Error>, Error> {
        Ok(self.get_mut(fd)?.error.take())
    }

    /// The socket type of `fd`.
    pub fn socket_type(&self, fd: i32) -> Result<Type, Error> {
        Ok(match self.get(fd)?.kind {
            Kind::Tcp(_) => Type::Stream,
            Kind::Udp(_) => Type::Datagram,
        })
    }

    /// Whether calls on `fd` return [`Error::WouldBlock`] instead of waiting.
    pub fn nonblocking(&self, fd: i32) -> Result<bool, Error> {
        Ok(self.get(fd)?.nonblocking)
    }

    /// Sets non-blocking mode.
    pub fn set_nonblocking(&mut self, fd: i32, on: bool) -> Result<(), Error> {
        self.get_mut(fd)?.nonblocking = on;
        Ok(())
    }

    /// Receive and send timeouts in ns (`None` waits forever).
    pub fn timeouts(&self, fd: i32) -> Result<(Option<u64>, Option<u64>), Error> {
        let s = self.get(fd)?;
        Ok((s.recv_timeout_ns, s.send_timeout_ns))
    }

    /// Sets the receive (`recv == true`) or send timeout.
    pub fn set_timeout(&mut self, fd: i32, recv: bool, ns: Option<u64>) -> Result<(), Error> {
        let s = self.get_mut(fd)?;
        if recv {
            s.recv_timeout_ns = ns;
        } else {
            s.send_timeout_ns = ns;
        }
        Ok(())
    }

    /// Buffer size in bytes of `fd` in one direction (`SO_RCVBUF`, `SO_SNDBUF`).
    pub fn buffer_size(&self, fd: i32) -> Result<usize, Error> {
        Ok(match self.get(fd)?.kind {
            Kind::Tcp(_) => TCP_BUFFER,
            Kind::Udp(_) => UDP_BUFFER,
        })
    }
}
