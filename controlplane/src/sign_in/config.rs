//! `[controlplane.sign_in]`: the OpenID Connect and OAuth 2 providers people may sign in with,
//! and the bounds of a sign-in in progress. Each provider is resolved once at start
//! ([`SignInConfig::resolve`]): its preset filled in, its client secret read from the
//! environment variable it names (never from the file), its id and URLs checked.

use serde::Deserialize;

/// Sign-in with outside accounts.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignInConfig {
    /// The providers, each shown as a button on `/login`. None by default.
    pub providers: Vec<ProviderConfig>,
    /// How long a started sign-in may take, from `/auth/{provider}/start` to the callback and
    /// on to an e-mail code entered.
    pub flow_ttl_secs: u64,
    /// Sign-ins started and not finished, kept at most; past it the oldest is forgotten.
    pub pending_flows_max: usize,
    /// Bound on one request to a provider (discovery, keys, token, user API).
    pub provider_timeout_ms: u64,
    /// Largest answer read from a provider.
    pub provider_response_bytes_max: usize,
}

impl Default for SignInConfig {
    fn default() -> Self {
        SignInConfig {
            providers: Vec::new(),
            flow_ttl_secs: 600,
            pending_flows_max: 10_000,
            provider_timeout_ms: 10_000,
            provider_response_bytes_max: 1 << 20,
        }
    }
}

/// Which provider a `[[controlplane.sign_in.providers]]` entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenID Connect provider, by its issuer URL (discovery).
    Oidc,
    Google,
    Microsoft,
    Linkedin,
    /// OAuth 2 and GitHub's user and e-mails API.
    Github,
    /// OAuth 2 and X's user API (which gives no e-mail address).
    X,
}

/// One provider as the operator writes it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// In the provider's paths (`/auth/{id}/start`) and stored with each identity; default
    /// the kind (`google`). Lowercase letters, digits and `-`, up to 32.
    #[serde(default)]
    pub id: Option<String>,
    /// The button's label; default the provider's name.
    #[serde(default)]
    pub name: Option<String>,
    pub client_id: String,
    /// The environment variable holding the client secret; none for a public client (PKCE
    /// only).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `oidc`: the issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    /// Presets know theirs; set it only to override.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `microsoft`: the directory (tenant) id whose accounts may sign in.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Scopes asked for; default per kind (`openid email profile` for OIDC).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `github`, `x`: the authorization endpoint; preset, set only to point at a stand-in.
    #[serde(default)]
    pub authorization_url: Option<String>,
    /// `github`, `x`: the token endpoint; preset.
    #[serde(default)]
    pub token_url: Option<String>,
    /// `github`, `x`: the base of the user API (`https://api.github.com`,
    /// `https://api.x.com/2`); preset.
    #[serde(default)]
    pub api_url: Option<String>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("client_secret_env", &self.client_secret_env)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// How a provider proves who signed in.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// OpenID Connect: discovery from the issuer, an ID token checked.
    Oidc { issuer: String },
    /// OAuth 2, then the user API (GitHub or X).
    OAuth2 {
        authorization_url: String,
        token_url: String,
        api_url: String,
    },
}

/// A provider ready to use.
#[derive(Clone)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub protocol: Protocol,
    pub client_id: String,
    /// From the environment; never logged.
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

/// A provider entry the control plane cannot use; each says which entry and what to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInConfigError {
    #[error(
        "sign_in provider id {id:?} must be 1 to 32 lowercase letters, digits or '-'; set `id`"
    )]
    InvalidId { id: String },
    #[error("sign_in provider id {id:?} is configured twice; give each entry its own `id`")]
    DuplicateId { id: String },
    #[error("sign_in provider {id:?} needs `{setting}`")]
    Missing { id: String, setting: &'static str },
    #[error("sign_in provider {id:?}: `{setting}` is not used by kind {kind}; remove it")]
    NotUsed {
        id: String,
        setting: &'static str,
        kind: &'static str,
    },
    #[error(
        "sign_in provider {id:?}: the environment variable {variable} (client_secret_env) is not set"
    )]
    SecretNotSet { id: String, variable: String },
    #[error("sign_in provider {id:?}: {setting} {url:?} is not an http(s) URL")]
    InvalidUrl {
        id: String,
        setting: &'static str,
        url: String,
    },
    #[error("sign_in.{name} must be above 0; leave it unset for the default")]
    Zero { name: &'static str },
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Oidc => "oidc",
            ProviderKind::Google => "google",
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::Linkedin => "linkedin",
            ProviderKind::Github => "github",
            ProviderKind::X => "x",
        }
    }

    fn default_name(self) -> &'static str {
        match self {
            ProviderKind::Oidc => "OpenID Connect",
            ProviderKind::Google => "Google",
            ProviderKind::Microsoft => "Microsoft",
            ProviderKind::Linkedin => "LinkedIn",
            ProviderKind::Github => "GitHub",
            ProviderKind::X => "X",
        }
    }

    fn default_scopes(self) -> &'static [&'static str] {
        match self {
            ProviderKind::Github => &["read:user", "user:email"],
            // `users.read` needs `tweet.read`; X's API has no e-mail address to ask for.
            ProviderKind::X => &["users.read", "tweet.read"],
            _ => &["openid", "email", "profile"],
        }
    }
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn http_url(id: &str, setting: &'static str, url: String) -> Result<String, SignInConfigError> {
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(url),
        _ => Err(SignInConfigError::InvalidUrl {
            id: id.to_owned(),
            setting,
            url,
        }),
    }
}

