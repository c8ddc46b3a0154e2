//! `host-vmm ctl PATH COMMAND...`: a thin client of the API. Each command is one API call
//! (a migration also polls its progress until it ends); the answer prints as the text
//! lines the command has always printed (tests and scripts parse them).

use super::command::{Command, format_active, format_service, format_status, format_vf};
use crate::api::client::{self, ClientError};
use crate::api::types::{
    MigrationProgress, MigrationState, NicAction, NicAnswer, NicRequest, SendMigrationData,
    VfAction, VfRequest, VfStatus,
};
use agent_proto::Nic;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long one request may take (a guest-agent request has 5 s).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How often a migration's progress is polled.
const POLL: Duration = Duration::from_millis(20);
/// The longest a migration may go without finishing before `ctl migrate` gives up
/// watching (the move itself goes on; `ctl progress` follows it).
const MIGRATION_WATCH: Duration = Duration::from_secs(600);

/// Why a `ctl` command failed (printed as one line after `host-vmm: error:`).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The API call failed (socket, timeout, or an error answer).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The answer was not what the command expects.
    #[error("unexpected answer from host-vmm: {0}")]
    Answer(String),
    /// The migration ended without moving the guest.
    #[error("migration failed, the guest runs here: {0}")]
    Migration(String),
}

fn put<T: DeserializeOwned>(
    socket: &Path,
    endpoint: &str,
    body: Option<serde_json::Value>,
) -> Result<Option<T>, CtlError> {
    let answer = client::call_ok(socket, "PUT", endpoint, body.as_ref(), TIMEOUT)?;
    decode(answer)
}

fn get<T: DeserializeOwned>(socket: &Path, endpoint: &str) -> Result<T, CtlError> {
    let answer = client::call_ok(socket, "GET", endpoint, None, TIMEOUT)?;
    decode(answer)?.ok_or_else(|| CtlError::Answer(format!("{endpoint} answered no body")))
}

fn decode<T: DeserializeOwned>(answer: Option<serde_json::Value>) -> Result<Option<T>, CtlError> {
    answer
        .map(|v| serde_json::from_value(v).map_err(|e| CtlError::Answer(e.to_string())))
        .transpose()
}

fn nic_request(action: NicAction, nic: Option<Nic>) -> serde_json::Value {
    let request = NicRequest { action, nic };
    serde_json::to_value(request).unwrap_or_default()
}

fn vf_request(action: VfAction) -> serde_json::Value {
    serde_json::to_value(VfRequest { action }).unwrap_or_default()
}

/// Carries out `command` on the host-vmm at `socket`; returns what to print on stdout.
/// `progress` gets a migration's progress lines as they come.
pub fn run(
    socket: &Path,
    command: &Command,
    progress: &mut dyn FnMut(&str),
) -> Result<String, CtlError> {
    let status = |s: Option<NicAnswer>| {
        s.ok_or_else(|| CtlError::Answer("roam.nic answered no status".into()))
    };
    let vf = |s: Option<VfStatus>| {
        s.map(format_vf)
            .ok_or_else(|| CtlError::Answer("roam.vf answered no state".into()))
    };
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    Ok(match command {
        Command::Switch(nic) => {
            let s = status(put(
                socket,
                "roam.nic",
                Some(nic_request(NicAction::Switch, Some(*nic))),
            )?)?;
            format_active(s.status.active)
        }
        Command::Status => {
            let s = status(put(
                socket,
                "roam.nic",
                Some(nic_request(NicAction::Status, None)),
            )?)?;
            let mut out = format_status(&s.status);
            if let Some(service) = s.service {
                out.push_str(&format_service(&service));
            }
            out
        }
        Command::AgentPrepare => {
            let s = status(put(
                socket,
                "roam.nic",
                Some(nic_request(NicAction::Prepare, None)),
            )?)?;
            format!(
                "released_vf={}\n{}",
                yes_no(s.released_vf.unwrap_or(false)),
                format_status(&s.status)
            )
        }
        Command::AgentResumed => {
            let s = status(put(
                socket,
                "roam.nic",
                Some(nic_request(NicAction::Resumed, None)),
            )?)?;
            format!(
                "vf_attached={} announced={}\n{}",
                yes_no(s.vf_attached.unwrap_or(false)),
                yes_no(s.announced.unwrap_or(false)),
                format_status(&s.status)
            )
        }
        Command::VfLink { up: true } => {
            vf(put(socket, "roam.vf", Some(vf_request(VfAction::LinkUp)))?)?
        }
        Command::VfLink { up: false } => vf(put(
            socket,
            "roam.vf",
            Some(vf_request(VfAction::LinkDown)),
        )?)?,
        Command::VfRemove => vf(put(socket, "roam.vf", Some(vf_request(VfAction::Remove)))?)?,
        Command::VfAdd => vf(put(socket, "roam.vf", Some(vf_request(VfAction::Add)))?)?,
        Command::Info => pretty(get(socket, "vm.info")?),
        Command::Counters => pretty(get(socket, "vm.counters")?),
        Command::Progress => pretty(get(socket, "vm.migration-progress")?),
        Command::Cancel => {
            put::<serde_json::Value>(socket, "vm.cancel-migration", None)?;
            String::new()
        }
        Command::Pause => {
            put::<serde_json::Value>(socket, "vm.pause", None)?;
            String::new()
        }
        Command::Resume => {
            put::<serde_json::Value>(socket, "vm.resume", None)?;
            String::new()
        }
        Command::Migrate {
            target,
            downtime_ms,
            zero_copy,
            tls_dir,
            insecure_plain_tcp,
            force,
        } => {
            let data = SendMigrationData {
                destination_url: target.to_string(),
                local: *zero_copy,
                downtime_ms: *downtime_ms,
                tls_dir: tls_dir.clone(),
                insecure_plain_tcp: *insecure_plain_tcp,
                force: *force,
            };
            let body = serde_json::to_value(data).unwrap_or_default();
            put::<serde_json::Value>(socket, "vm.send-migration", Some(body))?;
            watch(socket, progress)?
        }
    })
}

/// Polls a migration until it ends; returns its summary line.
fn watch(socket: &Path, progress: &mut dyn FnMut(&str)) -> Result<String, CtlError> {
    let deadline = Instant::now() + MIGRATION_WATCH;
    let mut seen = 0;
    loop {
        let p: MigrationProgress = get(socket, "vm.migration-progress")?;
        for line in p.log.iter().skip(seen) {
            progress(&format!("migration: {line}"));
        }
        seen = seen.max(p.log.len());
        match p.state {
            MigrationState::Running | MigrationState::None => {}
            MigrationState::Succeeded => {
                return p
                    .summary
                    .map(|s| s + "\n")
                    .ok_or_else(|| CtlError::Answer("a finished move without its summary".into()));
            }
            MigrationState::Failed | MigrationState::Cancelled => {
                return Err(CtlError::Migration(
                    p.error.unwrap_or_else(|| "no reason given".into()),
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(CtlError::Answer(format!(
                "the migration has not ended after {MIGRATION_WATCH:?}; follow it with `host-vmm ctl PATH progress`"
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
