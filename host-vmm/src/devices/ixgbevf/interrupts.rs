//! The VF's interrupt registers (`docs/ixgbevf.md` §2, §7): causes map to MSI-X vectors through
//! VTIVAR and VTIVAR_MISC; raising vector `v` sets VTEICR bit `v`, and if VTEIMS enables it the
//! message is sent (the MSI-X table's own mask may still hold it in the PBA), after which VTEIAC
//! clears the cause and VTEIAM the enable. A cause left pending goes out when VTEIMS enables it
//! later.
//!
//! Pure register logic: sending is a callback (`send(v)` returns whether MSI-X took it), so
//! these rules are tested without any MSI-X state.

use ixgbevf_regs as r;
use serde::{Deserialize, Serialize};

/// What raised an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// RX queue `n` wrote back descriptors.
    Rx(usize),
    /// TX queue `n` wrote back descriptors.
    Tx(usize),
    /// The mailbox or the link ("other").
    Other,
}

/// VTEICR, VTEIMS, VTEIAC, VTEIAM, VTIVAR(0..3), VTIVAR_MISC and VTEITR(0..2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptRegs {
    /// Pending causes, one bit per vector.
    pub eicr: u32,
    /// Enabled vectors.
    pub eims: u32,
    /// Vectors whose cause clears when their message is sent.
    pub eiac: u32,
    /// Vectors whose enable clears when their message is sent.
    pub eiam: u32,
    /// Queue-to-vector maps, two queue pairs each.
    pub ivar: [u32; 4],
    /// Vector of the "other" cause (bits 7:0).
    pub ivar_misc: u32,
    /// Throttle registers (stored only: every cause is sent at once).
    pub eitr: [u32; r::MSIX_VECTORS as usize],
}

/// The vector an IVAR byte names, if valid and one of ours.
fn ivar_vector(byte: u32) -> Option<u16> {
    let vector = (byte & 0x3) as u16;
    (byte & r::IVAR_VALID != 0 && vector < r::MSIX_VECTORS).then_some(vector)
}

impl InterruptRegs {
    /// The vector `cause` is mapped to, if any.
    pub fn vector_of(&self, cause: Cause) -> Option<u16> {
        let byte = match cause {
            Cause::Other => self.ivar_misc & 0xFF,
            Cause::Rx(q) | Cause::Tx(q) => {
                let reg = *self.ivar.get(q / 2)?;
                let tx = u32::from(matches!(cause, Cause::Tx(_)));
                let shift = 16 * (q as u32 % 2) + 8 * tx;
                (reg >> shift) & 0xFF
            }
        };
        ivar_vector(byte)
    }

    /// Raises `cause`: sets its vector's cause bit and sends it if enabled.
    pub fn raise(&mut self, cause: Cause, send: &mut dyn FnMut(u16) -> bool) {
        if let Some(v) = self.vector_of(cause) {
            self.eicr |= 1 << v;
            self.deliver(1 << v, send);
        }
    }

    /// Sends every vector in `bits` that has a cause pending and is enabled, then applies
    /// auto-clear and auto-mask to those MSI-X accepted.
    fn deliver(&mut self, bits: u32, send: &mut dyn FnMut(u16) -> bool) {
        let ready = bits & self.eicr & self.eims & r::EICR_MASK;
        for v in 0..r::MSIX_VECTORS {
            let bit = 1u32 << v;
            if ready & bit != 0 && send(v) {
                self.eicr &= !(bit & self.eiac);
                self.eims &= !(bit & self.eiam);
            }
        }
    }

    /// A read of VTEICR: the causes, which the read clears.
    pub fn read_eicr(&mut self) -> u32 {
        std::mem::take(&mut self.eicr)
    }

    /// A write to VTEICR: write-1-to-clear.
    pub fn write_eicr(&mut self, value: u32) {
        self.eicr &= !value;
    }

    /// A write to VTEICS: sets causes, sending the enabled ones.
    pub fn write_eics(&mut self, value: u32, send: &mut dyn FnMut(u16) -> bool) {
        let bits = value & r::EICR_MASK;
        self.eicr |= bits;
        self.deliver(bits, send);
    }

