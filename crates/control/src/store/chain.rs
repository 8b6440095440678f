//! The per-session hash chain: how an event's hash is computed from its row.
//!
//! The hash covers every stored column except the row id, and the previous
//! event's hash, so changing, removing or reordering an event breaks the chain
//! from that point on. Fields are joined with `\n`; the body is hashed as the
//! exact JSON text stored, so verification never depends on re-serialising.

use sha2::{Digest, Sha256};

/// `prev_hash` of the first event of every session.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The stored columns of one event that the chain covers.
pub struct ChainInput<'a> {
    pub prev_hash: &'a str,
    pub session_id: &'a str,
    pub seq: i64,
    pub at_us: i64,
    pub kind: &'a str,
    pub body: &'a str,
}

/// Lower-case hex SHA-256 of the event's chained fields.
pub fn event_hash(e: &ChainInput<'_>) -> String {
    let mut h = Sha256::new();
    h.update(e.prev_hash.as_bytes());
    h.update(b"\n");
    h.update(e.session_id.as_bytes());
    h.update(b"\n");
    h.update(decimal(e.seq, &mut [0; 20]));
    h.update(b"\n");
    h.update(decimal(e.at_us, &mut [0; 20]));
    h.update(b"\n");
    h.update(e.kind.as_bytes());
    h.update(b"\n");
    h.update(e.body.as_bytes());
    hex::encode(h.finalize())
}

/// `n` in decimal, written into `buf` (no allocation: this runs for every
/// event on the statement path).
pub(crate) fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    // 20 bytes hold every i64, sign included.
    let _ = write!(cur, "{n}");
    let len = cur.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(body: &str) -> ChainInput<'_> {
        ChainInput {
            prev_hash: GENESIS,
            session_id: "s",
            seq: 1,
            at_us: 10,
            kind: "k",
            body,
        }
    }

    #[test]
    fn decimals() {
        for n in [0, 7, -1, 1_795_282_109_477_156, i64::MIN, i64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn genesis_is_64_zeros() {
        assert_eq!(GENESIS.len(), 64);
        assert!(GENESIS.bytes().all(|b| b == b'0'));
    }

    #[test]
    fn hash_matches_the_documented_layout() {
        let expected = hex::encode(Sha256::digest(format!("{GENESIS}\ns\n1\n10\nk\n{{}}")));
        assert_eq!(event_hash(&input("{}")), expected);
    }

    #[test]
    fn any_field_change_changes_the_hash() {
        let base = event_hash(&input("{}"));
        assert_ne!(base, event_hash(&input("{ }")));
        let mut other = input("{}");
        other.seq = 2;
        assert_ne!(base, event_hash(&other));
    }
}
