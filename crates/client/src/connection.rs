//! Where the gateway is, how to authenticate, and the errors every call may return.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway address is malformed or cannot be reached.
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The gateway refused the request.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The gateway sent something this client does not understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether retrying may help: the gateway could not be reached or said UNAVAILABLE.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Status(s) => s.code() == tonic::Code::Unavailable,
            ClientError::Protocol(_) => false,
        }
    }

    /// Whether the gateway said that what was asked for does not exist (NOT_FOUND).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status(s) if s.code() == tonic::Code::NotFound)
    }

    /// Whether the gateway could not be reached or was unavailable: retrying may help.
    pub fn is_unavailable(&self) -> bool {
        self.is_retryable()
    }

    /// An UNAVAILABLE error raised by the client itself (e.g. a snapshot cut off half-way).
    pub fn unavailable(message: impl Into<String>) -> ClientError {
        ClientError::Status(tonic::Status::unavailable(message))
    }

    /// The machine-readable reason of a gateway error (`google.rpc.ErrorInfo.reason`, e.g.
    /// `STREAM_NOT_FOUND`), if it has one.
    pub fn reason(&self) -> Option<String> {
        use tonic_types::StatusExt;
        match self {
            ClientError::Status(s) => s.get_details_error_info().map(|i| i.reason),
            _ => None,
        }
    }
}

/// How to reach and authenticate to a gateway.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `host:port` or a URL (`http://`, `https://`); several comma-separated for a
    /// [`Watcher`](crate::Watcher), which moves to the next after a failure (other calls use
    /// the first).
    pub addr: String,
    /// A bearer token (static token or JWT) sent with every call.
    pub token: Option<String>,
    /// TLS settings; `None` uses TLS only for `https://` addresses, with the system's roots.
    pub tls: Option<ClientTls>,
}

/// TLS settings of a [`Connection`].
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA bundle that signed the gateway's certificate (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (mTLS).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    pub key_file: Option<std::path::PathBuf>,
    /// The name to verify the gateway's certificate against (default: the address's host).
    pub server_name: Option<String>,
}

impl From<String> for Connection {
    fn from(addr: String) -> Connection {
        Connection {
            addr,
            ..Connection::default()
        }
    }
}

impl From<&str> for Connection {
    fn from(addr: &str) -> Connection {
        Connection {
            addr: addr.to_owned(),
            ..Connection::default()
        }
    }
}

impl Connection {
    /// The gateway addresses, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.addr
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// `message` as a request carrying this connection's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert("authorization", value);
            }
        }
        request
    }
}

/// Recently cancelled streams a connection remembers (see [`connect_to`]).
const RESET_STREAMS_REMEMBERED: usize = 4096;

/// Connects a channel to the first gateway of `conn`.
pub async fn connect(conn: &Connection) -> Result<Channel, ClientError> {
    let addr = conn.addrs().into_iter().next().unwrap_or_default();
    connect_to(conn, &addr).await
}

/// Connects a channel to `addr` with `conn`'s TLS settings.
pub(crate) async fn connect_to(conn: &Connection, addr: &str) -> Result<Channel, ClientError> {
    let err = |reason: String| ClientError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    if addr.is_empty() {
        return Err(err("no gateway address given".into()));
    }
    let tls = conn.tls.is_some() || addr.starts_with("https://");
    let url = match addr.split_once("://") {
        Some((_, rest)) if tls => format!("https://{rest}"),
        Some(_) => addr.to_owned(),
        None if tls => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Streams cancelled while the gateway sends to them still receive the frames already
        // on their way; the HTTP/2 library remembers only 10 reset streams by default and
        // closes the connection after 1,024 frames for forgotten ones. Remember more.
        .http2_max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED);
    if tls {
        let settings = conn.tls.clone().unwrap_or_default();
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        match &settings.ca_file {
            Some(ca) => {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
            }
            None => config = config.with_native_roots(),
        }
        if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        if let Some(name) = &settings.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| err(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| {
        // tonic says only "transport error"; the cause (refused, unreachable, TLS) is below it.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !reason.contains(&text) {
                reason = format!("{reason}: {text}");
            }
            source = cause.source();
        }
        err(format!(
            "{reason}; is the gateway running there (`jetwatch dev` starts one locally)?"
        ))
    })
}

/// A `google.rpc.Status` (as in a `PublishResponse`) as a tonic status with its details.
pub(crate) fn status_from_pb(s: tonic_types::pb::Status) -> tonic::Status {
    use prost::Message;
    let code = tonic::Code::from_i32(s.code);
    let message = s.message.clone();
    tonic::Status::with_details(code, message, s.encode_to_vec().into())
}
