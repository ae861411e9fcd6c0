//! Configuration churn of a chaos run: creates and revokes access tokens in the default
//! workspace through the control-plane API, so that the node swaps its configuration (and
//! rewrites its cache) several times a second while it ingests. The clients' own token is never
//! touched, so the churn refuses none of their events.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::Load;

/// Pause between two changes; the node reads the snapshot file every 200 ms.
const CHANGE_EVERY: Duration = Duration::from_millis(120);

/// The schema the run gives the clients' source halfway: every event has `k` and `v` (0..999),
/// so about one in ten (`v` ≥ 900) is refused and, with `on_invalid = quarantine`, stored in
/// the quarantine dataset. The rounds after it kill a node whose records and files are shaped.
fn schema_update() -> Value {
    json!({
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "k": {"type": "integer", "minimum": 0},
                "v": {"type": "integer", "minimum": 0, "maximum": 899}
            },
            "required": ["k", "v"]
        },
        "on_invalid": "quarantine"
    })
}

/// Where to make the changes.
pub struct Churn {
    pub api_base: String,
    pub workspace: String,
    /// The clients' source, which gets [`schema_update`] once the driver asks for it.
    pub source: String,
    /// `initial-operator.json` of the data dir: the operator account's e-mail and password.
    pub operator_file: PathBuf,
}

/// Changes the configuration until `load.stop`; counts the changes the API took.
pub fn run(churn: Churn, load: Arc<Load>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut session: Option<String> = None;
    let mut minted: Option<String> = None;
    let tokens = format!("/api/v1/workspaces/{}/tokens", churn.workspace);
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        std::thread::sleep(CHANGE_EVERY);
        let Some(auth) = session.clone().or_else(|| {
            session = sign_in(&agent, &churn);
            session.clone()
        }) else {
            continue;
        };
        let auth = format!("Bearer {auth}");
        if load.shape.load(Ordering::Relaxed) && !load.shaped.load(Ordering::Relaxed) {
            let answer = agent
                .patch(format!(
                    "{}/api/v1/workspaces/{}/sources/{}",
                    churn.api_base, churn.workspace, churn.source
                ))
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(schema_update().to_string());
            match answer.map(|r| r.status().as_u16()) {
                Ok(200) => {
                    load.shaped.store(true, Ordering::Relaxed);
                    load.config_changes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(401) => session = None,
                // The node is down or starting: try again next time.
                _ => {}
            }
            continue;
        }
        // Alternate: mint a token, then revoke it; each is one configuration version.
        let answer = match &minted {
            None => agent
                .post(format!("{}{tokens}", churn.api_base))
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(json!({"name": format!("chaos churn {n}"), "scopes": ["ingest"]}).to_string())
                .ok()
                .map(|mut r| {
                    let status = r.status().as_u16();
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
                }),
            Some(id) => agent
                .delete(format!("{}{tokens}/{id}", churn.api_base))
                .header("authorization", &auth)
                .call()
                .ok()
                .map(|r| (r.status().as_u16(), Value::Null)),
        };
        match answer {
            Some((201, body)) => {
                minted = body["id"].as_str().map(str::to_owned);
                n += 1;
                load.config_changes.fetch_add(1, Ordering::Relaxed);
            }
            Some((204 | 200, _)) | Some((404, _)) if minted.is_some() => {
                minted = None;
                n += 1;
                load.config_changes.fetch_add(1, Ordering::Relaxed);
            }
            Some((401, _)) => session = None,
            // The node is down or starting: try again next time.
            _ => {}
        }
    }
}

fn sign_in(agent: &ureq::Agent, churn: &Churn) -> Option<String> {
    let text = std::fs::read_to_string(&churn.operator_file).ok()?;
    let operator: Value = serde_json::from_str(&text).ok()?;
    let mut resp = agent
        .post(format!("{}/api/v1/sessions", churn.api_base))
        .header("content-type", "application/json")
        .send(json!({"email": operator["email"], "password": operator["password"]}).to_string())
        .ok()?;
    if resp.status() != 201 {
        return None;
    }
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
    body["token"].as_str().map(str::to_owned)
}
