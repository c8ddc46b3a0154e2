//! `migproxy`: a fault-injecting forwarder for host-vmm's migration stream, for the rollback
//! tests. The source connects to it instead of the destination; it connects to the real
//! `host-vmm receive` and forwards every frame both ways, reading each frame's header with
//! the stream format's crate (`migration_wire`) to know where the move is.
//! At the frame chosen by `--at` it does one `--fault`, once, and keeps forwarding what is
//! left (so the destination's FAILED reaches the source, as on a direct connection):
//!
//! ```text
//! migproxy --listen tcp:ADDR:PORT|unix:PATH --to tcp:ADDR:PORT|unix:PATH
//!          [--at hello|pages:N|pass:N|ready|state] [--fault cut|corrupt|kill] [--pid PID]
//!          [--hold-ms MS] [--rate-kbps N] [--tls-dir DIR]
//!
//! --at hello     the source's Hello (the first frame)
//! --at pages:N   the Nth PAGES frame (1: the first pass has not delivered a page yet)
//! --at pass:N    the first PAGES frame of page pass N (2: the first dirty pass); passes
//!                are told apart by the page frame numbers, increasing within a pass
//! --at ready     the destination's READY (zero-copy: it has mapped the memfd and waits
//!                for the pause); the fault strikes instead of forwarding it
//! --at state     the STATE frame (the source's vCPU is paused)
//! --fault cut     close both connections instead of forwarding the frame
//! --fault corrupt flip one payload byte of the frame (the CRC no longer matches) and go on
//! --fault kill    SIGKILL the destination (--pid) instead of forwarding the frame
//! --rate-kbps N  forward the source's frames at N kB/s at most (a slow link: every pass
//!                takes long, the guest dirties pages meanwhile, dirty passes go on)
//! --hold-ms MS   read nothing more from the source for MS after its Hello: with small
//!                socket buffers the source blocks in its first pass, the guest dirties
//!                pages meanwhile, and a dirty pass follows
//! --tls-dir DIR  tcp: on both sides is mutual TLS with the certificates in DIR: migproxy
//!                is the server to the source (server-cert.pem) and the client to the
//!                destination (client-cert.pem), and sees the frames in between
//! ```
//!
//! It prints `migproxy: listening on ...` when ready, `migproxy: fault ... at=SECONDS`
//! (seconds since the Unix epoch, the clock of `ping -D`) when it strikes, what the
//! destination answered, and `migproxy: done ...` when both directions are closed. One
//! connection only; everything is bounded in time. Between two Unix sockets the memfd
//! frame's file descriptor is passed on with its first bytes and closed here at once, so
//! zero-copy moves go through too.

use migration_wire::tls::rustls::{ClientConnection, Connection, ServerConnection};
use migration_wire::{FrameHeader, HEADER_LEN, Message, TRAILER_LEN, kind, kind_name, tls};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Waiting for the source, and any one read, are bounded by this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum At {
    Hello,
    Pages(u64),
    Pass(u64),
    Ready,
    State,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Cut,
    Corrupt,
    Kill,
}

struct Options {
    listen: String,
    to: String,
    at: Option<At>,
    fault: Fault,
    pid: Option<i32>,
    hold: Duration,
    /// Bytes per second forwarded from the source at most.
    rate: Option<u64>,
    /// Mutual TLS on the tcp: sides, from this certificate directory.
    tls_dir: Option<std::path::PathBuf>,
}

