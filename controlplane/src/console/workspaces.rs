//! The workspace pages: the list with "+ New workspace" (the console's home) and a workspace's
//! overview.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::frame::{self, Notice, Tab};
use super::ingest;
use super::paging::{count_all, every, Paging};
use super::visitor::Visitor;
use super::{workspace_url, APP_PATH};
use crate::api::asyncapi::{self, PublicForm};
use crate::api::html::escape;
use crate::api::sources::SourceView;
use crate::api::workspaces::{
    create_workspace, get_workspace, list_workspaces, NewWorkspace, WorkspaceView,
};
use crate::api::{members, oauth_grants, sources, tokens, ApiJson, ApiPath, ApiQuery, PageQuery};
use crate::app::App;
use crate::roles::{Action, Role};

/// The workspace `key` names, as `GET /api/v1/workspaces/{workspace}` shows it to the visitor,
/// or a page saying it is not theirs.
pub(super) async fn load(
    app: &App,
    visitor: &Visitor,
    key: &str,
) -> Result<WorkspaceView, Response> {
    get_workspace(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.to_owned()),
    )
    .await
    .map(|Json(ws)| ws)
    .map_err(|e| frame::message_page(e.status(), "No such workspace", &e.detail))
}

/// A page of every item of a list operation, for counts and tables.
pub(super) fn all(app: &App) -> ApiQuery<PageQuery> {
    ApiQuery(PageQuery {
        limit: Some(app.config.page_size_max),
        cursor: None,
    })
}

pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "Admin",
        Role::Editor => "Editor",
        Role::Viewer => "Viewer",
    }
}

/// The console's home: the visitor's workspaces and the form for a new one.
pub async fn index(
    State(app): State<App>,
    visitor: Visitor,
    RawQuery(query): RawQuery,
) -> Response {
    let paging = Paging::from_query(query.as_deref(), "workspaces_after");
    list_page(
        &app,
        &visitor,
        Notice::from_query(query.as_deref()),
        "",
        &paging,
    )
    .await
}

async fn list_page(
    app: &App,
    visitor: &Visitor,
    notice: Option<Notice>,
    typed: &str,
    paging: &Paging,
) -> Response {
    let (workspaces, next) = list_workspaces(
        State(app.clone()),
        visitor.caller.clone(),
        paging.query(app),
    )
    .await
    .map(|Json(p)| (p.items, p.next_cursor))
    .unwrap_or_default();
    let pages = paging.links(APP_PATH, "yours", next.as_deref());
    let mut rows = String::new();
    for ws in workspaces {
        rows.push_str(&format!(
            "<tr><td><a href=\"{}\">{}</a></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            escape(&workspace_url(&ws.slug)),
            escape(&ws.name),
            escape(&ws.slug),
            role_name(ws.role),
            if ws.enabled { "enabled" } else { "disabled" },
        ));
    }
    let main = format!(
        "<section aria-labelledby=\"yours\"><h2 id=\"yours\">Your workspaces</h2>\
<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Slug</th><th scope=\"col\">Your role</th>\
<th scope=\"col\">State</th></tr></thead><tbody>{rows}</tbody></table>{pages}</section>\
<section aria-labelledby=\"new-workspace\"><h2 id=\"new-workspace\">+ New workspace</h2>\
<form method=\"post\" action=\"/app/workspaces\">{csrf}\
<label>Name <input name=\"name\" value=\"{typed}\" required maxlength=\"100\"></label>\
<label>Slug (optional) <input name=\"slug\" pattern=\"[a-z0-9][a-z0-9\\-]{{0,62}}\" placeholder=\"from the name\"></label>\
<button>Create workspace</button></form>\
<p class=\"muted\">You become its Admin. The slug names it in ingest URLs and cannot change.</p></section>",
        csrf = hidden_field(&visitor.csrf),
        typed = escape(typed),
    );
    frame::page(app, visitor, None, "Workspaces", notice, &main).await
}

