//! Security: identities from static tokens, JWTs and TLS client certificates; grants that no
//! request can get around (a table of bypass attempts, each refused or leaking nothing); the
//! audit identity on every published event; TLS with certificate rotation.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jetwatch::config::{Action, Grant, JwtSettings, Settings, StaticToken};
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use sha2::Digest;
use tonic::transport::Channel;
use tonic::{Code, Request};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "jetwatch";
const JWT_SECRET: &[u8] = b"a-test-secret-of-some-length-0123456789";

fn sha256(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn grant(who: &str, actions: &[Action], stream: &str, subjects: &[&str]) -> Grant {
    let (identities, groups) = match who.strip_prefix("group:") {
        Some(g) => (vec![], vec![g.to_owned()]),
        None => (vec![who.to_owned()], vec![]),
    };
    Grant {
        identities,
        groups,
        actions: actions.to_vec(),
        stream: stream.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
    }
}

/// alice reads and writes widgets, bob reads gadgets, carol (JWT, group `widget-readers`)
/// reads widgets, root administers everything.
fn secured(s: &mut Settings, secret_file: &std::path::Path) {
    for (token, identity, groups) in [
        ("alice-token", "alice", vec![]),
        ("bob-token", "bob", vec![]),
        ("root-token", "root", vec!["admins".to_owned()]),
    ] {
        s.auth.tokens.push(StaticToken {
            sha256: sha256(token),
            identity: identity.into(),
            groups,
        });
    }
    s.auth.jwt = Some(JwtSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        hs256_secret_file: Some(secret_file.to_owned()),
        jwks_file: None,
        groups_claim: "groups".into(),
        audit_claims: vec!["email".into()],
        leeway: Duration::from_secs(0),
    });
    let widgets = ["events.widgets._.>"];
    s.auth.grants = vec![
        grant(
            "alice",
            &[Action::Subscribe, Action::Publish],
            "events",
            &widgets,
        ),
        grant(
            "bob",
            &[Action::Subscribe],
            "events",
            &["events.gadgets._.>"],
        ),
        grant(
            "group:widget-readers",
            &[Action::Subscribe],
            "events",
            &widgets,
        ),
        grant(
            "group:admins",
            &[Action::Subscribe, Action::Publish, Action::Admin],
            "*",
            &[">"],
        ),
    ];
}

async fn secured_env() -> (TestEnv, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, JWT_SECRET).unwrap();
    let env = TestEnv::with(|s| secured(s, &secret)).await;
    (env, dir)
}

fn jwt(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn carol_claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600,
        "groups": ["widget-readers"], "email": "carol@example.com"
    })
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn event(id: &str, source: &str, subject: &str) -> ce::CloudEvent {
    let mut e = widget(id, subject, "modified");
    e.source = source.into();
    e
}

async fn publish_as(
    channel: &Channel,
    token: &str,
    event: ce::CloudEvent,
) -> Result<api::PublishResponse, tonic::Status> {
    PublisherClient::new(channel.clone())
        .publish(authed(
            api::PublishRequest {
                event: Some(event),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn watch_as(
    channel: &Channel,
    token: &str,
    open: api::Open,
) -> Result<tonic::Streaming<api::SubscribeResponse>, tonic::Status> {
    let mut stream = SubscriberClient::new(channel.clone())
        .watch(authed(open, token))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(api::SubscribeResponse {
            response: Some(api::subscribe_response::Response::Opened(_)),
        }) => Ok(stream),
        other => panic!("expected Opened, got {other:?}"),
    }
}

/// Every delivery a watch gives until it has been quiet for a moment.
async fn drain(stream: &mut tonic::Streaming<api::SubscribeResponse>) -> Vec<api::Delivery> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_millis(700), futures::StreamExt::next(stream)).await
    {
        if let Some(api::subscribe_response::Response::Delivery(d)) = m.response {
            out.push(d);
        }
    }
    out
}

fn assert_code(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    reason: &str,
    case: &str,
) {
    match result {
        Ok(v) => panic!("{case}: expected {code:?}, got {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{case}: {status:?}");
            assert_eq!(error_info(&status).0, reason, "{case}: {status:?}");
        }
    }
}

