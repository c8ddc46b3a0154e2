//! `netprobe`: the network tests' client, run inside the client namespace
//! (`ip netns exec <ns> netprobe ...`). Every mode is bounded in count and time and exits 0
//! only when every reply checked out; it prints one summary line either way. Its only
//! `unsafe` is the raw-socket FFI of the `hostile` mode (module `raw`) and of the `ipip`
//! modes (module `rawip`).
//!
//! ```text
//! netprobe tcp-echo ADDR:PORT BYTES SEED   send BYTES pseudo-random bytes, compare the echo
//! netprobe tcp-echo-for ADDR:PORT SECONDS SEED [STOP]
//!                                          one connection kept busy for SECONDS: chunks of
//!                                          1 to 16 KiB of pseudo-random bytes, each read
//!                                          back and compared before the next (while
//!                                          something else happens, e.g. a move); ends
//!                                          early once the file STOP exists
//! netprobe udp-echo ADDR:PORT COUNT SEED   COUNT datagrams of mixed sizes, each echoed intact;
//!                                          a datagram without an echo within 1 s is resent,
//!                                          and more than 5 resends fail the run
//! netprobe kv ADDR:PORT COUNT              SET then GET COUNT keys, then COUNT
//! netprobe kv-for ADDR:PORT SECONDS [STOP] one session of SET/GET pairs for SECONDS, every
//!                                          reply checked (while something else happens);
//!                                          ends early once the file STOP exists
//! netprobe serve-echo PORT SECONDS         echo TCP and UDP on PORT for SECONDS (a peer
//!                                          for guests that connect out)
//! netprobe hostile IFACE MAC IP SYNS       runts, oversize frames, bad checksums,
//!                                          truncated TCP headers and SYNS SYNs (valid
//!                                          checksums), raw
//! netprobe syn-flood IFACE MAC IP PORT COUNT RATE
//!                                          COUNT SYNs with valid checksums to IP:PORT,
//!                                          RATE a second, from addresses that never
//!                                          answer: half from 198.18.0.70-79 (in the
//!                                          subnet: the guest's ARP goes unanswered),
//!                                          half from 198.19.x.y (routed nowhere)
//! netprobe kv-burst ADDR:PORT COUNT SECONDS
//!                                          COUNT kv clients connect at once (a barrier)
//!                                          and each checks a SET and a GET; all within
//!                                          SECONDS (SYNs retried by the kernel)
//! netprobe kv-many ADDR:PORT CONNS SECONDS STOPFILE
//!                                          CONNS kv connections multiplexed with poll(2),
//!                                          each a loop of SET/GET on its own key with
//!                                          every reply checked, taking turns (at most
//!                                          16 rounds under way at once); prints
//!                                          `kv-many: N connected` once all are in and
//!                                          `kv-many: every connection answered` once
//!                                          each completed a round, stops when
//!                                          STOPFILE exists (each connection then
//!                                          completes one more round) or fails after
//!                                          SECONDS
//! netprobe ipip-send SRC DST COUNT         COUNT IP-in-IP packets from SRC to DST through a
//!                                          raw protocol-4 socket (the kernel adds the outer
//!                                          header); inner: UDP 198.18.3.2 -> 198.18.0.10,
//!                                          100 and 1500 bytes in turn (outer 120 and 1520)
//! netprobe ipip-recv SRC DST COUNT SECONDS wait up to SECONDS for COUNT of those from SRC,
//!                                          outer and inner headers checked; prints a
//!                                          `ready` line once it listens
//! netprobe ipip-echo LOCAL PEER HOME COUNT SECONDS
//!                                          a moved VM's stand-in at its care-of address
//!                                          LOCAL: answer COUNT ICMP echo requests for HOME
//!                                          that arrive IP-in-IP from PEER (the home agent)
//!                                          with echo replies tunnelled back to PEER
//!                                          (reverse tunnelling); prints a `ready` line
//! netprobe udp-ask ADDR:PORT HEX SECONDS   send one datagram (the bytes HEX), wait up to
//!                                          SECONDS for one answer and print it as
//!                                          `reply HEX` (a test's Mobile IP client speaks
//!                                          through it from a site's namespace)
//! netprobe tap-echo TAP HOME SECONDS       a routed VM's stand-in on the existing TAP:
//!                                          answer ARP for HOME, echo requests, UDP
//!                                          (echoed) and TCP SYNs (RST) sent to HOME,
//!                                          checking the IPv4 and TCP/UDP/ICMP checksums
//!                                          of every packet for HOME; prints `ready`, and
//!                                          stops on the UDP payload `netprobe-stop` (or
//!                                          after SECONDS) with the counts; fails if any
//!                                          checksum was wrong
//! netprobe csum-check ADDR:PORT COUNT      COUNT UDP datagrams of odd and even sizes to
//!                                          ADDR:PORT and COUNT TCP connects there (to be
//!                                          refused), the echoes and RSTs read through raw
//!                                          sockets with their checksums checked on the
//!                                          bytes received; then `netprobe-stop`
//! ```
//!
//! The checksum modes exist because a Linux receiver does not check what a veth hands it
//! from a local sender (it is marked as checked, or as still to be filled in), so only
//! bytes read from a TAP or a raw socket show whether a rewrite along the way (the
//! network-paging edges' address translation) left TCP and UDP checksums right.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// No single step may take longer than this: a stalled guest fails the probe, not the CI run.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole probe's bound.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(240);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["tcp-echo", addr, bytes, seed] => tcp_echo(parse(addr), parse(bytes), parse(seed)),
        ["tcp-echo-for", addr, seconds, seed] => {
            tcp_echo_for(parse(addr), parse(seconds), parse(seed), None)
        }
        ["tcp-echo-for", addr, seconds, seed, stop] => {
            tcp_echo_for(parse(addr), parse(seconds), parse(seed), Some(stop))
        }
        ["udp-echo", addr, count, seed] => udp_echo(parse(addr), parse(count), parse(seed)),
        ["kv", addr, count] => kv(parse(addr), parse(count)),
        ["kv-for", addr, seconds] => kv_for(parse(addr), parse(seconds), None),
        ["kv-for", addr, seconds, stop] => kv_for(parse(addr), parse(seconds), Some(stop)),
        ["hostile", iface, mac, ip, syns] => hostile(iface, mac, parse(ip), parse(syns)),
        ["syn-flood", iface, mac, ip, port, count, rate] => syn_flood(
            iface,
            mac,
            parse(ip),
            parse(port),
            parse(count),
            parse(rate),
        ),
        ["kv-burst", addr, count, seconds] => kv_burst(parse(addr), parse(count), parse(seconds)),
        ["kv-many", addr, conns, seconds, stop] => {
            kv_many(parse(addr), parse(conns), parse(seconds), stop)
        }
        ["serve-echo", port, seconds] => serve_echo(parse(port), parse(seconds)),
        ["ipip-send", src, dst, count] => ipip_send(parse(src), parse(dst), parse(count)),
        ["ipip-recv", src, dst, count, seconds] => {
            ipip_recv(parse(src), parse(dst), parse(count), parse(seconds))
        }
        ["ipip-echo", local, peer, home, count, seconds] => ipip_echo(
            parse(local),
            parse(peer),
            parse(home),
            parse(count),
            parse(seconds),
        ),
        ["udp-ask", addr, hex, seconds] => udp_ask(parse(addr), hex, parse(seconds)),
        ["tap-echo", tap, home, seconds] => tap_echo(tap, parse(home), parse(seconds)),
        ["csum-check", addr, count] => csum_check(parse(addr), parse(count)),
        _ => Err("usage: netprobe tcp-echo ADDR:PORT BYTES SEED | tcp-echo-for ADDR:PORT SECONDS SEED [STOP] | udp-echo ADDR:PORT COUNT SEED | kv ADDR:PORT COUNT | kv-for ADDR:PORT SECONDS [STOP] | serve-echo PORT SECONDS | hostile IFACE MAC IP SYNS | syn-flood IFACE MAC IP PORT COUNT RATE | kv-burst ADDR:PORT COUNT SECONDS | kv-many ADDR:PORT CONNS SECONDS STOPFILE | ipip-send SRC DST COUNT | ipip-recv SRC DST COUNT SECONDS | ipip-echo LOCAL PEER HOME COUNT SECONDS | udp-ask ADDR:PORT HEX SECONDS | tap-echo TAP HOME SECONDS | csum-check ADDR:PORT COUNT".into()),
    };
    match result {
        Ok(summary) => {
            println!("netprobe: ok: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("netprobe: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("netprobe: cannot parse `{s}`");
        std::process::exit(2)
    })
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a, enough to tell two byte streams apart.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

const FNV_START: u64 = 0xCBF2_9CE4_8422_2325;

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(STEP_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn tcp_echo(addr: SocketAddr, bytes: usize, seed: u64) -> Result<String, String> {
    let start = Instant::now();
    let stream = connect(addr)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    // Write from a second thread: an echo server stops reading when we stop reading.
    let sender = std::thread::spawn(move || -> Result<u64, String> {
        let mut rng = Rng::new(seed);
        let mut chunk = [0u8; 16 * 1024];
        let (mut left, mut hash) = (bytes, FNV_START);
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill(&mut chunk[..n]);
            writer
                .write_all(&chunk[..n])
                .map_err(|e| format!("send: {e}"))?;
            hash = fnv1a(hash, &chunk[..n]);
            left -= n;
        }
        Ok(hash)
    });
    let mut reader = stream;
    let (mut got, mut hash) = (0usize, FNV_START);
    let mut buf = [0u8; 16 * 1024];
    while got < bytes {
        if start.elapsed() > TOTAL_TIMEOUT {
            return Err(format!("timed out after {got} of {bytes} bytes"));
        }
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("receive after {got} of {bytes} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed after {got} of {bytes} bytes"));
        }
        hash = fnv1a(hash, &buf[..n.min(bytes - got)]);
        got += n;
    }
    let sent_hash = sender
        .join()
        .map_err(|_| "sender thread panicked".to_string())??;
    if got != bytes || hash != sent_hash {
        return Err(format!(
            "echo differs: sent {bytes} bytes (hash {sent_hash:016x}), received {got} (hash {hash:016x})"
        ));
    }
    Ok(format!(
        "tcp-echo {bytes} bytes identical (hash {hash:016x}) in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}

/// One echo connection kept busy for `seconds` (or until the file `stop` exists): a chunk of
/// pseudo-random bytes (1 to 16 KiB) is sent and read back whole, compared byte for byte,
/// before the next; also reports the longest wait for a chunk's echo.
fn tcp_echo_for(
    addr: SocketAddr,
    seconds: u64,
    seed: u64,
    stop: Option<&str>,
) -> Result<String, String> {
    const MAX_CHUNK: usize = 16 * 1024;
    let run_for = Duration::from_secs(seconds);
    if run_for >= TOTAL_TIMEOUT {
        return Err(format!("tcp-echo-for is bounded to {TOTAL_TIMEOUT:?}"));
    }
    let start = Instant::now();
    let mut stream = connect(addr)?;
    let mut rng = Rng::new(seed);
    let (mut sent, mut back) = ([0u8; MAX_CHUNK], [0u8; MAX_CHUNK]);
    let (mut total, mut chunks, mut longest) = (0usize, 0u64, Duration::ZERO);
    let stopped = || stop.is_some_and(|p| std::path::Path::new(p).exists());
    while start.elapsed() < run_for && !(chunks.is_multiple_of(16) && stopped()) {
        let len = 1 + (rng.next() as usize % MAX_CHUNK);
        rng.fill(&mut sent[..len]);
        let at = Instant::now();
        // A chunk fits the socket buffers both ways, so writing it whole before reading
        // cannot deadlock against an echo server.
        stream
            .write_all(&sent[..len])
            .map_err(|e| format!("send of chunk {chunks} after {total} bytes: {e}"))?;
        stream.read_exact(&mut back[..len]).map_err(|e| {
            format!("echo of chunk {chunks} ({len} bytes) after {total} bytes: {e}")
        })?;
        if back[..len] != sent[..len] {
            let first = (0..len).find(|&i| back[i] != sent[i]).unwrap_or(0);
            return Err(format!(
                "chunk {chunks} ({len} bytes, after {total}) came back altered from byte {first}"
            ));
        }
        longest = longest.max(at.elapsed());
        total += len;
        chunks += 1;
    }
    Ok(format!(
        "tcp-echo-for {total} bytes in {chunks} chunks in {:.2} s, every byte identical, longest wait {:.1} ms",
        start.elapsed().as_secs_f64(),
        longest.as_secs_f64() * 1e3
    ))
}

fn udp_echo(addr: SocketAddr, count: u32, seed: u64) -> Result<String, String> {
    const TRIES: u32 = 3;
    // A resend is a datagram lost on a quiet local path: a few are tolerated (the guest's
    // receive queue may overflow under a burst), more mean something drops them.
    const MAX_RESENT: u32 = 5;
    let start = Instant::now();
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed);
    let mut buf = [0u8; 2048];
    let (mut retries, mut total) = (0u32, 0usize);
    for i in 0..count {
        // Sizes from 8 bytes up to a full 1472-byte payload (1500-byte MTU).
        let len = 8 + (rng.next() % 1465) as usize;
        let mut datagram = vec![0u8; len];
        rng.fill(&mut datagram);
        datagram[..4].copy_from_slice(&i.to_le_bytes());
        let mut echoed = false;
        for _ in 0..TRIES {
            socket
                .send(&datagram)
                .map_err(|e| format!("send #{i}: {e}"))?;
            // Skip late echoes of earlier datagrams; stop at this one's or the timeout.
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == datagram[..] => {
                        echoed = true;
                        break;
                    }
                    Ok(n) if n >= 4 && buf[..4] != datagram[..4] => continue,
                    Ok(n) => {
                        return Err(format!(
                            "datagram #{i} ({len} bytes) came back altered ({n} bytes)"
                        ));
                    }
                    Err(_) => break,
                }
            }
            if echoed {
                break;
            }
            retries += 1;
            if retries > MAX_RESENT {
                return Err(format!(
                    "datagram #{i} ({len} bytes): more than {MAX_RESENT} resends needed"
                ));
            }
        }
        if !echoed {
            return Err(format!(
                "datagram #{i} ({len} bytes): no echo after {TRIES} tries"
            ));
        }
        total += len;
        if start.elapsed() > TOTAL_TIMEOUT {
            return Err(format!("timed out after {i} datagrams"));
        }
    }
    Ok(format!(
        "udp-echo {count} datagrams ({total} bytes) identical, {retries} resent, in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}

fn kv(addr: SocketAddr, count: u32) -> Result<String, String> {
    let start = Instant::now();
    let stream = connect(addr)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut request = |line: String| -> Result<String, String> {
        writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("send `{}`: {e}", line.trim()))?;
        let mut reply = String::new();
        reader
            .read_line(&mut reply)
            .map_err(|e| format!("reply to `{}`: {e}", line.trim()))?;
        if reply.is_empty() {
            return Err(format!("connection closed at `{}`", line.trim()));
        }
        Ok(reply.trim_end().to_string())
    };
    let value = |i: u32| format!("v{i}-{:08x}", i.wrapping_mul(2_654_435_761));
    for i in 0..count {
        let reply = request(format!("SET k{i} {}\n", value(i)))?;
        if reply != "OK" {
            return Err(format!("SET k{i}: expected OK, got `{reply}`"));
        }
    }
    for i in 0..count {
        let reply = request(format!("GET k{i}\n"))?;
        let want = format!("VALUE {}", value(i));
        if reply != want {
            return Err(format!("GET k{i}: expected `{want}`, got `{reply}`"));
        }
    }
    let reply = request("COUNT\n".to_string())?;
    if reply != format!("COUNT {count}") {
        return Err(format!("COUNT: expected {count}, got `{reply}`"));
    }
    Ok(format!(
        "kv {count} SET + {count} GET + COUNT correct in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}

/// One kv session kept busy for `seconds` (or until the file `stop` exists): SET a key, GET
/// it back, over and over on 64 keys (so the store stays small), every reply checked; also
/// reports the longest wait for a reply.
fn kv_for(addr: SocketAddr, seconds: u64, stop: Option<&str>) -> Result<String, String> {
    const KEYS: u64 = 64;
    let run_for = Duration::from_secs(seconds);
    if run_for >= TOTAL_TIMEOUT {
        return Err(format!("kv-for is bounded to {TOTAL_TIMEOUT:?}"));
    }
    let start = Instant::now();
    let stream = connect(addr)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut longest = Duration::ZERO;
    let mut requests = 0u64;
    let mut request = |line: String| -> Result<String, String> {
        let sent = Instant::now();
        writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("send `{}` after {requests} requests: {e}", line.trim()))?;
        let mut reply = String::new();
        reader
            .read_line(&mut reply)
            .map_err(|e| format!("reply to `{}` after {requests} requests: {e}", line.trim()))?;
        if reply.is_empty() {
            return Err(format!(
                "connection closed at `{}` after {requests} requests",
                line.trim()
            ));
        }
        longest = longest.max(sent.elapsed());
        requests += 1;
        Ok(reply.trim_end().to_string())
    };
    let mut i = 0u64;
    let stopped = || stop.is_some_and(|p| std::path::Path::new(p).exists());
    while start.elapsed() < run_for && !(i.is_multiple_of(16) && stopped()) {
        let (key, value) = (
            i % KEYS,
            format!("v{i}-{:08x}", i.wrapping_mul(2_654_435_761)),
        );
        let reply = request(format!("SET k{key} {value}\n"))?;
        if reply != "OK" {
            return Err(format!("SET k{key} (#{i}): expected OK, got `{reply}`"));
        }
        let reply = request(format!("GET k{key}\n"))?;
        if reply != format!("VALUE {value}") {
            return Err(format!(
                "GET k{key} (#{i}): expected `VALUE {value}`, got `{reply}`"
            ));
        }
        i += 1;
    }
    Ok(format!(
        "kv-for {requests} requests in {:.2} s, every reply correct, longest wait {:.1} ms",
        start.elapsed().as_secs_f64(),
        longest.as_secs_f64() * 1e3
    ))
}

/// Echoes TCP connections and UDP datagrams on `port` until `seconds` have passed.
fn serve_echo(port: u16, seconds: u64) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| e.to_string())?;
    let udp = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| e.to_string())?;
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    });
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("netprobe: serving echo on port {port}");
    let mut served = 0;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, _)) => {
                served += 1;
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Ok(format!("served {served} TCP connections"))
}

