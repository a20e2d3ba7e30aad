//! What a subscription delivers ([`Matcher`]) and how many at once ([`Window`]).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{AckMode, Item, StoredEvent};
use crate::filter::Filter;

/// What a subscription delivers: its subject patterns and attribute filter, and the stream's
/// tombstone predicate (for snapshots).
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    /// NATS subject patterns; empty matches every subject.
    pub(crate) subjects: Vec<String>,
    /// The attribute filter.
    pub(crate) filter: Option<Filter>,
    /// Marks deletion events, left out of snapshots.
    pub(crate) tombstone: Option<Filter>,
}

impl Matcher {
    /// Whether the subscription delivers `event` (subjects first: they are cheapest).
    pub(crate) fn matches(&self, event: &StoredEvent) -> bool {
        (self.subjects.is_empty()
            || self
                .subjects
                .iter()
                .any(|p| crate::wildcard::matches(p, &event.subject)))
            && self.filter.as_ref().is_none_or(|f| f.matches(&event.event))
    }

    /// Whether `event` is a tombstone (a deletion) of its stream.
    pub(crate) fn is_tombstone(&self, event: &StoredEvent) -> bool {
        self.tombstone
            .as_ref()
            .is_some_and(|f| f.matches(&event.event))
    }
}

/// A subscription's window: permits for deliveries not yet sent (AUTO) or not yet
/// acknowledged (EXPLICIT). `Credit` widens it, never past `subscribe.max_in_flight_limit`.
#[derive(Debug, Clone)]
pub struct Window {
    permits: Arc<Semaphore>,
    /// Whether a permit returns when the delivery is sent (AUTO) rather than acknowledged.
    release_on_send: bool,
    /// How much wider `Credit` may still make the window.
    headroom: Arc<std::sync::atomic::AtomicUsize>,
}

impl Window {
    pub(super) fn new(size: u32, limit: u32, mode: AckMode) -> Window {
        Window {
            permits: Arc::new(Semaphore::new(size as usize)),
            release_on_send: mode == AckMode::Auto,
            headroom: Arc::new(std::sync::atomic::AtomicUsize::new(
                limit.saturating_sub(size) as usize,
            )),
        }
    }

    /// Takes one permit, waiting until one is free.
    pub(super) async fn acquire(&self) {
        if let Ok(p) = self.permits.acquire().await {
            p.forget();
        }
    }

    /// Takes up to `n` of the permits free now, without waiting: how many it took.
    pub(super) fn try_take(&self, n: usize) -> usize {
        loop {
            let free = self.permits.available_permits().min(n);
            if free == 0 {
                return 0;
            }
            match self.permits.try_acquire_many(free as u32) {
                Ok(p) => {
                    p.forget();
                    return free;
                }
                // Fewer free than seen a moment ago (a `Credit` never lowers them; only
                // another taker could): look again.
                Err(tokio::sync::TryAcquireError::NoPermits) => continue,
                Err(tokio::sync::TryAcquireError::Closed) => return 0,
            }
        }
    }

    /// Waits until at least one permit is free, without taking it.
    pub(super) async fn wait_available(&self) {
        let _permit = self.permits.acquire().await;
    }

    /// Permits free now.
    pub(super) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Returns `n` permits.
    pub(super) fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Widens the window by `n` (a client's `Credit`), as far as the limit allows.
    pub(super) fn credit(&self, n: u32) {
        use std::sync::atomic::Ordering;
        let n = n as usize;
        let before = self
            .headroom
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_sub(n))
            })
            .unwrap_or(0);
        self.release(n.min(before));
    }

    /// Called by the transport once `item` has been handed to the client.
    pub fn sent(&self, item: &Item) {
        if matches!(item, Item::Delivery { .. }) {
            self.sent_deliveries(1);
        }
    }

    /// Called by the transport once `n` deliveries have been handed to the client.
    pub fn sent_deliveries(&self, n: usize) {
        if self.release_on_send && n > 0 {
            self.release(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_widens_the_window_up_to_its_limit_and_no_further() {
        let window = Window::new(1, 50, AckMode::Auto);
        assert_eq!(window.available(), 1);
        window.credit(9);
        assert_eq!(window.available(), 10);
        window.credit(u32::MAX);
        assert_eq!(window.available(), 50, "never past the limit");
        window.credit(1);
        assert_eq!(window.available(), 50);
    }

    #[test]
    fn a_window_opened_at_its_limit_takes_no_credit() {
        let window = Window::new(50, 50, AckMode::Explicit);
        window.credit(10);
        assert_eq!(window.available(), 50);
    }
}
