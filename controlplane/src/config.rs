//! Settings of the control plane, with their defaults. The `sluice` command fills this from the
//! `[controlplane]` table of the TOML file, `SLUICE_*` environment variables and flags
//! (docs/configuration.md lists them).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::sign_in::config::SignInConfig;

/// Everything the control plane needs to start.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Root of its files: `controlplane.redb`, `initial-operator.json`, `outbox/`,
    /// `config-snapshot.json`.
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    /// The address people reach the API at; used in links sent by e-mail. Derived from
    /// `api_addr` when unset.
    pub public_url: Option<String>,
    /// Where devices reach HTTP ingest, as workspaces' AsyncAPI documents name it
    /// (`servers.http`); `sluice up` derives it from the node's `http.addr` when unset.
    pub ingest_public_url: Option<String>,
    /// Where devices reach MQTT (`mqtt://` or `mqtts://`), as workspaces' AsyncAPI documents
    /// name it (`servers.mqtt`); `sluice up` derives it from the node's `mqtt.addr` when unset.
    pub mqtt_public_url: Option<String>,
    /// Platform SMTP server, e.g. `smtp://user:pass@mail.example.com:587?tls=required` or
    /// `smtps://...`; without it mail goes to `<data-dir>/outbox` and the log.
    pub smtp_url: Option<String>,
    /// Sender of platform mail.
    pub mail_from: String,
    /// Extra CA certificate (PEM file) trusted for SMTP over TLS, platform and workspace
    /// servers alike, besides the web PKI roots (for servers with a private CA).
    pub smtp_ca_file: Option<PathBuf>,
    /// Key (64 hex digits) that encrypts stored secrets such as workspace SMTP passwords.
    /// Read from `secret_key_file` when unset.
    pub secret_key: Option<String>,
    /// File holding the key; created with a random key on first start when missing.
    /// Default `<data_dir>/secret.key`.
    pub secret_key_file: Option<PathBuf>,
    /// Earlier keys, to open secrets sealed before a rotation; they are sealed again with the
    /// current key at start.
    pub previous_secret_keys: Vec<String>,
    /// Let workspace SMTP servers and webhook receivers be on loopback, private or link-local
    /// addresses, and webhook URLs be `http://` (off: a workspace Admin or Editor could
    /// otherwise reach hosts on the operator's network). Nodes get it with each webhook.
    pub smtp_allow_private_hosts: bool,
    /// Shared secret data-plane nodes present to receive the configuration stream and report
    /// webhook deliveries; webhook signing secrets travel to nodes sealed with it. The stream
    /// is off without it.
    pub cluster_secret: Option<String>,
    /// Streams of configuration to nodes at once at most.
    pub config_streams_max: usize,
    /// Test sends of workspace SMTP settings per workspace per hour.
    pub smtp_tests_per_workspace_per_hour: u32,
    /// Object storage of the data plane, to delete a deleted workspace's data; the same
    /// default as the data plane (`<data-dir>/lake`).
    pub object_store: Option<String>,
    /// Length of a new user's free trial.
    pub trial_duration_secs: u64,
    /// How often ended trials are looked for.
    pub trial_check_interval_ms: u64,
    pub session_ttl_secs: u64,
    /// How long an invitation link works.
    pub invitation_ttl_secs: u64,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Connections open at once; more are answered `503 overloaded` and closed. Each holds a
    /// file descriptor of the process, which in `sluice up` is also the data plane's.
    pub connections_max: usize,
    /// A connection waiting this long for a request head (idle between requests, or sending
    /// one slowly) is closed.
    pub idle_timeout_ms: u64,
    /// Requests handled at once; more are answered 503.
    pub concurrent_requests_max: usize,
    /// A request taking longer is answered 503.
    pub request_timeout_ms: u64,
    /// A request body must arrive whole within this, else `408 body-timeout`; it is read
    /// before the request counts against `concurrent_requests_max`.
    pub body_read_timeout_ms: u64,
    /// After a body's first 5 s, the slowest it may arrive on average (else `408`).
    pub body_bytes_per_second_min: usize,
    /// Invitations a workspace may send per day.
    pub invitations_per_workspace_per_day: u32,
    /// Invitations one user may send per day, across workspaces.
    pub invitations_per_inviter_per_day: u32,
    /// Failed sign-ins per account from one client address per 15 minutes before sign-in
    /// from that address is refused.
    pub sign_in_failures_per_account: u32,
    /// Failed sign-ins per account from all addresses together per 15 minutes before every
    /// sign-in to it is refused: the wall a guesser on many addresses meets.
    pub sign_in_failures_per_account_all_addresses: u32,
    /// Sign-in attempts per client address per 15 minutes.
    pub sign_in_attempts_per_address: u32,
    /// Code guesses (e-mail verification, password reset) per client address per 15 minutes;
    /// each code also allows 5 guesses only.
    pub code_attempts_per_address: u32,
    /// Mails (verification and reset codes) per account per hour.
    pub codes_per_account_per_hour: u32,
    /// Sign-ups per client address per hour.
    pub sign_ups_per_address_per_hour: u32,
    /// Mails waiting to be sent at most; further sends are refused with 503.
    pub mail_queue_max: usize,
    /// Bound on one SMTP exchange.
    pub smtp_timeout_ms: u64,
    /// Records per page at most (the default page is 50).
    pub page_size_max: usize,
    /// Sessions one user holds at most; signing in past it ends the oldest.
    pub sessions_per_user_max: usize,
    pub personal_tokens_per_user_max: usize,
    /// Workspaces one user may have created.
    pub workspaces_per_user_max: usize,
    pub sources_per_workspace_max: usize,
    pub tokens_per_workspace_max: usize,
    /// Lifetime of an OAuth access token of the MCP endpoints (refresh tokens give new ones).
    pub oauth_access_token_ttl_secs: u64,
    /// A dynamically registered OAuth client not used for this many days is forgotten.
    pub oauth_client_unused_days: u64,
    /// Dynamic OAuth client registrations per client address per hour.
    pub oauth_registrations_per_address_per_hour: u32,
    /// MCP requests handled at once (each may run a tool's API call); more get a `503`
    /// JSON-RPC error.
    pub mcp_requests_max: usize,
    /// Sign-in with OpenID Connect and OAuth 2 providers: `[controlplane.sign_in]` and its
    /// `[[controlplane.sign_in.providers]]`.
    pub sign_in: SignInConfig,
    /// Nudged after each version written to `config-snapshot.json`, for a data-plane node
    /// following that file in the same process (`sluice up`). Not a setting.
    #[serde(skip)]
    pub snapshot_written: Option<sluice_config::nudge::SnapshotNudge>,
}

