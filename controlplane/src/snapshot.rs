//! The data-plane configuration derived from the control plane's state, in the `storage/`
//! snapshot format (token hashes only, never secrets), with each source's schema and shaping
//! settings, each workspace's tag rules in order, its outputs, export endpoints and webhooks
//! (their signing secrets sealed with the cluster secret), and each read token's endpoints:
//! the content hash covers them all.
//!
//! Each version is also written to `<data-dir>/config-snapshot.json`, which a data-plane node
//! can follow with `--config-snapshot` until the configuration stream exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_config::snapshot::{ConfigSnapshot, SourceConfig, TokenConfig, WorkspaceConfig};

use crate::app::App;
use crate::model::{ExportEndpoint, Output, Webhook};
use crate::store::State;

/// File name of the written snapshot under the data dir.
pub const FILE_NAME: &str = "config-snapshot.json";

/// The configuration data-plane nodes need, at the state's version. `allow_private` is the
/// operator's `smtp_allow_private_hosts`, which every webhook carries.
pub(crate) fn build(s: &State, allow_private: bool) -> ConfigSnapshot {
    ConfigSnapshot {
        version: s.config_version,
        workspaces: s
            .workspaces
            .values()
            .map(|ws| WorkspaceConfig {
                id: ws.id,
                slug: ws.slug.clone(),
                name: ws.name.clone(),
                enabled: ws.enabled,
                events_per_second_max: None,
                cors_origins: ws.cors_allowed_origins.clone(),
                sources: s
                    .sources_of(ws.id)
                    .map(|x| SourceConfig {
                        id: x.id,
                        slug: x.slug.clone(),
                        name: x.name.clone(),
                        protocols: x.protocols.clone(),
                        schema: x.schema.clone(),
                        on_invalid: x.on_invalid,
                        keep_payload: x.keep_payload,
                    })
                    .collect(),
                tokens: s
                    .tokens_of(ws.id)
                    .map(|t| TokenConfig {
                        id: t.id,
                        name: t.name.clone(),
                        sha256: t.sha256.clone(),
                        scopes: t.scopes.clone(),
                        sources: t.sources.clone(),
                        device_id: t.device_id.clone(),
                        expires_at: t.expires_at,
                        endpoints: t.endpoints.clone(),
                    })
                    // The MCP endpoint's own ingest token, once minted (`mcp_ingest.rs`).
                    .chain(
                        s.ingest_credentials
                            .get(&ws.id)
                            .map(crate::mcp_ingest::IngestCredential::token_config),
                    )
                    .collect(),
                tag_rules: s.tag_rules_of(ws.id).to_vec(),
                outputs: s.outputs_of(ws.id).map(Output::config).collect(),
                export_endpoints: s
                    .export_endpoints_of(ws.id)
                    .map(ExportEndpoint::config)
                    .collect(),
                webhooks: s
                    .webhooks_of(ws.id)
                    .filter_map(|w| node_webhook(w, allow_private))
                    .collect(),
            })
            .collect(),
    }
}

/// A webhook as nodes get it, unless nodes would refuse it: one saved with an `http://` URL
/// while the operator allowed private hosts stays out of the configuration once they are no
/// longer allowed, rather than making every node refuse the whole configuration.
fn node_webhook(
    w: &Webhook,
    allow_private: bool,
) -> Option<sluice_config::data_out::WebhookConfig> {
    let config = w.config(allow_private);
    match config.check() {
        Ok(()) => Some(config),
        Err(e) => {
            tracing::warn!(webhook = %w.slug, workspace = %w.workspace_id, error = %e, "webhook left out of the nodes' configuration");
            None
        }
    }
}