/// The new-workspace form.
#[derive(Debug, Deserialize)]
pub struct NewWorkspaceForm {
    name: String,
    #[serde(default)]
    slug: String,
}

/// Creates a workspace as `POST /api/v1/workspaces` does and opens it.
pub async fn create(State(app): State<App>, posted: CheckedForm<NewWorkspaceForm>) -> Response {
    let CheckedForm { visitor, form } = posted;
    let slug = Some(form.slug.trim().to_owned()).filter(|s| !s.is_empty());
    let new = NewWorkspace {
        name: form.name.clone(),
        slug,
    };
    match create_workspace(State(app.clone()), visitor.caller.clone(), ApiJson(new)).await {
        Ok((_, Json(ws))) => frame::see_other(&format!("{}?done=created", workspace_url(&ws.slug))),
        Err(refusal) => {
            let first = Paging::first("workspaces_after");
            list_page(
                &app,
                &visitor,
                Some(Notice::Refused(refusal)),
                &form.name,
                &first,
            )
            .await
        }
    }
}

/// A workspace's overview: what it is, the visitor's role, and how much it holds.
pub async fn overview(
    State(app): State<App>,
    visitor: Visitor,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let ws = match load(&app, &visitor, &key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let count = |n: Result<usize, _>| n.map_or("–".to_owned(), |n: usize| n.to_string());
    let caller = || visitor.caller.clone();
    let path = || ApiPath(ws.slug.clone());
    let listed_sources = every(&app, |q| {
        sources::list_sources(State(app.clone()), caller(), path(), q)
    })
    .await;
    let ingest = match &listed_sources {
        Ok(listed) => ingest_section(&app, &ws, listed).await,
        Err(_) => String::new(),
    };
    let sources = listed_sources.map(|listed| listed.len());
    let tokens = count_all(&app, |q| {
        tokens::list_tokens(State(app.clone()), caller(), path(), q)
    })
    .await;
    let members = count_all(&app, |q| {
        members::list_members(State(app.clone()), caller(), path(), q)
    })
    .await;
    let slug = escape(&ws.slug);
    let main = format!(
        "<section aria-labelledby=\"about\"><h2 id=\"about\">About</h2><dl>\
<dt>Slug</dt><dd><code>{slug}</code></dd>\
<dt>Your role</dt><dd>{role}</dd>\
<dt>Created</dt><dd>{created}</dd>\
<dt>Sources</dt><dd>{sources}</dd><dt>Access tokens</dt><dd>{tokens}</dd><dt>Members</dt><dd>{members}</dd>\
</dl><p>Devices send events to <code>POST /v1/ingest/{slug}/&lt;source&gt;</code> on a node, \
with an ingest token from <a href=\"{access}\">Access</a>.</p></section>{ingest}\
<section aria-labelledby=\"mcp\"><h2 id=\"mcp\">MCP</h2>\
<p>AI assistants reach this workspace's API as tools at its MCP URL; the client signs in with \
OAuth (or a personal access token) and gets your role at most.</p>\
<p class=\"secret\"><code id=\"mcp-url\">{mcp}</code>\
<button type=\"button\" data-copy=\"mcp-url\">Copy</button></p>{grants}</section>\
<section aria-labelledby=\"asyncapi\"><h2 id=\"asyncapi\">AsyncAPI</h2>\
<p>The workspace as an AsyncAPI 3.0 document (sources, outputs, export endpoints, webhooks): \
<a href=\"{export}\" download=\"{slug}-asyncapi.json\">Download (JSON)</a>; \
<a href=\"{import}\">Import a document…</a></p>{public}</section>",
        role = role_name(ws.role),
        created = ws.created_at.format("%Y-%m-%d %H:%M UTC"),
        sources = count(sources),
        tokens = count(tokens),
        members = count(members),
        access = escape(&format!("{}/access", workspace_url(&ws.slug))),
        mcp = escape(&format!("{}/mcp/{}", app.config.public_url(), ws.slug)),
        export = escape(&format!("/api/v1/workspaces/{}/asyncapi", ws.slug)),
        import = escape(&format!("{}/asyncapi", workspace_url(&ws.slug))),
        public = asyncapi_public(&app, &visitor, &ws).await,
        grants = oauth_grants(&app, &visitor, &ws).await,
    );
    let title = ws.name.clone();
    frame::page(
        &app,
        &visitor,
        Some((&ws, Tab::Overview)),
        &title,
        Notice::from_query(query.as_deref()),
        &main,
    )
    .await
}

/// Whether the AsyncAPI document is public, where, and (for Admins) the toggle.
async fn asyncapi_public(app: &App, visitor: &Visitor, ws: &WorkspaceView) -> String {
    let Ok(Json(public)) = asyncapi::get_asyncapi_public(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(ws.slug.clone()),
    )
    .await
    else {
        return String::new();
    };
    let state = if public.public {
        format!(
            "<p>Public: anyone may read it at <a href=\"{json}\">{json}</a> and \
<a href=\"{yaml}\">{yaml}</a>.</p>",
            json = escape(&public.json_url),
            yaml = escape(&public.yaml_url),
        )
    } else {
        "<p>Not public: members export it with their sign-in.</p>".to_owned()
    };
    if !Action::PublishAsyncapi.allows(ws.role) {
        return state;
    }
    let (value, label) = if public.public {
        ("false", "Stop publishing")
    } else {
        ("true", "Make public")
    };
    format!(
        "{state}<form method=\"post\" action=\"{base}/asyncapi-public\">{csrf}\
<input type=\"hidden\" name=\"public\" value=\"{value}\"><button class=\"secondary\">{label}</button></form>",
        base = escape(&workspace_url(&ws.slug)),
        csrf = hidden_field(&visitor.csrf),
    )
}

/// The Public toggle.
#[derive(Debug, Deserialize)]
pub struct PublicToggle {
    public: bool,
}

/// Publishes the AsyncAPI document, or stops, as `PUT …/asyncapi/public` does.
pub async fn set_asyncapi_public(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<PublicToggle>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    match asyncapi::set_asyncapi_public(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(PublicForm {
            public: form.public,
        }),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!("{}?done=asyncapi", workspace_url(&key))),
        Err(refusal) => frame::message_page(refusal.status(), "Not changed", &refusal.detail),
    }
}

