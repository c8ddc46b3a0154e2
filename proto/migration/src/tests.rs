use super::*;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{Cursor, Read};

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE]
}

/// One message of every kind.
fn samples() -> Vec<Message> {
    let mut data = page(0xa5);
    data.extend(page(0x5a));
    vec![
        Message::Hello(Hello::new(Mode::ZeroCopy, 256 << 20, 1)),
        Message::Accept,
        Message::Pages(Pages::new(&[3, 9], &data).unwrap()),
        Message::Pages(Pages::new(&[], &[]).unwrap()),
        Message::State(vec![1, 2, 3, 4, 5]),
        Message::Done,
        Message::Ready,
        Message::Running,
        Message::Failed("cannot map the memfd".into()),
        Message::Abort("source resumed".into()),
        Message::Sync,
        Message::Synced,
        Message::Frames(Frames::new(vec![vec![1; 60], vec![2; 1514]]).unwrap()),
        Message::Announced,
        Message::Forwarded(7),
    ]
}

/// A frame with a correct checksum around arbitrary header fields.
fn raw_frame(version: u16, kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    let crc = crc32fast::hash(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn arb_message() -> impl Strategy<Value = Message> {
    let hello = (any::<u32>(), any::<bool>(), any::<u64>(), any::<u32>()).prop_map(
        |(_, zero, ram_size, vcpus)| {
            let mode = if zero { Mode::ZeroCopy } else { Mode::PreCopy };
            Message::Hello(Hello::new(mode, ram_size, vcpus))
        },
    );
    let pages = prop::collection::vec(any::<u64>(), 0..4).prop_flat_map(|pfns| {
        let n = pfns.len() * PAGE_SIZE;
        prop::collection::vec(any::<u8>(), n)
            .prop_map(move |data| Message::Pages(Pages::new(&pfns, &data).unwrap()))
    });
    prop_oneof![
        hello,
        Just(Message::Accept),
        pages,
        prop::collection::vec(any::<u8>(), 0..512).prop_map(Message::State),
        Just(Message::Done),
        Just(Message::Ready),
        Just(Message::Running),
        ".{0,64}".prop_map(Message::Failed),
        ".{0,64}".prop_map(Message::Abort),
        arb_frames().prop_map(Message::Frames),
        Just(Message::Announced),
        any::<u64>().prop_map(Message::Forwarded),
    ]
}

fn arb_frames() -> impl Strategy<Value = Frames> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..8)
        .prop_map(|f| Frames::new(f).unwrap())
}

