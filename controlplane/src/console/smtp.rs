//! The Mail tab: the workspace's own SMTP server (Save, Send test with its outcome on the page,
//! Remove) and the Email deliveries card (what was sent for the workspace, with Refresh).

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::frame::{self, Notice, Tab};
use super::paging::Paging;
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::html::escape;
use crate::api::smtp::{self, SmtpSettings, SmtpTest, SmtpView};
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::model::SmtpSecurity;
use crate::problem::{ApiError, ProblemType};
use crate::roles::Action;

/// The Mail tab.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let paging = Paging::from_query(query.as_deref(), DELIVERIES_PARAM);
    render_paged(
        &app,
        &visitor,
        &key,
        Notice::from_query(query.as_deref()),
        &paging,
    )
    .await
}

/// The query parameter of the deliveries list's cursor.
const DELIVERIES_PARAM: &str = "deliveries_after";

/// A value of the API's enums as it is written in JSON (`starttls`, `smtp_test`).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn render(app: &App, visitor: &Visitor, key: &str, notice: Option<Notice>) -> Response {
    let first = Paging::first(DELIVERIES_PARAM);
    render_paged(app, visitor, key, notice, &first).await
}

/// The tab with the page of deliveries `paging` names.
async fn render_paged(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    paging: &Paging,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let base = escape(&format!("{}/mail", workspace_url(&ws.slug)));
    let csrf = hidden_field(&visitor.csrf);
    let caller = || visitor.caller.clone();
    let path = || ApiPath(ws.slug.clone());
    let saved: Option<SmtpView> = smtp::get_smtp(State(app.clone()), caller(), path())
        .await
        .ok()
        .map(|Json(v)| v);
    let mut main = String::new();

    let state = match &saved {
        Some(s) => format!(
            "<p>The workspace's mail (invitations, tests) goes through <code>{}:{}</code>; \
saved {}.</p>",
            escape(&s.host),
            s.port,
            s.updated_at.format("%Y-%m-%d %H:%M UTC")
        ),
        None => "<p>No SMTP server of its own: the workspace's mail goes through the platform.</p>"
            .to_owned(),
    };
    let field = |f: fn(&SmtpView) -> String| saved.as_ref().map(f).unwrap_or_default();
    let host = escape(&field(|s| s.host.clone()));
    let port = saved
        .as_ref()
        .map_or("587".to_owned(), |s| s.port.to_string());
    let username = escape(&field(|s| s.username.clone().unwrap_or_default()));
    let from_address = escape(&field(|s| s.from_address.clone()));
    let from_name = escape(&field(|s| s.from_name.clone().unwrap_or_default()));
    let security = saved
        .as_ref()
        .map_or(SmtpSecurity::Starttls, |s| s.security);
    let password_set = saved.as_ref().is_some_and(|s| s.password_set);
    if Action::ManageSmtp.allows(ws.role) {
        let options: String = [
            SmtpSecurity::Starttls,
            SmtpSecurity::Tls,
            SmtpSecurity::None,
        ]
        .iter()
        .map(|s| {
            format!(
                "<option value=\"{v}\"{sel}>{v}</option>",
                v = wire_name(s),
                sel = if *s == security { " selected" } else { "" }
            )
        })
        .collect();
        let password_hint = if password_set {
            "<label><input type=\"checkbox\" name=\"remove_password\" value=\"on\"> Remove the stored password</label>\
<span class=\"muted\">A password is stored; leave the field empty to keep it.</span>"
        } else {
            ""
        };
        main.push_str(&format!(
            "<section aria-labelledby=\"smtp\"><h2 id=\"smtp\">Workspace SMTP</h2>{state}\
<form method=\"post\" action=\"{base}/smtp\">{csrf}\
<p><label>Host <input name=\"host\" value=\"{host}\" required maxlength=\"253\"></label>\
<label>Port <input name=\"port\" value=\"{port}\" required inputmode=\"numeric\" size=\"6\"></label>\
<label>Security <select name=\"security\">{options}</select></label></p>\
<p><label>Username <input name=\"username\" value=\"{username}\" autocomplete=\"off\"></label>\
<label>Password <input name=\"password\" type=\"password\" autocomplete=\"new-password\"></label>{password_hint}</p>\
<p><label>From address <input name=\"from_address\" type=\"email\" value=\"{from_address}\" required></label>\
<label>From name <input name=\"from_name\" value=\"{from_name}\"></label></p>\
<p><button>Save</button></p></form>"
        ));
        if saved.is_some() {
            main.push_str(&format!(
                "<form method=\"post\" action=\"{base}/smtp/test\">{csrf}\
<label>Send a test to <input name=\"to\" type=\"email\" value=\"{me}\" required></label>\
<button class=\"secondary\">Send test</button></form>\
<form method=\"post\" action=\"{base}/smtp/remove\">{csrf}\
<button class=\"danger\">Remove</button> <span class=\"muted\">Mail goes through the platform again.</span></form>",
                me = escape(&visitor.caller.user.email),
            ));
        }
        main.push_str("</section>");
    } else {
        let settings = match &saved {
            Some(s) => format!(
                "<dl><dt>Host</dt><dd>{host}</dd><dt>Port</dt><dd>{port}</dd><dt>Security</dt><dd>{sec}</dd>\
<dt>Username</dt><dd>{username}</dd><dt>From</dt><dd>{from_name} &lt;{from_address}&gt;</dd></dl>",
                port = s.port,
                sec = wire_name(&s.security),
            ),
            None => String::new(),
        };
        main.push_str(&format!(
            "<section aria-labelledby=\"smtp\"><h2 id=\"smtp\">Workspace SMTP</h2>{state}{settings}</section>"
        ));
    }

    // The deliveries card: newest first, Refresh reloads the page.
    let (deliveries, next) =
        smtp::list_deliveries(State(app.clone()), caller(), path(), paging.query(app))
            .await
            .map(|Json(p)| (p.items, p.next_cursor))
            .unwrap_or_default();
    let pages = paging.links(
        &format!("{}/mail", workspace_url(&ws.slug)),
        "deliveries",
        next.as_deref(),
    );
    let mut rows = String::new();
    for d in &deliveries {
        rows.push_str(&format!(
            "<tr><td>{at}</td><td>{to}</td><td>{purpose}</td><td>{transport}</td><td>{status}</td><td>{error}</td></tr>",
            at = d.at.format("%Y-%m-%d %H:%M:%S UTC"),
            to = escape(&d.recipient),
            purpose = wire_name(&d.purpose),
            transport = wire_name(&d.transport),
            status = escape(&d.status),
            error = escape(d.error.as_deref().unwrap_or("")),
        ));
    }
    let table = if deliveries.is_empty() {
        "<p class=\"muted\">Nothing sent for this workspace yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">To</th><th scope=\"col\">What</th>\
<th scope=\"col\">Through</th><th scope=\"col\">Status</th><th scope=\"col\">Error</th></tr></thead>\
<tbody>{rows}</tbody></table>{pages}"
        )
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"deliveries\"><h2 id=\"deliveries\">Email deliveries</h2>\
<p><a href=\"{base}\">Refresh</a></p>{table}</section>"
    ));
    let title = format!("{} · Mail", ws.name);
    frame::page(app, visitor, Some((&ws, Tab::Mail)), &title, notice, &main).await
}

