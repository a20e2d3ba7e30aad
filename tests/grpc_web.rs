//! gRPC-Web on the gRPC port: a gRPC-Web client over HTTP/1.1 (tonic-web's client layer over a
//! plain HTTP/1 client, as a browser's grpc-web library speaks) publishes and watches.

mod common;

use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_client_publishes_and_watches_over_http1() {
    let env = TestEnv::start().await;
    let http1 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(false)
        .build_http();
    let web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(http1);
    let origin: http::Uri = format!("http://{}", env.addr).parse().unwrap();
    let mut subscriber =
        api::subscriber_client::SubscriberClient::with_origin(web.clone(), origin.clone());
    let mut publisher = api::publisher_client::PublisherClient::with_origin(web, origin);

    let mut watch = subscriber
        .watch(open().build())
        .await
        .expect("Watch over gRPC-Web")
        .into_inner();
    opened(&mut watch).await;
    let published = publisher
        .publish(api::PublishRequest {
            event: Some(widget("web-1", "w1", "created")),
            ..Default::default()
        })
        .await
        .expect("Publish over gRPC-Web")
        .into_inner();
    let delivered = next_delivery(&mut watch).await;
    assert_eq!(delivered.sequence, published.sequence);
    assert_eq!(delivered.event.unwrap().id, "web-1");

    // Errors arrive as gRPC statuses with their details, as over HTTP/2.
    let refused = publisher
        .publish(api::PublishRequest {
            event: Some(widget("", "w1", "created")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(error_info(&refused).0, "INVALID_EVENT");
}
