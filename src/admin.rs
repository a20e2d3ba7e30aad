//! The admin domain: streams and durable subscriptions, as the `Admin` API and the CLI see them.
//!
//! Only declared streams are visible. Seeking a durable resolves its start like any
//! subscription (`engine::start`), so an expired sequence is `HistoryExpired` here too.
//!
//! With authentication on, a caller sees the streams it holds a grant on; an `admin` grant on a
//! stream covers every durable of it, a `subscribe` grant only the caller's own durables (the
//! identity that created them). Refusals never say whether the durable exists.

use std::sync::Arc;

use crate::auth::{Auth, Identity};
use crate::config::{Action, Settings};
use crate::engine::{OnExpired, Start};
use crate::error::Error;
use crate::store::Store;

pub use crate::store::{ConsumerState as DurableState, StreamState};

/// Admin operations on the declared streams.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
    settings: Settings,
    auth: Arc<Auth>,
    push: crate::push::PushAdmin,
}

/// A caller of the admin API (`None` when authentication is off).
pub type Caller<'a> = Option<&'a Identity>;

impl Admin {
    /// Admin over the streams `settings` declares, for callers `auth` identifies.
    pub fn new(store: Store, settings: Settings, auth: Arc<Auth>) -> Admin {
        Admin {
            push: crate::push::PushAdmin::new(
                store.clone(),
                settings.push.clone(),
                settings.publish.default_stream.clone(),
            ),
            store,
            settings,
            auth,
        }
    }

    /// Whether `caller` may see `stream` at all (any grant on it).
    fn sees(&self, caller: Caller<'_>, stream: &str) -> bool {
        [Action::Subscribe, Action::Publish, Action::Admin]
            .into_iter()
            .any(|a| self.auth.allows_any(caller, a, stream))
    }

    /// Fails unless `caller` may see `stream` and it is declared (in that order: a stream the
    /// caller may not see is refused whether or not it exists).
    fn visible(&self, caller: Caller<'_>, stream: &str) -> Result<(), Error> {
        if !self.sees(caller, stream) {
            crate::auth::audit(caller, "admin.read", stream, "denied");
            return Err(Error::denied(Action::Admin, stream, None));
        }
        self.declared(stream)
    }

    /// Whether `caller` may manage `durable` (its owner, or an admin of the stream).
    fn manages(&self, caller: Caller<'_>, stream: &str, durable: &DurableState) -> bool {
        self.auth.allows_any(caller, Action::Admin, stream)
            || (self.auth.allows_any(caller, Action::Subscribe, stream)
                && caller.is_some_and(|c| durable.owner.as_deref() == Some(c.id.as_str())))
    }

    /// The durable `name` of `stream` if `caller` manages it; otherwise PERMISSION_DENIED
    /// (also when it does not exist, unless the caller is an admin of the stream).
    async fn managed(
        &self,
        caller: Caller<'_>,
        stream: &str,
        name: &str,
        action: &str,
    ) -> Result<DurableState, Error> {
        self.visible(caller, stream)?;
        let target = format!("{stream}/{name}");
        let denied = || {
            crate::auth::audit(caller, action, &target, "denied");
            Err(Error::denied(Action::Admin, stream, None))
        };
        let admin = self.auth.allows_any(caller, Action::Admin, stream);
        match self.store.durable(stream, name).await {
            Ok(d) if self.manages(caller, stream, &d) => Ok(d),
            Ok(_) => denied(),
            Err(e) if admin => Err(e.into()),
            Err(crate::store::StoreError::ConsumerNotFound { .. }) => denied(),
            Err(e) => Err(e.into()),
        }
    }

    /// `stream`, or the default stream when it is empty (as `Open` and `Publish` read it).
    fn resolve<'a>(&'a self, stream: &'a str) -> &'a str {
        if stream.is_empty() {
            &self.settings.publish.default_stream
        } else {
            stream
        }
    }

    /// Fails unless `stream` is declared.
    fn declared(&self, stream: &str) -> Result<(), Error> {
        match self.settings.stream(stream) {
            Some(_) => Ok(()),
            None => Err(Error::StreamNotFound(stream.to_owned())),
        }
    }

    /// The state of every declared stream `caller` may see.
    pub async fn streams(&self, caller: Caller<'_>) -> Result<Vec<StreamState>, Error> {
        let mut out = Vec::with_capacity(self.settings.streams.len());
        for s in &self.settings.streams {
            if self.sees(caller, &s.name) {
                out.push(self.store.stream_state(&s.name).await?);
            }
        }
        Ok(out)
    }

    /// The state of `stream`.
    pub async fn stream(&self, caller: Caller<'_>, stream: &str) -> Result<StreamState, Error> {
        let stream = self.resolve(stream);
        self.visible(caller, stream)?;
        Ok(self.store.stream_state(stream).await?)
    }

