//! Per-job values kept in pages of consecutive job ids.
//!
//! The store assigns ids from a counter, so the jobs a drain enqueues, claims, completes
//! and records attempts for have consecutive ids. In a plain hash map the hasher scatters
//! them over the whole table: beside a backlog of 2.2M jobs the table is tens of
//! megabytes and nearly every lookup of the drain missed the cache, where a shallow
//! store's table fit in it (the bench's `backlog` drain ran at a median of 492k jobs/s
//! against 668k for the shallow one). A hash that kept the ids' low bits would keep
//! neighbours together, but ids with a power-of-two stride would collide in a few
//! buckets.
//!
//! [`PagedMap`] takes the middle way: ids are grouped into pages of [`PAGE`] consecutive
//! ids, and only the page number is hashed. A run of neighbouring ids probes the page
//! table once per page (the drain touches one entry per 64 jobs; the whole table is
//! about a megabyte for 2.3M jobs) and then reads slots side by side. Strided ids land
//! on distinct pages, whose numbers spread over the table as any keys do (core's
//! [`IdHasher`](durable_jobs::idhash::IdHasher) is made for strided keys too).

use durable_jobs::idhash::IdBuildHasher;
use durable_jobs::JobId;
use std::collections::HashMap;

/// Ids per page, as a power of two: `id >> SHIFT` is the page, the low bits the slot.
///
/// 64 ids per page: a page of eight-byte values (the jobs' `Arc`s) is 512 bytes, eight
/// cache lines. Pages of 256 drained no faster over the bench's backlog (medians of
/// 602k-629k jobs/s in two builds against 617k-633k for 64; 492k with a plain map), and
/// a page kept alive by one old id (a parked workflow among purged jobs) would hold four
/// times the memory.
const SHIFT: u32 = 6;

/// Ids per page.
pub(crate) const PAGE: usize = 1 << SHIFT;

/// The slot bits of an id.
const SLOT_MASK: u64 = PAGE as u64 - 1;

/// Values keyed by job id, in pages of [`PAGE`] consecutive ids; a page exists while it
/// holds at least one value.
///
/// Any id is a valid key (0, negative ids, `i64::MIN` and `i64::MAX` included): ids are
/// split as their 64 bits, with no arithmetic that can overflow. Iteration goes page by
/// page in no particular order (as a hash map's does), and by id within a page.
pub(crate) struct PagedMap<V> {
    /// The pages by page number (an id's high bits). Boxed: a page is large, and the
    /// table's growth then moves only pointers.
    pages: HashMap<u64, Box<Page<V>>, IdBuildHasher>,
}

/// One page: a slot per id of its range, and how many slots are taken.
struct Page<V> {
    /// The values of ids `page << SHIFT ..= page << SHIFT | SLOT_MASK`, by slot.
    slots: [Option<V>; PAGE],
    /// Slots holding a value; the page is dropped when this falls to zero.
    used: usize,
}

impl<V> Page<V> {
    /// A page with every slot empty (counted in by the first insert).
    fn empty() -> Box<Self> {
        Box::new(Page {
            slots: std::array::from_fn(|_| None),
            used: 0,
        })
    }
}

/// The page number and the slot within the page of `id`.
fn split(id: JobId) -> (u64, usize) {
    // The id's bits as they are: negative ids map to high pages, and nothing overflows.
    let bits = id as u64;
    (bits >> SHIFT, (bits & SLOT_MASK) as usize)
}

/// The id at `slot` of page `page` (the inverse of [`split`]).
#[cfg(test)]
fn join(page: u64, slot: usize) -> JobId {
    ((page << SHIFT) | slot as u64) as JobId
}

impl<V> Default for PagedMap<V> {
    fn default() -> Self {
        PagedMap {
            pages: HashMap::default(),
        }
    }
}