#[tokio::test]
async fn no_request_gets_around_the_grants() {
    let (env, _dir) = secured_env().await;
    let channel = env.channel().await;
    // Widgets and gadgets, published by root.
    for (id, source, subject) in [
        ("w1", "/widgets", "w1"),
        ("g1", "/gadgets", "g1"),
        ("w2", "/widgets", "w2"),
    ] {
        publish_as(&channel, "root-token", event(id, source, subject))
            .await
            .unwrap();
    }
    let carol = jwt(carol_claims(), JWT_SECRET);

    // Reads that ask for more than the grant see exactly the grant.
    let reads: Vec<(&str, &str, api::Open)> = vec![
        (
            "every subject",
            "alice-token",
            open().subjects(&[">"]).earliest().bookmarks_ms(0).build(),
        ),
        (
            "no subjects",
            "alice-token",
            open().earliest().bookmarks_ms(0).build(),
        ),
        (
            "a filter naming a gadget",
            "alice-token",
            open()
                .sql("subject = 'g1' OR subject = 'w1'")
                .earliest()
                .bookmarks_ms(0)
                .build(),
        ),
        (
            "a snapshot",
            "alice-token",
            open().snapshot().bookmarks_ms(0).build(),
        ),
        (
            "a sequence start",
            "alice-token",
            open().at_sequence(1).bookmarks_ms(0).build(),
        ),
        (
            "a JWT group grant",
            &carol,
            open().earliest().bookmarks_ms(0).build(),
        ),
    ];
    for (case, token, o) in reads {
        let mut stream = watch_as(&channel, token, o)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        let seen: Vec<String> = drain(&mut stream)
            .await
            .into_iter()
            .map(|d| d.event.unwrap().id)
            .collect();
        assert!(!seen.is_empty(), "{case}: nothing at all");
        assert!(
            !seen.contains(&"g1".to_string()),
            "{case}: leaked a gadget: {seen:?}"
        );
    }
    // A catch-up read from far behind, through a tiny history: covered by the same subjects.
    // Subjects wholly outside the grant are refused.
    assert_code(
        watch_as(
            &channel,
            "alice-token",
            open().subjects(&["events.gadgets._.>"]).build(),
        )
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "gadget subjects",
    );
    // Publishing outside the grant, however the event is dressed, is refused and stores nothing.
    let before = env.stored_count("events").await;
    assert_code(
        publish_as(&channel, "alice-token", event("x1", "/gadgets", "g9")).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "crafted source",
    );
    assert_code(
        publish_as(&channel, "bob-token", event("x2", "/gadgets", "g9")).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "no publish grant",
    );
    assert_eq!(env.stored_count("events").await, before, "nothing stored");

    // Another identity's durable: resume, seek, delete, read are all refused.
    let mut alice_sub = SubscriberClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(api::SubscribeRequest {
        request: Some(api::subscribe_request::Request::Open(
            open()
                .durable("alice-d")
                .explicit()
                .earliest()
                .bookmarks_ms(0)
                .build(),
        )),
    })
    .await
    .unwrap();
    let mut alice_stream = alice_sub
        .subscribe(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            "alice-token",
        ))
        .await
        .unwrap()
        .into_inner();
    opened(&mut alice_stream).await;
    let first = next_delivery(&mut alice_stream).await;
    assert_eq!(first.event.unwrap().source, "/widgets");
    drop(tx);
    drop(alice_stream);
    let bob_open = |start: Option<api::StartPosition>| {
        let mut o = open().durable("alice-d").explicit().bookmarks_ms(0).build();
        o.start = start;
        o.subjects = vec!["events.gadgets._.>".into()];
        o
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(api::SubscribeRequest {
        request: Some(api::subscribe_request::Request::Open(bob_open(None))),
    })
    .await
    .unwrap();
    let bob_resume = match SubscriberClient::new(channel.clone())
        .subscribe(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            "bob-token",
        ))
        .await
    {
        Err(s) => Err(s),
        Ok(r) => r.into_inner().message().await,
    };
    assert_code(
        bob_resume,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "resume another's durable",
    );
    let mut admin = AdminClient::new(channel.clone());
    let target = |d: &str| api::GetSubscriptionRequest {
        stream: "events".into(),
        durable: d.into(),
    };
    assert_code(
        admin
            .get_subscription(authed(target("alice-d"), "bob-token"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "read another's durable",
    );
    assert_code(
        admin
            .get_subscription(authed(target("no-such-durable"), "bob-token"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "a durable that does not exist looks the same",
    );
    assert_code(
        admin
            .seek_subscription(authed(
                api::SeekSubscriptionRequest {
                    stream: "events".into(),
                    durable: "alice-d".into(),
                    start: start_at(api::start_position::Position::Earliest(())),
                },
                "bob-token",
            ))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "seek another's durable",
    );
    assert_code(
        admin
            .delete_subscription(authed(
                api::DeleteSubscriptionRequest {
                    stream: "events".into(),
                    durable: "alice-d".into(),
                },
                "bob-token",
            ))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "delete another's durable",
    );
    // Listings show only what the caller may see.
    let list = |token: &'static str| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_subscriptions(authed(api::ListSubscriptionsRequest::default(), token))
                .await
                .unwrap()
                .into_inner()
                .subscriptions
                .into_iter()
                .map(|s| s.durable)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("alice-token").await, vec!["alice-d".to_string()]);
    assert!(list("bob-token").await.is_empty());
    assert_eq!(list("root-token").await, vec!["alice-d".to_string()]);
    // The owner and an admin may manage it.
    admin
        .get_subscription(authed(target("alice-d"), "alice-token"))
        .await
        .unwrap();
    admin
        .delete_subscription(authed(
            api::DeleteSubscriptionRequest {
                stream: "events".into(),
                durable: "alice-d".into(),
            },
            "root-token",
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn only_valid_credentials_identify_a_caller() {
    let (env, _dir) = secured_env().await;
    let channel = env.channel().await;
    let ok = event("e1", "/widgets", "w1");
    let unauthenticated =
        |r: Result<api::PublishResponse, tonic::Status>, reason: &str, case: &str| {
            assert_code(r, Code::Unauthenticated, reason, case)
        };
    // No credential, an unknown (or revoked) token.
    let no_token = PublisherClient::new(channel.clone())
        .publish(api::PublishRequest {
            event: Some(ok.clone()),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner);
    unauthenticated(no_token, "UNAUTHENTICATED", "no token");
    unauthenticated(
        publish_as(&channel, "revoked-token", ok.clone()).await,
        "UNAUTHENTICATED",
        "unknown token",
    );
    // JWTs: expired, not yet valid, wrong audience, wrong issuer, badly signed.
    let mut claims = carol_claims();
    claims["exp"] = (now() - 60).into();
    unauthenticated(
        publish_as(&channel, &jwt(claims, JWT_SECRET), ok.clone()).await,
        "TOKEN_EXPIRED",
        "expired JWT",
    );
    let cases = [
        ("nbf", serde_json::json!(now() + 600), "not yet valid"),
        ("aud", serde_json::json!("someone-else"), "wrong audience"),
        (
            "iss",
            serde_json::json!("https://evil.test/"),
            "wrong issuer",
        ),
    ];
    for (claim, value, case) in cases {
        let mut claims = carol_claims();
        claims[claim] = value;
        unauthenticated(
            publish_as(&channel, &jwt(claims, JWT_SECRET), ok.clone()).await,
            "UNAUTHENTICATED",
            case,
        );
    }
    unauthenticated(
        publish_as(
            &channel,
            &jwt(carol_claims(), b"another-secret-entirely-0123456789"),
            ok.clone(),
        )
        .await,
        "UNAUTHENTICATED",
        "badly signed JWT",
    );
    // carol may read widgets but not publish.
    assert_code(
        publish_as(&channel, &jwt(carol_claims(), JWT_SECRET), ok.clone()).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "carol publishing",
    );
    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no credential");
}

#[tokio::test]
async fn published_events_carry_the_verified_identity_whatever_the_client_claims() {
    let (env, _dir) = secured_env().await;
    let channel = env.channel().await;
    let mut forged = event("f1", "/widgets", "w1");
    forged.attributes.insert(
        "authid".into(),
        ce::cloud_event::CloudEventAttributeValue {
            attr: Some(
                ce::cloud_event::cloud_event_attribute_value::Attr::CeString("mallory".into()),
            ),
        },
    );
    let mut watcher = watch_as(&channel, "root-token", open().bookmarks_ms(0).build())
        .await
        .unwrap();
    publish_as(&channel, "alice-token", forged).await.unwrap();
    let d = next_delivery(&mut watcher).await;
    let attrs: HashMap<String, String> = d
        .event
        .unwrap()
        .attributes
        .into_iter()
        .filter_map(|(k, v)| match v.attr {
            Some(ce::cloud_event::cloud_event_attribute_value::Attr::CeString(s)) => Some((k, s)),
            _ => None,
        })
        .collect();
    assert_eq!(attrs["authid"], "alice");
    assert_eq!(attrs["authtype"], "api_key");
}

#[test]
fn authentication_without_tls_on_a_public_address_is_refused() {
    let mut s = test_settings();
    s.auth.tokens.push(StaticToken {
        sha256: sha256("t"),
        identity: "a".into(),
        groups: vec![],
    });
    s.server.listen = "0.0.0.0:0".parse().unwrap();
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("auth.allow_plaintext"), "{err}");
    s.auth.allow_plaintext = true;
    s.validate().unwrap();
}

// --- TLS -------------------------------------------------------------------------------------

struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

fn new_ca(name: &str) -> Ca {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ca(rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap())
}

/// A certificate signed by `ca`: a server's for localhost and 127.0.0.1, or a client's named
/// `client`. Returns (certificate PEM, key PEM).
fn issue(ca: &Ca, client: Option<&str>) -> (String, String) {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};
    let mut p = match client {
        None => CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap(),
        Some(_) => CertificateParams::default(),
    };
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, client.unwrap_or("jetwatch"));
    p.extended_key_usages = vec![match client {
        None => ExtendedKeyUsagePurpose::ServerAuth,
        Some(_) => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.0).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A server certificate and key issued by `ca`, and `ca` as the clients' CA, written to files.
struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    clients_ca: std::path::PathBuf,
}

impl TlsFiles {
    fn write(dir: &std::path::Path, ca: &Ca) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            clients_ca: dir.join("clients-ca.crt"),
        };
        let (cert, key) = issue(ca, None);
        write_atomically(&files.cert, &cert);
        write_atomically(&files.key, &key);
        write_atomically(&files.clients_ca, &ca.0.pem());
        files
    }

    /// TLS with these files, client certificates as identities.
    fn apply(&self, s: &mut Settings) {
        s.tls.cert_file = Some(self.cert.clone());
        s.tls.key_file = Some(self.key.clone());
        s.tls.client_ca_file = Some(self.clients_ca.clone());
        s.auth.client_certificates = true;
    }
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A publish over `channel`: Ok when the call got through TLS and authentication.
async fn try_publish(channel: Channel, id: &str) -> Result<u64, tonic::Status> {
    PublisherClient::new(channel)
        .publish(api::PublishRequest {
            event: Some(event(id, "/widgets", "w1")),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().sequence)
}

#[tokio::test]
async fn client_certificates_identify_callers_and_certificates_rotate_under_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (new_ca("clients-and-server"), new_ca("someone-else"));
    let files = TlsFiles::write(dir.path(), &ca);
    let (server_crt, server_key) = (files.cert.clone(), files.key.clone());
    let env = TestEnv::with(|s| {
        files.apply(s);
        s.tls.reload_interval = Duration::from_millis(100);
        s.auth.grants = vec![grant(
            "alice",
            &[Action::Subscribe, Action::Publish],
            "events",
            &[">"],
        )];
    })
    .await;
    let alice = issue(&ca, Some("alice"));
    let mallory = issue(&other_ca, Some("alice"));

    // Alice's certificate is her identity.
    let channel = tls_channel(env.addr, &ca.0.pem(), Some(&alice))
        .await
        .unwrap();
    let mut watcher = SubscriberClient::new(channel.clone())
        .watch(open().bookmarks_ms(0).build())
        .await
        .unwrap()
        .into_inner();
    opened(&mut watcher).await;
    let seq = try_publish(channel.clone(), "e1").await.unwrap();
    assert_eq!(next_delivery(&mut watcher).await.sequence, seq);

    // Plaintext to the TLS port, no client certificate, a certificate from another CA: refused.
    let plaintext = async {
        let c = Channel::from_shared(format!("http://{}", env.addr))
            .unwrap()
            .connect()
            .await?;
        try_publish(c, "p1").await.map_err(Into::into)
    };
    let plain: Result<u64, Box<dyn std::error::Error>> = plaintext.await;
    assert!(plain.is_err(), "plaintext to a TLS port must fail");
    for (case, identity) in [("no certificate", None), ("another CA", Some(&mallory))] {
        let refused = match tls_channel(env.addr, &ca.0.pem(), identity).await {
            Err(_) => true,
            Ok(c) => try_publish(c, "x").await.is_err(),
        };
        assert!(refused, "{case} must be refused");
    }

    // Rotation: a new server certificate from a new CA, with no restart. New connections get
    // it; the open stream carries on.
    let new_ca = new_ca("rotated");
    let (cert, key) = issue(&new_ca, None);
    write_atomically(&server_key, &key);
    write_atomically(&server_crt, &cert);
    let rotated = eventually("the new certificate to be served", || {
        let (pem, alice) = (new_ca.0.pem(), alice.clone());
        async move { tls_channel(env.addr, &pem, Some(&alice)).await.ok() }
    })
    .await;
    let seq = try_publish(rotated, "e2").await.unwrap();
    assert_eq!(
        next_delivery(&mut watcher).await.sequence,
        seq,
        "the stream opened before the rotation goes on"
    );
    assert!(
        tls_channel(env.addr, &ca.0.pem(), Some(&alice))
            .await
            .is_err()
            || try_publish(
                tls_channel(env.addr, &ca.0.pem(), Some(&alice))
                    .await
                    .unwrap(),
                "e3"
            )
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
}

// The CLI runs as a child process waited on synchronously: the gateway needs other threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_tokens_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, JWT_SECRET).unwrap();
    let ca = new_ca("cli-test");
    let (cert, key) = issue(&ca, None);
    let files: Vec<std::path::PathBuf> = [
        "tls.crt", "tls.key", "ca.crt", "root.crt", "root.key", "token",
    ]
    .iter()
    .map(|f| dir.path().join(f))
    .collect();
    std::fs::write(&files[0], cert).unwrap();
    std::fs::write(&files[1], key).unwrap();
    std::fs::write(&files[2], ca.0.pem()).unwrap();
    let root = issue(&ca, Some("root"));
    std::fs::write(&files[3], &root.0).unwrap();
    std::fs::write(&files[4], &root.1).unwrap();
    std::fs::write(&files[5], "alice-token\n").unwrap();
    let env = TestEnv::with(|s| {
        secured(s, &secret);
        s.tls.cert_file = Some(files[0].clone());
        s.tls.key_file = Some(files[1].clone());
        s.tls.client_ca_file = Some(files[2].clone());
        s.tls.client_auth = jetwatch::config::ClientAuth::Optional;
        s.auth.client_certificates = true;
        s.auth
            .grants
            .push(grant("root", &[Action::Admin], "*", &[">"]));
    })
    .await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetwatch"))
            .args(args)
            .args(["--server", &env.addr.to_string(), "--tls-ca"])
            .arg(&files[2])
            .args(["--tls-server-name", "localhost"])
            .env_remove("JETWATCH_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(&["streams"]);
    assert!(
        !ok && (out.contains("UNAUTHENTICATED") || out.contains("authentication required")),
        "{out}"
    );
    let (ok, out) = cli(&["streams", "--token-file", files[5].to_str().unwrap()]);
    assert!(ok && out.contains("events"), "{out}");
    let (ok, out) = cli(&[
        "streams",
        "--tls-cert",
        files[3].to_str().unwrap(),
        "--tls-key",
        files[4].to_str().unwrap(),
    ]);
    assert!(ok && out.contains("events"), "{out}");
}

#[tokio::test]
async fn an_open_stream_ends_when_its_token_expires_saying_where_to_resume() {
    let (env, _dir) = secured_env().await;
    let channel = env.channel().await;
    let seq = publish_as(&channel, "root-token", event("e1", "/widgets", "w1"))
        .await
        .unwrap()
        .sequence;
    let mut claims = carol_claims();
    claims["exp"] = (now() + 2).into();
    let mut stream = watch_as(
        &channel,
        &jwt(claims, JWT_SECRET),
        open().earliest().bookmarks_ms(0).build(),
    )
    .await
    .unwrap();
    assert_eq!(next_delivery(&mut stream).await.sequence, seq);
    let status = next(&mut stream)
        .await
        .expect_err("the stream ends at expiry");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "TOKEN_EXPIRED");
    assert_eq!(meta["last_delivered_sequence"], seq.to_string());
}

/// The NATS permissions the gateway needs for a stream `events` (README "Securing jetwatch").
const NATS_PERMISSIONS: &str = r#"
  publish = { allow = [
    "events.>",
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.events", "$JS.API.STREAM.CREATE.events", "$JS.API.STREAM.UPDATE.events",
    "$JS.API.STREAM.MSG.GET.events",
    "$JS.API.DIRECT.GET.events", "$JS.API.DIRECT.GET.events.>",
    "$JS.API.CONSUMER.CREATE.events", "$JS.API.CONSUMER.CREATE.events.>",
    "$JS.API.CONSUMER.INFO.events.*", "$JS.API.CONSUMER.DELETE.events.*",
    "$JS.API.CONSUMER.LIST.events", "$JS.API.CONSUMER.NAMES.events",
    "$JS.API.CONSUMER.MSG.NEXT.events.*",
    "$JS.ACK.events.>"
  ] }
  subscribe = { allow = ["_INBOX.>"] }
"#;

#[tokio::test]
async fn the_gateway_works_on_a_nats_server_with_tls_and_a_user_of_least_privilege() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("nats");
    let (cert, key) = issue(&ca, None);
    let (crt, key_file, ca_file, password) = (
        dir.path().join("nats.crt"),
        dir.path().join("nats.key"),
        dir.path().join("ca.crt"),
        dir.path().join("password"),
    );
    std::fs::write(&crt, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&ca_file, ca.0.pem()).unwrap();
    std::fs::write(&password, "s3cret\n").unwrap();
    let nats_config = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n\
         authorization {{ users = [ {{ user: jetwatch, password: s3cret, permissions: {{ {NATS_PERMISSIONS} }} }} ] }}\n",
        crt.display(),
        key_file.display()
    );
    let env = TestEnv::with_nats_config(&nats_config, |s| {
        s.nats.user = Some("jetwatch".into());
        s.nats.password_file = Some(password.clone());
        s.nats.tls_ca_file = Some(ca_file.clone());
        s.nats.request_timeout = Duration::from_secs(2);
    })
    .await;
    let mut publisher = env.publisher().await;
    let mut client = env.subscriber().await;
    let seq = publish(&mut publisher, widget("s1", "w1", "modified")).await;
    let mut replay = watch(&mut client, open().earliest().bookmarks_ms(0).build()).await;
    opened(&mut replay).await;
    assert_eq!(next_delivery(&mut replay).await.sequence, seq);
    let mut snapshot = watch(&mut client, open().snapshot().bookmarks_ms(0).build()).await;
    opened(&mut snapshot).await;
    assert_eq!(next_delivery(&mut snapshot).await.sequence, seq);
    let mut sub = subscribe(
        &mut client,
        open()
            .durable("d")
            .explicit()
            .earliest()
            .bookmarks_ms(0)
            .build(),
    )
    .await;
    opened(&mut sub.responses).await;
    let d = next_delivery(&mut sub.responses).await;
    sub.ack(vec![d.sequence]).await;
    let listed = env
        .admin()
        .await
        .list_subscriptions(api::ListSubscriptionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn each_identity_is_held_to_its_own_subscription_and_publish_limits() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, JWT_SECRET).unwrap();
    let env = TestEnv::with(|s| {
        secured(s, &secret);
        s.auth.max_subscriptions_per_identity = 2;
        s.auth.publish_rate_per_identity = 1;
        s.auth.publish_burst_per_identity = 3;
    })
    .await;
    let channel = env.channel().await;
    let o = || open().bookmarks_ms(0).build();
    let first = watch_as(&channel, "alice-token", o()).await.unwrap();
    let _second = watch_as(&channel, "alice-token", o()).await.unwrap();
    assert_code(
        watch_as(&channel, "alice-token", o()).await,
        Code::ResourceExhausted,
        "LIMIT_EXCEEDED",
        "a third subscription",
    );
    // Another identity has its own allowance; a closed stream gives its slot back.
    let _root = watch_as(&channel, "root-token", o()).await.unwrap();
    drop(first);
    eventually("alice's slot to come back", || {
        let channel = channel.clone();
        async move { watch_as(&channel, "alice-token", o()).await.ok() }
    })
    .await;
    // The burst passes, then RESOURCE_EXHAUSTED with RetryInfo; root is unaffected.
    let mut refused = None;
    for i in 0..10 {
        match publish_as(
            &channel,
            "alice-token",
            event(&format!("r{i}"), "/widgets", "w1"),
        )
        .await
        {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("publishing faster than the rate is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status).0, "RATE_LIMITED");
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert!(retry
        .retry_delay
        .is_some_and(|d| d <= Duration::from_secs(1)));
    publish_as(&channel, "root-token", event("root1", "/widgets", "w1"))
        .await
        .expect("another identity publishes");
}

#[tokio::test]
async fn es256_tokens_are_verified_with_keys_from_a_jwks_file() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, JWT_SECRET).unwrap();
    // An ES256 key pair: the public half as a JWK, the private half signs.
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    }]});
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let env = TestEnv::with(|s| {
        secured(s, &secret);
        s.auth.jwt.as_mut().unwrap().jwks_file = Some(jwks_file.clone());
    })
    .await;
    let channel = env.channel().await;
    let sign = |kid: &str, der: &[u8]| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &carol_claims(),
            &jsonwebtoken::EncodingKey::from_ec_der(der),
        )
        .unwrap()
    };
    let good = sign("k1", &key.serialize_der());
    watch_as(&channel, &good, open().bookmarks_ms(0).build())
        .await
        .expect("a token signed with the JWKS key");
    let other = rcgen::KeyPair::generate().unwrap();
    for (case, token) in [
        ("another key, same kid", sign("k1", &other.serialize_der())),
        ("an unknown kid", sign("k2", &key.serialize_der())),
    ] {
        assert_code(
            watch_as(&channel, &token, open().bookmarks_ms(0).build()).await,
            Code::Unauthenticated,
            "UNAUTHENTICATED",
            case,
        );
    }
}

