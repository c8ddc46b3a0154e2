//! host-vmm's HTTP API (`--api-socket PATH`): Cloud Hypervisor's REST endpoints, and Roam's,
//! as HTTP/1.1 with JSON bodies over a Unix socket.
//!
//! - [`http`]: the request parser and response writer (bounded, incremental, never panics);
//! - [`routes`]: method and path to [`routes::Endpoint`] ([`routes::ROUTES`]);
//! - [`types`]: the JSON bodies (serde), and their checks into the VMM's configuration;
//! - [`server`]: [`ApiServer`], an accept thread and one thread per connection, handing
//!   each request to a [`Backend`] (the VMM implements it);
//! - [`client`]: [`client::call`], for `host-vmm ctl` and xtask.
//!
//! ```text
//! client ──unix socket──▶ server ──http::RequestReader──▶ routes::find ──▶ ApiRequest::parse
//!                            ◀──────────── Response ◀────────── Backend::handle ◀──┘
//! ```
//!
//! host-vmm/openapi.yaml documents every route; a unit test holds it to [`routes::ROUTES`]
//! and to [`ApiRequest::parse`].

pub mod client;
pub mod http;
pub mod routes;
pub mod server;
pub mod types;

#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use routes::{Endpoint, ROUTES, Route};
pub use server::{ApiServer, BindError, ServerConfig, bind};

use serde::de::DeserializeOwned;

/// One request, parsed and checked, as the backend receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    /// `vmm.ping`: answer a [`types::VmmPingResponse`].
    VmmPing,
    /// `vmm.shutdown`: host-vmm exits (after answering).
    VmmShutdown,
    /// `vm.create`.
    VmCreate(types::VmConfig),
    /// `vm.boot`.
    VmBoot,
    /// `vm.delete`.
    VmDelete,
    /// `vm.info`: answer a [`types::VmInfo`].
    VmInfo,
    /// `vm.counters`: answer a [`types::VmCounters`].
    VmCounters,
    /// `vm.pause`.
    VmPause,
    /// `vm.resume`.
    VmResume,
    /// `vm.shutdown`.
    VmShutdown,
    /// `vm.send-migration`: start the move and answer at once (progress is polled).
    VmSendMigration(types::SendMigrationData),
    /// `vm.receive-migration`.
    VmReceiveMigration(types::ReceiveMigrationData),
    /// `vm.migration-progress`: answer a [`types::MigrationProgress`].
    VmMigrationProgress,
    /// `vm.cancel-migration`.
    VmCancelMigration,
    /// `roam.nic`: answer a [`types::NicStatus`].
    RoamNic(types::NicRequest),
    /// `roam.vf`: answer a [`types::VfStatus`].
    RoamVf(types::VfRequest),
}

impl ApiRequest {
    /// Builds the request for `endpoint` from its body: `None` when the request had no
    /// `Content-Length` (then a body endpoint answers 411), else the body's bytes. Bodies
    /// of endpoints that take none are ignored. This is the server's only way from bytes to
    /// a request, and the one the openapi test runs the spec's examples through.
    pub fn parse(endpoint: Endpoint, body: Option<&[u8]>) -> Result<ApiRequest, ApiError> {
        let body = || -> Result<&[u8], ApiError> {
            match body {
                None => Err(ApiError::new(
                    411,
                    format!(
                        "{endpoint} needs a JSON body sent with a Content-Length header \
                         (chunked bodies are not supported)"
                    ),
                )),
                Some(b) if b.iter().all(u8::is_ascii_whitespace) => Err(ApiError::bad_request(
                    format!("{endpoint} needs a JSON body; the request's body is empty"),
                )),
                Some(b) => Ok(b),
            }
        };
        Ok(match endpoint {
            Endpoint::VmmPing => ApiRequest::VmmPing,
            Endpoint::VmmShutdown => ApiRequest::VmmShutdown,
            Endpoint::VmCreate => {
                let config: types::VmConfig = json(endpoint, body()?)?;
                checked(endpoint, config.to_run_config())?;
                ApiRequest::VmCreate(config)
            }
            Endpoint::VmBoot => ApiRequest::VmBoot,
            Endpoint::VmDelete => ApiRequest::VmDelete,
            Endpoint::VmInfo => ApiRequest::VmInfo,
            Endpoint::VmCounters => ApiRequest::VmCounters,
            Endpoint::VmPause => ApiRequest::VmPause,
            Endpoint::VmResume => ApiRequest::VmResume,
            Endpoint::VmShutdown => ApiRequest::VmShutdown,
            Endpoint::VmSendMigration => {
                let data: types::SendMigrationData = json(endpoint, body()?)?;
                checked(endpoint, data.to_options())?;
                ApiRequest::VmSendMigration(data)
            }
            Endpoint::VmReceiveMigration => {
                let data: types::ReceiveMigrationData = json(endpoint, body()?)?;
                checked(endpoint, data.to_plan())?;
                ApiRequest::VmReceiveMigration(data)
            }
            Endpoint::VmMigrationProgress => ApiRequest::VmMigrationProgress,
            Endpoint::VmCancelMigration => ApiRequest::VmCancelMigration,
            Endpoint::RoamNic => {
                let request: types::NicRequest = json(endpoint, body()?)?;
                checked(endpoint, request.validate())?;
                ApiRequest::RoamNic(request)
            }
            Endpoint::RoamVf => ApiRequest::RoamVf(json(endpoint, body()?)?),
        })
    }

