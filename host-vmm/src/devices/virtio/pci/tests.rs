//! The transport as a driver sees it: identity, capabilities, feature negotiation, status,
//! queue registers, interrupts, ioeventfd placement, failure and reset.

use super::super::net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
};
use super::super::test_driver::{Driver, QSIZE, RAM};
use super::*;
use crate::devices::pci::config::{COMMAND_INTX_DISABLE, COMMAND_MEMORY};
use crate::devices::pci::{PciConfigPorts, PciRoot};
use crate::devices::{BusDevice, pci};

const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;

#[test]
fn it_identifies_as_a_modern_virtio_net_pci_function() {
    let mut d = Driver::new();
    assert_eq!(d.dev.read_config(0x00), 0x1041_1AF4);
    assert_eq!(
        d.dev.read_config(0x08),
        0x0200_0001,
        "class 02/00, revision 1"
    );
    assert_eq!(d.dev.read_config(0x2C), 0x0001_1AF4, "subsystem");
    assert_eq!(d.dev.read_config(0x3C) >> 8 & 0xFF, 1, "INTA");
    assert_eq!(d.dev.read_config(0x3C) & 0xFF, 16, "line: GSI 16");
    assert_eq!(d.dev.config().bar(1).unwrap().size, 0x1000);
    assert_eq!(d.dev.config().bar(4).unwrap().size, 0x4000);
}

#[test]
fn capabilities_describe_the_regions_like_qemu() {
    let mut d = Driver::new();
    let msix = d.find_capability(0x11).unwrap();
    assert_eq!(d.dev.read_config(msix) >> 16 & 0x7FF, 2, "three vectors");
    assert_eq!(d.dev.read_config(msix + 4), 1, "table: BAR 1 offset 0");
    assert_eq!(
        d.dev.read_config(msix + 8),
        0x801,
        "PBA: BAR 1 offset 0x800"
    );
    // Walk the vendor capabilities: (cfg_type, bar, offset, length).
    let mut found = Vec::new();
    let mut at = (d.dev.read_config(0x34) & 0xFF) as usize;
    while at != 0 {
        let head = d.dev.read_config(at);
        if head & 0xFF == 0x09 {
            let cfg_type = head >> 24;
            let bar = d.dev.read_config(at + 4) & 0xFF;
            let offset = d.dev.read_config(at + 8);
            let len = d.dev.read_config(at + 12);
            found.push((cfg_type, bar, offset, len));
            if cfg_type == 2 {
                assert_eq!(head >> 16 & 0xFF, 20, "notify cap_len");
                assert_eq!(d.dev.read_config(at + 16), 4, "notify_off_multiplier");
            }
        }
        at = ((head >> 8) & 0xFF) as usize;
    }
    assert_eq!(
        found,
        vec![
            (1, 4, 0x0000, 0x1000),
            (3, 4, 0x1000, 0x1000),
            (4, 4, 0x2000, 0x1000),
            (2, 4, 0x3000, 0x1000),
            (5, 0, 0, 0),
        ]
    );
}

#[test]
fn features_negotiate_and_bad_sets_are_refused() {
    let mut d = Driver::new();
    assert_eq!(
        d.device_features(),
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
    );
    assert_ne!(d.negotiate(FEATURES) & STATUS_FEATURES_OK, 0);
    // After FEATURES_OK the driver's features are frozen.
    d.common_write(0x08, 0, 4);
    d.common_write(0x0C, 0, 4);
    assert_eq!(d.common_read(0x0C, 4), FEATURES & 0xFFFF_FFFF);
    // Not offered (GUEST_TSO4), or no VERSION_1: FEATURES_OK does not stick.
    assert_eq!(d.negotiate(FEATURES | 1 << 7) & STATUS_FEATURES_OK, 0);
    assert_eq!(d.negotiate(VIRTIO_NET_F_MAC) & STATUS_FEATURES_OK, 0);
    // Selectors past the two halves read zero.
    d.common_write(0x00, 7, 4);
    assert_eq!(d.common_read(0x04, 4), 0);
}

#[test]
fn device_config_has_the_mac_and_link_up() {
    let mut d = Driver::new();
    let mut cfg = [0u8; 10];
    d.dev.read_bar(VIRTIO_BAR, DEVICE_CFG_OFFSET, &mut cfg);
    assert_eq!(&cfg[..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        1,
        "VIRTIO_NET_S_LINK_UP"
    );
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1, "one queue pair");
    // Byte-wise reads work too, and writes change nothing.
    let mut b = [0u8; 1];
    d.dev.read_bar(VIRTIO_BAR, DEVICE_CFG_OFFSET + 5, &mut b);
    assert_eq!(b[0], 0x56);
    d.dev.write_bar(VIRTIO_BAR, DEVICE_CFG_OFFSET, &[0xFF; 6]);
    d.dev.read_bar(VIRTIO_BAR, DEVICE_CFG_OFFSET, &mut b);
    assert_eq!(b[0], 0x52);
}

