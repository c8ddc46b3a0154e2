//! The destination of a migration: wait for one source, build a VM with this host-vmm's
//! own devices while the guest still runs there, take the pages and the machine state, tell
//! the source the guest runs here, and hand the VM back ready to run. What follows the
//! arrival (announce, VF, guest agent) is the caller's.

use super::target::{Address, AddressError, Listening, Stream};
use crate::config::{DeviceConfig, MemSize};
use crate::memory::{GuestRam, PAGE_SIZE};
use crate::roaming::registration::{self, Refresher, Registrar, RegistrationError};
use crate::vmm::{self, MachineState, Vmm};
use migration_wire::{Message, Mode, WireError, decode_state, read_message, write_message};
use std::fs::File;
use std::io::Write;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Longest silence of the source once a move has started (its PREPARE step, the agent's,
/// takes at most ~5 s).
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why no guest arrived.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Cannot listen.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// accept(2) failed.
    #[error("waiting for the source failed: {0}")]
    Accept(std::io::Error),
    /// The stream broke, was corrupt, or the source gave up.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Something the source sent cannot be used here.
    #[error("{0}")]
    Refused(String),
    /// Building or running the VM failed.
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    /// The home agent did not take the guest's new location.
    #[error("Mobile IP: {0}")]
    Mobility(#[from] RegistrationError),
    /// A mobility setting this host-vmm cannot carry out.
    #[error("{0}")]
    MobilityUnsupported(String),
}

/// A guest that arrived: its VM, ready to run, and (away from home) what keeps its binding
/// with the home agent alive while it runs here.
#[derive(Debug)]
pub struct Arrival {
    /// The VM.
    pub vmm: Vmm,
    /// Refreshes the Mobile IP binding; drop it when the guest stops running here.
    pub refresher: Option<Refresher>,
}

/// Starts listening on `address` (so a source may connect as soon as this returns).
pub fn listen(address: &Address) -> Result<Listening, ReceiveError> {
    Ok(address.listen()?)
}

/// Waits on `listening` for one guest and takes it in with this side's `devices` (the
/// source's set: same NICs, same MACs; TAPs may differ); with `mobility`, tells its home
/// agent where it is before it runs here (or that it is home). Returns the VM ready to run.
pub fn receive(
    listening: Listening,
    devices: &DeviceConfig,
    mobility: &mip::Mobility,
    console: Box<dyn Write + Send>,
) -> Result<Arrival, ReceiveError> {
    let mut stream = listening.accept().map_err(ReceiveError::Accept)?;
    drop(listening);
    match incoming(devices, mobility, &mut stream, console) {
        Ok(arrival) => Ok(arrival),
        Err(e) => {
            // Tell the source why, so it rolls back at once (best effort: it may be gone).
            if !matches!(e, ReceiveError::Wire(WireError::PeerAborted(_))) {
                let _ = write_message(&mut stream, &Message::Failed(e.to_string()));
            }
            Err(e)
        }
    }
}

/// Takes the guest in; returns the VM ready to run once the source was told so.
fn incoming(
    devices: &DeviceConfig,
    mobility: &mip::Mobility,
    stream: &mut Stream,
    console: Box<dyn Write + Send>,
) -> Result<Arrival, ReceiveError> {
    let start = Instant::now();
    // Ready before the guest pauses: the key read, the socket open, the care-of known.
    let mut registrar = match mobility {
        mip::Mobility::None => None,
        mip::Mobility::Mip(setting) => Some(Registrar::new(setting)?),
        mip::Mobility::Nat(_) => {
            return Err(ReceiveError::MobilityUnsupported(
                "--mobility nat: is not implemented yet; use mip:... or none".into(),
            ));
        }
    };
    let away = devices.net.as_ref().is_some_and(|n| n.mip);
    let hello = match read_message(stream)? {
        Message::Hello(h) => h,
        other => {
            return Err(ReceiveError::Refused(format!(
                "the stream starts with {} instead of a hello",
                other.name()
            )));
        }
    };
    let size = MemSize::new(hello.ram_size)
        .map_err(|e| ReceiveError::Refused(format!("the source's RAM size: {e}")))?
        .bytes();
    if hello.vcpus != 1 {
        return Err(ReceiveError::Refused(format!(
            "the source has {} vCPUs; host-vmm runs one",
            hello.vcpus
        )));
    }
    // Waiting for a source has no bound; a source that goes quiet mid-move does: no frame
    // for this long and the move is given up (nothing runs here).
    stream
        .set_read_timeout(Some(STALL_TIMEOUT))
        .map_err(WireError::Io)?;
    write_message(stream, &Message::Accept)?;
    let ram = match hello.mode {
        Mode::PreCopy => GuestRam::new(size).map_err(vmm::Error::from)?,
        Mode::ZeroCopy => {
            let unix = stream.unix().ok_or_else(|| {
                ReceiveError::Refused("zero-copy needs a unix: connection".into())
            })?;
            let (fd, _tag) = super::fd::recv_fd(unix)?;
            GuestRam::from_memfd(File::from(fd), size).map_err(vmm::Error::from)?
        }
    };
    let mut vmm = Vmm::for_incoming(devices, ram, console)?;
    if hello.mode == Mode::ZeroCopy {
        write_message(stream, &Message::Ready)?;
    }
    log::info!(
        "migration: VM ready for the incoming guest after {:?}",
        start.elapsed()
    );
    let mut state = None;
    let mut pages = 0u64;
    loop {
        match read_message(stream)?.into_result()? {
            Message::Pages(batch) => {
                if hello.mode == Mode::ZeroCopy {
                    return Err(ReceiveError::Refused(
                        "a zero-copy stream carries no pages".into(),
                    ));
                }
                batch.validate(size)?;
                let mem = vmm.machine().ram.memory();
                for (pfn, data) in batch.iter() {
                    mem.write_slice(data, GuestAddress(pfn * PAGE_SIZE))
                        .map_err(|e| ReceiveError::Refused(format!("page {pfn:#x}: {e}")))?;
                }
                pages += batch.len() as u64;
            }
            Message::State(bytes) => {
                state = Some(decode_state::<MachineState>(&bytes)?);
            }
            // Everything before it was read: say so (the source pauses the guest next).
            Message::Sync => write_message(stream, &Message::Synced)?,
            Message::Done => break,
            other => {
                return Err(ReceiveError::Refused(format!(
                    "unexpected {} in the migration stream",
                    other.name()
                )));
            }
        }
    }
    let state = state.ok_or_else(|| {
        ReceiveError::Refused("the stream ended without the machine state".into())
    })?;
    // The source is paused now: the home agent learns where the guest runs (or that it is
    // home) before it runs here; no acknowledgment means no move (the source resumes it).
    let granted = match registrar.as_mut() {
        Some(r) if away => Some(r.register(registration::MOVE_BOUND)?),
        Some(r) => {
            r.deregister(registration::MOVE_BOUND)?;
            None
        }
        None => None,
    };
    if let (Some(g), Some(r)) = (granted, &registrar) {
        log::info!(
            "migration: home agent binds the guest to care-of {} for {} s (took {:?})",
            r.care_of(),
            g.lifetime,
            g.took
        );
    }
    // Device I/O stays parked from the restore until the source has let go: until then the
    // source may still resume the guest, and with zero-copy it shares these very pages.
    vmm.machine()
        .io()
        .pause()
        .map_err(|e| ReceiveError::Refused(format!("cannot pause device I/O: {e}")))?;
    vmm.restore(&state)
        .map_err(|e| ReceiveError::Refused(format!("cannot restore the guest here: {e}")))?;
    // The pages written above went through the host-write bitmap; this VM starts clean.
    vmm.machine().ram.take_host_dirty();
    write_message(stream, &Message::Running)?;
    vmm.machine().io().resume();
    // Wall-clock seconds, so a reader can line the resume up with `ping -D` stamps.
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    log::info!(
        "migration: guest received ({pages} pages) after {:?}; running (resumed at {epoch:.6})",
        start.elapsed()
    );
    // The guest runs here whatever happens now: a refresher that cannot start is a warning
    // (the binding lasts its lifetime).
    let refresher = match (granted, registrar) {
        (Some(g), Some(r)) => Refresher::start(r, g)
            .map_err(|e| log::warn!("roaming: cannot keep the binding refreshed: {e}"))
            .ok(),
        _ => None,
    };
    Ok(Arrival { vmm, refresher })
}
