//! `cargo xtask bench migrate --tls`: what mutual TLS costs a pre-copy move. One host-vmm
//! guest with [`POPULATED_MIB`] MiB of populated memory moves back and forth over the hosts'
//! migration link, alternating plain TCP (`--insecure-plain-tcp`) and TLS (`--tls-dir`),
//! the same number of moves each, in one run. Per transport: the first pass's rate (the
//! rate host-vmm measures while it sends every populated page: the stream's throughput),
//! memory copied over the whole move's time, and the pause; then TLS over plain. Goals:
//! TLS throughput at least 80 % of plain, pause unchanged.
//!
//! Populated memory: with the guest paused (`host-vmm ctl ... pause`), the top
//! [`POPULATED_MIB`] MiB of its guest-RAM memfd (opened through `/proc/PID/fd`) are read and
//! written back unchanged, which gives every page a backing page without changing a byte the
//! guest sees; a pre-copy first pass sends exactly the populated pages (docs/migration.md
//! §4), and each destination keeps them populated for the next move.

use super::migrate::{Mode, median};
use crate::migrate::{HostVmmGuest, Moved, Transport};
use crate::net::TwoHosts;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

/// Guest RAM, MiB.
pub const MEM_MIB: u32 = 1024;
/// Populated guest memory, MiB (the top of guest RAM).
pub const POPULATED_MIB: u64 = 512;
/// Bound for the guest to settle before each move.
const SETTLE: Duration = Duration::from_secs(20);

/// One move's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsMove {
    /// How the stream was protected.
    pub transport: Transport,
    /// The first pass's rate as host-vmm measured it, MB/s.
    pub first_pass_mbps: Option<f64>,
    /// Guest memory copied over the whole move, MB/s.
    pub overall_mbps: f64,
    /// The pause, ms.
    pub pause_ms: f64,
    /// Guest memory copied, bytes.
    pub copied: u64,
}

/// Every move, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFigures {
    /// The moves.
    pub moves: Vec<TlsMove>,
}

/// The first pass's `NNN MB/s` from a move's progress lines.
fn first_pass_rate(progress: &str) -> Option<f64> {
    progress
        .lines()
        .find(|l| l.contains("pass 1: ") && l.contains("MB/s"))
        .and_then(|l| {
            let before = l.split(" MB/s").next()?;
            before.rsplit([' ', ',']).next()?.parse().ok()
        })
}

/// Gives the top `mib` MiB of the guest RAM of host-vmm `pid` a backing page each, without
/// changing their contents (the guest is paused meanwhile).
fn populate(guest: &HostVmmGuest, mem_mib: u32, mib: u64) -> Result<()> {
    let fds = format!("/proc/{}/fd", guest.pid());
    let memfd = std::fs::read_dir(&fds)
        .with_context(|| format!("reading {fds}"))?
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("memfd:roam-guest-ram"))
        })
        .with_context(|| format!("no guest-RAM memfd in {fds}"))?
        .path();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&memfd)
        .with_context(|| format!("opening {}", memfd.display()))?;
    let size = u64::from(mem_mib) << 20;
    guest.control().call(&["pause"])?;
    let result = (|| -> Result<()> {
        let mut chunk = vec![0u8; 4 << 20];
        let mut at = size - (mib << 20);
        while at < size {
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut chunk)?;
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&chunk)?;
            at += chunk.len() as u64;
        }
        Ok(())
    })();
    guest.control().call(&["resume"])?;
    result.context("rewriting guest RAM")
}

