//! BSD-style sockets over smoltcp: the descriptor table behind the kernel's socket calls.
//!
//! [`SocketTable`] maps descriptors (from [`FIRST_FD`]) to TCP and UDP sockets and gives
//! them POSIX semantics smoltcp does not have by itself: `bind` with port checks and
//! ephemeral ports, `listen` with a backlog, `accept`, `connect` whose outcome is observed
//! later, half-close, readiness for `poll`, and the options the ABI supports. Every call is
//! non-blocking and returns [`Error::WouldBlock`] when it would wait; blocking, timeouts and
//! errno values are the kernel's business.
//!
//! **The table grows with demand**: descriptors up to [`MAX_SOCKETS`], each new socket only
//! if its buffers can be allocated with [`HEADROOM`] to spare. Out of memory (or
//! descriptors), a new connection is refused; an established one is never touched.
//!
//! **Listeners.** smoltcp has no listen queue: a socket in Listen takes one SYN and becomes
//! that connection. A listener here owns its pending connections, as Linux does in two
//! queues of `listen`'s backlog n each (at most [`MAX_BACKLOG`]): handshakes under way, and
//! connections waiting for `accept`. After every frame ([`SocketTable::update`], run by
//! [`SocketTable::poll`]) it keeps one more socket in Listen, so the next SYN finds one:
//! - a handshake that completes waits for `accept` (oldest first);
//! - a handshake that fails (RST) or times out ([`HANDSHAKE_TIMEOUT`]) frees its place;
//! - while n handshakes are under way, a SYN is taken only when it is a resend
//!   ([`crate::synguard`]): a spoofed flood's SYNs, each sent once, are dropped before
//!   smoltcp sees them, so the guest keeps up with it and a real client (which resends
//!   after 1 s) finds its final ACK answered at once rather than queued behind hundreds
//!   of SYNs;
//! - a SYN that is taken while n handshakes are under way drops the oldest (silently: its
//!   peer gets RST if it ever answers), whose socket listens again. A flood that resends
//!   its SYNs thus only ever churns half-open entries, while a real client, whose
//!   handshake completes in one round trip, gets through: its entry has to survive the
//!   SYNs taken after it, not [`HANDSHAKE_TIMEOUT`]. Linux gets this from SYN cookies;
//!   smoltcp has none. Refusing every new SYN instead would hand the listener to whoever
//!   sends SYNs fastest;
//! - with n connections nobody accepted, no socket listens: SYNs are dropped (the client
//!   sends them again), as Linux does with a full accept queue.
//!
//! Closed TCP sockets stay in the stack until their FIN handshake is done; the stack
//! reports every state change, and [`SocketTable::update`] frees them then.

use crate::demux::TcpHandle;
use crate::stack::{Polled, Stack};
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};
use drivers::net::NetDevice;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

/// The first socket descriptor (0, 1, 2 are the console).
pub const FIRST_FD: i32 = 3;
/// Most descriptors open at once (memory permitting: see [`HEADROOM`]).
pub const MAX_SOCKETS: usize = 65_536;
/// Heap a new socket must leave free beyond its own buffers, so the app and the kernel
/// still find memory when sockets have taken the rest.
pub const HEADROOM: usize = 1 << 20;
/// Bytes of TCP buffer per direction.
pub const TCP_BUFFER: usize = 16 * 1024;
/// Bytes of UDP payload buffer per direction.
pub const UDP_BUFFER: usize = 16 * 1024;
/// Datagrams each UDP buffer holds.
pub const UDP_PACKETS: usize = 16;
/// `listen`'s backlog is capped here (Linux's traditional `SOMAXCONN`): at most this many
/// handshakes under way and this many connections waiting for `accept`, per listener.
pub const MAX_BACKLOG: usize = 128;
/// A passive handshake (SYN received, SYN-ACK sent) gives up after this long without an
/// answer: the SYN-ACK is sent three times (after 1 s and 3 s) before that.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sockets a listener keeps in Listen beyond its pending connections.
const SPARES: usize = 1;
/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// First ephemeral port (IANA dynamic range, 49152..=65535).
const EPHEMERAL_FIRST: u16 = 49152;
/// An active connection attempt gives up after this long without an answer.
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
    /// Listening: its pending connections and sockets in Listen.
    Listening(Listener),
    /// Connecting or connected.
    Stream { handle: TcpHandle, connecting: bool },
}

/// A listening socket's sockets (see the module docs).
#[derive(Debug)]
struct Listener {
    local: SocketAddrV4,
    backlog: usize,
    /// In Listen.
    spares: Vec<TcpHandle>,
    /// Half-open, oldest first; entries that moved on are skipped (see [`Owner`]).
    half_open: VecDeque<TcpHandle>,
    /// Handshake done, oldest first, waiting for `accept`; likewise.
    ready: VecDeque<TcpHandle>,
    /// Live entries of `half_open` and `ready`.
    half_open_count: usize,
    ready_count: usize,
}

/// Where a listener's socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Spare,
    HalfOpen,
    Ready,
}