fn tokens_file(tokens: &[(&str, &str)]) -> String {
    tokens
        .iter()
        .map(|(token, identity)| {
            format!(
                "[[tokens]]\nsha256 = \"{}\"\nidentity = \"{identity}\"\n",
                sha256(token)
            )
        })
        .collect()
}

#[tokio::test]
async fn a_token_revoked_in_the_tokens_file_is_refused_and_its_open_streams_end() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, JWT_SECRET).unwrap();
    let file = dir.path().join("tokens.toml");
    write_atomically(
        &file,
        &tokens_file(&[("dave-token", "dave"), ("erin-token", "erin")]),
    );
    let env = TestEnv::with(|s| {
        secured(s, &secret);
        s.auth.tokens_file = Some(file.clone());
        s.auth.reload_interval = Duration::from_millis(100);
        for who in ["dave", "erin"] {
            s.auth.grants.push(grant(
                who,
                &[Action::Subscribe],
                "events",
                &["events.widgets._.>"],
            ));
        }
    })
    .await;
    let channel = env.channel().await;
    let o = || open().bookmarks_ms(0).build();
    let mut dave = watch_as(&channel, "dave-token", o()).await.unwrap();
    let mut erin = watch_as(&channel, "erin-token", o()).await.unwrap();
    let seq = publish_as(&channel, "root-token", event("e1", "/widgets", "w1"))
        .await
        .unwrap()
        .sequence;
    assert_eq!(next_delivery(&mut dave).await.sequence, seq);
    assert_eq!(next_delivery(&mut erin).await.sequence, seq);

    // A broken file is refused: the tokens in force stay.
    write_atomically(&file, "[[tokens]]\nsha256 = \"not-a-hash\"\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    watch_as(&channel, "dave-token", o())
        .await
        .expect("a broken file revokes nothing");

    // Dave's token is removed, frank's added: no restart.
    write_atomically(
        &file,
        &tokens_file(&[("erin-token", "erin"), ("frank-token", "frank")]),
    );
    let status = next(&mut dave)
        .await
        .expect_err("dave's open stream ends when his token is revoked");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "UNAUTHENTICATED");
    assert_eq!(meta["last_delivered_sequence"], seq.to_string());
    assert_code(
        watch_as(&channel, "dave-token", o()).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "a revoked token",
    );
    // Frank has no grant but is known now: PERMISSION_DENIED, not UNAUTHENTICATED.
    assert_code(
        watch_as(&channel, "frank-token", o()).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "a token added to the file",
    );
    // Erin's token stayed: her stream goes on.
    let seq = publish_as(&channel, "root-token", event("e2", "/widgets", "w1"))
        .await
        .unwrap()
        .sequence;
    assert_eq!(next_delivery(&mut erin).await.sequence, seq);
}

