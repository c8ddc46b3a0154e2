//! The Intel 82599 SR-IOV virtual function's register map, PF↔VF mailbox messages and
//! descriptor layout (`docs/ixgbevf.md` §1–§6): one definition for the guest driver
//! (`drivers::ixgbevf`) and for host-vmm's device model (`devices::ixgbevf`).
//!
//! Plain constants and small pure helpers only; nothing here touches hardware, and the crate
//! is `no_std` with no dependencies so the guest can use it as well as the host.

#![no_std]
#![deny(unsafe_code)]

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the 82599 virtual function.
pub const DEVICE_ID_82599_VF: u16 = 0x10ED;
/// Register BAR (BAR0) and MSI-X BAR (BAR3) size.
pub const BAR_SIZE: u64 = 16 * 1024;
/// BAR index of the registers.
pub const REGS_BAR: u8 = 0;
/// BAR index of the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 3;
/// Offset of the MSI-X PBA inside [`MSIX_BAR`] (the table is at 0).
pub const MSIX_PBA_OFFSET: u64 = 0x2000;
/// MSI-X vectors of an 82599 VF.
pub const MSIX_VECTORS: u16 = 3;
/// Queue pairs the PF grants (GET_QUEUES reply).
pub const QUEUES: u32 = 2;

/// VF control; [`VFCTRL_RST`] resets the VF.
pub const VFCTRL: usize = 0x0000;
/// VF software reset (self-clearing).
pub const VFCTRL_RST: u32 = 1 << 26;
/// VF status; read to flush posted writes. All ones means the device is gone.
pub const VFSTATUS: usize = 0x0008;
/// Link status.
pub const VFLINKS: usize = 0x0010;
/// VFLINKS: link up.
pub const VFLINKS_UP: u32 = 1 << 30;
/// VFLINKS: speed field mask (bits 29:28).
pub const VFLINKS_SPEED_MASK: u32 = 0x3 << 28;
/// VFLINKS: 10 Gb/s.
pub const VFLINKS_SPEED_10G: u32 = 0x3 << 28;
/// Free-running timer (read-only).
pub const VFFRTIMER: usize = 0x0048;

/// Interrupt cause (read clears, write 1s clears); bit `v` is MSI-X vector `v`.
pub const VTEICR: usize = 0x0100;
/// Interrupt cause set (write 1s).
pub const VTEICS: usize = 0x0104;
/// Interrupt mask set (write 1s enables; read gives the mask).
pub const VTEIMS: usize = 0x0108;
/// Interrupt mask clear (write 1s disables).
pub const VTEIMC: usize = 0x010C;
/// Auto-clear: causes cleared when their MSI-X message is sent.
pub const VTEIAC: usize = 0x0110;
/// Auto-mask: enables cleared when their MSI-X message is sent.
pub const VTEIAM: usize = 0x0114;
/// Valid interrupt cause bits (three vectors).
pub const EICR_MASK: u32 = 0x7;
/// Queue-to-vector map `n` (two queue pairs per register).
pub const fn vtivar(n: usize) -> usize {
    0x0120 + 4 * n
}
/// Vector of the mailbox/"other" cause.
pub const VTIVAR_MISC: usize = 0x0140;
/// IVAR byte: entry valid.
pub const IVAR_VALID: u32 = 0x80;
/// Interrupt throttle for vector `v`.
pub const fn vteitr(v: usize) -> usize {
    0x0820 + 4 * v
}

