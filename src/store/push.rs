//! The push subscriptions' definitions and statuses, in a JetStream key-value bucket every
//! gateway reads (so a subscription created through one gateway runs on all of them).

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;

use super::{Store, StoreError};

/// The bucket.
const BUCKET: &str = "jetwatch-push";

impl Store {
    async fn push_bucket(&self) -> Result<kv::Store, StoreError> {
        let context = "opening the push subscriptions' bucket";
        match self.js.get_key_value(BUCKET).await {
            Ok(b) => Ok(b),
            Err(_) => self
                .js
                .create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    description: "jetwatch push subscriptions".into(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| kv_error(context, e)),
        }
    }

    /// Every key and value of the bucket under `prefix` (e.g. `spec.`).
    pub async fn push_entries(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, StoreError> {
        let bucket = self.push_bucket().await?;
        let mut keys = bucket
            .keys()
            .await
            .map_err(|e| kv_error("listing push subscriptions", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| kv_error("listing push subscriptions", e))?;
            if !key.starts_with(prefix) {
                continue;
            }
            if let Some(value) = bucket
                .get(&key)
                .await
                .map_err(|e| kv_error("reading a push subscription", e))?
            {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// The value of `key`.
    pub async fn push_get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.push_bucket()
            .await?
            .get(key)
            .await
            .map_err(|e| kv_error("reading a push subscription", e))
    }

    /// Writes `key`.
    pub async fn push_put(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        self.push_bucket()
            .await?
            .put(key, value)
            .await
            .map(|_| ())
            .map_err(|e| kv_error("writing a push subscription", e))
    }

    /// Removes `key`.
    pub async fn push_delete(&self, key: &str) -> Result<(), StoreError> {
        self.push_bucket()
            .await?
            .delete(key)
            .await
            .map_err(|e| kv_error("deleting a push subscription", e))
    }
}

/// A key-value failure: NATS unavailable, for the caller to retry.
fn kv_error(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable {
        context: context.to_owned(),
        source: Some(Box::new(e)),
    }
}