impl SignInConfig {
    /// Checks every entry and makes it a [`Provider`], reading client secrets with `env`
    /// (`std::env::var` in production).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Provider>, SignInConfigError> {
        for (name, value) in [
            ("flow_ttl_secs", self.flow_ttl_secs as usize),
            ("pending_flows_max", self.pending_flows_max),
            ("provider_timeout_ms", self.provider_timeout_ms as usize),
            (
                "provider_response_bytes_max",
                self.provider_response_bytes_max,
            ),
        ] {
            if value == 0 {
                return Err(SignInConfigError::Zero { name });
            }
        }
        let mut providers: Vec<Provider> = Vec::new();
        for entry in &self.providers {
            let provider = entry.resolve(&env)?;
            if providers.iter().any(|p| p.id == provider.id) {
                return Err(SignInConfigError::DuplicateId { id: provider.id });
            }
            providers.push(provider);
        }
        Ok(providers)
    }
}

impl ProviderConfig {
    fn resolve(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Provider, SignInConfigError> {
        let kind = self.kind;
        let id = self.id.clone().unwrap_or_else(|| kind.as_str().to_owned());
        if !valid_id(&id) {
            return Err(SignInConfigError::InvalidId { id });
        }
        let missing = |setting| SignInConfigError::Missing {
            id: id.clone(),
            setting,
        };
        let not_used = |setting| SignInConfigError::NotUsed {
            id: id.clone(),
            setting,
            kind: kind.as_str(),
        };
        if self.client_id.trim().is_empty() {
            return Err(missing("client_id"));
        }
        if self.tenant.is_some() && kind != ProviderKind::Microsoft {
            return Err(not_used("tenant"));
        }
        let oauth2 = matches!(kind, ProviderKind::Github | ProviderKind::X);
        if !oauth2 {
            for (setting, value) in [
                ("authorization_url", &self.authorization_url),
                ("token_url", &self.token_url),
                ("api_url", &self.api_url),
            ] {
                if value.is_some() {
                    return Err(not_used(setting));
                }
            }
        } else if self.issuer.is_some() {
            return Err(not_used("issuer"));
        }
        let protocol = match kind {
            ProviderKind::Oidc => Protocol::Oidc {
                issuer: self.issuer.clone().ok_or_else(|| missing("issuer"))?,
            },
            ProviderKind::Google => Protocol::Oidc {
                issuer: self
                    .issuer
                    .clone()
                    .unwrap_or_else(|| "https://accounts.google.com".into()),
            },
            ProviderKind::Linkedin => Protocol::Oidc {
                issuer: self
                    .issuer
                    .clone()
                    .unwrap_or_else(|| "https://www.linkedin.com/oauth".into()),
            },
            // The multi-tenant issuers (`common`, `organizations`) put each account's own
            // tenant in the ID token's `iss`, which an issuer check cannot match: one tenant.
            ProviderKind::Microsoft => Protocol::Oidc {
                issuer: match (&self.issuer, &self.tenant) {
                    (Some(issuer), _) => issuer.clone(),
                    (None, Some(tenant)) => {
                        format!("https://login.microsoftonline.com/{tenant}/v2.0")
                    }
                    (None, None) => return Err(missing("tenant")),
                },
            },
            ProviderKind::Github => Protocol::OAuth2 {
                authorization_url: self
                    .authorization_url
                    .clone()
                    .unwrap_or_else(|| "https://github.com/login/oauth/authorize".into()),
                token_url: self
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://github.com/login/oauth/access_token".into()),
                api_url: self
                    .api_url
                    .clone()
                    .unwrap_or_else(|| "https://api.github.com".into()),
            },
            ProviderKind::X => Protocol::OAuth2 {
                authorization_url: self
                    .authorization_url
                    .clone()
                    .unwrap_or_else(|| "https://x.com/i/oauth2/authorize".into()),
                token_url: self
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://api.x.com/2/oauth2/token".into()),
                api_url: self
                    .api_url
                    .clone()
                    .unwrap_or_else(|| "https://api.x.com/2".into()),
            },
        };
        let protocol = match protocol {
            Protocol::Oidc { issuer } => Protocol::Oidc {
                issuer: http_url(&id, "issuer", issuer)?,
            },
            Protocol::OAuth2 {
                authorization_url,
                token_url,
                api_url,
            } => Protocol::OAuth2 {
                authorization_url: http_url(&id, "authorization_url", authorization_url)?,
                token_url: http_url(&id, "token_url", token_url)?,
                api_url: http_url(&id, "api_url", api_url)?
                    .trim_end_matches('/')
                    .to_owned(),
            },
        };
        let client_secret = match &self.client_secret_env {
            Some(variable) => Some(env(variable).filter(|s| !s.is_empty()).ok_or_else(|| {
                SignInConfigError::SecretNotSet {
                    id: id.clone(),
                    variable: variable.clone(),
                }
            })?),
            None => None,
        };
        let scopes = match &self.scopes {
            Some(scopes) => scopes.clone(),
            None => kind
                .default_scopes()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        };
        Ok(Provider {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| kind.default_name().to_owned()),
            id,
            kind,
            protocol,
            client_id: self.client_id.clone(),
            client_secret,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> SignInConfig {
        toml::from_str(toml_text).expect("parses")
    }

    #[test]
    fn presets_fill_in_their_issuers_and_secrets_come_from_the_environment() {
        let config = entry(
            r#"
            [[providers]]
            kind = "google"
            client_id = "g"
            client_secret_env = "G_SECRET"
            [[providers]]
            kind = "microsoft"
            tenant = "contoso"
            client_id = "m"
            [[providers]]
            kind = "github"
            client_id = "gh"
            "#,
        );
        let env = |name: &str| (name == "G_SECRET").then(|| "s3cret".to_owned());
        let providers = config.resolve(env).expect("valid");
        assert_eq!(providers[0].id, "google");
        assert_eq!(providers[0].client_secret.as_deref(), Some("s3cret"));
        assert!(!format!("{:?}", providers[0]).contains("s3cret"));
        assert!(matches!(&providers[1].protocol,
            Protocol::Oidc { issuer } if issuer == "https://login.microsoftonline.com/contoso/v2.0"));
        assert!(matches!(&providers[2].protocol,
            Protocol::OAuth2 { api_url, .. } if api_url == "https://api.github.com"));
        assert_eq!(providers[2].scopes, ["read:user", "user:email"]);
    }

    #[test]
    fn each_mistake_names_the_entry_and_the_setting() {
        let none = |_: &str| None;
        let refused = |text: &str| entry(text).resolve(none).expect_err("refused");
        assert_eq!(
            refused("[[providers]]\nkind = \"oidc\"\nclient_id = \"c\""),
            SignInConfigError::Missing {
                id: "oidc".into(),
                setting: "issuer"
            }
        );
        assert_eq!(
            refused(
                "[[providers]]\nkind = \"google\"\nclient_id = \"c\"\nclient_secret_env = \"NOPE\""
            ),
            SignInConfigError::SecretNotSet {
                id: "google".into(),
                variable: "NOPE".into()
            }
        );
        assert_eq!(
            refused("[[providers]]\nkind = \"google\"\nclient_id = \"a\"\n[[providers]]\nkind = \"google\"\nclient_id = \"b\""),
            SignInConfigError::DuplicateId { id: "google".into() }
        );
        assert_eq!(
            refused("[[providers]]\nkind = \"google\"\nid = \"Bad Id\"\nclient_id = \"a\""),
            SignInConfigError::InvalidId {
                id: "Bad Id".into()
            }
        );
        assert_eq!(
            refused(
                "[[providers]]\nkind = \"google\"\ntoken_url = \"https://x\"\nclient_id = \"a\""
            ),
            SignInConfigError::NotUsed {
                id: "google".into(),
                setting: "token_url",
                kind: "google"
            }
        );
        assert!(toml::from_str::<SignInConfig>(
            "[[providers]]\nkind = \"myspace\"\nclient_id = \"a\""
        )
        .is_err());
    }
}
