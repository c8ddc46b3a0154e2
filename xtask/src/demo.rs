//! `cargo xtask demo`: Roam's main job in one command. Two host-vmm on two hosts (network
//! namespaces on one L2, 198.18.0.0/15), netecho booted on the first with the VF and
//! virtio-net on one MAC, a client pinging it every 10 ms; the guest moves to the second
//! host by pre-copy (over mutual TLS, with a certificate directory made for the demo as
//! `cargo xtask certs` makes one), then back by zero-copy (a Unix socket, the peer's user
//! checked), and each move's pause (host-vmm's figure) and
//! network downtime (the longest gap between ping replies, less the interval) is printed.

use crate::bench::migrate::{Mode, PING_INTERVAL};
use crate::migrate::HostVmmGuest;
use crate::net::{GUEST_IP, TwoHosts};
use crate::pingd::Pinger;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// Guest RAM.
const MEM_MIB: u32 = 128;
/// Pings before and after each move.
const AROUND: Duration = Duration::from_millis(1500);
/// Bound for the guest to be back on the VF after booting or a move.
const SETTLE: Duration = Duration::from_secs(15);

/// Runs the demo with the netecho image at `image`.
pub fn run(image: &Path) -> Result<()> {
    println!(
        "Two hosts (network namespaces) on one L2; a client pings the guest at {GUEST_IP} every {} ms.",
        PING_INTERVAL.as_millis()
    );
    let hosts = TwoHosts::up("demo").context("creating the demo network")?;
    println!("Booting netecho under host-vmm on the source host (VF + virtio-net, one MAC) ...");
    let mut guest = HostVmmGuest::boot(&hosts, image, MEM_MIB, "")?;
    println!(
        "Pre-copy moves run over mutual TLS (certificates in {}); zero-copy over a Unix socket.",
        guest.certs().path().display()
    );
    println!(
        "\n{:<10} {:>5} {:>9} {:>9} {:>12} {:>13} {:>6} {:>11}",
        "move", "to", "pause ms", "total ms", "bytes sent", "memory copied", "lost", "downtime ms"
    );
    for mode in [Mode::PreCopy, Mode::ZeroCopy] {
        guest.wait_settled(SETTLE)?;
        let count = (3 * AROUND.as_millis() as u32 + 30_000) / PING_INTERVAL.as_millis() as u32;
        let pinger = Pinger::start(hosts.client("ping"), GUEST_IP, PING_INTERVAL, count)?;
        std::thread::sleep(AROUND);
        let moved = guest
            .move_to_other(&hosts, mode, None)
            .with_context(|| format!("{} move", mode.key()))?;
        std::thread::sleep(AROUND);
        let log = pinger.stop()?;
        let w = log.window(moved.started - 0.5, moved.ended + 1.0);
        let downtime = w
            .longest_gap
            .map(|g| g.secs() * 1e3 - PING_INTERVAL.as_secs_f64() * 1e3);
        let s = moved.summary;
        println!(
            "{:<10} {:>11} {:>9.3} {:>9.1} {:>12} {:>13} {:>6} {:>11}",
            mode.key(),
            moved.to.key(),
            s.pause_ms,
            s.total_ms,
            s.bytes_sent,
            s.memory_bytes_copied,
            w.lost.len(),
            downtime.map_or("-".into(), |d| format!("{d:.1}"))
        );
    }
    println!(
        "\npause = source vCPU stop to destination running (host-vmm's summary); downtime = the\n\
         longest gap between ping replies around the move less the {} ms interval (guest code is\n\
         emulated on this machine: each echo costs the guest ~1-2 ms). `cargo xtask bench migrate`\n\
         measures more sizes and moves against stock QEMU.",
        PING_INTERVAL.as_millis()
    );
    Ok(())
}