fn usage() -> String {
    "usage: migproxy --listen tcp:ADDR:PORT|unix:PATH --to tcp:ADDR:PORT|unix:PATH \
     [--at hello|pages:N|pass:N|ready|state] [--fault cut|corrupt|kill] [--pid PID] \
     [--hold-ms MS] [--rate-kbps N] [--tls-dir DIR]"
        .into()
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        listen: String::new(),
        to: String::new(),
        at: None,
        fault: Fault::Cut,
        pid: None,
        hold: Duration::ZERO,
        rate: None,
        tls_dir: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {}", usage()))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--listen" => o.listen = value.clone(),
            "--to" => o.to = value.clone(),
            "--at" => {
                o.at = Some(match value.split_once(':') {
                    None if value == "hello" => At::Hello,
                    None if value == "state" => At::State,
                    None if value == "ready" => At::Ready,
                    Some(("pages", n)) => At::Pages(number(n)?.max(1)),
                    Some(("pass", n)) => At::Pass(number(n)?.max(1)),
                    _ => return Err(format!("--at {value}: {}", usage())),
                })
            }
            "--fault" => {
                o.fault = match value.as_str() {
                    "cut" => Fault::Cut,
                    "corrupt" => Fault::Corrupt,
                    "kill" => Fault::Kill,
                    _ => return Err(format!("--fault {value}: {}", usage())),
                }
            }
            "--pid" => {
                o.pid = Some(
                    i32::try_from(number(value)?)
                        .map_err(|_| format!("--pid {value}: too large"))?,
                )
            }
            "--hold-ms" => o.hold = Duration::from_millis(number(value)?),
            "--rate-kbps" => o.rate = Some(number(value)?.max(1) * 1000),
            "--tls-dir" => o.tls_dir = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}; {}", usage())),
        }
    }
    if o.listen.is_empty() || o.to.is_empty() {
        return Err(usage());
    }
    if o.at.is_some() && o.fault == Fault::Kill && o.pid.is_none() {
        return Err("--fault kill needs --pid".into());
    }
    if o.at == Some(At::Ready) && o.fault == Fault::Corrupt {
        return Err("--at ready takes --fault cut or kill (READY has no payload)".into());
    }
    Ok(o)
}

/// A connected stream, TCP or Unix, that can be cloned for the other direction. A Unix one
/// keeps the file descriptors that arrive with its bytes until they are passed on.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream, Vec<File>),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s, _) => Conn::Unix(s.try_clone()?, Vec::new()),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s, _) => s.shutdown(how),
        };
    }

    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
            Conn::Unix(s, _) => s.set_read_timeout(Some(t)),
        }
    }

    /// The file descriptors read so far (none on TCP).
    fn take_fds(&mut self) -> Vec<File> {
        match self {
            Conn::Tcp(_) => Vec::new(),
            Conn::Unix(_, fds) => std::mem::take(fds),
        }
    }

    /// Writes `bytes`, the first of them with `fds` attached (Unix only); the fds are
    /// closed here afterwards, as they drop.
    fn write_with_fds(&mut self, bytes: &[u8], fds: Vec<File>) -> io::Result<()> {
        let sent = match (&*self, fds.as_slice()) {
            (_, []) => 0,
            (Conn::Unix(s, _), fds) => {
                let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
                s.send_with_fds(&[bytes], &raw).map_err(io::Error::from)?
            }
            (Conn::Tcp(_), _) => {
                return Err(io::Error::other("file descriptors cannot cross TCP"));
            }
        };
        self.write_all(&bytes[sent..])
    }
}

/// Reads at most `rate` bytes a second (a slow link), in small pieces.
struct Throttled<'a, R> {
    inner: &'a mut R,
    rate: Option<u64>,
}

