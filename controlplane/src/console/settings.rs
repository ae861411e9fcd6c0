//! The settings tab (⚙): rename, members and their roles, invitations, and deleting the
//! workspace with its name typed as confirmation.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::frame::{self, Notice, Tab};
use super::paging::Paging;
use super::visitor::Visitor;
use super::workspaces::{load, role_name};
use super::{workspace_url, APP_PATH};
use crate::api::cors::{self, Cors};
use crate::api::html::escape;
use crate::api::invitations::{self, NewInvitation};
use crate::api::members::{self, RoleChange};
use crate::api::workspaces::{self, Rename};
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::problem::{ApiError, ProblemType};
use crate::roles::{Action, Role};

const ROLES: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

/// The role's value in forms and the API (`viewer`, `editor`, `admin`).
fn role_value(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Editor => "editor",
        Role::Viewer => "viewer",
    }
}

fn role_options(selected: Role) -> String {
    ROLES
        .iter()
        .map(|&r| {
            format!(
                "<option value=\"{}\"{}>{}</option>",
                role_value(r),
                if r == selected { " selected" } else { "" },
                role_name(r)
            )
        })
        .collect()
}

/// The settings tab.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    render_paged(
        &app,
        &visitor,
        &key,
        Notice::from_query(query.as_deref()),
        query.as_deref(),
    )
    .await
}

/// The settings tab of workspace `key` with `notice` above it (the first page of each list).
async fn render(app: &App, visitor: &Visitor, key: &str, notice: Option<Notice>) -> Response {
    render_paged(app, visitor, key, notice, None).await
}