/// Who holds a TCP socket that is not (or no longer) an app's connection: kept in the
/// stack beside the socket (its tag), so a state change finds its owner at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// A listener's, in `phase`.
    Member { fd: i32, phase: Phase },
    /// Closed by the app: freed once its closing handshake is over.
    Closing,
    /// The app's connection `fd` (for [`SocketTable::woken`]).
    App(i32),
}

impl Owner {
    fn tag(owner: Option<Owner>) -> u64 {
        // Descriptors are never negative.
        match owner {
            None => 0,
            Some(Owner::Closing) => 1,
            Some(Owner::Member { fd, phase }) => {
                let phase = match phase {
                    Phase::Spare => 0,
                    Phase::HalfOpen => 1,
                    Phase::Ready => 2,
                };
                2 + phase + 4 * u64::from(fd.unsigned_abs())
            }
            Some(Owner::App(fd)) => 2 + 3 + 4 * u64::from(fd.unsigned_abs()),
        }
    }

    fn from_tag(tag: u64) -> Option<Owner> {
        match tag {
            0 => None,
            1 => Some(Owner::Closing),
            t => {
                let fd = i32::try_from((t - 2) / 4).ok()?;
                let phase = match (t - 2) % 4 {
                    0 => Phase::Spare,
                    1 => Phase::HalfOpen,
                    2 => Phase::Ready,
                    _ => return Some(Owner::App(fd)),
                };
                Some(Owner::Member { fd, phase })
            }
        }
    }
}

/// Who holds `h` (see [`Owner`]).
fn owner<D: NetDevice>(stack: &Stack<D>, h: TcpHandle) -> Option<Owner> {
    Owner::from_tag(stack.tcp().tag(h))
}

/// Records who holds `h`.
fn set_owner<D: NetDevice>(stack: &mut Stack<D>, h: TcpHandle, o: Option<Owner>) {
    stack.tcp_mut().set_tag(h, Owner::tag(o));
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
    /// Its readiness as last computed, and the table's epoch then: valid until the stack
    /// works on its socket or the app calls on it ([`SocketTable::readiness`]).
    cached: Option<(u64, Readiness)>,
    /// In the table's `woken_fds`.
    in_woken: bool,
    /// Descriptors open on it: its own and its duplicates ([`SocketTable::dup`]).
    fds: u32,
    /// Its own descriptor is open (else only duplicates keep it).
    own_fd_open: bool,
}

impl Socket {
    fn new(kind: Kind, nonblocking: bool) -> Socket {
        Socket {
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
            cached: None,
            in_woken: false,
            fds: 1,
            own_fd_open: true,
        }
    }
}

/// The socket descriptors and their state.
#[derive(Debug)]
pub struct SocketTable {
    slots: Vec<Option<Socket>>,
    /// Free slots below `slots.len()`, lowest first (POSIX hands out the lowest).
    free: BinaryHeap<Reverse<usize>>,
    /// Descriptors open.
    open: usize,
    /// Most descriptors open at once.
    limit: usize,
    /// The stack's changed sockets, taken in turns ([`TcpSockets::swap_changed`]).
    changed: Vec<TcpHandle>,
    /// Scratch for the stack's woken sockets.
    woken: Vec<TcpHandle>,
    /// Descriptors whose readiness may have changed, for [`SocketTable::woken`].
    woken_fds: Vec<i32>,
    /// Duplicated descriptors ([`SocketTable::dup`]) and the descriptor whose socket each
    /// shares; their slots stay empty and reserved until they are closed.
    dups: BTreeMap<i32, i32>,
    /// Anything may have changed (a datagram socket was worked on) since
    /// [`SocketTable::woken`] last said.
    all_woken: bool,
    /// Bumped when every cached readiness becomes stale.
    epoch: u64,
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

/// `len` zeroed bytes, or `None` when the heap cannot spare them and [`HEADROOM`] more.
fn buffer(len: usize) -> Option<Vec<u8>> {
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(len + HEADROOM).ok()?;
    drop(probe);
    Some(vec![0; len])
}

/// A TCP socket in the stack (a freed one again if the stack kept one), closed, with the
/// options given; `None` without memory for a new one.
fn new_tcp<D: NetDevice>(
    stack: &mut Stack<D>,
    no_delay: bool,
    keep_alive: bool,
) -> Option<TcpHandle> {
    let h = match stack.tcp_mut().reuse() {
        Some(h) => h,
        None => stack.tcp_mut().add(tcp::Socket::new(
            tcp::SocketBuffer::new(buffer(TCP_BUFFER)?),
            tcp::SocketBuffer::new(buffer(TCP_BUFFER)?),
        ))?,
    };
    let socket = stack.tcp_mut().get_mut(h)?;
    socket.set_timeout(Some(TCP_TIMEOUT));
    socket.set_nagle_enabled(!no_delay);
    socket.set_keep_alive(keep_alive.then_some(KEEP_ALIVE));
    Some(h)
}

/// A UDP socket with its buffers, or `None` without memory for them.
fn new_udp() -> Option<udp::Socket<'static>> {
    Some(udp::Socket::new(
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            buffer(UDP_BUFFER)?,
        ),
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            buffer(UDP_BUFFER)?,
        ),
    ))
}

