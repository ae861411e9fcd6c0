//! Outputs and export endpoints through the control-plane API, against a real `sluice up`:
//! create, read, change and delete both; outputs checked when saved (as nodes evaluate them,
//! and against their source's schema); names kept valid (`409 in-use` for a source an output
//! reads, an output an endpoint serves, an endpoint a token names, a schema or an AsyncAPI
//! import an output no longer fits); read tokens single-purpose and limited to existing
//! endpoints; roles; and every change reaching the node in the configuration stream.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::controlplane::{add_member, verified_user, Api, User};
use common::{agent, post, wait_for, Answer, Sluice};
use serde_json::{json, Value};

const SECRET: &str = "test-cluster-secret-for-data-out";
const OUTPUTS: &str = "/api/v1/workspaces/plant/outputs";
const ENDPOINTS: &str = "/api/v1/workspaces/plant/export-endpoints";
const TOKENS: &str = "/api/v1/workspaces/plant/tokens";

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

fn telemetry_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "temp_c": {"type": "number"},
            "ok": {"type": "boolean"},
            "meta": {"type": "object", "properties": {"site": {"type": "string"}}}
        }
    })
}

/// `sluice up` with a cluster secret (so the configuration stream can be read), and a user
/// with workspace `plant`, its source `telemetry` (with a schema) and `loose` (without).
fn setup(dir: &tempfile::TempDir) -> (Sluice, Api, User) {
    let sluice = Sluice::start(&dir.path().join("data"), &["--cluster-secret", SECRET]);
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    for (path, body) in [
        (
            "/api/v1/workspaces",
            json!({"name": "Plant", "slug": "plant"}),
        ),
        (
            "/api/v1/workspaces/plant/sources",
            json!({"slug": "telemetry", "schema": telemetry_schema()}),
        ),
        ("/api/v1/workspaces/plant/sources", json!({"slug": "loose"})),
    ] {
        let a = api.post(path, Some(&jo.token), body);
        assert_eq!(a.status, 201, "{path}: {}", a.body);
    }
    (sluice, api, jo)
}

/// The configuration a node that connects now gets: the stream's first line, a snapshot.
fn streamed_snapshot(api: &Api) -> Value {
    let mut resp = agent()
        .get(format!(
            "{}/api/v1/cluster/config-stream?node=probe",
            api.base
        ))
        .header("authorization", format!("Bearer {SECRET}"))
        .call()
        .expect("config stream");
    assert_eq!(resp.status(), 200);
    let mut line = String::new();
    BufReader::new(resp.body_mut().as_reader())
        .read_line(&mut line)
        .expect("a first line");
    let first: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(first["type"], "snapshot", "{first}");
    first["snapshot"].clone()
}

/// Waits until the streamed configuration satisfies `check` and `sluice up`'s own node serves
/// that version or a later one (it validated and applied it); returns plant's workspace.
fn reaches_the_node(
    sluice: &Sluice,
    api: &Api,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut seen = Value::Null;
    let reached = wait_for(Duration::from_secs(10), || {
        let snapshot = streamed_snapshot(api);
        let version = snapshot["version"].as_u64().unwrap_or(u64::MAX);
        let plant = snapshot["workspaces"]
            .as_array()
            .and_then(|all| all.iter().find(|w| w["slug"] == "plant"))
            .cloned()
            .unwrap_or(Value::Null);
        let ok = check(&plant)
            && sluice.readyz()["config_version"]
                .as_u64()
                .is_some_and(|v| v >= version);
        seen = plant;
        ok
    });
    assert!(reached, "{what} did not reach the node: {seen}");
    seen
}

