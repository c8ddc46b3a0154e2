//! `netprobe`: the network tests' client, run inside the client namespace
//! (`ip netns exec <ns> netprobe ...`). Every mode is bounded in count and time and exits 0
//! only when every reply checked out; it prints one summary line either way.
//!
//! ```text
//! netprobe tcp-echo ADDR:PORT BYTES SEED   send BYTES pseudo-random bytes, compare the echo
//! netprobe udp-echo ADDR:PORT COUNT SEED   COUNT datagrams of mixed sizes, each echoed intact
//! netprobe kv ADDR:PORT COUNT              SET then GET COUNT keys, then COUNT
//! ```

#![deny(unsafe_code)]

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
        ["udp-echo", addr, count, seed] => udp_echo(parse(addr), parse(count), parse(seed)),
        ["kv", addr, count] => kv(parse(addr), parse(count)),
        _ => Err("usage: netprobe tcp-echo ADDR:PORT BYTES SEED | udp-echo ADDR:PORT COUNT SEED | kv ADDR:PORT COUNT".into()),
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

fn udp_echo(addr: SocketAddr, count: u32, seed: u64) -> Result<String, String> {
    const TRIES: u32 = 3;
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
