//! `jetwatch.v1.Admin`: streams and durable subscriptions. Converts and delegates to the
//! admin domain ([`crate::admin`]).

use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{durable_to_pb, start_from_pb, stream_to_pb};
use super::pb::jetwatch::v1 as api;
use crate::admin::Admin;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: Admin,
}

impl AdminService {
    /// Serves `admin`.
    pub fn new(admin: Admin) -> AdminService {
        AdminService { admin }
    }
}

#[tonic::async_trait]
impl api::admin_server::Admin for AdminService {
    async fn list_streams(
        &self,
        request: Request<api::ListStreamsRequest>,
    ) -> Result<Response<api::ListStreamsResponse>, Status> {
        let caller = caller(&request);
        let streams = self.admin.streams(caller.as_deref()).await?;
        Ok(Response::new(api::ListStreamsResponse {
            streams: streams.iter().map(stream_to_pb).collect(),
        }))
    }

    async fn get_stream(
        &self,
        request: Request<api::GetStreamRequest>,
    ) -> Result<Response<api::StreamInfo>, Status> {
        let caller = caller(&request);
        let state = self
            .admin
            .stream(caller.as_deref(), &request.into_inner().stream)
            .await?;
        Ok(Response::new(stream_to_pb(&state)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<api::ListSubscriptionsRequest>,
    ) -> Result<Response<api::ListSubscriptionsResponse>, Status> {
        let caller = caller(&request);
        let stream = request.into_inner().stream;
        let durables = self
            .admin
            .durables(
                caller.as_deref(),
                Some(stream.as_str()).filter(|s| !s.is_empty()),
            )
            .await?;
        Ok(Response::new(api::ListSubscriptionsResponse {
            subscriptions: durables.iter().map(durable_to_pb).collect(),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<api::GetSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let d = self
            .admin
            .durable(caller.as_deref(), &r.stream, &r.durable)
            .await?;
        Ok(Response::new(durable_to_pb(&d)))
    }

    async fn delete_subscription(
        &self,
        request: Request<api::DeleteSubscriptionRequest>,
    ) -> Result<Response<api::DeleteSubscriptionResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        self.admin
            .delete_durable(caller.as_deref(), &r.stream, &r.durable)
            .await?;
        Ok(Response::new(api::DeleteSubscriptionResponse {}))
    }

    async fn seek_subscription(
        &self,
        request: Request<api::SeekSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let start = start_from_pb(r.start, "start")?;
        let d = self
            .admin
            .seek_durable(caller.as_deref(), &r.stream, &r.durable, start)
            .await?;
        Ok(Response::new(durable_to_pb(&d)))
    }

    async fn get_server_info(
        &self,
        _request: Request<api::GetServerInfoRequest>,
    ) -> Result<Response<api::ServerInfo>, Status> {
        Ok(Response::new(api::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api: "jetwatch.v1".to_owned(),
        }))
    }

    async fn create_push_subscription(
        &self,
        request: Request<api::PushSubscription>,
    ) -> Result<Response<api::PushSubscriptionInfo>, Status> {
        let caller = caller(&request);
        let spec = push_from_pb(request.into_inner())?;
        let info = self.admin.push_create(caller.as_deref(), spec).await?;
        Ok(Response::new(push_to_pb(&info)))
    }

    async fn update_push_subscription(
        &self,
        request: Request<api::PushSubscription>,
    ) -> Result<Response<api::PushSubscriptionInfo>, Status> {
        let caller = caller(&request);
        let spec = push_from_pb(request.into_inner())?;
        let info = self.admin.push_update(caller.as_deref(), spec).await?;
        Ok(Response::new(push_to_pb(&info)))
    }

    async fn get_push_subscription(
        &self,
        request: Request<api::PushSubscriptionRequest>,
    ) -> Result<Response<api::PushSubscriptionInfo>, Status> {
        let caller = caller(&request);
        let name = request.into_inner().name;
        let info = self.admin.push_get(caller.as_deref(), &name).await?;
        Ok(Response::new(push_to_pb(&info)))
    }

    async fn list_push_subscriptions(
        &self,
        request: Request<api::ListPushSubscriptionsRequest>,
    ) -> Result<Response<api::ListPushSubscriptionsResponse>, Status> {
        let caller = caller(&request);
        let list = self.admin.push_list(caller.as_deref()).await?;
        Ok(Response::new(api::ListPushSubscriptionsResponse {
            subscriptions: list.iter().map(push_to_pb).collect(),
        }))
    }

    async fn pause_push_subscription(
        &self,
        request: Request<api::PushSubscriptionRequest>,
    ) -> Result<Response<api::PushSubscriptionInfo>, Status> {
        let caller = caller(&request);
        let name = request.into_inner().name;
        let info = self
            .admin
            .push_pause(caller.as_deref(), &name, true)
            .await?;
        Ok(Response::new(push_to_pb(&info)))
    }

    async fn resume_push_subscription(
        &self,
        request: Request<api::PushSubscriptionRequest>,
    ) -> Result<Response<api::PushSubscriptionInfo>, Status> {
        let caller = caller(&request);
        let name = request.into_inner().name;
        let info = self
            .admin
            .push_pause(caller.as_deref(), &name, false)
            .await?;
        Ok(Response::new(push_to_pb(&info)))
    }

    async fn delete_push_subscription(
        &self,
        request: Request<api::PushSubscriptionRequest>,
    ) -> Result<Response<api::DeletePushSubscriptionResponse>, Status> {
        let caller = caller(&request);
        let name = request.into_inner().name;
        self.admin.push_delete(caller.as_deref(), &name).await?;
        Ok(Response::new(api::DeletePushSubscriptionResponse {}))
    }
}

/// A push subscription from the wire.
fn push_from_pb(p: api::PushSubscription) -> Result<crate::push::PushSpec, crate::error::Error> {
    let timeout = match p.timeout {
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            return Err(crate::error::Error::invalid(
                "timeout",
                "must not be negative",
            ))
        }
        Some(d) => Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32)),
        None => None,
    };
    Ok(crate::push::PushSpec {
        name: p.name,
        stream: p.stream,
        subjects: p.subjects,
        filter: Some(p.filter).filter(|f| !f.is_empty()),
        start: if p.start.is_empty() {
            "new".into()
        } else {
            p.start
        },
        url: p.url,
        headers: p.headers.into_iter().collect(),
        secrets: p.secrets,
        timeout,
        concurrency: Some(p.concurrency).filter(|c| *c > 0),
        ordered: p.ordered,
        max_attempts: Some(p.max_attempts).filter(|a| *a > 0),
        dead_letter_subject: Some(p.dead_letter_subject).filter(|s| !s.is_empty()),
        structured: p.structured,
        paused: p.paused,
    })
}

