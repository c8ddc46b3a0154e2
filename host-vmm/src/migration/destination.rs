//! The destination of a migration: wait for one source, build a VM with this host-vmm's
//! own devices while the guest still runs there, take the pages and the machine state, tell
//! the source the guest runs here, and hand the VM back ready to run. What follows the
//! arrival (announce, VF, guest agent) is the caller's.

use super::admission::{self, Admitted};
use super::handover::{self, Handover, MAX_FORWARDED};
use super::target::{Address, AddressError, Listening, Security, Stream};
use crate::config::{DeviceConfig, MemSize};
use crate::memory::{GuestRam, PAGE_SIZE};
use crate::roaming::registration::{
    self, Granted, Refresher, Registrar, RegistrationError, Target,
};
use crate::vmm::{self, MachineState, Vmm};
use migration_wire::{Hello, Message, Mode, WireError, decode_state, read_message, write_message};
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
    /// An edge did not take the guest's new location.
    #[error("network paging: {0}")]
    Paging(RegistrationError),
    /// A mobility setting this host-vmm cannot carry out.
    #[error("{0}")]
    MobilityUnsupported(String),
}

/// A guest that arrived: its VM, ready to run, (away from home) what keeps its bindings
/// with the home agent or the edges alive while it runs here, and the stream the source
/// forwards the guest's frames on until the guest is announced here.
#[derive(Debug)]
pub struct Arrival {
    /// The VM.
    pub vmm: Vmm,
    /// Refresh the bindings; drop them when the guest stops running here.
    pub refreshers: Vec<Refresher>,
    /// Finish it once the guest is announced ([`Handover::finish`]).
    pub handover: Handover,
}

/// Who learns where the guest is, per its mobility setting.
enum Mover {
    /// Nobody.
    None,
    /// Its Mobile IP home agent.
    Mip(Registrar),
    /// The edges of network paging: this site's own (registered before the guest pauses;
    /// away from home only) and the client edges (switched while it is paused).
    Nat {
        site: Option<Registrar>,
        edges: Vec<Registrar>,
    },
}

/// What a move registered before it could fail: taken back if it does.
#[derive(Default)]
struct Told {
    site: Option<Registrar>,
    /// Frames for the guest read here after the state came: the source's, if it fails.
    frames: Vec<Vec<u8>>,
}

impl Told {
    /// Removes the site edge's entry of a move that did not happen (best effort, bounded:
    /// the source already runs the guest again; an entry left expires with its lifetime).
    fn take_back(&mut self) {
        if let Some(mut site) = self.site.take() {
            match site.withdraw(WITHDRAW_BOUND) {
                Ok(_) => log::info!(
                    "migration: the site edge {} no longer maps the guest to {}",
                    site.target().agent,
                    site.care_of()
                ),
                Err(e) => log::warn!("migration: taking the site edge's entry back: {e}"),
            }
        }
    }
}

/// How long taking back a site edge's entry may take.
const WITHDRAW_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `each` on every registrar at once (one round trip for all, not one each); the
/// first error, if any, once all have answered or given up.
fn all_at_once(
    registrars: &mut [Registrar],
    each: impl Fn(&mut Registrar) -> Result<Granted, RegistrationError> + Sync,
) -> Result<Vec<Granted>, RegistrationError> {
    if let [one] = registrars {
        return each(one).map(|g| vec![g]);
    }
    let each = &each;
    std::thread::scope(|s| {
        let running: Vec<_> = registrars
            .iter_mut()
            .map(|r| s.spawn(move || each(r)))
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(RegistrationError::Socket {
                        role: "edge",
                        agent: std::net::Ipv4Addr::UNSPECIFIED,
                        error: std::io::Error::other("the registration thread panicked"),
                    })
                })
            })
            .collect()
    })
}

impl Mover {
    /// The registrars `mobility` asks for, for a guest that will run away from home
    /// (`away`) or at home: keys read, sockets open.
    fn new(mobility: &mip::Mobility, away: bool) -> Result<Mover, ReceiveError> {
        Ok(match mobility {
            mip::Mobility::None => Mover::None,
            mip::Mobility::Mip(setting) => Mover::Mip(Registrar::new(Target::home_agent(setting))?),
            mip::Mobility::Nat(setting) => {
                if away && setting.location.is_none() {
                    return Err(ReceiveError::MobilityUnsupported(
                        "--mobility nat: away from home needs loc= (the guest's location \
                         address at this site)"
                            .into(),
                    ));
                }
                let open = |edge| {
                    Registrar::new(Target::edge(setting, edge)).map_err(ReceiveError::Paging)
                };
                // At home, every edge named (this site's too) hears that the guest is home.
                let (site, more) = match (away, setting.site) {
                    (true, Some(site)) => (Some(open(site)?), None),
                    (false, Some(site)) => (None, Some(site)),
                    (_, None) => (None, None),
                };
                let edges = setting
                    .edges
                    .iter()
                    .copied()
                    .chain(more)
                    .map(open)
                    .collect::<Result<Vec<_>, _>>()?;
                Mover::Nat { site, edges }
            }
        })
    }
}

