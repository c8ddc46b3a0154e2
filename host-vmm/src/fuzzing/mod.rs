//! Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz`): each takes arbitrary
//! bytes, drives one of host-vmm's hostile-input surfaces with them, and returns. None may
//! panic, hang or allocate without bound, whatever the bytes hold; where a property is cheap
//! to state it is asserted too (a device must accept its own saved state, a parsed request
//! must re-parse to itself).
//!
//! - [`http_request`]: the API's HTTP/1.1 reader, router and JSON bodies (`api`).
//! - [`machine_state`]: a migration's State payload as the destination decodes it
//!   (`vmm::MachineState`), then every device section restored into models without KVM.
//! - [`virtio_net`], [`virtio_console`]: the virtio PCI transport and the device behind it
//!   over guest memory the input writes (descriptor tables, rings, buffers), kicked, fed
//!   from the host side, migrated.
//! - [`ixgbevf`]: the VF's registers, mailbox and descriptor rings the same way.
//! - [`agent_host`]: host-vmm's end of the guest-agent protocol (`control::agent`) reading
//!   what a guest sends back.
//!
//! The stream decoder (`proto/migration`) and the agent protocol (`proto/agent`, the guest
//! agent in `migration-client`) are pure crates the fuzz targets call directly. [`seeds`]
//! makes each target's seed corpus from real encodings. Nothing here runs in host-vmm
//! itself; it lives in the library so it builds and is tested with it (a crash the fuzzer
//! finds becomes a unit test in `tests.rs`).

mod devices;
mod input;
mod seeds;
#[cfg(test)]
mod tests;

pub use devices::{ixgbevf, virtio_console, virtio_net};
pub use seeds::{TARGETS, seeds};

use crate::api::http::{HttpError, Limits, Poll, RequestReader, Response, parse_response_head};
use crate::api::{ApiRequest, routes};
use crate::control::agent::AgentLink;
use crate::devices::virtio::console;
use crate::vmm::MachineState;
use agent_proto::Request;
use input::Input;
use std::time::Duration;

/// Most requests one input is read as (a pipeline of them).
const MAX_REQUESTS: usize = 64;

/// The API server's request path: bytes in pieces (the first byte sets the piece size) into
/// the reader, each whole request routed and its body parsed; errors turned into responses
/// as the server does. The same bytes also go through the client's response-head parser.
pub fn http_request(data: &[u8]) {
    let mut input = Input::new(data);
    let piece = usize::from(input.u8()).max(1);
    let rest = input.rest();
    let _ = parse_response_head(rest);
    let mut reader = RequestReader::new(Limits::default());
    let mut requests = 0;
    'pieces: for chunk in rest.chunks(piece) {
        reader.push(chunk);
        loop {
            match reader.poll() {
                Ok(Poll::Ready(request)) => {
                    requests += 1;
                    check_request(&request);
                    if requests >= MAX_REQUESTS {
                        break 'pieces;
                    }
                }
                Ok(Poll::NeedMore { .. }) => break,
                Err(e) => {
                    respond_to(&e);
                    break 'pieces;
                }
            }
        }
    }
}

/// What the server does with a parsed request, and the round trip its writer promises.
fn check_request(request: &crate::api::http::Request) {
    match routes::find(&request.method, &request.path) {
        Ok(endpoint) => {
            if let Err(e) = ApiRequest::parse(endpoint, request.body.as_deref()) {
                let _ = Response::error(e.status, &e.message).to_bytes(true, request.version);
            }
        }
        Err(e) => {
            let _ = Response::error(404, &e.to_string()).to_bytes(false, request.version);
        }
    }
    let mut again = RequestReader::new(Limits {
        max_head: usize::MAX,
        max_body: usize::MAX,
    });
    again.push(&request.to_bytes());
    match again.poll() {
        Ok(Poll::Ready(back)) => assert_eq!(&back, request, "a request re-parses to itself"),
        other => panic!("a parsed request does not re-parse: {other:?}"),
    }
}

fn respond_to(e: &HttpError) {
    let _ = Response::error(e.status(), &e.to_string())
        .to_bytes(false, crate::api::http::Version::Http11);
}

/// A State payload as the destination reads it: the envelope, `MachineState`, then each
/// device section decoded and restored into a fresh device model (as the device manager
/// does, without KVM: the VM and vCPU parts are plain data KVM itself checks).
pub fn machine_state(data: &[u8]) {
    let Ok(state) = migration_wire::decode_state::<MachineState>(data) else {
        return;
    };
    // Whatever decodes must encode again and decode to the same state (the input itself may
    // use longer varints than the encoder writes, so compare the second encoding).
    let again = migration_wire::encode_state(&state).expect("a decoded state encodes");
    let back: MachineState =
        migration_wire::decode_state(&again).expect("an encoded state decodes");
    let twice = migration_wire::encode_state(&back).expect("a decoded state encodes");
    assert_eq!(again, twice, "a state survives a round trip");
    let _ = devices::restore_sections(&state.devices);
}

/// host-vmm's end of the agent protocol: the input (after a piece-size byte) is what the
/// guest sends, in pieces; after each piece the host asks its next request (sequence numbers
/// 1, 2, ...) and reads whatever replies, late replies and garbage have arrived, without
/// waiting.
pub fn agent_host(data: &[u8]) {
    let mut input = Input::new(data);
    let piece = usize::from(input.u8()).max(1);
    let (guest, host) = console::port().expect("an eventfd");
    let mut link = AgentLink::new(host, Duration::ZERO);
    let requests = [
        Request::Status,
        Request::Prepare,
        Request::Resumed,
        Request::Switch(agent_proto::Nic::Virtio),
    ];
    let mut sent = Vec::new();
    for (i, chunk) in input.rest().chunks(piece).enumerate() {
        guest.deliver_from_guest(chunk);
        let _ = link.call(requests[i % requests.len()]);
        sent.clear();
        guest.take_for_guest(&mut sent);
    }
}
