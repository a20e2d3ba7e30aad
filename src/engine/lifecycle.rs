//! How subscription tasks stop: NATS outages beyond the grace period, shutdown, clients
//! leaving; and what every task shares with the engine for that.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::Store;

/// What every subscription task shares with the engine.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) shutdown: CancellationToken,
    pub(crate) outage: watch::Receiver<bool>,
    /// Permits for snapshot reads: a snapshot holds one while its reader lives.
    pub(crate) snapshot_reads: Arc<Semaphore>,
    /// Largest answer of one read (`fanout.read_bytes`).
    pub(crate) read_bytes: usize,
    /// Messages one pull of a snapshot read asks for (`fanout.snapshot_batch`).
    pub(crate) snapshot_batch: usize,
}

impl Shared {
    /// The same, for one subscription's task: its shutdown token is a child of the engine's.
    /// A cancellation token is a mutex and a waiter list; a subscription checks and waits on
    /// shutdown each time it goes idle, so with one token for all of them every live event
    /// made every subscription lock the same mutex twice, from every worker thread. A child is
    /// cancelled with its parent and costs the parent's lock only when made and dropped.
    pub(crate) fn for_subscription(&self) -> Shared {
        Shared {
            shutdown: self.shutdown.child_token(),
            ..self.clone()
        }
    }
}

/// Follows the NATS connection: the returned flag turns true once it has been down for longer
/// than `grace`, and false again when it returns.
pub(super) fn spawn_outage_monitor(
    mut connected: watch::Receiver<bool>,
    grace: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            // Up: wait for it to go.
            tokio::select! {
                r = connected.wait_for(|up| !*up) => if r.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            // Down: either it comes back within the grace period, or subscriptions end.
            tokio::select! {
                r = connected.wait_for(|up| *up) => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
                () = tokio::time::sleep(grace) => {}
                () = shutdown.cancelled() => return,
            }
            tracing::warn!(
                ?grace,
                "NATS lost for longer than the outage grace period; ending subscriptions"
            );
            tx.send_replace(true);
            tokio::select! {
                r = connected.wait_for(|up| *up) => if r.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            tx.send_replace(false);
        }
    });
    rx
}

/// Why a subscription task stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client went away or the gateway is shutting down: nothing more to say.
    Quiet,
    /// End the stream with this error.
    Fail(Error),
}

impl From<Interrupt> for Stop {
    fn from(i: Interrupt) -> Stop {
        match i {
            Interrupt::Lost => lost(),
            Interrupt::Quiet => Stop::Quiet,
        }
    }
}

/// The end of a subscription whose NATS connection stayed away too long.
pub(crate) fn lost() -> Stop {
    Stop::Fail(Error::Unavailable {
        reason: "the NATS connection was lost for longer than the outage grace period".into(),
    })
}

/// Why a wait was cut short.
#[derive(Debug)]
pub(crate) enum Interrupt {
    /// NATS has been lost for longer than the outage grace period.
    Lost,
    /// The gateway is shutting down or the client went away.
    Quiet,
}

impl Shared {
    /// Sleeps `backoff` before a retry, unless NATS is lost for good, the gateway shuts down
    /// or the client (whose channel is `tx`) goes away.
    pub(crate) async fn pause<T>(
        &self,
        backoff: Duration,
        tx: &mpsc::Sender<T>,
    ) -> Result<(), Interrupt> {
        let mut outage_rx = self.outage.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff) => Ok(()),
            () = outage(&mut outage_rx) => Err(Interrupt::Lost),
            () = self.shutdown.cancelled() => Err(Interrupt::Quiet),
            () = tx.closed() => Err(Interrupt::Quiet),
        }
    }
}

/// Waits until the outage flag is set.
pub(crate) async fn outage(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets the monitor task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_counts_only_once_it_outlasts_the_grace_period() {
        let (connection, connected) = watch::channel(true);
        let shutdown = CancellationToken::new();
        let outage = spawn_outage_monitor(connected, Duration::from_secs(30), shutdown.clone());
        connection.send_replace(false);
        settle().await;
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(!*outage.borrow(), "within the grace period");
        // Back in time: the outage never counts.
        connection.send_replace(true);
        settle().await;
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert!(!*outage.borrow());
        // Gone for longer than the grace period.
        connection.send_replace(false);
        settle().await;
        tokio::time::advance(Duration::from_secs(31)).await;
        settle().await;
        assert!(*outage.borrow(), "past the grace period");
        connection.send_replace(true);
        settle().await;
        assert!(!*outage.borrow(), "cleared when NATS returns");
        shutdown.cancel();
    }
}
