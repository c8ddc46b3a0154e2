//! The API's requests carried out by the [`Controller`]: JSON bodies in, the controller's
//! answers out as the API's JSON types, its refusals as HTTP statuses (400 bad request,
//! 409 wrong state, 500 failed).

use super::controller::{Controller, Info, NicAnswer as AgentAnswer, NicOp, OpError, VfOp};
use super::job::{JobState, JobView};
use crate::api::types::{
    self, MigrationProgress, MigrationState, NicAction, NicAnswer, VfAction, VmState,
};
use crate::api::{ApiError, ApiRequest, Backend, Endpoint};
use crate::config::RunConfig;
use serde::Serialize;
use std::sync::Arc;

/// The features `vmm.ping` lists.
const FEATURES: &[&str] = &["migration", "zero-copy-migration", "roam-nic", "roam-vf"];

/// [`Backend`] over a [`Controller`].
#[derive(Debug)]
pub struct ApiBackend(Arc<Controller>);

impl ApiBackend {
    /// Serves `controller`.
    pub fn new(controller: Arc<Controller>) -> ApiBackend {
        ApiBackend(controller)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        match e {
            OpError::BadRequest(m) => ApiError::bad_request(m),
            OpError::Conflict(m) => ApiError::conflict(m),
            OpError::Failed(m) => ApiError::internal(m),
            OpError::Busy(m) => ApiError::unavailable(m),
        }
    }
}

fn json<T: Serialize>(value: &T) -> Result<Option<serde_json::Value>, ApiError> {
    serde_json::to_value(value)
        .map(Some)
        .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))
}

/// A request whose checks already passed in the parser.
fn checked<T>(r: Result<T, types::FieldError>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::bad_request(e.to_string()))
}

impl Backend for ApiBackend {
    /// The process ends only once `vmm.shutdown`'s own answer, or a finished move's
    /// result, is out.
    fn answered(&self, endpoint: Endpoint, status: u16) {
        match endpoint {
            Endpoint::VmmShutdown if status < 300 => self.0.exit(),
            // A move's result is out: a host-vmm whose guest moved away may now end.
            Endpoint::VmMigrationProgress => self.0.progress_answered(),
            _ => {}
        }
    }

    fn handle(&self, request: ApiRequest) -> Result<Option<serde_json::Value>, ApiError> {
        let c = &self.0;
        match request {
            ApiRequest::VmmPing => json(&types::VmmPingResponse::current(FEATURES)),
            ApiRequest::VmmShutdown => {
                c.shutdown_vmm()?;
                Ok(None)
            }
            ApiRequest::VmCreate(config) => {
                c.create(checked(config.to_run_config())?)?;
                Ok(None)
            }
            ApiRequest::VmBoot => {
                c.boot()?;
                Ok(None)
            }
            ApiRequest::VmDelete => {
                c.delete()?;
                Ok(None)
            }
            ApiRequest::VmInfo => json(&vm_info(c.info()?)),
            ApiRequest::VmCounters => json(&c.counters()?),
            ApiRequest::VmPause => {
                c.pause()?;
                Ok(None)
            }
            ApiRequest::VmResume => {
                c.resume()?;
                Ok(None)
            }
            ApiRequest::VmShutdown => {
                c.shutdown_vm()?;
                Ok(None)
            }
            ApiRequest::VmSendMigration(data) => {
                c.send_migration(checked(data.to_options())?)?;
                Ok(None)
            }
            ApiRequest::VmReceiveMigration(data) => {
                let plan = checked(data.to_plan())?;
                c.receive_migration(
                    &plan.listen,
                    &plan.protection,
                    plan.devices,
                    plan.mobility,
                    None,
                )?;
                Ok(None)
            }
            ApiRequest::VmMigrationProgress => json(&progress(c.migration_progress())),
            ApiRequest::VmCancelMigration => {
                c.cancel_migration()?;
                Ok(None)
            }
            ApiRequest::RoamNic(request) => {
                let op = match (request.action, request.nic) {
                    (NicAction::Switch, Some(nic)) => NicOp::Switch(nic),
                    (NicAction::Switch, None) => {
                        return Err(ApiError::bad_request(
                            "nic: `switch` needs \"vf\" or \"virtio\"",
                        ));
                    }
                    (NicAction::Status, _) => NicOp::Status,
                    (NicAction::Prepare, _) => NicOp::Prepare,
                    (NicAction::Resumed, _) => NicOp::Resumed,
                };
                json(&nic_status(c.nic(op)?))
            }
            ApiRequest::RoamVf(request) => {
                let op = match request.action {
                    VfAction::LinkUp => VfOp::Link(true),
                    VfAction::LinkDown => VfOp::Link(false),
                    VfAction::Remove => VfOp::Remove,
                    VfAction::Add => VfOp::Add,
                };
                json(&c.vf(op)?)
            }
        }
    }
}

