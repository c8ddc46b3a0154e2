//! The guest-agent protocol (proto/agent, migration-client's agent, host-vmm's end).
//!
//! The guest agent is fed the input in pieces, every reply it emits checked to be one whole
//! good frame; both decoders walk the input, every step within bounds and every accepted
//! frame canonical; host-vmm's end (control::agent) reads the input as a guest's replies.

#![no_main]

use agent_proto::{
    Decoded, MAX_FRAME, Message, Nic, NicStatus, Reply, Request, Status, SwitchError,
};
use migration_client::{Agent, NicControl, Step};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut agent = Agent::new();
    let mut nics = Nics::default();
    let mut send = |reply: &[u8]| match agent_proto::decode::<Reply>(reply) {
        Decoded::Frame { len, .. } => assert_eq!(len, reply.len(), "one frame per reply"),
        other => panic!("the agent sent a bad reply: {other:?}"),
    };
    for mut chunk in stream.chunks(piece) {
        // As the kernel feeds it: jobs advanced to their end, no more than it has room for.
        loop {
            while agent.busy() {
                agent.advance(&mut nics, &mut send);
            }
            assert!(
                agent.buffered() < MAX_FRAME,
                "an idle agent holds less than a frame"
            );
            if chunk.is_empty() {
                break;
            }
            let n = agent.room().min(chunk.len());
            assert_eq!(agent.on_input(&chunk[..n], &mut nics, &mut send), n);
            chunk = &chunk[n..];
        }
    }
    walk::<Request>(stream);
    walk::<Reply>(stream);
    host_vmm::fuzzing::agent_host(data);
});

/// Decodes `buf` frame after frame as the receivers do.
fn walk<M: Message + PartialEq + std::fmt::Debug>(mut buf: &[u8]) {
    loop {
        match agent_proto::decode::<M>(buf) {
            Decoded::Incomplete => {
                assert!(
                    buf.len() < MAX_FRAME,
                    "waits only while a frame may still come"
                );
                return;
            }
            Decoded::Frame { seq, message, len } => {
                assert!(len > 0 && len <= buf.len());
                let mut out = [0u8; MAX_FRAME];
                let n = agent_proto::encode(seq, &message, &mut out);
                assert_eq!(&out[..n], &buf[..len], "an accepted frame is canonical");
                buf = &buf[len..];
            }
            Decoded::Invalid { skip, .. } => {
                assert!(skip >= 1 && skip <= buf.len(), "skips within the buffer");
                buf = &buf[skip..];
            }
        }
    }
}

/// A guest's NICs that say yes, with a VF to release and re-attach.
#[derive(Default)]
struct Nics {
    active: Option<Nic>,
    vf_released: bool,
}

impl NicControl for Nics {
    fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
        self.active = Some(nic);
        Ok(())
    }

    fn status(&self) -> Status {
        let up = NicStatus {
            present: true,
            link_up: true,
            ..NicStatus::default()
        };
        Status {
            active: self.active,
            vf: NicStatus {
                present: !self.vf_released,
                ..up
            },
            virtio: up,
            switches: 0,
        }
    }

    fn release_vf(&mut self) -> Step<bool> {
        let had = !self.vf_released;
        self.vf_released = true;
        Step::Done(had)
    }

    fn reattach_vf(&mut self) -> Step<bool> {
        self.vf_released = false;
        Step::Done(true)
    }
}
