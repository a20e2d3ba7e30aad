//! The JetStream layer's errors against a real nats-server: each server refusal is classified
//! by its error kind or code, carries what a caller needs (the expected and current sequences,
//! the sizes), and converts to the service error without losing it.

mod common;

use async_nats::HeaderMap;
use bytes::Bytes;
use jetwatch::codec::Encoded;
use jetwatch::config::{Settings, Storage};
use jetwatch::devnats::NatsServer;
use jetwatch::error::Error;
use jetwatch::store::{Store, StoreError};

/// A nats-server (with `config`) and a store connected to it, the default stream declared.
async fn store_with(config: &str) -> (Store, Settings, NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with_config(&dir.path().join("nats"), 0, config).unwrap();
    let mut settings = common::test_settings();
    settings.nats.url = nats.url();
    let store = Store::connect(&settings.nats).await.unwrap();
    store.ensure_stream(&settings.streams[0]).await.unwrap();
    (store, settings, nats, dir)
}

fn encoded(payload: usize) -> Encoded {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", "e1");
    headers.insert("ce-source", "/s");
    headers.insert("ce-type", "t");
    Encoded {
        headers,
        payload: Bytes::from(vec![b'x'; payload]),
    }
}

#[tokio::test]
async fn a_missing_stream_or_durable_is_not_found() {
    let (store, _settings, _nats, _dir) = store_with("").await;
    match store.stream_state("nope").await {
        Err(StoreError::StreamNotFound { stream }) => assert_eq!(stream, "nope"),
        other => panic!("expected StreamNotFound, got {other:?}"),
    }
    match store.durable("events", "nope").await {
        Err(StoreError::ConsumerNotFound { stream, durable }) => {
            assert_eq!((stream.as_str(), durable.as_str()), ("events", "nope"));
        }
        other => panic!("expected ConsumerNotFound, got {other:?}"),
    }
    assert!(matches!(
        store.delete_durable("events", "nope").await,
        Err(StoreError::ConsumerNotFound { .. })
    ));
    let listed = store.durables("nope").await;
    assert!(
        matches!(listed, Err(StoreError::StreamNotFound { .. })),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_wrong_expected_sequence_names_both_sequences_through_to_the_service_error() {
    let (store, _settings, _nats, _dir) = store_with("").await;
    let first = store
        .publish("events.a".into(), encoded(10), "id-1", Some(0), usize::MAX)
        .await
        .unwrap()
        .ack()
        .await
        .unwrap();
    assert_eq!(first.sequence, 1);
    let refused = store
        .publish("events.a".into(), encoded(10), "id-2", Some(0), usize::MAX)
        .await
        .unwrap()
        .ack()
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::WrongLastSequence {
                expected: 0,
                current: 1
            }
        ),
        "{refused:?}"
    );
    assert!(matches!(
        Error::from(refused),
        Error::SequenceMismatch {
            expected: 0,
            current: 1
        }
    ));
}

#[tokio::test]
async fn a_message_over_max_payload_is_too_large_with_its_size_as_nats_counts_it() {
    let (store, _settings, _nats, _dir) = store_with("max_payload: 4KB\n").await;
    assert_eq!(store.max_payload(), 4096);
    let message = encoded(5000);
    let expected_size =
        jetwatch::store::message_size(&message.headers, 5000) + "Nats-Msg-Id: id-1\r\n".len();
    let refused = match store
        .publish("events.a".into(), message, "id-1", None, usize::MAX)
        .await
    {
        Err(e) => e,
        Ok(pending) => pending.ack().await.unwrap_err(),
    };
    match refused {
        StoreError::TooLarge { size, limit } => {
            assert_eq!(limit, 4096);
            assert_eq!(size, expected_size);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        Error::from(StoreError::TooLarge {
            size: 5100,
            limit: 4096
        }),
        Error::EventTooLarge {
            size: 5100,
            limit: 4096
        }
    ));
}

#[tokio::test]
async fn a_declaration_the_server_refuses_names_the_field() {
    let (store, settings, _nats, _dir) = store_with("").await;
    // Subjects another stream already captures: refused by the server with its own code.
    let mut overlapping = settings.streams[0].clone();
    overlapping.name = "other".into();
    overlapping.subjects = vec!["events.a.>".into()];
    match store.ensure_stream(&overlapping).await {
        Err(StoreError::StreamConflict { stream, field, .. }) => {
            assert_eq!((stream.as_str(), field.as_str()), ("other", "subjects"));
        }
        other => panic!("expected StreamConflict, got {other:?}"),
    }
    // The same name with a storage type JetStream cannot change.
    let mut memory = settings.streams[0].clone();
    memory.storage = Storage::Memory;
    match store.ensure_stream(&memory).await {
        Err(StoreError::StreamConflict { field, .. }) => assert_eq!(field, "storage"),
        other => panic!("expected StreamConflict, got {other:?}"),
    }
}

#[tokio::test]
async fn nats_going_away_is_unavailable_not_an_api_error() {
    let (store, _settings, mut nats, _dir) = store_with("").await;
    nats.stop();
    let e = store.stream_state("events").await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(matches!(Error::from(e), Error::Unavailable { .. }));
}
