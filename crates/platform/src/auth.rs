//! Who is calling: bearer tokens (JWTs) checked against the identity provider's public keys
//! (a JWKS document from a file or a URL), the way any OpenID Connect provider publishes them.
//!
//! - [`AuthArgs`]: where the keys are, and the issuer, audience and clock skew a token must
//!   match (every API binary flattens it);
//! - [`Verifier`]: checks a token (signature, `alg` against the key's, `iss`, `aud`, `exp`,
//!   `nbf`) and says who the caller is. A token that verified is remembered (by its exact
//!   text) while it is valid, so a client that sends the same token again is not checked
//!   again: only its `exp` and `nbf` are. Loading the keys again forgets them all, so a key
//!   the issuer stops publishing stops working at once;
//! - [`Caller`] and [`Operator`]: the extractors handlers take. A route without one is public.
//!   No token or a bad one is a `401` with `WWW-Authenticate: Bearer`; a valid token without
//!   the right is a `403`;
//! - [`DevIssuer`]: a signing key made on the spot, its JWKS and tokens, for local runs
//!   (`cargo xtask up`), tests and benches — the same validation path as a real provider's;
//! - [`TokenFile`]: a token a service presents to another service's API, read from a file
//!   that a deployment may rotate (a mounted Secret, a projected token).
//!
//! Two kinds of caller: a *customer*, whose token's `sub` is their customer id, and an
//! *operator*, whose token carries the operator role in `roles` (an array) or `scope` (a
//! space-separated string). A token may be both.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use clap::Args;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::http::{ApiError, ApiResult};

/// The role (in `roles` or `scope`) that makes a caller an operator, unless configured.
pub const OPERATOR_ROLE: &str = "operator";
/// The audience tokens must name, unless configured.
pub const DEFAULT_AUDIENCE: &str = "conveyor";
/// The issuer of [`DevIssuer`]'s tokens.
pub const DEV_ISSUER: &str = "conveyor-dev";

/// How an API checks bearer tokens.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// The identity provider's public keys: a JWKS file, or an http(s) URL serving one (e.g.
    /// the provider's `jwks_uri`). Fetched at start and again when a token names a key id
    /// not seen yet (at most every 30 s), so keys rotate without a restart.
    #[arg(long = "auth-jwks", env = "AUTH_JWKS")]
    pub jwks: String,
    /// The `iss` every token must carry.
    #[arg(long = "auth-issuer", env = "AUTH_ISSUER")]
    pub issuer: String,
    /// The `aud` every token must include.
    #[arg(long = "auth-audience", env = "AUTH_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long = "auth-leeway", env = "AUTH_LEEWAY", value_parser = crate::config::parse_duration, default_value = "30s")]
    pub leeway: Duration,
    /// The role, in the token's `roles` array or space-separated `scope`, of an operator.
    #[arg(long = "auth-operator-role", env = "AUTH_OPERATOR_ROLE", default_value = OPERATOR_ROLE)]
    pub operator_role: String,
}

/// The claims Conveyor reads; `exp`, `iss` and `aud` are checked by the verifier itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A caller whose token was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub subject: String,
    /// The customer this caller is: `sub` when it is a UUID.
    pub customer: Option<Uuid>,
    /// Carries the operator role.
    pub operator: bool,
}

impl Caller {
    /// Allowed when the caller is an operator.
    pub fn require_operator(&self) -> ApiResult<()> {
        if self.operator { Ok(()) } else { Err(ApiError::Forbidden("only an operator may do this".into())) }
    }

    /// Allowed when the caller is `customer`, or an operator.
    pub fn require_customer(&self, customer: Uuid) -> ApiResult<()> {
        if self.operator || self.customer == Some(customer) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this belongs to customer {customer}, and the token is not theirs")))
        }
    }

    /// Allowed when the caller is exactly `customer` (an operator acting for someone is not).
    pub fn require_self(&self, customer: Uuid) -> ApiResult<()> {
        if self.customer == Some(customer) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("only customer {customer} may do this for themself; the token's subject is {:?}", self.subject)))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let verifier = parts.extensions.get::<Arc<Verifier>>().cloned().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no token verifier on this router")))?;
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| ApiError::Unauthorized { detail: "this route needs a bearer token: `Authorization: Bearer <JWT>`".into(), invalid: false })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized { detail: "the Authorization header must be `Bearer <JWT>`".into(), invalid: true })?;
        verifier.verify(token).await
    }
}

