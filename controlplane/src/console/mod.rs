//! The web console: server-rendered pages at `/` and `/app/...` for people in a browser.
//!
//! Every page reads, and every form writes, by calling the API handler of the same operation
//! (`api::workspaces::rename_workspace`, `api::tokens::create_token`, …) with the signed-in
//! caller. Permissions, validation and limits are therefore the API's own: the console keeps
//! no permission table and asks `roles::Action::allows` only to decide which controls to offer.
//! A refusal is shown as the problem's `detail`.
//!
//! No script runs inline and nothing loads from elsewhere (`headers.rs`); the one small script
//! and the style sheet are compiled into the binary (`assets.rs`). Every form that changes
//! something carries the session's CSRF token and is refused from another origin (`csrf.rs`).

mod access;
mod account;
mod assets;
mod asyncapi;
mod csrf;
mod data_out;
mod endpoints;
mod fields;
mod frame;
pub(crate) mod headers;
mod ingest;
mod multipart;
mod outputs;
mod paging;
mod password_reset;
mod settings;
mod smtp;
mod source;
mod tag_rules;
mod upload;
mod visitor;
mod webhooks;
mod workspaces;

use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;

use crate::app::App;

/// The console's home: the signed-in user's workspaces.
pub const APP_PATH: &str = "/app";
/// Prefix of every other console page.
pub const APP_PATH_SLASH: &str = "/app/";
pub use password_reset::PASSWORD_RESET_PATH;
pub use upload::UPLOAD_BYTES_MAX;
/// The visitor's account: sessions and personal access tokens.
pub const ACCOUNT_PATH: &str = "/app/account";

/// The console page of workspace `slug`.
pub fn workspace_url(slug: &str) -> String {
    format!("{APP_PATH}/w/{}", url_segment(slug))
}

/// Where a browser lands after accepting an invitation into workspace `slug`.
pub fn joined_url(slug: &str) -> String {
    format!("{}?done=joined", workspace_url(slug))
}

/// `text` as one URL path segment (slugs are `a-z0-9-` already; this keeps anything else out).
fn url_segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The console's routes, merged into the control plane's router.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(|| async { Redirect::to(APP_PATH) }))
        .route(
            password_reset::PASSWORD_RESET_PATH,
            get(password_reset::page).post(password_reset::send_code),
        )
        .route("/password-reset/confirm", post(password_reset::confirm))
        .route(APP_PATH, get(workspaces::index))
        .route("/app/workspaces", post(workspaces::create))
        .route("/app/sign-out", post(visitor::sign_out))
        .route(ACCOUNT_PATH, get(account::page))
        .route("/app/account/tokens", post(account::create_token))
        .route(
            "/app/account/tokens/{token}/revoke",
            post(account::revoke_token),
        )
        .route(
            "/app/account/identities/{identity}/unlink",
            post(account::unlink_identity),
        )
        .route(
            "/app/account/sessions/{session}/end",
            post(account::end_session),
        )
        .route("/app/w/{workspace}", get(workspaces::overview))
        .route(
            "/app/w/{workspace}/asyncapi-public",
            post(workspaces::set_asyncapi_public),
        )
        .route(
            "/app/w/{workspace}/oauth-grants/{grant}/revoke",
            post(workspaces::revoke_oauth_grant),
        )
        .route(
            "/app/w/{workspace}/asyncapi",
            get(asyncapi::page).post(asyncapi::import),
        )
        .route("/app/w/{workspace}/settings", get(settings::page))
        .route("/app/w/{workspace}/rename", post(settings::rename))
        .route("/app/w/{workspace}/delete", post(settings::delete))
        .route(
            "/app/w/{workspace}/members/{user}/role",
            post(settings::change_role),
        )
        .route(
            "/app/w/{workspace}/members/{user}/remove",
            post(settings::remove_member),
        )
        .route("/app/w/{workspace}/cors", post(settings::set_cors))
        .route("/app/w/{workspace}/invitations", post(settings::invite))
        .route(
            "/app/w/{workspace}/invitations/{invitation}/cancel",
            post(settings::cancel_invitation),
        )
        .route("/app/w/{workspace}/access", get(access::page))
        .route("/app/w/{workspace}/sources", post(access::create_source))
        .route(
            "/app/w/{workspace}/sources/{source}",
            get(source::page).post(source::save),
        )
        .route(
            "/app/w/{workspace}/sources/{source}/delete",
            post(access::delete_source),
        )
        .route("/app/w/{workspace}/tokens", post(access::create_token))
        .route(
            "/app/w/{workspace}/tokens/{token}/revoke",
            post(access::revoke_token),
        )
        .route(
            "/app/w/{workspace}/tag-rules",
            get(tag_rules::page).post(tag_rules::create),
        )
        .route(
            "/app/w/{workspace}/tag-rules/{rule}",
            get(tag_rules::edit_page).post(tag_rules::save),
        )
        .route(
            "/app/w/{workspace}/tag-rules/{rule}/move",
            post(tag_rules::move_rule),
        )
        .route(
            "/app/w/{workspace}/tag-rules/{rule}/delete",
            post(tag_rules::delete),
        )
        .route("/app/w/{workspace}/data-out", get(data_out::page))
        .route("/app/w/{workspace}/outputs", post(outputs::create))
        .route(
            "/app/w/{workspace}/outputs/{output}",
            get(outputs::page).post(outputs::save),
        )
        .route(
            "/app/w/{workspace}/outputs/{output}/delete",
            post(outputs::delete),
        )
        .route(
            "/app/w/{workspace}/export-endpoints",
            post(endpoints::create),
        )
        .route(
            "/app/w/{workspace}/export-endpoints/{endpoint}",
            get(endpoints::page).post(endpoints::save),
        )
        .route(
            "/app/w/{workspace}/export-endpoints/{endpoint}/delete",
            post(endpoints::delete),
        )
        .route("/app/w/{workspace}/webhooks", post(webhooks::create))
        .route(
            "/app/w/{workspace}/webhooks/{webhook}",
            get(webhooks::page).post(webhooks::save),
        )
        .route(
            "/app/w/{workspace}/webhooks/{webhook}/enabled",
            post(webhooks::set_enabled),
        )
        .route(
            "/app/w/{workspace}/webhooks/{webhook}/test",
            post(webhooks::test),
        )
        .route(
            "/app/w/{workspace}/webhooks/{webhook}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/app/w/{workspace}/webhooks/{webhook}/delete",
            post(webhooks::delete),
        )
        .route("/app/w/{workspace}/mail", get(smtp::page))
        .route("/app/w/{workspace}/mail/smtp", post(smtp::save))
        .route("/app/w/{workspace}/mail/smtp/test", post(smtp::test))
        .route("/app/w/{workspace}/mail/smtp/remove", post(smtp::remove))
        .route(assets::CSS_PATH, get(assets::css))
        .route(assets::JS_PATH, get(assets::js))
}
