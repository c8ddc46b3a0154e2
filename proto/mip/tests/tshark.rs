//! An independent decoder accepts our messages: signed Requests and Replies go into a pcap
//! file (written here: Ethernet, IPv4 and UDP headers with real checksums, UDP port 434)
//! and stock `tshark` (Wireshark's dissector, packet-mip.c) must decode every field as we
//! meant it, find the checksums good, and report nothing malformed.
//!
//! tshark is a test prerequisite (`cargo xtask test` installs it): when it is missing this
//! test fails with the command that installs it, never skips.

use mip::{
    Flags, MIP_PORT, RegistrationReply, RegistrationRequest, ReplyCode, SecurityAssociation,
    resync_identification, sign_reply, sign_request,
};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "DEBIAN_FRONTEND=noninteractive apt-get install -y tshark";

const HOME_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const HOME_AGENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const CARE_OF: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 20);
const CLIENT_PORT: u16 = 49_152;
const SPI: u32 = 0x0001_2345;
/// 2026-12-07 12:00:00.5 UTC as an NTP timestamp: Unix 1796644800 + 2208988800 s, ½.
const IDENTIFICATION: u64 = ((1_796_644_800 + 2_208_988_800) << 32) | 0x8000_0000;
/// The home agent's clock in its 133 Reply: 600 s later.
const HA_CLOCK: u64 = IDENTIFICATION + (600 << 32);

/// The 16-bit one's-complement sum used by IPv4 and UDP, folded.
fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded to 16 bits")
}

/// An Ethernet frame carrying `payload` in UDP over IPv4, checksums filled in.
fn frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), ip_id: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("small payload");
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.1.to_be_bytes());
    udp.extend_from_slice(&dst.1.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // Each chunk has an even length but the last, so the sum pairs bytes as one buffer would.
    let pseudo = [
        &src.0.octets()[..],
        &dst.0.octets(),
        &[0, 17],
        &udp_len.to_be_bytes(),
    ]
    .concat();
    let checksum = match !ones_complement_sum(&[&pseudo, &udp]) {
        0 => 0xffff, // 0 means "no checksum" in UDP
        sum => sum,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&ip_id.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum 0 for now
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let checksum = !ones_complement_sum(&[&ip]);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());

    let (src_mac, dst_mac) = if src.0 == CARE_OF {
        ([0x52, 0x54, 0, 0, 2, 20], [0x52, 0x54, 0, 0, 1, 1])
    } else {
        ([0x52, 0x54, 0, 0, 1, 1], [0x52, 0x54, 0, 0, 2, 20])
    };
    [&dst_mac[..], &src_mac, &[0x08, 0x00], &ip, &udp].concat()
}

/// A classic pcap file (microsecond timestamps, Ethernet link type) of `frames`, one
/// millisecond apart.
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes()); // magic: little-endian fields
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // UTC
    out.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
    out.extend_from_slice(&65_535u32.to_le_bytes()); // snapshot length
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).expect("small frame");
        let usec = u32::try_from(i * 1000).expect("few frames");
        out.extend_from_slice(&1_796_644_800u32.to_le_bytes());
        out.extend_from_slice(&usec.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes()); // captured
        out.extend_from_slice(&len.to_le_bytes()); // on the wire
        out.extend_from_slice(frame);
    }
    out
}

/// The three messages of a registration that needed one resynchronisation.
fn messages(sa: &SecurityAssociation) -> [Vec<u8>; 3] {
    let mut request = RegistrationRequest {
        flags: Flags::ROAM,
        lifetime: 300,
        home_address: HOME_ADDRESS,
        home_agent: HOME_AGENT,
        care_of: CARE_OF,
        identification: IDENTIFICATION,
        extensions: Vec::new(),
    };
    sign_request(&mut request, sa);
    let mut accepted = RegistrationReply::for_request(&request, ReplyCode::Accepted, 240);
    sign_reply(&mut accepted, sa);
    let mut mismatch =
        RegistrationReply::for_request(&request, ReplyCode::HaIdentificationMismatch, 0);
    mismatch.identification = resync_identification(HA_CLOCK, IDENTIFICATION);
    sign_reply(&mut mismatch, sa);
    [request.encode(), accepted.encode(), mismatch.encode()]
}

