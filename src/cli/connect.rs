//! Where the gateway is: flags, environment and named contexts, as the `nats` CLI does.
//!
//! A context is a named set of connection settings in `contexts.toml` (in
//! `$JETWATCH_CONFIG_DIR`, else `$XDG_CONFIG_HOME/jetwatch`, else `~/.config/jetwatch`).
//! Flags and environment variables win over the context; the context wins over the defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

/// The gateway address used when nothing else names one.
pub const DEFAULT_SERVER: &str = "127.0.0.1:50051";

/// How to reach the gateway (every client command has these flags).
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// Gateway gRPC address [default: the context's, else 127.0.0.1:50051].
    #[arg(
        long,
        short = 's',
        value_name = "HOST:PORT",
        env = "JETWATCH_SERVER",
        global = true
    )]
    pub server: Option<String>,
    /// Use this named context from contexts.toml [default: the file's `current`].
    #[arg(long, value_name = "NAME", env = "JETWATCH_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Bearer token (a static token or a JWT) sent with every call.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "JETWATCH_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(
        long,
        value_name = "FILE",
        env = "JETWATCH_TOKEN_FILE",
        conflicts_with = "token",
        global = true
    )]
    pub token_file: Option<PathBuf>,
    /// Use TLS, trusting this PEM CA bundle (an `https://` server address uses TLS with the
    /// system's roots).
    #[arg(long, value_name = "FILE", env = "JETWATCH_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS (with --tls-key).
    #[arg(long, value_name = "FILE", env = "JETWATCH_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(long, value_name = "FILE", env = "JETWATCH_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the gateway's certificate against.
    #[arg(
        long,
        value_name = "NAME",
        env = "JETWATCH_TLS_SERVER_NAME",
        global = true
    )]
    pub tls_server_name: Option<String>,
}

/// One context: the same settings as the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Gateway address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Bearer token (prefer `token_file`: this file may be read by others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM client key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the gateway's certificate against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

/// `contexts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// The contexts, by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

impl Contexts {
    /// The file's path.
    pub fn path() -> anyhow::Result<PathBuf> {
        let dir = if let Some(dir) = std::env::var_os("JETWATCH_CONFIG_DIR") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
            PathBuf::from(dir).join("jetwatch")
        } else if let Some(home) = std::env::var_os("HOME") {
            PathBuf::from(home).join(".config").join("jetwatch")
        } else {
            anyhow::bail!("no configuration directory: set JETWATCH_CONFIG_DIR or HOME");
        };
        Ok(dir.join("contexts.toml"))
    }

    /// Reads the file; a missing file is no contexts.
    pub fn load() -> anyhow::Result<Contexts> {
        let path = Contexts::path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the file whole (through a temporary file, so a crash leaves the old one).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = Contexts::path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, toml::to_string_pretty(self)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The context `name`, or the current one when `name` is `None` (none: no context).
    pub fn select(&self, name: Option<&str>) -> anyhow::Result<Option<(String, Context)>> {
        let Some(name) = name.or(self.current.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(c) => Ok(Some((name.to_owned(), c.clone()))),
            None => anyhow::bail!(
                "no context named `{name}` in {}; `jetwatch context list` shows them",
                Contexts::path()?.display()
            ),
        }
    }
}

impl ClientArgs {
    /// These flags over the selected context.
    pub fn resolved(&self) -> anyhow::Result<ClientArgs> {
        let context = Contexts::load()?
            .select(self.context.as_deref())?
            .map(|(_, c)| c)
            .unwrap_or_default();
        // A token from a flag replaces the context's token file too, and the other way round.
        let (token, token_file) = if self.token.is_some() || self.token_file.is_some() {
            (self.token.clone(), self.token_file.clone())
        } else {
            (context.token, context.token_file)
        };
        Ok(ClientArgs {
            server: self.server.clone().or(context.server),
            context: self.context.clone(),
            token,
            token_file,
            tls_ca: self.tls_ca.clone().or(context.tls_ca),
            tls_cert: self.tls_cert.clone().or(context.tls_cert),
            tls_key: self.tls_key.clone().or(context.tls_key),
            tls_server_name: self.tls_server_name.clone().or(context.tls_server_name),
        })
    }

    /// The client connection these flags (over the context) describe.
    pub fn connection(&self) -> anyhow::Result<jetwatch_client::Connection> {
        let args = self.resolved()?;
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if args.tls_cert.is_some() != args.tls_key.is_some() {
            anyhow::bail!("--tls-cert and --tls-key go together");
        }
        let tls =
            (args.tls_ca.is_some() || args.tls_cert.is_some() || args.tls_server_name.is_some())
                .then(|| jetwatch_client::ClientTls {
                    ca_file: args.tls_ca.clone(),
                    cert_file: args.tls_cert.clone(),
                    key_file: args.tls_key.clone(),
                    server_name: args.tls_server_name.clone(),
                });
        Ok(jetwatch_client::Connection {
            addr: args.server.unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
            token,
            tls,
        })
    }

    /// The settings to store as a context.
    pub fn to_context(&self) -> Context {
        Context {
            server: self.server.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_server_name: self.tls_server_name.clone(),
        }
    }
}