/// The timeout of an established connection: none, unless keep-alives are on (then a peer
/// silent for three keep-alive intervals is gone). smoltcp's timeout counts from the last
/// segment received, so it would also end a connection that is merely idle; Linux gives
/// up only on data left unacknowledged for many minutes.
fn established_timeout(keep_alive: bool) -> Option<Duration> {
    keep_alive.then_some(KEEP_ALIVE * 3)
}

/// A listener's socket is ready to be accepted once its handshake is done.
fn accept_ready(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed | tcp::State::TimeWait
    )
}

/// The TCP socket `h`, to change it, or [`Error::NotConnected`] if the stack no longer
/// has it.
fn tcp_mut<D: NetDevice>(
    stack: &mut Stack<D>,
    h: TcpHandle,
) -> Result<&mut tcp::Socket<'static>, Error> {
    stack.tcp_mut().get_mut(h).ok_or(Error::NotConnected)
}

impl Default for SocketTable {
    fn default() -> Self {
        SocketTable::new(0)
    }
}

impl SocketTable {
    /// An empty table; `seed` picks where ephemeral ports start.
    pub fn new(seed: u64) -> SocketTable {
        SocketTable::with_limit(seed, MAX_SOCKETS)
    }

    /// An empty table with at most `limit` descriptors open (at most [`MAX_SOCKETS`]).
    pub fn with_limit(seed: u64, limit: usize) -> SocketTable {
        let span = u64::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        SocketTable {
            slots: Vec::new(),
            free: BinaryHeap::new(),
            open: 0,
            limit: limit.min(MAX_SOCKETS),
            changed: Vec::new(),
            woken: Vec::new(),
            woken_fds: Vec::new(),
            dups: BTreeMap::new(),
            all_woken: false,
            epoch: 0,
            next_port: EPHEMERAL_FIRST + (seed % span) as u16,
        }
    }

