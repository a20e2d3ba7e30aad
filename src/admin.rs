//! The admin domain: streams and durable subscriptions, as the `Admin` API and the CLI see them.
//!
//! Only declared streams are visible. Seeking a durable resolves its start like any
//! subscription (`engine::start`), so an expired sequence is `HistoryExpired` here too.

use crate::config::Settings;
use crate::engine::{OnExpired, Start};
use crate::error::Error;
use crate::store::Store;

pub use crate::store::{ConsumerState as DurableState, StreamState};

/// Admin operations on the declared streams.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
    settings: Settings,
}

impl Admin {
    /// Admin over the streams `settings` declares.
    pub fn new(store: Store, settings: Settings) -> Admin {
        Admin { store, settings }
    }

    /// Fails unless `stream` is declared.
    fn declared(&self, stream: &str) -> Result<(), Error> {
        match self.settings.stream(stream) {
            Some(_) => Ok(()),
            None => Err(Error::StreamNotFound(stream.to_owned())),
        }
    }

    /// The state of every declared stream.
    pub async fn streams(&self) -> Result<Vec<StreamState>, Error> {
        let mut out = Vec::with_capacity(self.settings.streams.len());
        for s in &self.settings.streams {
            out.push(self.store.stream_state(&s.name).await?);
        }
        Ok(out)
    }

    /// The state of `stream`.
    pub async fn stream(&self, stream: &str) -> Result<StreamState, Error> {
        self.declared(stream)?;
        Ok(self.store.stream_state(stream).await?)
    }

    /// The durables of `stream`, or of every declared stream when `None`.
    pub async fn durables(&self, stream: Option<&str>) -> Result<Vec<DurableState>, Error> {
        let streams: Vec<&str> = match stream {
            Some(s) => {
                self.declared(s)?;
                vec![s]
            }
            None => self
                .settings
                .streams
                .iter()
                .map(|s| s.name.as_str())
                .collect(),
        };
        let mut out = Vec::new();
        for s in streams {
            out.extend(self.store.durables(s).await?);
        }
        Ok(out)
    }

    /// The durable `durable` of `stream`.
    pub async fn durable(&self, stream: &str, durable: &str) -> Result<DurableState, Error> {
        self.declared(stream)?;
        Ok(self.store.durable(stream, durable).await?)
    }

    /// Deletes the durable `durable` of `stream`.
    pub async fn delete_durable(&self, stream: &str, durable: &str) -> Result<(), Error> {
        self.declared(stream)?;
        Ok(self.store.delete_durable(stream, durable).await?)
    }

    /// Moves the durable `durable` of `stream` to `start` (anything but `Resume`).
    pub async fn seek_durable(
        &self,
        stream: &str,
        durable: &str,
        start: Start,
    ) -> Result<DurableState, Error> {
        self.declared(stream)?;
        if start == Start::Resume {
            return Err(Error::invalid(
                "start",
                "seek to a position other than resume",
            ));
        }
        let state = self.store.stream_state(stream).await?;
        let start =
            crate::engine::resolve_start(start, OnExpired::Fail, state.first_sequence, "start")?;
        Ok(self
            .store
            .seek_durable(stream, durable, crate::engine::consumer_start(start))
            .await?)
    }
}
