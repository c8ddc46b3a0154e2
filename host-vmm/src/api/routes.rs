//! The router: which method and path under `/api/v1/` reach which [`Endpoint`].
//!
//! [`ROUTES`] is the one table; openapi.yaml is held to it by a unit test.

use std::fmt;

/// Where every route lives.
pub const PREFIX: &str = "/api/v1/";

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Reads state; no body.
    Get,
    /// Does something; maybe a JSON body.
    Put,
}

impl Method {
    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One API operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET vmm.ping`: host-vmm's version and pid.
    VmmPing,
    /// `PUT vmm.shutdown`: host-vmm exits.
    VmmShutdown,
    /// `PUT vm.create`: configure the VM (a `VmConfig` body).
    VmCreate,
    /// `PUT vm.boot`: start the created VM.
    VmBoot,
    /// `PUT vm.delete`: stop and forget the VM.
    VmDelete,
    /// `GET vm.info`: configuration and state.
    VmInfo,
    /// `GET vm.counters`: the devices' host-side counters.
    VmCounters,
    /// `PUT vm.pause`: stop the vCPU.
    VmPause,
    /// `PUT vm.resume`: run the paused vCPU again.
    VmResume,
    /// `PUT vm.shutdown`: stop the guest.
    VmShutdown,
    /// `PUT vm.send-migration`: start moving the guest (a `SendMigrationData` body).
    VmSendMigration,
    /// `PUT vm.receive-migration`: wait for a guest (a `ReceiveMigrationData` body).
    VmReceiveMigration,
    /// `GET vm.migration-progress`: the current or last migration.
    VmMigrationProgress,
    /// `PUT vm.cancel-migration`: stop a migration under way; the guest stays here.
    VmCancelMigration,
    /// `PUT roam.nic`: switch the guest's NIC or read its status (a `NicRequest` body).
    RoamNic,
    /// `PUT roam.vf`: act on the emulated VF (a `VfRequest` body).
    RoamVf,
}

impl Endpoint {
    /// Whether requests carry a JSON body (required: without one the request is refused).
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Endpoint::VmCreate
                | Endpoint::VmSendMigration
                | Endpoint::VmReceiveMigration
                | Endpoint::RoamNic
                | Endpoint::RoamVf
        )
    }

    /// The route's method and full path.
    pub fn route(self) -> &'static Route {
        // Every endpoint has exactly one route (a unit test checks it).
        ROUTES
            .iter()
            .find(|r| r.endpoint == self)
            .unwrap_or(&ROUTES[0])
    }

    /// The name after `/api/v1/`, e.g. `vm.info`.
    pub fn name(self) -> &'static str {
        self.route().name()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A method and path that reach an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The only method the path answers.
    pub method: Method,
    /// The full path, e.g. `/api/v1/vm.info`.
    pub path: &'static str,
    /// What it does.
    pub endpoint: Endpoint,
}

impl Route {
    /// The name after `/api/v1/`, e.g. `vm.info`.
    pub fn name(&self) -> &'static str {
        self.path.strip_prefix(PREFIX).unwrap_or(self.path)
    }
}

const fn route(method: Method, path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method,
        path,
        endpoint,
    }
}

/// Every route, in the order openapi.yaml lists them.
pub const ROUTES: &[Route] = &[
    route(Method::Get, "/api/v1/vmm.ping", Endpoint::VmmPing),
    route(Method::Put, "/api/v1/vmm.shutdown", Endpoint::VmmShutdown),
    route(Method::Put, "/api/v1/vm.create", Endpoint::VmCreate),
    route(Method::Put, "/api/v1/vm.boot", Endpoint::VmBoot),
    route(Method::Put, "/api/v1/vm.delete", Endpoint::VmDelete),
    route(Method::Get, "/api/v1/vm.info", Endpoint::VmInfo),
    route(Method::Get, "/api/v1/vm.counters", Endpoint::VmCounters),
    route(Method::Put, "/api/v1/vm.pause", Endpoint::VmPause),
    route(Method::Put, "/api/v1/vm.resume", Endpoint::VmResume),
    route(Method::Put, "/api/v1/vm.shutdown", Endpoint::VmShutdown),
    route(
        Method::Put,
        "/api/v1/vm.send-migration",
        Endpoint::VmSendMigration,
    ),
    route(
        Method::Put,
        "/api/v1/vm.receive-migration",
        Endpoint::VmReceiveMigration,
    ),
    route(
        Method::Get,
        "/api/v1/vm.migration-progress",
        Endpoint::VmMigrationProgress,
    ),
    route(
        Method::Put,
        "/api/v1/vm.cancel-migration",
        Endpoint::VmCancelMigration,
    ),
    route(Method::Put, "/api/v1/roam.nic", Endpoint::RoamNic),
    route(Method::Put, "/api/v1/roam.vf", Endpoint::RoamVf),
];

/// Why a request reached no endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No route has this path (404).
    #[error("no endpoint at `{0}`: the API's paths are /api/v1/NAME, e.g. /api/v1/vmm.ping")]
    NotFound(String),
    /// The path exists with another method (405, with `Allow`).
    #[error("{path} takes {allow}, not {method}")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The path.
        path: String,
        /// The method it takes.
        allow: Method,
    },
}

/// Finds the endpoint for `method` and `path` (the path without its query).
pub fn find(method: &str, path: &str) -> Result<Endpoint, RouteError> {
    let route = ROUTES
        .iter()
        .find(|r| r.path == path)
        .ok_or_else(|| RouteError::NotFound(shorten(path)))?;
    if route.method.as_str() != method {
        return Err(RouteError::MethodNotAllowed {
            method: shorten(method),
            path: route.path.to_owned(),
            allow: route.method,
        });
    }
    Ok(route.endpoint)
}

/// Client text quoted back is cut short, so an error stays one readable line.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_endpoint_has_one_route_under_the_prefix() {
        let mut seen = HashSet::new();
        let mut paths = HashSet::new();
        for r in ROUTES {
            assert!(r.path.starts_with(PREFIX), "{}", r.path);
            assert!(seen.insert(r.endpoint), "{:?} twice", r.endpoint);
            assert!(paths.insert(r.path), "{} twice", r.path);
            assert_eq!(r.endpoint.route(), r);
        }
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn find_answers_404_405_and_the_endpoint() {
        assert_eq!(find("GET", "/api/v1/vm.info"), Ok(Endpoint::VmInfo));
        assert_eq!(find("PUT", "/api/v1/roam.vf"), Ok(Endpoint::RoamVf));
        assert!(matches!(
            find("GET", "/api/v1/vm.nope"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            find("GET", "/vm.info"),
            Err(RouteError::NotFound(_))
        ));
        let e = find("PUT", "/api/v1/vm.info").unwrap_err();
        assert_eq!(
            e,
            RouteError::MethodNotAllowed {
                method: "PUT".into(),
                path: "/api/v1/vm.info".into(),
                allow: Method::Get
            }
        );
        assert_eq!(e.to_string(), "/api/v1/vm.info takes GET, not PUT");
    }
}