/// A caller with the operator role (`403` for any other valid token).
#[derive(Debug, Clone)]
pub struct Operator(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_operator()?;
        Ok(Operator(caller))
    }
}

/// The answers every route that needs a token may give besides its own, for its OpenAPI
/// `responses(...)`: `401` (no token, or an invalid one) and `403` (not allowed).
#[derive(utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No bearer token, or one that is not valid; `WWW-Authenticate` says why.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(crate::http::Problem),
    /// The token is valid but does not allow this.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(crate::http::Problem),
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
    /// A JWKS given in full (tests).
    Fixed(String),
}

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Vec<Algorithm>)>,
    /// The one key of a set that has exactly one (tokens without `kid` may use it).
    only: Option<(DecodingKey, Vec<Algorithm>)>,
    loaded_at: Instant,
    /// Tokens these keys verified, by their text: they go with the keys.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

/// A token that verified: who it names, and the times it is valid between.
#[derive(Debug, Clone)]
struct Verified {
    caller: Caller,
    exp: u64,
    nbf: Option<u64>,
}

impl Verified {
    /// Whether the token is still valid at `now` (seconds since the epoch), allowing
    /// `leeway` seconds of skew either way, as the full check does.
    fn valid_at(&self, now: u64, leeway: u64) -> bool {
        self.exp.saturating_add(leeway) >= now && self.nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway))
    }
}

/// The most tokens remembered; past it, the memory starts again empty. (A client's token is
/// sent many times over its life: the shop's saga driver, 10,000 customers, fits.)
const REMEMBERED: usize = 16_384;

/// Checks bearer tokens; one per API process, shared by every request.
pub struct Verifier {
    source: Source,
    issuer: String,
    audience: String,
    leeway: Duration,
    operator_role: String,
    keys: RwLock<Keys>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("source", &self.source).field("issuer", &self.issuer).field("audience", &self.audience).finish_non_exhaustive()
    }
}

/// Keys are fetched again for an unknown `kid` at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

impl Verifier {
    /// Loads the keys; fails (naming the source) when they cannot be read or none is usable.
    pub async fn new(args: &AuthArgs) -> anyhow::Result<Arc<Verifier>> {
        let source = if args.jwks.starts_with("http://") || args.jwks.starts_with("https://") { Source::Url(args.jwks.clone()) } else { Source::File(args.jwks.clone().into()) };
        if args.issuer.trim().is_empty() {
            bail!("--auth-issuer (AUTH_ISSUER) must name the issuer tokens come from");
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().context("HTTP client for the JWKS")?;
        let keys = load(&source, &http).await?;
        Ok(Arc::new(Verifier {
            source,
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            leeway: args.leeway,
            operator_role: args.operator_role.clone(),
            keys: RwLock::new(keys),
            http,
        }))
    }

    /// A verifier that trusts `issuer`'s keys, held in memory (tests).
    pub fn trusting(issuer: &DevIssuer) -> Arc<Verifier> {
        let args = issuer.args(String::new());
        let jwks = issuer.jwks_json();
        Arc::new(Verifier {
            keys: RwLock::new(parse(&jwks).expect("a dev issuer's JWKS is usable")),
            source: Source::Fixed(jwks),
            issuer: args.issuer,
            audience: args.audience,
            leeway: args.leeway,
            operator_role: args.operator_role,
            http: reqwest::Client::new(),
        })
    }

    /// The caller a token names, or a `401` saying what was wrong with it.
    pub async fn verify(&self, token: &str) -> ApiResult<Caller> {
        let now = jsonwebtoken::get_current_timestamp();
        {
            let keys = self.keys.read().await;
            let verified = keys.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = verified.get(token).filter(|v| v.valid_at(now, self.leeway.as_secs())) {
                return Ok(v.caller.clone());
            }
        }
        let invalid = |detail: String| ApiError::Unauthorized { detail, invalid: true };
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("the bearer token is not a JWT: {e}")))?;
        let (key, algorithms, loaded_at) = match self.key(header.kid.as_deref()).await {
            Some(k) => k,
            None => return Err(invalid(match &header.kid {
                Some(kid) => format!("the token is signed with key {:?}, which the issuer does not publish", truncate(kid)),
                None => "the token names no key (`kid`) and the issuer publishes several".into(),
            })),
        };
        if !algorithms.contains(&header.alg) {
            return Err(invalid(format!("the token's algorithm {:?} does not match its key's", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "the token has expired".into(),
                K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                K::InvalidIssuer => format!("the token was not issued by {}", self.issuer),
                K::InvalidAudience => format!("the token is not meant for audience {:?}", self.audience),
                K::InvalidSignature => "the token's signature does not verify".into(),
                K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                _ => format!("the token is not valid: {e}"),
            })
        })?;
        let claims = data.claims;
        let operator = claims.roles.contains(&self.operator_role) || claims.scope.as_deref().is_some_and(|s| s.split(' ').any(|r| r == self.operator_role));
        let customer = Uuid::parse_str(&claims.sub).ok();
        let caller = Caller { subject: claims.sub, customer, operator };
        // Remembered only by the keys that verified it (not by keys loaded meanwhile).
        let keys = self.keys.read().await;
        if keys.loaded_at == loaded_at {
            let mut verified = keys.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(token.into(), Verified { caller: caller.clone(), exp: claims.exp, nbf: claims.nbf });
        }
        Ok(caller)
    }

    /// The key named `kid` (or the only one), its algorithms, and when the keys it is one of
    /// were loaded.
    async fn key(&self, kid: Option<&str>) -> Option<(DecodingKey, Vec<Algorithm>, Instant)> {
        {
            let keys = self.keys.read().await;
            if let Some(k) = pick(&keys, kid) {
                return Some(k);
            }
            if keys.loaded_at.elapsed() < REFRESH_EVERY {
                return None;
            }
        }
        // An unknown key: the provider may have rotated. Fetch again (one caller at a time).
        let mut keys = self.keys.write().await;
        if keys.loaded_at.elapsed() >= REFRESH_EVERY {
            match load(&self.source, &self.http).await {
                Ok(fresh) => *keys = fresh,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "cannot refresh the JWKS; keeping the keys loaded before");
                    keys.loaded_at = Instant::now();
                }
            }
        }
        pick(&keys, kid)
    }
}

