//! The bus through its ports and window: enumeration, config access lanes, firmware BAR
//! assignment, BAR sizing and moves, hot-unplug and re-plug, a full bus, and the bus state's
//! round trip and refusals.

use super::config::{BarInfo, COMMAND_MEMORY};
use super::*;

/// A function with a 4 KiB BAR 1 and a 16 KiB 64-bit BAR 4 that records BAR accesses.
struct Dummy {
    config: ConfigSpace,
    writes: Vec<(usize, u64, Vec<u8>)>,
}

impl Dummy {
    fn new() -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1AF4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1AF4,
            subsystem: 1,
        });
        let b32 = BarInfo {
            size: 0x1000,
            kind: BarKind::Memory32,
        };
        let b64 = BarInfo {
            size: 0x4000,
            kind: BarKind::Memory64 { prefetchable: true },
        };
        config.add_bar(1, b32).unwrap();
        config.add_bar(4, b64).unwrap();
        Dummy {
            config,
            writes: Vec::new(),
        }
    }
}

impl PciDevice for Dummy {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill((bar as u8) << 4 | offset as u8);
    }
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.writes.push((bar, offset, data.to_vec()));
    }
}

fn select(ports: &mut PciConfigPorts, device: u32, register: u32) {
    ports.write(0, &(0x8000_0000 | device << 11 | register).to_le_bytes());
}

fn read32(ports: &mut PciConfigPorts, device: u32, register: u32) -> u32 {
    select(ports, device, register);
    let mut b = [0u8; 4];
    ports.read(4, &mut b);
    u32::from_le_bytes(b)
}

fn write32(ports: &mut PciConfigPorts, device: u32, register: u32, value: u32) {
    select(ports, device, register);
    ports.write(4, &value.to_le_bytes());
}

fn bus() -> (PciConfigPorts, PciMmioWindow, Arc<Mutex<Dummy>>) {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let dummy = Arc::new(Mutex::new(Dummy::new()));
    let slot = root.lock().unwrap().add_device(dummy.clone()).unwrap();
    assert_eq!(slot, 1);
    (PciConfigPorts(root.clone()), PciMmioWindow(root), dummy)
}

#[test]
fn enumeration_finds_the_bridge_and_the_device() {
    let (mut ports, _, _) = bus();
    assert_eq!(read32(&mut ports, 0, 0), 0x1237_8086);
    assert_eq!(read32(&mut ports, 0, 8) >> 8, 0x06_00_00);
    assert_eq!(read32(&mut ports, 1, 0), 0x1041_1AF4);
    assert_eq!(read32(&mut ports, 2, 0), 0xFFFF_FFFF, "empty slot");
    // Other functions, other buses and a clear enable bit read as nothing.
    ports.write(0, &(0x8000_0100u32 | 1 << 11).to_le_bytes());
    let mut b = [0u8; 4];
    ports.read(4, &mut b);
    assert_eq!(b, [0xFF; 4]);
    ports.write(0, &0x8001_0800u32.to_le_bytes());
    ports.read(4, &mut b);
    assert_eq!(b, [0xFF; 4]);
    ports.write(0, &0x0000_0800u32.to_le_bytes());
    ports.read(4, &mut b);
    assert_eq!(b, [0xFF; 4]);
    // CONFIG_ADDRESS reads back without its reserved bits.
    ports.write(0, &0xFF00_0803u32.to_le_bytes());
    ports.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0800);
}

#[test]
fn byte_and_word_config_accesses_pick_their_lanes() {
    let (mut ports, _, _) = bus();
    select(&mut ports, 1, 0);
    let mut w = [0u8; 2];
    ports.read(6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1041);
    let mut b = [0u8; 1];
    ports.read(5, &mut b);
    assert_eq!(b[0], 0x1A);
    ports.read(5, &mut w);
    assert_eq!(w, [0xFF; 2], "misaligned word");
}