/// Mailbox memory: 16 dwords shared by both directions.
pub const VFMBMEM: usize = 0x0200;
/// Mailbox size in dwords.
pub const MBX_WORDS: usize = 16;
/// Mailbox control.
pub const VFMAILBOX: usize = 0x02FC;
/// VFMAILBOX: request for the PF is in VFMBMEM (write-only strobe).
pub const MBX_REQ: u32 = 1 << 0;
/// VFMAILBOX: the VF has read the PF's message (write-only strobe).
pub const MBX_ACK: u32 = 1 << 1;
/// VFMAILBOX: the VF holds the buffer.
pub const MBX_VFU: u32 = 1 << 2;
/// VFMAILBOX: the PF holds the buffer.
pub const MBX_PFU: u32 = 1 << 3;
/// VFMAILBOX: the PF wrote a message (read clears).
pub const MBX_PFSTS: u32 = 1 << 4;
/// VFMAILBOX: the PF acknowledged the VF's message (read clears).
pub const MBX_PFACK: u32 = 1 << 5;
/// VFMAILBOX: PF reset in progress (level).
pub const MBX_RSTI: u32 = 1 << 6;
/// VFMAILBOX: PF/VF reset done (read clears).
pub const MBX_RSTD: u32 = 1 << 7;
/// VFMAILBOX bits a read clears; drivers keep them in a software shadow.
pub const MBX_R2C_BITS: u32 = MBX_PFSTS | MBX_PFACK | MBX_RSTD;

/// Packet-split receive types.
pub const VFPSRTYPE: usize = 0x0300;

/// Receive queue `q` register block base.
pub const fn rx_queue(q: usize) -> usize {
    0x1000 + 0x40 * q
}
/// Transmit queue `q` register block base.
pub const fn tx_queue(q: usize) -> usize {
    0x2000 + 0x40 * q
}
/// Queue block: descriptor ring base, low 32 bits.
pub const Q_BAL: usize = 0x00;
/// Queue block: descriptor ring base, high 32 bits.
pub const Q_BAH: usize = 0x04;
/// Queue block: ring length in bytes (multiple of 128).
pub const Q_LEN: usize = 0x08;
/// Queue block: DCA control (stored only).
pub const Q_DCA: usize = 0x0C;
/// Queue block: head.
pub const Q_HEAD: usize = 0x10;
/// RX block: split and receive control.
pub const RX_SRRCTL: usize = 0x14;
/// Queue block: tail.
pub const Q_TAIL: usize = 0x18;
/// Queue block: RXDCTL / TXDCTL.
pub const Q_DCTL: usize = 0x28;
/// RX block: RSC control (stored only).
pub const RX_RSCCTL: usize = 0x2C;
/// TX block: head write-back address, low (bit 0 enables).
pub const TX_WBAL: usize = 0x38;
/// TX block: head write-back address, high.
pub const TX_WBAH: usize = 0x3C;
/// Number of queue register blocks of each kind.
pub const MAX_QUEUES: usize = 8;

/// RXDCTL/TXDCTL: queue enable.
pub const DCTL_ENABLE: u32 = 1 << 25;
/// TXDCTL: software flush (self-clearing).
pub const TXDCTL_SWFLSH: u32 = 1 << 26;
/// RXDCTL: strip VLAN tags.
pub const RXDCTL_VME: u32 = 1 << 30;
/// SRRCTL: packet buffer size field, in KiB.
pub const SRRCTL_BSIZEPKT_MASK: u32 = 0x7F;
/// SRRCTL: header buffer size field shift (64-byte units).
pub const SRRCTL_BSIZEHDR_SHIFT: u32 = 8;
/// SRRCTL: descriptor type field.
pub const SRRCTL_DESCTYPE_MASK: u32 = 0x7 << 25;
/// SRRCTL: advanced descriptors, one buffer.
pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 0x1 << 25;
/// SRRCTL: drop when no descriptor is free.
pub const SRRCTL_DROP_EN: u32 = 1 << 28;
/// TDWBAL: head write-back enable.
pub const TDWBAL_ENABLE: u32 = 1;

/// Good packets received.
pub const VFGPRC: usize = 0x101C;
/// Good octets received, low 32 bits.
pub const VFGORC_LSB: usize = 0x1020;
/// Good octets received, high 4 bits.
pub const VFGORC_MSB: usize = 0x1024;
/// Multicast packets received.
pub const VFMPRC: usize = 0x1034;
/// Good packets transmitted.
pub const VFGPTC: usize = 0x201C;
/// Good octets transmitted, low 32 bits.
pub const VFGOTC_LSB: usize = 0x2020;
/// Good octets transmitted, high 4 bits.
pub const VFGOTC_MSB: usize = 0x2024;