fn slugs(list: &Answer) -> Vec<String> {
    list.json()["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["slug"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn hot_output() -> Value {
    json!({
        "slug": "hot",
        "name": "Hot boilers",
        "source": "telemetry",
        "filter": {
            "device_ids": ["boiler-1", "boiler-2"],
            "tags": {"site": "north"},
            "conditions": [{"pointer": "/temp_c", "op": "gt", "value": 30},
                           {"pointer": "/meta/site", "op": "exists"}]
        },
        "fields": [{"from": "device_id"}, {"from": "received_at"},
                   {"from": "/temp_c", "name": "t"}]
    })
}

#[test]
fn outputs_and_endpoints_are_created_read_changed_deleted_and_reach_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sluice, api, jo) = setup(&dir);

    let a = api.post(OUTPUTS, Some(&jo.token), hot_output());
    assert_eq!(a.status, 201, "{}", a.body);
    let output = a.json();
    let id = output["id"].as_str().expect("id").to_owned();
    assert_eq!(id.chars().nth(14), Some('7'), "a UUIDv7: {id}");
    for field in ["slug", "name", "source", "filter", "fields"] {
        assert_eq!(output[field], hot_output()[field], "{field}: {output}");
    }
    assert_eq!(
        output["schema"]["properties"],
        json!({
            "device_id": {"type": ["string", "null"]},
            "received_at": {"type": "string", "format": "date-time"},
            "t": {"type": "number"}
        }),
        "what the output produces, typed from the source's schema"
    );
    let a = api.get(&format!("{OUTPUTS}/hot"), &jo.token);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json(), output);
    let list = api.get(OUTPUTS, &jo.token);
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(slugs(&list), ["hot"]);

    // The default projection, on a source without a schema: any pointer goes.
    let a = api.post(
        OUTPUTS,
        Some(&jo.token),
        json!({"slug": "all", "source": "loose",
               "filter": {"conditions": [{"pointer": "/whatever/deep", "op": "lt", "value": "m"}]}}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["name"], "all", "the name defaults to the slug");
    let produced: Vec<String> = a.json()["schema"]["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for field in ["event_id", "received_at", "device_id", "tags", "payload"] {
        assert!(produced.contains(&field.to_owned()), "{produced:?}");
    }

    let a = api.post(
        ENDPOINTS,
        Some(&jo.token),
        json!({"slug": "live", "name": "Live board", "output": "hot"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let endpoint = a.json();
    assert_eq!(endpoint["url"], "/v1/stream/plant/live");
    assert_eq!(endpoint["output"], "hot");
    assert_eq!(
        endpoint["id"].as_str().and_then(|id| id.chars().nth(14)),
        Some('7')
    );
    assert_eq!(
        api.get(&format!("{ENDPOINTS}/live"), &jo.token).json(),
        endpoint
    );
    assert_eq!(slugs(&api.get(ENDPOINTS, &jo.token)), ["live"]);

    // The node gets both with the next configuration version.
    let plant = reaches_the_node(&sluice, &api, "the output and the endpoint", |w| {
        w["outputs"].as_array().is_some_and(|o| o.len() == 2)
            && w["export_endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
    });
    let pushed = plant["outputs"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["slug"] == "hot"))
        .cloned()
        .expect("hot");
    assert_eq!(pushed["id"], id.as_str());
    assert_eq!(pushed["filter"], hot_output()["filter"]);
    assert_eq!(pushed["fields"], hot_output()["fields"]);
    assert_eq!(
        plant["export_endpoints"][0],
        json!({"id": endpoint["id"], "slug": "live", "name": "Live board", "output": "hot"})
    );

    // Changed in place: the slug stays, what is given replaces, what is absent stays.
    let a = api.patch(
        &format!("{OUTPUTS}/hot"),
        &jo.token,
        json!({"name": "Very hot", "filter": {"conditions": [{"pointer": "/temp_c", "op": "gte", "value": 90}]}}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["name"], "Very hot");
    assert_eq!(a.json()["fields"], hot_output()["fields"]);
    assert_eq!(a.json()["id"], id.as_str());
    assert_problem(
        &api.patch(
            &format!("{OUTPUTS}/hot"),
            &jo.token,
            json!({"slug": "hotter"}),
        ),
        400,
        "invalid-body",
    );
    let a = api.patch(
        &format!("{ENDPOINTS}/live"),
        &jo.token,
        json!({"output": "all"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["output"], "all");
    assert_problem(
        &api.patch(
            &format!("{ENDPOINTS}/live"),
            &jo.token,
            json!({"output": "none"}),
        ),
        400,
        "unknown-output",
    );
    reaches_the_node(&sluice, &api, "the changes", |w| {
        w["export_endpoints"][0]["output"] == "all"
            && w["outputs"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["name"] == "Very hot"))
    });

    // Deleted: gone from the lists and from the node's configuration.
    assert_eq!(
        api.delete(&format!("{ENDPOINTS}/live"), &jo.token).status,
        204
    );
    assert_problem(
        &api.get(&format!("{ENDPOINTS}/live"), &jo.token),
        404,
        "unknown-export-endpoint",
    );
    for slug in ["hot", "all"] {
        assert_eq!(
            api.delete(&format!("{OUTPUTS}/{slug}"), &jo.token).status,
            204
        );
    }
    assert_problem(
        &api.get(&format!("{OUTPUTS}/hot"), &jo.token),
        404,
        "unknown-output",
    );
    assert_problem(
        &api.delete(&format!("{OUTPUTS}/hot"), &jo.token),
        404,
        "unknown-output",
    );
    assert!(slugs(&api.get(OUTPUTS, &jo.token)).is_empty());
    reaches_the_node(&sluice, &api, "the deletions", |w| {
        w.get("outputs")
            .is_none_or(|o| o.as_array().is_some_and(Vec::is_empty))
            && w.get("export_endpoints")
                .is_none_or(|e| e.as_array().is_some_and(Vec::is_empty))
    });
}

#[test]
fn outputs_and_endpoints_are_checked_when_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sluice, api, jo) = setup(&dir);
    let with = |changes: Value| {
        let mut body = hot_output();
        for (k, v) in changes.as_object().expect("an object") {
            body[k] = v.clone();
        }
        body
    };
    let conditions = |c: Value| json!({"conditions": [c]});
    // 256 device ids of 128 characters: within every count, over 16 KiB as JSON.
    let oversized: Vec<String> = (0..256).map(|i| format!("{i:0>128}")).collect();
    let refusals = [
        (
            with(
                json!({"filter": conditions(json!({"pointer": "temp_c", "op": "gt", "value": 1}))}),
            ),
            400,
            "invalid-output",
        ),
        (
            with(json!({"filter": {"device_ids": oversized}})),
            400,
            "invalid-output",
        ),
        (with(json!({"source": "nowhere"})), 400, "unknown-source"),
        (
            with(json!({"fields": [{"from": "/temperature"}]})),
            400,
            "invalid-output",
        ),
        (
            with(json!({"filter": conditions(json!({"pointer": "/meta/sit", "op": "exists"}))})),
            400,
            "invalid-output",
        ),
        (
            with(json!({"filter": conditions(json!({"pointer": "/ok", "op": "gt", "value": 1}))})),
            400,
            "invalid-output",
        ),
        (
            with(
                json!({"filter": conditions(json!({"pointer": "/temp_c", "op": "eq", "value": [1]}))}),
            ),
            400,
            "invalid-output",
        ),
        (
            with(
                json!({"filter": conditions(json!({"pointer": "/temp_c", "op": "exists", "value": 1}))}),
            ),
            400,
            "invalid-output",
        ),
        (
            with(json!({"fields": [{"from": "temperature"}]})),
            400,
            "invalid-output",
        ),
        (
            with(
                json!({"fields": [{"from": "/temp_c", "name": "t"}, {"from": "device_id", "name": "t"}]}),
            ),
            400,
            "invalid-output",
        ),
        (
            with(json!({"filter": {"tags": {"Site": "north"}}})),
            400,
            "invalid-output",
        ),
        (with(json!({"slug": "Hot!"})), 400, "invalid-slug"),
        (with(json!({"filter": {"cond": []}})), 400, "invalid-body"),
        (with(json!({"name": "x".repeat(101)})), 400, "invalid-name"),
    ];
    for (body, status, kind) in refusals {
        let a = api.post(OUTPUTS, Some(&jo.token), body.clone());
        assert_problem(&a, status, kind);
        assert!(slugs(&api.get(OUTPUTS, &jo.token)).is_empty(), "{body}");
    }
    let a = api.post(
        OUTPUTS,
        Some(&jo.token),
        with(json!({"filter": {"device_ids": oversized_but_few()}})),
    );
    assert_problem(&a, 400, "invalid-output");
    assert!(a.body.contains("bytes as JSON"), "{}", a.body);
    let a = api.post(
        OUTPUTS,
        Some(&jo.token),
        with(json!({"fields": [{"from": "/temperature"}]})),
    );
    assert!(
        a.body.contains("/temperature"),
        "names the pointer: {}",
        a.body
    );

    // A good one, then the same slug again; changes are checked as creations are.
    assert_eq!(api.post(OUTPUTS, Some(&jo.token), hot_output()).status, 201);
    assert_problem(
        &api.post(OUTPUTS, Some(&jo.token), hot_output()),
        409,
        "output-exists",
    );
    let before = api.get(&format!("{OUTPUTS}/hot"), &jo.token).body;
    for (body, kind) in [
        (json!({"source": "nowhere"}), "unknown-source"),
        (json!({"fields": [{"from": "/nope"}]}), "invalid-output"),
        (
            json!({"filter": {"device_ids": oversized_but_few()}}),
            "invalid-output",
        ),
    ] {
        assert_problem(
            &api.patch(&format!("{OUTPUTS}/hot"), &jo.token, body),
            400,
            kind,
        );
    }
    assert_eq!(api.get(&format!("{OUTPUTS}/hot"), &jo.token).body, before);
    assert_problem(
        &api.patch(&format!("{OUTPUTS}/cold"), &jo.token, json!({"name": "x"})),
        404,
        "unknown-output",
    );
    // Moving it to the source without a schema: any pointer is accepted there.
    let a = api.patch(
        &format!("{OUTPUTS}/hot"),
        &jo.token,
        json!({"source": "loose", "fields": [{"from": "/anything"}]}),
    );
    assert_eq!(a.status, 200, "{}", a.body);

    // Endpoints: an existing output, a unique slug.
    assert_problem(
        &api.post(
            ENDPOINTS,
            Some(&jo.token),
            json!({"slug": "live", "output": "cold"}),
        ),
        400,
        "unknown-output",
    );
    assert_eq!(
        api.post(
            ENDPOINTS,
            Some(&jo.token),
            json!({"slug": "live", "output": "hot"})
        )
        .status,
        201
    );
    assert_problem(
        &api.post(
            ENDPOINTS,
            Some(&jo.token),
            json!({"slug": "live", "output": "hot"}),
        ),
        409,
        "export-endpoint-exists",
    );
    assert_problem(
        &api.post(
            ENDPOINTS,
            Some(&jo.token),
            json!({"slug": "9f1c0c1e-7f00-7000-8000-000000000001", "output": "hot"}),
        ),
        400,
        "invalid-slug",
    );
    assert_problem(
        &api.get(&format!("{ENDPOINTS}/dead"), &jo.token),
        404,
        "unknown-export-endpoint",
    );

    // At most 100 outputs.
    for i in 1..100 {
        let a = api.post(
            OUTPUTS,
            Some(&jo.token),
            json!({"slug": format!("o{i}"), "source": "loose"}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    assert_problem(
        &api.post(
            OUTPUTS,
            Some(&jo.token),
            json!({"slug": "o100", "source": "loose"}),
        ),
        409,
        "limit-reached",
    );
}

/// Few device ids, long enough together to make the output larger than 16 KiB.
fn oversized_but_few() -> Vec<String> {
    (0..140).map(|i| format!("{i:0>128}")).collect()
}

#[test]
fn what_is_in_use_is_not_deleted_and_schemas_and_imports_must_keep_outputs_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sluice, api, jo) = setup(&dir);
    assert_eq!(api.post(OUTPUTS, Some(&jo.token), hot_output()).status, 201);
    assert_eq!(
        api.post(
            ENDPOINTS,
            Some(&jo.token),
            json!({"slug": "live", "output": "hot"})
        )
        .status,
        201
    );
    let a = api.post(
        TOKENS,
        Some(&jo.token),
        json!({"name": "live board", "scopes": ["read"], "endpoints": ["live"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let reader = a.json()["id"].as_str().expect("id").to_owned();
    let telemetry = "/api/v1/workspaces/plant/sources/telemetry";

    // The source the output reads.
    let a = api.delete(telemetry, &jo.token);
    assert_problem(&a, 409, "in-use");
    assert!(a.body.contains("hot"), "names the output: {}", a.body);
    let mut renamed = telemetry_schema();
    renamed["properties"]
        .as_object_mut()
        .expect("properties")
        .remove("temp_c");
    let a = api.patch(telemetry, &jo.token, json!({"schema": renamed}));
    assert_problem(&a, 409, "in-use");
    assert!(
        a.body.contains("hot") && a.body.contains("/temp_c"),
        "names the output and the pointer: {}",
        a.body
    );
    let mut retyped = telemetry_schema();
    retyped["properties"]["temp_c"] = json!({"type": "boolean"});
    assert_problem(
        &api.patch(telemetry, &jo.token, json!({"schema": retyped})),
        409,
        "in-use",
    );
    let mut widened = telemetry_schema();
    widened["properties"]["humidity"] = json!({"type": "number"});
    assert_eq!(
        api.patch(telemetry, &jo.token, json!({"schema": widened}))
            .status,
        200,
        "a schema the output still fits"
    );

    // An AsyncAPI import carries the outputs too: one that takes their source away, and
    // leaves them, is refused with the output named in its list of problems.
    let asyncapi = "/api/v1/workspaces/plant/asyncapi";
    let exported = api.get(asyncapi, &jo.token);
    assert_eq!(exported.status, 200, "{}", exported.body);
    let mut without = exported.json();
    without["channels"]
        .as_object_mut()
        .expect("channels")
        .remove("ingest_telemetry");
    let mut moved = exported.json();
    moved["channels"]["ingest_telemetry"]["x-sluice-slug"] = json!("readings");
    for doc in [without, moved] {
        for query in ["?dry_run=true", ""] {
            let a = api.put(&format!("{asyncapi}{query}"), &jo.token, doc.clone());
            assert_problem(&a, 422, "invalid-asyncapi");
            assert!(
                a.json()["errors"]
                    .as_array()
                    .is_some_and(|errors| errors.iter().any(|e| {
                        e["pointer"] == "/components/messages/output_hot/x-sluice-source"
                    })),
                "{}",
                a.body
            );
        }
    }
    let a = api.put(asyncapi, &jo.token, exported.json());
    assert_eq!(a.status, 200, "the export imports back: {}", a.body);

    // The output an endpoint serves, the endpoint a token names.
    let a = api.delete(&format!("{OUTPUTS}/hot"), &jo.token);
    assert_problem(&a, 409, "in-use");
    assert!(a.body.contains("live"), "names the endpoint: {}", a.body);
    let a = api.delete(&format!("{ENDPOINTS}/live"), &jo.token);
    assert_problem(&a, 409, "in-use");
    assert!(
        a.body.contains("live board") && a.body.contains(&reader),
        "names the token: {}",
        a.body
    );
    let plant = reaches_the_node(&sluice, &api, "the output in use", |w| {
        w["outputs"].as_array().is_some_and(|o| o.len() == 1)
    });
    assert_eq!(plant["sources"].as_array().map(Vec::len), Some(2));

    // Undone in order, each step allowed once nothing uses what it deletes.
    assert_eq!(
        api.delete(&format!("{TOKENS}/{reader}"), &jo.token).status,
        204
    );
    assert_eq!(
        api.delete(&format!("{ENDPOINTS}/live"), &jo.token).status,
        204
    );
    assert_eq!(api.delete(&format!("{OUTPUTS}/hot"), &jo.token).status, 204);
    assert_eq!(api.delete(telemetry, &jo.token).status, 204);
    reaches_the_node(&sluice, &api, "the deletions", |w| {
        w["sources"].as_array().is_some_and(|s| s.len() == 1)
            && w.get("outputs")
                .is_none_or(|o| o.as_array().is_some_and(Vec::is_empty))
    });
}

#[test]
fn read_tokens_are_single_purpose_and_name_existing_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sluice, api, jo) = setup(&dir);
    assert_eq!(api.post(OUTPUTS, Some(&jo.token), hot_output()).status, 201);
    assert_eq!(
        api.post(
            ENDPOINTS,
            Some(&jo.token),
            json!({"slug": "live", "output": "hot"})
        )
        .status,
        201
    );
    for (body, kind) in [
        (
            json!({"name": "both", "scopes": ["ingest", "read"]}),
            "invalid-scopes",
        ),
        (json!({"name": "none", "scopes": []}), "invalid-scopes"),
        (
            json!({"name": "ingest", "scopes": ["ingest"], "endpoints": ["live"]}),
            "invalid-scopes",
        ),
        (
            json!({"name": "read", "scopes": ["read"], "sources": ["telemetry"]}),
            "invalid-scopes",
        ),
        (
            json!({"name": "read", "scopes": ["read"], "device_id": "boiler-1"}),
            "invalid-scopes",
        ),
        (
            json!({"name": "read", "scopes": ["read"], "endpoints": ["live", "dead"]}),
            "unknown-export-endpoint",
        ),
        (
            json!({"name": "read", "scopes": ["read"], "endpoints": []}),
            "invalid-body",
        ),
    ] {
        assert_problem(&api.post(TOKENS, Some(&jo.token), body), 400, kind);
    }
    let a = api.post(
        TOKENS,
        Some(&jo.token),
        json!({"name": "both", "scopes": ["ingest", "read"]}),
    );
    assert!(
        a.body.contains("an ingest token cannot read"),
        "says why: {}",
        a.body
    );
    assert!(
        api.get(TOKENS, &jo.token).json()["items"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing made by a refusal"
    );

    let a = api.post(
        TOKENS,
        Some(&jo.token),
        json!({"name": "live board", "scopes": ["read"], "endpoints": ["live", "live"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let limited = a.json();
    assert_eq!(limited["scopes"], json!(["read"]));
    assert_eq!(limited["endpoints"], json!(["live"]));
    let secret = limited["secret"].as_str().expect("secret").to_owned();
    let a = api.post(
        TOKENS,
        Some(&jo.token),
        json!({"name": "every board", "scopes": ["read"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["endpoints"], Value::Null);
    let listed = api.get(TOKENS, &jo.token).json();
    assert_eq!(listed["items"][0]["endpoints"], json!(["live"]), "{listed}");
    let one = api.get(
        &format!("{TOKENS}/{}", limited["id"].as_str().expect("id")),
        &jo.token,
    );
    assert_eq!(one.json()["endpoints"], json!(["live"]));
    assert!(one.json().get("secret").is_none());

    // The node knows the read token with its endpoints, and it cannot send events.
    let plant = reaches_the_node(&sluice, &api, "the read tokens", |w| {
        w["tokens"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["name"] == "live board" && t["endpoints"] == json!(["live"]))
        })
    });
    assert!(
        plant["tokens"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["name"] == "every board" && t["scopes"] == json!(["read"]))),
        "{plant}"
    );
    let a = post(
        &sluice.ingest_url("plant", "telemetry"),
        &[
            ("authorization", &format!("Bearer {secret}")),
            ("content-type", "application/json"),
        ],
        br#"{"temp_c": 20}"#,
    );
    assert_eq!(a.status, 403, "a read token cannot ingest: {}", a.body);
    assert_eq!(a.problem(), "missing-scope", "{}", a.body);
}

#[test]
fn viewers_read_outputs_and_endpoints_and_editors_manage_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sluice, api, admin) = setup(&dir);
    let mail = sluice.data_dir.join("outbox");
    let editor = verified_user(&api, &mail, "ed@example.com");
    let viewer = verified_user(&api, &mail, "vi@example.com");
    add_member(&api, &mail, &admin, "plant", &editor, "editor");
    add_member(&api, &mail, &admin, "plant", &viewer, "viewer");

    let a = api.post(OUTPUTS, Some(&editor.token), hot_output());
    assert_eq!(a.status, 201, "an Editor manages outputs: {}", a.body);
    let a = api.post(
        ENDPOINTS,
        Some(&editor.token),
        json!({"slug": "live", "output": "hot"}),
    );
    assert_eq!(a.status, 201, "and endpoints: {}", a.body);
    for path in [
        OUTPUTS.to_owned(),
        format!("{OUTPUTS}/hot"),
        ENDPOINTS.to_owned(),
        format!("{ENDPOINTS}/live"),
    ] {
        let a = api.get(&path, &viewer.token);
        assert_eq!(a.status, 200, "a Viewer reads {path}: {}", a.body);
    }
    let before = (
        api.get(OUTPUTS, &admin.token).body,
        api.get(ENDPOINTS, &admin.token).body,
    );
    for (method, path, body) in [
        (
            "POST",
            OUTPUTS.to_owned(),
            Some(json!({"slug": "cold", "source": "loose"})),
        ),
        (
            "PATCH",
            format!("{OUTPUTS}/hot"),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("{OUTPUTS}/hot"), None),
        (
            "POST",
            ENDPOINTS.to_owned(),
            Some(json!({"slug": "dead", "output": "hot"})),
        ),
        (
            "PATCH",
            format!("{ENDPOINTS}/live"),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("{ENDPOINTS}/live"), None),
    ] {
        let a = api.call(method, &path, Some(&viewer.token), body.as_ref());
        assert_problem(&a, 403, "insufficient-role");
        let a = api.call(method, &path, None, body.as_ref());
        assert_problem(&a, 401, "unauthenticated");
    }
    assert_eq!(
        (
            api.get(OUTPUTS, &admin.token).body,
            api.get(ENDPOINTS, &admin.token).body
        ),
        before
    );
    let stranger = verified_user(&api, &mail, "st@example.com");
    assert_problem(&api.get(OUTPUTS, &stranger.token), 404, "unknown-workspace");
    assert_eq!(
        api.delete(&format!("{ENDPOINTS}/live"), &editor.token)
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("{OUTPUTS}/hot"), &editor.token).status,
        204
    );
}
