//! The frame host-vmm sends for a guest that just arrived, as QEMU's announce-self does: a
//! broadcast RARP from the guest's MAC, so switches learn the new port before the guest
//! says anything itself.

/// EtherType of RARP.
const ETHERTYPE_RARP: u16 = 0x8035;
/// RARP "request reverse" (RFC 903).
const OP_REQUEST_REVERSE: u16 = 3;
/// The shortest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;

/// A broadcast RARP request-reverse from `mac` about `mac`, padded to 60 bytes.
pub fn rarp(mac: [u8; 6]) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&OP_REQUEST_REVERSE.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sender hardware address; sender IP stays 0
    f[32..38].copy_from_slice(&mac); // target hardware address; target IP stays 0
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_is_a_broadcast_from_the_guest_about_the_guest() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp(mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[32..38], &mac);
        assert_eq!(&f[28..32], &[0; 4]);
    }
}
