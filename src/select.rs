//! Which listed keys this run copies: `--include`/`--exclude` filters and
//! `--shard I/N`.
//!
//! Filters follow the AWS CLI: every key is included to begin with, then each rule in the
//! order given on the command line includes or excludes the keys it matches, so later rules
//! win. Patterns are globs (globset) matched against the key relative to SOURCE's prefix;
//! as with the AWS CLI's fnmatch, `*` also matches `/`.
//!
//! Sharding: a key belongs to shard `fnv1a64(key) mod N` (FNV-1a, 64 bit, over the key's
//! UTF-8 bytes — stable across runs, machines and versions), so N machines given `0/N` …
//! `N-1/N` split one restore with no coordinator and no key twice.

use globset::{Glob, GlobMatcher};

/// One `--include`/`--exclude` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub include: bool,
    pub pattern: String,
    matcher: GlobMatcher,
}

impl Rule {
    pub fn new(include: bool, pattern: &str) -> Result<Rule, String> {
        let flag = if include { "--include" } else { "--exclude" };
        let glob = Glob::new(pattern).map_err(|e| format!("{flag} '{pattern}': {e}"))?;
        Ok(Rule { include, pattern: pattern.to_owned(), matcher: glob.compile_matcher() })
    }
}

/// `--shard I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// Environment variables `--shard env/N` reads the index from, in order: a Kubernetes
/// Indexed Job, an AWS Batch array job.
pub const SHARD_INDEX_VARS: [&str; 2] = ["JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"];

impl Shard {
    /// `I/N` with `0 ≤ I < N`; `I` may be `env` (see [`SHARD_INDEX_VARS`]).
    pub fn parse(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let bad = |why: &str| format!("--shard '{s}': {why} (expected I/N, e.g. 0/4, or env/N)");
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let count: u64 = n.parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        let index: u64 = if i == "env" {
            let (var, v) = SHARD_INDEX_VARS
                .iter()
                .find_map(|var| env(var).map(|v| (*var, v)))
                .ok_or_else(|| bad(&format!("none of {} is set", SHARD_INDEX_VARS.join(", "))))?;
            v.trim().parse().map_err(|_| bad(&format!("{var}='{v}' is not a number")))?
        } else {
            i.parse().map_err(|_| bad("I is not a number"))?
        };
        if index >= count {
            return Err(bad(&format!("I = {index} must be below N = {count}")));
        }
        Ok(Shard { index, count })
    }

    pub fn owns(&self, key: &str) -> bool {
        fnv1a64(key.as_bytes()) % self.count == self.index
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Filters and shard together.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub rules: Vec<Rule>,
    pub shard: Option<Shard>,
}

impl Selection {
    /// Whether the key (`rel`: relative to the prefix) is copied by this run.
    pub fn selects(&self, key: &str, rel: &str) -> bool {
        let mut included = true;
        for r in &self.rules {
            if r.matcher.is_match(rel) {
                included = r.include;
            }
        }
        included && self.shard.is_none_or(|s| s.owns(key))
    }

    pub fn is_everything(&self) -> bool {
        self.rules.is_empty() && self.shard.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_rules_win_like_the_aws_cli() {
        let sel = |rules: &[(bool, &str)]| Selection {
            rules: rules.iter().map(|(i, p)| Rule::new(*i, p).unwrap()).collect(),
            shard: None,
        };
        let jpg_only = sel(&[(false, "*"), (true, "*.jpg")]);
        assert!(jpg_only.selects("p/a/b.jpg", "a/b.jpg"), "* crosses /");
        assert!(!jpg_only.selects("p/a/b.png", "a/b.png"));
        let no_tmp = sel(&[(true, "*"), (false, "tmp/*")]);
        assert!(!no_tmp.selects("tmp/x", "tmp/x"));
        assert!(no_tmp.selects("data/tmp/x", "data/tmp/x"), "patterns match from the start");
        let back_in = sel(&[(false, "logs/*"), (true, "logs/keep-*")]);
        assert!(back_in.selects("logs/keep-1", "logs/keep-1"));
        assert!(!back_in.selects("logs/drop-1", "logs/drop-1"));
        assert!(Rule::new(true, "a[").is_err());
    }

    #[test]
    fn shards_partition_keys_and_read_the_index_from_the_environment() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("k/{i}")).collect();
        let shards: Vec<Shard> = (0..7).map(|i| Shard { index: i, count: 7 }).collect();
        let mut sizes = [0usize; 7];
        for k in &keys {
            let owners: Vec<usize> = (0..7).filter(|&i| shards[i].owns(k)).collect();
            assert_eq!(owners.len(), 1, "{k}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| (1200..1650).contains(&n)), "balanced: {sizes:?}");
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a test vector");
        let none = |_: &str| None;
        assert_eq!(Shard::parse("2/4", none), Ok(Shard { index: 2, count: 4 }));
        assert!(Shard::parse("4/4", none).is_err());
        assert!(Shard::parse("1/0", none).is_err());
        assert!(Shard::parse("env/4", none).unwrap_err().contains("JOB_COMPLETION_INDEX"));
        let batch = |v: &str| (v == "AWS_BATCH_JOB_ARRAY_INDEX").then(|| "3".to_owned());
        assert_eq!(Shard::parse("env/4", batch), Ok(Shard { index: 3, count: 4 }));
    }
}
