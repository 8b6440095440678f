//! A small bounded, sharded map keyed by strings, shared by classification and policy caches.
//!
//! Each shard keeps two generations: new entries go into `hot`; when `hot` is
//! full it becomes `cold` and the previous `cold` is dropped. A hit in `cold`
//! is promoted back to `hot`. That approximates LRU with O(1) work per call
//! and no per-entry bookkeeping, and it bounds memory to twice the shard
//! capacity. Sharding keeps lock hold times short when many sessions classify
//! at once.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 16;

pub(crate) struct BoundedCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// Entries per generation per shard; zero disables the cache.
    generation_cap: usize,
    hasher: RandomState,
}

struct Shard<V> {
    hot: HashMap<Box<str>, V>,
    cold: HashMap<Box<str>, V>,
}

impl<V: Clone> BoundedCache<V> {
    /// A cache holding at most about `capacity` entries (zero disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        // Two generations per shard: each holds half of the shard's share.
        let generation_cap = capacity.div_ceil(SHARDS * 2);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    hot: HashMap::new(),
                    cold: HashMap::new(),
                })
            })
            .collect();
        BoundedCache {
            shards,
            generation_cap,
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.generation_cap > 0
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned lock only means another thread panicked while holding
        // it; the maps are still structurally valid, so keep using them.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        if !self.is_enabled() {
            return None;
        }
        let mut shard = self.shard(key);
        if let Some(v) = shard.hot.get(key) {
            return Some(v.clone());
        }
        let (k, v) = shard.cold.remove_entry(key)?;
        let out = v.clone();
        shard.insert(k, v, self.generation_cap);
        Some(out)
    }

    pub(crate) fn insert(&self, key: &str, value: V) {
        if !self.is_enabled() {
            return;
        }
        self.shard(key)
            .insert(key.into(), value, self.generation_cap);
    }

    /// Number of entries currently held (both generations).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.hot.len() + s.cold.len()
            })
            .sum()
    }
}

impl<V> Shard<V> {
    fn insert(&mut self, key: Box<str>, value: V, cap: usize) {
        if self.hot.len() >= cap && !self.hot.contains_key(&key) {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.hot.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_recent_entries() {
        let cache = BoundedCache::new(64);
        for i in 0..10_000 {
            cache.insert(&format!("k{i}"), i);
            assert!(cache.len() <= 64 + 2 * SHARDS, "len {}", cache.len());
        }
        assert_eq!(cache.get("k9999"), Some(9999));
        assert_eq!(cache.get("k0"), None);
    }

    #[test]
    fn cold_hits_are_promoted() {
        let cache = BoundedCache::new(SHARDS * 2);
        cache.insert("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("missing"), None);
    }

    #[test]
    fn zero_capacity_disables() {
        let cache = BoundedCache::new(0);
        cache.insert("a", 1);
        assert_eq!(cache.get("a"), None);
        assert!(!cache.is_enabled());
    }
}
