//! The VF's runtime state as plain data: queue register blocks, transmit contexts, the
//! statistics registers and the interrupt and mailbox registers (their own modules), all in
//! one [`DeviceState`] a migration can save and restore as it is ([`DeviceState::check`]
//! validates a saved one first).

use super::interrupts::InterruptRegs;
use super::mailbox::Mailbox;
use crate::devices::DeviceStateError;
use ixgbevf_regs as r;
use serde::{Deserialize, Serialize};

/// Queue pairs the PF grants (GET_QUEUES) and the model serves.
pub const QUEUES: usize = r::QUEUES as usize;
/// SRRCTL after reset: 2 KiB packet buffers, 256-byte header buffers (Intel's shared code).
pub const SRRCTL_DEFAULT: u32 = 2 | (4 << r::SRRCTL_BSIZEHDR_SHIFT);
/// The 36 bits the octet counters keep.
const OCTETS_MASK: u64 = (1 << 36) - 1;

/// One queue's register block as the driver programmed it (RX and TX blocks share the type;
/// each uses its own fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegs {
    /// Ring base, low 32 bits.
    pub bal: u32,
    /// Ring base, high 32 bits.
    pub bah: u32,
    /// Ring length in bytes.
    pub len: u32,
    /// DCA control (stored only).
    pub dca: u32,
    /// Head: the next descriptor the device uses.
    pub head: u32,
    /// Tail: one past the last descriptor the driver handed over.
    pub tail: u32,
    /// RXDCTL / TXDCTL.
    pub dctl: u32,
    /// RX: SRRCTL (buffer size, descriptor type).
    pub srrctl: u32,
    /// RX: RSCCTL (stored only).
    pub rscctl: u32,
    /// TX: head write-back address, low (bit 0 enables).
    pub wbal: u32,
    /// TX: head write-back address, high.
    pub wbah: u32,
    /// The device stopped the queue after a bad value; it stays stopped until the driver
    /// writes its DCTL again or resets the VF.
    pub stopped: bool,
}

impl QueueRegs {
    /// An RX block after reset.
    pub const RX_RESET: QueueRegs = QueueRegs {
        srrctl: SRRCTL_DEFAULT,
        ..QueueRegs::TX_RESET
    };

    /// A TX block after reset.
    pub const TX_RESET: QueueRegs = QueueRegs {
        bal: 0,
        bah: 0,
        len: 0,
        dca: 0,
        head: 0,
        tail: 0,
        dctl: 0,
        srrctl: 0,
        rscctl: 0,
        wbal: 0,
        wbah: 0,
        stopped: false,
    };

    /// The ring's guest-physical base.
    pub fn base(&self) -> u64 {
        u64::from(self.bal) | (u64::from(self.bah) << 32)
    }

    /// Enabled by the driver and not stopped by the device.
    pub fn active(&self) -> bool {
        self.dctl & r::DCTL_ENABLE != 0 && !self.stopped
    }
}

/// A TX context descriptor as stored in one of a queue's two context slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxContext {
    /// Dword 0: IPLEN 8:0, MACLEN 15:9, VLAN tag 31:16.
    pub vlan_macip_lens: u32,
    /// Dword 1: seed / IPsec SA index (unused).
    pub seqnum_seed: u32,
    /// Dword 2: TUCMD (IPv4, L4 type), DTYP, DEXT.
    pub type_tucmd: u32,
    /// Dword 3: index 6:4, L4LEN 15:8, MSS 31:16.
    pub mss_l4len_idx: u32,
}

/// The VF statistics registers (read-only to the guest, never cleared by reads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// VFGPRC: good packets received.
    pub gprc: u32,
    /// VFGORC: good octets received (36 bits).
    pub gorc: u64,
    /// VFMPRC: multicast packets received.
    pub mprc: u32,
    /// VFGPTC: good packets transmitted.
    pub gptc: u32,
    /// VFGOTC: good octets transmitted (36 bits).
    pub gotc: u64,
}

impl Counters {
    /// Counts a received frame of `len` bytes.
    pub fn received(&mut self, frame: &[u8]) {
        self.gprc = self.gprc.wrapping_add(1);
        self.gorc = (self.gorc + frame.len() as u64) & OCTETS_MASK;
        // Multicast, not broadcast (the VF has no broadcast counter of its own).
        if frame.first().is_some_and(|b| b & 1 != 0) && frame.get(..6) != Some(&[0xFF; 6]) {
            self.mprc = self.mprc.wrapping_add(1);
        }
    }

    /// Counts a transmitted frame of `len` bytes.
    pub fn transmitted(&mut self, len: usize) {
        self.gptc = self.gptc.wrapping_add(1);
        self.gotc = (self.gotc + len as u64) & OCTETS_MASK;
    }
}