/// Writes `snapshot` to `path` atomically (a reader sees the old or the new file, whole).
pub(crate) fn write_file(path: &Path, snapshot: &ConfigSnapshot) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(snapshot)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Publishes every new version, until the control plane stops: to the history the
/// configuration stream serves from, and to the snapshot file.
pub(crate) async fn keep_file_current(app: App, path: PathBuf) {
    let mut stopping = app.stop_signal();
    let mut versions = app.config_version.subscribe();
    loop {
        // Marked seen before reading the state: a change committed while this version is
        // written wakes the loop again instead of being lost.
        versions.borrow_and_update();
        let target = path.clone();
        let worker = app.clone();
        // Building, diffing and hashing a large configuration takes tens of milliseconds of
        // CPU: off the async threads, like the file write.
        let written = tokio::task::spawn_blocking(move || {
            let allow_private = worker.config.smtp_allow_private_hosts;
            let snapshot = worker.store.read(|s| build(s, allow_private));
            let version = snapshot.version;
            worker.history.advance(snapshot.clone());
            write_file(&target, &snapshot).map(|()| version)
        })
        .await;
        match written {
            Ok(Ok(version)) => {
                tracing::debug!(version, "configuration snapshot written");
                if let Some(nudge) = &app.config.snapshot_written {
                    nudge.nudge();
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "writing the configuration snapshot failed")
            }
            Err(e) => tracing::warn!(error = %e, "writing the configuration snapshot failed"),
        }
        // A version committed before the stop is still written (hence `biased`); one committed
        // after it, at the next start.
        tokio::select! {
            biased;
            changed = versions.changed() => if changed.is_err() { return },
            _ = stopping.requested() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{CatchUp, ConfigHistory};
    use crate::model::{Source, TagRules, Workspace};
    use crate::store::{Change, Store, StoreError};
    use serde_json::json;
    use sluice_config::shaping::{Extract, OnInvalid, TagRule};
    use sluice_config::snapshot::Protocol;
    use uuid::Uuid;

    fn rule(pattern: &str) -> TagRule {
        TagRule {
            id: Uuid::now_v7(),
            name: "site".into(),
            sources: vec!["telemetry".into()],
            extract: Extract::Topic {
                pattern: pattern.into(),
                device_id: None,
            },
        }
    }

    fn write(store: &Store, changes: Vec<Change>) {
        store
            .write(|_| Ok::<_, StoreError>((changes, ())))
            .expect("write");
    }

    /// What a node gets after `from`: the deltas it applies, replayed onto its copy.
    fn node_copy(history: &ConfigHistory, from: &ConfigSnapshot) -> ConfigSnapshot {
        match history.catch_up(from.version, &from.content_hash()) {
            CatchUp::Deltas(deltas) => deltas.iter().fold(from.clone(), |copy, d| {
                copy.apply(d).expect("the delta applies")
            }),
            _ => panic!("a node one version behind gets deltas"),
        }
    }

    #[test]
    fn a_schema_or_tag_rule_change_is_a_new_version_whose_delta_carries_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("cp.redb")).expect("open");
        let ws = Workspace {
            id: Uuid::now_v7(),
            slug: "plant".into(),
            name: "Plant".into(),
            created_by: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        };
        let mut source = Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "telemetry".into(),
            name: "telemetry".into(),
            protocols: vec![Protocol::Http],
            schema: None,
            on_invalid: OnInvalid::Reject,
            keep_payload: true,
            created_at: chrono::Utc::now(),
        };
        write(
            &store,
            vec![
                Change::PutWorkspace(ws.clone()),
                Change::PutSource(source.clone()),
            ],
        );
        let first = store.read(|s| build(s, false));
        let history = ConfigHistory::new(first.clone());

        source.schema = Some(json!({"properties": {"temp_c": {"type": "number"}}}));
        source.on_invalid = OnInvalid::Quarantine;
        source.keep_payload = false;
        write(&store, vec![Change::PutSource(source.clone())]);
        let second = store.read(|s| build(s, false));
        assert_eq!(second.version, first.version + 1);
        assert_ne!(second.content_hash(), first.content_hash());
        history.advance(second.clone());
        let copy = node_copy(&history, &first);
        let shaped = &copy.workspaces[0].sources[0];
        assert_eq!(shaped.schema, source.schema);
        assert_eq!(shaped.on_invalid, OnInvalid::Quarantine);
        assert!(!shaped.keep_payload);

        let rules = vec![rule("ingest/{source}/{site}/#"), rule("site/{site}")];
        write(
            &store,
            vec![Change::PutTagRules(TagRules {
                workspace_id: ws.id,
                rules: rules.clone(),
            })],
        );
        let third = store.read(|s| build(s, false));
        assert_eq!(third.version, second.version + 1);
        history.advance(third.clone());
        assert_eq!(node_copy(&history, &second).workspaces[0].tag_rules, rules);

        let reordered = vec![rules[1].clone(), rules[0].clone()];
        write(
            &store,
            vec![Change::PutTagRules(TagRules {
                workspace_id: ws.id,
                rules: reordered.clone(),
            })],
        );
        let fourth = store.read(|s| build(s, false));
        assert_eq!(fourth.version, third.version + 1);
        assert_ne!(
            fourth.content_hash(),
            third.content_hash(),
            "the order of the rules is part of the hash"
        );
        history.advance(fourth);
        assert_eq!(
            node_copy(&history, &third).workspaces[0].tag_rules,
            reordered
        );

        // Persisted: a restarted control plane builds the same configuration.
        drop(store);
        let store = Store::open(&dir.path().join("cp.redb")).expect("reopen");
        assert_eq!(
            store.read(|s| build(s, false)).workspaces[0].tag_rules,
            reordered
        );
    }

    #[test]
    fn outputs_endpoints_and_read_tokens_reach_the_snapshot_and_it_validates() {
        use crate::model::{AccessToken, ExportEndpoint, Output};
        use sluice_config::data_out::{CompareOp, Condition, Field, Filter};
        use sluice_config::snapshot::Scope;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("cp.redb")).expect("open");
        let ws = Workspace {
            id: Uuid::now_v7(),
            slug: "plant".into(),
            name: "Plant".into(),
            created_by: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        };
        let source = Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "telemetry".into(),
            name: "telemetry".into(),
            protocols: vec![Protocol::Http],
            schema: Some(json!({"properties": {"temp_c": {"type": "number"}}})),
            on_invalid: OnInvalid::Reject,
            keep_payload: true,
            created_at: chrono::Utc::now(),
        };
        let output = Output {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "hot".into(),
            name: "Hot".into(),
            source: "telemetry".into(),
            filter: Filter {
                conditions: vec![Condition {
                    pointer: "/temp_c".into(),
                    op: CompareOp::Gt,
                    value: Some(json!(30)),
                }],
                ..Filter::default()
            },
            fields: vec![Field {
                from: "/temp_c".into(),
                name: Some("t".into()),
            }],
            created_at: chrono::Utc::now(),
        };
        let endpoint = ExportEndpoint {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "live".into(),
            name: "live".into(),
            output: "hot".into(),
            created_at: chrono::Utc::now(),
        };
        let reader = AccessToken {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            name: "dashboard".into(),
            sha256: "ab".repeat(32),
            hint: String::new(),
            scopes: vec![Scope::Read],
            sources: None,
            device_id: None,
            endpoints: Some(vec!["live".into()]),
            expires_at: None,
            created_by: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
        };
        write(
            &store,
            vec![
                Change::PutWorkspace(ws.clone()),
                Change::PutSource(source),
                Change::PutOutput(output.clone()),
                Change::PutExportEndpoint(endpoint.clone()),
                Change::PutToken(reader),
            ],
        );
        let before = store.read(|s| s.config_version);
        let snapshot = store.read(|s| build(s, false));
        snapshot.validate().expect("a valid configuration");
        let pushed = &snapshot.workspaces[0];
        assert_eq!(pushed.outputs, vec![output.config()]);
        assert_eq!(pushed.export_endpoints, vec![endpoint.config()]);
        assert_eq!(pushed.tokens[0].endpoints, Some(vec!["live".to_owned()]));

        // Deleting an endpoint is a new version without it; the store keeps it across restarts.
        write(&store, vec![Change::DeleteExportEndpoint(endpoint.id)]);
        assert_eq!(store.read(|s| s.config_version), before + 1);
        drop(store);
        let store = Store::open(&dir.path().join("cp.redb")).expect("reopen");
        let snapshot = store.read(|s| build(s, false));
        assert_eq!(snapshot.workspaces[0].outputs, vec![output.config()]);
        assert!(snapshot.workspaces[0].export_endpoints.is_empty());

        // A webhook reaches nodes with its secret sealed for them, the same bytes at every
        // build (the content hash must not move without a change); an `http://` one only
        // while the operator allows private hosts.
        let secret = sluice_config::webhook_signature::generate_secret();
        let cluster = "a cluster secret of the test";
        let webhook = crate::model::Webhook {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "alerts".into(),
            name: "alerts".into(),
            output: "hot".into(),
            url: "http://10.0.0.5:8080/in".into(),
            enabled: true,
            batch_events_max: 500,
            batch_bytes_max: 1 << 20,
            batch_interval_ms: 1000,
            disable_after_s: 86_400,
            secret_sealed: String::new(),
            secret_for_nodes: Some(sluice_config::sealed::seal(cluster, &secret).expect("seal")),
            disabled: None,
            created_at: chrono::Utc::now(),
        };
        write(&store, vec![Change::PutWebhook(webhook.clone())]);
        let first = store.read(|s| build(s, true));
        first.validate().expect("a valid configuration");
        assert_eq!(
            first.content_hash(),
            store.read(|s| build(s, true)).content_hash()
        );
        let pushed = &first.workspaces[0].webhooks;
        assert_eq!(pushed, &vec![webhook.config(true)]);
        assert_eq!(
            sluice_config::sealed::open(cluster, &pushed[0].secret_sealed).expect("opens"),
            secret
        );
        assert!(store.read(|s| build(s, false)).workspaces[0]
            .webhooks
            .is_empty());
    }
}