/// Size of one descriptor (RX and TX).
pub const DESC_LEN: usize = 16;
/// Ring lengths must be a multiple of this many bytes (eight descriptors).
pub const RING_ALIGN_LEN: u32 = 128;

/// RX write-back status: descriptor done.
pub const RXD_STAT_DD: u32 = 1 << 0;
/// RX write-back status: end of packet.
pub const RXD_STAT_EOP: u32 = 1 << 1;
/// RX write-back errors that mean a bad frame (CE, LE, PE, OSE, USE).
pub const RXD_ERR_FRAME: u32 = (1 << 24) | (1 << 25) | (1 << 27) | (1 << 28) | (1 << 29);
/// RX write-back status: UDP checksum checked (with `RXD_STAT_L4CS`).
pub const RXD_STAT_UDPCS: u32 = 1 << 4;
/// RX write-back status: L4 (TCP/UDP) checksum checked; `RXD_ERR_TCPE` says if it was bad.
pub const RXD_STAT_L4CS: u32 = 1 << 5;
/// RX write-back status: IPv4 header checksum checked; `RXD_ERR_IPE` says if it was bad.
pub const RXD_STAT_IPCS: u32 = 1 << 6;
/// RX write-back error: the L4 checksum was wrong.
pub const RXD_ERR_TCPE: u32 = 1 << 30;
/// RX write-back error: the IPv4 header checksum was wrong.
pub const RXD_ERR_IPE: u32 = 1 << 31;
/// RX write-back: byte offset of the status/error dword.
pub const RXD_STATUS_OFFSET: usize = 8;
/// RX write-back: byte offset of the 16-bit packet length.
pub const RXD_LENGTH_OFFSET: usize = 12;

/// TX cmd_type_len: descriptor type "advanced data".
pub const TXD_DTYP_DATA: u32 = 0x3 << 20;
/// TX cmd_type_len: descriptor type "advanced context".
pub const TXD_DTYP_CTXT: u32 = 0x2 << 20;
/// TX cmd_type_len: descriptor type field.
pub const TXD_DTYP_MASK: u32 = 0xF << 20;
/// TX command: end of packet.
pub const TXD_CMD_EOP: u32 = 1 << 24;
/// TX command: insert FCS.
pub const TXD_CMD_IFCS: u32 = 1 << 25;
/// TX command: report status (write DD back).
pub const TXD_CMD_RS: u32 = 1 << 27;
/// TX command: advanced descriptor (must be set).
pub const TXD_CMD_DEXT: u32 = 1 << 29;
/// TX command: insert VLAN tag.
pub const TXD_CMD_VLE: u32 = 1 << 30;
/// TX command: TCP segmentation.
pub const TXD_CMD_TSE: u32 = 1 << 31;
/// TX cmd_type_len: buffer length field.
pub const TXD_LEN_MASK: u32 = 0xFFFF;
/// TX olinfo_status: descriptor done (write-back).
pub const TXD_STAT_DD: u32 = 1 << 0;
/// TX olinfo_status: check context.
pub const TXD_OLINFO_CC: u32 = 1 << 7;
/// TX olinfo_status: insert IPv4 header checksum.
pub const TXD_POPTS_IXSM: u32 = 1 << 8;
/// TX olinfo_status: insert L4 checksum.
pub const TXD_POPTS_TXSM: u32 = 1 << 9;
/// TX context dword 0: MACLEN shift (IPLEN is bits 8:0).
pub const TXD_CTX_MACLEN_SHIFT: u32 = 9;
/// TX context TUCMD (dword 2): IPv4 packet.
pub const TXD_TUCMD_IPV4: u32 = 0x400;
/// TX context TUCMD (dword 2): L4 type TCP (UDP is 0).
pub const TXD_TUCMD_L4T_TCP: u32 = 0x800;
/// TX olinfo_status: PAYLEN shift.
pub const TXD_PAYLEN_SHIFT: u32 = 14;

