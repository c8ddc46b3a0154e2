//! The API server: one accept thread, one thread per connection (at most
//! [`ServerConfig::max_connections`] at once), each request handed to the [`Backend`].
//!
//! A connection carries any number of requests (keep-alive) until the client closes it,
//! asks `Connection: close`, sends something unreadable, stalls mid-request
//! ([`ServerConfig::request_timeout`], 408) or stays silent between requests
//! ([`ServerConfig::idle_timeout`], closed without an answer). A slow client or a slow
//! backend call holds only its own connection's thread.
//!
//! The socket is the operator's only: [`bind`] makes the file mode 0600 whatever the umask,
//! and every accepted connection's peer credentials (`SO_PEERCRED`) are checked before a
//! byte is read: a process of another user (not root) is logged and closed unserved.

use super::http::{self, Poll, RequestReader, Response};
use super::routes::{self, RouteError};
use super::{ApiRequest, Backend, Endpoint};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Timeouts and caps of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// From a request's first byte to its last (408 past it).
    pub request_timeout: Duration,
    /// How long a connection may wait for its next request before it is closed.
    pub idle_timeout: Duration,
    /// How long writing an answer may take.
    pub write_timeout: Duration,
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Request size caps.
    pub limits: http::Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            max_connections: 32,
            limits: http::Limits::default(),
        }
    }
}

/// Why the API socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A live server answers on the path.
    #[error(
        "{0}: another host-vmm is listening there; stop it or choose another --api-socket path"
    )]
    InUse(PathBuf),
    /// Something other than a socket is there.
    #[error("{0} exists and is not a socket; remove it or choose another --api-socket path")]
    NotASocket(PathBuf),
    /// bind(2) or the stale-socket check failed.
    #[error("cannot listen on --api-socket {path}: {error}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
}

/// The API socket file's mode: the operator's user (and root) only.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds the API socket at `path` with mode [`SOCKET_MODE`] (whatever the umask): a stale
/// socket (nobody accepts on it, left by a killed host-vmm) is replaced; a live one, or a
/// file that is not a socket, is refused.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let listener = bind_any_mode(path)?;
    // Before the first accept; a connection that came in the instant between bind and
    // chmod still meets the peer check.
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
    {
        drop(listener);
        remove_socket(path);
        return Err(BindError::Bind {
            path: path.to_owned(),
            error,
        });
    }
    Ok(listener)
}

fn bind_any_mode(path: &Path) -> Result<UnixListener, BindError> {
    let bind_error = |error| BindError::Bind {
        path: path.to_owned(),
        error,
    };
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket(path.to_owned()));
            }
            match UnixStream::connect(path) {
                Ok(_) => Err(BindError::InUse(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("api: replacing the stale socket {}", path.display());
                    std::fs::remove_file(path).map_err(bind_error)?;
                    UnixListener::bind(path).map_err(bind_error)
                }
                Err(e) => Err(bind_error(e)),
            }
        }
        Err(e) => Err(bind_error(e)),
    }
}