/// Everything the guest can observe or has programmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// VFLINKS bit 30.
    pub link_up: bool,
    /// Interrupt cause, mask, auto-clear/mask, vector maps and throttle registers.
    pub interrupts: InterruptRegs,
    /// RX queue register blocks (queue 0 receives; the others are storage).
    pub rx: [QueueRegs; r::MAX_QUEUES],
    /// TX queue register blocks (queues below [`QUEUES`] transmit).
    pub tx: [QueueRegs; r::MAX_QUEUES],
    /// Two context slots per serving TX queue.
    pub tx_contexts: [[TxContext; 2]; QUEUES],
    /// VFPSRTYPE (stored only).
    pub psrtype: u32,
    /// Statistics registers.
    pub counters: Counters,
    /// The mailbox, both sides.
    pub mailbox: Mailbox,
}

impl DeviceState {
    /// Power-on state for a VF whose permanent address is `mac`, link up.
    pub fn new(mac: [u8; 6]) -> Self {
        DeviceState {
            link_up: true,
            interrupts: InterruptRegs::default(),
            rx: [QueueRegs::RX_RESET; r::MAX_QUEUES],
            tx: [QueueRegs::TX_RESET; r::MAX_QUEUES],
            tx_contexts: [[TxContext::default(); 2]; QUEUES],
            psrtype: 0,
            counters: Counters::default(),
            mailbox: Mailbox::new(mac),
        }
    }

    /// Checks a saved state against what the register file can hold, so the restored device
    /// never indexes outside its arrays. Rings are not checked here: an enabled queue may
    /// hold any ring the guest wrote (the source's device checks it at its next use, not
    /// when it is written), and the restored device does the same
    /// ([`Ring::check`](super::ring::Ring::check) starts
    /// every use and stops the queue), so a guest with a bad ring moves and then finds its
    /// queue stopped, as it would have without the move.
    pub fn check(&self, trusted: bool) -> Result<(), DeviceStateError> {
        const DEV: &str = "ixgbevf";
        let i = &self.interrupts;
        for (field, value) in [
            ("VTEICR", i.eicr),
            ("VTEIMS", i.eims),
            ("VTEIAC", i.eiac),
            ("VTEIAM", i.eiam),
        ] {
            if value & !r::EICR_MASK != 0 {
                return Err(DeviceStateError::invalid(
                    DEV,
                    field,
                    format!("{value:#x} has bits beyond the {} vectors", r::MSIX_VECTORS),
                ));
            }
        }
        if i.ivar_misc > 0xFF {
            return Err(DeviceStateError::invalid(
                DEV,
                "VTIVAR_MISC",
                format!("{:#x}", i.ivar_misc),
            ));
        }
        for (field, value) in [
            ("VFGORC", self.counters.gorc),
            ("VFGOTC", self.counters.gotc),
        ] {
            if value > OCTETS_MASK {
                return Err(DeviceStateError::invalid(
                    DEV,
                    field,
                    format!("{value:#x} is wider than 36 bits"),
                ));
            }
        }
        self.mailbox.check(trusted)?;
        for (kind, queues) in [("RX", &self.rx), ("TX", &self.tx)] {
            for (n, q) in queues.iter().enumerate() {
                let field = |f: &str| format!("{kind} queue {n} {f}");
                if q.head > 0xFFFF || q.tail > 0xFFFF {
                    return Err(DeviceStateError::invalid(
                        DEV,
                        field("head/tail"),
                        format!("{}/{} are wider than 16 bits", q.head, q.tail),
                    ));
                }
            }
        }
        Ok(())
    }

    /// VFCTRL.RST: queues, contexts and interrupt registers back to reset values, the
    /// mailbox reset (RSTD set once). Link state and statistics survive, as on hardware.
    pub fn vf_reset(&mut self, mac: [u8; 6]) {
        self.interrupts = InterruptRegs::default();
        self.rx = [QueueRegs::RX_RESET; r::MAX_QUEUES];
        self.tx = [QueueRegs::TX_RESET; r::MAX_QUEUES];
        self.tx_contexts = [[TxContext::default(); 2]; QUEUES];
        self.psrtype = 0;
        self.mailbox.vf_reset(mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_counters_keep_36_bits_and_multicast_is_counted_apart() {
        let mut c = Counters {
            gorc: OCTETS_MASK - 1,
            ..Counters::default()
        };
        c.received(&[0x01, 0, 0x5E, 0, 0, 1, 0, 0]);
        assert_eq!(c.gorc, 6, "wrapped at 2^36");
        assert_eq!((c.gprc, c.mprc), (1, 1));
        c.received(&[0xFF; 14]);
        c.received(&[0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            (c.gprc, c.mprc),
            (3, 1),
            "broadcast and unicast are not multicast"
        );
        c.transmitted(60);
        assert_eq!((c.gptc, c.gotc), (1, 60));
    }
}
