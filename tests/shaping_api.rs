//! Shaping through the control-plane API, against a real `sluice up`: sources' JSON Schemas
//! checked when saved (with the pointer of what is wrong), `on_invalid` and `keep_payload`, the
//! typed columns and schema version a source shows, tag rules (create, order, change, delete,
//! refusals, the limit, roles), and every change reaching the node as a new configuration
//! version that carries it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::controlplane::{add_member, verified_user, Api, User};
use common::{wait_for, Answer, Sluice};
use serde_json::{json, Value};

fn assert_problem(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status, status, "expected {status} {kind}, got {}", a.body);
    assert_eq!(a.content_type, "application/problem+json", "{}", a.body);
    assert_eq!(a.problem(), kind, "problem type of {}", a.body);
    assert!(
        !a.json()["detail"].as_str().unwrap_or_default().is_empty(),
        "a detail to act on: {}",
        a.body
    );
}

/// A user with workspace `plant` and its source `telemetry`.
fn setup(sluice: &Sluice) -> (Api, User) {
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&jo.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    (api, jo)
}

/// The configuration file `sluice up` writes for its node.
fn snapshot(data_dir: &Path) -> Value {
    let text = std::fs::read_to_string(data_dir.join("config-snapshot.json"))
        .expect("config-snapshot.json");
    serde_json::from_str(&text).expect("config-snapshot.json is JSON")
}

fn workspace<'s>(snapshot: &'s Value, slug: &str) -> &'s Value {
    snapshot["workspaces"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["slug"] == slug))
        .expect("the workspace is in the snapshot")
}

/// Waits until the snapshot file satisfies `check` and the node serves that version (or a
/// later one); returns the snapshot.
fn reaches_the_node(sluice: &Sluice, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut seen = Value::Null;
    let reached = wait_for(Duration::from_secs(10), || {
        let Ok(text) = std::fs::read_to_string(sluice.data_dir.join("config-snapshot.json")) else {
            return false;
        };
        let Ok(s) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        let version = s["version"].as_u64().unwrap_or(u64::MAX);
        let ok = check(&s)
            && sluice.readyz()["config_version"]
                .as_u64()
                .is_some_and(|v| v >= version);
        seen = s;
        ok
    });
    assert!(reached, "{what} did not reach the node: {seen}");
    seen
}

