//! The roundtrip property over generated workspaces (sources, tag rules, outputs, export
//! endpoints and webhooks): export, import the export (as JSON and as YAML), export again
//! gives the same bytes, and the import changes nothing, so it makes no new configuration
//! version.

use arbtest::arbitrary::{Result, Unstructured};
use chrono::Utc;
use serde_json::{json, Value};
use sluice_config::shaping::{self, Extract, OnInvalid, TagRule};
use uuid::Uuid;

use std::collections::HashMap;

use sluice_config::data_out::{CompareOp, Condition, Field, Filter};

use super::data_out::Context;
use super::import::{parse, plan, read};
use super::{export, PublicUrls};
use crate::model::{
    ExportEndpoint, Output, Protocol, Source, TagRules, Webhook, WebhookDisabled, Workspace,
};
use crate::store::{Change, State, Store, StoreError};

/// What an import of a generated document is planned with: receivers' hosts are not resolved
/// (the API does that before planning; unchanged URLs are never resolved again).
fn plan_in(
    s: &State,
    ws: &Workspace,
    proposed: super::import::Proposed,
) -> std::result::Result<(super::import::Plan, Vec<Change>), Vec<crate::problem::FieldError>> {
    let checks = HashMap::new();
    let cx = Context {
        allow_private: false,
        actor: "ada@example.com",
        url_checks: &checks,
    };
    plan(s, ws, proposed, 1000, &cx)
}

/// Receivers' URLs, with what AsyncAPI addresses must escape (`{`) and a port.
const URLS: [&str; 3] = [
    "https://93.184.216.34/hooks/sluice",
    "https://receiver.example.com:8443/in?team={ops}&x=1",
    "https://[2606:2800:220:1::]/a/b",
];

/// A filter and projection that fit `schema`: pointers only at properties it lists.
fn shape(u: &mut Unstructured, schema: Option<&Value>) -> Result<(Filter, Vec<Field>)> {
    let property = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .and_then(|p| p.keys().next().cloned())
        .or_else(|| schema.is_none().then(|| "temp_c".to_owned()));
    let mut filter = Filter::default();
    if u.arbitrary()? {
        filter.device_ids = vec!["dev-1".into(), "dev\"2".into()];
    }
    if u.arbitrary()? {
        filter.tags.insert("site".into(), "plant-7".into());
    }
    let mut fields = Vec::new();
    if let Some(property) = property {
        if u.arbitrary()? {
            filter.conditions.push(Condition {
                pointer: format!("/{property}"),
                op: if u.arbitrary()? {
                    CompareOp::Exists
                } else {
                    CompareOp::Absent
                },
                value: None,
            });
        }
        if u.arbitrary()? {
            fields.push(Field {
                from: "event_id".into(),
                name: None,
            });
            fields.push(Field {
                from: format!("/{property}"),
                name: Some("value".into()),
            });
            if u.arbitrary()? {
                fields.push(Field {
                    from: "payload".into(),
                    name: None,
                });
            }
        }
    }
    Ok((filter, fields))
}

fn urls() -> PublicUrls {
    PublicUrls {
        ingest: "https://ingest.example.com/base".into(),
        mqtt: "mqtts://mqtt.example.com:8883".into(),
    }
}

/// Names with what JSON and YAML must escape or quote.
const NAMES: [&str; 6] = [
    "Pumps",
    "Zähler Nord",
    "yes",
    "a \"quoted\" name: with # and *",
    "12",
    "line\\back",
];

fn schema(u: &mut Unstructured) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => None,
        1 => Some(json!({"type": "object"})),
        2 => Some(json!({
            "type": "object",
            "properties": {"temperature": {"type": "number", "minimum": -40.5},
                           "at": {"type": "string", "format": "date-time"}},
            "required": ["temperature"],
        })),
        3 => Some(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"reading": {"$ref": "#/$defs/reading"}, "n": {"type": "integer"}},
            "$defs": {"reading": {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}}}},
        })),
        _ => Some(json!({
            "type": "object",
            "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"},
                           "tags": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": false,
        })),
    })
}

fn extract(u: &mut Unstructured, tag: usize) -> Result<Extract> {
    let tag = format!("t{tag}");
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Extract::Topic {
            pattern: "ingest/{source}/{site}/+/#".into(),
            device_id: u.arbitrary::<bool>()?.then(|| "site".into()),
        },
        1 => Extract::Header {
            name: "X-Line".into(),
            tag,
            device_id: u.arbitrary()?,
        },
        2 => Extract::Query {
            name: "line".into(),
            tag,
            device_id: false,
        },
        _ => Extract::Pointer {
            pointer: "/meta/a~1b".into(),
            tag,
            device_id: u.arbitrary()?,
        },
    })
}

