//! The frame around every console page: the header with the workspace switcher, the
//! workspace's tabs and sign-out, the notice of what was just done or refused, and the
//! stand-alone page for a refusal that has no page of its own.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::assets::{CSS_PATH, JS_PATH};
use super::csrf::hidden_field;
use super::visitor::Visitor;
use super::{workspace_url, ACCOUNT_PATH, APP_PATH};
use crate::api::html::escape;
use crate::api::workspaces::{list_workspaces, WorkspaceView};
use crate::api::{ApiQuery, PageQuery};
use crate::app::App;
use crate::model::Plan;
use crate::problem::ApiError;

/// What the page says above its content.
pub enum Notice {
    /// A change went through.
    Done(&'static str),
    /// What an action did, in words made for this answer (a test mail sent).
    Text(String),
    /// An action ran and failed (a test mail the server refused); the page itself is `200`.
    Failed(String),
    /// The API refused a change: its `detail`, with its status for the page.
    Refused(ApiError),
}

impl Notice {
    /// The notice named by `?done=` after a redirect; unknown names show nothing.
    pub fn from_query(query: Option<&str>) -> Option<Notice> {
        let done = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(name, _)| name == "done")?
            .1;
        let text = match done.as_ref() {
            "created" => "The workspace is created.",
            "joined" => "You joined the workspace.",
            "renamed" => "The workspace is renamed.",
            "deleted" => "The workspace is deleted.",
            "invited" => "The invitation is sent.",
            "cancelled" => "The invitation is cancelled.",
            "role" => "The role is changed.",
            "removed" => "The member is removed.",
            "source" => "The source is created.",
            "source-deleted" => "The source is deleted.",
            "source-saved" => "The source is saved; nodes take it with the next configuration.",
            "revoked" => "The token is revoked.",
            "cors" => "The CORS origins are saved.",
            "session-ended" => "The session is ended.",
            "unlinked" => "The provider account is unlinked.",
            "grant-revoked" => "The MCP client's access is revoked.",
            "asyncapi" => "Publishing of the AsyncAPI document is changed.",
            "smtp-saved" => "The SMTP settings are saved.",
            "smtp-removed" => "The SMTP settings are removed: mail goes through the platform.",
            "tag-rule" => "The tag rule is created; nodes apply it with the next configuration.",
            "tag-rule-saved" => {
                "The tag rule is saved; nodes apply it with the next configuration."
            }
            "tag-rule-moved" => "The tag rule is moved.",
            "tag-rule-deleted" => "The tag rule is deleted.",
            "output" => "The output is created.",
            "output-saved" => "The output is saved; nodes apply it with the next configuration.",
            "output-deleted" => "The output is deleted.",
            "endpoint" => "The export endpoint is created.",
            "endpoint-deleted" => "The export endpoint is deleted.",
            "endpoint-saved" => {
                "The export endpoint is saved; nodes apply it with the next configuration."
            }
            "webhook-enabled" => "The webhook is enabled: it sends again.",
            "webhook-disabled" => "The webhook is disabled: it sends nothing until enabled.",
            "webhook-deleted" => "The webhook is deleted.",
            "webhook-saved" => "The webhook is saved; nodes apply it with the next configuration.",
            _ => return None,
        };
        Some(Notice::Done(text))
    }

    fn status(&self) -> StatusCode {
        match self {
            Notice::Done(_) | Notice::Text(_) | Notice::Failed(_) => StatusCode::OK,
            Notice::Refused(e) => e.status(),
        }
    }

    fn html(&self) -> String {
        match self {
            Notice::Done(text) => format!("<p class=\"notice\" role=\"status\">{text}</p>"),
            Notice::Text(text) => {
                format!("<p class=\"notice\" role=\"status\">{}</p>", escape(text))
            }
            Notice::Failed(text) => format!(
                "<p class=\"notice refused\" role=\"alert\"><strong>Failed:</strong> {}</p>",
                escape(text)
            ),
            Notice::Refused(e) => format!(
                "<p class=\"notice refused\" role=\"alert\"><strong>Not done:</strong> {}</p>",
                escape(&e.detail)
            ),
        }
    }
}

/// The workspace tabs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Access,
    TagRules,
    DataOut,
    Mail,
    Settings,
}

/// The caller's workspaces, as the first page of `GET /api/v1/workspaces` lists them (empty if
/// it refuses), and whether there are more (the home page pages through them).
async fn workspaces_of(app: &App, visitor: &Visitor) -> (Vec<WorkspaceView>, bool) {
    let page = PageQuery {
        limit: Some(app.config.page_size_max),
        cursor: None,
    };
    match list_workspaces(State(app.clone()), visitor.caller.clone(), ApiQuery(page)).await {
        Ok(Json(page)) => (page.items, page.next_cursor.is_some()),
        Err(_) => (Vec::new(), false),
    }
}