/// Raw Ethernet frames from the client namespace, for the bad-input tests.
mod raw {
    use std::ffi::CString;
    use std::io;

    /// An AF_PACKET socket bound to one interface; frames go out exactly as given.
    pub struct RawSocket {
        fd: i32,
        ifindex: i32,
    }

    impl RawSocket {
        /// Opens a raw socket on `iface` (needs CAP_NET_RAW).
        pub fn open(iface: &str) -> io::Result<RawSocket> {
            let name = CString::new(iface).map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain socket(2) call; the result is checked below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawSocket {
                fd,
                ifindex: ifindex as i32,
            })
        }

        /// Opens a raw socket on `iface` that receives its ARP frames, without blocking.
        pub fn open_arp(iface: &str) -> io::Result<RawSocket> {
            const ETH_P_ARP: u16 = 0x0806;
            let name = CString::new(iface).map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let protocol = i32::from(ETH_P_ARP.to_be());
            // SAFETY: plain socket(2) call; the result is checked below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    protocol,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let socket = RawSocket {
                fd,
                ifindex: ifindex as i32,
            };
            // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set next.
            let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            at.sll_family = libc::AF_PACKET as u16;
            at.sll_protocol = ETH_P_ARP.to_be();
            at.sll_ifindex = socket.ifindex;
            // SAFETY: `at` is a valid sockaddr_ll of the size passed, alive for the call.
            let bound = unsafe {
                libc::bind(
                    socket.fd,
                    (&raw const at).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if bound < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(socket)
        }

        /// One received frame into `buf`, if one is waiting.
        pub fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            usize::try_from(n).ok()
        }