impl<R: Read> Read for Throttled<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(rate) = self.rate else {
            return self.inner.read(buf);
        };
        let end = buf.len().min(4096);
        let n = self.inner.read(&mut buf[..end])?;
        std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        Ok(n)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s, fds) => {
                let (n, fd) = s.recv_with_fd(buf).map_err(io::Error::from)?;
                fds.extend(fd);
                Ok(n)
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s, _) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Accepts one connection on `addr`, waiting at most [`IO_TIMEOUT`].
fn accept_one(addr: &str) -> Result<Conn, String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let wait = |r: io::Result<()>| r.map_err(|e| format!("listening on {addr}: {e}"));
    if let Some(a) = addr.strip_prefix("tcp:") {
        let l = TcpListener::bind(a).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        wait(l.set_nonblocking(true))?;
        say(&format!("listening on {addr}"));
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    wait(s.set_nonblocking(false))?;
                    let _ = s.set_nodelay(true);
                    return Ok(Conn::Tcp(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("no source connected to {addr}: {e}")),
            }
        }
    } else if let Some(p) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(p);
        let l = UnixListener::bind(p).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        wait(l.set_nonblocking(true))?;
        say(&format!("listening on {addr}"));
        let result = loop {
            match l.accept() {
                Ok((s, _)) => {
                    break wait(s.set_nonblocking(false)).map(|()| Conn::Unix(s, Vec::new()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => break Err(format!("no source connected to {addr}: {e}")),
            }
        };
        let _ = std::fs::remove_file(p);
        result
    } else {
        Err(format!("`{addr}`: {}", usage()))
    }
}

fn connect(addr: &str) -> Result<Conn, String> {
    let fail = |e: io::Error| format!("cannot connect to {addr}: {e}");
    if let Some(a) = addr.strip_prefix("tcp:") {
        let s = TcpStream::connect(a).map_err(fail)?;
        let _ = s.set_nodelay(true);
        Ok(Conn::Tcp(s))
    } else if let Some(p) = addr.strip_prefix("unix:") {
        UnixStream::connect(p)
            .map(|s| Conn::Unix(s, Vec::new()))
            .map_err(fail)
    } else {
        Err(format!("`{addr}`: {}", usage()))
    }
}

/// Plaintext bytes held for the plain side at most (then the TLS side is not read: the
/// peer feels the back-pressure as it would on a direct link).
const BRIDGE_HELD: usize = 64 << 10;
/// How long the process waits for a bridge to pass on what is left before it exits.
const BRIDGE_DRAIN: Duration = Duration::from_secs(10);

/// Ends `tcp`'s TLS `conn` here: returns a plain stream whose bytes are the connection's
/// plaintext, both ways, moved by a thread of its own (one thread, so the one rustls
/// connection is never shared). End of stream travels both ways (close_notify and FIN).
/// A bridge thread's end: the process must not exit before it (its last words, a
/// destination's FAILED, would die with it).
type BridgeDone = mpsc::Receiver<()>;

fn bridge(conn: Connection, tcp: TcpStream) -> Result<(Conn, BridgeDone), String> {
    let (near, far) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        if let Err(e) = bridge_loop(conn, &tcp, &far) {
            say(&format!("TLS: {e}"));
        }
        let _ = tcp.shutdown(Shutdown::Both);
        let _ = far.shutdown(Shutdown::Both);
        let _ = done.send(());
    });
    Ok((Conn::Unix(near, Vec::new()), finished))
}

fn bridge_loop(mut conn: Connection, tcp: &TcpStream, plain: &UnixStream) -> io::Result<()> {
    tcp.set_nonblocking(true)?;
    plain.set_nonblocking(true)?;
    // Back-pressure is this loop's (plain is read only once the TLS output is written).
    conn.set_buffer_limit(None);
    let (mut tcp, mut plain) = (tcp, plain);
    let mut held: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let (mut tls_ended, mut plain_ended, mut plain_shut, mut tcp_shut) =
        (false, false, false, false);
    // The TLS peer stopped taking data: what is left for it is dropped, but what it sent
    // (a destination's FAILED) is still read and passed on.
    let mut tcp_broken = false;
    let deadline_idle = IO_TIMEOUT;
    let mut last = Instant::now();
    loop {
        let read_tls = !tls_ended && held.len() < BRIDGE_HELD;
        let wants_write = !tcp_broken && conn.wants_write();
        let read_plain = !plain_ended && !wants_write;
        let mut fds = [
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(tcp),
                events: (if read_tls { libc::POLLIN } else { 0 })
                    | (if wants_write { libc::POLLOUT } else { 0 }),
                revents: 0,
            },
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(plain),
                events: (if read_plain { libc::POLLIN } else { 0 })
                    | (if held.is_empty() { 0 } else { libc::POLLOUT }),
                revents: 0,
            },
        ];
        if fds.iter().all(|f| f.events == 0) && tls_ended && plain_ended {
            return Ok(());
        }
        // SAFETY: poll(2) on two pollfd structs this function owns, for their length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            if last.elapsed() > deadline_idle {
                return Err(io::Error::other("idle too long"));
            }
            continue;
        }
        last = Instant::now();
        let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
        if read_tls && fds[0].revents != 0 {
            match conn.read_tls(&mut tcp) {
                Ok(0) => tls_ended = true,
                Ok(_) => {
                    let state = conn
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let mut n = state.plaintext_bytes_to_read();
                    while n > 0 {
                        let take = n.min(buf.len());
                        let got = conn.reader().read(&mut buf[..take])?;
                        if got == 0 {
                            break;
                        }
                        held.extend_from_slice(&buf[..got]);
                        n -= got.min(n);
                    }
                    if state.peer_has_closed() {
                        tls_ended = true;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !held.is_empty() {
            match plain.write(&held) {
                Ok(n) => {
                    held.drain(..n);
                }
                Err(e) if would_block(&e) => {}
                // The forwarder stopped reading (the other side is gone): what the TLS peer
                // sends now goes nowhere, but what the forwarder already wrote the other way
                // (a destination's FAILED) must still reach the TLS peer, so keep draining.
                Err(_) => {
                    held.clear();
                    tls_ended = true;
                }
            }
        }
        if tls_ended && held.is_empty() && !plain_shut {
            let _ = plain.shutdown(Shutdown::Write);
            plain_shut = true;
        }
        if read_plain && fds[1].revents != 0 {
            match plain.read(&mut buf) {
                Ok(0) => {
                    plain_ended = true;
                    conn.send_close_notify();
                }
                Ok(n) => conn.writer().write_all(&buf[..n])?,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        while !tcp_broken && conn.wants_write() {
            match conn.write_tls(&mut tcp) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    tcp_broken = true;
                    plain_ended = true;
                    tcp_shut = true;
                }
            }
        }
        let wants_write = !tcp_broken && conn.wants_write();
        if plain_ended && !wants_write && !tcp_shut {
            let _ = tcp.shutdown(Shutdown::Write);
            tcp_shut = true;
        }
        if tls_ended && plain_ended && held.is_empty() && !wants_write {
            return Ok(());
        }
    }
}

/// Seconds since the Unix epoch (the clock `ping -D` stamps with).
fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One line on stdout, flushed at once (the test reads it while we run).
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "migproxy: {line}");
    let _ = out.flush();
}