#[test]
fn the_pci_cfg_capability_reaches_the_bars() {
    let mut d = Driver::new();
    let mut at = (d.dev.read_config(0x34) & 0xFF) as usize;
    while d.dev.read_config(at) >> 24 != 5 || d.dev.read_config(at) & 0xFF != 9 {
        at = ((d.dev.read_config(at) >> 8) & 0xFF) as usize;
    }
    d.dev.write_config(at + 4, &[4]);
    d.dev
        .write_config(at + 8, &(DEVICE_CFG_OFFSET as u32).to_le_bytes());
    d.dev.write_config(at + 12, &4u32.to_le_bytes());
    assert_eq!(d.dev.read_config(at + 16), 0x1200_5452, "MAC bytes 0..4");
    // A write through the window: queue_select = 1.
    d.dev.write_config(at + 8, &0x16u32.to_le_bytes());
    d.dev.write_config(at + 12, &2u32.to_le_bytes());
    d.dev.write_config(at + 16, &1u16.to_le_bytes());
    assert_eq!(d.common_read(0x16, 2), 1);
    // A length the window does not allow does nothing.
    d.dev.write_config(at + 12, &3u32.to_le_bytes());
    assert_eq!(d.dev.read_config(at + 16), 0);
}

#[test]
fn queue_registers_follow_the_specification() {
    let mut d = Driver::new();
    assert_eq!(d.common_read(0x12, 2), 2, "num_queues");
    for q in 0..2 {
        d.common_write(0x16, q, 2);
        assert_eq!(d.common_read(0x18, 2), 256, "max size");
        assert_eq!(d.common_read(0x1E, 2), q, "notify_off");
        assert_eq!(d.common_read(0x1A, 2), u64::from(NO_VECTOR));
    }
    d.common_write(0x16, 1, 2);
    d.common_write(0x1A, 2, 2);
    assert_eq!(d.common_read(0x1A, 2), 2);
    d.common_write(0x1A, 3, 2);
    assert_eq!(
        d.common_read(0x1A, 2),
        u64::from(NO_VECTOR),
        "no such vector"
    );
    d.common_write(0x10, 9, 2);
    assert_eq!(d.common_read(0x10, 2), u64::from(NO_VECTOR));
    // 64-bit addresses, whole or in halves.
    d.common_write(0x20, 0x1234_5678_9ABC_DEF0, 8);
    assert_eq!(d.common_read(0x20, 8), 0x1234_5678_9ABC_DEF0);
    d.common_write(0x24, 0, 4);
    assert_eq!(d.common_read(0x20, 8), 0x9ABC_DEF0);
    // A queue that does not exist reads as size 0 and takes nothing.
    d.common_write(0x16, 5, 2);
    assert_eq!(d.common_read(0x18, 2), 0);
    d.common_write(0x1C, 1, 2);
    assert_eq!(d.common_read(0x1C, 2), 0);
    // Once enabled, a queue's layout is fixed.
    d.setup_queue(0, 8, 0);
    d.common_write(0x18, 4, 2);
    assert_eq!(d.common_read(0x18, 2), 8);
}

#[test]
fn driver_ok_runs_the_device() {
    let mut d = Driver::new();
    d.init(FEATURES);
    assert_eq!(d.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(d.status(), 0x0F);
}

fn fails_at_driver_ok(setup: impl FnOnce(&mut Driver)) {
    let mut d = Driver::new();
    d.enable_msix();
    setup(&mut d);
    d.common_write(0x10, 2, 2);
    d.driver_ok();
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0, "{:#x}", d.status());
    assert!(d.fired(2), "configuration change interrupt");
}

