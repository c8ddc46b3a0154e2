//! The saved-state layout is pinned to its version: a fixed sample machine (real device
//! models, fixed register values) is encoded as a migration sends it, and its hash must be
//! the one recorded for the current `STATE_VERSION`. Changing any struct inside the state
//! (a field added, removed, reordered or retyped) changes the hash; the fix is to bump
//! `STATE_VERSION` (proto/migration) and record the new hash, never to edit an old entry,
//! so an old stream is refused instead of decoded as garbage.

use super::MachineState;
use crate::device_manager::{DeviceSection, DevicesState};
use crate::devices::Persist;
use crate::devices::ixgbevf::testing::Vf;
use crate::devices::pci::PciRoot;
use crate::devices::pci::msix::MsixVector;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::pci::{IntxLine, VirtioPci};
use crate::devices::virtio::test_driver::Driver;
use crate::devices::vm_ops::RecordingVmOps;
use crate::kvm::snapshot::{FpuState, MsrEntry, VcpuState, VmState};
use kvm_bindings::{kvm_clock_data, kvm_regs};
use migration_wire::{STATE_VERSION, encode_state};
use serde::Serialize;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Every layout there has been: (`STATE_VERSION`, FNV-1a hash of the sample's encoding).
/// Append a line when the version is bumped; never change one.
const LAYOUTS: &[(u32, u64)] = &[(3, 0x9499_51d0_c7f9_5a10)];

fn section<T: Serialize>(id: &str, state: &T) -> DeviceSection {
    DeviceSection {
        id: id.into(),
        needed: true,
        bytes: postcard::to_allocvec(state).expect("a device state encodes"),
    }
}

/// A fresh virtio-console of the guest agent's channel, as the device manager builds it.
fn console() -> VirtioPci<Console> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vectors = (0..2)
        .map(|i| MsixVector {
            gsi: 24 + i,
            irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        })
        .collect();
    let (console, _port) = Console::new().unwrap();
    VirtioPci::new(
        console,
        mem,
        Arc::new(RecordingVmOps::default()),
        vectors,
        Some(IntxLine { gsi: 17 }),
    )
    .unwrap()
}

/// A machine whose state never changes unless its layout does.
fn sample() -> MachineState {
    let serial = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Vec::new());
    let devices = DevicesState {
        sections: vec![
            section("serial", &serial.save()),
            section("pci", &PciRoot::new().save()),
            section("virtio-net", &Driver::new().dev.save()),
            section("virtio-console", &console().save()),
            section("ixgbevf", &Vf::new().dev.save()),
        ],
    };
    let vm = VmState {
        pic_master: vec![0x11; 16],
        pic_slave: vec![0x22; 16],
        ioapic: vec![0x33; 16],
        clock: kvm_clock_data {
            clock: 0x0123_4567_89ab,
            flags: 2,
            ..Default::default()
        },
    };
    let vcpu = VcpuState {
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
        xsave: Some(vec![1, 2, 3, 4]),
        xcrs: Some(Default::default()),
        debug_regs: Default::default(),
        lapic: Default::default(),
        msrs: vec![MsrEntry {
            index: 0x10,
            data: 0xdead_beef,
        }],
        events: Default::default(),
    };
    MachineState { vm, vcpu, devices }
}

/// FNV-1a, 64-bit: enough to tell two layouts apart, no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn the_saved_state_layout_is_pinned_to_its_version() {
    let bytes = encode_state(&sample()).expect("the sample encodes");
    let hash = fnv1a(&bytes);
    let mine: Vec<_> = LAYOUTS
        .iter()
        .filter(|(v, _)| *v == STATE_VERSION)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "STATE_VERSION {STATE_VERSION} needs exactly one entry in LAYOUTS (this layout's hash is {hash:#018x})"
    );
    assert_eq!(
        mine[0].1,
        hash,
        "the saved-state layout changed without a version bump: bump STATE_VERSION in \
         proto/migration/src/state.rs and append ({}, {hash:#018x}) to LAYOUTS",
        STATE_VERSION + 1
    );
}

#[test]
fn every_version_is_recorded_once_and_the_sample_round_trips() {
    for (i, (v, _)) in LAYOUTS.iter().enumerate() {
        assert!(
            LAYOUTS[..i].iter().all(|(w, _)| w != v),
            "version {v} appears twice in LAYOUTS"
        );
    }
    let state = sample();
    let bytes = encode_state(&state).unwrap();
    let back: MachineState = migration_wire::decode_state(&bytes).unwrap();
    assert_eq!(back.devices, state.devices);
    assert_eq!(back.vcpu, state.vcpu);
    assert_eq!(back.vm, state.vm);
}