/// A workspace with up to 8 sources and 5 tag rules of every kind, committed to `store`.
fn workspace(u: &mut Unstructured, store: &Store) -> Result<Workspace> {
    let ws = Workspace {
        id: Uuid::now_v7(),
        slug: "plant".into(),
        name: (*u.choose(&NAMES)?).into(),
        created_by: Uuid::now_v7(),
        created_at: Utc::now(),
        enabled: true,
        cors_allowed_origins: vec![],
        asyncapi_public: false,
    };
    let mut changes = vec![Change::PutWorkspace(ws.clone())];
    let mut slugs = Vec::new();
    for i in 0..u.int_in_range(0..=8u8)? {
        let slug = format!("{}-{i}", u.choose(&["pumps", "a", "0x", "line-7"])?);
        let schema = schema(u)?;
        let typed = schema
            .as_ref()
            .is_some_and(|s| !shaping::columns(s).is_empty());
        let protocols = match u.int_in_range(0..=2u8)? {
            0 => vec![Protocol::Http],
            1 => vec![Protocol::Mqtt],
            _ => vec![Protocol::Mqtt, Protocol::Http],
        };
        slugs.push(slug.clone());
        changes.push(Change::PutSource(Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug,
            name: (*u.choose(&NAMES)?).into(),
            protocols,
            schema,
            on_invalid: if u.arbitrary()? {
                OnInvalid::Quarantine
            } else {
                OnInvalid::Reject
            },
            keep_payload: !typed || u.arbitrary()?,
            created_at: Utc::now(),
        }));
    }
    let mut rules = Vec::new();
    for i in 0..u.int_in_range(0..=5usize)? {
        let mut sources = Vec::new();
        for slug in &slugs {
            if u.ratio(1, 3)? {
                sources.push(slug.clone());
            }
        }
        rules.push(TagRule {
            id: Uuid::now_v7(),
            name: (*u.choose(&NAMES)?).into(),
            sources,
            extract: extract(u, i)?,
        });
    }
    changes.push(Change::PutTagRules(TagRules {
        workspace_id: ws.id,
        rules,
    }));
    let sources: Vec<(String, Option<Value>)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::PutSource(x) => Some((x.slug.clone(), x.schema.clone())),
            _ => None,
        })
        .collect();
    let mut outputs = Vec::new();
    if !sources.is_empty() {
        for i in 0..u.int_in_range(0..=4u8)? {
            let (source, schema) = u.choose(&sources)?;
            let (filter, fields) = shape(u, schema.as_ref())?;
            let output = Output {
                id: Uuid::now_v7(),
                workspace_id: ws.id,
                slug: format!("{}-{i}", u.choose(&["hot", "all", "9"])?),
                name: (*u.choose(&NAMES)?).into(),
                source: source.clone(),
                filter,
                fields,
                created_at: Utc::now(),
            };
            let config = output.config();
            config.check().expect("a generated output is valid");
            if let Some(schema) = schema {
                config
                    .check_against_schema(schema)
                    .expect("a generated output fits its source");
            }
            outputs.push(output.slug.clone());
            changes.push(Change::PutOutput(output));
        }
    }
    if !outputs.is_empty() {
        for i in 0..u.int_in_range(0..=3u8)? {
            changes.push(Change::PutExportEndpoint(ExportEndpoint {
                id: Uuid::now_v7(),
                workspace_id: ws.id,
                slug: format!("{}-{i}", u.choose(&["live", "board"])?),
                name: (*u.choose(&NAMES)?).into(),
                output: u.choose(&outputs)?.clone(),
                created_at: Utc::now(),
            }));
        }
        for i in 0..u.int_in_range(0..=3u8)? {
            let enabled: bool = u.arbitrary()?;
            changes.push(Change::PutWebhook(Webhook {
                id: Uuid::now_v7(),
                workspace_id: ws.id,
                slug: format!("{}-{i}", u.choose(&["hook", "crm"])?),
                name: (*u.choose(&NAMES)?).into(),
                output: u.choose(&outputs)?.clone(),
                url: (*u.choose(&URLS)?).into(),
                enabled,
                batch_events_max: u.int_in_range(1..=10_000)?,
                batch_bytes_max: u.int_in_range(1024..=8 << 20)?,
                batch_interval_ms: u.int_in_range(10..=3_600_000)?,
                disable_after_s: u.int_in_range(60..=30 * 24 * 3600)?,
                secret_sealed: "sealed-secret-never-exported".into(),
                secret_for_nodes: Some("sealed-for-nodes-never-exported".into()),
                disabled: (!enabled).then(|| WebhookDisabled {
                    at: Utc::now(),
                    reason: "failing since then".into(),
                }),
                created_at: Utc::now(),
            }));
        }
    }
    store
        .write(|_| Ok::<_, StoreError>((changes, ())))
        .expect("the generated workspace commits");
    Ok(ws)
}

