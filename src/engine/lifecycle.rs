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
}

/// Follows the NATS connection: the returned flag turns true once it has been down for longer
/// than `grace`, and false again when it returns.
pub(super) fn spawn_outage_monitor(
    store: Store,
    grace: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut connected = store.connection();
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
