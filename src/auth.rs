//! Who is calling, and what they may do: identities from static bearer tokens, JSON Web Tokens
//! and verified TLS client certificates, and the grants of `[auth]`.
//!
//! The gRPC layer collects the credentials of a call ([`Credentials`]) and asks
//! [`Auth::authenticate`] for the caller's [`Identity`]; the publish path, the engine's `Open`
//! and the admin domain ask [`Auth::scope`] / [`Auth::allows`] what that identity may touch.
//! With no identity source configured, authentication is off and everything is allowed.
//!
//! Cryptography is the maintained crates': SHA-256 (`sha2`) for static tokens, `jsonwebtoken`
//! for JWT signatures and claims, `x509-parser` for reading (already verified) certificates.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use crate::config::{
    Action, AuthSettings, CertificateGroup, CertificateName, Grant, JwtSettings, StaticToken,
    TokensFile,
};

/// How a caller proved who they are (the CloudEvents `authcontext` `authtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// A static bearer token (`api_key`).
    Token,
    /// A JSON Web Token (`user`).
    Jwt,
    /// A TLS client certificate (`service_account`).
    Certificate,
}

impl AuthKind {
    /// The `authtype` value of the CloudEvents `authcontext` extension.
    pub fn authtype(self) -> &'static str {
        match self {
            AuthKind::Token => "api_key",
            AuthKind::Jwt => "user",
            AuthKind::Certificate => "service_account",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The principal (token identity, JWT `sub`, certificate name).
    pub id: String,
    /// How it was verified.
    pub kind: AuthKind,
    /// Its groups.
    pub groups: Vec<String>,
    /// Non-secret claims configured for audit (`auth.jwt.audit_claims`).
    pub claims: BTreeMap<String, String>,
    /// When the credential stops being valid (a JWT's `exp`).
    pub expires_at: Option<SystemTime>,
    /// The SHA-256 (hex) of the static token it presented, which can be revoked.
    pub token_sha256: Option<String>,
}

/// What a call presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The bearer token of the `authorization` header.
    pub bearer: Option<&'a str>,
    /// The DER of the verified TLS client certificate (the leaf).
    pub peer_certificate: Option<&'a [u8]>,
}

/// Why a caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// No credential, or one that is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A credential that was valid and has expired.
    #[error("the token has expired; get a new one and resume")]
    Expired,
}

