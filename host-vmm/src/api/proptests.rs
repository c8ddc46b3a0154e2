//! Properties of the request parser: no input makes it panic, valid requests come back
//! as they were written, and how the bytes are split into reads does not matter.

use super::http::{self, Limits, Poll, Request, RequestReader, Response, Version};
use super::routes::ROUTES;
use super::{ApiRequest, Endpoint};
use proptest::prelude::*;
use proptest::sample::select;

/// Feeds `chunks` one by one, polling after each, and returns every request read, or the
/// first error (the server closes the connection there).
fn feed(chunks: &[&[u8]]) -> (Vec<Request>, Option<http::HttpError>) {
    let mut reader = RequestReader::new(Limits::default());
    let mut got = Vec::new();
    for chunk in chunks {
        reader.push(chunk);
        loop {
            match reader.poll() {
                Ok(Poll::Ready(r)) => got.push(r),
                Ok(Poll::NeedMore { .. }) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, None)
}

const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn text(alphabet: &'static [u8], len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(select(alphabet), len)
        .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

fn token() -> impl Strategy<Value = String> {
    text(TCHARS, 1..12)
}

fn header() -> impl Strategy<Value = (String, String)> {
    const VALUE: &[u8] = b" \tabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    (
        token().prop_filter("framing headers are generated separately", |n| {
            !n.eq_ignore_ascii_case("content-length")
                && !n.eq_ignore_ascii_case("transfer-encoding")
        }),
        // The parser trims optional whitespace around values.
        text(VALUE, 0..40).prop_map(|v| v.trim_matches([' ', '\t']).to_owned()),
    )
}

/// Any request this parser must take, as a [`Request`] whose bytes are its `to_bytes`.
fn request() -> impl Strategy<Value = Request> {
    const PATH: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~/!$&'()*+,;=:@%";
    const QUERY: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~/!$&'()*+,;=:@%?";
    (
        prop_oneof![
            select(&["GET", "PUT", "POST", "DELETE", "HEAD"][..]).prop_map(str::to_owned),
            token()
        ],
        text(PATH, 0..40).prop_map(|p| format!("/{p}")),
        proptest::option::of(text(QUERY, 0..20)),
        select(&[Version::Http10, Version::Http11][..]),
        proptest::collection::vec(header(), 0..8),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(|(method, path, query, version, mut headers, body)| {
            if let Some(b) = &body {
                headers.push(("Content-Length".to_owned(), b.len().to_string()));
            }
            Request {
                method,
                path,
                query,
                version,
                headers,
                body,
            }
        })
}

/// Cuts `bytes` at the given points (taken modulo its length).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = feed(&[&bytes]);
        let _ = http::find_head_end(&bytes);
        let _ = http::parse_response_head(&bytes);
    }

    #[test]
    fn mutated_requests_never_panic(
        r in request(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = r.to_bytes();
        for (at, byte, kind) in edits {
            let at = at % (bytes.len() + 1);
            match kind {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => bytes[at] = byte,
                _ if at < bytes.len() => { bytes.remove(at); }
                _ => {}
            }
        }
        let _ = feed(&split(&bytes, &cuts));
    }

    #[test]
    fn valid_requests_round_trip(r in request()) {
        let bytes = r.to_bytes();
        let (got, error) = feed(&[&bytes]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(got, vec![r]);
    }

    #[test]
    fn any_split_gives_the_same_requests(
        a in request(),
        b in request(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut bytes = a.to_bytes();
        bytes.extend(b.to_bytes());
        let whole = feed(&[&bytes]);
        prop_assert_eq!(&whole, &(vec![a, b], None));
        prop_assert_eq!(feed(&split(&bytes, &cuts)), whole);
    }

    #[test]
    fn bodies_of_any_bytes_never_panic_any_endpoint(
        i in 0..ROUTES.len(),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            text(b"{}[]\":,0123456789.-eE truefalsnl\\payloadkernelactionvfnic", 0..80)
                .prop_map(String::into_bytes),
        ],
    ) {
        let endpoint: Endpoint = ROUTES[i].endpoint;
        if let Err(e) = ApiRequest::parse(endpoint, Some(&body)) {
            prop_assert!((400..500).contains(&e.status));
        }
    }

    #[test]
    fn responses_read_back(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let response = Response { status, headers: vec![("Allow".into(), "GET".into())], body };
        let bytes = response.to_bytes(true, Version::Http11);
        let end = http::find_head_end(&bytes);
        prop_assert!(end.is_some());
        let head = http::parse_response_head(&bytes[..end.unwrap_or(0)]);
        prop_assert_eq!(head.map(|h| h.status), Ok(status));
    }
}
