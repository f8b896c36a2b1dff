//! Choosing a replica: least outstanding requests, plus prefix affinity.
//!
//! Requests whose prompts start the same way (a long shared system prompt,
//! a conversation that grows turn by turn) are cheapest on the replica that
//! already holds that prefix in its prefix cache. The gateway cuts each
//! prompt's bytes into fixed blocks and names every block by a hash chained
//! over all blocks before it (so equal names mean equal prefixes), and
//! remembers which replica was last sent each block. A new request goes to
//! the replica that holds its longest prefix — unless that replica is
//! overloaded compared with the least loaded one, or reports its KV cache
//! nearly full: then to the least loaded, as without affinity. Load is the
//! router's own count of outstanding requests plus the queue the replica
//! reports in its metrics (`vllm:num_requests_waiting`), as llm-d's and
//! SGLang's routers score replicas.
//!
//! A long prompt no replica holds yet is placed where it will stay: on the
//! replica holding the fewest prompt blocks among those about as loaded
//! as the least loaded (as SGLang's router sends unmatched prompts to the
//! smallest cache tree), so that groups of prompts spread evenly over the
//! replicas' caches instead of piling up on whichever was idle.
//!
//! The memory of blocks is bounded: two generations of maps; when the
//! current one is full, it becomes the old one and the oldest is dropped,
//! so blocks not seen for a while are forgotten (an LRU approximation at
//! O(1) per block).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Bytes of prompt per block: about 32 tokens of English.
pub(crate) const BLOCK_BYTES: usize = 128;
/// Only the first this many blocks of a prompt are hashed (32 KiB).
const MAX_BLOCKS: usize = 256;
/// A shared prefix shorter than this many blocks is not worth a detour.
pub(crate) const MIN_MATCHED_BLOCKS: usize = 2;
/// An affine replica is used while its load exceeds the least loaded
/// replica's by at most this many requests (a continuous-batching replica
/// absorbs a few more at little cost; recomputing a long prefix costs more).
const AFFINITY_SLACK: f64 = 4.0;
/// Above this KV-cache use, a replica gets no affinity traffic.
const KV_FULL: f64 = 0.95;
/// Blocks remembered per generation, per model.
const GENERATION_BLOCKS: usize = 64 * 1024;
/// A new long prompt goes to the replica holding the fewest blocks among
/// those whose load exceeds the least loaded's by at most this much.
const PLACEMENT_SLACK: f64 = 2.0;

/// The chained block hashes of `prompt`: element `i` names the prefix
/// made of blocks `0..=i`. A trailing partial block is not hashed.
pub(crate) fn block_hashes(prompt: &[u8]) -> Vec<u64> {
    // A fixed-key hasher: the same prefix gets the same name in every
    // process (and nothing depends on the names being unpredictable).
    let state =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    prompt
        .chunks_exact(BLOCK_BYTES)
        .take(MAX_BLOCKS)
        .scan(0u64, |previous, block| {
            let mut hasher = state.build_hasher();
            hasher.write_u64(*previous);
            hasher.write(block);
            *previous = hasher.finish();
            Some(*previous)
        })
        .collect()
}

/// Which replica last received each block, per model.
#[derive(Debug, Default)]
pub(crate) struct PrefixMap {
    current: HashMap<u64, Arc<str>>,
    old: HashMap<u64, Arc<str>>,
    /// Blocks of the current generation each replica holds.
    held: HashMap<Arc<str>, usize>,
}

impl PrefixMap {
    /// For each replica in `replicas`, how many leading blocks of `hashes`
    /// it was last sent.
    pub(crate) fn matched(&self, hashes: &[u64], replicas: &[Arc<str>]) -> Vec<usize> {
        let mut matched = vec![0; replicas.len()];
        // The chain: block i is known only if every block before it is too;
        // walk from the longest prefix down to find each replica's depth.
        for (depth, hash) in hashes.iter().enumerate().rev() {
            let Some(owner) = self.current.get(hash).or_else(|| self.old.get(hash)) else {
                continue;
            };
            if let Some(i) = replicas.iter().position(|r| r == owner)
                && matched[i] == 0
            {
                matched[i] = depth + 1;
            }
        }
        matched
    }

    /// Records that `replica` was sent a prompt with these blocks.
    pub(crate) fn record(&mut self, hashes: &[u64], replica: &Arc<str>) {
        for hash in hashes {
            if self.current.len() >= GENERATION_BLOCKS {
                self.old = std::mem::take(&mut self.current);
                self.held.clear();
            }
            if let Some(previous) = self.current.insert(*hash, replica.clone())
                && let Some(n) = self.held.get_mut(&previous)
            {
                *n = n.saturating_sub(1);
            }
            *self.held.entry(replica.clone()).or_default() += 1;
        }
    }

