//! The migration stream decoder (proto/migration): frames, messages, pages, the envelope.
//!
//! One frame from a byte slice, then the whole input read as a stream the way a destination
//! reads it, page batches checked against guest RAM, and the state envelope over a plain
//! serde type (host-vmm's own state is the machine_state target).

#![no_main]

use migration_wire::{Message, decode_state, encode_state, read_message};

/// Most frames one input is read as.
const MAX_FRAMES: usize = 256;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((message, used)) = Message::decode(data) {
        assert!(used <= data.len(), "a frame is within its bytes");
        // Every accepted frame is canonical: encoding the message gives its bytes back.
        let again = message.encode().expect("a decoded message encodes");
        assert_eq!(
            again,
            &data[..used],
            "{} re-encodes to its frame",
            message.name()
        );
        if let Message::Pages(pages) = &message {
            assert_eq!(pages.iter().count(), pages.len());
            let _ = pages.validate(128 << 20);
        }
    }
    let mut stream = std::io::Cursor::new(data);
    for _ in 0..MAX_FRAMES {
        let Ok(message) = read_message(&mut stream) else {
            break;
        };
        if let Message::State(bytes) = message {
            envelope(&bytes);
        }
    }
    envelope(data);
});

/// The envelope over a type with a version, lists, options and text, as the state has.
fn envelope(bytes: &[u8]) {
    type Sample = (u32, Vec<u64>, Option<String>, Vec<(String, bool, Vec<u8>)>);
    if let Ok(state) = decode_state::<Sample>(bytes) {
        let again = encode_state(&state).expect("a decoded state encodes");
        let back: Sample = decode_state(&again).expect("an encoded state decodes");
        assert_eq!(back, state);
    }
}
