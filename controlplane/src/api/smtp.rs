//! Workspace SMTP: a workspace's own mail server, a test send through it, and the log of what
//! was sent for the workspace.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::valid_email;
use super::validate::valid_text;
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::mail::Mail;
use crate::model::{Delivery, MailPurpose, MailTransport, SmtpSecurity, WorkspaceSmtp};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::Action;
use crate::store::Change;

/// Longest SMTP password accepted.
const PASSWORD_BYTES_MAX: usize = 1024;

/// A workspace's SMTP settings as the API shows them: never the password.
#[derive(Debug, Serialize, ToSchema)]
pub struct SmtpView {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    /// Whether a password is stored (it is never returned).
    pub password_set: bool,
    pub from_address: String,
    pub from_name: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<&WorkspaceSmtp> for SmtpView {
    fn from(s: &WorkspaceSmtp) -> Self {
        SmtpView {
            host: s.host.clone(),
            port: s.port,
            security: s.security,
            username: s.username.clone(),
            password_set: s.password_sealed.is_some(),
            from_address: s.from_address.clone(),
            from_name: s.from_name.clone(),
            updated_at: s.updated_at,
        }
    }
}

/// SMTP settings to save.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Host name or IP address of the server (an IPv6 address is accepted too).
    #[schema(
        min_length = 1,
        max_length = 253,
        pattern = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
    )]
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// `none`, `starttls` (must succeed) or `tls` (implicit TLS).
    pub security: SmtpSecurity,
    #[schema(schema_with = super::validate::smtp_username_schema)]
    pub username: Option<String>,
    /// Absent: keep the stored password. Empty: remove it. At most 1024 bytes, no NUL; needs
    /// a username.
    #[schema(pattern = r"^[^\x00]*$")]
    pub password: Option<String>,
    #[schema(format = Email, max_length = 254)]
    pub from_address: String,
    #[schema(schema_with = super::validate::smtp_from_name_schema)]
    pub from_name: Option<String>,
}

/// Where to send a test message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpTest {
    #[schema(format = Email, max_length = 254)]
    pub to: String,
}

/// The outcome of one attempt to send.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub recipient: String,
    pub purpose: MailPurpose,
    /// `workspace_smtp` or `platform_smtp`.
    pub transport: MailTransport,
    /// `sent` or `failed`.
    pub status: String,
    /// The SMTP error, when it failed.
    pub error: Option<String>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        DeliveryView {
            id: d.id,
            at: d.at,
            recipient: d.recipient.clone(),
            purpose: d.purpose,
            transport: d.transport,
            status: if d.delivered { "sent" } else { "failed" }.to_owned(),
            error: d.error.clone(),
        }
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemType::InvalidSmtpSettings, detail)
}

/// Checks a host name (letters, digits, `-`, `.`) or an IP address.
fn valid_host(host: &str) -> ApiResult<String> {
    let host = host.trim();
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if name_ok || host.parse::<std::net::IpAddr>().is_ok() {
        Ok(host.to_owned())
    } else {
        Err(invalid(format!(
            "host {host:?} is not a host name or IP address"
        )))
    }
}

fn no_smtp(slug: &str) -> ApiError {
    ApiError::new(
        ProblemType::SmtpNotConfigured,
        format!("workspace {slug:?} has no SMTP settings; its mail goes through the platform"),
    )
}

/// The workspace's SMTP settings (without the password). Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/smtp", tag = "smtp",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 200, body = SmtpView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_smtp(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Json<SmtpView>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        s.smtp
            .get(&ws.id)
            .map(|x| Json(SmtpView::from(x)))
            .ok_or_else(|| no_smtp(&ws.slug))
    })
}