/// Why settings could not be turned into an [`Auth`].
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{key}`: {reason}")]
pub struct AuthSetupError {
    /// The setting.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// A per-identity limit was reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    /// Too many open subscriptions.
    #[error("this identity already has {0} subscriptions open, the most allowed (auth.max_subscriptions_per_identity)")]
    Subscriptions(usize),
    /// Publishing too fast; retry after the duration.
    #[error("this identity publishes faster than allowed (auth.publish_rate_per_identity); retry in {0:?}")]
    PublishRate(Duration),
}

/// One open subscription counted against its identity; dropping it gives the slot back.
#[derive(Debug)]
pub struct SubscriptionSlot(Option<(OpenCounts, String)>);

/// Open subscriptions per identity.
type OpenCounts = Arc<Mutex<HashMap<String, usize>>>;

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        if let Some((open, id)) = self.0.take() {
            let mut open = open.lock();
            if let Some(count) = open.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&id);
                }
            }
        }
    }
}

/// Which subjects of a stream an identity may touch for an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every subject.
    All,
    /// The subjects matching these patterns.
    Only(Vec<String>),
    /// None.
    Nothing,
}

/// Identities and grants, built once from `[auth]`.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    /// Open subscriptions per identity, and the limit (0: none).
    subscriptions: OpenCounts,
    max_subscriptions: usize,
    /// Publish rate per identity (a GCRA token bucket from `governor`).
    publish_rate: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// SHA-256 (hex) of each static token → its identity and groups; swapped whole when
    /// `auth.tokens_file` changes.
    tokens: RwLock<Arc<Tokens>>,
    /// The tokens of the configuration file itself (never reloaded).
    configured: Vec<StaticToken>,
    jwt: Option<Jwt>,
    certificates: Option<CertificateMapping>,
    grants: Vec<Grant>,
}

/// Static tokens by the hex SHA-256 of the token.
type Tokens = HashMap<String, TokenEntry>;

#[derive(Debug)]
struct TokenEntry {
    identity: String,
    groups: Vec<String>,
    /// Cancelled when the token is revoked (or its identity or groups change): open streams
    /// authenticated by it end.
    revoked: CancellationToken,
}

/// Which names of a client certificate make its identity and groups.
#[derive(Debug, Clone)]
struct CertificateMapping {
    identity: Vec<CertificateName>,
    groups: Vec<CertificateGroup>,
}

/// Builds the token table from `list`, keeping the revocation handle of every token that stays
/// the same in `old` and cancelling those of tokens gone or changed.
fn token_table(list: &[StaticToken], old: Option<&Tokens>) -> Tokens {
    let mut table = Tokens::new();
    for t in list {
        let digest = t.sha256.to_ascii_lowercase();
        let kept = old
            .and_then(|o| o.get(&digest))
            .filter(|e| e.identity == t.identity && e.groups == t.groups);
        table.insert(
            digest,
            TokenEntry {
                identity: t.identity.clone(),
                groups: t.groups.clone(),
                revoked: kept.map_or_else(CancellationToken::new, |e| e.revoked.clone()),
            },
        );
    }
    if let Some(old) = old {
        for (digest, e) in old {
            let same = table
                .get(digest)
                .is_some_and(|n| n.identity == e.identity && n.groups == e.groups);
            if !same {
                e.revoked.cancel();
            }
        }
    }
    table
}

struct Jwt {
    settings: JwtSettings,
    hs256: Option<DecodingKey>,
    /// `kid` → key and the algorithm it is for (the token's header never chooses it).
    keys: HashMap<String, (DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("issuer", &self.settings.issuer)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the identity sources and grants of `settings` (validated), reading key files.
    pub fn new(settings: &AuthSettings) -> Result<Auth, AuthSetupError> {
        let setup = |key: &str, reason: String| AuthSetupError {
            key: key.to_owned(),
            reason,
        };
        let mut listed = settings.tokens.clone();
        if let Some(path) = &settings.tokens_file {
            let file =
                TokensFile::read(path).map_err(|e| setup("auth.tokens_file", e.to_string()))?;
            listed.extend(file.tokens);
        }
        let tokens = RwLock::new(Arc::new(token_table(&listed, None)));
        let jwt = match &settings.jwt {
            None => None,
            Some(j) => {
                let hs256 = match &j.hs256_secret_file {
                    None => None,
                    Some(path) => {
                        let secret = std::fs::read(path).map_err(|e| {
                            setup(
                                "auth.jwt.hs256_secret_file",
                                format!("{}: {e}", path.display()),
                            )
                        })?;
                        let secret = secret.trim_ascii_end();
                        Some(
                            DecodingKey::from_secret(secret)
                                .map_err(|e| setup("auth.jwt.hs256_secret_file", e.to_string()))?,
                        )
                    }
                };
                let mut keys = HashMap::new();
                if let Some(path) = &j.jwks_file {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        setup("auth.jwt.jwks_file", format!("{}: {e}", path.display()))
                    })?;
                    let set: JwkSet = serde_json::from_str(&text)
                        .map_err(|e| setup("auth.jwt.jwks_file", e.to_string()))?;
                    for jwk in &set.keys {
                        let (Some(kid), Some(alg)) =
                            (jwk.common.key_id.clone(), jwk.common.key_algorithm)
                        else {
                            return Err(setup(
                                "auth.jwt.jwks_file",
                                "every key needs `kid` and `alg`".into(),
                            ));
                        };
                        let alg = Algorithm::try_from(alg)
                            .map_err(|e| setup("auth.jwt.jwks_file", e.to_string()))?;
                        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
                            return Err(setup(
                                "auth.jwt.jwks_file",
                                format!("key `{kid}`: only RS256 and ES256 keys are accepted"),
                            ));
                        }
                        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                            setup("auth.jwt.jwks_file", format!("key `{kid}`: {e}"))
                        })?;
                        keys.insert(kid, (key, alg));
                    }
                }
                Some(Jwt {
                    settings: j.clone(),
                    hs256,
                    keys,
                })
            }
        };
        let publish_rate =
            std::num::NonZeroU32::new(settings.publish_rate_per_identity).map(|rate| {
                let burst =
                    std::num::NonZeroU32::new(settings.publish_burst_per_identity).unwrap_or(rate);
                governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
            });
        Ok(Auth {
            enabled: settings.enabled(),
            subscriptions: Arc::default(),
            max_subscriptions: settings.max_subscriptions_per_identity,
            publish_rate,
            tokens,
            configured: settings.tokens.clone(),
            jwt,
            certificates: settings.client_certificates.then(|| CertificateMapping {
                identity: settings.certificate_identity.clone(),
                groups: settings.certificate_groups.clone(),
            }),
            grants: settings.grants.clone(),
        })
    }

    /// Re-reads `path` (the `auth.tokens_file`) every `every`; a changed file replaces the
    /// file's tokens, and streams of tokens removed or changed end. A file that cannot be read
    /// or is invalid is logged and the tokens in force are kept.
    pub fn spawn_token_reloader(
        self: &Arc<Self>,
        path: std::path::PathBuf,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let auth = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = std::fs::read(&path).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(auth) = auth.upgrade() else { return };
                let read = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || std::fs::read(&path)
                })
                .await;
                let bytes = match read {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, path = %path.display(), "auth: cannot read the tokens file; keeping the tokens in force");
                        continue;
                    }
                    Err(_) => continue,
                };
                if last.as_ref() == Some(&bytes) {
                    continue;
                }
                // Each change is looked at once: a refused one is logged once, not every tick.
                match TokensFile::parse(&path, &bytes) {
                    Ok(file) => {
                        let mut listed = auth.configured.clone();
                        listed.extend(file.tokens);
                        let mut tokens = auth.tokens.write();
                        let table = token_table(&listed, Some(&tokens));
                        tracing::info!(tokens = table.len(), "auth: tokens file reloaded");
                        *tokens = Arc::new(table);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "auth: tokens file refused; keeping the tokens in force");
                    }
                }
                last = Some(bytes);
            }
        })
    }

    /// Cancelled when the static token `caller` authenticated with is revoked; `None` for
    /// other credentials (a JWT ends at its expiry instead).
    pub fn revocation(&self, caller: Option<&Identity>) -> Option<CancellationToken> {
        let digest = caller?.token_sha256.as_ref()?;
        let tokens = self.tokens.read();
        Some(match tokens.get(digest) {
            Some(e) => e.revoked.clone(),
            None => {
                // Revoked between authentication and now.
                let gone = CancellationToken::new();
                gone.cancel();
                gone
            }
        })
    }

    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts one more open subscription of `caller`, refusing it past the per-identity limit;
    /// the count goes down when the returned guard is dropped.
    pub fn admit_subscription(
        &self,
        caller: Option<&Identity>,
    ) -> Result<SubscriptionSlot, Limited> {
        let Some(caller) = caller.filter(|_| self.max_subscriptions > 0) else {
            return Ok(SubscriptionSlot(None));
        };
        let mut open = self.subscriptions.lock();
        let count = open.entry(caller.id.clone()).or_default();
        if *count >= self.max_subscriptions {
            return Err(Limited::Subscriptions(self.max_subscriptions));
        }
        *count += 1;
        Ok(SubscriptionSlot(Some((
            self.subscriptions.clone(),
            caller.id.clone(),
        ))))
    }

    /// Takes `n` publishes from `caller`'s budget at once (all or none), or says how long to
    /// wait. More than the budget's burst can never pass: it is refused like a rate overrun.
    pub fn admit_publishes(&self, caller: Option<&Identity>, n: usize) -> Result<(), Limited> {
        let (Some(limiter), Some(caller)) = (&self.publish_rate, caller) else {
            return Ok(());
        };
        let Some(n) = u32::try_from(n).ok().and_then(std::num::NonZeroU32::new) else {
            return Ok(());
        };
        use governor::clock::Clock;
        match limiter.check_key_n(&caller.id, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Limited::PublishRate(
                not_until.wait_time_from(limiter.clock().now()),
            )),
            Err(_insufficient) => Err(Limited::PublishRate(Duration::from_secs(1))),
        }
    }

    /// Takes one publish from `caller`'s budget, or says how long to wait.
    pub fn admit_publish(&self, caller: Option<&Identity>) -> Result<(), Limited> {
        self.admit_publishes(caller, 1)
    }

    /// The caller's identity: `Ok(None)` when authentication is off.
    pub fn authenticate(&self, c: Credentials<'_>) -> Result<Option<Identity>, Unauthenticated> {
        if !self.enabled {
            return Ok(None);
        }
        if let Some(token) = c.bearer {
            return self.bearer(token).map(Some);
        }
        if let (Some(mapping), Some(der)) = (&self.certificates, c.peer_certificate) {
            return certificate_identity(der, mapping).map(Some);
        }
        Err(Unauthenticated::Invalid(
            "authentication required: send `authorization: Bearer <token>`".into(),
        ))
    }

    fn bearer(&self, token: &str) -> Result<Identity, Unauthenticated> {
        let digest = hex(&Sha256::digest(token.as_bytes()));
        if let Some(entry) = self.tokens.read().get(&digest) {
            return Ok(Identity {
                id: entry.identity.clone(),
                kind: AuthKind::Token,
                groups: entry.groups.clone(),
                claims: BTreeMap::new(),
                expires_at: None,
                token_sha256: Some(digest),
            });
        }
        match &self.jwt {
            Some(jwt) if token.matches('.').count() == 2 => jwt.verify(token),
            _ => Err(Unauthenticated::Invalid("the token is not valid".into())),
        }
    }

    /// Which subjects of `stream` `caller` may touch for `action`.
    pub fn scope(&self, caller: Option<&Identity>, action: Action, stream: &str) -> Scope {
        if !self.enabled {
            return Scope::All;
        }
        let Some(caller) = caller else {
            return Scope::Nothing;
        };
        let mut patterns: Vec<String> = Vec::new();
        for g in &self.grants {
            let applies = (g.stream == "*" || g.stream == stream)
                && g.actions.contains(&action)
                && (g.identities.contains(&caller.id)
                    || g.groups.iter().any(|x| caller.groups.contains(x)));
            if !applies {
                continue;
            }
            if g.subjects.iter().any(|s| s == ">") {
                return Scope::All;
            }
            patterns.extend(g.subjects.iter().cloned());
        }
        if patterns.is_empty() {
            Scope::Nothing
        } else {
            patterns.sort();
            patterns.dedup();
            Scope::Only(patterns)
        }
    }

    /// Whether `caller` may do `action` on `subject` of `stream`.
    pub fn allows(
        &self,
        caller: Option<&Identity>,
        action: Action,
        stream: &str,
        subject: &str,
    ) -> bool {
        match self.scope(caller, action, stream) {
            Scope::All => true,
            Scope::Nothing => false,
            Scope::Only(patterns) => patterns
                .iter()
                .any(|p| crate::wildcard::matches(p, subject)),
        }
    }

    /// Whether `caller` may do `action` on some part of `stream`.
    pub fn allows_any(&self, caller: Option<&Identity>, action: Action, stream: &str) -> bool {
        self.scope(caller, action, stream) != Scope::Nothing
    }
}

/// The subject patterns a subscription of `requested` patterns (empty: every subject) may
/// read within `scope`: the requested ones cut down to the granted ones. `None`: nothing.
pub fn restrict(requested: &[String], scope: &Scope) -> Option<Vec<String>> {
    match scope {
        Scope::All => Some(requested.to_vec()),
        Scope::Nothing => None,
        Scope::Only(granted) if requested.is_empty() => Some(granted.clone()),
        Scope::Only(granted) => {
            let mut out: Vec<String> = requested
                .iter()
                .flat_map(|r| {
                    granted
                        .iter()
                        .filter_map(move |g| crate::wildcard::intersect(r, g))
                })
                .collect();
            out.sort();
            out.dedup();
            // A pattern already covered by a wider one adds nothing.
            let wide = out.clone();
            out.retain(|p| {
                !wide
                    .iter()
                    .any(|w| w != p && crate::wildcard::is_subset(p, w))
            });
            (!out.is_empty()).then_some(out)
        }
    }
}

impl Jwt {
    fn verify(&self, token: &str) -> Result<Identity, Unauthenticated> {
        let invalid =
            |why: String| Unauthenticated::Invalid(format!("the token is not valid: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let (key, alg) = match (&header.kid, header.alg) {
            (Some(kid), _) if self.keys.contains_key(kid) => {
                let (key, alg) = &self.keys[kid];
                (key, *alg)
            }
            (_, Algorithm::HS256) if self.hs256.is_some() => {
                (self.hs256.as_ref().expect("checked"), Algorithm::HS256)
            }
            _ => {
                return Err(invalid(
                    "signed with a key this gateway does not know".into(),
                ))
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Unauthenticated::Expired,
            _ => invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let id = claims.get("sub").map(text).unwrap_or_default();
        if id.is_empty() {
            return Err(invalid("`sub` is empty".into()));
        }
        let groups = match claims.get(&self.settings.groups_claim) {
            Some(serde_json::Value::Array(items)) => items.iter().map(text).collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let audit = self
            .settings
            .audit_claims
            .iter()
            .filter_map(|c| claims.get(c).map(|v| (c.clone(), text(v))))
            .collect();
        let expires_at = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        Ok(Identity {
            id,
            kind: AuthKind::Jwt,
            groups,
            claims: audit,
            expires_at,
            token_sha256: None,
        })
    }
}

/// The identity of a verified client certificate: the first of `mapping.identity`'s names the
/// certificate has; its groups: the values of `mapping.groups`' subject attributes.
fn certificate_identity(
    der: &[u8],
    mapping: &CertificateMapping,
) -> Result<Identity, Unauthenticated> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let unreadable = || Unauthenticated::Invalid("the client certificate cannot be read".into());
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| unreadable())?;
    let subject = cert.subject();
    let san = cert.subject_alternative_name().ok().flatten();
    let alt = |want: CertificateName| {
        san.as_ref().and_then(|san| {
            san.value
                .general_names
                .iter()
                .find_map(|n| match (want, n) {
                    (CertificateName::Dns, GeneralName::DNSName(v))
                    | (CertificateName::Uri, GeneralName::URI(v))
                    | (CertificateName::Email, GeneralName::RFC822Name(v)) => Some((*v).to_owned()),
                    _ => None,
                })
        })
    };
    let id = mapping
        .identity
        .iter()
        .find_map(|&name| {
            match name {
                CertificateName::Cn => subject
                    .iter_common_name()
                    .next()
                    .and_then(|a| a.as_str().ok())
                    .map(str::to_owned),
                other => alt(other),
            }
            .filter(|s| !s.is_empty())
        })
        .ok_or_else(|| {
            Unauthenticated::Invalid(
                "the client certificate has none of the names that make an identity (auth.certificate_identity)".into(),
            )
        })?;
    let groups = mapping
        .groups
        .iter()
        .flat_map(|g| match g {
            CertificateGroup::Ou => subject
                .iter_organizational_unit()
                .filter_map(|a| a.as_str().ok().map(str::to_owned))
                .collect::<Vec<_>>(),
            CertificateGroup::O => subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok().map(str::to_owned))
                .collect(),
        })
        .collect();
    Ok(Identity {
        id,
        kind: AuthKind::Certificate,
        groups,
        claims: BTreeMap::new(),
        expires_at: None,
        token_sha256: None,
    })
}

/// Logs one audit line (target `jetwatch::audit`): who did what to what, and how it ended.
/// Admin actions and refused requests are logged; ordinary traffic is not.
pub fn audit(caller: Option<&Identity>, action: &str, target: &str, outcome: &str) {
    let identity = caller.map_or("", |c| c.id.as_str());
    if outcome == "allowed" {
        tracing::info!(target: "jetwatch::audit", identity, action, target, outcome, "audit");
    } else {
        tracing::warn!(target: "jetwatch::audit", identity, action, target, outcome, "audit");
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricting_cuts_requests_down_to_grants() {
        let only = |p: &[&str]| Scope::Only(p.iter().map(|s| s.to_string()).collect());
        let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let granted = only(&["events._widgets.>"]);
        assert_eq!(restrict(&[], &granted), Some(v(&["events._widgets.>"])));
        assert_eq!(
            restrict(&v(&["events.>"]), &granted),
            Some(v(&["events._widgets.>"]))
        );
        assert_eq!(
            restrict(&v(&["events._widgets.w1"]), &granted),
            Some(v(&["events._widgets.w1"]))
        );
        assert_eq!(restrict(&v(&["events._gadgets.>"]), &granted), None);
        assert_eq!(restrict(&v(&[">"]), &Scope::Nothing), None);
        assert_eq!(restrict(&v(&["a.b"]), &Scope::All), Some(v(&["a.b"])));
    }
}
