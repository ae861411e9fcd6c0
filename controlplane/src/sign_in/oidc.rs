//! OpenID Connect with `openidconnect`: discovery (cached for an hour, dropped when an ID
//! token's signature fails so that rotated keys are fetched again), the authorization URL with
//! PKCE S256, `state` and `nonce`, and the code exchange whose ID token is checked: signature
//! against the provider's keys, issuer, audience (our client id), expiry and nonce.

use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    TokenResponse,
};
use tokio::sync::Mutex;

use super::config::Provider;
use super::http::ProviderHttp;
use super::{Account, SignInError};

/// How long discovered metadata (endpoints and keys) is used before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// One OpenID provider and its discovered metadata.
pub struct OidcProvider {
    issuer: String,
    metadata: Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

impl OidcProvider {
    pub fn new(issuer: String) -> OidcProvider {
        OidcProvider {
            issuer,
            metadata: Mutex::new(None),
        }
    }

    async fn metadata(&self, http: &ProviderHttp) -> Result<CoreProviderMetadata, SignInError> {
        let mut cached = self.metadata.lock().await;
        if let Some((at, metadata)) = cached.as_ref() {
            if at.elapsed() < METADATA_TTL {
                return Ok(metadata.clone());
            }
        }
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| SignInError::Unavailable(format!("issuer URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, http)
            .await
            .map_err(|e| SignInError::Unavailable(format!("discovery failed: {}", chain(&e))))?;
        *cached = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    async fn forget_metadata(&self) {
        *self.metadata.lock().await = None;
    }

    /// The URL to send the browser to.
    pub async fn authorization_url(
        &self,
        http: &ProviderHttp,
        provider: &Provider,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: PkceCodeChallenge,
    ) -> Result<String, SignInError> {
        let metadata = self.metadata(http).await?;
        let client = client(metadata, provider, redirect_uri)?;
        let state = state.to_owned();
        let nonce = nonce.to_owned();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge);
        for scope in provider.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        Ok(request.url().0.to_string())
    }

    /// Exchanges the code and checks the ID token.
    pub async fn finish(
        &self,
        http: &ProviderHttp,
        provider: &Provider,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Account, SignInError> {
        let metadata = self.metadata(http).await?;
        let client = client(metadata, provider, redirect_uri)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| SignInError::Unavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(answer) => SignInError::Refused(format!(
                    "the provider refused the code: {}",
                    answer.error()
                )),
                other => {
                    SignInError::Unavailable(format!("the token request failed: {}", chain(&other)))
                }
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| SignInError::IdToken("the provider sent no ID token".into()))?;
        let verifier = client.id_token_verifier();
        // The error is not `Send`: turned into text before anything is awaited.
        let checked: Result<&CoreIdTokenClaims, (bool, String)> = id_token
            .claims(&verifier, &Nonce::new(nonce.to_owned()))
            .map_err(|e| {
                (
                    matches!(e, ClaimsVerificationError::SignatureVerification(_)),
                    id_token_refusal(&e),
                )
            });
        let claims = match checked {
            Ok(claims) => claims,
            Err((signature, refusal)) => {
                if signature {
                    // Perhaps the provider rotated its keys: the next sign-in fetches them.
                    self.forget_metadata().await;
                }
                return Err(SignInError::IdToken(refusal));
            }
        };
        let given = claims
            .given_name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned());
        let family = claims
            .family_name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned());
        let full = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned());
        let (first_name, last_name) = match (given, family, full) {
            (Some(g), f, _) => (Some(g), f),
            (None, f, Some(full)) => split_name(&full, f),
            (None, f, None) => (None, f),
        };
        Ok(Account {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified() == Some(true),
            first_name,
            last_name,
        })
    }
}

/// `full` as first and last name, when no family name came apart.
fn split_name(full: &str, family: Option<String>) -> (Option<String>, Option<String>) {
    match (full.trim().split_once(' '), family) {
        (_, Some(family)) => (Some(full.to_owned()), Some(family)),
        (Some((first, last)), None) => (Some(first.to_owned()), Some(last.trim().to_owned())),
        (None, None) => (Some(full.to_owned()), None),
    }
}

/// What was wrong with an ID token, for the refusal's detail.
fn id_token_refusal(e: &ClaimsVerificationError) -> String {
    let what = match e {
        ClaimsVerificationError::Expired(_) => "it has expired",
        ClaimsVerificationError::InvalidAudience(_) => "it is for another client (audience)",
        ClaimsVerificationError::InvalidIssuer(_) => "it comes from another issuer",
        ClaimsVerificationError::InvalidNonce(_) => "its nonce is not this sign-in's",
        ClaimsVerificationError::SignatureVerification(_) => "its signature does not verify",
        ClaimsVerificationError::InvalidAuthTime(_) => "its authentication time is invalid",
        ClaimsVerificationError::InvalidSubject(_) => "its subject is invalid",
        _ => "it does not verify",
    };
    format!("the provider's ID token was refused: {what}; sign in again")
}

fn client(
    metadata: CoreProviderMetadata,
    provider: &Provider,
    redirect_uri: &str,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    SignInError,
> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|e| SignInError::Unavailable(format!("redirect URL: {e}")))?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.client_id.clone()),
        provider.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(redirect))
}

/// An error and its sources, one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