#[test]
fn export_import_export_is_byte_identical_and_makes_no_new_version() {
    arbtest::arbtest(|u| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("cp.redb")).expect("store");
        let ws = workspace(u, &store)?;
        let version = store.read(|s| s.config_version);
        let first = store.read(|s| export(s, &ws, &urls()));
        let json_text = serde_json::to_string_pretty(&first).expect("json");
        let yaml_text = serde_yaml_ng::to_string(&first).expect("yaml");
        for (text, yaml) in [(&json_text, false), (&yaml_text, true)] {
            let document = parse(text.as_bytes(), yaml).expect("the export reads back");
            assert_eq!(document, first, "yaml: {yaml}");
            let proposed = read(&document).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
            let (planned, changes) = store
                .read(|s| plan_in(s, &ws, proposed))
                .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
            assert!(
                planned.created.is_empty()
                    && planned.updated.is_empty()
                    && planned.deleted.is_empty(),
                "{planned:?}\n{text}"
            );
            assert!(changes.is_empty(), "{changes:?}");
            store
                .write(|_| Ok::<_, StoreError>((changes, ())))
                .expect("commit");
            assert_eq!(store.read(|s| s.config_version), version, "no new version");
            let again = store.read(|s| export(s, &ws, &urls()));
            assert!(
                !json_text.contains("sealed"),
                "no secret, sealed or not: {json_text}"
            );
            assert_eq!(
                serde_json::to_string_pretty(&again).expect("json"),
                json_text,
                "byte for byte"
            );
        }
        Ok(())
    })
    .budget_ms(
        std::env::var("SLUICE_FUZZ_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
}

#[test]
fn a_document_without_ids_imports_into_an_empty_workspace_as_new_entities() {
    arbtest::arbtest(|u| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("cp.redb")).expect("store");
        let ws = workspace(u, &store)?;
        let mut document = store.read(|s| export(s, &ws, &urls()));
        // What a person writes by hand: no ids anywhere.
        if let Some(channels) = document["channels"].as_object_mut() {
            for channel in channels.values_mut() {
                if let Some(c) = channel.as_object_mut() {
                    for id in [
                        "x-sluice-sourceId",
                        "x-sluice-endpointId",
                        "x-sluice-subscriptionId",
                    ] {
                        c.remove(id);
                    }
                }
            }
        }
        if let Some(messages) = document["components"]["messages"].as_object_mut() {
            for message in messages.values_mut() {
                message
                    .as_object_mut()
                    .map(|m| m.remove("x-sluice-outputId"));
            }
        }
        if let Some(rules) = document["x-sluice-tagRules"].as_array_mut() {
            for rule in rules {
                rule.as_object_mut().map(|r| r.remove("id"));
            }
        }
        let other = tempfile::tempdir().expect("tempdir");
        let fresh = Store::open(&other.path().join("cp.redb")).expect("store");
        let empty = Workspace {
            id: Uuid::now_v7(),
            ..ws.clone()
        };
        fresh
            .write(|_| Ok::<_, StoreError>((vec![Change::PutWorkspace(empty.clone())], ())))
            .expect("commit");
        let proposed = read(&document).expect("reads");
        let (planned, changes) = fresh.read(|s| plan_in(s, &empty, proposed)).expect("plans");
        let entities = store.read(|s| {
            s.sources_of(ws.id).count()
                + s.tag_rules_of(ws.id).len()
                + s.outputs_of(ws.id).count()
                + s.export_endpoints_of(ws.id).count()
                + s.webhooks_of(ws.id).count()
        });
        assert_eq!(planned.created.len(), entities);
        assert!(planned.updated.is_empty() && planned.deleted.is_empty());
        fresh
            .write(|_| Ok::<_, StoreError>((changes, ())))
            .expect("commit");
        // The new workspace exports what the old one did, but for ids and the version.
        let ids = |s: &State, ws: Uuid| -> Vec<Uuid> {
            s.sources_of(ws)
                .map(|x| x.id)
                .chain(s.tag_rules_of(ws).iter().map(|r| r.id))
                .chain(s.outputs_of(ws).map(|o| o.id))
                .chain(s.export_endpoints_of(ws).map(|e| e.id))
                .chain(s.webhooks_of(ws).map(|w| w.id))
                .collect()
        };
        let strip = |mut d: Value| {
            d["info"] = Value::Null;
            let mut out = d.to_string();
            let all = store
                .read(|s| ids(s, ws.id))
                .into_iter()
                .chain(fresh.read(|s| ids(s, empty.id)));
            for id in all {
                out = out.replace(&id.to_string(), "id");
            }
            out
        };
        let before = strip(store.read(|s| export(s, &ws, &urls())));
        let after = strip(fresh.read(|s| export(s, &empty, &urls())));
        assert_eq!(before, after);
        Ok(())
    })
    .budget_ms(1000);
}