/// The ingest overview: per source (the first [`ingest::SOURCES_MAX`]), the events written
/// to the lake in the last hour as a sparkline, and the last file written.
async fn ingest_section(app: &App, ws: &WorkspaceView, sources: &[SourceView]) -> String {
    if sources.is_empty() {
        return String::new();
    }
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut rows = String::new();
    // Sources are read a few at once: each is a handful of small reads of object storage,
    // and the page waits for all of them.
    let shown = &sources[..sources.len().min(ingest::SOURCES_MAX)];
    let workspace_id = ws.id;
    let slugs: Vec<String> = shown.iter().map(|s| s.slug.clone()).collect();
    let activities: Vec<_> = futures::stream::iter(slugs)
        .map(|slug| {
            let lake = app.lake.clone();
            async move { ingest::activity(&lake, workspace_id, &slug, now_us).await }
        })
        .buffered(ingest::SOURCES_AT_ONCE)
        .collect()
        .await;
    for (source, activity) in shown.iter().zip(activities) {
        let slug = escape(&source.slug);
        let cells = match activity {
            Ok(activity) => {
                let last = activity.last.as_ref().map_or("none yet".to_owned(), |e| {
                    let at = chrono::DateTime::from_timestamp_micros(e.committed_at_us)
                        .map_or(String::new(), |t| {
                            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                        });
                    let file = e.path.rsplit('/').next().unwrap_or(&e.path);
                    format!(
                        "<code title=\"{path}\">{file}</code>, {rows} events, {at} (node {node})",
                        path = escape(&e.path),
                        file = escape(file),
                        rows = e.rows,
                        node = escape(&e.node),
                    )
                });
                format!(
                    "<td>{spark}</td><td>{at_least}{total}</td><td>{last}</td>",
                    spark = ingest::sparkline(&source.slug, &activity),
                    at_least = if activity.at_least { "at least " } else { "" },
                    total = activity.total,
                )
            }
            Err(e) => {
                tracing::warn!(workspace = %ws.slug, source = %source.slug, error = %e, "reading the commit log for the ingest overview failed");
                format!(
                    "<td colspan=\"3\">not known: the lake's commit log cannot be read ({})</td>",
                    escape(&e.to_string())
                )
            }
        };
        rows.push_str(&format!("<tr><td><code>{slug}</code></td>{cells}</tr>"));
    }
    let more = sources.len().saturating_sub(ingest::SOURCES_MAX);
    let more = if more > 0 {
        format!("<p class=\"muted\">And {more} more sources, not shown.</p>")
    } else {
        String::new()
    };
    format!(
        "<section aria-labelledby=\"ingest\"><h2 id=\"ingest\">Ingest, last hour</h2>\
<p class=\"muted\">Events written to the lake per source (bars of five minutes; events still \
in a node's batch come with its next file) and the last Parquet file written.</p>\
<table><thead><tr><th scope=\"col\">Source</th><th scope=\"col\">Last hour</th>\
<th scope=\"col\">Events</th><th scope=\"col\">Last file</th></tr></thead><tbody>{rows}</tbody></table>{more}</section>"
    )
}

