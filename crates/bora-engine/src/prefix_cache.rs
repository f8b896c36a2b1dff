//! The prefix cache: attention keys and values of prompts already run,
//! reused by later prompts that start the same way (a shared system prompt,
//! a chat history that grows by one turn).
//!
//! Prompts are cut into blocks of [`BLOCK`] tokens; block `k` of a prompt is
//! named by a hash chained over blocks `0..=k`, so equal names mean equal
//! prefixes (checked token by token, so a hash collision cannot serve wrong
//! keys). An entry is one prompt's cache, shared without copying with the
//! sequence that computed it ([`KvCache::share_prefix`]); every block of the
//! entry points to it. A lookup walks a new prompt's block names from the
//! longest down and takes the first hit. Entries are evicted least recently
//! used first when their buffers exceed the byte budget.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::llama::KvCache;

/// Tokens per block: the granularity of sharing.
pub const BLOCK: usize = 16;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    bytes: usize,
    last_used: u64,
}

/// Cached prompt prefixes, bounded in bytes.
pub struct PrefixCache {
    budget_bytes: usize,
    used_bytes: usize,
    clock: u64,
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Block name → the entry holding that prefix.
    blocks: HashMap<u64, u64>,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache")
            .field("entries", &self.entries.len())
            .field("used_bytes", &self.used_bytes)
            .field("budget_bytes", &self.budget_bytes)
            .finish()
    }
}

/// The chained hash of every whole block of `tokens`.
fn block_names(tokens: &[u32]) -> Vec<u64> {
    let mut names = Vec::with_capacity(tokens.len() / BLOCK);
    let mut previous = 0u64;
    for block in tokens.chunks_exact(BLOCK) {
        let mut h = DefaultHasher::new();
        previous.hash(&mut h);
        block.hash(&mut h);
        previous = h.finish();
        names.push(previous);
    }
    names
}

impl PrefixCache {
    /// An empty cache holding at most `budget_bytes` of keys and values
    /// (0 disables it).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            used_bytes: 0,
            clock: 0,
            next_id: 0,
            entries: HashMap::new(),
            blocks: HashMap::new(),
        }
    }

    /// Bytes held by cached entries.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// The longest cached prefix of `prompt`, leaving at least one token of
    /// it to run (the model must produce logits after the last one): a cache
    /// holding that prefix, or `None`.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<KvCache> {
        let usable = prompt.len().saturating_sub(1);
        let names = block_names(&prompt[..usable]);
        for (k, name) in names.iter().enumerate().rev() {
            let Some(id) = self.blocks.get(name) else {
                continue;
            };
            let len = (k + 1) * BLOCK;
            let entry = self.entries.get_mut(id).expect("blocks point at entries");
            if entry.tokens.len() >= len && entry.tokens[..len] == prompt[..len] {
                self.clock += 1;
                entry.last_used = self.clock;
                return Some(entry.cache.share_prefix(len));
            }
        }
        None
    }

    /// Remembers the keys and values of `prompt`, which `cache` holds (it
    /// may hold more: generated tokens after it). Only whole blocks are kept.
    pub fn insert(&mut self, prompt: &[u32], cache: &KvCache) {
        let len = prompt.len().min(cache.len()) / BLOCK * BLOCK;
        if len == 0 || self.budget_bytes == 0 {
            return;
        }
        let names = block_names(&prompt[..len]);
        let last = *names.last().expect("at least one block");
        if let Some(id) = self.blocks.get(&last)
            && let Some(entry) = self.entries.get_mut(id)
            && entry.tokens.len() >= len
            && entry.tokens[..len] == prompt[..len]
        {
            self.clock += 1;
            entry.last_used = self.clock;
            return; // already cached
        }
        let cache = cache.share_prefix(len);
        let bytes = cache.capacity_bytes();
        if bytes > self.budget_bytes {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.clock += 1;
        for name in names {
            self.blocks.insert(name, id);
        }
        self.used_bytes += bytes;
        self.entries.insert(
            id,
            Entry {
                tokens: prompt[..len].to_vec(),
                cache,
                bytes,
                last_used: self.clock,
            },
        );
        self.evict();
    }

    /// Drops least recently used entries until the budget holds.
    fn evict(&mut self) {
        while self.used_bytes > self.budget_bytes {
            let Some((&id, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else {
                break;
            };
            let entry = self.entries.remove(&id).expect("just found");
            self.used_bytes -= entry.bytes;
            self.blocks.retain(|_, entry_id| *entry_id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_chain_over_the_whole_prefix() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[3] = 99; // differs in the first block only
        let (na, nb) = (block_names(&a), block_names(&b));
        assert_eq!(na.len(), 2, "only whole blocks are named");
        assert_ne!(na[0], nb[0]);
        assert_ne!(
            na[1], nb[1],
            "a later block's name depends on earlier blocks"
        );
        assert_eq!(block_names(&a[..32]), na);
    }
}