#[test]
fn firmware_assignment_places_bars_in_the_window_with_decoding_on() {
    let (mut ports, mut window, dummy) = bus();
    assert_eq!(read32(&mut ports, 1, 0x14), 0xC000_0000);
    assert_eq!(read32(&mut ports, 1, 0x20), 0xC000_400C);
    assert_eq!(read32(&mut ports, 1, 0x24), 0);
    assert_ne!(read32(&mut ports, 1, 4) & u32::from(COMMAND_MEMORY), 0);
    let mut b = [0u8; 4];
    window.read(0x4000 + 0x10, &mut b);
    assert_eq!(b, [0x40 | 0x10; 4]);
    window.write(0x24, &[1, 2, 3, 4]);
    window.write(0x7FFE, &[1, 2, 3, 4]); // straddles BAR 4's end: nobody's
    assert_eq!(
        dummy.lock().unwrap().writes,
        vec![(1, 0x24, vec![1, 2, 3, 4])]
    );
}

#[test]
fn the_guest_can_size_and_move_bars() {
    let (mut ports, mut window, _) = bus();
    // Sizing with decoding off, as drivers do.
    write32(&mut ports, 1, 4, 0);
    write32(&mut ports, 1, 0x20, 0xFFFF_FFFF);
    write32(&mut ports, 1, 0x24, 0xFFFF_FFFF);
    assert_eq!(read32(&mut ports, 1, 0x20), 0xFFFF_C00C);
    assert_eq!(read32(&mut ports, 1, 0x24), 0xFFFF_FFFF);
    // Move BAR 4 to 0xD000_0000 and turn decoding back on.
    write32(&mut ports, 1, 0x20, 0xD000_0000);
    write32(&mut ports, 1, 0x24, 0);
    let mut b = [0u8; 4];
    window.read(0x4000, &mut b);
    assert_eq!(b, [0xFF; 4], "decoding is off");
    write32(&mut ports, 1, 4, u32::from(COMMAND_MEMORY));
    window.read(0x1000_0000 + 8, &mut b);
    assert_eq!(b, [0x48; 4]);
    window.read(0x4000, &mut b);
    assert_eq!(b, [0xFF; 4], "the old place is empty");
}

#[test]
fn an_unplugged_slot_reads_all_ones_and_its_bars_stop_decoding() {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let dummy = Arc::new(Mutex::new(Dummy::new()));
    root.lock().unwrap().add_device(dummy.clone()).unwrap();
    let mut ports = PciConfigPorts(root.clone());
    let mut window = PciMmioWindow(root.clone());
    let taken = root.lock().unwrap().unplug(1).expect("a device was there");
    assert!(!root.lock().unwrap().is_plugged(1));
    assert_eq!(read32(&mut ports, 1, 0), 0xFFFF_FFFF);
    assert_eq!(read32(&mut ports, 1, 0x14), 0xFFFF_FFFF);
    write32(&mut ports, 1, 4, 0); // dropped: nobody there
    let mut b = [0u8; 4];
    window.read(0x4000 + 0x10, &mut b);
    assert_eq!(b, [0xFF; 4]);
    window.write(0x24, &[1, 2, 3, 4]);
    assert!(
        dummy.lock().unwrap().writes.is_empty(),
        "writes are dropped"
    );
    assert!(Arc::ptr_eq(&taken, &(dummy.clone() as SharedPciDevice)));
    // Nothing more to take; the bridge is never taken.
    assert!(root.lock().unwrap().unplug(1).is_none());
    assert!(root.lock().unwrap().unplug(0).is_none());
    assert!(root.lock().unwrap().unplug(9).is_none());
    assert_eq!(read32(&mut ports, 0, 0), 0x1237_8086);
}