fn pick(keys: &Keys, kid: Option<&str>) -> Option<(DecodingKey, Vec<Algorithm>, Instant)> {
    let (key, algorithms) = match kid {
        Some(kid) => keys.by_kid.get(kid).cloned(),
        None => keys.only.clone(),
    }?;
    Some((key, algorithms, keys.loaded_at))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

async fn load(source: &Source, http: &reqwest::Client) -> anyhow::Result<Keys> {
    let text = match source {
        Source::File(path) => tokio::fs::read_to_string(path).await.with_context(|| format!("cannot read the JWKS file {}", path.display()))?,
        Source::Url(url) => {
            let resp = http.get(url).send().await.with_context(|| format!("cannot fetch the JWKS from {url}"))?;
            let resp = resp.error_for_status().with_context(|| format!("the JWKS at {url} is not available"))?;
            resp.text().await.with_context(|| format!("reading the JWKS from {url}"))?
        }
        Source::Fixed(text) => text.clone(),
    };
    parse(&text)
}

fn parse(text: &str) -> anyhow::Result<Keys> {
    let set: JwkSet = serde_json::from_str(text).context("the JWKS is not a JSON Web Key Set (`{\"keys\": [...]}`)")?;
    let mut by_kid = HashMap::new();
    let mut usable = Vec::new();
    for jwk in &set.keys {
        let Some(algorithms) = algorithms_of(jwk) else { continue };
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        if let Some(kid) = &jwk.common.key_id {
            by_kid.insert(kid.clone(), (key.clone(), algorithms.clone()));
        }
        usable.push((key, algorithms));
    }
    if usable.is_empty() {
        bail!("the JWKS has no usable public key (RSA, EC P-256/P-384 or Ed25519; symmetric keys are refused)");
    }
    let only = if usable.len() == 1 { usable.pop() } else { None };
    Ok(Keys { by_kid, only, loaded_at: Instant::now(), verified: Mutex::default() })
}

/// The algorithms a published key may verify: its `alg` when it names one, else those of its
/// type. Symmetric (`oct`) keys are never accepted: a JWKS is public.
fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
        _ => return None,
    };
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    let named = jwk.common.key_algorithm.map(|a| match a {
        K::RS256 => Some(Algorithm::RS256),
        K::RS384 => Some(Algorithm::RS384),
        K::RS512 => Some(Algorithm::RS512),
        K::PS256 => Some(Algorithm::PS256),
        K::PS384 => Some(Algorithm::PS384),
        K::PS512 => Some(Algorithm::PS512),
        K::ES256 => Some(Algorithm::ES256),
        K::ES384 => Some(Algorithm::ES384),
        K::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    match named {
        Some(None) => None,
        Some(Some(alg)) if by_type.contains(&alg) => Some(vec![alg]),
        Some(Some(_)) => None,
        None => Some(by_type),
    }
}

/// A signing key made on the spot (Ed25519), with its JWKS and tokens: what `cargo xtask up`,
/// the end-to-end tests, the benches and the load test use in place of an identity provider.
#[derive(Clone)]
pub struct DevIssuer {
    kid: String,
    /// The private key, PKCS#8 v1 DER.
    pkcs8: Vec<u8>,
    key: EncodingKey,
    jwks: JwkSet,
    pub issuer: String,
    pub audience: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("kid", &self.kid).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// A new key pair, issuer [`DEV_ISSUER`], audience [`DEFAULT_AUDIENCE`].
    pub fn generate() -> anyhow::Result<DevIssuer> {
        use aws_lc_rs::signature::Ed25519KeyPair;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&aws_lc_rs::rand::SystemRandom::new()).map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        DevIssuer::from_parts(format!("dev-{}", Uuid::now_v7().simple()), pkcs8.as_ref().to_vec(), DEV_ISSUER.into(), DEFAULT_AUDIENCE.into())
    }

    /// The issuer of an Ed25519 key (PKCS#8 v1 DER) under `kid`, with its one-key JWKS.
    fn from_parts(kid: String, pkcs8: Vec<u8>, issuer: String, audience: String) -> anyhow::Result<DevIssuer> {
        let key = EncodingKey::from_ed_der(&pkcs8);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).context("not an Ed25519 key")?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(DevIssuer { kid, pkcs8, key, jwks: JwkSet { keys: vec![jwk] }, issuer, audience })
    }

    /// Saves the issuer, private key included, to `path` (readable by its owner only), for
    /// another local process that mints tokens (the saga driver, the load test).
    pub fn save(&self, path: &FsPath) -> anyhow::Result<()> {
        use base64::Engine;
        let saved = SavedIssuer { kid: self.kid.clone(), pkcs8: base64::engine::general_purpose::STANDARD.encode(&self.pkcs8), issuer: self.issuer.clone(), audience: self.audience.clone() };
        let text = serde_json::to_string(&saved)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// An issuer [`DevIssuer::save`]d before.
    pub fn load(path: &FsPath) -> anyhow::Result<DevIssuer> {
        use base64::Engine;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the issuer file {}", path.display()))?;
        let saved: SavedIssuer = serde_json::from_str(&text).with_context(|| format!("{} is not an issuer file", path.display()))?;
        let pkcs8 = base64::engine::general_purpose::STANDARD.decode(saved.pkcs8).context("the issuer file's key is not base64")?;
        DevIssuer::from_parts(saved.kid, pkcs8, saved.issuer, saved.audience).with_context(|| format!("the key in {}", path.display()))
    }

    /// The public keys, as a JWKS document.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string_pretty(&self.jwks).expect("a JWKS serialises")
    }

    /// Writes the JWKS to `path` and returns the settings an API needs to trust this issuer.
    pub fn write_jwks(&self, path: &FsPath) -> anyhow::Result<AuthArgs> {
        std::fs::write(path, self.jwks_json()).with_context(|| format!("writing {}", path.display()))?;
        Ok(self.args(path.display().to_string()))
    }

    /// The settings of an API that trusts this issuer, with its keys at `jwks`.
    pub fn args(&self, jwks: String) -> AuthArgs {
        AuthArgs { jwks, issuer: self.issuer.clone(), audience: self.audience.clone(), leeway: Duration::from_secs(30), operator_role: OPERATOR_ROLE.into() }
    }

    /// The environment variables of those settings, for a child process.
    pub fn env(&self, jwks: &FsPath) -> Vec<(String, String)> {
        vec![
            ("AUTH_JWKS".into(), jwks.display().to_string()),
            ("AUTH_ISSUER".into(), self.issuer.clone()),
            ("AUTH_AUDIENCE".into(), self.audience.clone()),
        ]
    }

    /// A signed token for `sub` with `roles`, valid for `ttl`.
    pub fn token(&self, sub: &str, roles: &[&str], ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scope: None,
        };
        self.sign(&claims)
    }

    /// Signs any claims (tests use it for expired, foreign or malformed ones).
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("an Ed25519 key signs")
    }

    /// A customer's token, valid for a day.
    pub fn customer(&self, id: Uuid) -> String {
        self.token(&id.to_string(), &[], Duration::from_secs(24 * 3600))
    }

    /// An operator's token, valid for a day.
    pub fn operator(&self) -> String {
        self.token("operator", &[OPERATOR_ROLE], Duration::from_secs(24 * 3600))
    }
}