#[test]
fn a_source_schema_is_checked_when_saved_and_shows_its_typed_columns_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let (api, jo) = setup(&sluice);
    let sources = "/api/v1/workspaces/plant/sources";
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "temp_c": {"type": "number"},
            "at": {"type": "string", "format": "date-time"},
            "count": {"type": "integer"},
            "ok": {"type": "boolean"},
            "site": {"$ref": "#/$defs/site"},
            "meta": {"type": "object"},
            "either": {"type": ["string", "number"]}
        },
        "required": ["temp_c"],
        "$defs": {"site": {"type": "string"}}
    });
    let a = api.post(
        sources,
        Some(&jo.token),
        json!({"slug": "boilers", "schema": schema, "on_invalid": "quarantine"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.get(&format!("{sources}/boilers"), &jo.token);
    assert_eq!(a.status, 200, "{}", a.body);
    let source = a.json();
    assert_eq!(source["schema"], schema);
    assert_eq!(
        source["columns"],
        json!([
            {"name": "at", "type": "timestamp"},
            {"name": "count", "type": "int64"},
            {"name": "meta", "type": "json"},
            {"name": "ok", "type": "boolean"},
            {"name": "temp_c", "type": "float64"},
        ]),
        "a typed column per property of one type; `site` (a $ref) and `either` stay in payload"
    );
    let version = source["schema_version"].as_str().expect("a schema version");
    assert!(
        version.len() == 16 && version.bytes().all(|b| b.is_ascii_hexdigit()),
        "{version}"
    );
    assert_eq!(source["on_invalid"], "quarantine");
    assert_eq!(source["keep_payload"], true);
    let plain = api.get(&format!("{sources}/telemetry"), &jo.token).json();
    assert_eq!(plain["columns"], json!([]));
    assert_eq!(plain["schema_version"], Value::Null);
    assert_eq!(plain["on_invalid"], "reject");

    // What the nodes could not apply is refused, with the pointer of what is wrong.
    let a = api.post(
        sources,
        Some(&jo.token),
        json!({"slug": "bad", "schema": {"type": 12}}),
    );
    assert_problem(&a, 400, "invalid-schema");
    let errors = a.json()["errors"].clone();
    assert_eq!(errors[0]["pointer"], "/type", "{}", a.body);
    assert!(
        !errors[0]["message"].as_str().unwrap_or_default().is_empty(),
        "{}",
        a.body
    );
    let a = api.post(
        sources,
        Some(&jo.token),
        json!({"slug": "bad", "schema": {"properties": {"a": {"$ref": "https://schemas.example.com/a.json"}}}}),
    );
    assert_problem(&a, 400, "invalid-schema");
    assert_eq!(
        a.json()["errors"][0]["pointer"],
        "/properties/a/$ref",
        "{}",
        a.body
    );
    assert!(a.body.contains("not fetched"), "{}", a.body);
    for (schema, pointer) in [
        (json!({"$ref": "#/$defs/missing"}), None),
        (json!({"type": "string", "pattern": "(unclosed"}), None),
        (
            json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
            Some("/$schema"),
        ),
        (json!(["not", "an", "object"]), Some("")),
    ] {
        let a = api.patch(
            &format!("{sources}/boilers"),
            &jo.token,
            json!({"schema": schema}),
        );
        assert_problem(&a, 400, "invalid-schema");
        if let Some(pointer) = pointer {
            assert_eq!(a.json()["errors"][0]["pointer"], pointer, "{}", a.body);
        }
    }
    assert_eq!(
        api.get(&format!("{sources}/boilers"), &jo.token).json()["schema"],
        schema,
        "a refused change changes nothing"
    );

    // keep_payload false only where typed columns keep the events' content.
    let a = api.post(
        sources,
        Some(&jo.token),
        json!({"slug": "bare", "keep_payload": false}),
    );
    assert_problem(&a, 400, "invalid-body");
    let a = api.patch(
        &format!("{sources}/boilers"),
        &jo.token,
        json!({"keep_payload": false, "on_invalid": "reject"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["keep_payload"], false);
    assert_eq!(a.json()["on_invalid"], "reject");
    let a = api.patch(
        &format!("{sources}/boilers"),
        &jo.token,
        json!({"schema": null}),
    );
    assert_problem(&a, 400, "invalid-body");

    // The node gets the schema and the settings with the next configuration version.
    let s = reaches_the_node(&sluice, "the source's schema", |s| {
        s["workspaces"].as_array().is_some_and(|all| {
            all.iter().any(|w| {
                w["sources"].as_array().is_some_and(|x| {
                    x.iter()
                        .any(|x| x["slug"] == "boilers" && x["keep_payload"] == false)
                })
            })
        })
    });
    let pushed = workspace(&s, "plant")["sources"]
        .as_array()
        .and_then(|x| x.iter().find(|x| x["slug"] == "boilers"))
        .cloned()
        .expect("boilers");
    assert_eq!(pushed["schema"], schema);
    assert_eq!(
        pushed.get("on_invalid"),
        None,
        "reject is the default, left out"
    );

    // A changed schema is a new version, and a new schema version on the source.
    let before = snapshot(&sluice.data_dir)["version"]
        .as_u64()
        .expect("version");
    let mut changed = schema.clone();
    changed["properties"]["humidity"] = json!({"type": "number"});
    let a = api.patch(
        &format!("{sources}/boilers"),
        &jo.token,
        json!({"schema": changed}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_ne!(a.json()["schema_version"], version);
    let s = reaches_the_node(&sluice, "the changed schema", |s| {
        s["version"].as_u64().is_some_and(|v| v > before)
    });
    assert!(
        workspace(&s, "plant")["sources"]
            .as_array()
            .is_some_and(|x| x.iter().any(|x| x["schema"] == changed)),
        "{s}"
    );
}

fn rule(name: &str, extract: Value) -> Value {
    json!({"name": name, "extract": extract})
}

fn ids(list: &Answer) -> Vec<String> {
    list.json()["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn tag_rules_are_kept_in_order_checked_limited_and_reach_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let (api, jo) = setup(&sluice);
    let rules = "/api/v1/workspaces/plant/tag-rules";
    let empty = api.get(rules, &jo.token);
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.json(), json!({"rules": []}));

    let mut made = Vec::new();
    for body in [
        rule(
            "site and device from the topic",
            json!({"from": "topic", "pattern": "ingest/{source}/{site}/{device}", "device_id": "device"}),
        ),
        rule(
            "line from a header",
            json!({"from": "header", "name": "X-Line", "tag": "line"}),
        ),
        json!({"name": "firmware from the payload", "sources": ["telemetry"],
               "extract": {"from": "pointer", "pointer": "/meta/fw", "tag": "firmware"}}),
    ] {
        let a = api.post(rules, Some(&jo.token), body);
        assert_eq!(a.status, 201, "{}", a.body);
        let id = a.json()["id"].as_str().expect("id").to_owned();
        assert_eq!(
            id.chars().nth(14),
            Some('7'),
            "ids are UUIDv7 given by the server: {id}"
        );
        made.push(id);
    }
    assert_eq!(ids(&api.get(rules, &jo.token)), made, "in creation order");
    let first = api.post(
        rules,
        Some(&jo.token),
        json!({"name": "first", "position": 0,
               "extract": {"from": "query", "name": "site", "tag": "site"}}),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let first = first.json()["id"].as_str().expect("id").to_owned();
    let mut order = vec![first.clone()];
    order.extend(made.iter().cloned());
    assert_eq!(ids(&api.get(rules, &jo.token)), order);

    // Reordering: the whole list, in its new order.
    let mut listed: Vec<Value> = api.get(rules, &jo.token).json()["rules"]
        .as_array()
        .cloned()
        .expect("rules");
    listed.reverse();
    let a = api.put(rules, &jo.token, json!({"rules": listed}));
    assert_eq!(a.status, 200, "{}", a.body);
    order.reverse();
    assert_eq!(ids(&api.get(rules, &jo.token)), order);

    // One rule changed in place, then moved; it keeps its id.
    let one = format!("{rules}/{}", made[1]);
    let a = api.put(
        &one,
        &jo.token,
        rule(
            "line from the query",
            json!({"from": "query", "name": "line", "tag": "line"}),
        ),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["id"], made[1].as_str());
    assert_eq!(ids(&api.get(rules, &jo.token)), order, "it keeps its place");
    let a = api.put(
        &one,
        &jo.token,
        json!({"name": "line from the query", "position": 0,
               "extract": {"from": "query", "name": "line", "tag": "line"}}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let got = api.get(&one, &jo.token);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["extract"]["from"], "query");
    assert_eq!(ids(&api.get(rules, &jo.token))[0], made[1]);

    // Refusals, each leaving the list as it was.
    let before = api.get(rules, &jo.token).body;
    let refusals = [
        (
            "POST",
            rules.to_owned(),
            rule(
                "captures nothing",
                json!({"from": "topic", "pattern": "ingest/+/#"}),
            ),
            400,
            "invalid-tag-rule",
        ),
        (
            "POST",
            rules.to_owned(),
            rule(
                "bad pointer",
                json!({"from": "pointer", "pointer": "meta/fw", "tag": "fw"}),
            ),
            400,
            "invalid-tag-rule",
        ),
        (
            "POST",
            rules.to_owned(),
            rule(
                "bad tag",
                json!({"from": "header", "name": "X-Site", "tag": "Site"}),
            ),
            400,
            "invalid-tag-rule",
        ),
        (
            "POST",
            rules.to_owned(),
            json!({"name": "elsewhere", "sources": ["nowhere"],
                   "extract": {"from": "header", "name": "X-Site", "tag": "site"}}),
            400,
            "unknown-source",
        ),
        (
            "POST",
            rules.to_owned(),
            rule(
                "cookie",
                json!({"from": "cookie", "name": "site", "tag": "site"}),
            ),
            400,
            "invalid-body",
        ),
        (
            "PUT",
            rules.to_owned(),
            json!({"rules": [{"id": "01938d2e-7f00-7000-8000-000000000001", "name": "x",
                              "extract": {"from": "query", "name": "x", "tag": "x"}}]}),
            400,
            "invalid-tag-rule",
        ),
        (
            "PUT",
            format!("{rules}/01938d2e-7f00-7000-8000-000000000001"),
            rule("x", json!({"from": "query", "name": "x", "tag": "x"})),
            404,
            "unknown-tag-rule",
        ),
    ];
    for (method, path, body, status, kind) in refusals {
        let a = api.call(method, &path, Some(&jo.token), Some(&body));
        assert_problem(&a, status, kind);
        assert_eq!(api.get(rules, &jo.token).body, before, "{method} {path}");
    }
    let a = api.put(
        rules,
        &jo.token,
        json!({"rules": [rule("ok", json!({"from": "query", "name": "x", "tag": "x"})),
                         rule("bad", json!({"from": "query", "name": "x", "tag": "X"}))]}),
    );
    assert_problem(&a, 400, "invalid-tag-rule");
    assert_eq!(a.json()["errors"][0]["pointer"], "/rules/1", "{}", a.body);

    // The node gets the rules, in order, with the next configuration version.
    let order = ids(&api.get(rules, &jo.token));
    let s = reaches_the_node(&sluice, "the tag rules", |s| {
        let pushed: Vec<&str> = s["workspaces"]
            .as_array()
            .and_then(|all| all.iter().find(|w| w["slug"] == "plant"))
            .and_then(|w| w["tag_rules"].as_array())
            .map(|r| r.iter().filter_map(|r| r["id"].as_str()).collect())
            .unwrap_or_default();
        pushed == order
    });
    assert_eq!(
        workspace(&s, "plant")["tag_rules"][0]["extract"],
        json!({"from": "query", "name": "line", "tag": "line"})
    );

    // Deleted: gone from the list and from the node's configuration.
    assert_eq!(api.delete(&one, &jo.token).status, 204);
    assert_problem(&api.get(&one, &jo.token), 404, "unknown-tag-rule");
    assert_problem(&api.delete(&one, &jo.token), 404, "unknown-tag-rule");
    let removed = made[1].clone();
    reaches_the_node(&sluice, "the deletion", |s| {
        s["workspaces"]
            .as_array()
            .and_then(|all| all.iter().find(|w| w["slug"] == "plant"))
            .and_then(|w| w["tag_rules"].as_array())
            .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["id"] != removed.as_str()))
    });

    // At most 100 rules.
    let hundred: Vec<Value> = (0..100)
        .map(|i| {
            rule(
                &format!("rule {i}"),
                json!({"from": "query", "name": format!("p{i}"), "tag": format!("t{i}")}),
            )
        })
        .collect();
    let a = api.put(rules, &jo.token, json!({"rules": hundred}));
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.post(
        rules,
        Some(&jo.token),
        rule(
            "one more",
            json!({"from": "query", "name": "x", "tag": "x"}),
        ),
    );
    assert_problem(&a, 409, "limit-reached");
    let mut too_many = hundred.clone();
    too_many.push(rule(
        "one more",
        json!({"from": "query", "name": "x", "tag": "x"}),
    ));
    assert_problem(
        &api.put(rules, &jo.token, json!({"rules": too_many})),
        409,
        "limit-reached",
    );
    assert_eq!(
        api.put(rules, &jo.token, json!({"rules": []})).status,
        200,
        "an empty list removes every rule"
    );
}

#[test]
fn viewers_read_tag_rules_and_schemas_and_editors_manage_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let (api, admin) = setup(&sluice);
    let mail = sluice.data_dir.join("outbox");
    let editor = verified_user(&api, &mail, "ed@example.com");
    let viewer = verified_user(&api, &mail, "vi@example.com");
    add_member(&api, &mail, &admin, "plant", &editor, "editor");
    add_member(&api, &mail, &admin, "plant", &viewer, "viewer");
    let rules = "/api/v1/workspaces/plant/tag-rules";
    let body = rule(
        "site",
        json!({"from": "header", "name": "X-Site", "tag": "site"}),
    );

    let a = api.post(rules, Some(&editor.token), body.clone());
    assert_eq!(a.status, 201, "an Editor manages tag rules: {}", a.body);
    let one = format!("{rules}/{}", a.json()["id"].as_str().expect("id"));
    let list = api.get(rules, &viewer.token);
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(ids(&list).len(), 1);
    assert_eq!(api.get(&one, &viewer.token).status, 200);
    let source = api.get("/api/v1/workspaces/plant/sources/telemetry", &viewer.token);
    assert_eq!(source.status, 200, "{}", source.body);
    assert_eq!(source.json()["on_invalid"], "reject");

    let before = api.get(rules, &admin.token).body;
    for (method, path, body) in [
        ("POST", rules.to_owned(), Some(body.clone())),
        ("PUT", rules.to_owned(), Some(json!({"rules": []}))),
        ("PUT", one.clone(), Some(body.clone())),
        ("DELETE", one.clone(), None),
        (
            "PATCH",
            "/api/v1/workspaces/plant/sources/telemetry".to_owned(),
            Some(json!({"schema": {"type": "object"}})),
        ),
    ] {
        let a = api.call(method, &path, Some(&viewer.token), body.as_ref());
        assert_problem(&a, 403, "insufficient-role");
        let a = api.call(method, &path, None, body.as_ref());
        assert_problem(&a, 401, "unauthenticated");
    }
    assert_eq!(api.get(rules, &admin.token).body, before);
    assert_eq!(api.delete(&one, &editor.token).status, 204);
}
