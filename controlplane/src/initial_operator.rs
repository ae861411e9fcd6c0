//! The operator account made on first start, so that someone can manage plans and trials.
//!
//! Its credentials go to `<data-dir>/initial-operator.json` (mode 0600) and, once, to the log.
//! Later starts find an operator and do nothing.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::auth;
use crate::model::{Plan, User};
use crate::store::{Change, Store, StoreError};

/// File name under the data dir.
pub const FILE_NAME: &str = "initial-operator.json";
/// E-mail address of the initial operator.
pub const EMAIL: &str = "operator@sluice.localhost";

/// What `initial-operator.json` holds.
#[derive(Debug, Serialize)]
pub struct InitialOperator {
    #[serde(skip)]
    pub id: Uuid,
    pub email: String,
    pub password: String,
    pub api_url: String,
}

/// Errors of the first start.
#[derive(Debug, thiserror::Error)]
pub enum InitialOperatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hashing the operator password: {0:?}")]
    Hash(crate::problem::ApiError),
}

/// Creates the operator account when there is none; returns its credentials when it did.
pub(crate) fn ensure(
    store: &Store,
    data_dir: &Path,
    api_url: &str,
) -> Result<Option<InitialOperator>, InitialOperatorError> {
    if store.read(|s| s.users.values().any(|u| u.operator)) {
        return Ok(None);
    }
    let password = auth::new_secret("");
    let password_hash = auth::hash_password(&password).map_err(InitialOperatorError::Hash)?;
    let now = Utc::now();
    let user = User {
        id: Uuid::now_v7(),
        email: EMAIL.into(),
        first_name: "Sluice".into(),
        last_name: "Operator".into(),
        password_hash,
        email_verified: true,
        created_at: now,
        trial_ends_at: now,
        plan: Plan::Paid,
        operator: true,
        code: None,
    };
    let credentials = InitialOperator {
        id: user.id,
        email: EMAIL.into(),
        password,
        api_url: api_url.into(),
    };
    let path = data_dir.join(FILE_NAME);
    let io = |source| InitialOperatorError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    // `mode` applies only to a new file; a leftover one gets it here.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(&serde_json::to_vec_pretty(&credentials).unwrap_or_default())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    store.write(|_| Ok::<_, StoreError>((vec![Change::PutUser(user)], ())))?;
    Ok(Some(credentials))
}
