//! `cargo xtask bench widearea`: how fast a moved guest is reachable again, by strategy
//! and WAN delay.
//!
//! - `l2`: the same-subnet move (two hosts on one L2), the reference;
//! - `mip`: Mobile IPv4 over the wide-area topology, home -> site A -> site B -> home, at a
//!   one-way WAN delay of 0, 5 and 25 ms (the delay line);
//! - `nat`: network paging over the same topology and tours: the client edge in the WAN
//!   router, an edge at each site. The client edge is the router itself, so the
//!   registration to it does not cross the delay line (the router's own traffic is not
//!   delayed): at 5 and 25 ms its pause lacks the WAN round trip Mobile IP's has, while
//!   the first reply after the resume crosses the WAN as with Mobile IP.
//!
//! Per move: the restore time (the destination's resume, from its log's wall-clock stamp,
//! to the first echo reply the correspondent receives after it; pings every 2 ms, so the
//! figure is finer than the tests' 10 ms interval), the longest ping gap and the pings lost
//! around the move; per case, whether a kv session checking every reply kept its connection.

use crate::bench::migrate::Mode;
use crate::migrate::HostVmmGuest;
use crate::net::wan::Site;
use crate::net::{GUEST_IP, TwoHosts};
use crate::pingd::{PingLog, Pinger};
use crate::widearea::{Move, Place, Strategy, WideArea};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The guest: the kv server (a session checks every reply; it answers ping too).
pub const IMAGE: &str = "kv";
/// WAN one-way delays measured, ms.
pub const DELAYS: [u32; 3] = [0, 5, 25];
/// Tours (3 moves each) per wide-area case; moves per `l2` case.
pub const TOURS: u32 = 2;
/// The probe interval: finer than the tests' 10 ms.
const PROBE: Duration = Duration::from_millis(2);

/// One case's figures.
#[derive(Clone, Debug)]
pub struct Case {
    /// `l2`, `mip` or `nat`.
    pub strategy: &'static str,
    /// One-way WAN delay, ms.
    pub wan_delay_ms: u32,
    /// Restore time per move, ms.
    pub restore_ms: Vec<f64>,
    /// Longest ping gap per move, ms.
    pub gap_ms: Vec<f64>,
    /// Pings lost over all moves.
    pub lost: usize,
    /// The kv session kept its connection and every reply was right.
    pub connections_kept: bool,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[mid - 1] + v[mid]) / 2.0,
        _ => v[mid],
    }
}

/// The restore time, longest gap and lost pings of `m` in `log`.
fn measure(log: &PingLog, m: &Move) -> (f64, f64, usize) {
    let restore = log
        .replies
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > m.resumed_at)
        .fold(f64::INFINITY, f64::min);
    let window = log.window(m.started - 0.2, m.ended + 1.0);
    let gap = window.longest_gap.map_or(0.0, |g| g.secs() * 1e3);
    ((restore - m.resumed_at) * 1e3, gap, window.lost.len())
}

/// What runs through the moves from a client: `ping -D` every [`PROBE`] and a kv session
/// checking every reply, both made by `client` (a `Command` for a program in the client's
/// namespace) and bounded to last the moves.
struct Load {
    pinger: Pinger,
    kv: std::thread::JoinHandle<Result<crate::proc::Watched>>,
}

impl Load {
    fn start(client: impl Fn(&str) -> std::process::Command, moves: u32) -> Result<Load> {
        let pinger = Pinger::start(
            client("ping"),
            GUEST_IP,
            PROBE,
            (moves * 2 + 10) * 1000 / PROBE.as_millis() as u32,
        )?;
        let netprobe = crate::netprobe_path();
        let mut kv_cmd = client(netprobe.to_str().unwrap_or("netprobe"));
        kv_cmd.args(["kv-for", &format!("{GUEST_IP}:6380")]);
        kv_cmd.arg((moves * 2 + 4).to_string());
        let kv = std::thread::spawn(move || {
            crate::proc::watch(&mut kv_cmd, "", Duration::from_secs(300))
        });
        std::thread::sleep(Duration::from_secs(1));
        Ok(Load { pinger, kv })
    }

    /// Stops it; the ping log and whether the kv session kept its connection.
    fn finish(self) -> Result<(PingLog, bool)> {
        let kept = self
            .kv
            .join()
            .map_err(|_| anyhow::anyhow!("the kv thread panicked"))??
            .status
            .success();
        Ok((self.pinger.stop()?, kept))
    }
}

