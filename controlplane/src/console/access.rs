//! The Access tab: sources (where devices send) and access tokens (who may send or read). A
//! new token's secret is on the answer page once, with a copy button, and never in a URL.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::endpoints;
use super::fields::Fields;
use super::frame::{self, Notice, Tab};
use super::paging::Paging;
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::html::escape;
use crate::api::sources::{self, NewSource};
use crate::api::tokens::{self, NewAccessToken, TokenScope};
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::problem::{ApiError, ProblemType};
use crate::roles::Action;

/// The Access tab.
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
        None,
        query.as_deref(),
    )
    .await
}

/// A token just made: its name and its secret, shown this once.
struct NewSecret {
    name: String,
    secret: String,
}

/// The tab at the first page of each list.
async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    new_secret: Option<NewSecret>,
) -> Response {
    render_paged(app, visitor, key, notice, new_secret, None).await
}

/// The tab at the pages of its lists that `query` names.
async fn render_paged(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    new_secret: Option<NewSecret>,
    query: Option<&str>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let base = escape(&workspace_url(&ws.slug));
    let csrf = hidden_field(&visitor.csrf);
    let caller = || visitor.caller.clone();
    let path = || ApiPath(ws.slug.clone());
    let mut main = String::new();

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

    // Sources.
    let here = format!("{}/access", workspace_url(&ws.slug));
    let sources_page = Paging::from_query(query, "sources_after");
    let (sources, next) = sources::list_sources(
        State(app.clone()),
        caller(),
        path(),
        sources_page.query(app),
    )
    .await
    .map(|Json(p)| (p.items, p.next_cursor))
    .unwrap_or_default();
    let sources_pages = sources_page.links(&here, "sources", next.as_deref());
    let manage_sources = Action::ManageSources.allows(ws.role);
    let mut rows = String::new();
    for s in &sources {
        let protocols: Vec<String> = s
            .protocols
            .iter()
            .map(|p| format!("{p:?}").to_uppercase())
            .collect();
        let slug = escape(&s.slug);
        let delete = if manage_sources {
            format!(
                "<td><form class=\"inline\" method=\"post\" action=\"{base}/sources/{slug}/delete\">{csrf}\
<button class=\"danger\" aria-label=\"Delete the source {slug}\">Delete</button></form></td>"
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td><a href=\"{base}/sources/{slug}\"><code>{slug}</code></a></td><td>{name}</td><td>{protocols}</td><td>{schema}</td>{delete}</tr>",
            name = escape(&s.name),
            protocols = protocols.join(", "),
            schema = if s.schema.is_some() { "yes" } else { "none" },
        ));
    }
    let table = if sources.is_empty() {
        "<p class=\"muted\">No sources yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Slug</th><th scope=\"col\">Name</th>\
<th scope=\"col\">Protocols</th><th scope=\"col\">Schema</th>{delete_head}</tr></thead><tbody>{rows}</tbody></table>{sources_pages}",
            delete_head = if manage_sources {
                "<th scope=\"col\">Delete</th>"
            } else {
                ""
            },
        )
    };
    let form = if manage_sources {
        format!(
            "<h3>New source</h3><form method=\"post\" action=\"{base}/sources\">{csrf}\
<label>Slug <input name=\"slug\" required pattern=\"[a-z0-9][a-z0-9\\-]{{0,62}}\"></label>\
<label>Name (optional) <input name=\"name\" maxlength=\"100\"></label>\
<button>Create source</button></form>\
<p class=\"muted\">It takes HTTP and MQTT and any JSON object; its page (the slug's link) sets \
a schema, and the <a href=\"{base}/tag-rules\">Tag rules</a> tab lifts values into tags.</p>"
        )
    } else {
        String::new()
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"sources\"><h2 id=\"sources\">Sources</h2>{table}{form}</section>"
    ));

    // Access tokens.
    let tokens_page = Paging::from_query(query, "tokens_after");
    let (tokens, next) =
        tokens::list_tokens(State(app.clone()), caller(), path(), tokens_page.query(app))
            .await
            .map(|Json(p)| (p.items, p.next_cursor))
            .unwrap_or_default();
    let tokens_pages = tokens_page.links(&here, "tokens", next.as_deref());
    let manage = Action::ManageTokens.allows(ws.role);
    let mut rows = String::new();
    for t in &tokens {
        let name = escape(&t.name);
        let scopes: Vec<&str> = t
            .scopes
            .iter()
            .map(|s| match s {
                TokenScope::Ingest => "ingest",
                TokenScope::Read => "read",
            })
            .collect();
        let mut limits = match (&t.sources, &t.endpoints) {
            (Some(sources), _) => format!("sources {}", escape(&sources.join(", "))),
            (None, Some(endpoints)) => format!("endpoints {}", escape(&endpoints.join(", "))),
            (None, None) => "all".to_owned(),
        };
        if let Some(device) = &t.device_id {
            limits.push_str(&format!("; device {}", escape(device)));
        }
        if let Some(at) = t.expires_at {
            limits.push_str(&format!("; until {}", at.format("%Y-%m-%d %H:%M UTC")));
        }
        let revoke = if manage {
            format!(
                "<td><form class=\"inline\" method=\"post\" action=\"{base}/tokens/{id}/revoke\">{csrf}\
<button class=\"danger\" aria-label=\"Revoke {name}\">Revoke</button></form></td>",
                id = t.id,
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td>{name}</td><td><code>{hint}</code></td><td>{scopes}</td><td>{limits}</td><td>{created}</td>{revoke}</tr>",
            hint = escape(&t.hint),
            scopes = scopes.join(", "),
            created = t.created_at.format("%Y-%m-%d %H:%M UTC"),
        ));
    }
    let revoke_head = if manage {
        "<th scope=\"col\">Revoke</th>"
    } else {
        ""
    };
    let table = if tokens.is_empty() {
        "<p class=\"muted\">No access tokens yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Secret</th>\
<th scope=\"col\">Scope</th><th scope=\"col\">Limited to</th><th scope=\"col\">Created</th>{revoke_head}</tr></thead>\
<tbody>{rows}</tbody></table>{tokens_pages}"
        )
    };
    let form = if manage {
        // Every source, not only this page's: the token may be for any of them.
        let options: String = super::data_out::sources_of(app, visitor, &ws)
            .await
            .iter()
            .map(|s| {
                format!(
                    "<option value=\"{slug}\">{slug}</option>",
                    slug = escape(&s.slug)
                )
            })
            .collect();
        let endpoint_boxes: String = endpoints::all_of(app, visitor, &ws)
            .await
            .iter()
            .map(|e| {
                format!(
                    "<label><input type=\"checkbox\" name=\"endpoints\" value=\"{slug}\"> {slug}</label>",
                    slug = escape(&e.slug)
                )
            })
            .collect();
        format!(
            "<h3>New access token</h3><form method=\"post\" action=\"{base}/tokens\">{csrf}\
<label>Name <input name=\"name\" required maxlength=\"100\"></label>\
<label>Scope <select name=\"scope\"><option value=\"ingest\">ingest (send events)</option>\
<option value=\"read\">read (export endpoints)</option></select></label>\
<label>Source (ingest) <select name=\"source\"><option value=\"\">all sources</option>{options}</select></label>\
<label>Device id (ingest, optional) <input name=\"device_id\" maxlength=\"128\" pattern=\"[!-~]{{1,128}}\"></label>\
<fieldset><legend>Export endpoints (read; none ticked: every endpoint)</legend>{endpoints}</fieldset>\
<label>Expires on (optional) <input name=\"expires_on\" type=\"date\"></label>\
<button>Create token</button></form>",
            endpoints = if endpoint_boxes.is_empty() {
                "<span class=\"muted\">No export endpoints yet (Data out tab).</span>".to_owned()
            } else {
                endpoint_boxes
            },
        )
    } else {
        String::new()
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"tokens\"><h2 id=\"tokens\">Access tokens</h2>{table}{form}</section>"
    ));
    let title = format!("{} · Access", ws.name);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::Access)),
        &title,
        notice,
        &main,
    )
    .await
}

