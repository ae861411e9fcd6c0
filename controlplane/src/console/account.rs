//! The account page: the visitor's sessions (end one left open elsewhere), personal access
//! tokens (for scripts and MCP clients: created with the secret shown once, revoked) and the
//! sign-in providers linked to the account (unlinked).

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::frame::{self, Notice};
use super::paging::Paging;
use super::visitor::Visitor;
use super::workspaces::all;
use super::ACCOUNT_PATH;
use crate::api::html::escape;
use crate::api::identities;
use crate::api::personal_tokens::{self, NewPersonalToken};
use crate::api::sessions;
use crate::api::{ApiJson, ApiPath};
use crate::app::App;

/// The account page.
pub async fn page(State(app): State<App>, visitor: Visitor, RawQuery(query): RawQuery) -> Response {
    render_paged(
        &app,
        &visitor,
        Notice::from_query(query.as_deref()),
        None,
        query.as_deref(),
    )
    .await
}

/// A personal token just made: its name and secret, shown this once.
struct NewSecret {
    name: String,
    secret: String,
}

/// The page at the first page of each list.
async fn render(
    app: &App,
    visitor: &Visitor,
    notice: Option<Notice>,
    new_secret: Option<NewSecret>,
) -> Response {
    render_paged(app, visitor, notice, new_secret, None).await
}

/// The page at the pages of its lists that `query` names.
async fn render_paged(
    app: &App,
    visitor: &Visitor,
    notice: Option<Notice>,
    new_secret: Option<NewSecret>,
    query: Option<&str>,
) -> Response {
    let csrf = hidden_field(&visitor.csrf);
    let caller = || visitor.caller.clone();
    let user = &visitor.caller.user;
    let mut main = format!(
        "<section aria-labelledby=\"you\"><h2 id=\"you\">You</h2><p>{first} {last}, \
<strong>{email}</strong></p></section>",
        first = escape(&user.first_name),
        last = escape(&user.last_name),
        email = escape(&user.email),
    );
    if let Some(new) = new_secret {
        main.push_str(&format!(
            "<section aria-labelledby=\"secret-title\"><h2 id=\"secret-title\">Token {name} is made</h2>\
<p>Copy its secret now: it is shown this once and never again.</p>\
<p class=\"secret\"><code id=\"new-token-secret\">{secret}</code>\
<button type=\"button\" data-copy=\"new-token-secret\">Copy</button></p></section>",
            name = escape(&new.name),
            secret = escape(&new.secret),
        ));
    }

    let mut rows = String::new();
    let sessions_page = Paging::from_query(query, "sessions_after");
    let (listed, next) =
        sessions::list_sessions(State(app.clone()), caller(), sessions_page.query(app))
            .await
            .map(|Json(p)| (p.items, p.next_cursor))
            .unwrap_or_default();
    let sessions_pages = sessions_page.links(ACCOUNT_PATH, "sessions", next.as_deref());
    for s in &listed {
        let action = if s.current {
            "this browser".to_owned()
        } else {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"{ACCOUNT_PATH}/sessions/{id}/end\">{csrf}\
<button class=\"secondary\" aria-label=\"End the session {hint}\">End</button></form>",
                id = s.id,
                hint = escape(&s.hint),
            )
        };
        rows.push_str(&format!(
            "<tr><td><code>{hint}</code></td><td>{created}</td><td>{expires}</td><td>{action}</td></tr>",
            hint = escape(&s.hint),
            created = s.created_at.format("%Y-%m-%d %H:%M UTC"),
            expires = s
                .expires_at
                .map_or("never".to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
        ));
    }
    main.push_str(&format!(
        "<section aria-labelledby=\"sessions\"><h2 id=\"sessions\">Sessions</h2><table><thead><tr>\
<th scope=\"col\">Session</th><th scope=\"col\">Started</th><th scope=\"col\">Ends</th>\
<th scope=\"col\">End</th></tr></thead><tbody>{rows}</tbody></table>{sessions_pages}</section>"
    ));

    let mut rows = String::new();
    let tokens_page = Paging::from_query(query, "tokens_after");
    let (tokens, next) =
        personal_tokens::list_personal_tokens(State(app.clone()), caller(), tokens_page.query(app))
            .await
            .map(|Json(p)| (p.items, p.next_cursor))
            .unwrap_or_default();
    let tokens_pages = tokens_page.links(ACCOUNT_PATH, "personal", next.as_deref());
    for t in &tokens {
        let name = escape(&t.name);
        rows.push_str(&format!(
            "<tr><td>{name}</td><td><code>{hint}</code></td><td>{created}</td><td>{expires}</td>\
<td><form class=\"inline\" method=\"post\" action=\"{ACCOUNT_PATH}/tokens/{id}/revoke\">{csrf}\
<button class=\"danger\" aria-label=\"Revoke {name}\">Revoke</button></form></td></tr>",
            hint = escape(&t.hint),
            created = t.created_at.format("%Y-%m-%d %H:%M UTC"),
            expires = t.expires_at.map_or("never".to_owned(), |t| t
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()),
            id = t.id,
        ));
    }
    let table = if tokens.is_empty() {
        "<p class=\"muted\">No personal access tokens.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Secret</th>\
<th scope=\"col\">Created</th><th scope=\"col\">Expires</th><th scope=\"col\">Revoke</th></tr></thead>\
<tbody>{rows}</tbody></table>{tokens_pages}"
        )
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"personal\"><h2 id=\"personal\">Personal access tokens</h2>\
<p class=\"muted\">They act as you, with your role in each workspace, for scripts and MCP clients.</p>\
{table}<form method=\"post\" action=\"{ACCOUNT_PATH}/tokens\">{csrf}\
<label>Name <input name=\"name\" required maxlength=\"100\"></label>\
<label>Expires on (optional) <input name=\"expires_on\" type=\"date\"></label>\
<button>Create personal token</button></form></section>"
    ));
    let identities = identities::list_identities(State(app.clone()), caller(), all(app))
        .await
        .map(|Json(p)| p.items)
        .unwrap_or_default();
    let mut rows = String::new();
    for i in &identities {
        let provider = escape(&i.provider);
        rows.push_str(&format!(
            "<tr><td>{provider}</td><td>{email}</td><td>{linked}</td><td>{used}</td>\
<td><form class=\"inline\" method=\"post\" action=\"{ACCOUNT_PATH}/identities/{id}/unlink\">{csrf}\
<button class=\"secondary\" aria-label=\"Unlink {provider}\">Unlink</button></form></td></tr>",
            email = escape(i.email.as_deref().unwrap_or("")),
            linked = i.linked_at.format("%Y-%m-%d %H:%M UTC"),
            used = i.last_used_at.format("%Y-%m-%d %H:%M UTC"),
            id = i.id,
        ));
    }
    let table = if identities.is_empty() {
        "<p class=\"muted\">None linked: signing in with a provider's button links it.</p>"
            .to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Its address</th>\
<th scope=\"col\">Linked</th><th scope=\"col\">Last used</th><th scope=\"col\">Unlink</th></tr></thead>\
<tbody>{rows}</tbody></table>"
        )
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"identities\"><h2 id=\"identities\">Sign-in providers</h2>{table}</section>"
    ));
    frame::page(app, visitor, None, "Account", notice, &main).await
}