    /// The durables `caller` manages on `stream`, or on every stream it sees when `None`.
    pub async fn durables(
        &self,
        caller: Caller<'_>,
        stream: Option<&str>,
    ) -> Result<Vec<DurableState>, Error> {
        let streams: Vec<&str> = match stream {
            Some(s) => {
                self.visible(caller, s)?;
                vec![s]
            }
            None => self
                .settings
                .streams
                .iter()
                .map(|s| s.name.as_str())
                .filter(|s| self.sees(caller, s))
                .collect(),
        };
        let mut out = Vec::new();
        for s in streams {
            let durables = self.store.durables(s).await?;
            out.extend(durables.into_iter().filter(|d| self.manages(caller, s, d)));
        }
        Ok(out)
    }

    /// The durable `durable` of `stream`.
    pub async fn durable(
        &self,
        caller: Caller<'_>,
        stream: &str,
        durable: &str,
    ) -> Result<DurableState, Error> {
        let stream = self.resolve(stream);
        self.managed(caller, stream, durable, "durable.get").await
    }

    /// Deletes the durable `durable` of `stream`.
    pub async fn delete_durable(
        &self,
        caller: Caller<'_>,
        stream: &str,
        durable: &str,
    ) -> Result<(), Error> {
        let stream = self.resolve(stream);
        self.managed(caller, stream, durable, "durable.delete")
            .await?;
        self.store.delete_durable(stream, durable).await?;
        if self.auth.enabled() {
            crate::auth::audit(
                caller,
                "durable.delete",
                &format!("{stream}/{durable}"),
                "allowed",
            );
        }
        Ok(())
    }

    /// Moves the durable `durable` of `stream` to `start` (anything but `Resume`).
    pub async fn seek_durable(
        &self,
        caller: Caller<'_>,
        stream: &str,
        durable: &str,
        start: Start,
    ) -> Result<DurableState, Error> {
        let stream = self.resolve(stream);
        self.managed(caller, stream, durable, "durable.seek")
            .await?;
        if self.auth.enabled() {
            crate::auth::audit(
                caller,
                "durable.seek",
                &format!("{stream}/{durable}"),
                "allowed",
            );
        }
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

    /// Fails unless `caller` holds an `admin` grant on `stream` (push subscriptions are
    /// managed by stream admins).
    fn stream_admin(&self, caller: Caller<'_>, stream: &str, action: &str) -> Result<(), Error> {
        self.declared(stream)?;
        if !self.auth.allows_any(caller, Action::Admin, stream) {
            crate::auth::audit(caller, action, stream, "denied");
            return Err(Error::denied(Action::Admin, stream, None));
        }
        if self.auth.enabled() {
            crate::auth::audit(caller, action, stream, "allowed");
        }
        Ok(())
    }

    /// Creates a push subscription.
    pub async fn push_create(
        &self,
        caller: Caller<'_>,
        mut spec: crate::push::PushSpec,
    ) -> Result<crate::push::PushInfo, Error> {
        spec.stream = self.resolve(&spec.stream).to_owned();
        self.stream_admin(caller, &spec.stream, "push.create")?;
        self.push.create(spec).await
    }

    /// Updates a push subscription.
    pub async fn push_update(
        &self,
        caller: Caller<'_>,
        spec: crate::push::PushSpec,
    ) -> Result<crate::push::PushInfo, Error> {
        let current = self.push.spec(&spec.name).await?;
        self.stream_admin(caller, &current.stream, "push.update")?;
        self.push.update(spec).await
    }

    /// Pauses or resumes a push subscription.
    pub async fn push_pause(
        &self,
        caller: Caller<'_>,
        name: &str,
        paused: bool,
    ) -> Result<crate::push::PushInfo, Error> {
        let current = self.push.spec(name).await?;
        self.stream_admin(caller, &current.stream, "push.pause")?;
        self.push.set_paused(name, paused).await
    }

    /// Deletes a push subscription.
    pub async fn push_delete(&self, caller: Caller<'_>, name: &str) -> Result<(), Error> {
        let current = self.push.spec(name).await?;
        self.stream_admin(caller, &current.stream, "push.delete")?;
        self.push.delete(name).await
    }

    /// One push subscription.
    pub async fn push_get(
        &self,
        caller: Caller<'_>,
        name: &str,
    ) -> Result<crate::push::PushInfo, Error> {
        let info = self.push.get(name).await?;
        self.stream_admin(caller, &info.spec.stream, "push.get")?;
        Ok(info)
    }

    /// The push subscriptions of the streams `caller` administers.
    pub async fn push_list(&self, caller: Caller<'_>) -> Result<Vec<crate::push::PushInfo>, Error> {
        Ok(self
            .push
            .list()
            .await?
            .into_iter()
            .filter(|p| self.auth.allows_any(caller, Action::Admin, &p.spec.stream))
            .collect())
    }

    /// Declares the configuration's push subscriptions.
    pub async fn push_declare(&self) -> Result<(), Error> {
        self.push.declare(&self.settings.push.subscriptions).await
    }
}
