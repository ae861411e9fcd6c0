//! What names what inside a workspace, and the refusals that keep those names pointing at
//! something: an output names its source (and must fit its schema), an export endpoint and a
//! webhook name their output, a `read` token may name endpoints.
//!
//! Nodes refuse a whole configuration in which an output's source or an endpoint's output is
//! missing (`sluice_config::data_out::check_workspace`), so a change that would break a name
//! is refused here, with `409 in-use` naming what still uses it, rather than published. Slugs
//! of sources (outside an AsyncAPI import), outputs and endpoints never change, so a rename
//! is only ever a deletion plus a creation, and refused the same way. An AsyncAPI import
//! carries all of these entities and checks the same names over the state it makes, listing
//! each broken one in its `422` (`asyncapi::data_out::plan`).

use std::collections::HashMap;

use serde_json::Value;
use sluice_config::data_out::{
    self, DataOutError, ExportEndpointConfig, OutputConfig, WebhookConfig,
};
use uuid::Uuid;

use crate::model::Workspace;
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::store::{Change, State};

/// A workspace's sources, outputs, export endpoints and webhooks as nodes will check them
/// (`sluice_config::data_out::check_workspace`): what the API checks a changed entity in, after
/// putting it in place of its stored copy.
pub struct DataOut {
    pub sources: Vec<String>,
    pub outputs: Vec<OutputConfig>,
    pub endpoints: Vec<ExportEndpointConfig>,
    pub webhooks: Vec<WebhookConfig>,
}

impl DataOut {
    pub fn of(s: &State, workspace: Uuid) -> DataOut {
        DataOut {
            sources: s.sources_of(workspace).map(|x| x.slug.clone()).collect(),
            outputs: s.outputs_of(workspace).map(|o| o.config()).collect(),
            endpoints: s
                .export_endpoints_of(workspace)
                .map(|e| e.config())
                .collect(),
            // Whether a URL may be `http://` is the webhook's own check (and the snapshot's),
            // so it does not hold up changes to outputs and endpoints.
            webhooks: s.webhooks_of(workspace).map(|w| w.config(true)).collect(),
        }
    }

    /// The whole workspace as nodes will check it: a last guard, cheap at these sizes.
    pub fn check(&self) -> Result<(), DataOutError> {
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        data_out::check_workspace(&sources, &self.outputs, &self.endpoints, &self.webhooks)
    }
}

/// Lists names for a refusal: `"a", "b"`.
fn quoted<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses `changes` (about to be committed for workspace `ws`) when they would leave one of
/// the workspace's outputs reading a source that no longer exists, or that no longer fits the
/// source's schema. Covers deleting and re-schematising sources; changes to the outputs
/// themselves are checked where they are made.
pub fn refuse_broken_outputs(s: &State, ws: &Workspace, changes: &[Change]) -> ApiResult<()> {
    let touches_sources = changes
        .iter()
        .any(|c| matches!(c, Change::PutSource(_) | Change::DeleteSource(_)));
    if !touches_sources || s.outputs_of(ws.id).next().is_none() {
        return Ok(());
    }
    // The workspace's sources as the changes leave them: id -> (slug, schema).
    let mut after: HashMap<Uuid, (&str, Option<&Value>)> = s
        .sources_of(ws.id)
        .map(|x| (x.id, (x.slug.as_str(), x.schema.as_ref())))
        .collect();
    for change in changes {
        match change {
            Change::PutSource(x) if x.workspace_id == ws.id => {
                after.insert(x.id, (x.slug.as_str(), x.schema.as_ref()));
            }
            Change::DeleteSource(id) => {
                after.remove(id);
            }
            _ => {}
        }
    }
    let by_slug: HashMap<&str, Option<&Value>> = after.into_values().collect();
    let mut problems = Vec::new();
    for output in s.outputs_of(ws.id) {
        match by_slug.get(output.source.as_str()) {
            None => problems.push(format!(
                "output {:?} reads source {:?}, which would no longer exist",
                output.slug, output.source
            )),
            Some(Some(schema)) => {
                if let Err(e) = output.config().check_against_schema(schema) {
                    problems.push(format!(
                        "output {:?} would no longer fit the schema of source {:?} ({e})",
                        output.slug, output.source
                    ));
                }
            }
            Some(None) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ProblemType::InUse,
        format!(
            "{}: change or delete those outputs first",
            problems.join("; ")
        ),
    ))
}

/// Refuses deleting output `slug` while export endpoints serve it or webhooks deliver it.
pub fn refuse_output_in_use(s: &State, ws: &Workspace, slug: &str) -> ApiResult<()> {
    let endpoints: Vec<&str> = s
        .export_endpoints_of(ws.id)
        .filter(|e| e.output == slug)
        .map(|e| e.slug.as_str())
        .collect();
    let webhooks: Vec<&str> = s
        .webhooks_of(ws.id)
        .filter(|w| w.output == slug)
        .map(|w| w.slug.as_str())
        .collect();
    let mut users = Vec::new();
    if !endpoints.is_empty() {
        users.push(format!(
            "served by export endpoint(s) {}",
            quoted(endpoints)
        ));
    }
    if !webhooks.is_empty() {
        users.push(format!("delivered by webhook(s) {}", quoted(webhooks)));
    }
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ProblemType::InUse,
        format!(
            "output {slug:?} is {}: delete them or point them at another output first",
            users.join(" and ")
        ),
    ))
}