#[test]
fn a_replugged_device_gets_the_first_addresses_with_decoding_on() {
    let (mut ports, mut window, _) = bus();
    let root = ports.0.clone();
    // The guest moved BAR 4 before the card was pulled.
    write32(&mut ports, 1, 0x20, 0xD000_0000);
    let _old = root.lock().unwrap().unplug(1).unwrap();
    let fresh = Arc::new(Mutex::new(Dummy::new()));
    assert_eq!(fresh.lock().unwrap().config.command() & COMMAND_MEMORY, 0);
    root.lock().unwrap().replug(1, fresh.clone()).unwrap();
    assert!(root.lock().unwrap().is_plugged(1));
    assert_eq!(read32(&mut ports, 1, 0), 0x1041_1AF4);
    assert_eq!(read32(&mut ports, 1, 0x14), 0xC000_0000);
    assert_eq!(read32(&mut ports, 1, 0x20), 0xC000_400C);
    assert_ne!(read32(&mut ports, 1, 4) & u32::from(COMMAND_MEMORY), 0);
    let mut b = [0u8; 4];
    window.read(0x4000 + 0x10, &mut b);
    assert_eq!(b, [0x40 | 0x10; 4]);
    window.write(0x24, &[9; 4]);
    assert_eq!(fresh.lock().unwrap().writes, vec![(1, 0x24, vec![9; 4])]);
    assert_eq!(
        root.lock().unwrap().replug(1, fresh.clone()),
        Err(PciError::SlotOccupied(1))
    );
    assert_eq!(
        root.lock().unwrap().replug(5, fresh.clone()),
        Err(PciError::NoSuchSlot(5))
    );
    assert_eq!(
        root.lock().unwrap().replug(0, fresh),
        Err(PciError::NoSuchSlot(0))
    );
}

#[test]
fn a_device_with_other_bars_is_refused_at_replug() {
    let (ports, _, _) = bus();
    let root = ports.0.clone();
    root.lock().unwrap().unplug(1).unwrap();
    let bridge = Arc::new(Mutex::new(HostBridge::new()));
    assert_eq!(
        root.lock().unwrap().replug(1, bridge),
        Err(PciError::BarLayout(1))
    );
    assert!(!root.lock().unwrap().is_plugged(1));
    // A later device still gets the next free addresses, after the empty slot's.
    let next = Arc::new(Mutex::new(Dummy::new()));
    assert_eq!(root.lock().unwrap().add_device(next.clone()).unwrap(), 2);
    assert_eq!(
        next.lock().unwrap().config.bar_address(1),
        Some(0xC000_8000)
    );
}

