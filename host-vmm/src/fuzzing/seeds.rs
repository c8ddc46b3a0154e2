//! Seed corpora from real encodings: what each target's input looks like when it is valid,
//! so the fuzzer starts past the checksums, magic numbers and bring-up sequences instead of
//! rediscovering them. `fuzz/seeds/<target>/` holds them as files (`tests.rs` keeps the files
//! equal to what this module makes).

use super::devices::{MAC, Op, fresh_sections, virtio_header};
use crate::kvm::snapshot::{FpuState, MsrEntry, VcpuState, VmState};
use crate::vmm::MachineState;
use agent_proto::{MAX_FRAME, Nic, NicStatus, Prepared, Reply, Request, Resumed, Status};
use ixgbevf_regs as r;
use kvm_bindings::{kvm_clock_data, kvm_regs};
use migration_wire::{Frames, Hello, Message, Mode, PAGE_SIZE, Pages, encode_state};

/// Every fuzz target, as `fuzz/fuzz_targets/<name>.rs` names it.
pub const TARGETS: [&str; 7] = [
    "migration_stream",
    "machine_state",
    "agent_protocol",
    "http_request",
    "virtio_net",
    "virtio_console",
    "ixgbevf",
];

/// The seeds of `target` (empty for an unknown name).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "migration_stream" => migration_stream(),
        "machine_state" => vec![machine_state()],
        "agent_protocol" => agent_protocol(),
        "http_request" => http_request(),
        "virtio_net" => virtio_net(),
        "virtio_console" => virtio_console(),
        "ixgbevf" => ixgbevf(),
        _ => Vec::new(),
    }
}

/// A machine as a source with every device sends it (fresh device models, plain registers).
fn machine_state() -> Vec<u8> {
    let state = MachineState {
        vm: VmState {
            pic_master: vec![0; 512],
            pic_slave: vec![0; 512],
            ioapic: vec![0; 512],
            clock: kvm_clock_data {
                clock: 0x1234_5678,
                ..Default::default()
            },
        },
        vcpu: VcpuState {
            mp_state: Default::default(),
            regs: kvm_regs {
                rip: 0x10_0000,
                rsp: 0x8000,
                rflags: 2,
                ..Default::default()
            },
            sregs: Default::default(),
            fpu: FpuState {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            },
            xsave: Some(vec![0; 16]),
            xcrs: Some(Default::default()),
            debug_regs: Default::default(),
            lapic: Default::default(),
            msrs: vec![MsrEntry {
                index: 0x10,
                data: 0x1000,
            }],
            events: Default::default(),
        },
        devices: fresh_sections(),
    };
    encode_state(&state).expect("the sample state encodes")
}

fn frame(m: &Message) -> Vec<u8> {
    m.encode().expect("a seed message encodes")
}

/// Each message alone, then a whole pre-copy and a whole zero-copy stream.
fn migration_stream() -> Vec<Vec<u8>> {
    let pages = Pages::new(&[0, 7], &[0x5a; 2 * PAGE_SIZE]).expect("two pages");
    let frames = Frames::new(vec![vec![0xff; 60], vec![0x52; 98]]).expect("two frames");
    let singles = [
        Message::Hello(Hello::new(Mode::PreCopy, 128 << 20, 1)),
        Message::Hello(Hello::new(Mode::ZeroCopy, 64 << 20, 1)),
        Message::Accept,
        Message::Pages(pages.clone()),
        Message::State(machine_state()),
        Message::Done,
        Message::Ready,
        Message::Running,
        Message::Failed("the destination gave up".into()),
        Message::Abort("cancelled".into()),
        Message::Sync,
        Message::Synced,
        Message::Frames(frames.clone()),
        Message::Announced,
        Message::Forwarded(2),
    ];
    let mut out: Vec<Vec<u8>> = singles.iter().map(frame).collect();
    let pre = [
        Message::Hello(Hello::new(Mode::PreCopy, 128 << 20, 1)),
        Message::Pages(pages),
        Message::Sync,
        Message::State(machine_state()),
        Message::Done,
        Message::Frames(frames),
        Message::Forwarded(2),
    ];
    out.push(pre.iter().flat_map(frame).collect());
    let zero = [
        Message::Hello(Hello::new(Mode::ZeroCopy, 128 << 20, 1)),
        Message::State(machine_state()),
        Message::Done,
    ];
    out.push(zero.iter().flat_map(frame).collect());
    out
}