fn nic_status(answer: AgentAnswer) -> NicAnswer {
    match answer {
        AgentAnswer::Status(s, service) => NicAnswer {
            service,
            ..NicAnswer::from(s)
        },
        AgentAnswer::Prepared(p) => NicAnswer {
            released_vf: Some(p.released_vf),
            ..NicAnswer::from(p.status)
        },
        AgentAnswer::Resumed(r) => NicAnswer {
            vf_attached: Some(r.vf_attached),
            announced: Some(r.announced),
            ..NicAnswer::from(r.status)
        },
    }
}

/// A [`RunConfig`] as the API's `VmConfig` (what `vm.create` took).
fn vm_config(config: Option<&RunConfig>, info: &Info) -> types::VmConfig {
    let nic = |tap: &str, nat: bool, mac: String| types::NetConfig {
        mip: tap.is_empty(),
        nat,
        tap: tap.to_owned(),
        mac: Some(mac),
    };
    types::VmConfig {
        payload: types::PayloadConfig {
            kernel: config.map_or_else(String::new, |c| c.image.display().to_string()),
            cmdline: config.map(|c| String::from_utf8_lossy(c.cmdline.as_bytes()).into_owned()),
        },
        memory: types::MemoryConfig {
            size: config.map_or(info.memory_bytes, |c| c.mem.bytes()),
        },
        net: info
            .devices
            .net
            .iter()
            .map(|n| nic(&n.tap, n.nat, n.mac.to_string()))
            .collect(),
        vf: info
            .devices
            .vf
            .as_ref()
            .map(|v| nic(&v.tap, false, v.mac.to_string())),
    }
}

fn vm_info(info: Info) -> types::VmInfo {
    let state = match info.state {
        "Created" => VmState::Created,
        "Receiving" => VmState::Receiving,
        "Paused" => VmState::Paused,
        "MigratedAway" => VmState::MigratedAway,
        "Running" => VmState::Running,
        _ => VmState::Shutdown,
    };
    types::VmInfo {
        config: vm_config(info.config.as_ref(), &info),
        state,
        memory_actual_size: info.memory_bytes,
    }
}

fn progress(job: Option<JobView>) -> MigrationProgress {
    let Some(j) = job else {
        return MigrationProgress::default();
    };
    let p = &j.progress;
    MigrationProgress {
        state: match j.state {
            JobState::Running => MigrationState::Running,
            JobState::Succeeded => MigrationState::Succeeded,
            JobState::Failed => MigrationState::Failed,
            JobState::Cancelled => MigrationState::Cancelled,
        },
        phase: p.phase.name().to_owned(),
        pass: p.pass,
        bytes_sent: p.bytes_sent,
        memory_bytes: p.memory_bytes,
        dirty_pages: p.dirty_pages,
        rate_mbps: p.rate / 1e6,
        predicted_pause_ms: p.predicted_pause.as_secs_f64() * 1e3,
        throttle_percent: p.throttle_percent,
        total_ms: Some(
            j.summary
                .as_ref()
                .map_or(j.elapsed, |s| s.total)
                .as_secs_f64()
                * 1e3,
        ),
        pause_ms: j.summary.as_ref().map(|s| s.pause.as_secs_f64() * 1e3),
        error: j.error.clone(),
        destination: j.destination.clone(),
        mode: j.mode.to_owned(),
        message: p.message.clone(),
        summary: j
            .summary
            .as_ref()
            .map(|s| s.to_string().trim_end().to_owned()),
        log: j.log,
        forced: p.forced.clone(),
    }
}