impl std::fmt::Debug for ControlPlaneConfig {
    /// Everything but the secrets: the key and the SMTP URL (which may carry a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("data_dir", &self.data_dir)
            .field("api_addr", &self.api_addr)
            .field("public_url", &self.public_url)
            .field("ingest_public_url", &self.ingest_public_url)
            .field("mqtt_public_url", &self.mqtt_public_url)
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<set>"))
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| "<set>"),
            )
            .field("secret_key_file", &self.secret_key_file)
            .field("sign_in", &self.sign_in)
            .finish_non_exhaustive()
    }
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            data_dir: PathBuf::from("data"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            ingest_public_url: None,
            mqtt_public_url: None,
            smtp_url: None,
            mail_from: "Sluice <no-reply@sluice.localhost>".into(),
            smtp_ca_file: None,
            secret_key: None,
            secret_key_file: None,
            previous_secret_keys: Vec::new(),
            smtp_allow_private_hosts: false,
            smtp_tests_per_workspace_per_hour: 20,
            cluster_secret: None,
            config_streams_max: 1000,
            object_store: None,
            trial_duration_secs: 14 * 24 * 3600,
            trial_check_interval_ms: 60_000,
            session_ttl_secs: 14 * 24 * 3600,
            invitation_ttl_secs: 7 * 24 * 3600,
            body_bytes_max: 1 << 20,
            // Room for every configuration stream (`config_streams_max`) and as many people
            // again, far below the descriptors a server gets (see docs/configuration.md).
            connections_max: 2048,
            idle_timeout_ms: 30_000,
            concurrent_requests_max: 1024,
            request_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            body_bytes_per_second_min: 1024,
            invitations_per_workspace_per_day: 50,
            invitations_per_inviter_per_day: 100,
            sign_in_failures_per_account: 10,
            sign_in_failures_per_account_all_addresses: 100,
            sign_in_attempts_per_address: 100,
            code_attempts_per_address: 50,
            codes_per_account_per_hour: 5,
            sign_ups_per_address_per_hour: 20,
            mail_queue_max: 1000,
            smtp_timeout_ms: 10_000,
            page_size_max: 200,
            sessions_per_user_max: 100,
            personal_tokens_per_user_max: 100,
            workspaces_per_user_max: 100,
            sources_per_workspace_max: 1000,
            tokens_per_workspace_max: 10_000,
            oauth_access_token_ttl_secs: 3600,
            oauth_client_unused_days: 30,
            oauth_registrations_per_address_per_hour: 20,
            mcp_requests_max: 64,
            sign_in: SignInConfig::default(),
            snapshot_written: None,
        }
    }
}