impl<V> PagedMap<V> {
    /// How many values the map holds (counted page by page: the store never asks).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pages.values().map(|p| p.used).sum()
    }

    /// True when the map holds no value (no page is ever left empty).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The value of `id`.
    pub(crate) fn get(&self, id: JobId) -> Option<&V> {
        let (page, slot) = split(id);
        self.pages.get(&page)?.slots[slot].as_ref()
    }

    /// The value of `id`, to change in place.
    pub(crate) fn get_mut(&mut self, id: JobId) -> Option<&mut V> {
        let (page, slot) = split(id);
        self.pages.get_mut(&page)?.slots[slot].as_mut()
    }

    /// True when `id` has a value.
    pub(crate) fn contains_key(&self, id: JobId) -> bool {
        self.get(id).is_some()
    }

    /// Stores `value` for `id`; returns the value it replaces, if any.
    pub(crate) fn insert(&mut self, id: JobId, value: V) -> Option<V> {
        let (page, slot) = split(id);
        let page = self.pages.entry(page).or_insert_with(Page::empty);
        let old = page.slots[slot].replace(value);
        if old.is_none() {
            page.used += 1;
        }
        old
    }

    /// Takes the value of `id` out; frees its page if that was the page's last value.
    pub(crate) fn remove(&mut self, id: JobId) -> Option<V> {
        let (page_no, slot) = split(id);
        // A lookup, not `entry`: the standard map's `entry` reserves room for a missing
        // key, and a miss must not grow the table.
        let page = self.pages.get_mut(&page_no)?;
        let old = page.slots[slot].take()?;
        page.used -= 1;
        if page.used == 0 {
            // An empty page holds memory and slows iteration: a purged range of old
            // jobs leaves nothing behind. (A second probe, once per page.)
            self.pages.remove(&page_no);
        }
        Some(old)
    }

    /// Every id and its value: page by page, by id within a page. (Only the tests need
    /// the ids; the store walks values.)
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (JobId, &V)> {
        self.pages.iter().flat_map(|(&page, p)| {
            p.slots
                .iter()
                .enumerate()
                .filter_map(move |(slot, v)| v.as_ref().map(|v| (join(page, slot), v)))
        })
    }

    /// Every value: page by page in no particular order, by id within a page.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.pages
            .values()
            .flat_map(|p| p.slots.iter().filter_map(Option::as_ref))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as StdMap;

    /// Ids per page, as an id.
    const P: JobId = PAGE as JobId;

    /// The ids a map holds, sorted, with their values.
    fn sorted<V: Clone>(m: &PagedMap<V>) -> Vec<(JobId, V)> {
        let mut all: Vec<(JobId, V)> = m.iter().map(|(id, v)| (id, v.clone())).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut m = PagedMap::default();
        assert!(m.is_empty());
        assert_eq!(m.insert(7, "seven"), None);
        assert_eq!(m.insert(8, "eight"), None);
        assert_eq!(m.insert(7, "SEVEN"), Some("seven"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(7), Some(&"SEVEN"));
        assert_eq!(m.get(9), None);
        assert!(m.contains_key(8));
        assert!(!m.contains_key(6));
        *m.get_mut(8).expect("eight") = "ate";
        assert_eq!(m.get(8), Some(&"ate"));
        assert!(m.get_mut(9).is_none());
        assert_eq!(m.remove(7), Some("SEVEN"));
        assert_eq!(m.remove(7), None);
        assert_eq!(m.remove(1_000_000), None);
        assert_eq!(m.len(), 1);
        assert_eq!(sorted(&m), vec![(8, "ate")]);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec!["ate"]);
    }

    #[test]
    fn a_page_goes_when_its_last_value_does() {
        let mut m = PagedMap::default();
        let first = P * 3;
        for id in first..first + P {
            m.insert(id, id);
        }
        m.insert(first + P, 0);
        assert_eq!(m.pages.len(), 2);
        for id in first..first + P - 1 {
            assert_eq!(m.remove(id), Some(id));
        }
        assert_eq!(m.pages.len(), 2, "one value left on the page");
        assert_eq!(m.remove(first + P - 1), Some(first + P - 1));
        assert_eq!(m.pages.len(), 1);
        // A miss on a slot of an existing page, or on a page that does not exist,
        // changes nothing.
        assert_eq!(m.remove(first + P + 1), None);
        assert_eq!(m.remove(first), None);
        assert_eq!((m.pages.len(), m.len()), (1, 1));
        m.remove(first + P);
        assert!(m.pages.is_empty());
        assert!(m.is_empty());
        assert_eq!(m.iter().count(), 0);
    }

    #[test]
    fn ids_either_side_of_a_page_boundary_are_distinct() {
        let mut m = PagedMap::default();
        let edge = P * 5;
        for id in [edge - 1, edge, edge + P - 1, edge + P] {
            m.insert(id, id * 10);
        }
        assert_eq!(m.pages.len(), 3);
        assert_eq!(
            sorted(&m),
            vec![
                (edge - 1, (edge - 1) * 10),
                (edge, edge * 10),
                (edge + P - 1, (edge + P - 1) * 10),
                (edge + P, (edge + P) * 10),
            ]
        );
        assert_eq!(m.remove(edge), Some(edge * 10));
        assert_eq!(m.get(edge - 1), Some(&((edge - 1) * 10)));
        assert_eq!(m.get(edge + 1), None);
    }

    #[test]
    fn every_id_is_a_key_extremes_included() {
        // 0, the first and last ids, and -1 (all 64 bits set: u64::MAX as an id).
        let extremes = [
            0,
            1,
            -1,
            JobId::MIN,
            JobId::MIN + 1,
            JobId::MAX,
            JobId::MAX - 1,
        ];
        let mut m = PagedMap::default();
        for (i, &id) in extremes.iter().enumerate() {
            assert_eq!(m.insert(id, i), None, "id {id}");
        }
        assert_eq!(m.len(), extremes.len());
        for (i, &id) in extremes.iter().enumerate() {
            assert_eq!(m.get(id), Some(&i), "id {id}");
        }
        let mut want: Vec<(JobId, usize)> = extremes.iter().copied().zip(0..).collect();
        want.sort_unstable();
        assert_eq!(
            sorted(&m),
            want,
            "iteration gives every id back as it went in"
        );
        for (i, &id) in extremes.iter().enumerate() {
            assert_eq!(m.remove(id), Some(i), "id {id}");
        }
        assert!(m.is_empty() && m.pages.is_empty());
    }

    #[test]
    fn strided_ids_each_have_their_own_page() {
        let mut m = PagedMap::default();
        for i in 0..1000 {
            m.insert(i * 1024, i);
        }
        assert_eq!((m.len(), m.pages.len()), (1000, 1000));
        assert!((0..1000).all(|i| m.get(i * 1024) == Some(&i)));
        assert!((0..1000).all(|i| m.get(i * 1024 + 1).is_none()));
    }

    /// A tiny xorshift64 generator: a fixed seed gives the same operations every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// An id from a mix of neighbourhoods: dense small ids across several page
        /// boundaries, ids around 0 and the extremes, strided ids, and any id at all.
        fn id(&mut self) -> JobId {
            let r = self.next();
            let near = (r >> 8) % 8;
            match r % 7 {
                0 | 1 => (r >> 8) as JobId % (P * 5),
                2 => near as JobId - 4,
                3 => JobId::MAX - near as JobId,
                4 => JobId::MIN + near as JobId,
                5 => ((r >> 8) % 64) as JobId * 4096,
                _ => self.next() as JobId,
            }
        }
    }

    #[test]
    fn behaves_as_a_hash_map_over_random_operations() {
        for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
            let mut rng = XorShift(seed);
            let mut m: PagedMap<u64> = PagedMap::default();
            let mut want: StdMap<JobId, u64> = StdMap::new();
            for step in 0..20_000 {
                let id = rng.id();
                let v = rng.next();
                match rng.next() % 10 {
                    0..=3 => assert_eq!(m.insert(id, v), want.insert(id, v), "step {step}"),
                    4..=6 => assert_eq!(m.remove(id), want.remove(&id), "step {step}"),
                    7 => {
                        let (got, exp) = (m.get_mut(id), want.get_mut(&id));
                        assert_eq!(got.as_deref(), exp.as_deref(), "step {step}");
                        if let (Some(g), Some(e)) = (got, exp) {
                            *g = v;
                            *e = v;
                        }
                    }
                    8 => assert_eq!(m.contains_key(id), want.contains_key(&id)),
                    _ => assert_eq!(m.get(id), want.get(&id), "step {step}"),
                }
                assert_eq!(m.len(), want.len(), "step {step}");
                if step % 500 == 0 {
                    let mut exp: Vec<(JobId, u64)> = want.iter().map(|(&k, &v)| (k, v)).collect();
                    exp.sort_unstable();
                    assert_eq!(sorted(&m), exp, "step {step}");
                    assert_eq!(m.values().count(), want.len());
                    // No page is left empty, and none holds more than it counts.
                    assert!(m
                        .pages
                        .values()
                        .all(|p| p.used > 0
                            && p.used == p.slots.iter().filter(|s| s.is_some()).count()));
                }
            }
            // Empty it: every page goes.
            let ids: Vec<JobId> = want.keys().copied().collect();
            for id in ids {
                assert_eq!(m.remove(id), want.remove(&id));
            }
            assert!(m.is_empty() && m.pages.is_empty());
        }
    }
}
