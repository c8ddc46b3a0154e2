//! The control server: a thread serving `host-vmm ctl` on a Unix socket, one request per
//! connection.
//!
//! Wire format (text): the client sends one command line ([`Command`]'s words and a
//! newline) and closes its side; the server answers `ok` and the command's output lines, or
//! `error: MESSAGE`, and closes. Guest commands go to the guest agent over the console port
//! ([`AgentLink`]); VF commands to the VF model's [`VfOperator`].
//!
//! The socket: [`Listener::bind`] refuses a path where another host-vmm is listening and
//! replaces a stale socket (one nobody accepts on, left by a killed host-vmm); the file is
//! removed when the listener or the server is dropped.

use super::agent::{AgentError, AgentLink};
use super::command::{Command, format_active, format_status, format_vf};
use super::{VfOpError, VfOperator};
use crate::devices::virtio::console::HostPort;
use crate::migration::source::{self, Agent as _};
use crate::vmm::Machine;
use agent_proto::{Reply, Request, Status};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Longest command line the server reads.
pub const MAX_LINE: usize = 1024;
/// Most bytes of an overlong request read and dropped before closing.
const DRAIN_MAX: u64 = 64 * 1024;
/// How long a client may take to send its line, and to take the answer.
pub const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A live server answers on the path.
    #[error("{0}: another host-vmm is listening there; stop it or choose another --control path")]
    InUse(PathBuf),
    /// Something other than a socket is there.
    #[error("{0} exists and is not a socket; remove it or choose another --control path")]
    NotASocket(PathBuf),
    /// bind(2) or the stale-socket check failed.
    #[error("cannot listen on {path}: {error}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// The server thread or its epoll could not be set up.
    #[error("cannot start the control server: {0}")]
    Start(io::Error),
}

/// Removes the socket file when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("control: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A bound control socket, not served yet.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    file: SocketFile,
}

impl Listener {
    /// Binds a Unix socket at `path`, replacing a stale socket but never a live one.
    pub fn bind(path: &Path) -> Result<Listener, ServerError> {
        let bind_error = |error| ServerError::Bind {
            path: path.to_owned(),
            error,
        };
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
                if !meta.file_type().is_socket() {
                    return Err(ServerError::NotASocket(path.to_owned()));
                }
                match UnixStream::connect(path) {
                    Ok(_) => return Err(ServerError::InUse(path.to_owned())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        log::info!("control: replacing the stale socket {}", path.display());
                        std::fs::remove_file(path).map_err(bind_error)?;
                        UnixListener::bind(path).map_err(bind_error)?
                    }
                    Err(e) => return Err(bind_error(e)),
                }
            }
            Err(e) => return Err(bind_error(e)),
        };
        let file = SocketFile(path.to_owned());
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(Listener { listener, file })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }

    /// Starts the server thread answering with `services`.
    pub fn serve(self, services: Services) -> Result<ControlServer, ServerError> {
        let epoll = Epoll::new().map_err(ServerError::Start)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ServerError::Start)?;
        for (fd, token) in [
            (self.listener.as_raw_fd(), TOKEN_LISTENER),
            (stop.as_raw_fd(), TOKEN_STOP),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ServerError::Start)?;
        }
        let thread_stop = stop.try_clone().map_err(ServerError::Start)?;
        let arrived = EventFd::new(libc::EFD_NONBLOCK).map_err(ServerError::Start)?;
        epoll
            .ctl(
                ControlOperation::Add,
                arrived.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_ARRIVED),
            )
            .map_err(ServerError::Start)?;
        let thread_arrived = arrived.try_clone().map_err(ServerError::Start)?;
        let mut handler = Handler {
            agent: AgentLink::new(services.agent, services.agent_timeout),
            vf: services.vf,
            machine: services.machine,
        };
        let listener = self.listener;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                run(
                    epoll,
                    &listener,
                    &thread_stop,
                    &thread_arrived,
                    &mut handler,
                )
            })
            .map_err(ServerError::Start)?;
        log::info!("control: listening on {}", self.file.0.display());
        Ok(ControlServer {
            stop,
            arrived,
            thread: Some(thread),
            _file: self.file,
        })
    }
}