/// The agent target's input: a piece size, then the byte stream (requests and replies).
fn agent_protocol() -> Vec<Vec<u8>> {
    fn encode<M: agent_proto::Message>(seq: u16, m: &M) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        let n = agent_proto::encode(seq, m, &mut out);
        out[..n].to_vec()
    }
    let nic = NicStatus {
        present: true,
        link_up: true,
        rx: 10,
        tx: 20,
        rx_errors: 0,
        tx_dropped: 1,
    };
    let status = Status {
        active: Some(Nic::Vf),
        vf: nic,
        virtio: nic,
        switches: 3,
    };
    let requests = [
        encode(1, &Request::Status),
        encode(2, &Request::Switch(Nic::Virtio)),
        encode(3, &Request::Prepare),
        encode(4, &Request::Resumed),
    ];
    let replies = [
        encode(1, &Reply::Status(status)),
        encode(
            3,
            &Reply::Prepared(Prepared {
                released_vf: true,
                status,
            }),
        ),
        encode(
            4,
            &Reply::Resumed(Resumed {
                vf_attached: true,
                announced: true,
                status,
            }),
        ),
        encode(
            5,
            &Reply::Error(
                agent_proto::ErrorCode::UnknownKind,
                agent_proto::ErrorText::new("unknown message kind"),
            ),
        ),
    ];
    let mut out: Vec<Vec<u8>> = requests
        .iter()
        .chain(&replies)
        .map(|f| [&[255u8][..], f].concat())
        .collect();
    // All requests in one go, and cut into 5-byte pieces with text between two frames.
    let all: Vec<u8> = requests.concat();
    out.push([&[255u8][..], &all].concat());
    let mut noisy = vec![5u8];
    noisy.extend_from_slice(&requests[0]);
    noisy.extend_from_slice(b"kernel: log line\n");
    noisy.extend_from_slice(&requests[2]);
    out.push(noisy);
    out
}