/// Runs the TLS cases: `moves` moves per transport, alternating.
pub fn run(image: &Path, moves: u32) -> Result<TlsFigures> {
    if moves == 0 {
        bail!("--moves must be at least 1");
    }
    let hosts = TwoHosts::up("bt")?;
    let mut guest = HostVmmGuest::boot(&hosts, image, MEM_MIB, "")?;
    guest.wait_settled(SETTLE)?;
    populate(&guest, MEM_MIB, POPULATED_MIB)?;
    let mut out = Vec::new();
    for i in 0..moves * 2 {
        // Plain first in even rounds, TLS first in odd ones: neither always goes first.
        let round = i / 2;
        let tls_now = (i % 2 == 1) ^ (round % 2 == 1);
        let transport = if tls_now {
            Transport::Tls
        } else {
            Transport::InsecurePlainTcp
        };
        guest.wait_settled(SETTLE)?;
        guest.set_transport(transport);
        let m: Moved = guest.move_to_other(&hosts, Mode::PreCopy, None)?;
        let s = m.summary;
        let figures = TlsMove {
            transport,
            first_pass_mbps: first_pass_rate(&m.progress),
            overall_mbps: s.memory_bytes_copied as f64 / (s.total_ms / 1e3).max(1e-3) / 1e6,
            pause_ms: s.pause_ms,
            copied: s.memory_bytes_copied,
        };
        eprintln!(
            "migrate bench --tls: move {}: {:<9} first pass {} MB/s, overall {:.0} MB/s, pause {:.1} ms, {} bytes copied",
            i + 1,
            transport.key(),
            figures
                .first_pass_mbps
                .map_or("-".into(), |r| format!("{r:.0}")),
            figures.overall_mbps,
            figures.pause_ms,
            figures.copied
        );
        if figures.copied < POPULATED_MIB << 20 {
            bail!(
                "move {} copied {} bytes, less than the {POPULATED_MIB} MiB populated",
                i + 1,
                figures.copied
            );
        }
        out.push(figures);
    }
    Ok(TlsFigures { moves: out })
}

impl TlsFigures {
    fn of(&self, t: Transport) -> impl Iterator<Item = &TlsMove> {
        self.moves.iter().filter(move |m| m.transport == t)
    }

    /// Medians for `t`: first-pass MB/s, overall MB/s, pause ms.
    pub fn medians(&self, t: Transport) -> (Option<f64>, Option<f64>, Option<f64>) {
        (
            median(self.of(t).map(|m| m.first_pass_mbps)),
            median(self.of(t).map(|m| Some(m.overall_mbps))),
            median(self.of(t).map(|m| Some(m.pause_ms))),
        )
    }

    /// TLS over plain for the three medians.
    pub fn ratios(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let (a, b) = (
            self.medians(Transport::Tls),
            self.medians(Transport::InsecurePlainTcp),
        );
        let r = |x: Option<f64>, y: Option<f64>| Some(x? / y?);
        (r(a.0, b.0), r(a.1, b.1), r(a.2, b.2))
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The table.
pub fn table(f: &TlsFigures, moves: u32) -> String {
    let mut out = format!(
        "pre-copy, {MEM_MIB} MiB guest with {POPULATED_MIB} MiB populated, {moves} moves per \
         transport (medians)\n{:<22} {:>18} {:>16} {:>10}\n",
        "transport", "first pass MB/s", "overall MB/s", "pause ms"
    );
    for t in [Transport::InsecurePlainTcp, Transport::Tls] {
        let (fp, all, pause) = f.medians(t);
        out.push_str(&format!(
            "{:<22} {:>18} {:>16} {:>10}\n",
            t.key(),
            opt(fp, 0),
            opt(all, 0),
            opt(pause, 1)
        ));
    }
    let (fp, all, pause) = f.ratios();
    out.push_str(&format!(
        "{:<22} {:>18} {:>16} {:>10}\n",
        "tls / plain-tcp",
        opt(fp, 2),
        opt(all, 2),
        opt(pause, 2)
    ));
    out.push_str("goals: throughput ratio >= 0.80, pause unchanged\n");
    out
}

/// One JSON object.
pub fn json(f: &TlsFigures, moves: u32) -> serde_json::Value {
    let side = |t| {
        let (fp, all, pause) = f.medians(t);
        json!({"first_pass_mbps": fp, "overall_mbps": all, "pause_ms": pause})
    };
    let (fp, all, pause) = f.ratios();
    json!({
        "mem_mib": MEM_MIB,
        "populated_mib": POPULATED_MIB,
        "moves_per_transport": moves,
        "plain_tcp": side(Transport::InsecurePlainTcp),
        "tls": side(Transport::Tls),
        "ratio": {"first_pass": fp, "overall": all, "pause": pause},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_rate_is_read_from_the_progress() {
        let p = "host-vmm: migration: pass 1: 131072 populated pages\n\
                 host-vmm: migration: pass 1: 131072 pages (537395200 bytes sent, 812 MB/s)\n\
                 host-vmm: migration: pass 2: 12 dirty pages, ...\n";
        assert_eq!(first_pass_rate(p), Some(812.0));
        assert_eq!(first_pass_rate("nothing"), None);
    }
}