#[derive(Serialize, Deserialize)]
struct SavedIssuer {
    kid: String,
    pkcs8: String,
    issuer: String,
    audience: String,
}

/// A bearer token read from a file each time it is needed, so that a deployment can rotate it
/// (a mounted Secret, a projected service-account token) without a restart.
#[derive(Debug, Clone)]
pub struct TokenFile(pub PathBuf);

impl TokenFile {
    /// The `Authorization` header value.
    pub async fn bearer(&self) -> anyhow::Result<String> {
        let token = tokio::fs::read_to_string(&self.0).await.with_context(|| format!("cannot read the token file {}", self.0.display()))?;
        Ok(format!("Bearer {}", token.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn verifier(issuer: &DevIssuer) -> (Arc<Verifier>, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let args = issuer.write_jwks(&dir.0.join("jwks.json")).unwrap();
        (Verifier::new(&args).await.unwrap(), dir)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("conveyor-auth-test-{}", uuid::Uuid::now_v7()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn detail(e: ApiError) -> String {
        match e {
            ApiError::Unauthorized { detail, invalid: true } => detail,
            other => panic!("expected an invalid-token 401, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dev_token_verifies_and_names_its_caller() {
        let issuer = DevIssuer::generate().unwrap();
        let (v, _dir) = verifier(&issuer).await;
        let alice = Uuid::now_v7();
        let caller = v.verify(&issuer.customer(alice)).await.unwrap();
        assert_eq!(caller, Caller { subject: alice.to_string(), customer: Some(alice), operator: false });
        let op = v.verify(&issuer.operator()).await.unwrap();
        assert!(op.operator && op.customer.is_none());
        assert!(caller.require_customer(alice).is_ok());
        assert!(matches!(caller.require_customer(Uuid::now_v7()), Err(ApiError::Forbidden(_))));
        assert!(matches!(caller.require_operator(), Err(ApiError::Forbidden(_))));
        assert!(op.require_customer(alice).is_ok());
        assert!(matches!(op.require_self(alice), Err(ApiError::Forbidden(_))));
    }

    #[tokio::test]
    async fn a_saved_issuer_signs_tokens_the_original_keys_verify() {
        let issuer = DevIssuer::generate().unwrap();
        let (v, dir) = verifier(&issuer).await;
        let path = dir.0.join("issuer.json");
        issuer.save(&path).unwrap();
        let loaded = DevIssuer::load(&path).unwrap();
        assert_eq!(loaded.jwks_json(), issuer.jwks_json());
        assert!(v.verify(&loaded.operator()).await.unwrap().operator);
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions()) & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_scope_claim_grants_the_operator_role_too() {
        let issuer = DevIssuer::generate().unwrap();
        let (v, _dir) = verifier(&issuer).await;
        let now = jsonwebtoken::get_current_timestamp();
        let token = issuer.sign(&serde_json::json!({"sub": "ops-bot", "iss": DEV_ISSUER, "aud": DEFAULT_AUDIENCE, "exp": now + 60, "scope": "read operator"}));
        assert!(v.verify(&token).await.unwrap().operator);
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_a_reason() {
        let issuer = DevIssuer::generate().unwrap();
        let (v, _dir) = verifier(&issuer).await;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |iss: &str, aud: &str, exp: u64| serde_json::json!({"sub": "x", "iss": iss, "aud": aud, "exp": exp});

        let expired = issuer.sign(&claims(DEV_ISSUER, DEFAULT_AUDIENCE, now - 120));
        assert!(detail(v.verify(&expired).await.unwrap_err()).contains("expired"));
        // Within the 30 s leeway: still accepted.
        let just_expired = issuer.sign(&claims(DEV_ISSUER, DEFAULT_AUDIENCE, now - 5));
        assert!(v.verify(&just_expired).await.is_ok());
        let foreign_issuer = issuer.sign(&claims("someone-else", DEFAULT_AUDIENCE, now + 60));
        assert!(detail(v.verify(&foreign_issuer).await.unwrap_err()).contains("not issued by"));
        let other_audience = issuer.sign(&claims(DEV_ISSUER, "another-api", now + 60));
        assert!(detail(v.verify(&other_audience).await.unwrap_err()).contains("audience"));
        let no_sub = issuer.sign(&serde_json::json!({"iss": DEV_ISSUER, "aud": DEFAULT_AUDIENCE, "exp": now + 60}));
        assert!(v.verify(&no_sub).await.is_err());

        // Signed by another key that claims this issuer's key id.
        let impostor = DevIssuer { kid: issuer.kid.clone(), ..DevIssuer::generate().unwrap() };
        assert!(detail(v.verify(&impostor.customer(Uuid::now_v7())).await.unwrap_err()).contains("signature"));
        // A key the issuer does not publish.
        let stranger = DevIssuer::generate().unwrap();
        assert!(detail(v.verify(&stranger.operator()).await.unwrap_err()).contains("does not publish"));

        // `alg: none` and HMAC tokens are refused whatever they claim.
        let good = issuer.operator();
        let parts: Vec<&str> = good.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none_header = b64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, issuer.kid));
        assert!(v.verify(&format!("{none_header}.{}.", parts[1])).await.is_err());
        let hs = jsonwebtoken::encode(&Header { kid: Some(issuer.kid.clone()), ..Header::new(Algorithm::HS256) }, &claims(DEV_ISSUER, DEFAULT_AUDIENCE, now + 60), &EncodingKey::from_secret(b"guess").unwrap()).unwrap();
        assert!(detail(v.verify(&hs).await.unwrap_err()).contains("algorithm"));
        assert!(detail(v.verify("not-a-jwt").await.unwrap_err()).contains("not a JWT"));
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_from_the_jwks_without_a_restart() {
        let first = DevIssuer::generate().unwrap();
        let (v, dir) = verifier(&first).await;
        let second = DevIssuer::generate().unwrap();
        second.write_jwks(&dir.0.join("jwks.json")).unwrap();
        // The refresh is rate-limited; make the loaded keys look old.
        v.keys.write().await.loaded_at = Instant::now() - REFRESH_EVERY;
        assert!(v.verify(&second.operator()).await.unwrap().operator);
    }

    #[tokio::test]
    async fn a_remembered_token_is_checked_for_time_and_forgotten_with_its_keys() {
        let first = DevIssuer::generate().unwrap();
        let (v, dir) = verifier(&first).await;
        let token = first.customer(Uuid::now_v7());
        let caller = v.verify(&token).await.unwrap();
        // Remembered, and answered from memory the same way.
        assert!(v.keys.read().await.verified.lock().unwrap().contains_key(token.as_str()));
        assert_eq!(v.verify(&token).await.unwrap(), caller);
        // Another text is another token, checked in full, even with the same claims.
        let mut tampered = token.clone();
        tampered.pop();
        assert!(v.verify(&tampered).await.is_err());

        // The window is the full check's: exp and nbf, with the leeway either way.
        let at = |exp, nbf| Verified { caller: caller.clone(), exp, nbf };
        assert!(at(100, None).valid_at(100, 0) && at(100, None).valid_at(130, 30));
        assert!(!at(100, None).valid_at(101, 0) && !at(100, None).valid_at(131, 30));
        assert!(at(200, Some(100)).valid_at(100, 0) && at(200, Some(100)).valid_at(70, 30));
        assert!(!at(200, Some(100)).valid_at(99, 0) && !at(200, Some(100)).valid_at(69, 30));

        // The issuer stops publishing the first key: once the keys are loaded again (a
        // token with a new key id makes that happen), the remembered token is refused.
        let second = DevIssuer::generate().unwrap();
        second.write_jwks(&dir.0.join("jwks.json")).unwrap();
        v.keys.write().await.loaded_at = Instant::now() - REFRESH_EVERY;
        assert!(v.verify(&second.operator()).await.unwrap().operator);
        assert!(detail(v.verify(&token).await.unwrap_err()).contains("does not publish"));
    }

    #[tokio::test]
    async fn a_jwks_without_usable_keys_is_refused_at_start() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("jwks.json");
        std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#).unwrap();
        let err = Verifier::new(&DevIssuer::generate().unwrap().args(path.display().to_string())).await.unwrap_err();
        assert!(format!("{err:#}").contains("no usable public key"), "{err:#}");
        let err = Verifier::new(&DevIssuer::generate().unwrap().args("/nonexistent/jwks.json".into())).await.unwrap_err();
        assert!(format!("{err:#}").contains("cannot read the JWKS file"), "{err:#}");
    }
}
