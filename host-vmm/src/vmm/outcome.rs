//! How a run ended, and the one-line report of a guest that stopped without a status.

use super::EXIT_NO_GUEST_STATUS;
use crate::kvm::vcpu::VcpuExit;
use std::fmt;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
    /// The guest stopped without writing a status.
    GuestStopped(GuestStop),
    /// The guest moved to another host-vmm, which runs it now.
    MigratedAway,
    /// The operator shut the VM down.
    ShutDown,
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::GuestExit(status) => *status,
            Outcome::GuestStopped(_) => EXIT_NO_GUEST_STATUS,
            Outcome::MigratedAway | Outcome::ShutDown => 0,
        }
    }
}

/// Why the guest stopped without a status, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStop {
    /// What KVM reported.
    pub exit: VcpuExit,
    /// The guest's registers at that moment, if they could be read.
    pub regs: Option<StopRegisters>,
}

/// The registers a stop names: where the guest was, on what stack, with which flags (a
/// direction flag left set, or a stack pointer in the wrong place, explains many a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopRegisters {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
}

impl fmt::Display for GuestStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the guest stopped without an exit status: ")?;
        match &self.exit {
            VcpuExit::Shutdown => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)")?,
            VcpuExit::InternalError { suberror, data } => {
                let what = match suberror {
                    1 => " (emulation failure)",
                    2 => " (exception while delivering an exception)",
                    3 => " (event delivery failed)",
                    4 => " (unexpected exit reason)",
                    _ => "",
                };
                write!(f, "KVM internal error, suberror {suberror}{what}")?;
                for (i, word) in data.iter().enumerate() {
                    write!(f, "{} {word:#x}", if i == 0 { ", data" } else { "," })?;
                }
            }
            VcpuExit::FailEntry { reason } => write!(
                f,
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, reason {reason:#x})"
            )?,
            VcpuExit::Halted => write!(f, "HLT reached host-vmm (KVM_EXIT_HLT)")?,
            VcpuExit::SystemEvent { kind } => {
                let what = match kind {
                    1 => "shutdown",
                    2 => "reset",
                    3 => "crash",
                    _ => "system event",
                };
                write!(
                    f,
                    "the guest requested a {what} (KVM_EXIT_SYSTEM_EVENT {kind})"
                )?
            }
            other => write!(f, "unexpected KVM exit {other:?}")?,
        }
        match self.regs {
            Some(r) => write!(
                f,
                " at RIP {:#x} (RSP {:#x}, RFLAGS {:#x})",
                r.rip, r.rsp, r.rflags
            ),
            None => write!(f, " (RIP unknown)"),
        }
    }
}