/// Mailbox messages and reply flags (`docs/ixgbevf.md` §4).
pub mod mbx {
    /// Reply flag: success.
    pub const ACK: u32 = 0x8000_0000;
    /// Reply flag: failure.
    pub const NACK: u32 = 0x4000_0000;
    /// Reply flag: the VF is clear to send.
    pub const CTS: u32 = 0x2000_0000;
    /// Message ID field of word 0.
    pub const ID_MASK: u32 = 0xFFFF;
    /// MSGINFO field of word 0.
    pub const INFO_SHIFT: u32 = 16;
    /// RESET: reply carries the permanent MAC.
    pub const RESET: u32 = 0x01;
    /// SET_MAC_ADDR.
    pub const SET_MAC_ADDR: u32 = 0x02;
    /// SET_MULTICAST.
    pub const SET_MULTICAST: u32 = 0x03;
    /// SET_VLAN.
    pub const SET_VLAN: u32 = 0x04;
    /// SET_LPE (maximum frame size).
    pub const SET_LPE: u32 = 0x05;
    /// SET_MACVLAN.
    pub const SET_MACVLAN: u32 = 0x06;
    /// API_NEGOTIATE.
    pub const API_NEGOTIATE: u32 = 0x08;
    /// GET_QUEUES.
    pub const GET_QUEUES: u32 = 0x09;
    /// GET_RETA (API 1.2; host-vmm's PF NACKs it like any unknown request).
    pub const GET_RETA: u32 = 0x0A;
    /// GET_RSS_KEY (API 1.2; NACKed like GET_RETA).
    pub const GET_RSS_KEY: u32 = 0x0B;
    /// UPDATE_XCAST_MODE.
    pub const UPDATE_XCAST_MODE: u32 = 0x0C;
    /// GET_LINK_STATE.
    pub const GET_LINK_STATE: u32 = 0x10;
    /// Unsolicited PF control message (link change, PF going away).
    pub const PF_CONTROL_MSG: u32 = 0x0100;
    /// API 1.0.
    pub const API_10: u32 = 0;
    /// API 1.1.
    pub const API_11: u32 = 2;
    /// API 1.2.
    pub const API_12: u32 = 3;
    /// API 1.3.
    pub const API_13: u32 = 4;
    /// API 1.4 (IPsec; the model refuses it and everything newer).
    pub const API_14: u32 = 5;
    /// Words of a RESET reply.
    pub const RESET_REPLY_WORDS: usize = 4;
    /// Words of a GET_QUEUES reply.
    pub const GET_QUEUES_WORDS: usize = 5;

    /// MAC bytes as the two mailbox words of RESET and SET_MAC_ADDR.
    pub const fn mac_to_words(mac: [u8; 6]) -> [u32; 2] {
        [
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
            u32::from_le_bytes([mac[4], mac[5], 0, 0]),
        ]
    }

    /// The MAC in two mailbox words.
    pub const fn words_to_mac(w: [u32; 2]) -> [u8; 6] {
        let a = w[0].to_le_bytes();
        let b = w[1].to_le_bytes();
        [a[0], a[1], a[2], a[3], b[0], b[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_words_round_trip() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let words = mbx::mac_to_words(mac);
        assert_eq!(words, [0x1200_5452, 0x5634]);
        assert_eq!(mbx::words_to_mac(words), mac);
    }

    #[test]
    fn queue_blocks_match_the_spec() {
        assert_eq!(rx_queue(1) + Q_TAIL, 0x1058);
        assert_eq!(tx_queue(0) + TX_WBAL, 0x2038);
        assert_eq!(vtivar(3), 0x12C);
        assert_eq!(vteitr(2), 0x828);
    }
}