    /// A write to VTEIMS: enables vectors; causes already pending on them go out now.
    pub fn write_eims(&mut self, value: u32, send: &mut dyn FnMut(u16) -> bool) {
        let bits = value & r::EICR_MASK;
        self.eims |= bits;
        self.deliver(bits, send);
    }

    /// A write to VTEIMC: disables vectors.
    pub fn write_eimc(&mut self, value: u32) {
        self.eims &= !value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every vector sent; MSI-X accepts all.
    fn recorder(log: &mut Vec<u16>) -> impl FnMut(u16) -> bool + '_ {
        move |v| {
            log.push(v);
            true
        }
    }

    #[test]
    fn ivar_bytes_map_queues_and_other_to_vectors() {
        let mut i = InterruptRegs {
            ivar: [0x8180_8180, 0x0000_0082, 0, 0],
            ivar_misc: 0x82,
            ..InterruptRegs::default()
        };
        assert_eq!(i.vector_of(Cause::Rx(0)), Some(0));
        assert_eq!(i.vector_of(Cause::Tx(0)), Some(1));
        assert_eq!(i.vector_of(Cause::Rx(1)), Some(0));
        assert_eq!(i.vector_of(Cause::Tx(1)), Some(1));
        assert_eq!(i.vector_of(Cause::Rx(2)), Some(2));
        assert_eq!(i.vector_of(Cause::Tx(2)), None, "valid bit clear");
        assert_eq!(i.vector_of(Cause::Other), Some(2));
        assert_eq!(i.vector_of(Cause::Rx(8)), None);
        i.ivar_misc = 0x83;
        assert_eq!(i.vector_of(Cause::Other), None, "vector 3 does not exist");
    }

    #[test]
    fn a_masked_cause_waits_and_goes_out_when_enabled() {
        let mut i = InterruptRegs {
            ivar_misc: 0x82,
            ..InterruptRegs::default()
        };
        let mut sent = Vec::new();
        i.raise(Cause::Other, &mut recorder(&mut sent));
        assert!(sent.is_empty());
        assert_eq!(i.eicr, 0b100);
        i.write_eims(0b001, &mut recorder(&mut sent));
        assert!(sent.is_empty(), "another vector enabled");
        i.write_eims(0b100, &mut recorder(&mut sent));
        assert_eq!(sent, vec![2]);
        assert_eq!(i.eicr, 0b100, "no auto-clear: still pending");
        assert_eq!(i.read_eicr(), 0b100);
        assert_eq!(i.read_eicr(), 0, "the read cleared it");
    }

    #[test]
    fn auto_clear_and_auto_mask_apply_when_a_message_is_sent() {
        let mut i = InterruptRegs {
            ivar: [0x0000_8180, 0, 0, 0],
            eims: 0b011,
            eiac: 0b001,
            eiam: 0b011,
            ..InterruptRegs::default()
        };
        let mut sent = Vec::new();
        i.raise(Cause::Rx(0), &mut recorder(&mut sent));
        i.raise(Cause::Tx(0), &mut recorder(&mut sent));
        assert_eq!(sent, vec![0, 1]);
        assert_eq!(i.eicr, 0b010, "vector 0 auto-cleared, vector 1 not");
        assert_eq!(i.eims, 0, "both auto-masked");
        i.raise(Cause::Rx(0), &mut recorder(&mut sent));
        assert_eq!(sent.len(), 2, "masked now");
        i.write_eimc(0b111);
        i.write_eicr(0b011);
        assert_eq!(i.eicr, 0);
    }

    #[test]
    fn eics_sets_causes_and_fires_enabled_vectors_only() {
        let mut i = InterruptRegs {
            eims: 0b010,
            ..InterruptRegs::default()
        };
        let mut sent = Vec::new();
        i.write_eics(0xFFFF_FFFF, &mut recorder(&mut sent));
        assert_eq!(i.eicr, 0b111, "only three causes exist");
        assert_eq!(sent, vec![1]);
    }

    #[test]
    fn a_refused_message_keeps_cause_and_enable() {
        let mut i = InterruptRegs {
            ivar_misc: 0x80,
            eims: 1,
            eiac: 1,
            eiam: 1,
            ..InterruptRegs::default()
        };
        i.raise(Cause::Other, &mut |_| false);
        assert_eq!((i.eicr, i.eims), (1, 1), "MSI-X off: nothing was sent");
    }
}
