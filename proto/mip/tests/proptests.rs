//! Properties of the public API: the parsers never panic, valid messages survive encoding
//! and decoding unchanged, and no single flipped bit gets past verification.

use mip::{
    Extension, Flags, KeyTable, Message, MobileHomeAuth, Mobility, RegistrationReply,
    RegistrationRequest, ReplyCode, SecurityAssociation, SkippableExtension, check_timestamp,
    sign_reply, sign_request, verify,
};
use proptest::prelude::*;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn skippable() -> impl Strategy<Value = Extension> {
    (128u8..=255, prop::collection::vec(any::<u8>(), 0..=255)).prop_map(|(kind, data)| {
        Extension::Skippable(SkippableExtension::new(kind, data).expect("skippable, ≤ 255"))
    })
}

/// Skippable extensions, then maybe an MHAE last: every valid extension list.
fn extensions() -> impl Strategy<Value = Vec<Extension>> {
    (
        prop::collection::vec(skippable(), 0..4),
        prop::option::of((256u32.., any::<[u8; 16]>())),
    )
        .prop_map(|(mut exts, auth)| {
            if let Some((spi, authenticator)) = auth {
                exts.push(Extension::MobileHomeAuth(MobileHomeAuth {
                    spi,
                    authenticator,
                }));
            }
            exts
        })
}

fn request() -> impl Strategy<Value = RegistrationRequest> {
    (
        any::<u8>(),
        any::<u16>(),
        addr(),
        addr(),
        addr(),
        any::<u64>(),
        extensions(),
    )
        .prop_map(
            |(flags, lifetime, home_address, home_agent, care_of, identification, extensions)| {
                RegistrationRequest {
                    flags: Flags::from_bits(flags),
                    lifetime,
                    home_address,
                    home_agent,
                    care_of,
                    identification,
                    extensions,
                }
            },
        )
}

fn reply() -> impl Strategy<Value = RegistrationReply> {
    (
        any::<u8>(),
        any::<u16>(),
        addr(),
        addr(),
        any::<u64>(),
        extensions(),
    )
        .prop_map(
            |(code, lifetime, home_address, home_agent, identification, extensions)| {
                RegistrationReply {
                    code: ReplyCode::from_u8(code),
                    lifetime,
                    home_address,
                    home_agent,
                    identification,
                    extensions,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        request().prop_map(Message::Request),
        reply().prop_map(Message::Reply)
    ]
}

fn sa() -> impl Strategy<Value = SecurityAssociation> {
    (256u32.., prop::collection::vec(any::<u8>(), 16..80))
        .prop_map(|(spi, key)| SecurityAssociation::new(spi, key).expect("valid by construction"))
}

/// Bytes that start like a message (so the extension walk is reached) or are anything.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        (
            prop::sample::select(vec![1u8, 3]),
            prop::collection::vec(any::<u8>(), 19..120)
        )
            .prop_map(|(kind, rest)| [vec![kind], rest].concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(bytes in wire_bytes()) {
        let _ = Message::decode(&bytes);
        let _ = RegistrationRequest::decode(&bytes);
        let _ = RegistrationReply::decode(&bytes);
        let sa = SecurityAssociation::new(300, vec![1; 16]).unwrap();
        let _ = verify(&bytes, &sa);
    }

    #[test]
    fn whatever_decodes_encodes_back_to_the_same_bytes(bytes in wire_bytes()) {
        if let Ok(message) = Message::decode(&bytes) {
            let mut expected = bytes.clone();
            if let Message::Request(_) = message {
                expected[1] &= !0x05; // r and x are sent as 0
            }
            prop_assert_eq!(message.encode(), expected);
        }
    }

    #[test]
    fn encode_then_decode_is_identity(message in message()) {
        let bytes = message.encode();
        prop_assert_eq!(Message::decode(&bytes), Ok(message));
    }

    #[test]
    fn signed_messages_verify(message in message(), sa in sa()) {
        let bytes = sign(message, &sa);
        let verified = verify(&bytes, &sa);
        prop_assert!(verified.is_ok(), "{:?}", verified);
    }

    #[test]
    fn any_flipped_bit_fails_verification(message in message(), sa in sa(), bit in any::<prop::sample::Index>()) {
        let mut bytes = sign(message, &sa);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify(&bytes, &sa).is_err(), "bit {} flipped and still verified", bit);
    }

    #[test]
    fn timestamp_check_never_panics(id: u64, last: Option<u64>, now: u64, skew_ms: u64) {
        let _ = check_timestamp(id, last, now, Duration::from_millis(skew_ms));
    }

    #[test]
    fn setting_and_key_file_parsers_never_panic(text in "\\PC{0,80}") {
        let _ = text.parse::<Mobility>();
        let _ = format!("mip:{text}").parse::<Mobility>();
        let _ = format!("nat:{text}").parse::<Mobility>();
        // Whatever parses prints back to itself.
        if let Ok(m) = format!("nat:edge=198.18.3.1,{text}").parse::<Mobility>() {
            prop_assert_eq!(m.to_string().parse::<Mobility>(), Ok(m));
        }
        let _ = KeyTable::parse(&text, Path::new("k"));
        let _ = KeyTable::parse(&format!("spi=300 {text}"), Path::new("k"));
    }
}

/// Signs a message and returns its bytes.
fn sign(message: Message, sa: &SecurityAssociation) -> Vec<u8> {
    match message {
        Message::Request(mut req) => {
            sign_request(&mut req, sa);
            req.encode()
        }
        Message::Reply(mut reply) => {
            sign_reply(&mut reply, sa);
            reply.encode()
        }
    }
}