/// The settings tab at the pages of its lists that `query` names.
async fn render_paged(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    query: Option<&str>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let base = escape(&workspace_url(&ws.slug));
    let csrf = hidden_field(&visitor.csrf);
    let may = |action: Action| action.allows(ws.role);
    let mut main = String::new();

    // Name: Enter saves (a plain form), Escape or Cancel puts back what was there.
    let name = escape(&ws.name);
    if may(Action::RenameWorkspace) {
        main.push_str(&format!(
            "<section aria-labelledby=\"name\"><h2 id=\"name\">Name</h2>\
<form method=\"post\" action=\"{base}/rename\">{csrf}\
<label>Workspace name <input name=\"name\" value=\"{name}\" required maxlength=\"100\" data-escape-resets></label>\
<button>Save</button><button type=\"reset\" class=\"secondary\">Cancel</button></form>\
<p class=\"muted\">Slug <code>{slug}</code> (stays as it is).</p></section>",
            slug = escape(&ws.slug),
        ));
    } else {
        main.push_str(&format!(
            "<section aria-labelledby=\"name\"><h2 id=\"name\">Name</h2><p>{name} \
(<code>{slug}</code>)</p></section>",
            slug = escape(&ws.slug),
        ));
    }

    // Members, with role changes and removal for those who manage them.
    let caller = || visitor.caller.clone();
    let path = || ApiPath(ws.slug.clone());
    let here = format!("{}/settings", workspace_url(&ws.slug));
    let members_page = Paging::from_query(query, "members_after");
    let (members, next) = members::list_members(
        State(app.clone()),
        caller(),
        path(),
        members_page.query(app),
    )
    .await
    .map(|Json(p)| (p.items, p.next_cursor))
    .unwrap_or_default();
    let members_pages = members_page.links(&here, "members", next.as_deref());
    let manage = may(Action::ManageMembers);
    let mut rows = String::new();
    for m in &members {
        let email = escape(&m.email);
        let controls = if manage {
            format!(
                "<td><form class=\"inline\" method=\"post\" action=\"{base}/members/{id}/role\">{csrf}\
<select name=\"role\" aria-label=\"Role of {email}\">{options}</select><button>Change role</button></form> \
<form class=\"inline\" method=\"post\" action=\"{base}/members/{id}/remove\">{csrf}\
<button class=\"danger\" aria-label=\"Remove {email}\">Remove</button></form></td>",
                id = m.user_id,
                options = role_options(m.role),
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td>{email}</td><td>{first} {last}</td><td>{role}</td>{controls}</tr>",
            first = escape(&m.first_name),
            last = escape(&m.last_name),
            role = role_name(m.role),
        ));
    }
    let actions_head = if manage {
        "<th scope=\"col\">Change</th>"
    } else {
        ""
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"members\"><h2 id=\"members\">Members</h2><table>\
<thead><tr><th scope=\"col\">E-mail</th><th scope=\"col\">Name</th><th scope=\"col\">Role</th>{actions_head}</tr></thead>\
<tbody>{rows}</tbody></table>{members_pages}"
    ));

    // Anyone may leave (the API refuses the last Admin).
    main.push_str(&format!(
        "<form class=\"leave\" method=\"post\" action=\"{base}/members/{me}/remove\">{csrf}\
<button class=\"secondary\">Leave workspace</button></form>",
        me = visitor.caller.user.id,
    ));
    main.push_str("</section>");

    // Invitations: the form, then the pending ones with × to cancel.
    let invitations_page = Paging::from_query(query, "invitations_after");
    let (pending, next) = invitations::list_invitations(
        State(app.clone()),
        caller(),
        path(),
        invitations_page.query(app),
    )
    .await
    .map(|Json(p)| (p.items, p.next_cursor))
    .unwrap_or_default();
    let invitations_pages = invitations_page.links(&here, "invitations", next.as_deref());
    let mut rows = String::new();
    for i in &pending {
        let email = escape(&i.email);
        let cancel = if manage {
            format!(
                "<td><form class=\"inline\" method=\"post\" action=\"{base}/invitations/{id}/cancel\">{csrf}\
<button class=\"secondary\" aria-label=\"Cancel the invitation of {email}\">×</button></form></td>",
                id = i.id,
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td>{email}</td><td>{role}</td><td>{sent}</td>{cancel}</tr>",
            role = role_name(i.role),
            sent = i.created_at.format("%Y-%m-%d %H:%M UTC"),
        ));
    }
    let invite = if manage {
        format!(
            "<form method=\"post\" action=\"{base}/invitations\">{csrf}\
<label>E-mail <input name=\"email\" type=\"email\" required maxlength=\"254\"></label>\
<label>Role <select name=\"role\">{options}</select></label><button>Invite member</button></form>",
            options = role_options(Role::Editor),
        )
    } else {
        String::new()
    };
    let cancel_head = if manage {
        "<th scope=\"col\">Cancel</th>"
    } else {
        ""
    };
    let table = if pending.is_empty() {
        "<p class=\"muted\">No pending invitations.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">E-mail</th><th scope=\"col\">Role</th>\
<th scope=\"col\">Sent</th>{cancel_head}</tr></thead><tbody>{rows}</tbody></table>{invitations_pages}"
        )
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"invitations\"><h2 id=\"invitations\">Invitations</h2>{invite}{table}</section>"
    ));

    // CORS: the browser origins allowed to call the workspace's ingest endpoints.
    let origins = cors::get_cors(State(app.clone()), caller(), path())
        .await
        .map(|Json(c)| c.allowed_origins)
        .unwrap_or_default();
    let listed = escape(&origins.join("\n"));
    let cors = if may(Action::ManageCors) {
        format!(
            "<form method=\"post\" action=\"{base}/cors\">{csrf}\
<p><label for=\"origins\">Allowed origins, one per line (like <code>https://app.example.com</code>)</label></p>\
<p><textarea id=\"origins\" name=\"origins\" rows=\"4\" cols=\"50\">{listed}</textarea></p>\
<p><button>Save origins</button></p></form>"
        )
    } else if origins.is_empty() {
        "<p class=\"muted\">None: only servers and devices call the ingest endpoints.</p>"
            .to_owned()
    } else {
        format!("<pre>{listed}</pre>")
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"cors\"><h2 id=\"cors\">CORS origins</h2>\
<p class=\"muted\">Web pages on these origins may send events from a browser.</p>{cors}</section>"
    ));

    if may(Action::DeleteWorkspace) {
        main.push_str(&format!(
            "<section aria-labelledby=\"danger\"><h2 id=\"danger\">Delete</h2>\
<details><summary>Delete workspace…</summary>\
<p>This deletes the workspace with its members, invitations, tokens, sources, outputs and its \
events in the lake. It cannot be undone.</p>\
<form method=\"post\" action=\"{base}/delete\">{csrf}\
<label>Type <strong>{name}</strong> to confirm <input name=\"confirm\" required autocomplete=\"off\"></label>\
<button class=\"danger\">Delete workspace</button></form></details></section>"
        ));
    }
    let title = format!("{} · Settings", ws.name);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::Settings)),
        &title,
        notice,
        &main,
    )
    .await
}

