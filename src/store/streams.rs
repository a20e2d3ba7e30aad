//! Declaring and inspecting streams.

use async_nats::jetstream::stream;
use async_nats::jetstream::ErrorCode;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::error::{store_error, Cause, Classify};
use super::{Link, Store, StoreError};
use crate::config::{Storage, StreamSettings};

/// A stream's state, as the admin API and the subscription engine need it.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Stream name.
    pub name: String,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// First retained sequence (last + 1 when empty).
    pub first_sequence: u64,
    /// Last stored sequence (0 when nothing was ever stored).
    pub last_sequence: u64,
    /// Retained messages.
    pub messages: u64,
    /// Retained bytes.
    pub bytes: u64,
    /// Distinct subjects.
    pub subject_count: u64,
    /// JetStream consumers on the stream.
    pub consumer_count: usize,
    /// Time of the first retained message.
    pub first_time: DateTime<Utc>,
    /// Time of the last message.
    pub last_time: DateTime<Utc>,
    /// `file` or `memory`.
    pub storage: String,
    /// Replicas.
    pub replicas: usize,
}

impl Store {
    /// Creates the stream, or updates it to the declared configuration. Fields JetStream cannot
    /// change (storage type) give [`StoreError::StreamConflict`] naming the field.
    pub async fn ensure_stream(&self, s: &StreamSettings) -> Result<(), StoreError> {
        let what = format!("declaring stream `{}`", s.name);
        self.unless_dropped(Link::Main, &what, self.declare(s))
            .await
    }

    async fn declare(&self, s: &StreamSettings) -> Result<(), StoreError> {
        let config = stream::Config {
            name: s.name.clone(),
            subjects: s.subjects.clone(),
            storage: match s.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: s.replicas,
            max_age: s.max_age,
            max_bytes: s.max_bytes,
            max_messages: -1,
            max_messages_per_subject: s.max_messages_per_subject,
            duplicate_window: s.duplicate_window,
            allow_direct: true,
            description: Some("jetwatch CloudEvents stream".into()),
            ..Default::default()
        };
        let context = format!("declaring stream `{}`", s.name);
        match self.js.get_stream(&s.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| store_error(&s.name, &context, e))?;
                if info.config.storage != config.storage {
                    return Err(StoreError::StreamConflict {
                        stream: s.name.clone(),
                        field: "storage".into(),
                        detail: format!(
                            "existing {:?}, declared {:?}; recreate the stream to change it",
                            info.config.storage, config.storage
                        ),
                        source: None,
                    });
                }
                self.js
                    .update_stream(&config)
                    .await
                    .map_err(|e| conflict_or(&s.name, &context, e))?;
            }
            Err(e) if e.classify() == Cause::Code(ErrorCode::STREAM_NOT_FOUND) => {
                self.js
                    .create_stream(config)
                    .await
                    .map_err(|e| conflict_or(&s.name, &context, e))?;
            }
            Err(e) => return Err(store_error(&s.name, &context, e)),
        }
        Ok(())
    }

    /// The state of `stream`.
    pub async fn stream_state(&self, stream: &str) -> Result<StreamState, StoreError> {
        let context = "reading the stream's state";
        let handle = self
            .unless_dropped(Link::Main, context, async {
                self.js
                    .get_stream(stream)
                    .await
                    .map_err(|e| store_error(stream, context, e))
            })
            .await?;
        Ok(state_from_info(handle.cached_info()))
    }

    /// The states of every stream on the server.
    pub async fn stream_states(&self) -> Result<Vec<StreamState>, StoreError> {
        let mut out = Vec::new();
        let mut streams = self.js.streams();
        while let Some(info) = streams.next().await {
            out.push(state_from_info(
                &info.map_err(|e| store_error("", "listing streams", e))?,
            ));
        }
        Ok(out)
    }
}

fn state_from_info(info: &stream::Info) -> StreamState {
    StreamState {
        name: info.config.name.clone(),
        subjects: info.config.subjects.clone(),
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        messages: info.state.messages,
        bytes: info.state.bytes,
        subject_count: info.state.subjects_count,
        consumer_count: info.state.consumer_count,
        first_time: info.state.first_timestamp,
        last_time: info.state.last_timestamp,
        storage: match info.config.storage {
            stream::StorageType::File => "file".into(),
            stream::StorageType::Memory => "memory".into(),
        },
        replicas: info.config.num_replicas,
    }
}

/// A refused stream declaration: a configuration JetStream will not accept or apply (the
/// error code says which part), or any other failure.
fn conflict_or(
    stream: &str,
    context: &str,
    e: async_nats::jetstream::context::CreateStreamError,
) -> StoreError {
    let field = match e.classify() {
        Cause::Code(ErrorCode::STREAM_SUBJECT_OVERLAP) => "subjects",
        Cause::Code(_) => "configuration",
        _ => return store_error(stream, context, e),
    };
    match store_error(stream, context, e) {
        StoreError::Api { source, .. } => StoreError::StreamConflict {
            stream: stream.to_owned(),
            field: field.into(),
            detail: source.to_string(),
            source: Some(source),
        },
        other => other,
    }
}