#[test]
fn bad_queues_at_driver_ok_fail_the_device() {
    // Queue 0 is fine in each case; queue 1 is not.
    fn redo(d: &mut Driver, size: u16, desc: u64, avail: u64, used: u64) {
        d.negotiate(FEATURES);
        d.setup_queue(0, QSIZE, 0);
        d.common_write(0x16, 1, 2);
        d.common_write(0x18, u64::from(size), 2);
        d.common_write(0x20, desc, 8);
        d.common_write(0x28, avail, 8);
        d.common_write(0x30, used, 8);
        d.common_write(0x1C, 1, 2);
    }
    fails_at_driver_ok(|d| redo(d, 3, 0x1000, 0x2000, 0x3000));
    fails_at_driver_ok(|d| redo(d, 512, 0x1000, 0x2000, 0x3000));
    fails_at_driver_ok(|d| redo(d, 16, 0x1008, 0x2000, 0x3000));
    fails_at_driver_ok(|d| redo(d, 16, 0x1000, 0x2001, 0x3000));
    fails_at_driver_ok(|d| redo(d, 16, 0x1000, 0x2000, 0x3002));
    fails_at_driver_ok(|d| redo(d, 16, RAM - 0x80, 0x2000, 0x3000));
    fails_at_driver_ok(|d| redo(d, 16, 0x1000, u64::MAX - 1, 0x3000));
    fails_at_driver_ok(|d| redo(d, 16, 0x1000, 0x2000, 1 << 40));
    // A queue left disabled.
    fails_at_driver_ok(|d| {
        d.negotiate(FEATURES);
        d.setup_queue(0, QSIZE, 0);
    });
}

#[test]
fn driver_ok_before_features_ok_fails() {
    let mut d = Driver::new();
    d.common_write(0x14, u64::from(STATUS_ACKNOWLEDGE_DRIVER), 1);
    d.common_write(
        0x14,
        u64::from(STATUS_ACKNOWLEDGE_DRIVER | STATUS_DRIVER_OK),
        1,
    );
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
}

const STATUS_ACKNOWLEDGE_DRIVER: u8 =
    super::super::STATUS_ACKNOWLEDGE | super::super::STATUS_DRIVER;

#[test]
fn reset_returns_everything_to_its_initial_value() {
    let mut d = Driver::new();
    d.init(FEATURES);
    d.common_write(0x14, 0, 1);
    assert_eq!(d.status(), 0);
    assert_eq!(d.common_read(0x10, 2), u64::from(NO_VECTOR));
    d.common_write(0x16, 1, 2);
    assert_eq!(d.common_read(0x1C, 2), 0, "disabled");
    assert_eq!(d.common_read(0x18, 2), 256);
    assert_eq!(d.common_read(0x20, 8), 0);
    assert_eq!(d.common_read(0x1A, 2), u64::from(NO_VECTOR));
    d.common_write(0x08, 0, 4);
    assert_eq!(d.common_read(0x0C, 4), 0, "driver features cleared");
    // It can be brought up again.
    d.init(FEATURES);
    assert_eq!(d.status(), 0x0F);
}

/// Config writes through the ports, as a driver on bus 0, slot 1 makes them.
fn config_writer(root: &Arc<Mutex<PciRoot>>) -> impl FnMut(u32, u32) {
    let mut ports = PciConfigPorts(root.clone());
    move |reg: u32, value: u32| {
        ports.write(0, &(0x8000_0800u32 | reg).to_le_bytes());
        ports.write(4, &value.to_le_bytes());
    }
}

#[test]
fn notify_ioeventfds_follow_bar_4_while_running() {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let mut d = Driver::new();
    d.init(FEATURES);
    let vm = d.vm.clone();
    let dev = Arc::new(Mutex::new(d.dev));
    root.lock().unwrap().add_device(dev.clone()).unwrap();
    let base = dev.lock().unwrap().config().bar_address(4).unwrap();
    assert_eq!(vm.recorded().ioevents, vec![base + 0x3000, base + 0x3004]);
    assert_eq!(dev.lock().unwrap().notify_address(1), Some(base + 0x3004));
    let mut write = config_writer(&root);
    // Decoding off: nothing registered. Moved and back on: registered at the new place.
    write(0x04, 0);
    assert!(vm.recorded().ioevents.is_empty());
    write(0x20, 0xD000_0000);
    write(0x24, 0);
    assert!(vm.recorded().ioevents.is_empty());
    write(0x04, u32::from(COMMAND_MEMORY));
    assert_eq!(vm.recorded().ioevents, vec![0xD000_3000, 0xD000_3004]);
    // Parked outside the window (all ones while sizing): nothing registered.
    write(0x24, 0xFFFF_FFFF);
    assert!(vm.recorded().ioevents.is_empty());
    write(0x24, 0);
    assert_eq!(vm.recorded().ioevents.len(), 2);
    // A reset stops the device: its ioeventfds go.
    dev.lock().unwrap().write_bar(VIRTIO_BAR, 0x14, &[0]);
    assert!(vm.recorded().ioevents.is_empty());
    assert_eq!(dev.lock().unwrap().notify_address(0), None);
    let _ = pci::MMIO_WINDOW;
}