/// The new-source form.
#[derive(Debug, Deserialize)]
pub struct SourceForm {
    slug: String,
    #[serde(default)]
    name: String,
}

/// Creates a source as `POST /api/v1/workspaces/{workspace}/sources` does.
pub async fn create_source(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<SourceForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let new = NewSource {
        slug: form.slug.trim().to_owned(),
        name: Some(form.name.trim().to_owned()).filter(|n| !n.is_empty()),
        protocols: None,
        schema: None,
        on_invalid: None,
        keep_payload: None,
    };
    match sources::create_source(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(new),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!("{}/access?done=source", workspace_url(&key))),
        Err(refusal) => render(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await,
    }
}

/// The end (UTC) of the day `date` (`YYYY-MM-DD`), when the token stops working.
pub(super) fn end_of_day(date: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    if date.trim().is_empty() {
        return Ok(None);
    }
    let day = chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").map_err(|_| {
        ApiError::new(
            ProblemType::InvalidBody,
            format!("{date:?} is not a date like 2027-01-31"),
        )
    })?;
    Ok(day
        .succ_opt()
        .and_then(|next| next.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc()))
}

/// Creates a token as `POST /api/v1/workspaces/{workspace}/tokens` does and shows its secret
/// on this answer only (no redirect: the secret must not travel in a URL).
pub async fn create_token(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<Fields>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let expires_at = match end_of_day(form.one("expires_on")) {
        Ok(at) => at,
        Err(refusal) => {
            return render(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await
        }
    };
    let scope = match form.one("scope") {
        "ingest" => TokenScope::Ingest,
        "read" => TokenScope::Read,
        other => {
            let refusal = ApiError::new(
                ProblemType::InvalidBody,
                format!("{other:?} is not a scope: choose ingest or read"),
            );
            return render(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await;
        }
    };
    // Endpoints limit a read token; the API refuses them on an ingest token, which keeps
    // boxes ticked by mistake from being dropped silently.
    let endpoints = Some(form.all("endpoints")).filter(|e| !e.is_empty());
    let new = NewAccessToken {
        name: form.one("name").to_owned(),
        scopes: vec![scope],
        sources: form.optional("source").map(|s| vec![s]),
        device_id: form.optional("device_id"),
        endpoints,
        expires_at,
    };
    match tokens::create_token(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(new),
    )
    .await
    {
        Ok((_, Json(made))) => {
            let new_secret = made.secret.map(|secret| NewSecret {
                name: made.name,
                secret,
            });
            render(&app, &visitor, &key, None, new_secret).await
        }
        Err(refusal) => render(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await,
    }
}

/// Revokes as `DELETE /api/v1/workspaces/{workspace}/tokens/{id}` does.
pub async fn revoke_token(
    State(app): State<App>,
    Path((key, token)): Path<(String, Uuid)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match tokens::revoke_token(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), token)),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!("{}/access?done=revoked", workspace_url(&key))),
        Err(refusal) => render(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await,
    }
}

/// Deletes a source as `DELETE /api/v1/workspaces/{workspace}/sources/{source}` does (refused
/// while an output reads it).
pub async fn delete_source(
    State(app): State<App>,
    Path((key, source)): Path<(String, String)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match sources::delete_source(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), source)),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/access?done=source-deleted",
            workspace_url(&key)
        )),
        Err(refusal) => render(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::end_of_day;

    #[test]
    fn a_token_expiring_on_a_day_works_until_that_day_ends() {
        let at = end_of_day("2027-01-31").expect("a date").expect("a time");
        assert_eq!(at.to_rfc3339(), "2027-02-01T00:00:00+00:00");
        assert_eq!(end_of_day(" ").expect("empty"), None);
        assert!(end_of_day("31/01/2027").is_err());
    }
}
