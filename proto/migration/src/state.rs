//! The machine-state payload: an inner version, then the state structs in postcard.

use super::WireError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The layout of the machine-state structs (host-vmm's `vmm::MachineState` and
/// everything inside it). Bump it whenever any struct inside the state changes shape (a
/// field added, removed, reordered or retyped): postcard is not self-describing, so an
/// unbumped change would decode as garbage instead of being refused.
pub const STATE_VERSION: u32 = 3;

/// Encodes `state` as [`STATE_VERSION`] (`u32` LE) followed by its postcard bytes.
pub fn encode_state<T: Serialize + ?Sized>(state: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_extend(state, STATE_VERSION.to_le_bytes().to_vec()).map_err(WireError::State)
}

/// Decodes what [`encode_state`] wrote, refusing another state version, bytes that do not
/// decode as `T`, and trailing bytes. The result is plain data: validate it when turning it
/// into live devices. Never panics, whatever `bytes` holds.
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (version, body) = bytes.split_first_chunk::<4>().ok_or(WireError::Truncated {
        what: "the machine state's version",
        needed: 4,
        got: bytes.len(),
    })?;
    let version = u32::from_le_bytes(*version);
    if version != STATE_VERSION {
        return Err(WireError::UnsupportedStateVersion {
            got: version,
            supported: STATE_VERSION,
        });
    }
    let (state, rest) = postcard::take_from_bytes(body).map_err(WireError::State)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} bytes left over after the machine state",
            rest.len()
        )));
    }
    Ok(state)
}