    /// The endpoint this request came to.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            ApiRequest::VmmPing => Endpoint::VmmPing,
            ApiRequest::VmmShutdown => Endpoint::VmmShutdown,
            ApiRequest::VmCreate(_) => Endpoint::VmCreate,
            ApiRequest::VmBoot => Endpoint::VmBoot,
            ApiRequest::VmDelete => Endpoint::VmDelete,
            ApiRequest::VmInfo => Endpoint::VmInfo,
            ApiRequest::VmCounters => Endpoint::VmCounters,
            ApiRequest::VmPause => Endpoint::VmPause,
            ApiRequest::VmResume => Endpoint::VmResume,
            ApiRequest::VmShutdown => Endpoint::VmShutdown,
            ApiRequest::VmSendMigration(_) => Endpoint::VmSendMigration,
            ApiRequest::VmReceiveMigration(_) => Endpoint::VmReceiveMigration,
            ApiRequest::VmMigrationProgress => Endpoint::VmMigrationProgress,
            ApiRequest::VmCancelMigration => Endpoint::VmCancelMigration,
            ApiRequest::RoamNic(_) => Endpoint::RoamNic,
            ApiRequest::RoamVf(_) => Endpoint::RoamVf,
        }
    }
}

/// Decodes a JSON body, naming the field that does not fit.
fn json<T: DeserializeOwned>(endpoint: Endpoint, body: &[u8]) -> Result<T, ApiError> {
    // serde takes an array for a struct too (fields by position): every body is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(format!(
            "invalid {endpoint} body: expected a JSON object {{...}}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // The root's path is "."; a missing field is named by serde's message itself.
        if path == "." {
            ApiError::bad_request(format!("invalid {endpoint} body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid {endpoint} body: `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request(format!(
            "invalid {endpoint} body: {e} (one JSON value expected)"
        ))
    })?;
    Ok(value)
}

/// A body's semantic check, as a 400 naming the field.
fn checked<T>(endpoint: Endpoint, check: Result<T, types::FieldError>) -> Result<T, ApiError> {
    check.map_err(|e| ApiError::bad_request(format!("invalid {endpoint} body: {e}")))
}

/// An error answer: an HTTP status (4xx or 5xx) and a message, sent as
/// `{"error": "message"}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, in words.
    pub message: String,
}

impl ApiError {
    /// Any status and message.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// 404: the thing asked about does not exist (e.g. `vm.info` before `vm.create`).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }

    /// 409: not in this state (e.g. `vm.pause` on a VM that is not running).
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(409, message)
    }

    /// 500: the VMM failed to do it.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, message)
    }

    /// 501: host-vmm does not do this (e.g. no VF on this VM's host).
    pub fn not_implemented(message: impl Into<String>) -> ApiError {
        ApiError::new(501, message)
    }

    /// 503: not now (busy, or the guest agent is not up yet).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, message)
    }

    /// 504: something host-vmm waited on (the guest agent) did not answer in time.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, message)
    }
}

/// What the server hands requests to; the VMM implements it.
pub trait Backend: Send + Sync + 'static {
    /// Carries out one request; Ok(None) = 204 No Content, Ok(Some(json)) = 200 with that body.
    fn handle(&self, request: ApiRequest) -> Result<Option<serde_json::Value>, ApiError>;

    /// Called on the same thread once the answer to a request `handle` carried out has been
    /// written (or the client is gone), with its status: where `vmm.shutdown` can end the
    /// process without cutting its own 204 short. Does nothing by default.
    fn answered(&self, endpoint: Endpoint, status: u16) {
        let _ = (endpoint, status);
    }
}