/// After a change: the settings tab again, saying what was done, or with the refusal.
async fn after<T>(
    app: &App,
    visitor: &Visitor,
    key: &str,
    result: Result<T, ApiError>,
    done: &str,
) -> Response {
    match result {
        Ok(_) => frame::see_other(&format!("{}/settings?done={done}", workspace_url(key))),
        Err(refusal) => render(app, visitor, key, Some(Notice::Refused(refusal))).await,
    }
}

/// The rename form.
#[derive(Debug, Deserialize)]
pub struct RenameForm {
    name: String,
}

/// Renames as `PATCH /api/v1/workspaces/{workspace}` does.
pub async fn rename(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<RenameForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let result = workspaces::rename_workspace(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(Rename { name: form.name }),
    )
    .await;
    after(&app, &visitor, &key, result, "renamed").await
}

/// The delete form: the workspace's name, typed.
#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    confirm: String,
}

/// Deletes as `DELETE /api/v1/workspaces/{workspace}` does, once the name typed matches.
pub async fn delete(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<DeleteForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let ws = match load(&app, &visitor, &key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    if form.confirm.trim() != ws.name.trim() {
        let refusal = ApiError::new(
            ProblemType::InvalidBody,
            format!(
                "the name typed does not match: type {:?} exactly to delete the workspace",
                ws.name
            ),
        );
        return render(&app, &visitor, &key, Some(Notice::Refused(refusal))).await;
    }
    match workspaces::delete_workspace(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!("{APP_PATH}?done=deleted")),
        Err(refusal) => render(&app, &visitor, &key, Some(Notice::Refused(refusal))).await,
    }
}

/// The role form of a member's row.
#[derive(Debug, Deserialize)]
pub struct RoleForm {
    role: Role,
}

/// Changes a role as `PATCH /api/v1/workspaces/{workspace}/members/{user}` does.
pub async fn change_role(
    State(app): State<App>,
    Path((key, user)): Path<(String, Uuid)>,
    posted: CheckedForm<RoleForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let result = members::change_role(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), user.to_string())),
        ApiJson(RoleChange { role: form.role }),
    )
    .await;
    after(&app, &visitor, &key, result, "role").await
}

/// Removes a member as `DELETE /api/v1/workspaces/{workspace}/members/{user}` does.
pub async fn remove_member(
    State(app): State<App>,
    Path((key, user)): Path<(String, Uuid)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    let result = members::remove_member(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), user.to_string())),
    )
    .await;
    if result.is_ok() && user == visitor.caller.user.id {
        // Whoever removed themselves can no longer see the workspace.
        return frame::see_other(APP_PATH);
    }
    after(&app, &visitor, &key, result, "removed").await
}

/// The invitation form.
#[derive(Debug, Deserialize)]
pub struct InviteForm {
    email: String,
    role: Role,
}

/// Invites as `POST /api/v1/workspaces/{workspace}/invitations` does (mail, limits).
pub async fn invite(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<InviteForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let result = invitations::invite(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(NewInvitation {
            email: form.email,
            role: form.role,
        }),
    )
    .await;
    after(&app, &visitor, &key, result, "invited").await
}

/// Cancels as `DELETE /api/v1/workspaces/{workspace}/invitations/{id}` does.
pub async fn cancel_invitation(
    State(app): State<App>,
    Path((key, invitation)): Path<(String, Uuid)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    let result = invitations::cancel_invitation(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), invitation)),
    )
    .await;
    after(&app, &visitor, &key, result, "cancelled").await
}

/// The CORS form: origins, one per line.
#[derive(Debug, Deserialize)]
pub struct CorsForm {
    #[serde(default)]
    origins: String,
}

/// Replaces the origins as `PUT /api/v1/workspaces/{workspace}/cors` does.
pub async fn set_cors(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<CorsForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let allowed_origins = form
        .origins
        .lines()
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    let result = cors::set_cors(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(Cors { allowed_origins }),
    )
    .await;
    after(&app, &visitor, &key, result, "cors").await
}