#[test]
fn the_bus_fills_up() {
    let mut root = PciRoot::new();
    for _ in 1..MAX_DEVICES {
        root.add_device(Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
    }
    assert_eq!(
        root.add_device(Arc::new(Mutex::new(HostBridge::new()))),
        Err(PciError::BusFull)
    );
}

type TwoSlots = (Arc<Mutex<PciRoot>>, Arc<Mutex<Dummy>>, Arc<Mutex<Dummy>>);

/// Two dummies at slots 1 and 2 on a fresh bus, as the destination builds it.
fn two_slot_bus() -> TwoSlots {
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let a = Arc::new(Mutex::new(Dummy::new()));
    let b = Arc::new(Mutex::new(Dummy::new()));
    root.lock().unwrap().add_device(a.clone()).unwrap();
    root.lock().unwrap().add_device(b.clone()).unwrap();
    (root, a, b)
}

#[test]
fn the_bus_state_survives_save_restore_save_and_decoding_follows_the_functions() {
    let (root, a, _b) = two_slot_bus();
    let mut ports = PciConfigPorts(root.clone());
    // The guest moves slot 1's BAR 4, then slot 2 is pulled; CONFIG_ADDRESS points at 1.
    write32(&mut ports, 1, 0x20, 0xD000_0000);
    root.lock().unwrap().unplug(2).unwrap();
    write32(&mut ports, 0, 0x0C, 0x0000_4000); // the bridge's latency timer
    select(&mut ports, 1, 0);
    let saved = root.lock().unwrap().save();
    assert_eq!(saved.slots.len(), 2);
    assert!(!saved.slots[1].plugged);
    let function = a.lock().unwrap().config.save_state();

    let (fresh, fa, _fb) = two_slot_bus();
    let restored = {
        let d = fa.lock().unwrap();
        d.config.check_state(&function, "dummy").unwrap()
    };
    fa.lock().unwrap().config = restored;
    fresh.lock().unwrap().restore(saved.clone()).unwrap();
    assert_eq!(fresh.lock().unwrap().save(), saved);
    let mut ports = PciConfigPorts(fresh.clone());
    let mut window = PciMmioWindow(fresh.clone());
    let mut b = [0u8; 4];
    ports.read(4, &mut b);
    assert_eq!(
        u32::from_le_bytes(b),
        0x1041_1AF4,
        "CONFIG_ADDRESS restored"
    );
    assert_eq!(read32(&mut ports, 2, 0), 0xFFFF_FFFF, "slot 2 is empty");
    assert_eq!(read32(&mut ports, 0, 0x0C), 0x0000_4000);
    window.read(0x1000_0000 + 8, &mut b);
    assert_eq!(b, [0x48; 4], "BAR 4 decodes where the guest put it");
    window.read(0x4000, &mut b);
    assert_eq!(b, [0xFF; 4]);
}

#[test]
fn a_last_slot_only_one_side_has_is_taken_when_it_is_empty_on_the_source() {
    // The source had one slot more, emptied before the save (its VF left): accepted.
    let (root, _, _) = two_slot_bus();
    let mut saved = root.lock().unwrap().save();
    let mut gone = saved.slots[1].clone();
    gone.plugged = false;
    saved.slots.push(gone);
    let (fresh, _, _) = two_slot_bus();
    fresh.lock().unwrap().restore(saved).unwrap();
    assert!(fresh.lock().unwrap().is_plugged(2));
    // This bus has one slot more than the source (a VF the source lacked): accepted,
    // and that slot stays empty until it is plugged in.
    let mut saved = root.lock().unwrap().save();
    saved.slots.pop();
    let (fresh, _, _) = two_slot_bus();
    fresh.lock().unwrap().restore(saved).unwrap();
    assert!(fresh.lock().unwrap().is_plugged(1));
    assert!(!fresh.lock().unwrap().is_plugged(2));
}

#[test]
fn a_bus_state_for_other_slots_or_bars_is_refused() {
    let (root, _, _) = two_slot_bus();
    let saved = root.lock().unwrap().save();
    type Mutation = fn(&mut PciRootState);
    let cases: [(&str, Mutation); 5] = [
        ("slots", |s| {
            let extra = s.slots[1].clone();
            s.slots.push(extra);
        }),
        ("slot 1 IDs", |s| s.slots[0].device = 0x1000),
        ("slot 2 BARs", |s| s.slots[1].bars.clear()),
        ("firmware address of BAR 4", |s| {
            s.slots[0].bars[1].1 = 0xFFFF_F000
        }),
        ("next BAR address", |s| s.next_bar = 0),
    ];
    for (field, mutate) in cases {
        let mut bad = saved.clone();
        mutate(&mut bad);
        let (fresh, _, _) = two_slot_bus();
        let before = fresh.lock().unwrap().save();
        let err = fresh.lock().unwrap().restore(bad).unwrap_err();
        assert!(err.to_string().contains(field), "{err} should name {field}");
        assert_eq!(fresh.lock().unwrap().save(), before);
    }
    // Two functions decoding the same addresses.
    let (fresh, fa, fb) = two_slot_bus();
    let at = fa.lock().unwrap().config.bar_address(4).unwrap();
    fb.lock().unwrap().config.set_bar_address(4, at);
    let err = fresh.lock().unwrap().restore(saved).unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
}