/// Writes the capture; its path and the three messages' authenticators in hex.
fn write_capture() -> (PathBuf, Vec<String>) {
    let sa = SecurityAssociation::new(SPI, (0..16).collect()).expect("valid association");
    let [request, accepted, mismatch] = messages(&sa);
    let authenticators = [&request, &accepted, &mismatch]
        .iter()
        .map(|m| {
            m[m.len() - 16..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let to_ha = ((CARE_OF, CLIENT_PORT), (HOME_AGENT, MIP_PORT));
    let from_ha = ((HOME_AGENT, MIP_PORT), (CARE_OF, CLIENT_PORT));
    let frames = [
        frame(to_ha.0, to_ha.1, 1, &request),
        frame(from_ha.0, from_ha.1, 2, &accepted),
        frame(from_ha.0, from_ha.1, 3, &mismatch),
    ];
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("roam-mip-registration.pcap");
    std::fs::write(&path, pcap(&frames)).expect("write the capture");
    (path, authenticators)
}

/// Runs tshark on the capture with checksum validation on; its stdout.
fn tshark(capture: &Path, args: &[&str]) -> String {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(args)
        .env("TZ", "UTC")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "tshark is not installed; this test needs it (cargo xtask test installs it).\n  \
             Install it with: {INSTALL}"
        ),
        Err(e) => panic!("cannot run tshark: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tshark failed ({}) on {}:\n{}\n{stdout}",
        output.status,
        capture.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The fields read back, in the order of the columns asserted below.
const FIELDS: [&str; 14] = [
    "mip.type",
    "mip.flags",
    "mip.d",
    "mip.t",
    "mip.life",
    "mip.homeaddr",
    "mip.haaddr",
    "mip.coa",
    "mip.ident",
    "mip.auth.spi",
    "mip.code",
    "udp.srcport",
    "udp.dstport",
    "mip.auth.auth",
];

#[test]
fn tshark_decodes_our_registration() {
    let (capture, authenticators) = write_capture();
    let verbose = tshark(&capture, &["-V", "-Y", "mip"]);
    let context = format!("capture {}:\n{verbose}", capture.display());

    for bad in [
        "[Malformed Packet",
        "Expert Info (Error",
        "Expert Info (Warning",
        "[Bad",
    ] {
        assert!(
            !verbose.contains(bad),
            "tshark reports {bad:?} in {context}"
        );
    }
    for line in [
        "Mobile IP",
        "Message Type: Registration Request (1)",
        "Message Type: Registration Reply (3)",
        "..1. .... = Co-located Care-of Address: True",
        ".... ..1. = Reverse Tunneling: True",
        "0... .... = Simultaneous Bindings: False",
        "Lifetime: 300",
        "Home Address: 198.18.1.10",
        "Home Agent: 198.18.1.1",
        "Care of Address: 198.18.2.20",
        "Extension Type: Mobile-Home Authentication Extension (32)",
        "SPI: 0x00012345",
        "Reply Code: Reg Accepted (0)",
        "Reply Code: Reg Deny (HA)- Registration ID Mismatch (133)",
    ] {
        assert!(verbose.contains(line), "no {line:?} in {context}");
    }
    // Every frame is dissected as Mobile IP and both its checksums are good.
    for line in [
        "\nMobile IP\n",
        "[Header checksum status: Good]",
        "[Checksum Status: Good]",
    ] {
        assert_eq!(verbose.matches(line).count(), 3, "{line:?} in {context}");
    }

    // Field by field, one line per frame, exactly.
    let mut args = vec!["-Y", "mip", "-T", "fields", "-E", "separator=|"];
    args.extend(FIELDS.iter().flat_map(|field| ["-e", field]));
    let fields = tshark(&capture, &args);
    let rows: Vec<Vec<&str>> = fields.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 3, "three Mobile IP frames in {fields}");
    assert!(
        rows.iter().all(|row| row.len() == FIELDS.len()),
        "{} columns in {fields}",
        FIELDS.len()
    );
    let request = &rows[0];
    assert_eq!(
        &request[..8],
        [
            "1",
            "0x22",
            "1",
            "1",
            "300",
            "198.18.1.10",
            "198.18.1.1",
            "198.18.2.20"
        ],
        "{fields}"
    );
    assert_eq!(
        &request[9..13],
        ["0x00012345", "", "49152", "434"],
        "{fields}"
    );
    let accepted = &rows[1];
    assert_eq!(
        &accepted[..8],
        ["3", "", "", "", "240", "198.18.1.10", "198.18.1.1", ""],
        "{fields}"
    );
    assert_eq!(
        &accepted[9..13],
        ["0x00012345", "0", "434", "49152"],
        "{fields}"
    );
    let mismatch = &rows[2];
    assert_eq!(
        (mismatch[0], mismatch[4], mismatch[10]),
        ("3", "0", "133"),
        "{fields}"
    );

    // tshark finds each authenticator exactly where we put it.
    for (row, ours) in rows.iter().zip(&authenticators) {
        assert_eq!(row[13], ours, "{fields}");
    }

    // The Identification is an NTP timestamp to Wireshark: it must read back as the time
    // we wrote (request and accepted reply), and as the HA's clock 600 s later (133).
    assert!(
        request[8].contains("Dec  7, 2026 12:00:00.5"),
        "{}",
        request[8]
    );
    assert_eq!(request[8], accepted[8]);
    assert!(
        mismatch[8].contains("Dec  7, 2026 12:10:00.5"),
        "{}",
        mismatch[8]
    );
}

#[test]
fn checksums_are_right() {
    // RFC 1071's example words sum to 0xddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(ones_complement_sum(&[&data]), 0xddf2);
    let f = frame(
        (CARE_OF, CLIENT_PORT),
        (HOME_AGENT, MIP_PORT),
        1,
        &[1, 2, 3],
    );
    // An IPv4 header with its checksum sums to all ones.
    assert_eq!(ones_complement_sum(&[&f[14..34]]), 0xffff);
}