    /// Blocks (of the current generation) each of `replicas` holds.
    pub(crate) fn held(&self, replicas: &[Arc<str>]) -> Vec<usize> {
        replicas
            .iter()
            .map(|r| self.held.get(r).copied().unwrap_or(0))
            .collect()
    }
}

/// One replica as the chooser sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Candidate {
    /// Requests the router has at it now.
    pub(crate) outstanding: usize,
    /// Requests waiting in its own queue, from its metrics (0 if unknown).
    pub(crate) waiting: f64,
    /// Share of its KV cache in use, from its metrics (0 if unknown).
    pub(crate) kv_usage: f64,
    /// Leading blocks of the prompt it holds (see [`PrefixMap::matched`]).
    pub(crate) matched: usize,
    /// Prompt blocks it holds in all (see [`PrefixMap::held`]).
    pub(crate) held: usize,
    /// Excluded: it failed this request already, or is marked down.
    pub(crate) excluded: bool,
}

impl Candidate {
    fn load(&self) -> f64 {
        self.outstanding as f64 + self.waiting
    }
}

/// The replica a request goes to, or `None` if every one is excluded.
/// `long_prompt`: the request has a prompt worth caching (at least the
/// blocks affinity needs). `turn` breaks ties among equally loaded
/// replicas (round robin).
pub(crate) fn choose(candidates: &[Candidate], long_prompt: bool, turn: usize) -> Option<usize> {
    let open: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].excluded)
        .collect();
    let least_load = open
        .iter()
        .map(|&i| candidates[i].load())
        .min_by(f64::total_cmp)?;
    // Affinity: the longest held prefix, if it is long enough and its
    // replica is not overloaded.
    let affine = open
        .iter()
        .copied()
        .filter(|&i| candidates[i].matched >= MIN_MATCHED_BLOCKS)
        .filter(|&i| candidates[i].kv_usage < KV_FULL)
        .filter(|&i| candidates[i].load() <= least_load + AFFINITY_SLACK)
        .max_by(|&a, &b| {
            candidates[a]
                .matched
                .cmp(&candidates[b].matched)
                // Equal prefixes: the less loaded one.
                .then_with(|| candidates[b].load().total_cmp(&candidates[a].load()))
        });
    if affine.is_some() {
        return affine;
    }
    // A long prompt nobody holds: where the cache has the most room.
    if long_prompt {
        let roomiest = open
            .iter()
            .copied()
            .filter(|&i| candidates[i].load() <= least_load + PLACEMENT_SLACK)
            .min_by(|&a, &b| {
                candidates[a]
                    .held
                    .cmp(&candidates[b].held)
                    .then_with(|| candidates[a].load().total_cmp(&candidates[b].load()))
            });
        let fewest = roomiest.map(|i| candidates[i].held);
        if let Some(fewest) = fewest {
            // Ties (say, nothing held anywhere yet) go in turn among the
            // least loaded of them.
            let tied: Vec<usize> = open
                .iter()
                .copied()
                .filter(|&i| candidates[i].held == fewest)
                .filter(|&i| candidates[i].load() <= least_load + PLACEMENT_SLACK)
                .collect();
            let least_tied = tied
                .iter()
                .map(|&i| candidates[i].load())
                .min_by(f64::total_cmp)
                .unwrap_or(least_load);
            let tied: Vec<usize> = tied
                .into_iter()
                .filter(|&i| candidates[i].load() <= least_tied)
                .collect();
            return Some(tied[turn % tied.len()]);
        }
    }
    // Least loaded; ties in turn.
    let least: Vec<usize> = open
        .into_iter()
        .filter(|&i| candidates[i].load() <= least_load)
        .collect();
    Some(least[turn % least.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<Candidate> {
        vec![Candidate::default(); n]
    }

    #[test]
    fn equal_prefixes_get_equal_names_and_a_change_changes_every_later_name() {
        let a = vec![b'a'; BLOCK_BYTES * 3 + 10];
        let mut b = a.clone();
        b[BLOCK_BYTES + 5] = b'b';
        let (ha, hb) = (block_hashes(&a), block_hashes(&b));
        assert_eq!(ha.len(), 3, "the partial block is not hashed");
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        assert_ne!(ha[2], hb[2]);
        // Same content at another position is another name (chained).
        assert_ne!(ha[0], ha[1]);
        assert!(block_hashes(&[b'x'; 10]).is_empty());
        assert_eq!(block_hashes(&vec![0; BLOCK_BYTES * 1000]).len(), MAX_BLOCKS);
    }

    #[test]
    fn the_replica_holding_the_longest_prefix_is_found() {
        let replicas: Vec<Arc<str>> = vec!["r0".into(), "r1".into(), "r2".into()];
        let mut map = PrefixMap::default();
        let system = vec![b's'; BLOCK_BYTES * 4];
        let mut long = system.clone();
        long.extend(vec![b'q'; BLOCK_BYTES * 2]);
        map.record(&block_hashes(&system), &replicas[1]);
        map.record(&block_hashes(&long), &replicas[2]);
        let mut question = system.clone();
        question.extend(vec![b'q'; BLOCK_BYTES * 3]);
        // r2 was sent the longer prefix last: it owns the system blocks now
        // too, and 6 blocks; r1 owns nothing any more.
        assert_eq!(
            map.matched(&block_hashes(&question), &replicas),
            vec![0, 0, 6]
        );
        // A replica no longer in the list matches nothing.
        assert_eq!(
            map.matched(&block_hashes(&question), &replicas[..2]),
            vec![0, 0]
        );
    }

    #[test]
    fn memory_is_bounded_by_two_generations() {
        let replica: Arc<str> = "r".into();
        let mut map = PrefixMap::default();
        for i in 0..(GENERATION_BLOCKS as u64 * 3) {
            map.record(&[i], &replica);
        }
        assert!(map.current.len() + map.old.len() <= 2 * GENERATION_BLOCKS);
        // The newest are kept, the oldest forgotten.
        let newest = GENERATION_BLOCKS as u64 * 3 - 1;
        assert_eq!(
            map.matched(&[newest], std::slice::from_ref(&replica)),
            vec![1]
        );
        assert_eq!(map.matched(&[0], std::slice::from_ref(&replica)), vec![0]);
    }

    #[test]
    fn without_a_shared_prefix_the_least_loaded_wins_and_ties_rotate() {
        let mut c = idle(3);
        c[0].outstanding = 2;
        c[1].outstanding = 1;
        c[2].outstanding = 1;
        assert_eq!(choose(&c, false, 0), Some(1));
        assert_eq!(choose(&c, false, 1), Some(2));
        // The replica's own queue counts as load.
        c[1].waiting = 3.0;
        assert_eq!(choose(&c, false, 0), Some(2));
    }

    #[test]
    fn a_long_enough_prefix_wins_within_the_slack() {
        let mut c = idle(3);
        c[2].matched = 10;
        c[2].outstanding = 4;
        assert_eq!(choose(&c, false, 0), Some(2));
        // Too short a prefix: least loaded.
        c[2].matched = 1;
        assert_eq!(choose(&c, false, 0), Some(0));
        // Longer prefix wins over a shorter one.
        c[2].matched = 10;
        c[1].matched = 3;
        assert_eq!(choose(&c, false, 0), Some(2));
    }

    #[test]
    fn an_overloaded_or_full_affine_replica_is_passed_over() {
        let mut c = idle(2);
        c[1].matched = 10;
        c[1].outstanding = 5;
        assert_eq!(
            choose(&c, false, 0),
            Some(0),
            "5 more than the least loaded"
        );
        c[1].outstanding = 0;
        c[1].kv_usage = 0.99;
        assert_eq!(choose(&c, false, 0), Some(0), "KV cache nearly full");
    }

    #[test]
    fn a_new_long_prompt_goes_where_the_cache_has_room() {
        let mut c = idle(3);
        c[0].held = 40;
        c[1].held = 10;
        c[2].held = 25;
        assert_eq!(choose(&c, true, 0), Some(1));
        // ... unless that replica is busier than the slack allows.
        c[1].outstanding = 3;
        assert_eq!(choose(&c, true, 0), Some(2));
        // Short prompts ignore what is held: least loaded.
        assert_eq!(choose(&c, false, 0), Some(0));
        // Nothing held anywhere: in turn among the least loaded.
        let mut c = idle(3);
        c[2].outstanding = 1;
        assert_eq!(choose(&c, true, 0), Some(0));
        assert_eq!(choose(&c, true, 1), Some(1));
    }

    #[test]
    fn held_blocks_are_counted_per_replica_and_move_with_their_blocks() {
        let (r1, r2): (Arc<str>, Arc<str>) = ("r1".into(), "r2".into());
        let replicas = [r1.clone(), r2.clone()];
        let mut map = PrefixMap::default();
        map.record(&[1, 2, 3], &r1);
        map.record(&[4], &r2);
        assert_eq!(map.held(&replicas), vec![3, 1]);
        map.record(&[2, 3], &r2);
        assert_eq!(map.held(&replicas), vec![1, 3]);
    }

    #[test]
    fn excluded_replicas_are_never_chosen() {
        let mut c = idle(2);
        c[0].matched = 10;
        c[0].excluded = true;
        assert_eq!(choose(&c, false, 0), Some(1));
        c[1].excluded = true;
        assert_eq!(choose(&c, false, 0), None);
        assert_eq!(choose(&[], false, 0), None);
    }
}