/// Where devices reach HTTP ingest when nothing says: the data plane's default address.
pub const INGEST_PUBLIC_URL_DEFAULT: &str = "http://127.0.0.1:8081";
/// Where devices reach MQTT when nothing says: the data plane's default address.
pub const MQTT_PUBLIC_URL_DEFAULT: &str = "mqtt://127.0.0.1:1883";

/// Shortest cluster secret accepted: it guards every token hash.
pub const CLUSTER_SECRET_CHARS_MIN: usize = 16;

/// Longest duration a setting may have (100 years), so that time arithmetic cannot overflow.
const DURATION_SECS_MAX: u64 = 100 * 365 * 24 * 3600;

/// Bounds of `smtp_timeout_ms`: shorter gives up on healthy but slow servers, longer holds a
/// workspace's sending slots (and a test send's request) for minutes.
pub const SMTP_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1000..=120_000;

/// Most API connections that may be configured: more could never get descriptors (Linux
/// allows a process 1,048,576 by default, `fs.nr_open`).
pub const CONNECTIONS_MAX_LIMIT: usize = 1 << 20;

/// A setting the control plane cannot work with. Each says which setting, what is wrong and
/// what to set instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is over 100 years ({secs} s); set a shorter duration")]
    DurationTooLong { name: &'static str, secs: u64 },
    #[error(
        "cluster_secret must have at least {CLUSTER_SECRET_CHARS_MIN} characters (it has {chars}); \
         use a longer random secret, e.g. `openssl rand -hex 32`"
    )]
    ClusterSecretTooShort { chars: usize },
    #[error(
        "smtp_timeout_ms must be {} to {} (it is {ms}); set it within that range",
        SMTP_TIMEOUT_MS_RANGE.start(),
        SMTP_TIMEOUT_MS_RANGE.end()
    )]
    SmtpTimeoutOutOfRange { ms: u64 },
    #[error("{name} must be above 0; leave it unset for the default")]
    Zero { name: &'static str },
    #[error(
        "{name} must be an absolute URL with a host and a scheme of {schemes} (it is {value:?})"
    )]
    BadPublicUrl {
        name: &'static str,
        schemes: &'static str,
        value: String,
    },
    #[error(
        "connections_max must be at most {CONNECTIONS_MAX_LIMIT} (it is {value}); set a lower one"
    )]
    TooManyConnections { value: usize },
}