/// One frame as read: its header fields and all its bytes (header, payload, trailer).
struct Frame {
    kind: u16,
    bytes: Vec<u8>,
}

impl Frame {
    fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - TRAILER_LEN]
    }

    /// First and last page frame numbers of a PAGES frame with at least one page.
    fn pfn_range(&self) -> Option<(u64, u64)> {
        let Ok((Message::Pages(pages), _)) = Message::decode(&self.bytes) else {
            return None;
        };
        let mut pfns = pages.pfns();
        let first = pfns.next()?;
        Some((first, pfns.last().unwrap_or(first)))
    }
}

/// What reading the next frame gave.
enum Next {
    Frame(Frame),
    /// The stream ended cleanly between frames.
    End,
    /// Bytes that are not a frame (or a stream cut inside one): forward them raw.
    Raw(Vec<u8>),
}

/// Reads as much of `buf` as arrives; returns how much that was.
fn read_upto(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn next_frame(r: &mut impl Read) -> io::Result<Next> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_upto(r, &mut header)?;
    if got == 0 {
        return Ok(Next::End);
    }
    if got < HEADER_LEN {
        return Ok(Next::Raw(header[..got].to_vec()));
    }
    // Not host-vmm's frame (magic, format version, length over the limit): copy it raw.
    let Ok(FrameHeader { kind, len }) = FrameHeader::parse(&header) else {
        return Ok(Next::Raw(header.to_vec()));
    };
    let len = len as usize;
    let mut bytes = vec![0u8; HEADER_LEN + len + TRAILER_LEN];
    bytes[..HEADER_LEN].copy_from_slice(&header);
    let got = read_upto(r, &mut bytes[HEADER_LEN..])?;
    if got < len + TRAILER_LEN {
        bytes.truncate(HEADER_LEN + got);
        return Ok(Next::Raw(bytes));
    }
    Ok(Next::Frame(Frame { kind, bytes }))
}

/// Both connections, so either direction can cut both.
struct Both {
    src: Conn,
    dst: Conn,
}

impl Both {
    fn cut(&self) {
        self.src.shutdown(Shutdown::Both);
        self.dst.shutdown(Shutdown::Both);
    }
}