/// The SMTP form.
#[derive(Debug, Deserialize)]
pub struct SmtpForm {
    host: String,
    port: String,
    security: SmtpSecurity,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    remove_password: Option<String>,
    from_address: String,
    #[serde(default)]
    from_name: String,
}

impl SmtpForm {
    /// The API's body: empty optional fields are absent; an empty password keeps the stored
    /// one unless removing it is ticked.
    fn settings(self) -> Result<SmtpSettings, ApiError> {
        let port = self.port.trim().parse::<u16>().map_err(|_| {
            ApiError::new(
                ProblemType::InvalidSmtpSettings,
                format!("the port {:?} is not a number from 1 to 65535", self.port),
            )
        })?;
        let optional = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let password = match (self.remove_password.is_some(), self.password.is_empty()) {
            (true, _) => Some(String::new()),
            (false, true) => None,
            (false, false) => Some(self.password),
        };
        Ok(SmtpSettings {
            host: self.host,
            port,
            security: self.security,
            username: optional(self.username),
            password,
            from_address: self.from_address,
            from_name: optional(self.from_name),
        })
    }
}

/// Saves as `PUT /api/v1/workspaces/{workspace}/smtp` does.
pub async fn save(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<SmtpForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let result = match form.settings() {
        Ok(settings) => smtp::put_smtp(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath(key.clone()),
            ApiJson(settings),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    after(&app, &visitor, &key, result, "smtp-saved").await
}

/// Removes as `DELETE /api/v1/workspaces/{workspace}/smtp` does.
pub async fn remove(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    let result = smtp::delete_smtp(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
    )
    .await
    .map(|_| ());
    after(&app, &visitor, &key, result, "smtp-removed").await
}

/// The test form.
#[derive(Debug, Deserialize)]
pub struct TestForm {
    to: String,
}

/// Sends a test as `POST /api/v1/workspaces/{workspace}/smtp/test` does and shows how it went
/// on the page (the SMTP server's error when it failed).
pub async fn test(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<TestForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let notice = match smtp::test_smtp(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(SmtpTest { to: form.to }),
    )
    .await
    {
        Ok(Json(d)) if d.error.is_none() => {
            Notice::Text(format!("The test message to {} was sent.", d.recipient))
        }
        Ok(Json(d)) => Notice::Failed(format!(
            "the test message to {} failed: {}",
            d.recipient,
            d.error.unwrap_or_default()
        )),
        Err(refusal) => Notice::Refused(refusal),
    };
    render(&app, &visitor, &key, Some(notice)).await
}

async fn after(
    app: &App,
    visitor: &Visitor,
    key: &str,
    result: Result<(), ApiError>,
    done: &str,
) -> Response {
    match result {
        Ok(()) => frame::see_other(&format!("{}/mail?done={done}", workspace_url(key))),
        Err(refusal) => render(app, visitor, key, Some(Notice::Refused(refusal))).await,
    }
}
