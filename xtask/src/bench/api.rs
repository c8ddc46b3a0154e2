//! `cargo xtask bench api`: what host-vmm's HTTP API costs.
//!
//! - Latency of `vmm.ping` and `vm.info`: 1,000 requests each on one keep-alive connection
//!   (HTTP/1.1 written by hand here, so the figure is host-vmm's, not a client library's),
//!   median and p99; and the same `vmm.ping` through stock curl (a process per request),
//!   as users call it.
//! - The pause of a move driven through the API (`vm.send-migration`, progress polled)
//!   against one driven by the CLI path (`host-vmm run` / `receive` / `ctl migrate`), in
//!   the same run, same guest and topology, pre-copy back and forth.

use crate::api::ApiVmm;
use crate::bench::migrate::Mode;
use crate::migrate::HostVmmGuest;
use crate::net::{GUEST_MAC, Side, TAP, TwoHosts, VF_TAP};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The guest: echoes and answers ping, dirties little.
pub const IMAGE: &str = "netecho";
/// Requests per latency figure (the count).
pub const REQUESTS: usize = 1000;
/// Moves per path.
pub const MOVES: u32 = 8;
/// Guest RAM for the moves.
const MEM: u64 = 64 << 20;

/// One latency figure, in microseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    /// What was asked, and how.
    pub what: String,
    /// Requests.
    pub count: usize,
    /// Median.
    pub median_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

/// Everything the benchmark measured.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Request latencies.
    pub latency: Vec<Latency>,
    /// Pause of each API-driven move, ms.
    pub api_pauses: Vec<f64>,
    /// Pause of each CLI-driven move, ms.
    pub cli_pauses: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(what: &str, mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    Latency {
        what: what.to_owned(),
        count: samples.len(),
        median_us: percentile(&samples, 0.5),
        p99_us: percentile(&samples, 0.99),
    }
}

/// The median (the mean of the middle two for an even count; 0 for none).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[mid - 1] + v[mid]) / 2.0,
        _ => v[mid],
    }
}

/// A keep-alive HTTP/1.1 connection to the API socket.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> Result<Conn> {
        let s = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// One GET; returns the status once the whole answer is read.
    fn get(&mut self, endpoint: &str) -> Result<u16> {
        write!(
            self.writer,
            "GET /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed mid-answer");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// `count` GETs of `endpoint` on one connection, each timed, in µs.
fn keep_alive(socket: &Path, endpoint: &str, count: usize) -> Result<Vec<f64>> {
    let mut conn = Conn::open(socket)?;
    // A few to warm up (first-use allocations, page faults).
    for _ in 0..20 {
        conn.get(endpoint)?;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let status = conn.get(endpoint)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        if status != 200 {
            bail!("{endpoint} answered {status}");
        }
    }
    Ok(out)
}

/// `count` `vmm.ping`s through stock curl, each a process of its own, in µs.
fn with_curl(socket: &Path, count: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let (status, _) = crate::api::curl(socket, "GET", "vmm.ping", None)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        if status != 200 {
            bail!("vmm.ping answered {status}");
        }
    }
    Ok(out)
}