/// Source → destination: frames counted and watched for the fault's frame.
fn forward_source(
    mut from: Conn,
    mut to: Conn,
    both: &Both,
    o: &Options,
) -> Result<String, String> {
    let (mut frames, mut pages, mut pass, mut last_pfn) = (0u64, 0u64, 0u64, None::<u64>);
    let mut struck = false;
    let mut pass1_frames = 0u64;
    let mut from = Throttled {
        inner: &mut from,
        rate: o.rate,
    };
    loop {
        let frame = match next_frame(&mut from).map_err(|e| format!("reading the source: {e}"))? {
            Next::End => break,
            Next::Raw(bytes) => {
                let _ = to.write_all(&bytes);
                let _ = io::copy(&mut from, &mut to);
                break;
            }
            Next::Frame(f) => f,
        };
        frames += 1;
        // A pass sends its pages in increasing order: a batch that starts at or below the
        // last one's end opens the next pass.
        let mut opens_pass = false;
        if frame.kind == kind::PAGES {
            pages += 1;
            if let Some((first, last)) = frame.pfn_range() {
                opens_pass = last_pfn.is_none_or(|prev| first <= prev);
                last_pfn = Some(last);
            }
            pass += u64::from(opens_pass);
            if pass == 1 {
                pass1_frames += 1;
            }
        }
        let here = match o.at {
            Some(At::Hello) => frame.kind == kind::HELLO,
            Some(At::Pages(n)) => frame.kind == kind::PAGES && pages == n,
            Some(At::Pass(n)) => opens_pass && pass == n,
            Some(At::State) => frame.kind == kind::STATE,
            Some(At::Ready) | None => false,
        };
        let mut frame = frame;
        if here && !struck {
            struck = true;
            // Whatever came with the frame is not passed on.
            drop(from.inner.take_fds());
            let at = epoch();
            let what = format!(
                "fault {:?} at {} frame {frames} (pages frame {pages}, pass {pass}) at={at:.6}{}",
                o.fault,
                kind_name(frame.kind),
                guest_ram_mapped(o.pid)
            );
            match o.fault {
                Fault::Cut => {
                    both.cut();
                    say(&what);
                    return Ok(format!("{frames} frames from the source, cut"));
                }
                Fault::Kill => {
                    let r = kill(o.pid);
                    say(&format!("{what} ({r})"));
                    // Its sockets close; the other direction sees that and closes the
                    // source's side. The frame is not forwarded.
                    continue;
                }
                Fault::Corrupt => {
                    let p = frame.bytes.len() - TRAILER_LEN;
                    // The middle of the payload, or the CRC of an empty one.
                    let i = if p > HEADER_LEN {
                        HEADER_LEN + (p - HEADER_LEN) / 2
                    } else {
                        p
                    };
                    frame.bytes[i] ^= 0x5a;
                    say(&what);
                }
            }
        }
        let fds = from.inner.take_fds();
        if let Err(e) = to.write_with_fds(&frame.bytes, fds) {
            say(&format!(
                "the destination took no more ({e}) at {} frame {frames}",
                kind_name(frame.kind)
            ));
            break;
        }

        if frame.kind == kind::HELLO && !o.hold.is_zero() {
            std::thread::sleep(o.hold);
            say(&format!("held the source for {:?}", o.hold));
        }
    }
    to.shutdown(Shutdown::Write);
    Ok(format!(
        "{frames} frames from the source ({pages} pages frames, {pass} passes, first pass \
         {pass1_frames} frames)"
    ))
}

