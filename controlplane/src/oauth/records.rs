//! What the authorization server keeps: registered clients, grants (a member's consent to a
//! client in one workspace), authorization codes and tokens. Every secret (codes, access and
//! refresh tokens) is stored as its SHA-256 only, like sessions and personal tokens.
//!
//! The records live in the control plane's one store (`store.rs` holds a [`OAuthState`] and
//! commits [`OAuthChange`]s through [`commit`]), so they are in its backups and commit
//! before they show like every other record.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::scope::Scopes;
use crate::store::StoreError;

/// Client id -> a registered client.
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_clients");
/// Grant id -> a member's consent to a client in a workspace.
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_grants");
/// Code hash -> an authorization code not yet exchanged (or exchanged, until it expires).
const CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_codes");
/// Token hash -> an access or refresh token of a grant.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_tokens");

/// A client registered by Dynamic Client Registration (RFC 7591). Public clients only: no
/// secret. Clients identified by a metadata document URL are not stored (see
/// `client_metadata.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The last authorization or token request naming it; a client unused for
    /// `oauth_client_unused_days` is forgotten.
    pub last_used_at: DateTime<Utc>,
}

/// A member's consent that a client act for them in one workspace with some scopes. Its
/// tokens work while it exists; revoking it (or reusing a spent refresh token) deletes it
/// with its tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
    pub client_name: String,
    pub scopes: Scopes,
    /// The MCP URL the tokens are for (RFC 8707 `resource`, their audience).
    pub resource: String,
    pub created_at: DateTime<Utc>,
    /// Last token exchange or MCP call, to the minute at best (not written on every call).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An authorization code: one exchange, within seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthCode {
    pub sha256: String,
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    /// PKCE S256 challenge (base64url of the verifier's SHA-256).
    pub code_challenge: String,
    pub user_id: Uuid,
    pub workspace_id: Uuid,
    pub scopes: Scopes,
    pub resource: String,
    pub expires_at: DateTime<Utc>,
    /// The grant its exchange made: a second exchange revokes it (RFC 6749 §4.1.2).
    pub redeemed: Option<Uuid>,
}

/// Whether a token is presented to the resource or to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// An access or refresh token of a grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthToken {
    pub sha256: String,
    pub kind: TokenKind,
    pub grant_id: Uuid,
    pub expires_at: DateTime<Utc>,
    /// A refresh token that was exchanged: presenting it again revokes its grant.
    pub spent: bool,
    /// When it was issued (introspection's `iat`); absent in records written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
}

/// Every OAuth record, indexed for the authorization server's questions.
#[derive(Debug, Default, Clone)]
pub struct OAuthState {
    pub clients: HashMap<String, OAuthClient>,
    /// Grant id -> grant; ids are UUIDv7, so in creation order.
    pub grants: BTreeMap<Uuid, Grant>,
    pub codes: HashMap<String, AuthCode>,
    pub tokens: HashMap<String, OAuthToken>,
}

/// One edit of the OAuth records.
#[derive(Debug, Clone)]
pub enum OAuthChange {
    PutClient(OAuthClient),
    DeleteClient(String),
    PutGrant(Grant),
    DeleteGrant(Uuid),
    PutCode(AuthCode),
    DeleteCode(String),
    PutToken(OAuthToken),
    DeleteToken(String),
}

impl OAuthState {
    pub fn apply(&mut self, change: OAuthChange) {
        match change {
            OAuthChange::PutClient(c) => {
                self.clients.insert(c.client_id.clone(), c);
            }
            OAuthChange::DeleteClient(id) => {
                self.clients.remove(&id);
            }
            OAuthChange::PutGrant(g) => {
                self.grants.insert(g.id, g);
            }
            OAuthChange::DeleteGrant(id) => {
                self.grants.remove(&id);
            }
            OAuthChange::PutCode(c) => {
                self.codes.insert(c.sha256.clone(), c);
            }
            OAuthChange::DeleteCode(hash) => {
                self.codes.remove(&hash);
            }
            OAuthChange::PutToken(t) => {
                self.tokens.insert(t.sha256.clone(), t);
            }
            OAuthChange::DeleteToken(hash) => {
                self.tokens.remove(&hash);
            }
        }
    }

    /// The changes that end `grant` and every token of it.
    pub fn grant_revocation(&self, grant: Uuid) -> Vec<OAuthChange> {
        let mut changes = vec![OAuthChange::DeleteGrant(grant)];
        changes.extend(
            self.tokens
                .values()
                .filter(|t| t.grant_id == grant)
                .map(|t| OAuthChange::DeleteToken(t.sha256.clone())),
        );
        changes
    }

    /// The grants of a workspace, oldest first.
    pub fn grants_of(&self, workspace: Uuid) -> impl Iterator<Item = &Grant> {
        self.grants
            .values()
            .filter(move |g| g.workspace_id == workspace)
    }
}