/// Runs the benchmark with the guest `image`.
pub fn run(image: &Path) -> Result<Figures> {
    let hosts = TwoHosts::up("bapi")?;
    let mut latency_figures = Vec::new();
    let mut api_pauses = Vec::new();
    {
        let mut a = ApiVmm::start(hosts.host_ns(Side::Source), "ba")?;
        let b = ApiVmm::start(hosts.host_ns(Side::Destination), "bb")?;
        let nets = json!([{ "tap": TAP, "mac": GUEST_MAC }]);
        let vf = json!({ "tap": VF_TAP, "mac": GUEST_MAC });
        let certs = crate::certs::CertDir::for_tests()?;
        a.ok(
            "PUT",
            "vm.create",
            Some(&json!({
                "payload": { "kernel": image.display().to_string(), "cmdline": crate::net::guest_cmdline() },
                "memory": { "size": MEM },
                "net": nets,
                "vf": vf,
            })),
        )?;
        a.ok("PUT", "vm.boot", None)?;
        hosts.wait_until_guest_answers(&mut a.vm, Duration::from_secs(60))?;
        eprintln!("bench api: {REQUESTS} requests each...");
        latency_figures.push(latency(
            "vmm.ping (keep-alive)",
            keep_alive(a.socket(), "vmm.ping", REQUESTS)?,
        ));
        latency_figures.push(latency(
            "vm.info (keep-alive)",
            keep_alive(a.socket(), "vm.info", REQUESTS)?,
        ));
        latency_figures.push(latency(
            "vmm.ping (curl, a process each)",
            with_curl(a.socket(), REQUESTS / 10)?,
        ));
        // Moves through the API, back and forth.
        let (mut from, mut to) = (a, b);
        let mut side = Side::Source;
        for i in 0..MOVES {
            let url = format!("tcp:{}:{}", side.other().migration_ip(), 7600 + i);
            to.ok(
                "PUT",
                "vm.receive-migration",
                Some(&json!({"receiver_url": url, "net": nets, "vf": vf, "tls_dir": certs.arg()})),
            )?;
            from.ok(
                "PUT",
                "vm.send-migration",
                Some(&json!({"destination_url": url, "tls_dir": certs.arg()})),
            )?;
            let (p, _) = from.wait_migration(Duration::from_secs(120))?;
            if p["state"] != "succeeded" {
                bail!("API move {} failed: {p}", i + 1);
            }
            let pause = p["pause_ms"].as_f64().context("pause_ms")?;
            eprintln!("bench api: API move {}: pause {pause:.3} ms", i + 1);
            api_pauses.push(pause);
            hosts.wait_until_guest_answers(&mut to.vm, Duration::from_secs(30))?;
            std::mem::swap(&mut from, &mut to);
            side = side.other();
        }
    }
    // The same moves by the CLI path.
    let mut cli_pauses = Vec::new();
    let mut guest = HostVmmGuest::boot(&hosts, image, (MEM >> 20) as u32, "")?;
    for i in 0..MOVES {
        guest.wait_settled(Duration::from_secs(20))?;
        let moved = guest.move_to_other(&hosts, Mode::PreCopy, None)?;
        let pause = moved.summary.pause_ms;
        eprintln!("bench api: CLI move {}: pause {pause:.3} ms", i + 1);
        cli_pauses.push(pause);
    }
    Ok(Figures {
        latency: latency_figures,
        api_pauses,
        cli_pauses,
    })
}

/// The figures as a table.
pub fn table(f: &Figures) -> String {
    let mut out = String::from("request                              count   median µs   p99 µs\n");
    for l in &f.latency {
        out.push_str(&format!(
            "{:<36} {:>5} {:>11.1} {:>8.1}\n",
            l.what, l.count, l.median_us, l.p99_us
        ));
    }
    let (api, cli) = (median(&f.api_pauses), median(&f.cli_pauses));
    out.push_str(&format!(
        "\nmove pause (pre-copy, {} moves each): API median {api:.3} ms, CLI median {cli:.3} ms, API/CLI {:.2}x, added {:+.3} ms\n",
        f.api_pauses.len(),
        if cli > 0.0 { api / cli } else { 0.0 },
        api - cli
    ));
    out.push_str("goal: vmm.ping median <= 100 µs (keep-alive); no added pause\n");
    out
}

/// The figures as one JSON object.
pub fn json(f: &Figures) -> String {
    let (api, cli) = (median(&f.api_pauses), median(&f.cli_pauses));
    json!({
        "bench": "api",
        "latency": f.latency.iter().map(|l| json!({
            "request": l.what, "count": l.count,
            "median_us": l.median_us, "p99_us": l.p99_us,
        })).collect::<Vec<_>>(),
        "move_pause_ms": {
            "api": f.api_pauses, "cli": f.cli_pauses,
            "api_median": api, "cli_median": cli,
            "added_ms": api - cli,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        let l = latency("x", vec![3.0, 1.0, 2.0]);
        assert_eq!((l.median_us, l.p99_us), (2.0, 3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