/// Starts listening on `address`, protected by `security` (so a source may connect as soon
/// as this returns).
pub fn listen(address: &Address, security: Security) -> Result<Listening, ReceiveError> {
    Ok(address.listen(security)?)
}

/// Checks a Hello: a valid RAM size, at most `max_mem` bytes if given, one vCPU. Returns
/// the RAM size. Nothing is allocated before this passes.
pub fn check_hello(hello: &Hello, max_mem: Option<u64>) -> Result<u64, String> {
    let size = MemSize::new(hello.ram_size).map_err(|e| format!("the source's RAM size: {e}"))?;
    if let Some(max) = max_mem
        && size.bytes() > max
    {
        return Err(format!(
            "the guest has {size} of RAM; this destination takes at most {max} bytes (--max-mem)"
        ));
    }
    if hello.vcpus != 1 {
        return Err(format!(
            "the source has {} vCPUs; host-vmm runs one",
            hello.vcpus
        ));
    }
    Ok(size.bytes())
}

/// Waits on `listening` for the source (see [`admission`]: peers that fail to
/// authenticate, send garbage, stay silent or send a Hello [`check_hello`] refuses, with
/// `max_mem`, are dropped and the wait goes on) and takes its guest in with this side's
/// `devices` (the source's set: same NICs, same MACs; TAPs may differ); with `mobility`,
/// tells its home agent where it is before it runs here (or that it is home). Returns the
/// VM ready to run.
pub fn receive(
    listening: Listening,
    devices: &DeviceConfig,
    mobility: &mip::Mobility,
    max_mem: Option<u64>,
    console: Box<dyn Write + Send>,
) -> Result<Arrival, ReceiveError> {
    let Admitted {
        mut stream, hello, ..
    } = admission::admit(&listening, move |h| check_hello(h, max_mem).map(|_| ()))
        .map_err(ReceiveError::Accept)?;
    drop(listening);
    let mut told = Told::default();
    match incoming(devices, mobility, &mut stream, &hello, console, &mut told) {
        Ok((vmm, refreshers)) => Ok(Arrival {
            vmm,
            refreshers,
            handover: Handover::new(stream),
        }),
        Err(e) => {
            // Tell the source why, so it rolls back at once (best effort: it may be gone),
            // after the frames read here for the guest, which it delivers after the rollback.
            if !matches!(e, ReceiveError::Wire(WireError::PeerAborted(_))) {
                handover::send_back(&mut stream, std::mem::take(&mut told.frames));
                let _ = write_message(&mut stream, &Message::Failed(e.to_string()));
                let _ = stream.flush();
            }
            stream.shutdown();
            told.take_back();
            Err(e)
        }
    }
}

