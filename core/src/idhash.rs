//! A fast hasher for maps keyed by job ids.
//!
//! The standard library's default hasher (SipHash) resists hash flooding, which matters
//! for keys an outside party chooses. Job ids are not: storage assigns them, so maps the
//! worker and in-process backends keep per job (held leases, the memory backend's jobs
//! and indexes) use this multiply-rotate hasher (rustc's "FxHash", its result rotated
//! as rustc-hash 2 does) instead, a few instructions per lookup where SipHash costs a
//! hundred.

use crate::job::JobId;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The multiply-rotate hasher for integer keys such as [`JobId`]. Not for keys an
/// outside party chooses (it does not resist hash flooding).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

/// The multiplier: an odd constant with well-spread bits (from rustc's FxHasher).
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The product's high half swapped into the low one, which picks hashbrown's
        // bucket. The low bits of a product depend only on the low bits of the key, so
        // the plain product kept a key's trailing zeros there: keys with a power-of-two
        // stride (ids 4096 apart, say) all began probing in one bucket, and a map of
        // 2^18 of them filled and read about 20 times slower than one of consecutive
        // ids. The high half depends on every key bit below it. (rustc-hash 2 rotates
        // its product for the same reason.) The top seven bits, the table's tag, then
        // come from the product's middle, mixed enough (see the tests).
        self.0.rotate_left(32)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Other key types work too, eight bytes at a time.
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.add(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// Builds [`IdHasher`]s, for `HashMap::with_hasher` and `HashMap::default`.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// A map keyed by job id, hashed with [`IdHasher`].
pub type IdMap<V> = HashMap<JobId, V, IdBuildHasher>;

/// A set of job ids, hashed with [`IdHasher`].
pub type IdSet = HashSet<JobId, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_and_strided_ids_spread_over_buckets_and_tags() {
        // hashbrown takes the bucket from the low bits and the tag from the top seven.
        // 1024 keys in a table of 1024 buckets: random keys would start in about 63% of
        // the buckets. The plain product started ids 1024 or 4096 apart all in one
        // bucket (16 apart: in 64); rotated, the worst of these strides (1000) starts in
        // about a third, and every stride uses every tag.
        let b = IdBuildHasher::default();
        let strides = [
            1i64,
            2,
            3,
            5,
            16,
            64,
            100,
            1000,
            1024,
            4096,
            4097,
            1 << 16,
            1 << 20,
            1 << 24,
        ];
        for stride in strides {
            let keys = (1..=1024i64).map(|i| b.hash_one(i * stride));
            let low: HashSet<u64> = keys.clone().map(|h| h & 1023).collect();
            let top: HashSet<u64> = keys.map(|h| h >> 57).collect();
            assert!(
                low.len() > 300,
                "stride {stride}: {} of 1024 buckets",
                low.len()
            );
            assert_eq!(top.len(), 128, "stride {stride}: tags");
        }
    }

    #[test]
    fn a_map_keyed_by_ids_works_like_any_other() {
        let mut m: IdMap<&str> = IdMap::default();
        m.insert(7, "seven");
        m.insert(-1, "minus one");
        assert_eq!(m.get(&7), Some(&"seven"));
        assert_eq!(m.remove(&-1), Some("minus one"));
        assert!(!m.contains_key(&-1));
        let mut h = IdHasher::default();
        h.write(b"0123456789");
        assert_ne!(h.finish(), 0);
    }
}