/// A probing driver sizes BARs again and again (decoding off, all ones, restore, decoding
/// on): none of that may reach KVM. Each queue's ioeventfd is registered once, at
/// DRIVER_OK, so the boot costs one `KVM_IOEVENTFD` per queue.
#[test]
fn bar_sizing_before_driver_ok_costs_no_ioeventfd_calls() {
    let mut d = Driver::new();
    let base: u64 = 0xD000_0000;
    let mut write = |reg: usize, value: u32| d.dev.write_config(reg, &value.to_le_bytes());
    write(0x20, base as u32);
    write(0x24, 0);
    for _ in 0..14 {
        write(0x04, 0);
        write(0x20, 0xFFFF_FFFF);
        write(0x20, base as u32);
        write(0x24, 0xFFFF_FFFF);
        write(0x24, 0);
        write(0x04, u32::from(COMMAND_MEMORY));
    }
    assert_eq!(d.dev.config().bar_address(4), Some(base));
    assert_eq!(d.vm.recorded().ioevent_calls, 0);
    assert_eq!(d.dev.notify_address(0), None);
    d.init(FEATURES);
    let recorded = d.vm.recorded();
    assert_eq!(recorded.ioevents, vec![base + 0x3000, base + 0x3004]);
    assert_eq!(recorded.ioevent_calls, 2, "one per queue");
}

#[test]
fn an_mmio_kick_without_ioeventfd_reaches_the_same_eventfd() {
    let mut d = Driver::new();
    d.dev
        .write_bar(VIRTIO_BAR, NOTIFY_OFFSET + 4, &1u16.to_le_bytes());
    assert_eq!(d.dev.notify[1].read().unwrap(), 1);
    assert!(d.dev.notify[0].read().is_err());
}

#[test]
fn without_msix_intx_follows_the_isr_like_qemu() {
    let mut d = Driver::new();
    d.init(FEATURES);
    assert!(!d.intx_high());
    d.add_rx_buffer(2048);
    d.add_rx_buffer(2048);
    d.kick(0);
    d.peer.inject(&[0xAB; 60]);
    d.backend_ready();
    assert!(d.intx_high(), "INTx asserted");
    assert!(!d.fired(0), "no MSI");
    assert_ne!(
        d.dev.read_config(0x04) >> 16 & 0x8,
        0,
        "status: interrupt pending"
    );
    // A second event while pending changes nothing (the line is already high).
    let changes = d.vm.recorded().line_changes;
    d.peer.inject(&[0xAC; 60]);
    d.backend_ready();
    assert_eq!(d.vm.recorded().line_changes, changes);
    let mut isr = [0u8; 1];
    d.dev.read_bar(VIRTIO_BAR, ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], 1, "queue interrupt");
    assert!(!d.intx_high(), "reading the ISR lowers the line");
    d.dev.read_bar(VIRTIO_BAR, ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], 0, "reading acknowledged it");
    assert_eq!(d.dev.read_config(0x04) >> 16 & 0x8, 0);
    // INTx disabled in the command register: ISR still set, line low; enabling raises it.
    let command = d.dev.config().command() | COMMAND_INTX_DISABLE;
    d.dev.write_config(0x04, &command.to_le_bytes());
    d.add_rx_buffer(2048);
    d.kick(0);
    d.peer.inject(&[0xCD; 60]);
    d.backend_ready();
    assert!(!d.intx_high());
    d.dev
        .write_config(0x04, &(command & !COMMAND_INTX_DISABLE).to_le_bytes());
    assert!(d.intx_high());
    // Enabling MSI-X takes the line down; a reset clears the ISR.
    d.enable_msix();
    assert!(!d.intx_high());
    d.common_write(0x14, 0, 1);
    d.dev.read_bar(VIRTIO_BAR, ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], 0);
}

#[test]
fn with_msix_each_queue_raises_its_vector() {
    let mut d = Driver::new();
    d.enable_msix();
    d.init(FEATURES);
    d.add_rx_buffer(2048);
    d.kick(0);
    d.peer.inject(&[0xAB; 60]);
    d.backend_ready();
    assert!(d.fired(0));
    d.add_tx_frame(&[1; 60]);
    d.kick(1);
    assert!(d.fired(1));
    assert!(!d.fired(2));
    assert!(!d.intx_high(), "INTx is off with MSI-X");
    let routes = d.vm.recorded().routes;
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[&25].data, 0x41);
}

#[test]
fn the_ioevent_table_is_empty_until_the_bar_decodes() {
    let d = Driver::new();
    assert!(d.vm.recorded().ioevents.is_empty());
    assert_eq!(d.dev.notify_address(0), None);
}