/// Save the workspace's SMTP settings; its mail goes through them from now on. The password is
/// encrypted at rest and never returned. Admin or Editor.
#[utoipa::path(put, path = "/api/v1/workspaces/{workspace}/smtp", tag = "smtp",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = SmtpSettings,
    responses((status = 200, body = SmtpView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn put_smtp(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<SmtpSettings>,
) -> ApiResult<Json<SmtpView>> {
    let host = valid_host(&form.host)?;
    if form.port == 0 {
        return Err(invalid("port must be 1 to 65535"));
    }
    let username = form
        .username
        .as_deref()
        .map(|u| valid_text("username", u, 254))
        .transpose()?;
    if let Some(password) = &form.password {
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(invalid(format!(
                "password must be at most {PASSWORD_BYTES_MAX} bytes"
            )));
        }
        if password.contains('\0') {
            return Err(invalid("password must not contain NUL characters"));
        }
        if username.is_none() && !password.is_empty() {
            return Err(invalid("a password needs a username"));
        }
    }
    let from_address = valid_email(&form.from_address).map_err(|_| {
        invalid(format!(
            "from_address {:?} is not an e-mail address",
            form.from_address
        ))
    })?;
    let from_name = form
        .from_name
        .as_deref()
        .map(|n| valid_text("from_name", n, 100))
        .transpose()?;
    let secrets = app.secrets.clone();
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSmtp)?;
        require_enabled_in(s, ws)?;
        let context = ws.id.to_string();
        let stored = s.smtp.get(&ws.id);
        let password_sealed = match form.password.as_deref() {
            Some("") => None,
            Some(password) => Some(
                secrets
                    .seal(password, &context)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            ),
            None => match stored {
                // The stored password goes only where it was meant to go: whoever points the
                // settings at another server must know it.
                Some(old)
                    if old.password_sealed.is_some()
                        && username.is_some()
                        && (old.host != host
                            || old.port != form.port
                            || old.security != form.security
                            || old.username != username) =>
                {
                    return Err(invalid(
                        "password must be given again when host, port, security or username change",
                    ))
                }
                Some(old) => old.password_sealed.clone(),
                None => None,
            },
        };
        let smtp = WorkspaceSmtp {
            workspace_id: ws.id,
            host,
            port: form.port,
            security: form.security,
            password_sealed: password_sealed.filter(|_| username.is_some()),
            username,
            from_address,
            from_name,
            updated_at: Utc::now(),
        };
        let view = SmtpView::from(&smtp);
        Ok((vec![Change::PutSmtp(smtp)], Json(view)))
    })
    .await
}

/// Remove the workspace's SMTP settings; its mail goes through the platform again at once.
/// Admin or Editor.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/smtp", tag = "smtp",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn delete_smtp(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSmtp)?;
        if !s.smtp.contains_key(&ws.id) {
            return Err(no_smtp(&ws.slug));
        }
        Ok((vec![Change::DeleteSmtp(ws.id)], StatusCode::NO_CONTENT))
    })
    .await
}

/// Send a one-off message through the saved settings and report the outcome (the SMTP error
/// when it fails). Waits at most the SMTP timeout. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/smtp/test", tag = "smtp",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = SmtpTest,
    responses((status = 200, body = DeliveryView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 429, body = crate::problem::ProblemBody)))]
pub async fn test_smtp(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<SmtpTest>,
) -> ApiResult<Json<DeliveryView>> {
    let to = valid_email(&form.to)?;
    // The settings checked here are the ones the test uses, whatever changes meanwhile.
    let (ws, settings) = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSmtp)?;
        require_enabled_in(s, ws)?;
        let settings = s
            .smtp
            .get(&ws.id)
            .cloned()
            .ok_or_else(|| no_smtp(&ws.slug))?;
        Ok::<_, ApiError>((ws.clone(), settings))
    })?;
    app.limits
        .smtp_tests_per_workspace
        .hit(&ws.id.to_string())
        .map_err(|wait| ApiError::rate_limited("SMTP tests for this workspace", wait))?;
    let delivery = app
        .mailer
        .send_now(
            Mail {
                to,
                subject: format!("Sluice SMTP test for {}", ws.name),
                body: format!(
                "This message tests the SMTP settings of the Sluice workspace \"{}\". They work.\n",
                ws.name
            ),
                purpose: MailPurpose::SmtpTest,
                workspace: Some(ws.id),
            },
            settings,
        )
        .await?;
    Ok(Json(DeliveryView::from(&delivery)))
}

/// The most recent attempts to send the workspace's mail (the newest 50 are kept), newest
/// first, a page at a time. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/email-deliveries", tag = "smtp",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<DeliveryView>), (status = 400, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_deliveries(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<DeliveryView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        // Ids are UUIDv7: in time order, as their text is.
        Ok::<_, ApiError>(
            s.deliveries_of(ws.id)
                .rev()
                .take(crate::mail::DELIVERIES_KEPT)
                .map(|d| (d.id.to_string(), DeliveryView::from(d)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page_newest_first(&app, items).map(Json)
}