/// The HTTP target's input: a piece size, then requests as `host-vmm ctl` and curl send
/// them.
fn http_request() -> Vec<Vec<u8>> {
    let put = |path: &str, body: &str| {
        format!(
            "PUT /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let requests = [
        "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        "GET /api/v1/vm.info HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_string(),
        "PUT /api/v1/vm.pause HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
            .to_string(),
        "GET /api/v1/vm.migration-progress HTTP/1.1\r\n\r\n".to_string(),
        put(
            "vm.send-migration",
            r#"{"destination_url":"tcp:198.19.0.2:4444","downtime_ms":300}"#,
        ),
        put(
            "vm.send-migration",
            r#"{"destination_url":"unix:/tmp/roam.sock","zero_copy":true}"#,
        ),
        put(
            "vm.receive-migration",
            r#"{"receiver_url":"tcp:0.0.0.0:4444"}"#,
        ),
        put("roam.nic", r#"{"active":"virtio"}"#),
        put("roam.vf", r#"{"action":"remove"}"#),
        put(
            "vm.create",
            r#"{"payload":{"kernel":"/tmp/kv.elf","cmdline":"log=warn"},"memory":{"size":134217728}}"#,
        ),
        "PUT /api/v1/vm.send-migration HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
            .to_string(),
    ];
    let mut out: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| [&[255u8][..], r.as_bytes()].concat())
        .collect();
    // A pipeline, in 7-byte pieces.
    out.push([&[7u8][..], requests.concat().as_bytes()].concat());
    out
}

fn program(header: Vec<u8>, ops: &[Op]) -> Vec<u8> {
    let mut out = header;
    for op in ops {
        op.encode(&mut out);
    }
    out
}

/// A descriptor's 16 bytes.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// Queues of 16 entries: queue `q`'s descriptor table at `0x1000 + 0x1000 q * 3`, its
/// driver area 0x1000 after, its device area 0x1000 after that; vector `q`.
fn rings(q: u32) -> (u32, u32, u32) {
    let base = 0x1000 + 0x3000 * q;
    (base, base + 0x1000, base + 0x2000)
}

/// The ops that make chain `head` available at slot `slot` of queue `q` (index `slot + 1`).
fn publish(q: u32, slot: u16, head: u16) -> Vec<Op> {
    let (_, driver, _) = rings(q);
    vec![
        Op::Mem {
            addr: driver + 4 + 2 * u32::from(slot),
            bytes: head.to_le_bytes().to_vec(),
        },
        Op::Mem {
            addr: driver + 2,
            bytes: (slot + 1).to_le_bytes().to_vec(),
        },
    ]
}

fn virtio_seed(features: u64, kick_then_host: bool) -> Vec<u8> {
    let queues: Vec<_> = (0..2)
        .map(|q| {
            let (d, a, u) = rings(q);
            (4u8, q as u16, d, a, u)
        })
        .collect();
    let header = virtio_header(features, &queues);
    let buffers = 0x8000u64;
    let mut ops = Vec::new();
    // Receive queue: one 2 KiB device-writable buffer.
    ops.push(Op::Mem {
        addr: rings(0).0,
        bytes: desc(buffers, 2048, 2, 0),
    });
    ops.extend(publish(0, 0, 0));
    ops.push(Op::Kick { queue: 0 });
    // Transmit queue: a 12-byte header and a 60-byte frame, chained.
    let frame: Vec<u8> = [&[0xFFu8; 6][..], &MAC, &[0x08, 0x00], &[0x45; 46]].concat();
    let mut table = desc(buffers + 0x1000, 12, 1, 1);
    table.extend(desc(buffers + 0x1100, frame.len() as u32, 0, 0));
    ops.push(Op::Mem {
        addr: rings(1).0,
        bytes: table,
    });
    ops.push(Op::Mem {
        addr: buffers as u32 + 0x1100,
        bytes: frame.clone(),
    });
    ops.extend(publish(1, 0, 0));
    if kick_then_host {
        ops.push(Op::Kick { queue: 1 });
        ops.push(Op::Host { bytes: frame });
    } else {
        ops.push(Op::Host { bytes: frame });
        ops.push(Op::Kick { queue: 1 });
    }
    ops.push(Op::Drain);
    ops.push(Op::Migrate);
    ops.push(Op::Kick { queue: 0 });
    program(header, &ops)
}

fn virtio_net() -> Vec<Vec<u8>> {
    let version_1 = crate::devices::virtio::VIRTIO_F_VERSION_1;
    let event_idx = crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;
    let mac_status = 1 << 5 | 1 << 16;
    vec![
        virtio_seed(version_1 | mac_status, true),
        virtio_seed(version_1 | mac_status | event_idx, false),
    ]
}

fn virtio_console() -> Vec<Vec<u8>> {
    let version_1 = crate::devices::virtio::VIRTIO_F_VERSION_1;
    let event_idx = crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;
    vec![
        virtio_seed(version_1, true),
        virtio_seed(version_1 | event_idx, false),
    ]
}

/// A register write.
fn reg(offset: usize, value: u32) -> Op {
    Op::Bar {
        bar: 0,
        offset: offset as u16,
        len: 2, // 4 bytes
        value: u64::from(value),
    }
}

fn read(offset: usize) -> Op {
    Op::Read {
        bar: 0,
        offset: offset as u16,
    }
}

/// One mailbox request the way the driver sends it.
fn mailbox(words: &[u32]) -> Vec<Op> {
    let mut ops = vec![reg(r::VFMAILBOX, r::MBX_VFU), read(r::VFMAILBOX)];
    for (i, w) in words.iter().enumerate() {
        ops.push(reg(r::VFMBMEM + 4 * i, *w));
    }
    ops.extend([
        reg(r::VFMAILBOX, r::MBX_REQ),
        read(r::VFMAILBOX),
        reg(r::VFMAILBOX, r::MBX_VFU),
        read(r::VFMBMEM),
        reg(r::VFMAILBOX, r::MBX_ACK),
    ]);
    ops
}

/// Places the VF queue whose registers start at `queue` on a ring of 8 descriptors at `at`,
/// head and tail at 0.
fn ring_of_8(queue: usize, at: u32) -> [Op; 5] {
    [
        reg(queue + r::Q_BAL, at),
        reg(queue + r::Q_BAH, 0),
        reg(queue + r::Q_LEN, 8 * 16),
        reg(queue + r::Q_HEAD, 0),
        reg(queue + r::Q_TAIL, 0),
    ]
}

/// The driver's probe (reset, RESET and API 1.3 over the mailbox), MSI-X, one RX ring of 8
/// and one TX ring of 8, a frame each way.
fn ixgbevf() -> Vec<Vec<u8>> {
    let mut ops = vec![reg(r::VFCTRL, r::VFCTRL_RST), read(r::VFSTATUS)];
    ops.extend(mailbox(&[ixgbevf_regs::mbx::RESET]));
    ops.extend(mailbox(&[0x08, 4, 0]));
    ops.extend([
        reg(r::vtivar(0), 0x8180_8180),
        reg(r::VTIVAR_MISC, 0x82),
        reg(r::VTEIMS, 0x7),
    ]);
    let (rx_ring, tx_ring, bufs) = (0x1000u32, 0x2000u32, 0x8000u64);
    let mut rx_table = Vec::new();
    for i in 0..8u64 {
        rx_table.extend((bufs + 0x800 * i).to_le_bytes());
        rx_table.extend([0u8; 8]);
    }
    ops.push(Op::Mem {
        addr: rx_ring,
        bytes: rx_table,
    });
    let rq = r::rx_queue(0);
    ops.extend(ring_of_8(rq, rx_ring));
    ops.extend([
        reg(rq + r::RX_SRRCTL, 2),
        reg(rq + r::Q_DCTL, r::DCTL_ENABLE),
        reg(rq + r::Q_TAIL, 7),
    ]);
    let tq = r::tx_queue(0);
    ops.extend(ring_of_8(tq, tx_ring));
    ops.extend([reg(tq + r::Q_DCTL, r::DCTL_ENABLE | 8 << 16 | 1 << 8 | 32)]);
    let frame: Vec<u8> = [&[0xFFu8; 6][..], &MAC, &[0x08, 0x00], &[0x45; 46]].concat();
    let payload = bufs + 0x6000;
    ops.push(Op::Mem {
        addr: payload as u32,
        bytes: frame.clone(),
    });
    let cmd = frame.len() as u32 | r::TXD_DTYP_DATA | r::TXD_CMD_DEXT | r::TXD_CMD_IFCS;
    let mut d = payload.to_le_bytes().to_vec();
    d.extend((cmd | r::TXD_CMD_EOP | r::TXD_CMD_RS).to_le_bytes());
    d.extend(((frame.len() as u32) << 14).to_le_bytes());
    ops.push(Op::Mem {
        addr: tx_ring,
        bytes: d,
    });
    ops.push(reg(tq + r::Q_TAIL, 1));
    ops.push(Op::Host { bytes: frame });
    ops.extend([
        Op::Drain,
        read(r::VTEICR),
        Op::Migrate,
        Op::Kick { queue: 0 },
    ]);
    let untrusted = program(vec![0], &ops);
    ops.extend([
        Op::Operator { what: 0 },
        Op::Operator { what: 1 },
        Op::Operator { what: 2 },
    ]);
    let trusted = program(vec![1], &ops);
    vec![untrusted, trusted]
}
