//! Who is calling: passwords, session and personal tokens, one-time codes, and the [`Caller`]
//! extractor every authenticated endpoint takes.
//!
//! Secrets are random, shown once, and stored as SHA-256 hashes; passwords as argon2id. A
//! caller authenticates with `Authorization: Bearer <session or personal token>` or with the
//! `sluice_session` cookie set at sign-in.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::Utc;
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::App;
use crate::model::{Credential, User};
use crate::problem::{ApiError, ProblemType};

/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "sluice_ses_";
/// Prefix of personal access tokens (recognisable by secret scanners).
pub const PERSONAL_TOKEN_PREFIX: &str = "sluice_pat_";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "sluice_session";

/// Shortest and longest password accepted.
const PASSWORD_CHARS_MIN: usize = 10;
const PASSWORD_CHARS_MAX: usize = 128;

/// Checks the password rules: 10 to 128 characters, not the e-mail address itself.
pub fn check_password_rules(password: &str, email: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&chars) {
        return Err(ApiError::new(
            ProblemType::WeakPassword,
            format!(
                "the password must have {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters"
            ),
        ));
    }
    if password.eq_ignore_ascii_case(email) || password.chars().all(|c| password.starts_with(c)) {
        return Err(ApiError::new(
            ProblemType::WeakPassword,
            "the password must not be the e-mail address or one repeated character",
        ));
    }
    Ok(())
}

/// argon2id hash of `password` (CPU-heavy: call from a blocking thread).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| ApiError::internal(format!("making a password salt failed: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing the password failed: {e}")))
}

/// Whether `password` matches `hash` (CPU-heavy: call from a blocking thread).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the account does not exist, so that timing does not tell.
pub fn dummy_password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default())
}

/// A new random secret with `prefix`.
pub fn new_secret(prefix: &str) -> String {
    let mut secret = String::from(prefix);
    Alphanumeric.append_string(&mut rand::rng(), &mut secret, 40);
    secret
}

pub fn sha256_hex(data: &str) -> String {
    hex::encode(Sha256::digest(data.as_bytes()))
}

/// A six-digit code for e-mail verification or password reset.
pub fn new_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000))
}

/// Hash of a one-time code, salted with its owner so equal codes hash differently.
pub fn code_hash(user: Uuid, code: &str) -> String {
    sha256_hex(&format!("{user}:{}", code.trim()))
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub credential: Credential,
    /// What an OAuth access token limits the caller to (one workspace, its grant's scopes);
    /// `None` for sessions and personal tokens, which carry the whole role.
    pub delegation: Option<crate::oauth::Delegation>,
}

/// A caller the MCP endpoint has resolved already (from an OAuth access token), handed to the
/// API it calls in-process. Extensions are set by the server only: no request from outside
/// carries one.
#[derive(Debug, Clone)]
pub struct ResolvedCaller(pub Caller);

/// The secret presented by a request: a bearer token, else the session cookie.
pub fn presented_secret(parts: &Parts) -> Option<String> {
    presented_secret_from_headers(&parts.headers)
}

/// [`presented_secret`] from the headers alone.
pub fn presented_secret_from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl Caller {
    /// Looks up `secret`; `None` when unknown or expired.
    pub fn from_secret(app: &App, secret: &str) -> Option<Caller> {
        let hash = sha256_hex(secret);
        app.store.read(|s| {
            let credential = s.credentials.get(&hash)?;
            if credential.expires_at.is_some_and(|at| at <= Utc::now()) {
                return None;
            }
            let user = s.users.get(&credential.user_id)?;
            Some(Caller {
                user: user.clone(),
                credential: credential.clone(),
                delegation: None,
            })
        })
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        if let Some(ResolvedCaller(caller)) = parts.extensions.get::<ResolvedCaller>() {
            if let Some(delegation) = &caller.delegation {
                // A grant is for one workspace's operations, and a read-only grant changes
                // nothing, whichever action the handler checks.
                if !parts.uri.path().starts_with("/api/v1/workspaces/") {
                    return Err(ApiError::new(
                        ProblemType::InsufficientScope,
                        "an OAuth access token reaches its workspace's operations only",
                    ));
                }
                if !delegation.scopes.allow_method(&parts.method) {
                    return Err(ApiError::new(
                        ProblemType::InsufficientScope,
                        format!(
                            "the OAuth grant's scopes are {:?}; this needs workspace:write",
                            delegation.scopes.to_string()
                        ),
                    ));
                }
            }
            return Ok(caller.clone());
        }
        let secret = presented_secret(parts).ok_or_else(|| {
            ApiError::unauthenticated(
                "sign in first: send Authorization: Bearer <session or personal token>",
            )
        })?;
        Caller::from_secret(app, &secret).ok_or_else(|| {
            ApiError::unauthenticated("the session or token is unknown, revoked or expired")
        })
    }
}

/// A caller whose e-mail address is verified (needed to create or join workspaces).
pub fn require_verified(caller: &Caller) -> Result<(), ApiError> {
    if caller.user.email_verified {
        Ok(())
    } else {
        Err(ApiError::new(
            ProblemType::EmailNotVerified,
            "verify your e-mail address first with the code we sent (POST /api/v1/email-verification)",
        ))
    }
}

/// A caller who is an operator.
pub fn require_operator(caller: &Caller) -> Result<(), ApiError> {
    if caller.user.operator {
        Ok(())
    } else {
        Err(ApiError::new(
            ProblemType::OperatorOnly,
            "this endpoint is for operators",
        ))
    }
}
