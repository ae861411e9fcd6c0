//! The roundtrip property over generated workspaces: export, import the export (as JSON and
//! as YAML), export again gives the same bytes, and the import changes nothing, so it makes
//! no new configuration version.

use arbtest::arbitrary::{Result, Unstructured};
use chrono::Utc;
use serde_json::{json, Value};
use sluice_config::shaping::{self, Extract, OnInvalid, TagRule};
use uuid::Uuid;

use super::import::{parse, plan, read};
use super::{export, PublicUrls};
use crate::model::{Protocol, Source, TagRules, Workspace};
use crate::store::{Change, Store, StoreError};

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
                .read(|s| plan(s, &ws, proposed, 1000))
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
                channel
                    .as_object_mut()
                    .map(|c| c.remove("x-sluice-sourceId"));
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
        let (planned, changes) = fresh
            .read(|s| plan(s, &empty, proposed, 1000))
            .expect("plans");
        let sources = store.read(|s| s.sources_of(ws.id).count());
        let rules = store.read(|s| s.tag_rules_of(ws.id).len());
        assert_eq!(planned.created.len(), sources + rules);
        assert!(planned.updated.is_empty() && planned.deleted.is_empty());
        fresh
            .write(|_| Ok::<_, StoreError>((changes, ())))
            .expect("commit");
        // The new workspace exports what the old one did, but for ids and the version.
        let strip = |mut d: Value| {
            d["info"] = Value::Null;
            let text = d.to_string();
            let mut out = text.clone();
            for id in store.read(|s| s.sources_of(ws.id).map(|x| x.id).collect::<Vec<_>>()) {
                out = out.replace(&id.to_string(), "id");
            }
            for id in fresh.read(|s| s.sources_of(empty.id).map(|x| x.id).collect::<Vec<_>>()) {
                out = out.replace(&id.to_string(), "id");
            }
            for r in store.read(|s| s.tag_rules_of(ws.id).to_vec()) {
                out = out.replace(&r.id.to_string(), "id");
            }
            for r in fresh.read(|s| s.tag_rules_of(empty.id).to_vec()) {
                out = out.replace(&r.id.to_string(), "id");
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