/// For Admins: the MCP clients members allowed into the workspace (OAuth grants), with Revoke.
async fn oauth_grants(app: &App, visitor: &Visitor, ws: &WorkspaceView) -> String {
    if !Action::ManageMembers.allows(ws.role) {
        return String::new();
    }
    let grants = match oauth_grants::list_oauth_grants(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(ws.slug.clone()),
        all(app),
    )
    .await
    {
        Ok(Json(page)) => page.items,
        Err(_) => return String::new(),
    };
    if grants.is_empty() {
        return "<p class=\"muted\">No MCP client has been allowed in yet.</p>".to_owned();
    }
    let base = escape(&workspace_url(&ws.slug));
    let csrf = hidden_field(&visitor.csrf);
    let mut rows = String::new();
    for g in &grants {
        let client = escape(&g.client_name);
        let scopes: Vec<String> = g
            .scopes
            .iter()
            .map(|s| {
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        rows.push_str(&format!(
            "<tr><td>{client}</td><td>{email}</td><td>{scopes}</td><td>{created}</td><td>{used}</td>\
<td><form class=\"inline\" method=\"post\" action=\"{base}/oauth-grants/{id}/revoke\">{csrf}\
<button class=\"danger\" aria-label=\"Revoke {client} for {email}\">Revoke</button></form></td></tr>",
            email = escape(&g.user_email),
            scopes = escape(&scopes.join(" ")),
            created = g.created_at.format("%Y-%m-%d %H:%M UTC"),
            used = g
                .last_used_at
                .map_or("never".to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            id = g.id,
        ));
    }
    format!(
        "<h3>MCP clients with access</h3><table><thead><tr><th scope=\"col\">Client</th>\
<th scope=\"col\">For</th><th scope=\"col\">Scopes</th><th scope=\"col\">Allowed</th>\
<th scope=\"col\">Last used</th><th scope=\"col\">Revoke</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// Revokes a grant as `DELETE /api/v1/workspaces/{workspace}/oauth-grants/{id}` does.
pub async fn revoke_oauth_grant(
    State(app): State<App>,
    Path((key, grant)): Path<(String, uuid::Uuid)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match oauth_grants::revoke_oauth_grant(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), grant)),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!("{}?done=grant-revoked", workspace_url(&key))),
        Err(refusal) => frame::message_page(refusal.status(), "Not revoked", &refusal.detail),
    }
}
