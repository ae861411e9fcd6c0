//! The Data out tab: a workspace's outputs, export endpoints and webhooks on one page, in
//! the order they build on each other (an endpoint or webhook names an output). Each list and
//! its form is its own module's (`outputs.rs`, `endpoints.rs`, `webhooks.rs`); this page puts
//! them together and carries what a refused form typed, or a new webhook's secret, back.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use super::endpoints::{self, EndpointForm};
use super::frame::{self, Notice, Tab};
use super::outputs::{self, OutputForm};
use super::paging::{every, Paging};
use super::visitor::Visitor;
use super::webhooks::{self, WebhookForm};
use super::workspaces::load;
use crate::api::sources::{list_sources, SourceView};
use crate::api::workspaces::WorkspaceView;
use crate::api::ApiPath;
use crate::app::App;

/// A webhook just made: its slug and signing secret, shown this once.
pub struct NewSecret {
    pub name: String,
    pub secret: String,
}

/// What a refused form typed (shown again in it), or the secret of a new webhook.
#[derive(Default)]
pub struct Typed {
    pub output: Option<OutputForm>,
    pub endpoint: Option<EndpointForm>,
    pub webhook: Option<WebhookForm>,
    pub new_secret: Option<NewSecret>,
}

/// Every source of the workspace, for an output's source and a tag rule's sources.
pub async fn sources_of(app: &App, visitor: &Visitor, ws: &WorkspaceView) -> Vec<SourceView> {
    every(app, |q| {
        list_sources(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath(ws.slug.clone()),
            q,
        )
    })
    .await
    .unwrap_or_default()
}

/// The Data out tab.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.as_deref();
    let pages = [
        Paging::from_query(query, outputs::PAGE_PARAM),
        Paging::from_query(query, endpoints::PAGE_PARAM),
        Paging::from_query(query, webhooks::PAGE_PARAM),
    ];
    render_paged(
        &app,
        &visitor,
        &key,
        Notice::from_query(query),
        Typed::default(),
        pages,
    )
    .await
}

/// The tab at the first page of each list, with `notice` and `typed`.
pub async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    typed: Typed,
) -> Response {
    let pages = [
        Paging::first(outputs::PAGE_PARAM),
        Paging::first(endpoints::PAGE_PARAM),
        Paging::first(webhooks::PAGE_PARAM),
    ];
    render_paged(app, visitor, key, notice, typed, pages).await
}

async fn render_paged(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    typed: Typed,
    [outputs_page, endpoints_page, webhooks_page]: [Paging; 3],
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let mut main = String::new();
    if let Some(new) = &typed.new_secret {
        main.push_str(&webhooks::secret_section(&new.name, &new.secret));
    }
    let sources = sources_of(app, visitor, &ws).await;
    let section = outputs::section(
        app,
        visitor,
        &ws,
        &outputs_page,
        &sources,
        typed.output.as_ref(),
    )
    .await;
    main.push_str(&section);
    // Endpoints and webhooks may name any output, not only those of the page shown.
    let outputs = outputs::all_of(app, visitor, &ws).await;
    main.push_str(
        &endpoints::section(
            app,
            visitor,
            &ws,
            &endpoints_page,
            &outputs,
            typed.endpoint.as_ref(),
        )
        .await,
    );
    main.push_str(
        &webhooks::section(
            app,
            visitor,
            &ws,
            &webhooks_page,
            &outputs,
            typed.webhook.as_ref(),
        )
        .await,
    );
    let title = format!("{} · Data out", ws.name);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::DataOut)),
        &title,
        notice,
        &main,
    )
    .await
}