/// A client certificate from `ca` with the given common name, SANs, organizations, OUs and
/// serial number. Returns (certificate PEM, key PEM).
fn issue_client(
    ca: &Ca,
    cn: Option<&str>,
    sans: Vec<rcgen::SanType>,
    organizations: &[&str],
    serial: u64,
) -> (String, String) {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    for o in organizations {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "ignored-ou");
    p.subject_alt_names = sans;
    p.serial_number = Some(rcgen::SerialNumber::from(serial));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.0).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A revocation list of `ca` listing `serials`.
fn crl(ca: &Ca, serials: &[u64]) -> String {
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2025, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(serials.len() as u64 + 1),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.0).unwrap().pem().unwrap()
}

#[tokio::test]
async fn certificate_names_map_to_identities_as_configured_and_revoked_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("mapping");
    let files: Vec<std::path::PathBuf> = ["tls.crt", "tls.key", "ca.crt", "ca.crl"]
        .iter()
        .map(|f| dir.path().join(f))
        .collect();
    let (cert, key) = issue(&ca, None);
    write_atomically(&files[0], &cert);
    write_atomically(&files[1], &key);
    write_atomically(&files[2], &ca.0.pem());
    write_atomically(&files[3], &crl(&ca, &[]));
    let spiffe = "spiffe://test/ns/apps/sa/publisher";
    let env = TestEnv::with(|s| {
        s.tls.cert_file = Some(files[0].clone());
        s.tls.key_file = Some(files[1].clone());
        s.tls.client_ca_file = Some(files[2].clone());
        s.tls.client_crl_file = Some(files[3].clone());
        s.tls.reload_interval = Duration::from_millis(100);
        s.auth.client_certificates = true;
        s.auth.certificate_identity = vec![jetwatch::config::CertificateName::Uri];
        s.auth.certificate_groups = vec![jetwatch::config::CertificateGroup::O];
        s.auth.grants = vec![
            grant(spiffe, &[Action::Publish], "events", &[">"]),
            grant("group:readers", &[Action::Subscribe], "events", &[">"]),
        ];
    })
    .await;
    let uri = |u: &str| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u).unwrap());
    // The URI SAN is the identity, whatever the common name says.
    let publisher = issue_client(&ca, Some("root"), vec![uri(spiffe)], &[], 1);
    // The organization is the group; the OU is not.
    let reader = issue_client(&ca, None, vec![uri("spiffe://test/r")], &["readers"], 2);
    // A common name alone is no identity under this mapping.
    let cn_only = issue_client(&ca, Some("alice"), vec![], &["readers"], 3);

    let channel = tls_channel(env.addr, &ca.0.pem(), Some(&publisher))
        .await
        .unwrap();
    let seq = try_publish(channel.clone(), "m1").await.unwrap();
    let stored = SubscriberClient::new(channel.clone())
        .watch(open().earliest().build())
        .await;
    assert_eq!(
        stored.err().map(|s| s.code()),
        Some(Code::PermissionDenied),
        "the publisher has no subscribe grant"
    );
    let reading = tls_channel(env.addr, &ca.0.pem(), Some(&reader))
        .await
        .unwrap();
    let mut watch = SubscriberClient::new(reading.clone())
        .watch(open().earliest().build())
        .await
        .unwrap()
        .into_inner();
    opened(&mut watch).await;
    let d = next_delivery(&mut watch).await;
    assert_eq!(d.sequence, seq);
    let authid = d
        .event
        .as_ref()
        .and_then(|e| e.attributes.get("authid"))
        .and_then(|a| a.attr.clone());
    assert_eq!(
        authid,
        Some(ce::cloud_event::cloud_event_attribute_value::Attr::CeString(spiffe.into())),
        "the event names the certificate's identity"
    );
    let nameless = tls_channel(env.addr, &ca.0.pem(), Some(&cn_only))
        .await
        .unwrap();
    let refused = try_publish(nameless, "m2").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Revoking the publisher's certificate: new connections with it fail, without a restart;
    // the reader's still works.
    write_atomically(&files[3], &crl(&ca, &[1]));
    eventually("the revoked certificate to be refused", || {
        let (pem, publisher) = (ca.0.pem(), publisher.clone());
        async move {
            match tls_channel(env.addr, &pem, Some(&publisher)).await {
                Err(_) => Some(()),
                Ok(c) => try_publish(c, "m3").await.is_err().then_some(()),
            }
        }
    })
    .await;
    let again = tls_channel(env.addr, &ca.0.pem(), Some(&reader))
        .await
        .unwrap();
    SubscriberClient::new(again)
        .watch(open().earliest().build())
        .await
        .expect("a certificate not revoked still works");
}

