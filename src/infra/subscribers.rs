//! A list of subscribers whose entries end with their subscriber: adding
//! one returns a [`Subscription`], and dropping it (the subscriber's thread
//! ended, its service was stopped) removes the entry. The list never holds
//! more entries than there are live subscribers, however many come and go
//! (a reload that starts and stops services, say). Used by the health
//! table's change listeners, the CA re-issue bus and the clock-step
//! notices.

use std::sync::{Arc, Mutex, Weak};

struct Entries<T> {
    next_id: u64,
    items: Vec<(u64, T)>,
}

/// The publisher's end. Cheap to clone (shared).
pub struct List<T>(Arc<Mutex<Entries<T>>>);

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        List(self.0.clone())
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Arc::new(Mutex::new(Entries {
            next_id: 0,
            items: Vec::new(),
        })))
    }
}

impl<T> List<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `item` until the returned subscription is dropped.
    #[must_use = "dropping the subscription removes the entry at once"]
    pub fn add(&self, item: T) -> Subscription<T> {
        let mut e = self.lock();
        e.next_id += 1;
        let id = e.next_id;
        e.items.push((id, item));
        Subscription {
            id,
            list: Arc::downgrade(&self.0),
        }
    }

    /// Calls `f` on every entry, under the list's lock (`f` must not add or
    /// drop a subscription of this list).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for (_, item) in &self.lock().items {
            f(item);
        }
    }

    /// How many subscriptions are live.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }
}

/// A subscriber's hold on its entry: dropping it removes the entry.
pub struct Subscription<T> {
    id: u64,
    list: Weak<Mutex<Entries<T>>>,
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            let mut e = list.lock().unwrap_or_else(|p| p.into_inner());
            e.items.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_its_subscription() {
        let list: List<u32> = List::default();
        let a = list.add(1);
        let b = list.add(2);
        let mut seen = Vec::new();
        list.for_each(|i| seen.push(*i));
        assert_eq!(seen, [1, 2]);
        drop(a);
        assert_eq!(list.len(), 1);
        for _ in 0..1000 {
            let _s = list.add(3);
        }
        assert_eq!(list.len(), 1, "no entry outlives its subscriber");
        drop(list);
        drop(b); // the list is gone first: nothing to remove
    }
}