fn load<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    use redb::ReadableTable;
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, value) = row?;
        out.push(serde_json::from_slice(value.value())?);
    }
    Ok(out)
}

/// Reads every OAuth record of the store.
pub fn load_all(txn: &redb::ReadTransaction, state: &mut OAuthState) -> Result<(), StoreError> {
    for c in load::<OAuthClient>(txn, CLIENTS)? {
        state.apply(OAuthChange::PutClient(c));
    }
    for g in load::<Grant>(txn, GRANTS)? {
        state.apply(OAuthChange::PutGrant(g));
    }
    for c in load::<AuthCode>(txn, CODES)? {
        state.apply(OAuthChange::PutCode(c));
    }
    for t in load::<OAuthToken>(txn, TOKENS)? {
        state.apply(OAuthChange::PutToken(t));
    }
    Ok(())
}

/// Writes the OAuth changes among `changes` in the store's transaction `txn` (after the
/// store's own tables are closed: redb opens a table once per transaction).
pub fn commit<'a>(
    txn: &redb::WriteTransaction,
    changes: impl Iterator<Item = &'a OAuthChange>,
) -> Result<(), StoreError> {
    let mut clients = txn.open_table(CLIENTS)?;
    let mut grants = txn.open_table(GRANTS)?;
    let mut codes = txn.open_table(CODES)?;
    let mut tokens = txn.open_table(TOKENS)?;
    for change in changes {
        match change {
            OAuthChange::PutClient(c) => {
                clients.insert(c.client_id.as_str(), encode(c)?.as_slice())?;
            }
            OAuthChange::DeleteClient(id) => {
                clients.remove(id.as_str())?;
            }
            OAuthChange::PutGrant(g) => {
                grants.insert(g.id.to_string().as_str(), encode(g)?.as_slice())?;
            }
            OAuthChange::DeleteGrant(id) => {
                grants.remove(id.to_string().as_str())?;
            }
            OAuthChange::PutCode(c) => {
                codes.insert(c.sha256.as_str(), encode(c)?.as_slice())?;
            }
            OAuthChange::DeleteCode(hash) => {
                codes.remove(hash.as_str())?;
            }
            OAuthChange::PutToken(t) => {
                tokens.insert(t.sha256.as_str(), encode(t)?.as_slice())?;
            }
            OAuthChange::DeleteToken(hash) => {
                tokens.remove(hash.as_str())?;
            }
        }
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Change, Store};

    fn grant() -> Grant {
        Grant {
            id: Uuid::now_v7(),
            workspace_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            client_id: "sluice_ocl_x".into(),
            client_name: "Agent".into(),
            scopes: Scopes::default_grant(),
            resource: "http://127.0.0.1/mcp/plant".into(),
            created_at: Utc::now(),
            last_used_at: None,
        }
    }

    fn token(grant: Uuid, hash: &str, kind: TokenKind) -> OAuthToken {
        OAuthToken {
            sha256: hash.into(),
            kind,
            grant_id: grant,
            expires_at: Utc::now(),
            spent: false,
            issued_at: None,
        }
    }

    /// Grants and their tokens survive a restart, make no configuration version (nodes never
    /// see them), and a revocation takes the grant with every token of it, and nothing else.
    #[test]
    fn grants_and_tokens_survive_reopen_and_a_revocation_takes_all_tokens_of_its_grant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.redb");
        let (kept, revoked) = (grant(), grant());
        {
            let store = Store::open(&path).expect("open");
            let changes = vec![
                OAuthChange::PutGrant(kept.clone()),
                OAuthChange::PutGrant(revoked.clone()),
                OAuthChange::PutToken(token(kept.id, "a1", TokenKind::Access)),
                OAuthChange::PutToken(token(revoked.id, "a2", TokenKind::Access)),
                OAuthChange::PutToken(token(revoked.id, "r2", TokenKind::Refresh)),
            ];
            store
                .write(|_| {
                    Ok::<_, StoreError>((changes.into_iter().map(Change::OAuth).collect(), ()))
                })
                .expect("write");
            assert_eq!(store.read(|s| s.config_version), 0);
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.read(|s| s.oauth.tokens.len()), 3);
        store
            .write(|s| {
                let changes = s.oauth.grant_revocation(revoked.id);
                Ok::<_, StoreError>((changes.into_iter().map(Change::OAuth).collect(), ()))
            })
            .expect("revoke");
        drop(store);
        let store = Store::open(&path).expect("reopen");
        store.read(|s| {
            assert!(s.oauth.grants.contains_key(&kept.id));
            assert!(!s.oauth.grants.contains_key(&revoked.id));
            let left: Vec<&str> = s.oauth.tokens.keys().map(String::as_str).collect();
            assert_eq!(left, ["a1"]);
        });
    }
}
