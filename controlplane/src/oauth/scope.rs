//! The scopes a client may be granted, and what each lets its tokens do. A token's effective
//! permission is the member's role table (`roles.rs`) intersected with its scopes: a scope
//! never adds to the role, so a Viewer's `workspace:write` token still only reads.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::roles::Action;

/// One OAuth scope.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Scope {
    /// See the workspace and everything in it (the role's `View`).
    #[serde(rename = "workspace:read")]
    WorkspaceRead,
    /// Change the workspace as the role allows (every other action of the role table).
    #[serde(rename = "workspace:write")]
    WorkspaceWrite,
    /// Send events to the workspace's sources through the MCP endpoint (`sluice_call` with
    /// `POST /v1/ingest/{workspace}/{source}`, forwarded to the data plane).
    #[serde(rename = "ingest")]
    Ingest,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::WorkspaceRead, Scope::WorkspaceWrite, Scope::Ingest];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::WorkspaceRead => "workspace:read",
            Scope::WorkspaceWrite => "workspace:write",
            Scope::Ingest => "ingest",
        }
    }

    /// What the consent page says it allows.
    pub fn description(self) -> &'static str {
        match self {
            Scope::WorkspaceRead => {
                "see the workspace: sources, outputs, tokens (never their secrets), members and settings"
            }
            Scope::WorkspaceWrite => {
                "change the workspace as your role allows: create, change and delete sources, outputs, tokens and settings"
            }
            Scope::Ingest => "send events to the workspace's sources",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, written space-separated in OAuth parameters (RFC 6749 §3.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Scopes(pub BTreeSet<Scope>);

/// A scope this server does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}; the scopes are workspace:read, workspace:write and ingest")]
pub struct UnknownScope(pub String);

impl Scopes {
    /// What a client gets when it asks for no scope: reading and changing the workspace.
    pub fn default_grant() -> Scopes {
        Scopes([Scope::WorkspaceRead, Scope::WorkspaceWrite].into())
    }

    /// Parses a space-separated list; empty gives the empty set.
    pub fn parse(text: &str) -> Result<Scopes, UnknownScope> {
        let mut set = BTreeSet::new();
        for word in text.split_ascii_whitespace() {
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == word)
                .ok_or_else(|| UnknownScope(word.chars().take(64).collect()))?;
            set.insert(scope);
        }
        Ok(Scopes(set))
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn is_subset(&self, other: &Scopes) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether these scopes cover `action` (the role is checked separately).
    pub fn allow(&self, action: Action) -> bool {
        match action {
            Action::View => self.contains(Scope::WorkspaceRead),
            // Sending events changes no setting: `workspace:write` does not imply it, nor
            // `ingest` any change of the workspace.
            Action::Ingest => self.contains(Scope::Ingest),
            _ => self.contains(Scope::WorkspaceWrite),
        }
    }

    /// Whether these scopes let a request with `method` through at all: a read-only token
    /// makes no change, whichever action a handler checks (leaving a workspace needs only
    /// `View` of the role table, yet changes it).
    pub fn allow_method(&self, method: &axum::http::Method) -> bool {
        let reads = matches!(
            *method,
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        );
        if reads {
            self.contains(Scope::WorkspaceRead)
        } else {
            self.contains(Scope::WorkspaceWrite)
        }
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.0.iter().map(|s| s.as_str()).collect();
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_print_and_cover_actions_without_adding_to_roles() {
        let read = Scopes::parse("workspace:read").expect("parses");
        assert!(read.allow(Action::View));
        assert!(!read.allow(Action::ManageSources));
        assert!(!read.allow_method(&axum::http::Method::DELETE));
        let both = Scopes::parse(" workspace:write  workspace:read ").expect("parses");
        assert_eq!(both.to_string(), "workspace:read workspace:write");
        assert!(both.allow(Action::ManageSources));
        assert!(!both.allow(Action::Ingest));
        let ingest = Scopes::parse("ingest").expect("parses");
        assert!(ingest.allow(Action::Ingest) && !ingest.allow(Action::ManageSources));
        assert!(Scopes::parse("admin").is_err());
        assert!(Scopes::parse("").expect("empty").is_empty());
        assert!(read.is_subset(&both) && !both.is_subset(&read));
    }
}
