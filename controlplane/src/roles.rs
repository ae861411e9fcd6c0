//! Roles and the one permission table every endpoint consults.
//!
//! The table follows the roles table of the product documents
//! (`../shared/product-docs/README.md`); change it here and nowhere else.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A member's role in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

/// Something a member may try to do in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See the workspace, its members, pending invitations, sources, outputs, export
    /// endpoints, webhooks and their logs, tokens (never secrets) and settings.
    View,
    RenameWorkspace,
    DeleteWorkspace,
    /// Invite, cancel invitations, remove members and change their roles.
    ManageMembers,
    ManageSources,
    /// Create, change, reorder and delete the workspace's tag rules.
    ManageTagRules,
    /// Create, change and delete the workspace's outputs, export endpoints and webhooks (and
    /// test webhooks and rotate their secrets).
    ManageOutputs,
    ManageTokens,
    ManageCors,
    /// Save, remove and test the workspace's SMTP settings.
    ManageSmtp,
    /// Serve the workspace's AsyncAPI document without authentication, or stop.
    PublishAsyncapi,
    /// Send events to the workspace's sources through the MCP endpoint (`sluice_call`), which
    /// forwards them to the data plane. Those who may mint ingest tokens may send events.
    Ingest,
}

impl Action {
    /// The roles allowed to do this.
    pub fn allowed_roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Action::View => &[Admin, Editor, Viewer],
            Action::RenameWorkspace
            | Action::DeleteWorkspace
            | Action::ManageMembers
            | Action::ManageCors
            | Action::PublishAsyncapi => &[Admin],
            Action::ManageSources
            | Action::ManageTagRules
            | Action::ManageOutputs
            | Action::ManageTokens
            | Action::ManageSmtp
            | Action::Ingest => &[Admin, Editor],
        }
    }

    pub fn allows(self, role: Role) -> bool {
        self.allowed_roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_only_view_and_editors_do_not_manage_members_or_cors() {
        assert!(Action::View.allows(Role::Viewer));
        for action in [
            Action::RenameWorkspace,
            Action::DeleteWorkspace,
            Action::ManageMembers,
            Action::ManageSources,
            Action::ManageTagRules,
            Action::ManageOutputs,
            Action::ManageTokens,
            Action::ManageCors,
            Action::PublishAsyncapi,
        ] {
            assert!(!action.allows(Role::Viewer), "{action:?}");
            assert!(action.allows(Role::Admin), "{action:?}");
        }
        assert!(Action::ManageSources.allows(Role::Editor));
        assert!(Action::ManageTokens.allows(Role::Editor));
        assert!(Action::ManageTagRules.allows(Role::Editor));
        assert!(Action::ManageOutputs.allows(Role::Editor));
        assert!(Action::ManageSmtp.allows(Role::Editor));
        assert!(!Action::ManageSmtp.allows(Role::Viewer));
        assert!(Action::Ingest.allows(Role::Editor));
        assert!(!Action::Ingest.allows(Role::Viewer));
        assert!(!Action::ManageMembers.allows(Role::Editor));
        assert!(!Action::ManageCors.allows(Role::Editor));
        assert!(!Action::PublishAsyncapi.allows(Role::Editor));
        assert!(!Action::RenameWorkspace.allows(Role::Editor));
    }
}
