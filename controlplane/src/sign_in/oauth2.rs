//! OAuth 2 providers without OpenID Connect: GitHub and X. The authorization code flow with
//! PKCE S256 and `state` (RFC 6749, RFC 7636), then the provider's user API says who signed in:
//! - GitHub: `GET /user` (the numeric `id` is the subject) and `GET /user/emails`, whose
//!   `primary` address counts as verified only when GitHub says `verified`;
//! - X: `GET /users/me` (`data.id`); X gives no e-mail address.
//!
//! There is no ID token to check: the access token is only ever sent back to the provider that
//! issued it, over the connection the token endpoint answered on.

use openidconnect::http::{header, Method, Request};
use openidconnect::PkceCodeChallenge;
use serde::Deserialize;

use super::config::{Protocol, Provider, ProviderKind};
use super::http::ProviderHttp;
use super::oidc::chain;
use super::{Account, SignInError};

/// The URL to send the browser to.
pub fn authorization_url(
    provider: &Provider,
    redirect_uri: &str,
    state: &str,
    challenge: &PkceCodeChallenge,
) -> Result<String, SignInError> {
    let Protocol::OAuth2 {
        authorization_url, ..
    } = &provider.protocol
    else {
        return Err(SignInError::Unavailable("not an OAuth 2 provider".into()));
    };
    let mut url = url::Url::parse(authorization_url)
        .map_err(|e| SignInError::Unavailable(format!("authorization URL: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &provider.scopes.join(" "))
        .append_pair("state", state)
        .append_pair("code_challenge", challenge.as_str())
        .append_pair("code_challenge_method", "S256");
    Ok(url.to_string())
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct GithubUser {
    id: u64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

#[derive(Deserialize)]
struct XUser {
    data: XUserData,
}

#[derive(Deserialize)]
struct XUserData {
    id: String,
    name: Option<String>,
    username: Option<String>,
}

/// Exchanges the code, then asks the user API who signed in.
pub async fn finish(
    http: &ProviderHttp,
    provider: &Provider,
    redirect_uri: &str,
    code: &str,
    pkce_verifier: &str,
) -> Result<Account, SignInError> {
    let Protocol::OAuth2 {
        token_url, api_url, ..
    } = &provider.protocol
    else {
        return Err(SignInError::Unavailable("not an OAuth 2 provider".into()));
    };
    // Built in a block: the serializer is not `Send` and must be gone before the await.
    let request = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_verifier", pkce_verifier)
            .append_pair("client_id", &provider.client_id);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(token_url)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        match (&provider.client_secret, provider.kind) {
            // GitHub documents the secret in the form; X (and RFC 6749) in Basic authentication.
            (Some(secret), ProviderKind::Github) => {
                form.append_pair("client_secret", secret);
            }
            (Some(secret), _) => {
                let basic = openidconnect::http::HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64_encode(&format!(
                        "{}:{}",
                        url_encode(&provider.client_id),
                        url_encode(secret)
                    ))
                ))
                .map_err(|e| SignInError::Unavailable(format!("client credentials: {e}")))?;
                request = request.header(header::AUTHORIZATION, basic);
            }
            (None, _) => {}
        }
        request
            .body(form.finish().into_bytes())
            .map_err(|e| SignInError::Unavailable(format!("token request: {e}")))?
    };
    let answer = http.execute(request).await.map_err(|e| {
        SignInError::Unavailable(format!("the token request failed: {}", chain(&e)))
    })?;
    let token: TokenAnswer = serde_json::from_slice(answer.body()).map_err(|_| {
        SignInError::Unavailable(format!(
            "the token endpoint answered {} without JSON",
            answer.status()
        ))
    })?;
    let access_token = match (token.access_token, token.error) {
        (Some(t), None) if answer.status().is_success() => t,
        (_, Some(error)) => {
            return Err(SignInError::Refused(format!(
                "the provider refused the code: {error}"
            )))
        }
        _ => {
            return Err(SignInError::Refused(format!(
                "the provider refused the code ({})",
                answer.status()
            )))
        }
    };
    match provider.kind {
        ProviderKind::Github => {
            let user: GithubUser =
                get_json(http, &format!("{api_url}/user"), &access_token).await?;
            let emails: Vec<GithubEmail> =
                get_json(http, &format!("{api_url}/user/emails"), &access_token).await?;
            let primary = emails.into_iter().find(|e| e.primary);
            let (first_name, last_name) = names(user.name.as_deref().unwrap_or(&user.login));
            Ok(Account {
                subject: user.id.to_string(),
                email_verified: primary.as_ref().is_some_and(|e| e.verified),
                email: primary.map(|e| e.email),
                first_name,
                last_name,
            })
        }
        _ => {
            let user: XUser = get_json(http, &format!("{api_url}/users/me"), &access_token).await?;
            let shown = user.data.name.or(user.data.username).unwrap_or_default();
            let (first_name, last_name) = names(&shown);
            Ok(Account {
                subject: user.data.id,
                email: None,
                email_verified: false,
                first_name,
                last_name,
            })
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &ProviderHttp,
    url: &str,
    access_token: &str,
) -> Result<T, SignInError> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(url)
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
        .body(Vec::new())
        .map_err(|e| SignInError::Unavailable(format!("user API request: {e}")))?;
    let answer = http
        .execute(request)
        .await
        .map_err(|e| SignInError::Unavailable(format!("the user API failed: {}", chain(&e))))?;
    if !answer.status().is_success() {
        return Err(SignInError::Unavailable(format!(
            "the user API answered {}",
            answer.status()
        )));
    }
    serde_json::from_slice(answer.body())
        .map_err(|e| SignInError::Unavailable(format!("the user API's answer does not fit: {e}")))
}

fn names(shown: &str) -> (Option<String>, Option<String>) {
    let shown = shown.trim();
    match shown.split_once(' ') {
        Some((first, last)) => (Some(first.to_owned()), Some(last.trim().to_owned())),
        None if shown.is_empty() => (None, None),
        None => (Some(shown.to_owned()), None),
    }
}

/// `application/x-www-form-urlencoded` encoding of a client credential (RFC 6749 2.3.1).
fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn base64_encode(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64_encode;

    #[test]
    fn basic_credentials_are_standard_base64() {
        assert_eq!(base64_encode("a"), "YQ==");
        assert_eq!(base64_encode("ab"), "YWI=");
        assert_eq!(base64_encode("abc"), "YWJj");
        assert_eq!(base64_encode("client:s3cret"), "Y2xpZW50OnMzY3JldA==");
    }
}
