//! What a data plane worker keeps of finished requests for its next ones (`timer`'s timers,
//! `spare`'s read buffers): per thread, bounded, and only on worker threads, which turn it on
//! for their runtime's life ([`keep_on_this_thread`]). Elsewhere (tests' runtimes, for one)
//! nothing is kept and every item given back is dropped.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's kept items; `None` on threads that are not data plane workers.
pub(crate) struct Stash<T>(RefCell<Option<Vec<T>>>);

impl<T> Stash<T> {
    pub(crate) const fn new() -> Self {
        Stash(RefCell::new(None))
    }

    /// A kept item, if there is one.
    pub(crate) fn pop(&self) -> Option<T> {
        self.0.borrow_mut().as_mut().and_then(Vec::pop)
    }

    /// Keeps `item` when this thread keeps items and has fewer than `bound`; else drops it.
    pub(crate) fn push(&self, item: T, bound: usize) {
        let mut kept = self.0.borrow_mut();
        if let Some(kept) = kept.as_mut()
            && kept.len() < bound
        {
            kept.push(item);
        }
    }

    /// How many items are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.borrow().as_ref().map_or(0, Vec::len)
    }
}

/// Keeps items in `stash` on this thread until the guard drops, which drops them.
pub(crate) fn keep_on_this_thread<T: 'static>(stash: &'static LocalKey<Stash<T>>) -> KeepGuard<T> {
    stash.with(|s| *s.0.borrow_mut() = Some(Vec::new()));
    KeepGuard(stash)
}

pub(crate) struct KeepGuard<T: 'static>(&'static LocalKey<Stash<T>>);

impl<T: 'static> Drop for KeepGuard<T> {
    fn drop(&mut self) {
        let kept = self.0.with(|s| s.0.borrow_mut().take());
        drop(kept);
    }
}
