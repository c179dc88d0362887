//! Target assignment by rendezvous hashing: which members of the cluster scrape a
//! target. Pure: no IO, no openraft — it takes member ids and target keys and answers
//! the same on every node, in every process and across Rust releases (the hash is xxh3
//! with a fixed seed, never std's `DefaultHasher`, whose algorithm may change).
//!
//! A join moves only the targets the newcomer wins (about 1/N of them); a leave moves
//! only the leaver's targets — the property rendezvous hashing is chosen for.

pub mod ownership;
pub mod placement;

use std::hash::{Hash, Hasher};

use rendezvous_hash::{IdNode, NodeHasher, RendezvousNodes};

/// Seed of the assignment hash. Changing it reassigns every target: part of the
/// cluster's wire contract.
const SEED: u64 = 0x7368_6f61_6c00_0001; // "shoal\0\0\1"

/// A stable node hasher: xxh3 (seeded) over the item's `Hash` bytes, then the node id's
/// 8 little-endian bytes. The highest hash wins (ties: the larger id).
#[derive(Debug, Clone, Copy, Default)]
pub struct StableNodeHasher;

impl NodeHasher<u64> for StableNodeHasher {
    fn hash<T: Hash>(&self, node: &u64, item: &T) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(SEED);
        item.hash(&mut h);
        // Explicit little-endian bytes: the same on every architecture.
        h.write(&node.to_le_bytes());
        h.finish()
    }
}

/// A target key as the rendezvous item: hashed as its 8 little-endian bytes (not through
/// `u64`'s `Hash`, whose bytes follow the platform).
struct TargetKey(u64);

impl Hash for TargetKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0.to_le_bytes());
    }
}

/// The set of members targets are assigned over.
pub struct Assigner {
    nodes: RendezvousNodes<IdNode<u64>, StableNodeHasher>,
}

impl Assigner {
    /// An assigner over these member ids (duplicates are ignored).
    pub fn new(members: impl IntoIterator<Item = u64>) -> Assigner {
        let mut nodes = RendezvousNodes::new(StableNodeHasher);
        for m in members {
            nodes.insert(IdNode::new(m));
        }
        Assigner { nodes }
    }

    /// The `replicas` members that own the target with this key, best first. Fewer when
    /// the cluster has fewer members.
    pub fn owners(&self, target_key: u64, replicas: usize) -> Vec<u64> {
        let item = TargetKey(target_key);
        self.nodes
            .calc_candidates(&item)
            .take(replicas)
            .map(|n| **n)
            .collect()
    }

    /// Whether `member` is among the owners of the target.
    pub fn owns(&self, member: u64, target_key: u64, replicas: usize) -> bool {
        self.owners(target_key, replicas).contains(&member)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn assignment_is_pinned() {
        // These values are a contract between nodes (and releases): if this test has to
        // change, every cluster reassigns all its targets on upgrade.
        let a = Assigner::new([11, 22, 33]);
        let got: Vec<u64> = keys(8).map(|k| a.owners(k, 1)[0]).collect();
        assert_eq!(got, PINNED);
    }
    // Worked out independently of this code from the specification — owner = the member
    // with the largest xxh3_64(seed = SEED, key as 8 LE bytes ‖ member id as 8 LE bytes):
    // python3 -c "import xxhash,struct; S=0x73686f616c000001; print([max([11,22,33],
    //   key=lambda n: (xxhash.xxh3_64_intdigest(struct.pack('<Q', xxhash.xxh3_64_intdigest(
    //   struct.pack('<Q', i))) + struct.pack('<Q', n), seed=S), n)) for i in range(8)])"
    const PINNED: [u64; 8] = [11, 22, 11, 33, 11, 11, 33, 33];

    #[test]
    fn every_target_has_distinct_owners_and_spread_is_even() {
        let a = Assigner::new([1, 2, 3]);
        let mut count = [0usize; 3];
        for k in keys(3000) {
            let o = a.owners(k, 2);
            assert_eq!(o.len(), 2);
            assert_ne!(o[0], o[1]);
            count[(o[0] - 1) as usize] += 1;
        }
        for c in count {
            assert!((800..1200).contains(&c), "uneven spread: {count:?}");
        }
        assert_eq!(Assigner::new([1]).owners(5, 3), vec![1]);
        assert!(Assigner::new([]).owners(5, 1).is_empty());
    }

    #[test]
    fn a_join_moves_about_one_nth_and_a_leave_only_the_leavers() {
        let before = Assigner::new([1, 2, 3]);
        let joined = Assigner::new([1, 2, 3, 4]);
        let left = Assigner::new([1, 3]);
        let n = 4000;
        let mut moved_join = 0;
        for k in keys(n) {
            let b = before.owners(k, 1)[0];
            let j = joined.owners(k, 1)[0];
            if b != j {
                assert_eq!(j, 4, "a join only moves targets to the newcomer");
                moved_join += 1;
            }
            let l = left.owners(k, 1)[0];
            if b != 2 {
                assert_eq!(b, l, "a leave only moves the leaver's targets");
            }
        }
        let frac = moved_join as f64 / n as f64;
        assert!((0.2..0.3).contains(&frac), "join moved {frac}");
    }

    #[test]
    fn moved_fraction_is_within_ten_percent_of_one_nth() {
        // The goal for N = 3→4 and 5→6 (member ids as random-looking as real
        // node ids).
        let id = |i: u64| xxhash_rust::xxh3::xxh3_64(&(1000 + i).to_le_bytes());
        let n_keys = 20_000;
        for n in [3u64, 5] {
            let before = Assigner::new((0..n).map(id));
            let after = Assigner::new((0..=n).map(id));
            let mut moved = 0;
            for k in keys(n_keys) {
                let (b, a) = (before.owners(k, 1), after.owners(k, 1));
                if b != a {
                    assert_eq!(a, vec![id(n)], "only the newcomer gains");
                    moved += 1;
                }
            }
            let frac = moved as f64 / n_keys as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (frac - ideal).abs() <= 0.1 * ideal,
                "{n}→{}: moved {frac:.4}, ideal {ideal:.4}",
                n + 1
            );
        }
    }
}