/// A Frames payload from raw parts: a count, then (claimed length, bytes) per frame.
fn frames_payload(count: u32, frames: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut p = count.to_le_bytes().to_vec();
    for (len, bytes) in frames {
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(bytes);
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any payload bytes under a valid envelope: Frames decodes or is refused, never
    /// panics; what decodes is within the bounds and encodes back to the same bytes.
    #[test]
    fn frames_payloads_decode_within_bounds_or_are_refused(payload in prop::collection::vec(any::<u8>(), 0..600)) {
        let frame = raw_frame(FORMAT_VERSION, kind::FRAMES, &payload);
        if let Ok((Message::Frames(f), used)) = Message::decode(&frame) {
            prop_assert_eq!(used, frame.len());
            prop_assert!((1..=MAX_FRAMES_PER_MESSAGE).contains(&f.len()));
            prop_assert!(f.frames().iter().all(|b| (1..=MAX_FRAME_LEN).contains(&b.len())));
            prop_assert_eq!(Message::Frames(f).encode().unwrap(), frame);
        }
    }

    /// A well-formed Frames payload with a lying count or a lying length (too long, too
    /// short, zero, over the limit), or bytes cut or added: refused as malformed.
    #[test]
    fn frames_with_lying_counts_or_lengths_are_refused(
        f in arb_frames(),
        which in any::<prop::sample::Index>(),
        lie in prop_oneof![Just(0u32), Just(1), Just(u32::MAX), Just(MAX_FRAME_LEN as u32 + 1)],
        cut in 1usize..4,
    ) {
        let parts: Vec<(u32, Vec<u8>)> = f.frames().iter().map(|b| (b.len() as u32, b.clone())).collect();
        let n = parts.len() as u32;
        let mut bad = Vec::new();
        // The count lies (one more, one less, zero, over the limit).
        for count in [n + 1, n - 1, 0, MAX_FRAMES_PER_MESSAGE as u32 + 1] {
            if count != n {
                bad.push(frames_payload(count, &parts));
            }
        }
        // One frame's length lies.
        let i = which.index(parts.len());
        let mut lying = parts.clone();
        let real = lying[i].0;
        lying[i].0 = match lie { 1 => real + 1, l => l };
        if lying[i].0 != real {
            bad.push(frames_payload(n, &lying));
        }
        // Bytes missing at the end, or left over.
        let good = frames_payload(n, &parts);
        bad.push(good[..good.len() - cut.min(good.len())].to_vec());
        let mut longer = good.clone();
        longer.extend(std::iter::repeat_n(0u8, cut));
        bad.push(longer);
        for payload in bad {
            let frame = raw_frame(FORMAT_VERSION, kind::FRAMES, &payload);
            let r = Message::decode(&frame);
            prop_assert!(matches!(r, Err(WireError::Malformed(_))), "{:?} from {:02x?}", r, &payload[..payload.len().min(16)]);
        }
        // The honest one decodes to the frames.
        let frame = raw_frame(FORMAT_VERSION, kind::FRAMES, &good);
        prop_assert_eq!(Message::decode(&frame).unwrap().0, Message::Frames(f));
    }
}

#[test]
fn frames_beyond_the_bounds_are_not_built() {
    assert!(Frames::new(Vec::new()).is_err());
    assert!(Frames::new(vec![Vec::new()]).is_err());
    assert!(Frames::new(vec![vec![0; MAX_FRAME_LEN + 1]]).is_err());
    assert!(Frames::new(vec![vec![0; 60]; MAX_FRAMES_PER_MESSAGE + 1]).is_err());
    assert!(Frames::new(vec![vec![0; MAX_FRAME_LEN]; MAX_FRAMES_PER_MESSAGE]).is_ok());
    let forwarded = raw_frame(FORMAT_VERSION, kind::FORWARDED, &[1, 2, 3]);
    assert!(matches!(
        Message::decode(&forwarded),
        Err(WireError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips_through_bytes_and_a_stream(msgs in prop::collection::vec(arb_message(), 1..4)) {
        let mut stream = Vec::new();
        for m in &msgs {
            let frame = m.encode().unwrap();
            let (back, used) = Message::decode(&frame).unwrap();
            prop_assert_eq!(&back, m);
            prop_assert_eq!(used, frame.len());
            write_message(&mut stream, m).unwrap();
        }
        let mut r = Cursor::new(&stream);
        for m in &msgs {
            prop_assert_eq!(&read_message(&mut r).unwrap(), m);
        }
        // Nothing more: the next read is a clean, reported end.
        let is_truncated = matches!(read_message(&mut r), Err(WireError::Truncated { got: 0, .. }));
        prop_assert!(is_truncated);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused(m in arb_message(), bit in any::<prop::sample::Index>()) {
        let mut frame = m.encode().unwrap();
        let bit = bit.index(frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Message::decode(&frame).is_err());
        prop_assert!(read_message(&mut Cursor::new(&frame)).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::decode(&bytes);
        let _ = read_message(&mut Cursor::new(&bytes));
        let _ = decode_state::<TestState>(&bytes);
        // Same with a valid header in front, so the payload parsers see hostile bytes too.
        for k in [kind::HELLO, kind::PAGES, kind::FAILED, kind::MEMFD, 99] {
            let _ = Message::decode(&raw_frame(FORMAT_VERSION, k, &bytes));
        }
    }

    #[test]
    fn state_round_trips(s in any::<(u64, Vec<u32>, bool, Option<i16>)>()) {
        let st = TestState { regs: [s.0; 4], msrs: s.1, halted: s.2, irq: s.3 };
        let bytes = encode_state(&st).unwrap();
        prop_assert_eq!(decode_state::<TestState>(&bytes).unwrap(), st);
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct TestState {
    regs: [u64; 4],
    msrs: Vec<u32>,
    halted: bool,
    irq: Option<i16>,
}

#[test]
fn frames_are_pinned_on_the_wire() {
    // Other builds of host-vmm depend on these bytes: changing them needs a new
    // FORMAT_VERSION (the envelope) or PROTOCOL_VERSION (the messages).
    let kinds = [
        kind::HELLO,
        kind::ACCEPT,
        kind::PAGES,
        kind::STATE,
        kind::DONE,
        kind::READY,
        kind::RUNNING,
        kind::FAILED,
        kind::ABORT,
        kind::SYNC,
        kind::SYNCED,
        kind::FRAMES,
        kind::ANNOUNCED,
        kind::FORWARDED,
        kind::MEMFD,
    ];
    assert_eq!(kinds, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16]);
    assert_eq!((FORMAT_VERSION, PROTOCOL_VERSION), (1, 3));
    let frames = Message::Frames(Frames::new(vec![vec![0xab, 0xcd]]).unwrap())
        .encode()
        .unwrap();
    assert_eq!(
        &frames[..HEADER_LEN + 10],
        b"RMIG\x01\x00\x0c\x00\x0a\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\xab\xcd"
    );
    let done = Message::Done.encode().unwrap();
    assert_eq!(
        done,
        b"RMIG\x01\x00\x05\x00\x00\x00\x00\x00\x9d\x85\x72\xf2"
    );
    let failed = Message::Failed("no".into()).encode().unwrap();
    assert_eq!(
        failed,
        b"RMIG\x01\x00\x08\x00\x02\x00\x00\x00no\x4f\xed\x5a\xe8"
    );
    let hello = Message::Hello(Hello::new(Mode::ZeroCopy, 0x1122_3344_5566_7788, 3));
    let mut want = b"RMIG\x01\x00\x01\x00\x11\x00\x00\x00".to_vec();
    want.extend([
        3, 0, 0, 0, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 3, 0, 0, 0,
    ]);
    want.extend(0x480d_9956u32.to_le_bytes());
    assert_eq!(hello.encode().unwrap(), want);
    let pages = Message::Pages(Pages::new(&[5], &page(0xab)).unwrap());
    let f = pages.encode().unwrap();
    assert_eq!(&f[6..8], &[3, 0]);
    assert_eq!(
        &f[12..24],
        &[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0],
        "count, then pfns"
    );
    assert_eq!(&f[24..24 + PAGE_SIZE], &page(0xab)[..]);
    // What an older peer's Done looks like: only the version differs, the CRC still matches.
    let mut old = Vec::new();
    encode_frame_as(0, kind::DONE, &[], &mut old).unwrap();
    assert_eq!(old, raw_frame(0, kind::DONE, &[]));
}

#[test]
fn every_single_bit_flip_of_every_kind_is_refused() {
    for m in samples() {
        let frame = m.encode().unwrap();
        for bit in 0..frame.len() * 8 {
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            let r = Message::decode(&f);
            assert!(
                r.is_err(),
                "{} with bit {bit} flipped decoded as {r:?}",
                m.name()
            );
        }
    }
}

#[test]
fn a_stream_cut_at_any_offset_is_truncated() {
    for m in samples() {
        let frame = m.encode().unwrap();
        for cut in 0..frame.len() {
            let e = Message::decode(&frame[..cut]).unwrap_err();
            assert!(
                matches!(e, WireError::Truncated { .. }),
                "{} cut at {cut}: {e}",
                m.name()
            );
            let e = read_message(&mut Cursor::new(&frame[..cut])).unwrap_err();
            assert!(
                matches!(e, WireError::Truncated { .. }),
                "{} cut at {cut}: {e}",
                m.name()
            );
        }
    }
    // A whole conversation cut anywhere never reads as complete.
    let mut stream = Vec::new();
    for m in samples() {
        write_message(&mut stream, &m).unwrap();
    }
    let n = samples().len();
    for cut in 0..stream.len() {
        let mut r = Cursor::new(&stream[..cut]);
        let read = (0..n).map_while(|_| read_message(&mut r).ok()).count();
        assert!(read < n, "cut at {cut} still read {read} messages");
        let e = read_message(&mut r).unwrap_err();
        assert!(
            matches!(e, WireError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn an_old_or_newer_format_version_is_refused_naming_both() {
    for v in [0, FORMAT_VERSION + 1] {
        let frame = raw_frame(v, kind::DONE, &[]);
        let e = Message::decode(&frame).unwrap_err();
        assert!(
            matches!(e, WireError::UnsupportedVersion { got, supported: FORMAT_VERSION } if got == v)
        );
        let text = e.to_string();
        assert!(text.contains(&format!("format version {v} ")), "{text}");
        assert!(
            text.contains(&format!("format version {FORMAT_VERSION} ")),
            "{text}"
        );
    }
}

#[test]
fn another_protocol_in_hello_is_refused_naming_both() {
    let mut payload = vec![0; 17];
    payload[..4].copy_from_slice(&7u32.to_le_bytes());
    // A newer protocol may lay Hello out otherwise: the version must win over the length.
    payload.push(0xff);
    let e = Message::decode(&raw_frame(FORMAT_VERSION, kind::HELLO, &payload)).unwrap_err();
    assert!(matches!(
        e,
        WireError::UnsupportedProtocol {
            got: 7,
            supported: PROTOCOL_VERSION
        }
    ));
    let text = e.to_string();
    assert!(
        text.contains("protocol version 7")
            && text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
}

#[test]
fn bad_magic_says_it_is_not_a_migration_stream() {
    let mut frame = Message::Done.encode().unwrap();
    frame[..4].copy_from_slice(b"GET ");
    let e = Message::decode(&frame).unwrap_err();
    assert!(matches!(e, WireError::BadMagic { got } if &got == b"GET "));
    assert!(e.to_string().contains("not a Roam migration stream"));
}

/// Counts the bytes a reader hands out; after the header it would hand out zeros forever.
struct Endless<'a> {
    header: &'a [u8],
    taken: usize,
}

impl Read for Endless<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(4096);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self.header.get(self.taken + i).copied().unwrap_or(0);
        }
        self.taken += n;
        Ok(n)
    }
}

#[test]
fn an_oversized_length_is_refused_before_reading_or_allocating() {
    for len in [MAX_PAYLOAD + 1, u32::MAX] {
        let mut header = FrameHeader {
            kind: kind::STATE,
            len: 0,
        }
        .to_bytes();
        header[8..12].copy_from_slice(&len.to_le_bytes());
        let e = Message::decode(&header).unwrap_err();
        assert!(
            matches!(e, WireError::TooLarge { len: l, max } if l == len as u64 && max == MAX_PAYLOAD as u64)
        );
        // The reader asked for the 12 header bytes only (a read never exceeds its buffer).
        let mut r = Endless {
            header: &header,
            taken: 0,
        };
        let e = read_message(&mut r).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { .. }), "{e}");
        assert_eq!(r.taken, HEADER_LEN);
    }
    // Writers refuse to produce what readers would refuse.
    let e = Message::State(vec![0; MAX_PAYLOAD as usize + 1])
        .encode()
        .unwrap_err();
    assert!(matches!(e, WireError::TooLarge { .. }));
}

#[test]
fn a_checksum_mismatch_says_corrupt() {
    let mut frame = Message::State(vec![9; 32]).encode().unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x80;
    let e = Message::decode(&frame).unwrap_err();
    assert!(matches!(e, WireError::BadChecksum { .. }));
    assert!(e.to_string().contains("corrupt"));
}

#[test]
fn payload_contents_are_checked_per_kind() {
    let malformed = |k, p: &[u8]| {
        matches!(
            Message::decode(&raw_frame(FORMAT_VERSION, k, p)),
            Err(WireError::Malformed(_))
        )
    };
    assert!(malformed(kind::DONE, &[0]));
    assert!(malformed(kind::ACCEPT, &[1, 2]));
    assert!(malformed(kind::FAILED, &[0xff, 0xfe]));
    assert!(malformed(kind::MEMFD, b"ram"));
    let mut hello = [0u8; 17];
    hello[..4].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello[4] = 2;
    assert!(malformed(kind::HELLO, &hello));
    assert!(malformed(kind::HELLO, &hello[..16]));
    // Pages: the count must agree with the bytes that follow it.
    assert!(malformed(kind::PAGES, &[]));
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend(5u64.to_le_bytes());
    p.extend(page(1));
    assert!(!malformed(kind::PAGES, &p));
    assert!(malformed(kind::PAGES, &p[..p.len() - 1]));
    p.push(0);
    assert!(malformed(kind::PAGES, &p));
    p[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(malformed(kind::PAGES, &p));
    let e = Message::decode(&raw_frame(FORMAT_VERSION, 0x7777, &[])).unwrap_err();
    assert!(matches!(e, WireError::UnknownKind(0x7777)));
}

#[test]
fn pages_validate_against_ram_size() {
    let two = [page(1), page(2)].concat();
    let ram = 16 * PAGE_SIZE as u64;
    assert!(Pages::new(&[0, 15], &two).unwrap().validate(ram).is_ok());
    assert!(Pages::new(&[0, 16], &two).unwrap().validate(ram).is_err());
    // A partial last page is not RAM a whole page can land in.
    assert!(
        Pages::new(&[0, 15], &two)
            .unwrap()
            .validate(ram - 1)
            .is_err()
    );
    assert!(Pages::new(&[4, 4], &two).unwrap().validate(ram).is_err());
    assert!(Pages::new(&[5, 4], &two).unwrap().validate(ram).is_err());
    assert!(
        Pages::new(&[u64::MAX, 0], &two)
            .unwrap()
            .validate(u64::MAX)
            .is_err()
    );
    assert!(Pages::new(&[], &[]).unwrap().validate(0).is_ok());
    assert!(Pages::new(&[1], &two).is_err());
    let p = Pages::new(&[2, 7], &two).unwrap();
    let got: Vec<_> = p.iter().map(|(pfn, d)| (pfn, d[0], d.len())).collect();
    assert_eq!(got, [(2, 1, PAGE_SIZE), (7, 2, PAGE_SIZE)]);
}

#[test]
fn the_page_encoder_writes_what_the_decoder_reads() {
    let ram: Vec<u8> = (0..64 * PAGE_SIZE)
        .map(|i| (i / PAGE_SIZE) as u8 ^ i as u8)
        .collect();
    let mut buf = Vec::new();
    // Big, then small, then big again in one buffer: stale bytes must never leak through.
    for pfns in [&[1u64, 2, 3, 40, 63][..], &[7], &[0, 5, 6, 60]] {
        encode_pages_from_slice(&mut buf, pfns, &ram).unwrap();
        let data: Vec<u8> = pfns
            .iter()
            .flat_map(|&p| ram[p as usize * PAGE_SIZE..][..PAGE_SIZE].to_vec())
            .collect();
        let expected = Message::Pages(Pages::new(pfns, &data).unwrap());
        assert_eq!(buf, expected.encode().unwrap());
        let (m, _) = Message::decode(&buf).unwrap();
        let Message::Pages(p) = m else {
            panic!("{m:?}")
        };
        p.validate(ram.len() as u64).unwrap();
        for (pfn, d) in p.iter() {
            assert_eq!(d, &ram[pfn as usize * PAGE_SIZE..][..PAGE_SIZE]);
        }
    }
    assert!(encode_pages_from_slice(&mut buf, &[3, 2], &ram).is_err());
    assert!(encode_pages_from_slice(&mut buf, &[2, 2], &ram).is_err());
    assert!(encode_pages_from_slice(&mut buf, &[64], &ram).is_err());
    assert!(encode_pages_from_slice(&mut buf, &[u64::MAX], &ram).is_err());
    let too_many: Vec<u64> = (0..MAX_BATCH_PAGES as u64 + 1).collect();
    let e = encode_pages(&mut buf, &too_many, |_, _| Ok::<_, WireError>(())).unwrap_err();
    assert!(matches!(e, WireError::TooLarge { .. }));
    // The largest batch fits a frame.
    let most: Vec<u64> = (0..MAX_BATCH_PAGES as u64).collect();
    encode_pages(&mut buf, &most, |_, _| Ok::<_, WireError>(())).unwrap();
    assert!(buf.len() <= HEADER_LEN + MAX_PAYLOAD as usize + TRAILER_LEN);
    let mut out = Vec::new();
    write_pages(&mut out, &mut buf, &[1, 2], |pfn, d: &mut [u8]| {
        d.fill(pfn as u8);
        Ok::<_, WireError>(())
    })
    .unwrap();
    assert_eq!(out, buf);
    // The filler's own error comes back unchanged.
    #[derive(Debug, PartialEq)]
    enum Mine {
        Wire,
        Guest(u64),
    }
    impl From<WireError> for Mine {
        fn from(_: WireError) -> Self {
            Mine::Wire
        }
    }
    let e = encode_pages(&mut buf, &[4, 9], |pfn, _| {
        if pfn == 9 {
            Err(Mine::Guest(pfn))
        } else {
            Ok(())
        }
    });
    assert_eq!(e, Err(Mine::Guest(9)));
}

#[test]
fn peer_failures_and_unexpected_messages_become_errors() {
    assert!(
        matches!(Message::Failed("no RAM".into()).into_result(), Err(WireError::PeerFailed(s)) if s == "no RAM")
    );
    assert!(matches!(
        Message::Abort("cut".into()).expect(kind::DONE),
        Err(WireError::PeerAborted(_))
    ));
    assert!(matches!(
        Message::Accept.expect(kind::ACCEPT),
        Ok(Message::Accept)
    ));
    let e = Message::Done.expect(kind::RUNNING).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unexpected migration message Done while waiting for Running"
    );
}

#[test]
fn state_with_another_version_or_extra_bytes_is_refused() {
    let st = TestState {
        regs: [1, 2, 3, 4],
        msrs: vec![0x10, 0xc000_0080],
        halted: false,
        irq: Some(-1),
    };
    let bytes = encode_state(&st).unwrap();
    assert_eq!(bytes[..4], STATE_VERSION.to_le_bytes());
    assert_eq!(decode_state::<TestState>(&bytes).unwrap(), st);
    let mut old = bytes.clone();
    old[..4].copy_from_slice(&(STATE_VERSION - 1).to_le_bytes());
    let e = decode_state::<TestState>(&old).unwrap_err();
    assert!(
        matches!(e, WireError::UnsupportedStateVersion { got, supported: STATE_VERSION } if got == STATE_VERSION - 1)
    );
    assert!(
        e.to_string()
            .contains(&format!("state version {}", STATE_VERSION - 1))
    );
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        decode_state::<TestState>(&long),
        Err(WireError::Malformed(_))
    ));
    for cut in 0..bytes.len() {
        assert!(
            decode_state::<TestState>(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // A Vec claiming a huge length does not allocate it: it runs out of bytes first.
    let mut hostile = STATE_VERSION.to_le_bytes().to_vec();
    hostile.extend([0u8; 32]);
    hostile.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_state::<TestState>(&hostile).is_err());
}