/// The new-token form.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    name: String,
    /// `YYYY-MM-DD`: the token works until the end of that day (UTC); never expires when
    /// empty.
    #[serde(default)]
    expires_on: String,
}

/// Creates a personal token as `POST /api/v1/me/tokens` does and shows its secret on this
/// answer only.
pub async fn create_token(State(app): State<App>, posted: CheckedForm<TokenForm>) -> Response {
    let CheckedForm { visitor, form } = posted;
    let expires_at = match super::access::end_of_day(&form.expires_on) {
        Ok(at) => at,
        Err(refusal) => return render(&app, &visitor, Some(Notice::Refused(refusal)), None).await,
    };
    let new = NewPersonalToken {
        name: form.name,
        expires_at,
    };
    match personal_tokens::create_personal_token(
        State(app.clone()),
        visitor.caller.clone(),
        ApiJson(new),
    )
    .await
    {
        Ok((_, Json(made))) => {
            let secret = made.secret.map(|secret| NewSecret {
                name: made.name,
                secret,
            });
            render(&app, &visitor, None, secret).await
        }
        Err(refusal) => render(&app, &visitor, Some(Notice::Refused(refusal)), None).await,
    }
}

/// Revokes as `DELETE /api/v1/me/tokens/{id}` does.
pub async fn revoke_token(
    State(app): State<App>,
    Path(token): Path<Uuid>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    let result = personal_tokens::revoke_personal_token(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(token),
    )
    .await;
    after(&app, &visitor, result.map(|_| ()), "revoked").await
}

/// Unlinks a provider account as `DELETE /api/v1/me/identities/{id}` does (never the last way
/// to sign in).
pub async fn unlink_identity(
    State(app): State<App>,
    Path(identity): Path<Uuid>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    let result = identities::unlink_identity(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(identity),
    )
    .await;
    after(&app, &visitor, result.map(|_| ()), "unlinked").await
}

/// Ends a session as `DELETE /api/v1/me/sessions/{id}` does.
pub async fn end_session(
    State(app): State<App>,
    Path(session): Path<Uuid>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    let result =
        sessions::end_session(State(app.clone()), visitor.caller.clone(), ApiPath(session)).await;
    after(&app, &visitor, result.map(|_| ()), "session-ended").await
}

async fn after(
    app: &App,
    visitor: &Visitor,
    result: Result<(), crate::problem::ApiError>,
    done: &str,
) -> Response {
    match result {
        Ok(()) => frame::see_other(&format!("{ACCOUNT_PATH}?done={done}")),
        Err(refusal) => render(app, visitor, Some(Notice::Refused(refusal)), None).await,
    }
}