impl ControlPlaneConfig {
    /// Refuses settings the control plane cannot work with; the first mistake found is
    /// reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, secs) in [
            ("trial_duration_secs", self.trial_duration_secs),
            ("session_ttl_secs", self.session_ttl_secs),
            ("invitation_ttl_secs", self.invitation_ttl_secs),
            (
                "oauth_access_token_ttl_secs",
                self.oauth_access_token_ttl_secs,
            ),
        ] {
            if secs > DURATION_SECS_MAX {
                return Err(ConfigError::DurationTooLong { name, secs });
            }
        }
        if let Some(secret) = &self.cluster_secret {
            if secret.len() < CLUSTER_SECRET_CHARS_MIN {
                return Err(ConfigError::ClusterSecretTooShort {
                    chars: secret.len(),
                });
            }
        }
        if !SMTP_TIMEOUT_MS_RANGE.contains(&self.smtp_timeout_ms) {
            return Err(ConfigError::SmtpTimeoutOutOfRange {
                ms: self.smtp_timeout_ms,
            });
        }
        for (name, value) in [
            ("session_ttl_secs", self.session_ttl_secs as usize),
            ("invitation_ttl_secs", self.invitation_ttl_secs as usize),
            ("page_size_max", self.page_size_max),
            ("mail_queue_max", self.mail_queue_max),
            ("concurrent_requests_max", self.concurrent_requests_max),
            ("body_bytes_max", self.body_bytes_max),
            ("body_read_timeout_ms", self.body_read_timeout_ms as usize),
            ("connections_max", self.connections_max),
            ("idle_timeout_ms", self.idle_timeout_ms as usize),
            (
                "oauth_access_token_ttl_secs",
                self.oauth_access_token_ttl_secs as usize,
            ),
            ("mcp_requests_max", self.mcp_requests_max),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        if self.connections_max > CONNECTIONS_MAX_LIMIT {
            return Err(ConfigError::TooManyConnections {
                value: self.connections_max,
            });
        }
        for (name, value, schemes) in [
            (
                "ingest_public_url",
                &self.ingest_public_url,
                ["http", "https"].as_slice(),
            ),
            ("mqtt_public_url", &self.mqtt_public_url, &["mqtt", "mqtts"]),
        ] {
            let Some(value) = value else { continue };
            let fits = url::Url::parse(value)
                .is_ok_and(|u| u.host_str().is_some() && schemes.contains(&u.scheme()));
            if !fits {
                return Err(ConfigError::BadPublicUrl {
                    name,
                    schemes: if name == "mqtt_public_url" {
                        "mqtt or mqtts"
                    } else {
                        "http or https"
                    },
                    value: value.clone(),
                });
            }
        }
        if self.idle_timeout_ms > DURATION_SECS_MAX * 1000 {
            return Err(ConfigError::DurationTooLong {
                name: "idle_timeout_ms",
                secs: self.idle_timeout_ms / 1000,
            });
        }
        Ok(())
    }

    /// Where devices reach HTTP ingest and MQTT, for AsyncAPI documents: the settings, else
    /// the data plane's default addresses.
    pub fn device_urls(&self) -> crate::asyncapi::PublicUrls {
        let trim = |url: &str| url.trim_end_matches('/').to_owned();
        crate::asyncapi::PublicUrls {
            ingest: self
                .ingest_public_url
                .as_deref()
                .map_or_else(|| INGEST_PUBLIC_URL_DEFAULT.to_owned(), trim),
            mqtt: self
                .mqtt_public_url
                .as_deref()
                .map_or_else(|| MQTT_PUBLIC_URL_DEFAULT.to_owned(), trim),
        }
    }

    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.api_addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(ControlPlaneConfig::default().validate(), Ok(()));
    }

    #[test]
    fn each_mistake_is_named_with_what_to_do() {
        let with = |change: fn(&mut ControlPlaneConfig)| {
            let mut config = ControlPlaneConfig::default();
            change(&mut config);
            config.validate().expect_err("refused")
        };
        let too_long = with(|c| c.session_ttl_secs = DURATION_SECS_MAX + 1);
        assert_eq!(
            too_long,
            ConfigError::DurationTooLong {
                name: "session_ttl_secs",
                secs: DURATION_SECS_MAX + 1
            }
        );
        assert!(
            too_long.to_string().contains("over 100 years"),
            "{too_long}"
        );
        let short = with(|c| c.cluster_secret = Some("short".into()));
        assert_eq!(short, ConfigError::ClusterSecretTooShort { chars: 5 });
        assert!(
            short.to_string().contains("at least 16 characters"),
            "{short}"
        );
        let timeout = with(|c| c.smtp_timeout_ms = 999);
        assert_eq!(timeout, ConfigError::SmtpTimeoutOutOfRange { ms: 999 });
        assert!(
            timeout
                .to_string()
                .starts_with("smtp_timeout_ms must be 1000 to 120000"),
            "{timeout}"
        );
        let url = with(|c| c.mqtt_public_url = Some("http://mqtt.example.com".into()));
        assert!(
            url.to_string()
                .starts_with("mqtt_public_url must be an absolute URL"),
            "{url}"
        );
        let url = with(|c| c.ingest_public_url = Some("ingest.example.com".into()));
        assert!(url.to_string().contains("http or https"), "{url}");
        let fine = ControlPlaneConfig {
            ingest_public_url: Some("https://ingest.example.com/base/".into()),
            mqtt_public_url: Some("mqtts://mqtt.example.com:8883".into()),
            ..ControlPlaneConfig::default()
        };
        assert_eq!(fine.validate(), Ok(()));
        assert_eq!(fine.device_urls().ingest, "https://ingest.example.com/base");
        let connections = with(|c| c.connections_max = CONNECTIONS_MAX_LIMIT + 1);
        assert_eq!(
            connections,
            ConfigError::TooManyConnections {
                value: CONNECTIONS_MAX_LIMIT + 1
            }
        );
        assert_eq!(
            with(|c| c.idle_timeout_ms = 0),
            ConfigError::Zero {
                name: "idle_timeout_ms"
            }
        );
        let zero = with(|c| c.page_size_max = 0);
        assert_eq!(
            zero,
            ConfigError::Zero {
                name: "page_size_max"
            }
        );
        assert!(
            zero.to_string()
                .starts_with("page_size_max must be above 0"),
            "{zero}"
        );
    }
}
