//! OIDC ID tokens (JWTs) from a single issuer: the signature checked against the issuer's
//! keys (a JWKS from a file, re-read when it changes, or from a URL, fetched again every five
//! minutes and when a token names a key not seen yet — at most every ten seconds), then `iss`,
//! `aud` and `exp` (30 s of leeway). Only asymmetric algorithms are accepted: a token may not
//! pick HMAC with a public key as its secret. The user is a claim (`sub` by default), the
//! groups another (`groups`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::user::{AuthError, User};

/// How long keys fetched from a URL are used before fetching them again.
const URL_REFRESH: Duration = Duration::from_secs(300);
/// The least time between two fetches (a token with an unknown key id triggers one).
const URL_MIN_GAP: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS read.
const MAX_JWKS: usize = 1024 * 1024;
const LEEWAY_SECONDS: u64 = 30;

/// Where the issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// What tokens must say.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub username_claim: String,
    pub groups_claim: String,
    /// The CA (PEM) of the JWKS URL's server [default: Mozilla's roots].
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Keys {
    set: Option<JwkSet>,
    /// File: its modification time and length when read. URL: when fetched.
    file_seen: Option<(SystemTime, u64)>,
    fetched: Option<Instant>,
    error: Option<String>,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The OIDC verifier.
pub struct Oidc {
    config: OidcConfig,
    keys: Mutex<Keys>,
    client: HttpsClient,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether `token` has a JWT's shape (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Result<Oidc, String> {
        let tls = rustls::ClientConfig::builder_with_provider(bulwark_identity::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(bulwark_identity::tls::roots(config.ca_pem.as_deref())?)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Oidc {
            config,
            keys: Mutex::default(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The user a valid token names.
    pub async fn verify(&self, token: &str) -> Result<User, AuthError> {
        let refused = |m: String| AuthError::Refused(format!("the OIDC token was refused: {m}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(refused(format!(
                "algorithm {:?} is not accepted (only asymmetric signatures)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| refused("the token names no key id (kid)".into()))?;
        let jwk = self
            .key(&kid)
            .await?
            .ok_or_else(|| refused(format!("the key id {kid:?} is not among the issuer's keys")))?;
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err(refused(format!(
                "the token says {:?} but key {kid:?} is for {alg:?}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| refused(format!("key {kid:?}: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                refused(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token expired".into(),
                    ErrorKind::InvalidAudience => format!(
                        "the token is not for the audience {:?}",
                        self.config.audience
                    ),
                    ErrorKind::InvalidIssuer => {
                        format!("the token is not from the issuer {:?}", self.config.issuer)
                    }
                    ErrorKind::InvalidSignature => "the signature does not verify".into(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                    ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
                    _ => e.to_string(),
                })
            })?;
        let claims = data.claims;
        let name = claims
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                refused(format!(
                    "the token has no {:?} claim to name its user",
                    self.config.username_claim
                ))
            })?;
        let groups = match claims.get(&self.config.groups_claim) {
            Some(Value::Array(groups)) => groups
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(group)) => vec![group.clone()],
            _ => Vec::new(),
        };
        Ok(User {
            name: name.to_string(),
            groups,
            method: "oidc",
            anonymous: false,
        })
    }

    /// The key with id `kid`, from keys loaded fresh enough.
    async fn key(&self, kid: &str) -> Result<Option<jsonwebtoken::jwk::Jwk>, AuthError> {
        let mut keys = self.keys.lock().await;
        match &self.config.jwks {
            JwksSource::File(path) => {
                let meta = std::fs::metadata(path)
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                    .ok();
                if meta.is_none() || meta != keys.file_seen {
                    keys.file_seen = meta;
                    match std::fs::read(path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            serde_json::from_slice::<JwkSet>(&b).map_err(|e| e.to_string())
                        }) {
                        Ok(set) => {
                            keys.set = Some(set);
                            keys.error = None;
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "the OIDC keys file cannot be used");
                            keys.set = None;
                            keys.error = Some(format!("{}: {e}", path.display()));
                        }
                    }
                }
            }
            JwksSource::Url(url) => {
                let known = keys.set.as_ref().is_some_and(|s| s.find(kid).is_some());
                let age = keys.fetched.map(|at| at.elapsed());
                let due = match age {
                    None => true,
                    Some(age) => age >= URL_REFRESH || (!known && age >= URL_MIN_GAP),
                };
                if due {
                    keys.fetched = Some(Instant::now());
                    match self.fetch(url).await {
                        Ok(set) => {
                            keys.set = Some(set);
                            keys.error = None;
                        }
                        // Keys fetched before stay in use.
                        Err(e) => {
                            tracing::warn!(%url, error = %e, "cannot fetch the OIDC issuer's keys");
                            keys.error = Some(format!("{url}: {e}"));
                        }
                    }
                }
            }
        }
        match (&keys.set, &keys.error) {
            (Some(set), _) => Ok(set.find(kid).cloned()),
            (None, Some(e)) => Err(AuthError::Unavailable(format!(
                "the OIDC issuer's keys are not available: {e}"
            ))),
            (None, None) => Ok(None),
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("plain-token"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b c.d"));
    }
}