/// What the server reaches.
#[derive(Debug)]
pub struct Services {
    /// The host end of the console port the guest agent listens on.
    pub agent: HostPort,
    /// The VF, when the VM has one.
    pub vf: Option<Arc<dyn VfOperator>>,
    /// How long the guest agent has to answer ([`super::AGENT_TIMEOUT`] in production).
    pub agent_timeout: Duration,
    /// The VM itself, for `migrate` (absent in tests of the command plumbing).
    pub machine: Option<Arc<Machine>>,
}

/// A running control server; dropping it stops the thread and removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    stop: EventFd,
    /// Written once a migrated guest runs here: the thread then finishes its arrival.
    arrived: EventFd,
    thread: Option<JoinHandle<()>>,
    // Dropped after `drop` has joined the thread.
    _file: SocketFile,
}

impl ControlServer {
    /// A migrated guest runs here now: plug the VF back in and tell the guest agent
    /// (RESUMED), on the server's thread, which owns the agent link.
    pub fn guest_arrived(&self) {
        if let Err(e) = self.arrived.write(1) {
            log::warn!("control: cannot signal the guest's arrival: {e}");
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::warn!("control: cannot signal stop: {e}");
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::warn!("control: the server thread panicked");
        }
    }
}

const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_ARRIVED: u64 = 2;

fn run(
    epoll: Epoll,
    listener: &UnixListener,
    stop: &EventFd,
    arrived: &EventFd,
    handler: &mut Handler,
) {
    let mut events = [EpollEvent::default(); 3];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("control: epoll_wait failed: {e}; the control socket stops");
                return;
            }
        };
        for event in &events[..n] {
            if event.data() == TOKEN_STOP {
                let _ = stop.read();
                return;
            }
            if event.data() == TOKEN_ARRIVED {
                let _ = arrived.read();
                handler.after_arrival();
            }
        }
        loop {
            match listener.accept() {
                Ok((conn, _)) => handler.serve(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("control: accept failed: {e}");
                    break;
                }
            }
        }
    }
}

/// Why a command failed (the text the client prints after `host-vmm: error:`).
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("this VM has no VF (start it with --vf)")]
    NoVf,
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Vf(#[from] VfOpError),
    #[error("the guest agent answered with an unexpected {0}")]
    UnexpectedReply(&'static str),
    #[error("{0}")]
    BadRequest(String),
}

struct Handler {
    agent: AgentLink,
    vf: Option<Arc<dyn VfOperator>>,
    machine: Option<Arc<Machine>>,
}

/// The guest agent as a migration sees it.
struct AgentSteps<'a>(&'a mut AgentLink);

impl source::Agent for AgentSteps<'_> {
    fn prepare(&mut self) -> Result<(), String> {
        let p = self.0.prepare().map_err(|e| e.to_string())?;
        log::info!("migration: guest prepared (released VF: {})", p.released_vf);
        Ok(())
    }

    fn resumed(&mut self) -> Result<(), String> {
        let r = self.0.resumed().map_err(|e| e.to_string())?;
        log::info!(
            "migration: guest resumed (VF attached: {}, announced: {})",
            r.vf_attached,
            r.announced
        );
        Ok(())
    }
}