/// What the destination `pid` maps of guest RAM at the strike, for the log: the inodes of
/// its `memfd:roam-guest-ram` mappings (` guest-ram-inodes=I,J`; empty without `--pid`).
/// Read here, at the fault, rather than by the test polling /proc: under load a poller
/// could miss the few milliseconds between the mapping and the strike.
fn guest_ram_mapped(pid: Option<i32>) -> String {
    let Some(pid) = pid else {
        return String::new();
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut inodes: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:roam-guest-ram"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.dedup();
    format!(" guest-ram-inodes={}", inodes.join(","))
}

/// SIGKILLs the destination `pid`; what happened, for the log.
fn kill(pid: Option<i32>) -> String {
    let pid = pid.unwrap_or(0);
    // SAFETY: kill(2) takes plain integers; the PID is the destination's, started by the
    // test that gave it to us.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    format!("kill {pid}: {r}")
}

/// Destination → source: forwarded as they come; FAILED's reason is printed. With `--at
/// ready`, the fault strikes at the destination's READY instead of forwarding it.
fn forward_destination(mut from: Conn, mut to: Conn, both: &Both, o: &Options) -> String {
    let mut kinds = Vec::new();
    loop {
        match next_frame(&mut from) {
            Ok(Next::Frame(f)) if o.at == Some(At::Ready) && f.kind == kind::READY => {
                let what = format!(
                    "fault {:?} at READY at={:.6}{}",
                    o.fault,
                    epoch(),
                    guest_ram_mapped(o.pid)
                );
                match o.fault {
                    Fault::Kill => say(&format!("{what} ({})", kill(o.pid))),
                    Fault::Cut | Fault::Corrupt => {
                        both.cut();
                        say(&what);
                        break;
                    }
                }
                kinds.push("READY (held back)");
            }
            Ok(Next::Frame(f)) => {
                if f.kind == kind::FAILED {
                    say(&format!(
                        "destination sent FAILED: {}",
                        String::from_utf8_lossy(f.payload())
                    ));
                } else {
                    say(&format!("destination sent {}", kind_name(f.kind)));
                }
                kinds.push(kind_name(f.kind));
                if to.write_all(&f.bytes).is_err() {
                    break;
                }
            }
            Ok(Next::Raw(bytes)) => {
                let _ = to.write_all(&bytes);
                let _ = io::copy(&mut from, &mut to);
                break;
            }
            Ok(Next::End) | Err(_) => break,
        }
    }
    // The destination is gone or done: the source sees that at once, as on a direct link.
    both.cut();
    format!("destination sent [{}]", kinds.join(", "))
}

fn run(o: Options) -> Result<String, String> {
    let mut src = accept_one(&o.listen)?;
    let mut bridges = Vec::new();
    let mut dst = connect(&o.to)?;
    if let Some(dir) = &o.tls_dir {
        let fail = |e: tls::TlsError| format!("--tls-dir: {e}");
        if let Conn::Tcp(s) = src {
            let conn = ServerConnection::new(tls::server_config(dir).map_err(fail)?)
                .map_err(|e| format!("TLS: {e}"))?;
            let (c, done) = bridge(Connection::Server(conn), s)?;
            src = c;
            bridges.push(done);
        }
        if let Conn::Tcp(s) = dst {
            let host =
                o.to.trim_start_matches("tcp:")
                    .rsplit_once(':')
                    .map_or("", |(h, _)| h);
            let conn = ClientConnection::new(
                tls::client_config(dir).map_err(fail)?,
                tls::server_name(host).map_err(fail)?,
            )
            .map_err(|e| format!("TLS: {e}"))?;
            let (c, done) = bridge(Connection::Client(conn), s)?;
            dst = c;
            bridges.push(done);
        }
    }
    say(&format!("source connected; forwarding to {}", o.to));
    for c in [&src, &dst] {
        c.set_read_timeout(IO_TIMEOUT)
            .map_err(|e| format!("setting a timeout: {e}"))?;
    }
    let clone = |c: &Conn| c.try_clone().map_err(|e| format!("cloning a socket: {e}"));
    let both = Arc::new(Both {
        src: clone(&src)?,
        dst: clone(&dst)?,
    });
    let o = Arc::new(o);
    let back = {
        let (from, to, both, o) = (clone(&dst)?, clone(&src)?, both.clone(), o.clone());
        std::thread::spawn(move || forward_destination(from, to, &both, &o))
    };
    let forward = forward_source(src, dst, &both, &o).unwrap_or_else(|e| e);
    let back = back
        .join()
        .unwrap_or_else(|_| "destination thread panicked".into());
    // The bridges see their plain side end once the last of its descriptors is gone.
    drop(both);
    for done in bridges {
        let _ = done.recv_timeout(BRIDGE_DRAIN);
    }
    Ok(format!("done: {forward}; {back}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args).and_then(run) {
        Ok(summary) => {
            say(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("FAILED: {e}"));
            ExitCode::FAILURE
        }
    }
}