/// The HTTP API on a TLS listener: a client certificate is the caller's identity there too,
/// held to the same grants, and stamped on what it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callers_are_identified_by_their_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("clients-and-server");
    let files = TlsFiles::write(dir.path(), &ca);
    let env = TestEnv::with(|s| {
        files.apply(s);
        s.auth.grants = vec![grant(
            "alice",
            &[Action::Subscribe, Action::Publish],
            "events",
            &[">"],
        )];
    })
    .await;
    let client = |who: &str| {
        let (cert, key) = issue(&ca, Some(who));
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.0.pem().as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
            .resolve("localhost", env.addr)
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/v1/events", env.addr.port());
    let event = serde_json::json!({"specversion": "1.0", "id": "h1", "source": "/widgets",
        "type": "com.example.widget.created", "subject": "w1"});
    let publish = |client: reqwest::Client| {
        let (url, body) = (url.clone(), event.to_string());
        async move {
            client
                .post(url)
                .header("content-type", "application/cloudevents+json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };

    let refused = publish(client("bob")).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["reason"], "PERMISSION_DENIED");

    let alice = client("alice");
    assert_eq!(publish(alice.clone()).await.status(), 200);
    let watch = alice
        .get(format!("{url}?from=earliest"))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut lines = Lines::of(watch);
    lines.next_json().await.expect("the opened line");
    let delivery = lines.next_json().await.expect("the delivery");
    assert_eq!(delivery["event"]["id"], "h1");
    assert_eq!(delivery["event"]["authid"], "alice", "{delivery}");
    assert_eq!(delivery["event"]["authtype"], "service_account");
}
