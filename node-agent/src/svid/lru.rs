//! A map bounded by the bytes its entries take, least recently used out
//! first. Callers say what an entry weighs; the map never holds more than
//! its budget, so input a workload controls (audiences) cannot grow it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

/// A byte-bounded least-recently-used map.
#[derive(Debug)]
pub struct Lru<K, V> {
    /// Keys are shared with `order`, so marking a use copies no key.
    entries: HashMap<Arc<K>, Slot<K, V>>,
    /// Use order: tick of last use to key; the first is the least recent.
    order: BTreeMap<u64, Arc<K>>,
    tick: u64,
    bytes: usize,
    budget: usize,
}

#[derive(Debug)]
struct Slot<K, V> {
    key: Arc<K>,
    value: V,
    weight: usize,
    used: u64,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    pub fn new(budget: usize) -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            budget,
        }
    }

    /// The value for `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.tick += 1;
        let slot = self.entries.get_mut(key)?;
        self.order.remove(&slot.used);
        slot.used = self.tick;
        self.order.insert(self.tick, slot.key.clone());
        Some(&slot.value)
    }

    /// Inserts `value` weighing `weight` bytes, evicting the least recently
    /// used entries until it fits. A value heavier than the whole budget is
    /// not kept.
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.remove(&key);
        if weight > self.budget {
            return;
        }
        while self.bytes + weight > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&oldest) {
                self.bytes -= slot.weight;
            }
        }
        self.tick += 1;
        let key = Arc::new(key);
        self.order.insert(self.tick, key.clone());
        self.bytes += weight;
        self.entries.insert(
            key.clone(),
            Slot {
                key,
                value,
                weight,
                used: self.tick,
            },
        );
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.used);
        self.bytes -= slot.weight;
        Some(slot.value)
    }

    /// Bytes held, by the callers' weights.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let mut lru = Lru::new(100);
        lru.insert("a", 1, 40);
        lru.insert("b", 2, 40);
        assert_eq!(lru.get(&"a"), Some(&1), "a is now the most recent");
        lru.insert("c", 3, 40);
        assert_eq!(lru.get(&"b"), None, "b was least recently used");
        assert_eq!(lru.get(&"a"), Some(&1));
        assert_eq!(lru.get(&"c"), Some(&3));
        assert_eq!(lru.bytes(), 80);
        lru.insert("c", 4, 10);
        assert_eq!((lru.bytes(), lru.len()), (50, 2), "replacing re-weighs");
        lru.insert("huge", 5, 101);
        assert_eq!(lru.get(&"huge"), None, "heavier than the budget: not kept");
        assert_eq!(lru.len(), 2);
        for i in 0..1000 {
            lru.insert("x", i, 30);
            lru.insert("y", i, 30);
            assert!(lru.bytes() <= 100);
        }
        assert_eq!(lru.remove(&"y"), Some(999));
        assert!(lru.bytes() <= 100 && !lru.is_empty());
    }
}
