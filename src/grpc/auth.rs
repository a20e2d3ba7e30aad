//! Authentication of every call: a tower layer that reads the call's credentials (the
//! `authorization: Bearer` header, the verified TLS client certificate), asks
//! [`crate::auth::Auth`] who the caller is, and puts the [`Identity`] into the request's
//! extensions for the services. Health and reflection stay open (load balancers and tools
//! use them without credentials). A call without a valid credential is answered
//! UNAUTHENTICATED here and never reaches a service.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::auth::{Auth, Credentials, Identity, Unauthenticated};
use crate::error::Error;

/// The caller of a request, as the layer identified it (`None` when authentication is off).
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Arc<Identity>> {
    request.extensions().get::<Arc<Identity>>().cloned()
}

/// Identifies the caller of `request` from its `authorization: Bearer` header (or, when it has
/// none, `fallback_bearer`) and its verified TLS client certificate. A refusal is audited and
/// is the contract's UNAUTHENTICATED (`TOKEN_EXPIRED` for an expired credential).
pub(crate) fn authenticate<B>(
    auth: &Auth,
    request: &http::Request<B>,
    fallback_bearer: Option<&str>,
) -> Result<Option<Identity>, Error> {
    let bearer = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(fallback_bearer);
    let certificates = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs);
    auth.authenticate(Credentials {
        bearer,
        peer_certificate: certificates
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.as_ref()),
    })
    .map_err(|e| {
        let path = request.uri().path();
        crate::auth::audit(None, "authenticate", path, &format!("denied: {e}"));
        Error::Unauthenticated {
            expired: e == Unauthenticated::Expired,
            message: e.to_string(),
        }
    })
}

/// Authenticates every call (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    /// A layer checking calls against `auth`.
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is the one that is ready (tower's rule for services that are cloned).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if !self.auth.enabled()
            || path.starts_with("/grpc.health.")
            || path.starts_with("/grpc.reflection.")
        {
            return Box::pin(inner.call(request));
        }
        match authenticate(&self.auth, &request, None) {
            Ok(identity) => {
                if let Some(identity) = identity {
                    request.extensions_mut().insert(Arc::new(identity));
                }
                Box::pin(inner.call(request))
            }
            Err(error) => {
                let response = Status::from(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