/// The connections being served, so that dropping the server can close them.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<HashMap<u64, UnixStream>>,
    next: AtomicU64,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, UnixStream>> {
        // A panicking connection thread cannot leave the map half-changed: use it anyway.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes a connection out of [`Connections`] when its thread ends, however it ends.
struct Registered {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

/// A running API server. Dropping it stops accepting, closes the open connections (a
/// backend call under way finishes; its answer is dropped) and removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;

impl ApiServer {
    /// Serves `listener` (bound at `socket_path`, e.g. by [`bind`]) with the default
    /// [`ServerConfig`]. The server owns the socket file from here on: it is removed when
    /// the server is dropped, or at once if the server cannot start.
    pub fn start(
        listener: UnixListener,
        socket_path: PathBuf,
        backend: Arc<dyn Backend>,
    ) -> io::Result<ApiServer> {
        ApiServer::start_with(listener, socket_path, backend, ServerConfig::default())
    }

    /// [`ApiServer::start`] with other timeouts and caps.
    pub fn start_with(
        listener: UnixListener,
        socket_path: PathBuf,
        backend: Arc<dyn Backend>,
        config: ServerConfig,
    ) -> io::Result<ApiServer> {
        let started = ApiServer::spawn(listener, &socket_path, backend, config);
        match started {
            Ok((stop, thread, connections)) => {
                log::info!("api: listening on {}", socket_path.display());
                Ok(ApiServer {
                    path: socket_path,
                    stop,
                    thread: Some(thread),
                    connections,
                })
            }
            Err(e) => {
                remove_socket(&socket_path);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn spawn(
        listener: UnixListener,
        socket_path: &Path,
        backend: Arc<dyn Backend>,
        config: ServerConfig,
    ) -> io::Result<(EventFd, JoinHandle<()>, Arc<Connections>)> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        for (fd, token) in [
            (listener.as_raw_fd(), TOKEN_LISTENER),
            (stop.as_raw_fd(), TOKEN_STOP),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let connections = Arc::new(Connections::default());
        let thread_connections = Arc::clone(&connections);
        let shown = socket_path.display().to_string();
        // `stop` stays with the ApiServer, which joins this thread before closing it.
        let thread = std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || {
                accept_loop(&epoll, &listener, &thread_connections, &backend, config);
                log::debug!("api: no longer accepting on {shown}");
            })?;
        Ok((stop, thread, connections))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        match self.stop.write(1) {
            Ok(()) => {
                if let Some(thread) = self.thread.take()
                    && thread.join().is_err()
                {
                    log::warn!("api: the accept thread panicked");
                }
            }
            // Without the signal the thread cannot be joined; it ends with the process.
            Err(e) => log::warn!("api: cannot stop the accept thread: {e}"),
        }
        for conn in self.connections.lock().values() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        remove_socket(&self.path);
    }
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        log::warn!("api: cannot remove {}: {e}", path.display());
    }
}

fn accept_loop(
    epoll: &Epoll,
    listener: &UnixListener,
    connections: &Arc<Connections>,
    backend: &Arc<dyn Backend>,
    config: ServerConfig,
) {
    let mut events = [EpollEvent::default(); 2];
    let mut refused = Refused::default();
    loop {
        // Wake up to close refused connections, if any wait.
        let timeout = if refused.0.is_empty() { -1 } else { 100 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("api: epoll_wait failed: {e}; the API socket stops answering");
                return;
            }
        };
        if events[..n].iter().any(|e| e.data() == TOKEN_STOP) {
            return;
        }
        loop {
            match listener.accept() {
                Ok((conn, _)) => admit(conn, connections, backend, config, &mut refused),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: the connection waits in the backlog; do not spin.
                    log::warn!("api: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        refused.close_expired(Instant::now());
    }
}

/// How long a refused connection stays open after its 503, so the client can still send
/// its request (a write to a closed socket fails before the client reads the answer).
const REFUSED_LINGER: Duration = Duration::from_millis(500);
/// Most refused connections kept lingering; past that the oldest closes at once.
const REFUSED_MAX: usize = 64;

/// Connections answered 503, waiting to be closed (on the accept thread: no thread each).
#[derive(Default)]
struct Refused(std::collections::VecDeque<(Instant, UnixStream)>);

impl Refused {
    /// Answers 503 without waiting on the client, and keeps the connection for a while.
    fn refuse(&mut self, conn: UnixStream, message: &str) {
        let bytes = Response::error(503, message).to_bytes(false, http::Version::Http11);
        // The answer fits any socket buffer; a client that does not read never stalls
        // the accept thread.
        let _ = conn.set_nonblocking(true);
        let _ = (&conn).write_all(&bytes);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        if self.0.len() >= REFUSED_MAX
            && let Some((_, oldest)) = self.0.pop_front()
        {
            drain_now(&oldest);
        }
        self.0.push_back((Instant::now(), conn));
    }

    fn close_expired(&mut self, now: Instant) {
        while let Some((since, conn)) = self.0.front() {
            if now.duration_since(*since) < REFUSED_LINGER {
                break;
            }
            drain_now(conn);
            self.0.pop_front();
        }
    }
}

/// Takes what a (non-blocking) connection has received, so that closing it ends the
/// client's stream cleanly instead of resetting it.
fn drain_now(conn: &UnixStream) {
    let mut buf = [0u8; 4096];
    let mut left = DRAIN_MAX;
    while left > 0 {
        match (&*conn).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// Whether `conn`'s peer may use the API (same user as host-vmm, or root); a stranger's
/// connection is logged and closed without a byte read or written.
fn peer_allowed(conn: &UnixStream) -> bool {
    match crate::peer::of(conn) {
        Ok(c) if crate::peer::allowed(c) => true,
        Ok(c) => {
            log::warn!(
                "api: refused a connection from uid {} (pid {}): the API serves only uid {} \
                 (host-vmm's user) and root",
                c.uid,
                c.pid,
                crate::peer::own_uid()
            );
            false
        }
        Err(e) => {
            log::warn!("api: refused a connection whose peer is unknown: {e}");
            false
        }
    }
}

/// Starts a thread for `conn`, or answers 503 when the server is full.
fn admit(
    conn: UnixStream,
    connections: &Arc<Connections>,
    backend: &Arc<dyn Backend>,
    config: ServerConfig,
    refused: &mut Refused,
) {
    if !peer_allowed(&conn) {
        let _ = conn.shutdown(std::net::Shutdown::Both);
        return;
    }
    let id = connections.next.fetch_add(1, Ordering::Relaxed);
    {
        let mut open = connections.lock();
        if open.len() >= config.max_connections {
            drop(open);
            log::warn!(
                "api: {} connections are open already; refusing one",
                config.max_connections
            );
            refused.refuse(
                conn,
                &format!(
                    "host-vmm is serving {} API connections already; retry later",
                    config.max_connections
                ),
            );
            return;
        }
        match conn.try_clone() {
            Ok(clone) => open.insert(id, clone),
            Err(e) => {
                drop(open);
                refused.refuse(conn, &format!("host-vmm cannot take the connection: {e}"));
                return;
            }
        };
    }
    let registered = Registered {
        connections: Arc::clone(connections),
        id,
    };
    let backend = Arc::clone(backend);
    // On failure the closure, with `registered` and its clone of `conn`, is dropped.
    let spawned = std::thread::Builder::new().name("api-conn".into()).spawn({
        let conn = conn.try_clone();
        move || {
            let _registered = registered;
            match conn {
                Ok(conn) => serve(&conn, &*backend, config),
                Err(e) => log::warn!("api: cannot use a connection: {e}"),
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("api: cannot start a connection thread: {e}");
        refused.refuse(conn, "host-vmm cannot start a thread for the connection");
    }
}

/// Serves one connection until it closes.
fn serve(conn: &UnixStream, backend: &dyn Backend, config: ServerConfig) {
    // Accepted sockets do not inherit O_NONBLOCK; make sure, the reads below rely on it.
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(config.write_timeout));
    let mut reader = RequestReader::new(config.limits);
    let mut buf = vec![0u8; 16 * 1024];
    // Set when a request's first bytes are in; the whole request must arrive before it.
    let mut deadline: Option<Instant> = None;
    loop {
        match reader.poll() {
            Ok(Poll::Ready(request)) => {
                deadline = None;
                let keep_alive = request.keep_alive();
                let started = Instant::now();
                let (response, handled) = respond(&request, backend);
                log::debug!(
                    "api: {} {} -> {} ({:.1} ms)",
                    request.method,
                    request.path,
                    response.status,
                    started.elapsed().as_secs_f64() * 1e3
                );
                let sent = send(conn, &response.to_bytes(keep_alive, request.version));
                if let Some(endpoint) = handled {
                    backend.answered(endpoint, response.status);
                }
                if !sent {
                    return;
                }
                if !keep_alive {
                    close(conn, config);
                    return;
                }
                continue;
            }
            Ok(Poll::NeedMore { send_continue }) => {
                if send_continue && !send(conn, http::CONTINUE) {
                    return;
                }
            }
            Err(e) => {
                log::debug!("api: refusing a request: {e}");
                let response = Response::error(e.status(), &e.to_string());
                if send(conn, &response.to_bytes(false, http::Version::Http11)) {
                    close(conn, config);
                }
                return;
            }
        }
        let timeout = if reader.in_request() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + config.request_timeout);
            deadline.saturating_duration_since(Instant::now())
        } else {
            config.idle_timeout
        };
        let read = if timeout.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            conn.set_read_timeout(Some(timeout))
                .and_then(|()| (&*conn).read(&mut buf))
        };
        match read {
            Ok(0) => {
                if reader.in_request() {
                    log::debug!("api: a client closed its connection mid-request");
                }
                return;
            }
            Ok(n) => reader.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if reader.in_request() {
                    let message = format!(
                        "the request did not arrive whole within {} ms",
                        config.request_timeout.as_millis()
                    );
                    log::debug!("api: {message}");
                    let response = Response::error(408, &message);
                    if send(conn, &response.to_bytes(false, http::Version::Http11)) {
                        close(conn, config);
                    }
                }
                // An idle keep-alive connection just closes: an answer nobody asked for
                // would be read as the answer to the client's next request.
                return;
            }
            Err(e) => {
                log::debug!("api: reading a request failed: {e}");
                return;
            }
        }
    }
}

/// Writes `bytes`; false when the client is gone.
fn send(conn: &UnixStream, bytes: &[u8]) -> bool {
    match (&*conn).write_all(bytes) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("api: the client went away before its answer: {e}");
            false
        }
    }
}

/// Most bytes read and dropped while closing.
const DRAIN_MAX: u64 = 64 * 1024;
/// Longest wait for them.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// Ends a connection gracefully: closing with unread input would reset it under a client
/// still sending, before it reads the answer, so take (a bounded amount of) what is left,
/// for a bounded time.
fn close(conn: &UnixStream, config: ServerConfig) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + DRAIN_WAIT.min(config.request_timeout);
    let mut drained = 0u64;
    let mut buf = [0u8; 4096];
    while drained < DRAIN_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*conn).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => drained += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The answer to one request, and the endpoint if the backend carried it out.
fn respond(request: &http::Request, backend: &dyn Backend) -> (Response, Option<Endpoint>) {
    let endpoint = match routes::find(&request.method, &request.path) {
        Ok(endpoint) => endpoint,
        Err(e @ RouteError::NotFound(_)) => return (Response::error(404, &e.to_string()), None),
        Err(e @ RouteError::MethodNotAllowed { allow, .. }) => {
            let response =
                Response::error(405, &e.to_string()).with_header("Allow", allow.as_str());
            return (response, None);
        }
    };
    let api_request = match ApiRequest::parse(endpoint, request.body.as_deref()) {
        Ok(r) => r,
        Err(e) => return (Response::error(e.status, &e.message), None),
    };
    // The backend is the VMM's code; a panic there must cost one answer, not the server.
    let response = match catch_unwind(AssertUnwindSafe(|| backend.handle(api_request))) {
        Ok(Ok(None)) => Response::no_content(),
        Ok(Ok(Some(value))) => Response::json(200, &value),
        Ok(Err(e)) => {
            let status = if (400..=599).contains(&e.status) {
                e.status
            } else {
                log::warn!(
                    "api: {endpoint}: the backend gave status {} for an error; sending 500",
                    e.status
                );
                500
            };
            Response::error(status, &e.message)
        }
        Err(_) => {
            log::error!("api: {endpoint}: the backend panicked");
            Response::error(
                500,
                &format!("host-vmm failed while handling {endpoint}; see its log"),
            )
        }
    };
    (response, Some(endpoint))
}