impl Handler {
    /// Reads one command line from `conn`, carries it out, answers, closes.
    fn serve(&mut self, conn: UnixStream) {
        // Accepted sockets do not inherit the listener's O_NONBLOCK; bound the waits.
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(CLIENT_IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(CLIENT_IO_TIMEOUT));
        let mut line = Vec::new();
        let read = BufReader::new((&conn).take(MAX_LINE as u64 + 1)).read_until(b'\n', &mut line);
        if let Err(e) = read {
            log::debug!("control: reading a request failed: {e}");
            return;
        }
        if line.is_empty() {
            // A connect and close (another host-vmm checking whether we are alive).
            return;
        }
        if let Ok(Command::Migrate {
            target,
            downtime_ms,
            zero_copy,
        }) = std::str::from_utf8(&line)
            .map_err(drop)
            .and_then(|t| Command::parse_line(t).map_err(drop))
        {
            let options = source::Options {
                target,
                downtime: Duration::from_millis(downtime_ms),
                zero_copy,
            };
            self.migrate(&conn, &options);
            let _ = conn.shutdown(std::net::Shutdown::Write);
            return;
        }
        let result = self.execute(&line);
        let answer = match &result {
            Ok(out) => format!("ok\n{out}"),
            Err(e) => {
                log::info!("control: {e}");
                format!("error: {}\n", e.to_string().replace('\n', " "))
            }
        };
        if let Err(e) = (&conn).write_all(answer.as_bytes()) {
            log::debug!("control: the client went away before the answer: {e}");
        }
        // Closing with unread input would reset the connection before the client reads
        // the answer: take what is left of an overlong request first (bounded).
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let _ = io::copy(&mut (&conn).take(DRAIN_MAX), &mut io::sink());
    }

    fn execute(&mut self, line: &[u8]) -> Result<String, CommandError> {
        if line.len() > MAX_LINE {
            return Err(CommandError::BadRequest(format!(
                "the command line is longer than {MAX_LINE} bytes"
            )));
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| CommandError::BadRequest("the command line is not UTF-8".into()))?;
        let command =
            Command::parse_line(text).map_err(|e| CommandError::BadRequest(e.to_string()))?;
        log::info!("control: {command}");
        match command {
            Command::Migrate { .. } => Err(CommandError::BadRequest(
                "migrate must be the whole request".into(),
            )),
            Command::Switch(nic) => Ok(format_active(self.ask(Request::Switch(nic))?.active)),
            Command::Status => Ok(format_status(&self.ask(Request::Status)?)),
            Command::VfLink { up } => {
                let vf = self.vf()?;
                vf.set_link(up)?;
                Ok(format_vf(vf.state()))
            }
            Command::VfRemove => {
                let vf = self.vf()?;
                vf.remove()?;
                Ok(format_vf(vf.state()))
            }
            Command::VfAdd => {
                let vf = self.vf()?;
                vf.add()?;
                Ok(format_vf(vf.state()))
            }
            // Debug commands (see command.rs): one agent step of a move each.
            Command::AgentPrepare => Ok(super::command::format_prepared(&self.agent.prepare()?)),
            Command::AgentResumed => Ok(super::command::format_resumed(&self.agent.resumed()?)),
        }
    }

    fn ask(&mut self, request: Request) -> Result<Status, CommandError> {
        match self.agent.call(request)? {
            Reply::Status(status) => Ok(status),
            Reply::Prepared(_) => Err(CommandError::UnexpectedReply("PREPARE reply")),
            Reply::Resumed(_) => Err(CommandError::UnexpectedReply("RESUMED reply")),
            Reply::Error(..) => Err(CommandError::UnexpectedReply("error")),
        }
    }

    /// Runs a migration, streaming `progress: ...` lines to `conn`, then `ok` and the
    /// summary, or `error: ...` (the guest then runs here again).
    fn migrate(&mut self, conn: &UnixStream, options: &source::Options) {
        let Some(machine) = self.machine.clone() else {
            let _ = (&*conn).write_all(b"error: this host-vmm cannot migrate\n");
            return;
        };
        log::info!("control: migrate to {}", options.target);
        let mut progress = |line: &str| {
            eprintln!("host-vmm: migration: {line}");
            let _ = (&*conn).write_all(format!("progress: {line}\n").as_bytes());
        };
        let mut steps = AgentSteps(&mut self.agent);
        let answer = match source::migrate(&machine, options, Some(&mut steps), &mut progress) {
            Ok(summary) => {
                eprint!("host-vmm: {summary}");
                format!("ok\n{summary}")
            }
            Err(e) => {
                eprintln!("host-vmm: migration failed, the guest runs here: {e}");
                format!(
                    "error: migration failed, the guest runs here: {}\n",
                    e.to_string().replace('\n', " ")
                )
            }
        };
        let _ = (&*conn).write_all(answer.as_bytes());
    }

