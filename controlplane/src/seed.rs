//! The ready-to-use workspace `sluice up` starts with: workspace `default`, source `telemetry`
//! and an ingest token, owned by the operator. They are ordinary control-plane data: listed,
//! renamed, revoked and deleted through the API like any other.

use chrono::Utc;
use sluice_config::snapshot::Scope;
use sluice_config::token;
use uuid::Uuid;

use crate::model::{secret_hint, AccessToken, Member, Protocol, Source, Workspace};
use crate::roles::Role;
use crate::store::{Change, Store, StoreError};

pub const WORKSPACE: &str = "default";
pub const SOURCE: &str = "telemetry";

/// What was created; the token secret exists nowhere else.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub workspace: String,
    pub source: String,
    pub token: String,
}

/// Creates the default workspace for `owner`, with `token` as its ingest token secret (e.g.
/// the one an earlier data-plane-only start handed out) or a new one.
pub fn seed(store: &Store, owner: Uuid, token: Option<String>) -> Result<Seeded, StoreError> {
    let secret = token.unwrap_or_else(token::generate);
    let now = Utc::now();
    let ws = Workspace {
        id: Uuid::now_v7(),
        slug: WORKSPACE.into(),
        name: "Default".into(),
        created_by: owner,
        created_at: now,
        enabled: true,
        cors_allowed_origins: Vec::new(),
        asyncapi_public: false,
    };
    let changes = vec![
        Change::PutMember(Member {
            workspace_id: ws.id,
            user_id: owner,
            role: Role::Admin,
            joined_at: now,
        }),
        Change::PutSource(Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: SOURCE.into(),
            name: "Telemetry".into(),
            protocols: vec![Protocol::Http, Protocol::Mqtt],
            schema: None,
            on_invalid: Default::default(),
            keep_payload: true,
            created_at: now,
        }),
        Change::PutToken(AccessToken {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            name: "bootstrap ingest token".into(),
            sha256: token::hash_hex(&secret),
            hint: secret_hint(&secret, token::TOKEN_PREFIX),
            scopes: vec![Scope::Ingest],
            sources: None,
            device_id: None,
            endpoints: None,
            expires_at: None,
            created_by: owner,
            created_at: now,
        }),
        Change::PutWorkspace(ws),
    ];
    store.write(|_| Ok::<_, StoreError>((changes, ())))?;
    Ok(Seeded {
        workspace: WORKSPACE.into(),
        source: SOURCE.into(),
        token: secret,
    })
}
