//! Where a series' samples belong when they must move (a leaving node's drain, a
//! backfill): with the target they came from. A series names its target by its `job`
//! and `instance` labels (every scraped series carries its target's labels); the
//! series goes to the target's first owner by the same rendezvous order the scrape
//! assignment uses, so its history joins the node that scrapes it now. A series that
//! names no known target (rule output, a target no longer discovered, an imported
//! file's series) is placed by a key of its `job` and `instance` values (all of its
//! labels when it has neither), so every series of one instance lands together.

use std::collections::HashMap;

use super::Assigner;
use crate::model::Labels;

/// `(job, instance)` label values → the target's key, as the scrape manager discovered
/// them (every node discovers every target).
pub type InstanceKeys = HashMap<(String, String), u64>;

/// The key a series is placed by (see the module docs).
pub fn placement_key(labels: &Labels, targets: &InstanceKeys) -> u64 {
    let job = labels.get("job");
    let instance = labels.get("instance");
    if let (Some(j), Some(i)) = (job, instance)
        && let Some(&key) = targets.get(&(j.to_owned(), i.to_owned()))
    {
        return key;
    }
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b"shoal/series/v1\xff");
    if job.is_some() || instance.is_some() {
        for v in [job, instance] {
            buf.extend_from_slice(v.unwrap_or("").as_bytes());
            buf.push(0xff);
        }
    } else {
        for l in labels.iter() {
            buf.extend_from_slice(l.name.as_bytes());
            buf.push(0xff);
            buf.extend_from_slice(l.value.as_bytes());
            buf.push(0xff);
        }
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// The member a series moves to: the first owner of its placement key among `owners`
/// (`None` when there is no owner).
pub fn owner_of(labels: &Labels, targets: &InstanceKeys, owners: &Assigner) -> Option<u64> {
    owners
        .owners(placement_key(labels, targets), 1)
        .first()
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Label;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|&(n, v)| Label::new(n, v)).collect())
    }

    #[test]
    fn a_series_follows_its_target_and_others_stay_together_per_instance() {
        let mut targets = InstanceKeys::new();
        targets.insert(("node".into(), "a:9100".into()), 42);
        let a = labels(&[("__name__", "up"), ("instance", "a:9100"), ("job", "node")]);
        assert_eq!(placement_key(&a, &targets), 42);
        let owners = Assigner::new([1, 2, 3]);
        assert_eq!(
            owner_of(&a, &targets, &owners),
            owners.owners(42, 1).first().copied()
        );

        // Unknown target: every series of that instance gets one key, other instances
        // others.
        let b1 = labels(&[("__name__", "x"), ("instance", "b:1"), ("job", "node")]);
        let b2 = labels(&[
            ("__name__", "y"),
            ("instance", "b:1"),
            ("job", "node"),
            ("le", "1"),
        ]);
        let c = labels(&[("__name__", "x"), ("instance", "c:1"), ("job", "node")]);
        assert_eq!(placement_key(&b1, &targets), placement_key(&b2, &targets));
        assert_ne!(placement_key(&b1, &targets), placement_key(&c, &targets));
        // Neither label: by all labels.
        let r1 = labels(&[("__name__", "job:x:sum"), ("shard", "1")]);
        let r2 = labels(&[("__name__", "job:x:sum"), ("shard", "2")]);
        assert_ne!(placement_key(&r1, &targets), placement_key(&r2, &targets));
        assert_eq!(owner_of(&r1, &targets, &Assigner::new([])), None);
    }

    #[test]
    fn placement_keys_are_pinned() {
        // Nodes of different releases must place alike: this value is a contract.
        let s = labels(&[("__name__", "x"), ("instance", "b:1"), ("job", "node")]);
        assert_eq!(placement_key(&s, &InstanceKeys::new()), PINNED);
    }
    // python3 -c "import xxhash; print(xxhash.xxh3_64_intdigest(b'shoal/series/v1\xffnode\xffb:1\xff'))"
    const PINNED: u64 = 3_645_400_246_223_015_984;
}
