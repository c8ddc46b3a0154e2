//! host-vmm as a [`Mover`] for `cargo xtask bench migrate`: the guest boots with
//! `host-vmm run ... --net ... --vf ... --api-socket` (both NICs on one MAC) on the source host,
//! and each move is `host-vmm receive --listen ...` on the other host plus
//! `host-vmm ctl SRC migrate ... [--zero-copy]` ([`crate::migrate`]). The figures are
//! host-vmm's own `migrated ...` summary: pause (source vCPU stop to destination vCPU run),
//! total, bytes sent, guest memory copied and passes. host-vmm does not throttle, and runs
//! with its default `--downtime-ms` (300, as QEMU's downtime limit).

use super::migrate::{Case, MoveReport, Mover, Moving};
use crate::migrate::HostVmmGuest;
use crate::net::{Side, TwoHosts};
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// Bound for the guest to be back on the VF before a move starts (it re-probes it after
/// RESUMED, then switches back).
const SETTLE: Duration = Duration::from_secs(15);

/// host-vmm as a [`Mover`].
pub struct HostVmmMover;

/// A guest under host-vmm in the benchmark, with the case's mode.
struct HostVmmMoving {
    guest: HostVmmGuest,
    case: Case,
}

impl Mover for HostVmmMover {
    fn key(&self) -> &'static str {
        "host_vmm"
    }

    fn boot(&self, hosts: &TwoHosts, image: &Path, case: Case) -> Result<Box<dyn Moving>> {
        let guest = HostVmmGuest::boot(hosts, image, case.mem_mib, "")?;
        guest.wait_settled(SETTLE)?;
        Ok(Box::new(HostVmmMoving { guest, case }))
    }
}

impl Moving for HostVmmMoving {
    fn side(&self) -> Side {
        self.guest.side()
    }

    fn move_once(&mut self, hosts: &TwoHosts) -> Result<MoveReport> {
        // Every move starts from the steady state: the agent answers, traffic on the VF.
        self.guest.wait_settled(SETTLE)?;
        let m = self.guest.move_to_other(hosts, self.case.mode, None)?;
        let s = m.summary;
        Ok(MoveReport {
            pause_ms: Some(s.pause_ms),
            total_ms: Some(s.total_ms),
            bytes: Some(s.bytes_sent),
            memory_copied_bytes: Some(s.memory_bytes_copied),
            passes: Some(s.passes),
            started: m.started,
            ended: m.ended,
        })
    }

    fn console(&self) -> String {
        self.guest.console()
    }
}