    /// A migrated guest runs here: the VF goes back in (it left the source detached) and
    /// the agent hears RESUMED.
    fn after_arrival(&mut self) {
        if let Some(vf) = &self.vf
            && !vf.state().present
            && let Err(e) = vf.add()
        {
            log::warn!("migration: cannot plug the VF in: {e}");
        }
        if let Err(e) = (AgentSteps(&mut self.agent)).resumed() {
            log::warn!("migration: the guest agent did not take RESUMED: {e}");
        }
    }

    fn vf(&self) -> Result<Arc<dyn VfOperator>, CommandError> {
        self.vf.clone().ok_or(CommandError::NoVf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::{ClientError, request};
    use super::super::test_guest::{self, FakeNics};
    use super::super::{VfState, client};
    use super::*;
    use agent_proto::{MAX_FRAME, Nic};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A VF model on paper: records what it was asked.
    #[derive(Debug)]
    struct FakeVf {
        state: Mutex<VfState>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl FakeVf {
        fn new() -> Arc<FakeVf> {
            Arc::new(FakeVf {
                state: Mutex::new(VfState {
                    present: true,
                    link_up: true,
                }),
                calls: Mutex::new(Vec::new()),
            })
        }
    }

    impl VfOperator for FakeVf {
        fn state(&self) -> VfState {
            *self.state.lock().unwrap()
        }
        fn set_link(&self, up: bool) -> Result<(), VfOpError> {
            self.calls.lock().unwrap().push("set_link");
            let mut s = self.state.lock().unwrap();
            if !s.present {
                return Err(VfOpError::NotPresent);
            }
            s.link_up = up;
            Ok(())
        }
        fn remove(&self) -> Result<(), VfOpError> {
            self.calls.lock().unwrap().push("remove");
            let mut s = self.state.lock().unwrap();
            if !s.present {
                return Err(VfOpError::Failed("the VF is already removed".into()));
            }
            *s = VfState {
                present: false,
                link_up: false,
            };
            Ok(())
        }
        fn add(&self) -> Result<(), VfOpError> {
            self.calls.lock().unwrap().push("add");
            let mut s = self.state.lock().unwrap();
            if s.present {
                return Err(VfOpError::AlreadyPresent);
            }
            *s = VfState {
                present: true,
                link_up: true,
            };
            Ok(())
        }
    }

    /// A unique socket path in the temp directory, removed on drop.
    struct SocketPath(PathBuf);

    impl SocketPath {
        fn new(tag: &str) -> SocketPath {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            SocketPath(
                std::env::temp_dir().join(format!("hv-ctl-{tag}-{}-{n}.sock", std::process::id())),
            )
        }
    }

    impl Drop for SocketPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    struct Setup {
        path: SocketPath,
        server: Option<ControlServer>,
        guest: Option<test_guest::GuestEnd>,
    }

    fn start(tag: &str, vf: Option<Arc<dyn VfOperator>>, timeout: Duration) -> Setup {
        let path = SocketPath::new(tag);
        let (port, guest) = test_guest::pair();
        let server = Listener::bind(&path.0)
            .unwrap()
            .serve(Services {
                agent: port,
                vf,
                agent_timeout: timeout,
                machine: None,
            })
            .unwrap();
        Setup {
            path,
            server: Some(server),
            guest: Some(guest),
        }
    }

    fn ctl(s: &Setup, line: &str) -> Result<String, ClientError> {
        request(
            &s.path.0,
            &Command::parse_line(line).unwrap(),
            client::TIMEOUT,
        )
    }

    #[test]
    fn status_and_switch_go_to_the_guest_agent() {
        let mut s = start("agent", None, Duration::from_secs(5));
        let nics = FakeNics::both_up();
        let _guest = s.guest.take().unwrap().run_agent(nics.clone());
        assert_eq!(
            ctl(&s, "status").unwrap(),
            "active=virtio\n\
             vf present=yes link=up rx=10 tx=20 rx_errors=0 tx_dropped=0\n\
             virtio present=yes link=up rx=10 tx=20 rx_errors=0 tx_dropped=0\n\
             switches=0\n"
        );
        assert_eq!(ctl(&s, "switch vf").unwrap(), "active=vf\n");
        assert_eq!(nics.lock().unwrap().status.switches, 1);
        assert_eq!(ctl(&s, "switch virtio").unwrap(), "active=virtio\n");
        assert!(ctl(&s, "status").unwrap().ends_with("switches=2\n"));
    }

    #[test]
    fn a_refused_switch_is_an_error_with_the_agents_reason() {
        let mut s = start("refused", None, Duration::from_secs(5));
        let nics = FakeNics::both_up();
        nics.lock().unwrap().status.vf.link_up = false;
        let _guest = s.guest.take().unwrap().run_agent(nics);
        let e = ctl(&s, "switch vf").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent refused: cannot switch to vf: its link is down"
        );
    }

    #[test]
    fn a_silent_guest_is_a_timeout_and_the_server_goes_on() {
        let mut s = start("timeout", None, Duration::from_millis(200));
        let e = ctl(&s, "status").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("the guest agent did not answer within 200 ms"),
            "{text}"
        );
        // The withdrawn request is not delivered when the agent shows up later.
        let guest = s.guest.take().unwrap();
        assert_eq!(guest.unsent(), 0);
        let _guest = guest.run_agent(FakeNics::both_up());
        assert!(ctl(&s, "status").is_ok());
    }

    #[test]
    fn a_malformed_reply_is_reported() {
        let mut s = start("malformed", None, Duration::from_secs(5));
        let _guest = s.guest.take().unwrap().answer_with(|seq, _| {
            let mut f = [0u8; MAX_FRAME];
            let n = agent_proto::encode(seq, &Reply::Status(Status::default()), &mut f);
            f[n - 1] ^= 0xFF; // the payload check
            vec![f[..n].to_vec()]
        });
        let e = ctl(&s, "status").unwrap_err().to_string();
        assert!(e.contains("malformed reply (bad payload checksum)"), "{e}");
    }

    #[test]
    fn vf_commands_go_to_the_vf_operator() {
        let vf = FakeVf::new();
        let s = start("vf", Some(vf.clone()), Duration::from_secs(5));
        assert_eq!(
            ctl(&s, "vf link down").unwrap(),
            "vf present=yes link=down\n"
        );
        assert_eq!(ctl(&s, "vf link up").unwrap(), "vf present=yes link=up\n");
        assert_eq!(ctl(&s, "vf remove").unwrap(), "vf present=no link=down\n");
        let e = ctl(&s, "vf link up").unwrap_err().to_string();
        assert_eq!(e, VfOpError::NotPresent.to_string());
        assert_eq!(ctl(&s, "vf add").unwrap(), "vf present=yes link=up\n");
        let e = ctl(&s, "vf add").unwrap_err().to_string();
        assert_eq!(e, "the VF is already present");
        assert_eq!(
            *vf.calls.lock().unwrap(),
            ["set_link", "set_link", "remove", "set_link", "add", "add"]
        );
    }

    #[test]
    fn vf_commands_without_a_vf_say_how_to_get_one() {
        let s = start("novf", None, Duration::from_secs(5));
        for line in ["vf link up", "vf remove", "vf add"] {
            let e = ctl(&s, line).unwrap_err().to_string();
            assert_eq!(e, "this VM has no VF (start it with --vf)");
        }
    }

    /// Sends raw bytes as a client would and returns the raw answer.
    fn raw(s: &Setup, bytes: &[u8]) -> String {
        let mut conn = UnixStream::connect(&s.path.0).unwrap();
        conn.write_all(bytes).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn bad_command_lines_are_answered_with_an_error() {
        let s = start("badline", None, Duration::from_secs(5));
        let out = raw(&s, b"switch eth0\n");
        assert!(
            out.starts_with("error: unknown command `switch eth0`"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1);
        let out = raw(&s, b"\xFF\xFE\n");
        assert_eq!(out, "error: the command line is not UTF-8\n");
        let out = raw(&s, &vec![b'a'; 5000]);
        assert!(out.contains("longer than 1024 bytes"), "{out}");
        let out = raw(&s, b"\n");
        assert!(out.starts_with("error: no command given"), "{out}");
        // Without a newline the line still counts (the client closes its side).
        assert_eq!(
            raw(&s, b"vf add"),
            "error: this VM has no VF (start it with --vf)\n"
        );
        // Then a good one still works.
        assert!(raw(&s, b"vf remove\n").starts_with("error: this VM has no VF"));
    }

    #[test]
    fn a_live_socket_is_refused_a_stale_one_replaced_and_the_file_removed() {
        let mut s = start("life", None, Duration::from_secs(5));
        let e = Listener::bind(&s.path.0).unwrap_err();
        assert!(matches!(e, ServerError::InUse(_)), "{e}");
        assert!(e.to_string().contains("another host-vmm"), "{e}");
        // The liveness probe did not disturb the server.
        assert!(ctl(&s, "vf add").is_err());
        drop(s.server.take());
        assert!(!s.path.0.exists(), "socket removed on exit");
        // A stale socket (bound, never served, its owner gone).
        let stale = std::os::unix::net::UnixListener::bind(&s.path.0).unwrap();
        drop(stale);
        assert!(s.path.0.exists());
        let l = Listener::bind(&s.path.0).unwrap();
        assert_eq!(l.path(), s.path.0);
        drop(l);
        assert!(
            !s.path.0.exists(),
            "an unserved listener removes its socket too"
        );
        // A regular file is left alone.
        std::fs::write(&s.path.0, b"keep me").unwrap();
        let e = Listener::bind(&s.path.0).unwrap_err();
        assert!(matches!(e, ServerError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read(&s.path.0).unwrap(), b"keep me");
        // A directory that does not exist.
        let e = Listener::bind(Path::new("/nonexistent-dir/ctl.sock")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot listen on /nonexistent-dir/ctl.sock: "),
            "{e}"
        );
    }

    #[test]
    fn the_client_explains_a_missing_or_dead_socket() {
        let path = SocketPath::new("client");
        let e = request(&path.0, &Command::Status, client::TIMEOUT).unwrap_err();
        assert!(matches!(e, ClientError::NoSocket(_)), "{e}");
        assert!(
            e.to_string().contains("is host-vmm running with --control"),
            "{e}"
        );
        let stale = std::os::unix::net::UnixListener::bind(&path.0).unwrap();
        drop(stale);
        let e = request(&path.0, &Command::Status, client::TIMEOUT).unwrap_err();
        assert!(matches!(e, ClientError::Refused(_)), "{e}");
        // A listener that never answers.
        let _mute = std::os::unix::net::UnixListener::bind(path.0.with_extension("mute")).unwrap();
        let mute_path = SocketPath(path.0.with_extension("mute"));
        let e = request(&mute_path.0, &Command::Status, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ClientError::NoAnswer { .. }), "{e}");
    }

    #[test]
    fn requests_are_served_one_after_another_from_many_clients() {
        let mut s = start("many", None, Duration::from_secs(5));
        let _guest = s.guest.take().unwrap().run_agent(FakeNics::both_up());
        let path = s.path.0.clone();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let nic = if i % 2 == 0 { Nic::Vf } else { Nic::Virtio };
                    request(&path, &Command::Switch(nic), client::TIMEOUT)
                })
            })
            .collect();
        for t in threads {
            let out = t.join().unwrap().unwrap();
            assert!(out == "active=vf\n" || out == "active=virtio\n", "{out}");
        }
    }
}