/// A push subscription for the wire: its secrets are never sent back.
fn push_to_pb(info: &crate::push::PushInfo) -> api::PushSubscriptionInfo {
    let s = &info.spec;
    let time =
        |t: &Option<chrono::DateTime<chrono::Utc>>| t.as_ref().map(super::convert::timestamp_to_pb);
    api::PushSubscriptionInfo {
        subscription: Some(api::PushSubscription {
            name: s.name.clone(),
            stream: s.stream.clone(),
            subjects: s.subjects.clone(),
            filter: s.filter.clone().unwrap_or_default(),
            start: s.start.clone(),
            url: s.url.clone(),
            headers: s.headers.clone().into_iter().collect(),
            secrets: Vec::new(),
            timeout: s.timeout.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }),
            concurrency: s.concurrency(),
            ordered: s.ordered,
            max_attempts: s.max_attempts.unwrap_or(0),
            dead_letter_subject: s.dead_letter_subject.clone().unwrap_or_default(),
            structured: s.structured,
            paused: s.paused,
        }),
        secret_count: s.secrets.len() as u32,
        position: info.position.as_ref().map(durable_to_pb),
        last_success: time(&info.status.last_success),
        last_success_sequence: info.status.last_success_sequence,
        last_error_time: time(&info.status.last_error_at),
        last_error: info.status.last_error.clone().unwrap_or_default(),
    }
}
