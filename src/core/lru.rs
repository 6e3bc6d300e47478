//! A hash map with least-recently-used order, shared by every bounded per-key table
//! (the ensemble's contexts, models and performance weights; the forecaster's keys,
//! services and names): O(1) lookup, touch, insert and eviction through an intrusive
//! doubly linked list over a slab of nodes. A node's slot is stable while its entry lives,
//! so callers may keep it as a handle (the forecaster's name ids are tagged slots).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Node<K, V> {
    /// None: a freed slot, waiting in `free`.
    entry: Option<(K, V)>,
    prev: u32,
    next: u32,
}

#[derive(Clone, Debug)]
pub struct Lru<K, V> {
    map: HashMap<K, u32>,
    nodes: Vec<Node<K, V>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Default for Lru<K, V> {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// A new bound; the caller evicts (`pop_lru`) down to it.
    pub fn set_capacity(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// Room for `n` more entries without rehashing or moving nodes (bulk loads).
    pub fn reserve(&mut self, n: usize) {
        let n = n.min(self.cap);
        self.map.reserve(n);
        self.nodes.reserve(n);
    }

    fn unlink(&mut self, i: u32) {
        let (p, n) = (self.nodes[i as usize].prev, self.nodes[i as usize].next);
        if p != NIL {
            self.nodes[p as usize].next = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            self.nodes[n as usize].prev = p;
        } else {
            self.tail = p;
        }
    }

    fn push_front(&mut self, i: u32) {
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = self.head;
        if self.head != NIL {
            self.nodes[self.head as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    // ------------------------------------------------------------------ by slot

    /// The slot of `key`, if present (does not change the order).
    pub fn index<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
    {
        self.map.get(key).copied()
    }

    /// True when slot `i` holds a live entry (not a freed slot).
    pub fn live(&self, i: u32) -> bool {
        self.nodes
            .get(i as usize)
            .is_some_and(|n| n.entry.is_some())
    }

    /// The key in live slot `i` (panics on a freed slot: a caller bug).
    pub fn key(&self, i: u32) -> &K {
        &self.entry(i).0
    }

    /// The value in live slot `i`.
    pub fn value(&self, i: u32) -> &V {
        &self.entry(i).1
    }

    pub fn value_mut(&mut self, i: u32) -> &mut V {
        &mut self.nodes[i as usize]
            .entry
            .as_mut()
            .expect("a live LRU slot")
            .1
    }

    fn entry(&self, i: u32) -> &(K, V) {
        self.nodes[i as usize]
            .entry
            .as_ref()
            .expect("a live LRU slot")
    }

    /// The value in slot `i` when it holds a live entry.
    pub fn live_value(&self, i: u32) -> Option<&V> {
        self.nodes.get(i as usize)?.entry.as_ref().map(|e| &e.1)
    }

    /// Slots allocated so far (live or freed).
    pub fn slab_len(&self) -> usize {
        self.nodes.len()
    }

    /// Marks live slot `i` most recently used.
    pub fn touch_slot(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    // ------------------------------------------------------------------- by key

    /// Reads without changing the order.
    pub fn peek<Q: ?Sized + Hash + Eq>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.index(k).map(|i| self.value(i))
    }

    pub fn contains<Q: ?Sized + Hash + Eq>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(k)
    }

    /// Reads and marks as most recently used.
    pub fn get_mut<Q: ?Sized + Hash + Eq>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = self.index(k)?;
        self.touch_slot(i);
        Some(self.value_mut(i))
    }

    /// Marks `k` most recently used; false when absent.
    pub fn touch<Q: ?Sized + Hash + Eq>(&mut self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        match self.index(k) {
            Some(i) => {
                self.touch_slot(i);
                true
            }
            None => false,
        }
    }

    /// Inserts (or replaces) `k` as most recently used. A new key in a full table first
    /// evicts the least recently used entry, whose slot it then reuses. Returns the slot
    /// and the evicted entry.
    pub fn insert(&mut self, k: K, v: V) -> (u32, Option<(K, V)>) {
        if let Some(i) = self.index(&k) {
            self.touch_slot(i);
            *self.value_mut(i) = v;
            return (i, None);
        }
        let evicted = if self.map.len() >= self.cap {
            self.pop_lru()
        } else {
            None
        };
        let node = Node {
            entry: Some((k.clone(), v)),
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.map.insert(k, i);
        self.push_front(i);
        (i, evicted)
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V)> {
        let i = self.tail;
        if i == NIL {
            return None;
        }
        self.unlink(i);
        let e = self.nodes[i as usize].entry.take()?;
        self.map.remove(&e.0);
        self.free.push(i);
        Some(e)
    }

    pub fn remove<Q: ?Sized + Hash + Eq>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.map.remove(k)?;
        self.unlink(i);
        self.free.push(i);
        self.nodes[i as usize].entry.take().map(|e| e.1)
    }

    /// Most recently used first.
    pub fn iter_mru(&self) -> impl Iterator<Item = (&K, &V)> {
        self.walk(self.head, true).map(|(_, k, v)| (k, v))
    }

    /// Least recently used first (the order to re-insert in to rebuild the same order).
    pub fn iter_lru(&self) -> impl Iterator<Item = (&K, &V)> {
        self.walk(self.tail, false).map(|(_, k, v)| (k, v))
    }

    /// Least recently used first, with each entry's slot.
    pub fn slots_lru(&self) -> impl Iterator<Item = (u32, &K, &V)> {
        self.walk(self.tail, false)
    }

    fn walk(&self, from: u32, forward: bool) -> impl Iterator<Item = (u32, &K, &V)> {
        let mut at = from;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let cur = at;
            let n = &self.nodes[at as usize];
            at = if forward { n.next } else { n.prev };
            n.entry.as_ref().map(|e| (cur, &e.0, &e.1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_first() {
        let mut l: Lru<u32, u32> = Lru::new(3);
        assert!(l.insert(1, 10).1.is_none());
        l.insert(2, 20);
        l.insert(3, 30);
        l.touch(&1);
        assert_eq!(l.insert(4, 40).1, Some((2, 20)));
        assert_eq!(
            l.iter_mru().map(|e| *e.0).collect::<Vec<_>>(),
            vec![4, 1, 3]
        );
        assert_eq!(l.remove(&1), Some(10));
        l.insert(5, 50);
        assert_eq!(
            l.iter_lru().map(|e| *e.0).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(l.len(), 3);
        // Replacing a present key evicts nothing and makes it most recent.
        assert_eq!(l.insert(3, 33).1, None);
        assert_eq!(l.iter_mru().next(), Some((&3, &33)));
    }

    #[test]
    fn reuses_slots_and_tells_live_from_freed() {
        let mut l: Lru<u32, u32> = Lru::new(3);
        for k in 0..3 {
            assert!(l.insert(k, k * 10).1.is_none());
        }
        let i0 = l.index(&0).unwrap();
        l.touch_slot(i0);
        let (slot, ev) = l.insert(3, 30);
        assert_eq!(ev, Some((1, 10)), "1 was least recently used");
        assert_eq!(l.slab_len(), 3, "the evicted slot is reused");
        assert_eq!((l.key(slot), l.value(slot)), (&3, &30));
        let order: Vec<u32> = l.slots_lru().map(|(_, k, _)| *k).collect();
        assert_eq!(order, vec![2, 0, 3]);
        let s2 = l.index(&2).unwrap();
        assert_eq!(l.pop_lru(), Some((2, 20)));
        assert!(!l.live(s2) && l.live_value(s2).is_none());
        assert_eq!(l.len(), 2);
        l.insert(4, 40);
        l.insert(5, 50);
        assert_eq!(l.len(), 3);
        assert!(l.index(&0).is_none(), "0 was evicted by 5");
    }
}