/// The wide-area case of `strategy` at `delay_ms`.
fn wide(image: &Path, strategy: Strategy, delay_ms: u32) -> Result<Case> {
    let name = strategy.name();
    let mut w = WideArea::start(
        image,
        &format!("bw{}{delay_ms}", &name[..1]),
        delay_ms,
        strategy,
    )?;
    let moves_total = TOURS * 3;
    let load = Load::start(|p| w.wan.correspondent(p), moves_total)?;
    let mut moves = Vec::new();
    for _ in 0..TOURS {
        for to in [Place::Site(Site::A), Place::Site(Site::B), Place::Home] {
            let m = w.move_to(to)?;
            eprintln!(
                "bench widearea: {name} {delay_ms} ms -> {}: {}",
                to.name(),
                m.summary
            );
            moves.push(m);
            w.wait_answers(Duration::from_secs(10))?;
            w.wait_agent()?;
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let (log, kept) = load.finish()?;
    Ok(case(name, delay_ms, &log, &moves, kept))
}

fn case(strategy: &'static str, delay: u32, log: &PingLog, moves: &[Move], kept: bool) -> Case {
    let mut c = Case {
        strategy,
        wan_delay_ms: delay,
        restore_ms: Vec::new(),
        gap_ms: Vec::new(),
        lost: 0,
        connections_kept: kept,
    };
    for m in moves {
        let (restore, gap, lost) = measure(log, m);
        c.restore_ms.push(restore);
        c.gap_ms.push(gap);
        c.lost += lost;
    }
    c
}

/// The same-subnet reference: moves between two hosts on one L2.
fn l2(image: &Path) -> Result<Case> {
    let hosts = TwoHosts::up("bwl2")?;
    let mut guest = HostVmmGuest::boot(&hosts, image, crate::widearea::MEM_MIB, "")?;
    let moves_total = TOURS * 3;
    let load = Load::start(|p| hosts.client(p), moves_total)?;
    let mut moves = Vec::new();
    for _ in 0..moves_total {
        guest.wait_settled(Duration::from_secs(20))?;
        let moved = guest.move_to_other(&hosts, Mode::PreCopy, None)?;
        let resumed_at = crate::widearea::resumed_at_last(&guest.console())
            .context("the receiver did not log its resume")?;
        eprintln!(
            "bench widearea: l2 -> {}: pause {:.3} ms",
            moved.to.key(),
            moved.summary.pause_ms
        );
        moves.push(Move {
            to: Place::Home,
            summary: String::new(),
            resumed_at,
            started: moved.started,
            ended: moved.ended,
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    let (log, kept) = load.finish()?;
    Ok(case("l2", 0, &log, &moves, kept))
}

/// Runs every case with the guest `image`.
pub fn run(image: &Path) -> Result<Vec<Case>> {
    let mut cases = vec![l2(image)?];
    for strategy in [Strategy::Mip, Strategy::Nat] {
        for d in DELAYS {
            cases.push(wide(image, strategy, d)?);
        }
    }
    Ok(cases)
}

/// The figures as a table, with the goals.
pub fn table(cases: &[Case]) -> String {
    let mut out = String::from(
        "strategy  wan delay ms  moves  median restore ms  median gap ms  lost  connections kept\n",
    );
    for c in cases {
        out.push_str(&format!(
            "{:<9} {:>12} {:>6} {:>18.1} {:>14.1} {:>5}  {}\n",
            c.strategy,
            c.wan_delay_ms,
            c.restore_ms.len(),
            median(&c.restore_ms),
            median(&c.gap_ms),
            c.lost,
            c.connections_kept
        ));
    }
    let l2_gap = cases
        .iter()
        .find(|c| c.strategy == "l2")
        .map_or(f64::NAN, |c| median(&c.gap_ms));
    for c in cases.iter().filter(|c| c.strategy != "l2") {
        let rtt = 2.0 * f64::from(c.wan_delay_ms);
        let restore = median(&c.restore_ms);
        let gap = median(&c.gap_ms);
        out.push_str(&format!(
            "{} at {} ms: restore {restore:.1} ms vs goal {:.1} ms ({}), gap {gap:.1} ms vs goal {:.1} ms ({}), lost {} (goal 0)\n",
            c.strategy,
            c.wan_delay_ms,
            rtt + 5.0,
            if restore <= rtt + 5.0 { "met" } else { "not met" },
            l2_gap + rtt,
            if gap <= l2_gap + rtt { "met" } else { "not met" },
            c.lost
        ));
    }
    out
}

/// The figures as one JSON object (`{"bench":"widearea","cases":[...]}`).
pub fn json(cases: &[Case]) -> String {
    json!({
        "bench": "widearea",
        "cases": cases.iter().map(|c| json!({
            "strategy": c.strategy,
            "wan_delay_ms": c.wan_delay_ms,
            "moves": c.restore_ms.len(),
            "median_restore_ms": median(&c.restore_ms),
            "median_gap_ms": median(&c.gap_ms),
            "restore_ms": c.restore_ms,
            "gap_ms": c.gap_ms,
            "lost": c.lost,
            "connections_kept": c.connections_kept,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}
