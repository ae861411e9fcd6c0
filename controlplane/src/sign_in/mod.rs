//! Sign-in with accounts at OpenID Connect and OAuth 2 providers (Google, Microsoft,
//! LinkedIn, any OIDC issuer; GitHub and X): the configured providers, the requests to them,
//! and the sign-ins in progress. The HTTP side (`/auth/{provider}/...`, identities) is in
//! `api/identities.rs`; which user an account signs in as is decided there too.
//!
//! Never logs a code, token, verifier, nonce or secret.

pub mod config;
pub mod http;
mod oauth2;
mod oidc;
pub mod pending;

use std::time::Duration;

use openidconnect::PkceCodeChallenge;

use config::{Protocol, Provider, SignInConfig};
use http::{ProviderHttp, ProviderHttpError};
use oidc::OidcProvider;
use pending::Pending;

/// Who signed in, as the provider says.
#[derive(Debug, Clone)]
pub struct Account {
    /// The provider's stable id of the account.
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider asserts the address is the account holder's (`email_verified`,
    /// GitHub's verified primary address).
    pub email_verified: bool,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

/// Why a sign-in with a provider failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignInError {
    /// The provider could not be reached or answered nonsense.
    #[error("{0}")]
    Unavailable(String),
    /// The provider refused (an error at the callback, a used or wrong code).
    #[error("{0}")]
    Refused(String),
    /// The ID token failed a check.
    #[error("{0}")]
    IdToken(String),
}

/// One configured provider and what it keeps between sign-ins.
pub struct ProviderEntry {
    pub provider: Provider,
    oidc: Option<OidcProvider>,
}

/// Everything sign-in with providers needs.
pub struct SignIn {
    providers: Vec<ProviderEntry>,
    http: ProviderHttp,
    pub pending: Pending,
}

impl SignIn {
    pub fn new(
        config: &SignInConfig,
        providers: Vec<Provider>,
    ) -> Result<SignIn, ProviderHttpError> {
        let http = ProviderHttp::new(
            Duration::from_millis(config.provider_timeout_ms),
            config.provider_response_bytes_max,
        )?;
        let providers = providers
            .into_iter()
            .map(|provider| ProviderEntry {
                oidc: match &provider.protocol {
                    Protocol::Oidc { issuer } => Some(OidcProvider::new(issuer.clone())),
                    Protocol::OAuth2 { .. } => None,
                },
                provider,
            })
            .collect();
        Ok(SignIn {
            providers,
            http,
            pending: Pending::new(
                Duration::from_secs(config.flow_ttl_secs),
                config.pending_flows_max,
            ),
        })
    }

    /// The providers, in the configured order.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.iter().map(|e| &e.provider)
    }

    pub fn provider(&self, id: &str) -> Option<&ProviderEntry> {
        self.providers.iter().find(|e| e.provider.id == id)
    }
}

impl ProviderEntry {
    /// The provider's authorization URL for a new flow.
    pub async fn authorization_url(
        &self,
        sign_in: &SignIn,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: PkceCodeChallenge,
    ) -> Result<String, SignInError> {
        match &self.oidc {
            Some(oidc) => {
                oidc.authorization_url(
                    &sign_in.http,
                    &self.provider,
                    redirect_uri,
                    state,
                    nonce,
                    challenge,
                )
                .await
            }
            None => oauth2::authorization_url(&self.provider, redirect_uri, state, &challenge),
        }
    }

    /// Finishes a flow at its callback: who signed in.
    pub async fn finish(
        &self,
        sign_in: &SignIn,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Account, SignInError> {
        match &self.oidc {
            Some(oidc) => {
                oidc.finish(
                    &sign_in.http,
                    &self.provider,
                    redirect_uri,
                    code,
                    pkce_verifier,
                    nonce,
                )
                .await
            }
            None => {
                oauth2::finish(
                    &sign_in.http,
                    &self.provider,
                    redirect_uri,
                    code,
                    pkce_verifier,
                )
                .await
            }
        }
    }
}
