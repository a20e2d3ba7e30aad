//! The Admin API: streams, durable subscriptions, the gateway's version; and its gRPC health.

use crate::connection::{connect, ClientError, Connection};
use crate::pb::jetwatch::v1 as api;
use crate::watcher::StartFrom;

/// A stream, as the Admin API describes it.
pub type StreamInfo = api::StreamInfo;

/// A durable subscription, as the Admin API describes it.
pub type DurableInfo = api::SubscriptionInfo;

/// The gateway's version, as the Admin API describes it.
pub type ServerInfo = api::ServerInfo;

async fn admin(
    conn: &Connection,
) -> Result<api::admin_client::AdminClient<tonic::transport::Channel>, ClientError> {
    Ok(api::admin_client::AdminClient::new(connect(conn).await?))
}

/// The gateway's streams.
pub async fn streams(conn: &Connection) -> Result<Vec<StreamInfo>, ClientError> {
    Ok(admin(conn)
        .await?
        .list_streams(conn.request(api::ListStreamsRequest {}))
        .await?
        .into_inner()
        .streams)
}

/// One stream (empty name: the gateway's default stream).
pub async fn stream(conn: &Connection, name: &str) -> Result<StreamInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .get_stream(conn.request(api::GetStreamRequest {
            stream: name.to_owned(),
        }))
        .await?
        .into_inner())
}

/// The durable subscriptions of `stream` (every declared stream when empty).
pub async fn durables(conn: &Connection, stream: &str) -> Result<Vec<DurableInfo>, ClientError> {
    Ok(admin(conn)
        .await?
        .list_subscriptions(conn.request(api::ListSubscriptionsRequest {
            stream: stream.to_owned(),
        }))
        .await?
        .into_inner()
        .subscriptions)
}

/// One durable subscription of `stream` (empty: the default stream).
pub async fn durable(
    conn: &Connection,
    stream: &str,
    durable: &str,
) -> Result<DurableInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .get_subscription(conn.request(api::GetSubscriptionRequest {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
        }))
        .await?
        .into_inner())
}

/// Deletes a durable subscription (its position is gone; its clients' streams end).
pub async fn delete_durable(
    conn: &Connection,
    stream: &str,
    durable: &str,
) -> Result<(), ClientError> {
    admin(conn)
        .await?
        .delete_subscription(conn.request(api::DeleteSubscriptionRequest {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
        }))
        .await?;
    Ok(())
}

/// Moves a durable subscription to `start`; its clients continue from there.
pub async fn seek_durable(
    conn: &Connection,
    stream: &str,
    durable: &str,
    start: StartFrom,
) -> Result<DurableInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .seek_subscription(conn.request(api::SeekSubscriptionRequest {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            start: Some(crate::watcher::start_position(start)),
        }))
        .await?
        .into_inner())
}

/// The gateway's version.
pub async fn server_info(conn: &Connection) -> Result<ServerInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .get_server_info(conn.request(api::GetServerInfoRequest {}))
        .await?
        .into_inner())
}

/// Whether the gateway serves `service` (empty: the gateway as a whole), by the standard gRPC
/// health protocol: `true` for SERVING (it is connected to NATS with its streams declared).
pub async fn healthy(conn: &Connection, service: &str) -> Result<bool, ClientError> {
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let mut client = tonic_health::pb::health_client::HealthClient::new(connect(conn).await?);
    let status = client
        .check(conn.request(HealthCheckRequest {
            service: service.to_owned(),
        }))
        .await?
        .into_inner()
        .status;
    Ok(status == ServingStatus::Serving as i32)
}

/// A push subscription's definition, as the Admin API takes it.
pub type PushSubscription = api::PushSubscription;

/// A push subscription with its position and last outcome.
pub type PushInfo = api::PushSubscriptionInfo;

/// Creates a push subscription (ALREADY_EXISTS if the name is taken; FAILED_PRECONDITION when
/// the endpoint refuses the webhook handshake).
pub async fn push_create(
    conn: &Connection,
    sub: PushSubscription,
) -> Result<PushInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .create_push_subscription(conn.request(sub))
        .await?
        .into_inner())
}

/// Replaces a push subscription's definition (no secrets: keep the current ones).
pub async fn push_update(
    conn: &Connection,
    sub: PushSubscription,
) -> Result<PushInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .update_push_subscription(conn.request(sub))
        .await?
        .into_inner())
}

/// One push subscription.
pub async fn push_get(conn: &Connection, name: &str) -> Result<PushInfo, ClientError> {
    Ok(admin(conn)
        .await?
        .get_push_subscription(conn.request(api::PushSubscriptionRequest {
            name: name.to_owned(),
        }))
        .await?
        .into_inner())
}

/// Every push subscription the caller administers.
pub async fn push_list(conn: &Connection) -> Result<Vec<PushInfo>, ClientError> {
    Ok(admin(conn)
        .await?
        .list_push_subscriptions(conn.request(api::ListPushSubscriptionsRequest {}))
        .await?
        .into_inner()
        .subscriptions)
}

/// Pauses (`true`) or resumes a push subscription.
pub async fn push_pause(
    conn: &Connection,
    name: &str,
    paused: bool,
) -> Result<PushInfo, ClientError> {
    let request = conn.request(api::PushSubscriptionRequest {
        name: name.to_owned(),
    });
    let mut client = admin(conn).await?;
    let info = if paused {
        client.pause_push_subscription(request).await?
    } else {
        client.resume_push_subscription(request).await?
    };
    Ok(info.into_inner())
}

/// Deletes a push subscription and its position.
pub async fn push_delete(conn: &Connection, name: &str) -> Result<(), ClientError> {
    admin(conn)
        .await?
        .delete_push_subscription(conn.request(api::PushSubscriptionRequest {
            name: name.to_owned(),
        }))
        .await?;
    Ok(())
}