        /// Sends one frame; the kernel may refuse some (e.g. shorter than a header).
        pub fn send(&self, frame: &[u8]) -> io::Result<()> {
            // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set next.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            for (slot, byte) in to.sll_addr.iter_mut().zip(frame.iter().take(6)) {
                *slot = *byte;
            }
            // SAFETY: `frame` is valid for reads of its length and `to` is a valid
            // sockaddr_ll of the size passed.
            let n = unsafe {
                libc::sendto(
                    self.fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    impl Drop for RawSocket {
        fn drop(&mut self) {
            // SAFETY: the descriptor is ours and closed once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// The RFC 1071 Internet checksum.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC `{s}`"))?;
    bytes.try_into().map_err(|_| format!("bad MAC `{s}`"))
}

/// The fixed ends of the hostile frames: our MAC, the guest's MAC and address.
struct Target {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    dst_ip: [u8; 4],
}

impl Target {
    /// An Ethernet frame carrying an IPv4 packet from `src_ip` with `payload`; the header
    /// checksum is correct unless `break_checksum`, and the total length is as given, so it
    /// can lie.
    fn ipv4(
        &self,
        src_ip: [u8; 4],
        protocol: u8,
        payload: &[u8],
        total_len: u16,
        break_checksum: bool,
    ) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        ip[2..4].copy_from_slice(&total_len.to_be_bytes());
        ip.extend_from_slice(&src_ip);
        ip.extend_from_slice(&self.dst_ip);
        let mut checksum = inet_checksum(&ip);
        if break_checksum {
            checksum ^= 0x5A5A;
        }
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = Vec::with_capacity(14 + ip.len() + payload.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(payload);
        frame
    }
}

/// A TCP SYN from `src` to `dst_port` at `dst`, checksum right (a SYN with a wrong one is
/// dropped before TCP sees it: it would test nothing).
fn tcp_syn(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16, seq: u32) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    let sum = l4_checksum(src, dst, PROTO_TCP, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// Sends every kind of malformed traffic the issue lists at the guest, bounded in count.
fn hostile(
    iface: &str,
    dst_mac: &str,
    dst_ip: std::net::Ipv4Addr,
    syns: u32,
) -> Result<String, String> {
    let start = Instant::now();
    let socket = raw::RawSocket::open(iface).map_err(|e| format!("raw socket on {iface}: {e}"))?;
    let src_mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|e| format!("MAC of {iface}: {e}"))?;
    let dst = parse_mac(dst_mac)?;
    let target = Target {
        dst_mac: dst,
        src_mac: parse_mac(&src_mac)?,
        dst_ip: dst_ip.octets(),
    };
    let src_ip = [198, 18, 0, 2];
    let mut rng = Rng::new(42);
    let (mut sent, mut refused) = (0u32, 0u32);
    let mut send = |frame: &[u8]| match socket.send(frame) {
        Ok(()) => sent += 1,
        Err(_) => refused += 1,
    };
    // Runts: from a lone byte up to one short of the 60-byte minimum.
    for len in 1..60 {
        let mut frame = vec![0u8; len];
        rng.fill(&mut frame);
        frame[..len.min(6)].copy_from_slice(&dst[..len.min(6)]);
        send(&frame);
    }
    // Over the MTU: IPv4 frames of up to 9000 bytes (the test raises the path's MTU so they
    // reach the device), claiming their real and false lengths.
    for size in [1515usize, 1600, 4096, 9000] {
        let payload = vec![0xA5u8; size - 34];
        send(&target.ipv4(src_ip, 1, &payload, (size - 14) as u16, false));
        send(&target.ipv4(src_ip, 1, &payload, 60, false));
    }
    // Bad IPv4 header checksums on ICMP echo requests.
    for i in 0..50u16 {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 0];
        icmp[6..8].copy_from_slice(&i.to_be_bytes());
        let c = inet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        send(&target.ipv4(src_ip, 1, &icmp, 28, true));
    }
    // Truncated TCP headers: 1 to 19 bytes of header where 20 are due, and lying lengths.
    for len in 1..20 {
        let tcp = tcp_syn(src_ip, target.dst_ip, 40000 + len as u16, 7, 1);
        send(&target.ipv4(src_ip, 6, &tcp[..len], 20 + len as u16, false));
        send(&target.ipv4(src_ip, 6, &tcp[..len], 60, false));
    }
    // A SYN flood from many addresses in 198.18.0.0/15, to the echo port and a closed one.
    for i in 0..syns {
        let from = [198, 19, (i >> 8) as u8, i as u8];
        let port = if i % 2 == 0 { 7 } else { 9 };
        let tcp = tcp_syn(
            from,
            target.dst_ip,
            1024 + (i % 60000) as u16,
            port,
            rng.next() as u32,
        );
        send(&target.ipv4(from, 6, &tcp, 40, false));
        if start.elapsed() > TOTAL_TIMEOUT {
            return Err(format!("timed out after {i} SYNs"));
        }
    }
    Ok(format!(
        "hostile: {sent} malformed frames sent ({refused} refused by the local kernel), including {syns} SYNs, in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}

/// `count` SYNs with valid checksums to `dst_ip:port`, `rate` a second, from sources that
/// never answer the SYN-ACK (see the module docs), through a raw socket on `iface`.
fn syn_flood(
    iface: &str,
    dst_mac: &str,
    dst_ip: std::net::Ipv4Addr,
    port: u16,
    count: u32,
    rate: u32,
) -> Result<String, String> {
    let start = Instant::now();
    let socket = raw::RawSocket::open(iface).map_err(|e| format!("raw socket on {iface}: {e}"))?;
    let src_mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|e| format!("MAC of {iface}: {e}"))?;
    let target = Target {
        dst_mac: parse_mac(dst_mac)?,
        src_mac: parse_mac(&src_mac)?,
        dst_ip: dst_ip.octets(),
    };
    // The guest's ARP requests for the silent sources prove its TCP took the SYNs (it
    // answers each with a SYN-ACK it must first resolve an address for).
    let arp = raw::RawSocket::open_arp(iface).map_err(|e| format!("ARP socket on {iface}: {e}"))?;
    let mut asked = 0u32;
    let mut frame = [0u8; 1600];
    let mut count_arp = |asked: &mut u32| {
        while let Some(n) = arp.try_recv(&mut frame) {
            let a = &frame[..n];
            if n >= 42
                && a[12..14] == [0x08, 0x06]
                && a[20..22] == [0, 1]
                && a[28..32] == target.dst_ip
                && a[38..41] == [198, 18, 0]
                && (70..80).contains(&a[41])
            {
                *asked += 1;
            }
        }
    };
    let mut rng = Rng::new(u64::from(count) ^ u64::from(port));
    let rate = rate.max(1);
    let (mut sent, mut refused) = (0u32, 0u32);
    for i in 0..count {
        if i % 64 == 0 {
            count_arp(&mut asked);
        }
        // Pace: SYN i leaves at i / rate seconds.
        let due = Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let from = if i % 2 == 0 {
            [198, 18, 0, 70 + (i / 2 % 10) as u8]
        } else {
            [198, 19, (i >> 8) as u8, i as u8]
        };
        let tcp = tcp_syn(
            from,
            target.dst_ip,
            1024 + (i % 60000) as u16,
            port,
            rng.next() as u32,
        );
        match socket.send(&target.ipv4(from, PROTO_TCP, &tcp, 40, false)) {
            Ok(()) => sent += 1,
            Err(_) => refused += 1,
        }
        if start.elapsed() > TOTAL_TIMEOUT {
            return Err(format!("timed out after {i} SYNs"));
        }
    }
    if sent == 0 {
        return Err(format!("no SYN left: the local kernel refused all {count}"));
    }
    let took = start.elapsed();
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(2) {
        count_arp(&mut asked);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!(
        "syn-flood: {sent} SYNs with valid checksums sent to {dst_ip}:{port} ({refused} refused by the local kernel) in {:.2} s; the guest asked for a silent source's MAC {asked} times",
        took.as_secs_f64()
    ))
}

/// The value client `c` stores in round `round` (so a reply from another connection or round
/// shows).
fn kv_value(c: usize, round: u64) -> String {
    format!(
        "c{c}-r{round}-{:08x}",
        (c as u64 ^ round).wrapping_mul(2_654_435_761) as u32
    )
}

/// `count` kv clients that connect at the same moment, each checking one SET and one GET.
fn kv_burst(addr: SocketAddr, count: usize, seconds: u64) -> Result<String, String> {
    let start = Instant::now();
    let bound = Duration::from_secs(seconds).min(TOTAL_TIMEOUT);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<Duration, String> {
                barrier.wait();
                let t = Instant::now();
                // The kernel resends a dropped SYN; the whole burst shares one bound.
                let stream = TcpStream::connect_timeout(&addr, bound)
                    .map_err(|e| format!("client {c}: connect: {e}"))?;
                let took = t.elapsed();
                stream
                    .set_read_timeout(Some(bound))
                    .map_err(|e| e.to_string())?;
                let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
                let mut reader = BufReader::new(stream);
                let value = kv_value(c, 0);
                for (line, want) in [
                    (format!("SET burst{c} {value}\n"), "OK".to_string()),
                    (format!("GET burst{c}\n"), format!("VALUE {value}")),
                ] {
                    writer
                        .write_all(line.as_bytes())
                        .map_err(|e| format!("client {c}: send: {e}"))?;
                    let mut reply = String::new();
                    reader
                        .read_line(&mut reply)
                        .map_err(|e| format!("client {c}: reply to `{}`: {e}", line.trim()))?;
                    if reply.trim_end() != want {
                        return Err(format!(
                            "client {c}: `{}` got `{}`, expected `{want}`",
                            line.trim(),
                            reply.trim_end()
                        ));
                    }
                }
                Ok(took)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    for t in threads {
        match t.join() {
            Ok(Ok(took)) => slowest = slowest.max(took),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a client thread panicked".into()),
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "kv-burst: {} of {count} clients failed: {}",
            errors.len(),
            errors
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(format!(
        "kv-burst: {count} clients connected at once, every reply correct; slowest connect {:.2} s, all in {:.2} s",
        slowest.as_secs_f64(),
        start.elapsed().as_secs_f64()
    ))
}

/// One of `kv-many`'s connections: its socket, what it sent and waits for, its bytes.
struct KvConn {
    stream: TcpStream,
    /// Bytes of the pending request not written yet.
    out: Vec<u8>,
    sent: usize,
    /// Bytes of the reply so far.
    input: Vec<u8>,
    /// The reply expected to the pending request.
    want: String,
    /// Rounds (SET + GET) completed, and the round of the pending request.
    rounds: u64,
    get: bool,
    /// Rounds completed when the stop file appeared.
    at_stop: Option<u64>,
    /// A round (SET, then GET) is under way: its turn came (see `kv_many`).
    busy: bool,
    /// When the round under way started.
    round_start: Instant,
}

impl KvConn {
    fn request(&mut self, c: usize) {
        let value = kv_value(c, self.rounds);
        let (line, want) = if self.get {
            (format!("GET many{c}\n"), format!("VALUE {value}"))
        } else {
            (format!("SET many{c} {value}\n"), "OK".to_string())
        };
        self.out = line.into_bytes();
        self.sent = 0;
        self.want = want;
    }
}

/// Raises this process's open-file limit to its hard limit (1,000 sockets are more than
/// the usual soft limit leaves room for).
fn raise_fd_limit() -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit, read by setrlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// The local ports of up to 20 connections behind the stop (or without a round when there
/// is no stop yet) and how far each got, to find them in a capture or the guest's log.
fn laggards(all: &[KvConn]) -> String {
    let late: Vec<String> = all
        .iter()
        .filter(|k| k.at_stop.map_or(k.rounds == 0, |r| k.rounds <= r))
        .take(20)
        .map(|k| {
            let port = k.stream.local_addr().map_or(0, |a| a.port());
            format!(
                "{port} (round {}, {} of {} bytes sent, {} received)",
                k.rounds,
                k.sent,
                k.out.len(),
                k.input.len()
            )
        })
        .collect();
    if late.is_empty() {
        return String::new();
    }
    format!("; late, by client port: {}", late.join(", "))
}

/// `conns` kv connections at once, each a SET/GET loop with every reply checked (module
/// docs), multiplexed with poll(2) on non-blocking sockets.
fn kv_many(addr: SocketAddr, conns: usize, seconds: u64, stop: &str) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    const CONNECTORS: usize = 8;
    // Rounds under way at once; the connections take turns, oldest round first. The
    // guest answers ~85 requests a second on an idle development machine and ~30 on one
    // with a load of 7 (docs/network.md §1a): a client that sends at a fixed rate above
    // that fills the TAP's queue, whose overflow is dropped, and Linux resends each lost
    // segment with a doubling timeout (up to 120 s), so some connections go minutes
    // without a reply. Taking turns keeps the load at what the guest answers, on any
    // machine, and still has every connection send and check something all along.
    const IN_FLIGHT: usize = 16;
    let start = Instant::now();
    let bound = Duration::from_secs(seconds).min(Duration::from_secs(3600));
    raise_fd_limit()?;
    // Connect from a few threads (each connect may wait for a SYN to be resent).
    let per = conns.div_ceil(CONNECTORS);
    let threads: Vec<_> = (0..CONNECTORS)
        .map(|t| {
            std::thread::spawn(move || -> Result<Vec<TcpStream>, String> {
                let mut v = Vec::new();
                for i in t * per..((t + 1) * per).min(conns) {
                    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(60))
                        .map_err(|e| format!("connection {i}: connect: {e}"))?;
                    v.push(s);
                }
                Ok(v)
            })
        })
        .collect();
    let mut streams = Vec::new();
    for t in threads {
        streams.extend(
            t.join()
                .map_err(|_| "a connect thread panicked".to_string())??,
        );
    }
    let mut all: Vec<KvConn> = Vec::with_capacity(conns);
    // Connections waiting for their turn to start a round, in order.
    let mut turns: std::collections::VecDeque<usize> = (0..streams.len()).collect();
    let mut in_flight = 0usize;
    // Connections that completed a round.
    let mut answered = 0usize;
    let mut longest_round = Duration::ZERO;
    for (c, stream) in streams.into_iter().enumerate() {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut k = KvConn {
            stream,
            out: Vec::new(),
            sent: 0,
            input: Vec::new(),
            want: String::new(),
            rounds: 0,
            get: false,
            at_stop: None,
            busy: false,
            round_start: Instant::now(),
        };
        k.request(c);
        all.push(k);
    }
    println!(
        "netprobe: kv-many: {} connected in {:.2} s",
        all.len(),
        start.elapsed().as_secs_f64()
    );
    let mut requests = 0u64;
    let mut longest = Duration::ZERO;
    let mut last_progress = Instant::now();
    let mut stopped = false;
    let mut buf = [0u8; 4096];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(all.len());
    // A progress line now and then, so a slow run shows where it stands.
    const REPORT_EVERY: Duration = Duration::from_secs(30);
    let mut last_report = Instant::now();
    loop {
        if !stopped && std::path::Path::new(stop).exists() {
            stopped = true;
            for k in &mut all {
                k.at_stop = Some(k.rounds);
            }
        }
        if stopped && all.iter().all(|k| k.at_stop.is_some_and(|r| k.rounds > r)) {
            break;
        }
        if start.elapsed() > bound {
            let behind = all
                .iter()
                .filter(|k| k.at_stop.is_none_or(|r| k.rounds <= r))
                .count();
            return Err(format!(
                "kv-many: still running after {bound:?} ({requests} replies checked, {behind} connections behind){}",
                laggards(&all)
            ));
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            let idle = all.iter().filter(|k| k.rounds == 0).count();
            let behind = all
                .iter()
                .filter(|k| k.at_stop.is_some_and(|r| k.rounds <= r))
                .count();
            println!(
                "netprobe: kv-many: {requests} replies after {:.0} s; {idle} connections without a round yet, {behind} behind the stop{}",
                start.elapsed().as_secs_f64(),
                laggards(&all)
            );
        }
        while in_flight < IN_FLIGHT
            && let Some(c) = turns.pop_front()
        {
            all[c].busy = true;
            all[c].round_start = Instant::now();
            in_flight += 1;
        }
        fds.clear();
        fds.extend(all.iter().map(|k| libc::pollfd {
            fd: k.stream.as_raw_fd(),
            events: if !k.busy {
                0
            } else if k.sent < k.out.len() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n < 0 {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        for (c, (k, fd)) in all.iter_mut().zip(&fds).enumerate() {
            if fd.revents == 0 {
                continue;
            }
            if k.sent < k.out.len() {
                match (&k.stream).write(&k.out[k.sent..]) {
                    Ok(n) => k.sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        return Err(format!(
                            "connection {c} after {} rounds: send: {e}",
                            k.rounds
                        ));
                    }
                }
                continue;
            }
            match (&k.stream).read(&mut buf) {
                Ok(0) => {
                    return Err(format!(
                        "connection {c} closed by the guest after {} rounds",
                        k.rounds
                    ));
                }
                Ok(n) => k.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    return Err(format!(
                        "connection {c} after {} rounds: receive: {e}",
                        k.rounds
                    ));
                }
            }
            let Some(end) = k.input.iter().position(|&b| b == b'\n') else {
                continue;
            };
            let reply = String::from_utf8_lossy(&k.input[..end]).into_owned();
            if reply != k.want || end + 1 != k.input.len() {
                return Err(format!(
                    "connection {c}, round {}: expected `{}`, got `{}` ({} bytes)",
                    k.rounds,
                    k.want,
                    reply,
                    k.input.len()
                ));
            }
            k.input.clear();
            requests += 1;
            longest = longest.max(last_progress.elapsed());
            last_progress = Instant::now();
            if k.get {
                k.rounds += 1;
                k.busy = false;
                longest_round = longest_round.max(k.round_start.elapsed());
                in_flight -= 1;
                turns.push_back(c);
                if k.rounds == 1 {
                    answered += 1;
                    if answered == conns {
                        println!(
                            "netprobe: kv-many: every connection answered in {:.2} s",
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            k.get = !k.get;
            k.request(c);
        }
    }
    let rounds: u64 = all.iter().map(|k| k.rounds).sum();
    Ok(format!(
        "kv-many: {} connections, {requests} replies ({rounds} SET+GET rounds), every reply correct, longest wait between replies {:.2} s, longest round {:.2} s, in {:.2} s",
        all.len(),
        longest.as_secs_f64(),
        longest_round.as_secs_f64(),
        start.elapsed().as_secs_f64()
    ))
}

/// Raw IPv4 sockets of one protocol (IP-in-IP), for the wide-area topology's tunnel checks.
mod rawip {
    use std::fs::File;
    use std::io;
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// IP-in-IP's protocol number (RFC 2003).
    pub const IPPROTO_IPIP: i32 = 4;

    /// An `AF_INET`/`SOCK_RAW` socket of `protocol`, bound to `local` and connected to `peer`:
    /// writes go to `peer` (the kernel adds the outer IPv4 header), reads return whole
    /// packets (outer header included) of that protocol from `peer` only. Needs CAP_NET_RAW.
    pub fn open(protocol: i32, local: Ipv4Addr, peer: Ipv4Addr) -> io::Result<File> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and own; nothing else will close it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let local = sockaddr(local);
        // SAFETY: `local` is a valid sockaddr_in of the size passed, alive for the call.
        let bound = unsafe {
            libc::bind(
                owned.as_raw_fd(),
                (&raw const local).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        let peer = sockaddr(peer);
        // SAFETY: as for bind: a valid sockaddr_in of the size passed, alive for the call.
        let connected = unsafe {
            libc::connect(
                owned.as_raw_fd(),
                (&raw const peer).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if connected < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from(owned))
    }

    fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        }
    }
}

/// The inner packets' ends: a correspondent writing to a VM's home address, as a home agent
/// would tunnel them.
const IPIP_INNER_SRC: [u8; 4] = [198, 18, 3, 2];
const IPIP_INNER_DST: [u8; 4] = [198, 18, 0, 10];
/// What starts every inner UDP payload, before the sequence number.
const IPIP_MARK: &[u8; 9] = b"roam-ipip";
/// Inner packet sizes, in turn: a small one and a full 1500-byte one (1520 bytes outside).
const IPIP_SIZES: [usize; 2] = [100, 1500];

/// Inner packet number `seq`: IPv4 + UDP (checksum 0, allowed over IPv4) + mark + filler.
fn ipip_inner(seq: u32) -> Vec<u8> {
    let len = IPIP_SIZES[seq as usize % IPIP_SIZES.len()];
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&IPIP_INNER_SRC);
    p[16..20].copy_from_slice(&IPIP_INNER_DST);
    let checksum = inet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&7u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p[28..37].copy_from_slice(IPIP_MARK);
    p[37..41].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[41..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_add(seq) as u8;
    }
    p
}

fn ipip_send(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    count: u32,
) -> Result<String, String> {
    let start = Instant::now();
    let mut socket = rawip::open(rawip::IPPROTO_IPIP, src, dst)
        .map_err(|e| format!("raw IP-in-IP socket {src} -> {dst}: {e}"))?;
    let mut bytes = 0;
    for seq in 0..count.min(10_000) {
        let inner = ipip_inner(seq);
        socket
            .write_all(&inner)
            .map_err(|e| format!("send #{seq} ({} bytes inside): {e}", inner.len()))?;
        bytes += inner.len();
        // A little spacing, so a receiver's socket buffer never overflows.
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(format!(
        "ipip-send {count} packets ({bytes} bytes inside) {src} -> {dst} in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}

/// Checks one received IP-in-IP packet (outer header included) and returns its sequence
/// number and outer length.
fn ipip_check(
    p: &[u8],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
) -> Result<(u32, usize), String> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err(format!("not IPv4 ({} bytes)", p.len()));
    }
    let outer_len = usize::from(p[0] & 0xF) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if p[9] != 4 || p[12..16] != src.octets() || p[16..20] != dst.octets() || total != p.len() {
        return Err(format!(
            "outer header: protocol {}, {}.{}.{}.{} -> {}.{}.{}.{}, length {total} of {}",
            p[9],
            p[12],
            p[13],
            p[14],
            p[15],
            p[16],
            p[17],
            p[18],
            p[19],
            p.len()
        ));
    }
    let inner = &p[outer_len..];
    if inner.len() < 41 || inner[0] != 0x45 || inet_checksum(&inner[..20]) != 0 {
        return Err(format!("inner header broken ({} bytes)", inner.len()));
    }
    let seq = u32::from_be_bytes([inner[37], inner[38], inner[39], inner[40]]);
    let want = ipip_inner(seq);
    if inner != want.as_slice() {
        return Err(format!(
            "inner packet #{seq} differs ({} bytes, expected {})",
            inner.len(),
            want.len()
        ));
    }
    Ok((seq, p.len()))
}

fn ipip_recv(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    count: u32,
    seconds: u64,
) -> Result<String, String> {
    let start = Instant::now();
    let bound = Duration::from_secs(seconds).min(TOTAL_TIMEOUT);
    let socket = rawip::open(rawip::IPPROTO_IPIP, dst, src)
        .map_err(|e| format!("raw IP-in-IP socket {dst} <- {src}: {e}"))?;
    // Reads block; a thread does them, so the bound holds even when nothing comes.
    let rx = read_in_thread(socket);
    println!("netprobe: ipip-recv ready on {dst} for {src}");
    let mut seen = std::collections::BTreeSet::new();
    let (mut largest, mut bad) = (0usize, Vec::new());
    while seen.len() < count as usize {
        let left = bound.saturating_sub(start.elapsed());
        let packet = match rx.recv_timeout(left) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("receive: {e}")),
            Err(_) => {
                return Err(format!(
                    "{} of {count} IP-in-IP packets from {src} within {bound:?}; rejected: {bad:?}",
                    seen.len()
                ));
            }
        };
        match ipip_check(&packet, src, dst) {
            Ok((seq, len)) => {
                seen.insert(seq);
                largest = largest.max(len);
            }
            Err(e) if bad.len() < 5 => bad.push(e),
            Err(_) => {}
        }
    }
    Ok(format!(
        "ipip-recv {count} IP-in-IP packets {src} -> {dst} intact, largest {largest} bytes outside, {} rejected, in {:.2} s",
        bad.len(),
        start.elapsed().as_secs_f64()
    ))
}

/// The IPv4 header checksum of `p`'s first `len` bytes, written in place.
fn set_ipv4_checksum(p: &mut [u8], len: usize) {
    p[10..12].copy_from_slice(&[0, 0]);
    let c = inet_checksum(&p[..len]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The echo reply to an inner ICMP echo request for `home`, or why `p` (outer header
/// included, from `peer` to `local`) is not one.
fn echo_reply_for(
    p: &[u8],
    local: std::net::Ipv4Addr,
    peer: std::net::Ipv4Addr,
    home: std::net::Ipv4Addr,
) -> Result<Vec<u8>, String> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 4 {
        return Err(format!("not IP-in-IP ({} bytes)", p.len()));
    }
    if p[12..16] != peer.octets() || p[16..20] != local.octets() {
        return Err(format!(
            "outer {}.{}.{}.{} -> {}.{}.{}.{}, expected {peer} -> {local}",
            p[12], p[13], p[14], p[15], p[16], p[17], p[18], p[19]
        ));
    }
    let inner = &p[usize::from(p[0] & 0xF) * 4..];
    let ihl = usize::from(inner.first().copied().unwrap_or(0) & 0xF) * 4;
    if inner.len() < ihl + 8 || inner[0] >> 4 != 4 || ihl < 20 {
        return Err(format!("inner packet broken ({} bytes)", inner.len()));
    }
    if inet_checksum(&inner[..ihl]) != 0 || inner[16..20] != home.octets() {
        return Err("inner header: bad checksum or not for the home address".into());
    }
    if inner[9] != 1 || inner[ihl] != 8 {
        return Err(format!(
            "inner protocol {} type {}: not an ICMP echo request",
            inner[9], inner[ihl]
        ));
    }
    let total = usize::from(u16::from_be_bytes([inner[2], inner[3]])).min(inner.len());
    let mut reply = inner[..total].to_vec();
    // From the home address back to the sender; TTL fresh; ICMP type 0 (echo reply).
    let sender: [u8; 4] = reply[12..16].try_into().expect("four bytes");
    reply[12..16].copy_from_slice(&home.octets());
    reply[16..20].copy_from_slice(&sender);
    reply[8] = 64;
    set_ipv4_checksum(&mut reply, ihl);
    reply[ihl] = 0;
    reply[ihl + 2..ihl + 4].copy_from_slice(&[0, 0]);
    let c = inet_checksum(&reply[ihl..]);
    reply[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
    Ok(reply)
}

/// The moved VM's stand-in at its care-of address: echo requests tunnelled from the home
/// agent are answered through the reverse tunnel.
fn ipip_echo(
    local: std::net::Ipv4Addr,
    peer: std::net::Ipv4Addr,
    home: std::net::Ipv4Addr,
    count: u32,
    seconds: u64,
) -> Result<String, String> {
    let start = Instant::now();
    let bound = Duration::from_secs(seconds).min(TOTAL_TIMEOUT);
    let socket = rawip::open(rawip::IPPROTO_IPIP, local, peer)
        .map_err(|e| format!("raw IP-in-IP socket {local} <-> {peer}: {e}"))?;
    let mut writer = socket.try_clone().map_err(|e| e.to_string())?;
    let rx = read_in_thread(socket);
    println!("netprobe: ipip-echo ready on {local} for {home} via {peer}");
    let (mut answered, mut largest, mut bad) = (0u32, 0usize, Vec::new());
    while answered < count {
        let left = bound.saturating_sub(start.elapsed());
        let packet = match rx.recv_timeout(left) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("receive: {e}")),
            Err(_) => {
                return Err(format!(
                    "{answered} of {count} echo requests for {home} arrived IP-in-IP from \
                     {peer} within {bound:?}; rejected: {bad:?}"
                ));
            }
        };
        match echo_reply_for(&packet, local, peer, home) {
            Ok(reply) => {
                writer
                    .write_all(&reply)
                    .map_err(|e| format!("reverse-tunnelling a reply: {e}"))?;
                answered += 1;
                largest = largest.max(packet.len());
            }
            Err(e) if bad.len() < 5 => bad.push(e),
            Err(_) => {}
        }
    }
    Ok(format!(
        "ipip-echo answered {count} echo requests for {home} tunnelled from {peer}, largest \
         {largest} bytes outside, {} rejected, in {:.2} s",
        bad.len(),
        start.elapsed().as_secs_f64()
    ))
}

/// One datagram out, one answer back, both as hex.
fn udp_ask(addr: SocketAddr, hex: &str, seconds: u64) -> Result<String, String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| format!("`{hex}` is not hex"))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(seconds.clamp(1, 60))))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&bytes, addr)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer from {addr} within {seconds} s: {e}"))?;
    if from != addr {
        return Err(format!("answer from {from}, not {addr}"));
    }
    let reply: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("reply {reply}"))
}

/// Attaching to an existing TAP (`/dev/net/tun`, `TUNSETIFF`), frames in and out.
mod tap {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;

    /// Attaches to TAP `name` (made beforehand, e.g. `ip tuntap add NAME mode tap`), no
    /// packet information header: one frame per read and write.
    pub fn attach(name: &str) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: `ifreq` is plain C data for which all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF reads the `ifreq` on
        // this stack frame, whose name is NUL-terminated (shorter than IFNAMSIZ, zeroed).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }
}

/// IPv4 protocol numbers the checksum modes know.
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// What stops `tap-echo`.
const STOP: &[u8] = b"netprobe-stop";
/// The stand-in's MAC.
const STANDIN_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x5e, 0x00, 0x10];

/// The checksum of a TCP or UDP `segment` carried from `src` to `dst` (pseudo-header
/// included), over the segment as it is: 0 when the segment's own checksum is right.
fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(12 + segment.len());
    data.extend_from_slice(&src);
    data.extend_from_slice(&dst);
    data.extend_from_slice(&[0, protocol]);
    data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    data.extend_from_slice(segment);
    inet_checksum(&data)
}

/// An IPv4 packet, split: header length, protocol, source, destination, payload.
struct Ip<'a> {
    protocol: u8,
    src: [u8; 4],
    dst: [u8; 4],
    payload: &'a [u8],
}

/// Reads an IPv4 packet and checks its header checksum and its TCP, UDP or ICMP checksum
/// (UDP checksum 0, "none", is accepted); `Err` says which one is wrong.
fn checked_ipv4(packet: &[u8]) -> Result<Ip<'_>, String> {
    let ihl = usize::from(packet.first().ok_or("empty")? & 0x0f) * 4;
    if packet.len() < 20 || ihl < 20 || packet[0] >> 4 != 4 {
        return Err("not an IPv4 packet".into());
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl || total > packet.len() {
        return Err(format!("total length {total} of {} bytes", packet.len()));
    }
    if inet_checksum(&packet[..ihl]) != 0 {
        return Err("IPv4 header checksum".into());
    }
    let ip = Ip {
        protocol: packet[9],
        src: packet[12..16].try_into().unwrap_or_default(),
        dst: packet[16..20].try_into().unwrap_or_default(),
        payload: &packet[ihl..total],
    };
    let p = ip.payload;
    let wrong = match ip.protocol {
        PROTO_TCP => l4_checksum(ip.src, ip.dst, PROTO_TCP, p) != 0,
        PROTO_UDP if p.len() >= 8 && p[6..8] == [0, 0] => false,
        PROTO_UDP => l4_checksum(ip.src, ip.dst, PROTO_UDP, p) != 0,
        PROTO_ICMP => inet_checksum(p) != 0,
        _ => false,
    };
    if wrong {
        return Err(format!(
            "{} checksum of a packet {} -> {}",
            match ip.protocol {
                PROTO_TCP => "TCP",
                PROTO_UDP => "UDP",
                _ => "ICMP",
            },
            std::net::Ipv4Addr::from(ip.src),
            std::net::Ipv4Addr::from(ip.dst)
        ));
    }
    Ok(ip)
}

/// An IPv4 packet from `src` to `dst` around `payload`, header checksum filled in.
fn ipv4_packet(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// The stand-in's answer to `ip` (for it): an echo reply, the UDP datagram back, a RST to
/// a SYN; `None` for anything else.
fn standin_answer(ip: &Ip<'_>) -> Option<Vec<u8>> {
    let p = ip.payload;
    let segment = match ip.protocol {
        PROTO_ICMP if p.len() >= 8 && p[0] == 8 => {
            let mut reply = p.to_vec();
            reply[0] = 0;
            reply[2..4].copy_from_slice(&[0, 0]);
            let sum = inet_checksum(&reply);
            reply[2..4].copy_from_slice(&sum.to_be_bytes());
            reply
        }
        PROTO_UDP if p.len() >= 8 => {
            let mut reply = p.to_vec();
            reply[0..2].copy_from_slice(&p[2..4]);
            reply[2..4].copy_from_slice(&p[0..2]);
            reply[6..8].copy_from_slice(&[0, 0]);
            let sum = l4_checksum(ip.dst, ip.src, PROTO_UDP, &reply);
            reply[6..8].copy_from_slice(&(if sum == 0 { 0xFFFF } else { sum }).to_be_bytes());
            reply
        }
        PROTO_TCP if p.len() >= 20 && p[13] & 0x02 != 0 => {
            let seq = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            let mut rst = vec![0u8; 20];
            rst[0..2].copy_from_slice(&p[2..4]);
            rst[2..4].copy_from_slice(&p[0..2]);
            rst[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
            rst[12] = 5 << 4;
            rst[13] = 0x14; // RST, ACK
            let sum = l4_checksum(ip.dst, ip.src, PROTO_TCP, &rst);
            rst[16..18].copy_from_slice(&sum.to_be_bytes());
            rst
        }
        _ => return None,
    };
    Some(ipv4_packet(ip.dst, ip.src, ip.protocol, &segment))
}

/// Reads `source` on a thread of its own, each read's bytes (or its error, the last) sent on
/// the returned channel: reads block, so the caller's time bound holds when nothing comes.
fn read_in_thread(
    mut source: impl Read + Send + 'static,
) -> std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        loop {
            let got = source.read(&mut buf).map(|n| buf[..n].to_vec());
            let failed = got.is_err();
            if tx.send(got).is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// A routed VM's stand-in on TAP `name` for the address `home` (see the module docs).
fn tap_echo(name: &str, home: std::net::Ipv4Addr, seconds: u64) -> Result<String, String> {
    let start = Instant::now();
    let bound = Duration::from_secs(seconds).min(TOTAL_TIMEOUT);
    let file = tap::attach(name).map_err(|e| format!("TAP {name}: {e}"))?;
    let mut writer = file.try_clone().map_err(|e| e.to_string())?;
    let rx = read_in_thread(file);
    println!("netprobe: tap-echo ready on {name} for {home}");
    let home = home.octets();
    let (mut icmp, mut udp, mut tcp) = (0u32, 0u32, 0u32);
    let mut wrong: Vec<String> = Vec::new();
    loop {
        let left = bound.saturating_sub(start.elapsed());
        let frame = match rx.recv_timeout(left) {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(format!("reading {name}: {e}")),
            Err(_) => break,
        };
        if frame.len() < 14 {
            continue;
        }
        let asker: [u8; 6] = frame[6..12].try_into().unwrap_or_default();
        let ethertype = [frame[12], frame[13]];
        let body = &frame[14..];
        // ARP requests for the stand-in's address: answered.
        if ethertype == [0x08, 0x06] && body.len() >= 28 && body[6..8] == [0, 1] {
            if body[24..28] == home {
                let mut reply = asker.to_vec();
                reply.extend_from_slice(&STANDIN_MAC);
                reply.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
                reply.extend_from_slice(&STANDIN_MAC);
                reply.extend_from_slice(&home);
                reply.extend_from_slice(&body[8..18]);
                writer.write_all(&reply).map_err(|e| e.to_string())?;
            }
            continue;
        }
        if ethertype != [0x08, 0x00] || body.len() < 20 || body[16..20] != home {
            continue;
        }
        let ip = match checked_ipv4(body) {
            Ok(ip) => ip,
            Err(e) => {
                if wrong.len() < 10 {
                    wrong.push(e);
                }
                continue;
            }
        };
        match ip.protocol {
            PROTO_ICMP => icmp += 1,
            PROTO_UDP => udp += 1,
            PROTO_TCP => tcp += 1,
            _ => {}
        }
        if ip.protocol == PROTO_UDP && ip.payload.get(8..) == Some(STOP) {
            break;
        }
        if let Some(answer) = standin_answer(&ip) {
            let mut out = asker.to_vec();
            out.extend_from_slice(&STANDIN_MAC);
            out.extend_from_slice(&[0x08, 0x00]);
            out.extend_from_slice(&answer);
            writer.write_all(&out).map_err(|e| e.to_string())?;
        }
    }
    let counts = format!("{icmp} ICMP, {udp} UDP, {tcp} TCP packets");
    if !wrong.is_empty() {
        return Err(format!("tap-echo: {counts}; wrong checksums: {wrong:?}"));
    }
    if icmp + udp + tcp == 0 {
        return Err(format!(
            "tap-echo: nothing for the stand-in within {bound:?}"
        ));
    }
    Ok(format!(
        "tap-echo: {counts} for {}, every checksum right, in {:.2} s",
        std::net::Ipv4Addr::from(home),
        start.elapsed().as_secs_f64()
    ))
}

/// Reads from the raw socket `raw` until a packet satisfying `wanted` comes (checksums
/// checked on the way), or `STEP_TIMEOUT` passes.
fn raw_wait(raw: &mut std::fs::File, wanted: impl Fn(&Ip<'_>) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut buf = vec![0u8; 65_536];
    loop {
        if Instant::now() >= deadline {
            return Err(format!("nothing matching within {STEP_TIMEOUT:?}"));
        }
        let n = match raw.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let ip = checked_ipv4(&buf[..n])?;
        if wanted(&ip) {
            return Ok(());
        }
    }
}

/// Sets a receive timeout on a raw socket.
fn raw_timeout(file: &std::fs::File) -> Result<(), String> {
    use std::os::fd::AsFd;
    let sock = socket_from(file.as_fd())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())
}

/// A `UdpSocket` view of a raw socket's descriptor, for its socket options only.
fn socket_from(fd: std::os::fd::BorrowedFd<'_>) -> Result<UdpSocket, String> {
    let owned = fd.try_clone_to_owned().map_err(|e| e.to_string())?;
    Ok(UdpSocket::from(owned))
}

/// UDP datagrams and TCP connects to `addr`, their answers checked on the bytes received.
fn csum_check(addr: SocketAddr, count: u32) -> Result<String, String> {
    let start = Instant::now();
    let SocketAddr::V4(addr) = addr else {
        return Err("an IPv4 address, please".into());
    };
    let peer = *addr.ip();
    let mut raw_udp = rawip::open(i32::from(PROTO_UDP), std::net::Ipv4Addr::UNSPECIFIED, peer)
        .map_err(|e| format!("raw UDP socket: {e}"))?;
    let mut raw_tcp = rawip::open(i32::from(PROTO_TCP), std::net::Ipv4Addr::UNSPECIFIED, peer)
        .map_err(|e| format!("raw TCP socket: {e}"))?;
    raw_timeout(&raw_udp)?;
    raw_timeout(&raw_tcp)?;
    let udp = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    udp.set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let local_port = udp.local_addr().map_err(|e| e.to_string())?.port();
    let mut rng = Rng::new(u64::from(count));
    let mut bytes = 0usize;
    for i in 0..count {
        // Odd and even lengths, up to a full packet, with a marker to recognise the echo.
        let len = 16 + (rng.next() % 1400) as usize + (i as usize % 2);
        let mut payload = vec![0u8; len];
        rng.fill(&mut payload);
        payload[..4].copy_from_slice(&i.to_be_bytes());
        udp.send_to(&payload, addr)
            .map_err(|e| format!("send to {addr}: {e}"))?;
        raw_wait(&mut raw_udp, |ip| {
            ip.payload.len() >= 8
                && ip.payload[0..2] == addr.port().to_be_bytes()
                && ip.payload[2..4] == local_port.to_be_bytes()
                && ip.payload[8..] == payload[..]
        })
        .map_err(|e| format!("the echo of datagram {i} ({len} bytes): {e}"))?;
        let mut echo = vec![0u8; len + 1];
        let n = udp.recv(&mut echo).map_err(|e| format!("echo {i}: {e}"))?;
        if echo[..n] != payload[..] {
            return Err(format!("echo {i} differs"));
        }
        bytes += len;
    }
    let mut refused = 0;
    for i in 0..count {
        match TcpStream::connect_timeout(&SocketAddr::V4(addr), STEP_TIMEOUT) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            other => {
                return Err(format!(
                    "connect {i} to {addr}: {other:?} (expected a refusal)"
                ));
            }
        }
        raw_wait(&mut raw_tcp, |ip| {
            ip.payload.len() >= 20
                && ip.payload[0..2] == addr.port().to_be_bytes()
                && ip.payload[13] & 0x04 != 0
        })
        .map_err(|e| format!("the RST to connect {i}: {e}"))?;
    }
    udp.send_to(STOP, addr).map_err(|e| e.to_string())?;
    Ok(format!(
        "csum-check: {count} UDP echoes ({bytes} bytes) and {refused} TCP RSTs from {addr} with right checksums, in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}