/// Takes the guest in; returns the VM ready to run once the source was told so, and
/// what keeps its bindings refreshed.
fn incoming(
    devices: &DeviceConfig,
    mobility: &mip::Mobility,
    stream: &mut Stream,
    hello: &Hello,
    console: Box<dyn Write + Send>,
    told: &mut Told,
) -> Result<(Vmm, Vec<Refresher>), ReceiveError> {
    let start = Instant::now();
    let away = devices.net.as_ref().is_some_and(|n| n.mip || n.nat);
    // Ready before the guest pauses: the keys read, the sockets open, the care-of known.
    let mut mover = Mover::new(mobility, away)?;
    // This site's edge first, while the guest still runs at the source: its entry routes
    // nothing here until a client edge points at the location address, and a site edge
    // that does not answer stops the move before the guest ever pauses.
    let mut site_granted = None;
    if let Mover::Nat {
        site: site @ Some(_),
        ..
    } = &mut mover
        && let Some(mut r) = site.take()
    {
        let g = r
            .register(registration::MOVE_BOUND)
            .map_err(ReceiveError::Paging)?;
        log::info!(
            "migration: the site edge {} maps {} to {} (took {:?})",
            r.target().agent,
            r.target().home,
            r.care_of(),
            g.took
        );
        site_granted = Some(g);
        told.site = Some(r);
    }
    let size = check_hello(hello, None).map_err(ReceiveError::Refused)?;
    // Admitted within its deadline; from now on a source that goes quiet mid-move is given
    // up after this long without a frame (nothing runs here).
    stream
        .set_read_timeout(Some(STALL_TIMEOUT))
        .map_err(WireError::Io)?;
    write_message(stream, &Message::Accept)?;
    stream.flush().map_err(WireError::Io)?;
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
        stream.flush().map_err(WireError::Io)?;
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
            Message::Sync => {
                write_message(stream, &Message::Synced)?;
                stream.flush().map_err(WireError::Io)?;
            }
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
    let mut bound = match take_over(&mut vmm, &state, &mut mover, away, stream) {
        Ok(bound) => bound,
        Err(e) => {
            // The source resumes the guest: what reached this side for it goes back.
            told.frames = vmm.machine().devices.take_net_frames(MAX_FORWARDED);
            return Err(e);
        }
    };
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
    let mut registered: Vec<(Registrar, Granted)> = Vec::new();
    match mover {
        Mover::Mip(r) if away => registered.extend(bound.pop().map(|g| (r, g))),
        Mover::Nat { edges, .. } if away => registered.extend(edges.into_iter().zip(bound)),
        _ => {}
    }
    if let (Some(site), Some(g)) = (told.site.take(), site_granted) {
        registered.push((site, g));
    }
    let refreshers = registered
        .into_iter()
        .filter_map(|(r, g)| {
            Refresher::start(r, g)
                .map_err(|e| log::warn!("roaming: cannot keep a binding refreshed: {e}"))
                .ok()
        })
        .collect();
    Ok((vmm, refreshers))
}

/// Restores `state` into `vmm`, tells the home agent or the edges where the guest runs
/// (per `mover`; `away` from home or not), sends Running and resumes device I/O. Returns
/// the bindings granted.
fn take_over(
    vmm: &mut Vmm,
    state: &MachineState,
    mover: &mut Mover,
    away: bool,
    stream: &mut Stream,
) -> Result<Vec<Granted>, ReceiveError> {
    // Device I/O stays parked from the restore until the source has let go: until then the
    // source may still resume the guest, and with zero-copy it shares these very pages.
    vmm.machine()
        .io()
        .pause()
        .map_err(|e| ReceiveError::Refused(format!("cannot pause device I/O: {e}")))?;
    vmm.restore(state)
        .map_err(|e| ReceiveError::Refused(format!("cannot restore the guest here: {e}")))?;
    // Restored first: a state this side refuses must not leave the guest's traffic pointed
    // here. The source is paused now: the home agent or the client edges learn where the
    // guest runs (or that it is home) before it runs here; no acknowledgment means no move
    // (the source resumes it).
    let mut bound = Vec::new();
    match mover {
        Mover::None => {}
        Mover::Mip(r) if away => {
            let g = r.register(registration::MOVE_BOUND)?;
            log::info!(
                "migration: home agent binds the guest to care-of {} for {} s (took {:?})",
                r.care_of(),
                g.lifetime,
                g.took
            );
            bound.push(g);
        }
        Mover::Mip(r) => {
            r.deregister(registration::MOVE_BOUND)?;
        }
        Mover::Nat { edges, .. } if away => {
            let t = Instant::now();
            bound = all_at_once(edges, |r| r.register(registration::MOVE_BOUND))
                .map_err(ReceiveError::Paging)?;
            log::info!(
                "migration: {} edge(s) map the guest to {} (took {:?})",
                edges.len(),
                edges
                    .first()
                    .map_or_else(String::new, |r| r.care_of().to_string()),
                t.elapsed()
            );
        }
        Mover::Nat { edges, .. } => {
            let t = Instant::now();
            all_at_once(edges, |r| r.deregister(registration::MOVE_BOUND))
                .map_err(ReceiveError::Paging)?;
            log::info!(
                "migration: {} edge(s) no longer translate: the guest is home (took {:?})",
                edges.len(),
                t.elapsed()
            );
        }
    }
    // The pages written above went through the host-write bitmap; this VM starts clean.
    vmm.machine().ram.take_host_dirty();
    write_message(stream, &Message::Running)?;
    stream.flush().map_err(WireError::Io)?;
    vmm.machine().io().resume();
    Ok(bound)
}