/// A whole console page: `main` (HTML, already escaped) under the header, titled `title`.
/// `current` is the workspace shown and its tab, if any.
pub async fn page(
    app: &App,
    visitor: &Visitor,
    current: Option<(&WorkspaceView, Tab)>,
    title: &str,
    notice: Option<Notice>,
    main: &str,
) -> Response {
    let (workspaces, more) = workspaces_of(app, visitor).await;
    let mut switcher = String::new();
    for ws in &workspaces {
        let is_current = current.is_some_and(|(c, _)| c.id == ws.id);
        switcher.push_str(&format!(
            "<li><a href=\"{}\"{}>{}</a></li>",
            escape(&workspace_url(&ws.slug)),
            if is_current {
                " aria-current=\"true\""
            } else {
                ""
            },
            escape(&ws.name)
        ));
    }
    let summary = current.map_or("Workspaces".to_owned(), |(ws, _)| escape(&ws.name));
    let tabs = match current {
        Some((ws, tab)) => {
            let base = escape(&workspace_url(&ws.slug));
            let link = |t: Tab, path: &str, label: &str| {
                let here = if t == tab {
                    " aria-current=\"page\""
                } else {
                    ""
                };
                format!("<li><a href=\"{base}{path}\"{here}>{label}</a></li>")
            };
            format!(
                "<nav aria-label=\"Workspace\"><ul>{}{}{}{}{}{}</ul></nav>",
                link(Tab::Overview, "", "Overview"),
                link(Tab::Access, "/access", "Access"),
                link(Tab::TagRules, "/tag-rules", "Tag rules"),
                link(Tab::DataOut, "/data-out", "Data out"),
                link(Tab::Mail, "/mail", "Mail"),
                link(Tab::Settings, "/settings", "⚙ Settings"),
            )
        }
        None => String::new(),
    };
    let banner = current.map(|(ws, _)| banner(app, ws)).unwrap_or_default();
    let status = notice.as_ref().map_or(StatusCode::OK, Notice::status);
    let notice = notice.as_ref().map(Notice::html).unwrap_or_default();
    let body = format!(
        "<header><a class=\"brand\" href=\"{APP_PATH}\">Sluice</a>\
<nav aria-label=\"Workspaces\"><details class=\"switcher\"><summary>{summary}</summary>\
<ul>{switcher}{more}<li><a href=\"{APP_PATH}#new-workspace\">+ New workspace</a></li></ul></details></nav>\
{tabs}\
<form class=\"sign-out\" method=\"post\" action=\"/app/sign-out\">{csrf}\
<a href=\"{ACCOUNT_PATH}\">{email}</a><button class=\"secondary\">Sign out</button></form></header>\
<main><h1>{title}</h1>{banner}{notice}{main}</main>",
        csrf = hidden_field(&visitor.csrf),
        more = if more {
            format!("<li><a href=\"{APP_PATH}\">All workspaces…</a></li>")
        } else {
            String::new()
        },
        email = escape(&visitor.caller.user.email),
        title = escape(title),
    );
    document(status, title, &body)
}

/// The banner of a workspace that is disabled, or whose creator's trial is running (when it
/// ends, the workspace is disabled): what happens and who can change it.
fn banner(app: &App, ws: &WorkspaceView) -> String {
    let creator = app.store.read(|s| {
        s.users
            .get(&ws.created_by)
            .map(|u| (u.email.clone(), u.plan, u.operator, u.trial_ends_at))
    });
    let Some((email, plan, operator, ends_at)) = creator else {
        return String::new();
    };
    let ends = ends_at.format("%Y-%m-%d %H:%M UTC");
    if !ws.enabled {
        return format!(
            "<p class=\"banner disabled\" role=\"status\">This workspace is disabled: the \
trial of its creator, {email}, ended on {ends}. It can be read, its tokens revoked, its members \
changed and it can be deleted; it is enabled again when an operator prolongs that trial or \
gives {email} a paid plan.</p>",
            email = escape(&email),
        );
    }
    if plan == Plan::Trial && !operator {
        let days = (ends_at - chrono::Utc::now()).num_days().max(0);
        return format!(
            "<p class=\"banner\" role=\"status\">Trial: the free trial of this workspace's \
creator, {email}, ends on {ends} (in {days} days). The workspace is disabled then, until an \
operator prolongs the trial or gives a paid plan.</p>",
            email = escape(&email),
        );
    }
    String::new()
}

/// A page of its own for a refusal outside any workspace page (a refused form, a workspace
/// that is not the caller's).
pub fn message_page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<main><h1>{title}</h1><p class=\"notice refused\" role=\"alert\">{detail}</p>\
<p><a href=\"{APP_PATH}\">Back to your workspaces</a></p></main>",
        title = escape(title),
        detail = escape(detail),
    );
    document(status, title, &body)
}

/// A page for someone not signed in (password reset): `main` under the title, with `refusal`
/// above it and its status.
pub fn public_page(title: &str, refusal: Option<&ApiError>, main: &str) -> Response {
    let (status, alert) = match refusal {
        Some(e) => (e.status(), Notice::Refused(e.clone()).html()),
        None => (StatusCode::OK, String::new()),
    };
    let body = format!(
        "<main><h1>{title}</h1>{alert}{main}<p><a href=\"/login\">Back to sign-in</a></p></main>",
        title = escape(title),
    );
    document(status, title, &body)
}

fn document(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Sluice</title><link rel=\"stylesheet\" href=\"{CSS_PATH}\">\
<script src=\"{JS_PATH}\" defer></script></head><body>{body}</body></html>",
            title = escape(title),
        )),
    )
        .into_response()
}

/// A `303 See Other` to `path` (after a form: the page is loaded again with GET).
pub fn see_other(path: &str) -> Response {
    axum::response::Redirect::to(path).into_response()
}