    /// Takes in at most `budget` frames, keeping every listener armed after each one
    /// ([`SocketTable::update`]), then sends what sockets queued: what the kernel's idle loop
    /// runs.
    pub fn poll<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        now: Instant,
        budget: usize,
    ) -> Polled {
        stack.poll_maintenance(now);
        let mut polled = Polled {
            changed: false,
            more: true,
        };
        for _ in 0..budget {
            match stack.poll_ingress_one(now) {
                None => {
                    polled.more = false;
                    break;
                }
                Some(changed) => {
                    polled.changed |= changed;
                    if changed {
                        self.update(stack);
                    }
                }
            }
        }
        polled.changed |= stack.poll_egress(now);
        self.update(stack);
        polled
    }

    /// Acts on the TCP state changes the stack reported: a listener's handshakes moving on
    /// (and its sockets in Listen topped up, see the module docs), closed sockets freed.
    /// Costs nothing when nothing changed.
    pub fn update<D: NetDevice>(&mut self, stack: &mut Stack<D>) {
        self.collect_woken(stack);
        while stack.tcp().has_changed() {
            let mut changed = core::mem::take(&mut self.changed);
            stack.tcp_mut().swap_changed(&mut changed);
            for &h in &changed {
                let state = stack.tcp().get(h).map(tcp::Socket::state);
                match owner(stack, h) {
                    Some(Owner::Closing) => {
                        if matches!(
                            state,
                            None | Some(tcp::State::Closed | tcp::State::TimeWait)
                        ) {
                            stack.tcp_mut().remove(h);
                        }
                    }
                    Some(Owner::Member { fd, phase }) => {
                        self.member_changed(stack, fd, h, phase, state);
                        self.refill(stack, fd);
                    }
                    Some(Owner::App(fd)) => {
                        // A connect that completed: its timeout changes now, not when the
                        // app next looks.
                        let _ = self.refresh(stack, fd);
                    }
                    None => {}
                }
            }
            changed.clear();
            self.changed = changed;
        }
    }

    /// Puts in `fds` the descriptors whose readiness may have changed since the last call
    /// (a listener for its pending connections), each at most once, in no order; `false`
    /// when any descriptor may have changed (a datagram socket was worked on): look at all.
    /// What lets a `poll` over 1,000 connections look at one or two per frame.
    pub fn woken<D: NetDevice>(&mut self, stack: &mut Stack<D>, fds: &mut Vec<i32>) -> bool {
        self.update(stack);
        for fd in self.woken_fds.drain(..) {
            if let Some(Some(s)) = Self::index(fd).and_then(|i| self.slots.get_mut(i)) {
                s.in_woken = false;
            }
            fds.push(fd);
        }
        if !self.dups.is_empty() {
            let woken = fds.len();
            for (&dup, &fd) in &self.dups {
                if fds[..woken].contains(&fd) {
                    fds.push(dup);
                }
            }
        }
        !core::mem::take(&mut self.all_woken)
    }

    /// Takes the stack's woken sockets: their descriptors' cached readiness is stale.
    fn collect_woken<D: NetDevice>(&mut self, stack: &mut Stack<D>) {
        let mut handles = core::mem::take(&mut self.woken);
        if stack.take_woken(&mut handles) {
            self.all_woken = true;
            self.epoch += 1;
        }
        for &h in &handles {
            let fd = match owner(stack, h) {
                Some(Owner::App(fd) | Owner::Member { fd, .. }) => fd,
                Some(Owner::Closing) | None => continue,
            };
            if let Some(Some(s)) = Self::index(fd).and_then(|i| self.slots.get_mut(i)) {
                s.cached = None;
                if !s.in_woken {
                    s.in_woken = true;
                    self.woken_fds.push(fd);
                }
            }
        }
        handles.clear();
        self.woken = handles;
    }

    /// The app called on `fd`: its readiness must be computed again.
    fn invalidate(&mut self, fd: i32) {
        if let Ok(s) = self.get_mut(fd) {
            s.cached = None;
        }
    }

    fn listener_mut(&mut self, fd: i32) -> Option<&mut Listener> {
        match &mut self.get_mut(fd).ok()?.kind {
            Kind::Tcp(Tcp::Listening(l)) => Some(l),
            _ => None,
        }
    }

    /// Listener `fd`'s socket `h`, last seen in `phase`, is in `state` now.
    fn member_changed<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        h: TcpHandle,
        phase: Phase,
        state: Option<tcp::State>,
    ) {
        let new = match state {
            Some(tcp::State::Listen) => Some(Phase::Spare),
            Some(tcp::State::SynReceived) => Some(Phase::HalfOpen),
            Some(s) if accept_ready(s) => Some(Phase::Ready),
            _ => None,
        };
        if new == Some(phase) {
            return;
        }
        let Some(l) = self.listener_mut(fd) else {
            return;
        };
        match phase {
            Phase::Spare => l.spares.retain(|&s| s != h),
            Phase::HalfOpen => l.half_open_count -= 1,
            Phase::Ready => l.ready_count -= 1,
        }
        match new {
            Some(Phase::Spare) => l.spares.push(h),
            Some(Phase::HalfOpen) => {
                l.half_open_count += 1;
                l.half_open.push_back(h);
            }
            Some(Phase::Ready) => {
                l.ready_count += 1;
                l.ready.push_back(h);
            }
            None => {
                // Reset or timed out: its place is free.
                stack.tcp_mut().remove(h);
                return;
            }
        }
        if let Some(phase) = new {
            set_owner(stack, h, Some(Owner::Member { fd, phase }));
        }
        if new == Some(Phase::Ready)
            && let Some(s) = stack.tcp_mut().get_mut(h)
        {
            // The handshake's bound no longer applies (`accept` sets the connection's).
            s.set_timeout(None);
        }
    }

    /// The oldest live half-open handshake of listener `fd`, taken off its queue.
    fn take_oldest_half_open<D: NetDevice>(
        &mut self,
        stack: &Stack<D>,
        fd: i32,
    ) -> Option<TcpHandle> {
        let l = self.listener_mut(fd)?;
        let half_open = Some(Owner::Member {
            fd,
            phase: Phase::HalfOpen,
        });
        while let Some(h) = l.half_open.pop_front() {
            if owner(stack, h) == half_open {
                return Some(h);
            }
        }
        None
    }

    /// Keeps listener `fd` within its backlog and ready for the next SYN
    /// ([`SocketTable::rebalance`]), and tells the stack whether its handshake queue is
    /// full (new SYNs are then taken only when resent, [`crate::synguard`]).
    fn refill<D: NetDevice>(&mut self, stack: &mut Stack<D>, fd: i32) {
        self.rebalance(stack, fd);
        if let Some(l) = self.listener_mut(fd) {
            let (port, full) = (l.local.port(), l.half_open_count >= l.backlog);
            stack.tcp_mut().set_handshakes_full(port, full);
        }
    }

    /// With more handshakes under way than the backlog (a SYN came while it was full of
    /// them), the oldest is dropped and its socket listens again; then [`SPARES`] sockets
    /// stay in Listen unless the backlog is full of connections nobody accepted.
    fn rebalance<D: NetDevice>(&mut self, stack: &mut Stack<D>, fd: i32) {
        let Ok(socket) = self.get(fd) else { return };
        let (no_delay, keep_alive) = (socket.no_delay, socket.keep_alive);
        loop {
            let Some(l) = self.listener_mut(fd) else {
                return;
            };
            let local = l.local;
            if l.half_open_count > l.backlog {
                let Some(oldest) = self.take_oldest_half_open(stack, fd) else {
                    return;
                };
                self.evict(stack, fd, oldest, local);
                continue;
            }
            if l.ready_count >= l.backlog {
                // Full of connections nobody accepted: no socket listens, new SYNs are
                // dropped until the app accepts.
                // A spare that took a SYN since the last update is a handshake now, not a
                // spare: its change, still queued, makes it one.
                l.spares.retain(|&h| {
                    let listening =
                        stack.tcp().get(h).map(tcp::Socket::state) == Some(tcp::State::Listen);
                    if listening {
                        stack.tcp_mut().remove(h);
                    }
                    !listening
                });
                return;
            }
            if l.spares.len() >= SPARES {
                return;
            }
            match Self::listen_socket(stack, local, no_delay, keep_alive) {
                Some(h) => {
                    set_owner(
                        stack,
                        h,
                        Some(Owner::Member {
                            fd,
                            phase: Phase::Spare,
                        }),
                    );
                    if let Some(l) = self.listener_mut(fd) {
                        l.spares.push(h);
                    }
                }
                // Out of memory: SYNs are dropped until a socket is freed.
                None => return,
            }
        }
    }

    /// Drops listener `fd`'s half-open handshake `h` (off its queue already) without a RST
    /// (a spoofed peer would never read one, a real one gets RST when its ACK finds no
    /// connection); its socket listens again as a spare.
    fn evict<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        h: TcpHandle,
        local: SocketAddrV4,
    ) {
        let relisten = stack.tcp_mut().get_mut(h).is_some_and(|s| {
            s.abort();
            s.set_timeout(Some(HANDSHAKE_TIMEOUT));
            s.listen(listen_endpoint(local)).is_ok()
        });
        stack.tcp_mut().forget_peer(h);
        let Some(l) = self.listener_mut(fd) else {
            return;
        };
        l.half_open_count -= 1;
        if relisten {
            l.spares.push(h);
            set_owner(
                stack,
                h,
                Some(Owner::Member {
                    fd,
                    phase: Phase::Spare,
                }),
            );
        } else {
            stack.tcp_mut().remove(h);
        }
    }

    /// A new socket in Listen on `local`, in the stack; `None` without memory.
    fn listen_socket<D: NetDevice>(
        stack: &mut Stack<D>,
        local: SocketAddrV4,
        no_delay: bool,
        keep_alive: bool,
    ) -> Option<TcpHandle> {
        let h = new_tcp(stack, no_delay, keep_alive)?;
        let s = stack.tcp_mut().get_mut(h)?;
        s.set_timeout(Some(HANDSHAKE_TIMEOUT));
        if s.listen(listen_endpoint(local)).is_err() {
            stack.tcp_mut().remove(h);
            return None;
        }
        Some(h)
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
        self.resolve(fd).is_ok()
    }

    /// The descriptor that holds `fd`'s socket: `fd` itself, or the one it duplicates.
    fn resolve(&self, fd: i32) -> Result<i32, Error> {
        if let Some(&own) = self.dups.get(&fd) {
            return Ok(own);
        }
        match self.get(fd) {
            Ok(s) if s.own_fd_open => Ok(fd),
            _ => Err(Error::BadFd),
        }
    }

    /// A new descriptor for `fd`'s socket (`dup`): both work alike (one socket, one set of
    /// options), and the socket is closed when the last of them is.
    pub fn dup(&mut self, fd: i32) -> Result<i32, Error> {
        let own = self.resolve(fd)?;
        let index = self.reserve()?;
        // index < MAX_SOCKETS, so this cannot overflow.
        let dup = FIRST_FD + index as i32;
        self.dups.insert(dup, own);
        self.get_mut(own)?.fds += 1;
        Ok(dup)
    }

    /// An empty slot's index, counted as open (the lowest free one).
    fn reserve(&mut self) -> Result<usize, Error> {
        if self.open >= self.limit {
            return Err(Error::TooManySockets);
        }
        let index = match self.free.pop() {
            Some(Reverse(i)) => i,
            None => {
                self.slots.try_reserve(1).map_err(|_| Error::NoBuffers)?;
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.open += 1;
        Ok(index)
    }

    fn insert(&mut self, socket: Socket) -> Result<i32, Error> {
        let index = self.reserve()?;
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
        if self.open >= self.limit {
            return Err(Error::TooManySockets);
        }
        let kind = match ty {
            Type::Stream => Kind::Tcp(Tcp::Fresh { bound: None }),
            Type::Datagram => Kind::Udp(Udp {
                handle: stack.sockets_mut().add(new_udp().ok_or(Error::NoBuffers)?),
                bound: false,
                peer: None,
            }),
        };
        self.insert(Socket::new(kind, nonblocking))
    }

    /// Whether a port is bound by a socket of the same protocol (listening, bound, or a
    /// connection's local end, closing ones included).
    fn port_in_use<D: NetDevice>(&self, stack: &Stack<D>, port: u16, tcp: bool) -> bool {
        let sockets = stack.sockets();
        let tcp_port = |h: TcpHandle| {
            stack
                .tcp()
                .get(h)
                .and_then(|s| s.local_endpoint())
                .is_some_and(|e| e.port == port)
        };
        let in_table = self.slots.iter().flatten().any(|s| match (&s.kind, tcp) {
            (Kind::Tcp(Tcp::Fresh { bound }), true) => bound.is_some_and(|b| b.port() == port),
            (Kind::Tcp(Tcp::Listening(l)), true) => l.local.port() == port,
            (Kind::Tcp(Tcp::Stream { handle, .. }), true) => tcp_port(*handle),
            (Kind::Udp(u), false) => {
                u.bound && sockets.get::<udp::Socket>(u.handle).endpoint().port == port
            }
            _ => false,
        });
        in_table
            || (tcp
                && stack.tcp().any(|tag, s| {
                    Owner::from_tag(tag) == Some(Owner::Closing)
                        && s.local_endpoint().is_some_and(|e| e.port == port)
                }))
    }

    /// Bound ports for listening conflict only with other bound or listening sockets.
    fn listen_port_in_use(&self, port: u16, except: i32) -> bool {
        self.slots.iter().enumerate().any(|(i, s)| {
            FIRST_FD + i as i32 != except
                && match s.as_ref().map(|s| &s.kind) {
                    Some(Kind::Tcp(Tcp::Fresh { bound: Some(b) })) => b.port() == port,
                    Some(Kind::Tcp(Tcp::Listening(l))) => l.local.port() == port,
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
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
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
    /// `backlog` connections waiting for `accept` (and as many handshakes under way): 1 to
    /// [`MAX_BACKLOG`], a larger backlog is capped there and a smaller one is 1.
    pub fn listen<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
        backlog: i32,
    ) -> Result<(), Error> {
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
        let backlog = usize::try_from(backlog).unwrap_or(0).clamp(1, MAX_BACKLOG);
        let local = match &mut self.get_mut(fd)?.kind {
            Kind::Udp(_) => return Err(Error::NotSupported),
            Kind::Tcp(Tcp::Stream { .. }) => return Err(Error::Invalid),
            Kind::Tcp(Tcp::Listening(l)) => {
                // Linux lets `listen` again change the backlog.
                l.backlog = backlog;
                return Ok(());
            }
            Kind::Tcp(Tcp::Fresh { bound: Some(b) }) => *b,
            Kind::Tcp(Tcp::Fresh { bound: None }) => {
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.ephemeral_port(stack, true)?)
            }
        };
        let socket = self.get(fd)?;
        stack.tcp_mut().listen_port(local.port());
        let Some(first) = Self::listen_socket(stack, local, socket.no_delay, socket.keep_alive)
        else {
            stack.tcp_mut().unlisten_port(local.port());
            return Err(Error::NoBuffers);
        };
        set_owner(
            stack,
            first,
            Some(Owner::Member {
                fd,
                phase: Phase::Spare,
            }),
        );
        self.get_mut(fd)?.kind = Kind::Tcp(Tcp::Listening(Listener {
            local,
            backlog,
            spares: vec![first],
            half_open: VecDeque::new(),
            ready: VecDeque::new(),
            half_open_count: 0,
            ready_count: 0,
        }));
        Ok(())
    }

    /// Takes an established connection from listener `fd` (the oldest): its new descriptor
    /// and the peer's address.
    pub fn accept<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
    ) -> Result<(i32, SocketAddrV4), Error> {
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
        self.update(stack);
        if self.open >= self.limit {
            // Leave the connection queued: a descriptor may be closed meanwhile.
            return Err(Error::TooManySockets);
        }
        let socket = self.get(fd)?;
        let (no_delay, keep_alive) = (socket.no_delay, socket.keep_alive);
        let l = self.listener_mut(fd).ok_or(Error::Invalid)?;
        let ready = Some(Owner::Member {
            fd,
            phase: Phase::Ready,
        });
        let handle = loop {
            let h = l.ready.pop_front().ok_or(Error::WouldBlock)?;
            if owner(stack, h) == ready {
                break h;
            }
        };
        l.ready_count -= 1;
        set_owner(stack, handle, None);
        self.refill(stack, fd);
        let s = stack.tcp_mut().get_mut(handle).ok_or(Error::WouldBlock)?;
        s.set_nagle_enabled(!no_delay);
        s.set_keep_alive(keep_alive.then_some(KEEP_ALIVE));
        s.set_timeout(established_timeout(keep_alive));
        let peer = s
            .remote_endpoint()
            .map(v4)
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut new = Socket::new(
            Kind::Tcp(Tcp::Stream {
                handle,
                connecting: false,
            }),
            false,
        );
        new.keep_alive = keep_alive;
        new.no_delay = no_delay;
        match self.insert(new) {
            Ok(new_fd) => {
                set_owner(stack, handle, Some(Owner::App(new_fd)));
                Ok((new_fd, peer))
            }
            Err(e) => {
                if let Some(s) = stack.tcp_mut().get_mut(handle) {
                    s.abort();
                }
                set_owner(stack, handle, Some(Owner::Closing));
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
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
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
        let handle = new_tcp(stack, no_delay, keep_alive).ok_or(Error::NoBuffers)?;
        if stack
            .tcp_connect(handle, endpoint(addr), listen_endpoint(local))
            .is_err()
        {
            stack.tcp_mut().remove(handle);
            return Err(Error::Unreachable);
        }
        set_owner(stack, handle, Some(Owner::App(fd)));
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
        let fd = self.resolve(fd)?;
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
        match stack.tcp().get(handle).map(tcp::Socket::state) {
            Some(tcp::State::SynSent | tcp::State::SynReceived) => {}
            None | Some(tcp::State::Closed) => {
                stack.tcp_mut().remove(handle);
                socket.kind = Kind::Tcp(Tcp::Fresh { bound: None });
                socket.error = Some(Error::ConnectionRefused);
                socket.cached = None;
            }
            _ => {
                socket.cached = None;
                socket.kind = Kind::Tcp(Tcp::Stream {
                    handle,
                    connecting: false,
                });
                let keep_alive = socket.keep_alive;
                if let Some(s) = stack.tcp_mut().get_mut(handle) {
                    s.set_timeout(established_timeout(keep_alive));
                }
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
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
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
                let s = tcp_mut(stack, *handle)?;
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
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
        self.refresh(stack, fd)?;
        match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Stream { handle, connecting }) => {
                if *connecting {
                    return Err(Error::WouldBlock);
                }
                let s = tcp_mut(stack, *handle).map_err(|_| Error::BrokenPipe)?;
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
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
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
        if let (Some(h), Shutdown::Write | Shutdown::Both) = (handle, how)
            && let Some(s) = stack.tcp_mut().get_mut(h)
        {
            s.close();
        }
        Ok(())
    }

    /// Closes `fd`. A TCP connection finishes its FIN handshake in the background, or is
    /// reset if received data was left unread; pending connections of a listener are reset.
    /// With duplicates ([`SocketTable::dup`]), only the last descriptor's close closes the
    /// socket.
    pub fn close<D: NetDevice>(&mut self, stack: &mut Stack<D>, fd: i32) -> Result<(), Error> {
        let own = match self.dups.remove(&fd) {
            Some(own) => {
                let index = Self::index(fd).ok_or(Error::BadFd)?;
                self.open -= 1;
                self.free.push(Reverse(index));
                own
            }
            None => {
                let s = self.get_mut(fd)?;
                if !s.own_fd_open {
                    return Err(Error::BadFd);
                }
                s.own_fd_open = false;
                fd
            }
        };
        let s = self.get_mut(own)?;
        s.fds -= 1;
        if s.fds > 0 {
            return Ok(());
        }
        self.close_socket(stack, own)
    }

    /// Closes the socket in `fd`'s slot and frees the slot.
    fn close_socket<D: NetDevice>(&mut self, stack: &mut Stack<D>, fd: i32) -> Result<(), Error> {
        let index = Self::index(fd).ok_or(Error::BadFd)?;
        let socket = self
            .slots
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(Error::BadFd)?;
        self.open -= 1;
        self.free.push(Reverse(index));
        match socket.kind {
            Kind::Tcp(Tcp::Fresh { .. }) => {}
            Kind::Tcp(Tcp::Listening(l)) => {
                stack.tcp_mut().unlisten_port(l.local.port());
                let members: Vec<TcpHandle> = l
                    .spares
                    .iter()
                    .chain(l.half_open.iter())
                    .chain(l.ready.iter())
                    .copied()
                    .filter(|&h| matches!(owner(stack, h), Some(Owner::Member { fd: f, .. }) if f == fd))
                    .collect();
                for h in members {
                    set_owner(stack, h, None);
                    self.close_tcp(stack, h, true);
                }
            }
            Kind::Tcp(Tcp::Stream { handle, .. }) => {
                // Data the app never read: reset, as Linux does (RFC 1122 4.2.2.13). A FIN
                // would leave the peer pushing into a window nobody opens again.
                let unread = stack.tcp().get(handle).is_some_and(|s| s.recv_queue() > 0);
                self.close_tcp(stack, handle, unread);
            }
            Kind::Udp(u) => {
                stack.sockets_mut().remove(u.handle);
            }
        }
        Ok(())
    }

    /// Closes (or with `reset`, aborts) TCP socket `h`; it is freed once closed.
    fn close_tcp<D: NetDevice>(&mut self, stack: &mut Stack<D>, h: TcpHandle, reset: bool) {
        let Some(s) = stack.tcp_mut().get_mut(h) else {
            return;
        };
        if matches!(
            s.state(),
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
        ) {
            // Nothing left to say to the peer (a socket in Listen has none).
            stack.tcp_mut().remove(h);
            return;
        }
        if reset {
            s.abort();
        } else {
            s.close();
        }
        set_owner(stack, h, Some(Owner::Closing));
    }

    /// What `fd` is ready for: computed again only after the stack worked on its socket
    /// or the app called on it, else as last computed (a `poll` over 1,000 connections
    /// then costs little more per descriptor than reading its entry).
    pub fn readiness<D: NetDevice>(
        &mut self,
        stack: &mut Stack<D>,
        fd: i32,
    ) -> Result<Readiness, Error> {
        let fd = self.resolve(fd)?;
        self.refresh(stack, fd)?;
        if matches!(self.get(fd)?.kind, Kind::Tcp(Tcp::Listening(_))) {
            self.update(stack);
        }
        let epoch = self.epoch;
        let socket = self.get(fd)?;
        if let Some((e, r)) = socket.cached
            && e == epoch
        {
            return Ok(r);
        }
        let error = socket.error.is_some();
        let sockets = stack.sockets();
        let r = match &socket.kind {
            Kind::Tcp(Tcp::Fresh { .. }) => Readiness {
                writable: error,
                hangup: true,
                error,
                ..Readiness::default()
            },
            Kind::Tcp(Tcp::Listening(l)) => Readiness {
                readable: l.ready_count > 0,
                ..Readiness::default()
            },
            Kind::Tcp(Tcp::Stream {
                connecting: true, ..
            }) => Readiness::default(),
            Kind::Tcp(Tcp::Stream { handle, .. }) => match stack.tcp().get(*handle) {
                Some(s) => Readiness {
                    readable: s.can_recv() || !s.may_recv() || socket.shut_read,
                    writable: s.can_send(),
                    hangup: s.state() == tcp::State::Closed,
                    error,
                },
                None => Readiness {
                    readable: true,
                    hangup: true,
                    error,
                    ..Readiness::default()
                },
            },
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
        self.get_mut(fd)?.cached = Some((epoch, r));
        Ok(r)
    }

    /// The local address of `fd` (unspecified before `bind`).
    pub fn local_addr<D: NetDevice>(
        &self,
        stack: &Stack<D>,
        fd: i32,
    ) -> Result<SocketAddrV4, Error> {
        let fd = self.resolve(fd)?;
        let unbound = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        Ok(match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Fresh { bound }) => bound.unwrap_or(unbound),
            Kind::Tcp(Tcp::Listening(l)) => l.local,
            Kind::Tcp(Tcp::Stream { handle, .. }) => stack
                .tcp()
                .get(*handle)
                .and_then(tcp::Socket::local_endpoint)
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
        let fd = self.resolve(fd)?;
        self.refresh(stack, fd)?;
        match &self.get(fd)?.kind {
            Kind::Tcp(Tcp::Stream {
                handle,
                connecting: false,
            }) => stack
                .tcp()
                .get(*handle)
                .and_then(tcp::Socket::remote_endpoint)
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
        let fd = self.resolve(fd)?;
        let socket = self.get_mut(fd)?;
        // A listener's options reach its sockets in Listen now, the others at `accept`.
        let tcp_handles: Vec<TcpHandle> = match &socket.kind {
            Kind::Tcp(Tcp::Stream { handle, .. }) => vec![*handle],
            Kind::Tcp(Tcp::Listening(l)) => l.spares.clone(),
            _ => Vec::new(),
        };
        let is_tcp = matches!(socket.kind, Kind::Tcp(_));
        match opt {
            Opt::ReuseAddr => socket.reuse_addr = on,
            Opt::Broadcast => socket.broadcast = on,
            Opt::NoDelay if is_tcp => {
                socket.no_delay = on;
                for h in tcp_handles {
                    if let Some(s) = stack.tcp_mut().get_mut(h) {
                        s.set_nagle_enabled(!on);
                    }
                }
            }
            Opt::KeepAlive if is_tcp => {
                socket.keep_alive = on;
                for h in tcp_handles {
                    if let Some(s) = stack.tcp_mut().get_mut(h) {
                        s.set_keep_alive(on.then_some(KEEP_ALIVE));
                        if s.state() != tcp::State::Listen && s.state() != tcp::State::SynSent {
                            s.set_timeout(established_timeout(on));
                        }
                    }
                }
            }
            Opt::NoDelay | Opt::KeepAlive => return Err(Error::NotSupported),
        }
        Ok(())
    }

    /// Reads an option.
    pub fn option(&self, fd: i32, opt: Opt) -> Result<bool, Error> {
        let fd = self.resolve(fd)?;
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
        let fd = self.resolve(fd)?;
        self.invalidate(fd);
        Ok(self.get_mut(fd)?.error.take())
    }

    /// The socket type of `fd`.
    pub fn socket_type(&self, fd: i32) -> Result<Type, Error> {
        let fd = self.resolve(fd)?;
        Ok(match self.get(fd)?.kind {
            Kind::Tcp(_) => Type::Stream,
            Kind::Udp(_) => Type::Datagram,
        })
    }

    /// Whether calls on `fd` return [`Error::WouldBlock`] instead of waiting.
    pub fn nonblocking(&self, fd: i32) -> Result<bool, Error> {
        let fd = self.resolve(fd)?;
        Ok(self.get(fd)?.nonblocking)
    }

    /// Sets non-blocking mode.
    pub fn set_nonblocking(&mut self, fd: i32, on: bool) -> Result<(), Error> {
        let fd = self.resolve(fd)?;
        self.get_mut(fd)?.nonblocking = on;
        Ok(())
    }

    /// Receive and send timeouts in ns (`None` waits forever).
    pub fn timeouts(&self, fd: i32) -> Result<(Option<u64>, Option<u64>), Error> {
        let fd = self.resolve(fd)?;
        let s = self.get(fd)?;
        Ok((s.recv_timeout_ns, s.send_timeout_ns))
    }

    /// Sets the receive (`recv == true`) or send timeout.
    pub fn set_timeout(&mut self, fd: i32, recv: bool, ns: Option<u64>) -> Result<(), Error> {
        let fd = self.resolve(fd)?;
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
        let fd = self.resolve(fd)?;
        Ok(match self.get(fd)?.kind {
            Kind::Tcp(_) => TCP_BUFFER,
            Kind::Udp(_) => UDP_BUFFER,
        })
    }
}
