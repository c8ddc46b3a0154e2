//! [`SynGuard`]: which SYNs a listener whose handshake queue is full takes — only one its
//! sender has sent before (a retransmission).
//!
//! A real client resends an unanswered SYN (Linux after 1, 3, 7, 15 s...); a flood of
//! spoofed SYNs, each from a new port, does not. So while a listener has as many handshakes
//! under way as its backlog, a SYN seen for the first time is dropped before smoltcp sees it
//! (a header read and a table look-up: the guest keeps up with a flood it could never
//! answer, and a real client's final ACK is not stuck behind hundreds of SYNs), and is
//! remembered; the same SYN again is taken, evicting the oldest handshake (the socket
//! table's policy). A real client pays one SYN retransmission while the queue is full.
//! Linux answers a full SYN queue with SYN cookies, which smoltcp cannot do (it picks its
//! own initial sequence numbers). A flood that resends every SYN is taken like before this
//! guard: it only churns half-open entries.
//!
//! The memory is a direct-mapped table ([`SLOTS`] entries, allocated on first use): a
//! flood overwrites entries, so a client's entry may be lost (its next resend is then
//! remembered again and taken the time after).

use alloc::vec::Vec;

/// Entries in the table: at 1,000 new SYNs a second a client's entry survives the 1 s to
/// its first resend with a chance of (1 - 1/4096)^1000, about 78 %.
pub const SLOTS: usize = 4096;

/// A remembered SYN older than this is not a resend any more (Linux's 6th SYN leaves 63 s
/// after the first).
const REMEMBERED_MS: i64 = 75_000;

#[derive(Clone, Copy, Default)]
struct Seen {
    /// The connection's key (peer address and port, our port); 0 for an empty slot.
    key: u64,
    /// The SYN's sequence number: a resend carries the same one.
    seq: u32,
    /// When it was dropped (ms).
    at_ms: i64,
}

/// Recently dropped first SYNs.
#[derive(Default)]
pub struct SynGuard {
    table: Vec<Seen>,
    /// First SYNs dropped so far.
    dropped: u64,
}

impl SynGuard {
    /// Whether a SYN (connection `key`, sequence number `seq`) that finds its listener's
    /// handshake queue full is taken at `now_ms`: yes if it was dropped here before (a
    /// resend, forgotten then), else no (remembered now). Without memory for the table
    /// every SYN is taken (the socket table's eviction still bounds the queue).
    pub fn admit(&mut self, key: u64, seq: u32, now_ms: i64) -> bool {
        if self.table.is_empty() {
            if self.table.try_reserve_exact(SLOTS).is_err() {
                return true;
            }
            self.table.resize(SLOTS, Seen::default());
        }
        let slot = &mut self.table[index(key)];
        if slot.key == key && slot.seq == seq && now_ms - slot.at_ms <= REMEMBERED_MS {
            *slot = Seen::default();
            return true;
        }
        *slot = Seen {
            key,
            seq,
            at_ms: now_ms,
        };
        self.dropped += 1;
        false
    }

    /// First SYNs dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The slot for `key` (Fibonacci hashing: the spoofed ports and addresses of a flood spread
/// over the table).
fn index(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_syn_is_dropped_and_its_resend_taken() {
        let mut g = SynGuard::default();
        assert!(!g.admit(7, 100, 0));
        assert!(!g.admit(8, 100, 10), "another connection is new too");
        assert!(g.admit(7, 100, 1_000), "the resend");
        assert!(!g.admit(7, 100, 1_100), "forgotten once taken");
        assert!(!g.admit(8, 101, 1_200), "a new attempt from the same port");
        assert!(
            !g.admit(8, 101, 1_200 + REMEMBERED_MS + 1),
            "too late for a resend"
        );
        assert_eq!(g.dropped(), 5);
    }

    #[test]
    fn a_flood_of_new_keys_leaves_most_clients_remembered() {
        let mut g = SynGuard::default();
        let clients: Vec<u64> = (0..16)
            .map(|i| (0xC612_0002u64 << 32) | (40_000 + i) << 16 | 80)
            .collect();
        for &c in &clients {
            assert!(!g.admit(c, 1, 0));
        }
        // A second's flood at 200 SYNs a second from new ports.
        for i in 0..200u64 {
            assert!(!g.admit(
                (0xC613_0000u64 + i) << 32 | (1024 + i) << 16 | 80,
                9,
                5 * i as i64
            ));
        }
        let taken = clients.iter().filter(|&&c| g.admit(c, 1, 1_000)).count();
        assert!(taken >= 12, "{taken} of 16 resends taken");
    }
}