/// Refuses deleting export endpoint `slug` while access tokens name it: a token's list of
/// endpoints is never changed behind its creator's back (and an endpoint made later under the
/// same slug must not become readable by it).
pub fn refuse_endpoint_in_use(s: &State, ws: &Workspace, slug: &str) -> ApiResult<()> {
    let users: Vec<String> = s
        .tokens_of(ws.id)
        .filter(|t| {
            t.endpoints
                .as_ref()
                .is_some_and(|list| list.iter().any(|e| e == slug))
        })
        .map(|t| format!("{:?} ({})", t.name, t.id))
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ProblemType::InUse,
        format!(
            "export endpoint {slug:?} is named by access token(s) {}: revoke them first (a \
             token's endpoints cannot be changed; make a new token for the endpoints that stay)",
            users.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessToken, ExportEndpoint, Output, Source};
    use serde_json::json;
    use sluice_config::data_out::{CompareOp, Condition, Filter};
    use sluice_config::shaping::OnInvalid;
    use sluice_config::snapshot::{Protocol, Scope};

    fn workspace() -> Workspace {
        Workspace {
            id: Uuid::now_v7(),
            slug: "plant".into(),
            name: "Plant".into(),
            created_by: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        }
    }

    fn source(ws: &Workspace, slug: &str, schema: Option<Value>) -> Source {
        Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: slug.into(),
            name: slug.into(),
            protocols: vec![Protocol::Http],
            schema,
            on_invalid: OnInvalid::Reject,
            keep_payload: true,
            created_at: chrono::Utc::now(),
        }
    }

    fn output(ws: &Workspace, slug: &str, source: &str) -> Output {
        Output {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: slug.into(),
            name: slug.into(),
            source: source.into(),
            filter: Filter {
                conditions: vec![Condition {
                    pointer: "/temp_c".into(),
                    op: CompareOp::Gt,
                    value: Some(json!(30)),
                }],
                ..Filter::default()
            },
            fields: vec![],
            created_at: chrono::Utc::now(),
        }
    }

    fn state(changes: Vec<Change>) -> State {
        let mut s = State::default();
        for c in changes {
            s.apply(c);
        }
        s
    }

    #[test]
    fn a_source_an_output_reads_can_be_neither_deleted_renamed_nor_given_a_schema_it_misses() {
        let ws = workspace();
        let schema = json!({"properties": {"temp_c": {"type": "number"}}});
        let telemetry = source(&ws, "telemetry", Some(schema));
        let spare = source(&ws, "spare", None);
        let s = state(vec![
            Change::PutWorkspace(ws.clone()),
            Change::PutSource(telemetry.clone()),
            Change::PutSource(spare.clone()),
            Change::PutOutput(output(&ws, "hot", "telemetry")),
        ]);
        let refused = |changes: Vec<Change>| {
            refuse_broken_outputs(&s, &ws, &changes)
                .map_err(|e| (e.kind, e.detail))
                .err()
        };
        assert_eq!(refused(vec![Change::DeleteSource(spare.id)]), None);
        let (kind, detail) =
            refused(vec![Change::DeleteSource(telemetry.id)]).expect("deletion refused");
        assert_eq!(kind, ProblemType::InUse);
        assert!(
            detail.contains("\"hot\"") && detail.contains("\"telemetry\""),
            "{detail}"
        );

        let mut renamed = telemetry.clone();
        renamed.slug = "readings".into();
        assert!(refused(vec![Change::PutSource(renamed.clone())]).is_some());
        // Renamed away and another source made under the slug: the output still has a source.
        let successor = source(&ws, "telemetry", None);
        assert_eq!(
            refused(vec![
                Change::PutSource(renamed),
                Change::PutSource(successor)
            ]),
            None
        );

        let mut reschema = telemetry.clone();
        reschema.schema = Some(json!({"properties": {"temp": {"type": "number"}}}));
        let (_, detail) = refused(vec![Change::PutSource(reschema)]).expect("schema refused");
        assert!(detail.contains("/temp_c"), "{detail}");
        let mut typed = telemetry.clone();
        typed.schema = Some(json!({"properties": {"temp_c": {"type": "boolean"}}}));
        assert!(
            refused(vec![Change::PutSource(typed)]).is_some(),
            "gt on a boolean"
        );
        let mut loose = telemetry;
        loose.schema = None;
        assert_eq!(refused(vec![Change::PutSource(loose)]), None);
    }

    #[test]
    fn outputs_served_and_endpoints_named_are_in_use() {
        let ws = workspace();
        let endpoint = ExportEndpoint {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "live".into(),
            name: "live".into(),
            output: "hot".into(),
            created_at: chrono::Utc::now(),
        };
        let token = |endpoints: Option<Vec<String>>| AccessToken {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            name: "dashboard".into(),
            sha256: "0".repeat(64),
            hint: String::new(),
            scopes: vec![Scope::Read],
            sources: None,
            device_id: None,
            endpoints,
            expires_at: None,
            created_by: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
        };
        let s = state(vec![
            Change::PutWorkspace(ws.clone()),
            Change::PutExportEndpoint(endpoint),
            Change::PutToken(token(None)),
        ]);
        assert!(refuse_output_in_use(&s, &ws, "hot").is_err());
        assert!(refuse_output_in_use(&s, &ws, "cold").is_ok());
        assert!(
            refuse_endpoint_in_use(&s, &ws, "live").is_ok(),
            "a token of every endpoint names none"
        );
        let mut s = s;
        s.apply(Change::PutToken(token(Some(vec!["live".into()]))));
        let e = refuse_endpoint_in_use(&s, &ws, "live").expect_err("named");
        assert!(e.detail.contains("\"dashboard\""), "{}", e.detail);
    }
}
