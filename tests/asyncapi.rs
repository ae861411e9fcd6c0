//! The workspace as an AsyncAPI 3.0.0 document, against a real `sluice up`: the export in JSON
//! and YAML passes the official AsyncAPI tooling (`@asyncapi/parser` 3 with no errors, and the
//! 3.0.0 JSON Schema of `@asyncapi/specs` checked with Ajv, both from npm in
//! `tests/asyncapi/`), carries every source, tag rule, output, export endpoint and webhook with
//! its id, names this node's listeners, holds no secret, and is readable by every member and
//! nobody else; an import replaces all of them, or refuses with every problem.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::controlplane::{add_member, verified_user, Api, User};
use common::{agent, Answer, Sluice};
use serde_json::{json, Value};

/// What the AsyncAPI tools found in one document.
struct Findings {
    /// `@asyncapi/parser` diagnostics: severity 0 error, 1 warning, 2 information, 3 hint.
    parser: Vec<Value>,
    /// Errors of the official JSON Schema.
    schema: Vec<Value>,
}

impl Findings {
    fn errors(&self) -> Vec<&Value> {
        self.parser
            .iter()
            .filter(|d| d["severity"] == 0)
            .chain(self.schema.iter())
            .collect()
    }

    /// Codes of the parser's warnings (severity 1), sorted.
    fn warnings(&self) -> Vec<String> {
        let mut codes: Vec<String> = self
            .parser
            .iter()
            .filter(|d| d["severity"] == 1)
            .map(|d| d["code"].as_str().unwrap_or_default().to_owned())
            .collect();
        codes.sort();
        codes
    }
}

/// Runs `tests/asyncapi/validate.mjs` (Node.js, with the packages `scripts/test.sh` installs
/// by `npm ci`) on `text`.
fn check_with_asyncapi_tools(dir: &Path, name: &str, text: &str) -> Findings {
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/asyncapi");
    assert!(
        tools.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI tools are missing: run scripts/test.sh (npm ci in tests/asyncapi)"
    );
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write the document");
    let out = Command::new("node")
        .arg(tools.join("validate.mjs"))
        .arg(&file)
        .output()
        .expect("node runs (scripts/test.sh needs Node.js)");
    assert!(
        out.status.success(),
        "validate.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_slice(&out.stdout).expect("validate.mjs prints JSON");
    Findings {
        parser: found["parser"].as_array().cloned().unwrap_or_default(),
        schema: found["schema"].as_array().cloned().unwrap_or_default(),
    }
}

fn export(api: &Api, token: &str, workspace: &str, accept: Option<&str>) -> Answer {
    let mut req = agent()
        .get(format!(
            "{}/api/v1/workspaces/{workspace}/asyncapi",
            api.base
        ))
        .header("authorization", format!("Bearer {token}"));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    Answer::of(req.call().expect("request sent"))
}

/// A schema with a local reference, kept as the source's own: `#/$defs/...`.
fn reading_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "temperature": {"type": "number"},
            "site": {"type": "string"},
            "reading": {"$ref": "#/$defs/reading"},
        },
        "required": ["temperature"],
        "$defs": {"reading": {"type": "object", "properties": {"unit": {"type": "string"}}}},
    })
}

/// Workspace `plant` of `jo` with sources of every kind and two tag rules; returns the ids of
/// the sources by slug and of the rules, in order.
fn populate(api: &Api, jo: &User) -> (Vec<(String, String)>, Vec<String>) {
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Plant Nord", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let mut sources = Vec::new();
    for body in [
        json!({"slug": "telemetry"}),
        json!({"slug": "readings", "name": "Readings", "protocols": ["mqtt"],
               "schema": reading_schema(), "on_invalid": "quarantine", "keep_payload": false}),
        json!({"slug": "alarms", "protocols": ["http"], "schema": {"type": "object"}}),
    ] {
        let a = api.post("/api/v1/workspaces/plant/sources", Some(&jo.token), body);
        assert_eq!(a.status, 201, "{}", a.body);
        let view = a.json();
        sources.push((
            view["slug"].as_str().expect("slug").to_owned(),
            view["id"].as_str().expect("id").to_owned(),
        ));
    }
    let mut rules = Vec::new();
    for body in [
        json!({"name": "site from topic", "extract":
               {"from": "topic", "pattern": "ingest/{source}/{site}/{device}", "device_id": "device"}}),
        json!({"name": "firmware", "sources": ["telemetry"], "extract":
               {"from": "header", "name": "X-Firmware", "tag": "firmware"}}),
    ] {
        let a = api.post("/api/v1/workspaces/plant/tag-rules", Some(&jo.token), body);
        assert_eq!(a.status, 201, "{}", a.body);
        rules.push(a.json()["id"].as_str().expect("id").to_owned());
    }
    (sources, rules)
}

/// A public receiver's URL that needs no DNS (the control plane checks where a host resolves).
const RECEIVER: &str = "https://93.184.216.34/hooks/sluice?team={ops}";

/// Outputs, an export endpoint and webhooks of `plant` (after `populate`): `hot` (readings,
/// filtered and projected, one field a `$ref` of the source's schema) served by `live` and
/// delivered by `crm`; `all` (telemetry) delivered by `audit`, disabled. Returns the webhooks'
/// secrets.
fn populate_data_out(api: &Api, jo: &User) -> Vec<String> {
    for (path, body) in [
        (
            "outputs",
            json!({"slug": "hot", "name": "Hot readings", "source": "readings",
                   "filter": {"device_ids": ["dev-1"],
                              "conditions": [{"pointer": "/temperature", "op": "gt", "value": 30}]},
                   "fields": [{"from": "event_id"}, {"from": "device_id", "name": "device"},
                              {"from": "/temperature", "name": "temp"}, {"from": "/reading"}]}),
        ),
        ("outputs", json!({"slug": "all", "source": "telemetry"})),
        (
            "export-endpoints",
            json!({"slug": "live", "name": "Live board", "output": "hot"}),
        ),
    ] {
        let a = api.post(
            &format!("/api/v1/workspaces/plant/{path}"),
            Some(&jo.token),
            body,
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let mut secrets = Vec::new();
    for body in [
        json!({"slug": "crm", "output": "hot", "url": RECEIVER, "batch_events_max": 100}),
        json!({"slug": "audit", "output": "all", "url": "https://93.184.216.34/audit",
               "enabled": false, "disable_after_s": 600}),
    ] {
        let a = api.post("/api/v1/workspaces/plant/webhooks", Some(&jo.token), body);
        assert_eq!(a.status, 201, "{}", a.body);
        secrets.push(a.json()["secret"].as_str().expect("secret").to_owned());
    }
    secrets
}

#[test]
fn the_export_passes_the_asyncapi_parser_and_the_official_schema_in_json_and_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    let (sources, rules) = populate(&api, &jo);
    let webhook_secrets = populate_data_out(&api, &jo);
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&jo.token),
        json!({"name": "device", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let secret = a.json()["secret"].as_str().expect("secret").to_owned();
    let hint = a.json()["hint"].as_str().expect("hint").to_owned();

    let a = export(&api, &jo.token, "plant", None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    let doc = a.json();
    let found = check_with_asyncapi_tools(dir.path(), "plant.json", &a.body);
    assert!(found.errors().is_empty(), "errors: {:?}", found.errors());
    // docs/asyncapi.md lists the warnings; none today.
    assert_eq!(found.warnings(), Vec::<String>::new(), "{:?}", found.parser);

    let yaml = export(&api, &jo.token, "plant", Some("application/yaml"));
    assert_eq!(yaml.status, 200, "{}", yaml.body);
    assert_eq!(yaml.content_type, "application/yaml");
    let found = check_with_asyncapi_tools(dir.path(), "plant.yaml", &yaml.body);
    assert!(found.errors().is_empty(), "errors: {:?}", found.errors());
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml.body).expect("the YAML reads");
    assert_eq!(from_yaml, doc, "YAML and JSON say the same");

    // What the document says.
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "Plant Nord");
    let me = api.get("/api/v1/workspaces/plant", &jo.token).json();
    assert_eq!(doc["info"]["x-sluice-workspaceId"], me["id"]);
    assert!(doc["info"]["x-sluice-configVersion"].as_u64().is_some());
    assert_eq!(
        doc["servers"]["http"]["host"],
        format!("127.0.0.1:{}", sluice.port),
        "this node's HTTP listener"
    );
    assert_eq!(doc["servers"]["http"]["protocol"], "http");
    assert_eq!(
        doc["servers"]["mqtt"]["host"],
        format!("127.0.0.1:{}", sluice.mqtt_port)
    );
    assert_eq!(doc["servers"]["mqtt"]["protocol"], "mqtt");
    for (slug, id) in &sources {
        let channel = &doc["channels"][format!("ingest_{slug}")];
        assert_eq!(channel["x-sluice-sourceId"], json!(id), "{channel}");
        assert_eq!(channel["x-sluice-slug"], json!(slug));
        assert_eq!(channel["address"], format!("ingest/{slug}"));
        assert_eq!(
            channel["x-sluice-httpAddress"],
            format!("/v1/ingest/plant/{slug}")
        );
        assert_eq!(doc["operations"][format!("send_{slug}")]["action"], "send");
        assert!(doc["components"]["messages"][format!("source_{slug}")].is_object());
    }
    let readings = &doc["channels"]["ingest_readings"];
    assert_eq!(readings["x-sluice-onInvalid"], "quarantine");
    assert_eq!(readings["x-sluice-keepPayload"], false);
    assert_eq!(readings["x-sluice-protocols"], json!(["mqtt"]));
    assert_eq!(readings["servers"], json!([{"$ref": "#/servers/mqtt"}]));
    assert!(doc["operations"]["send_readings"]["bindings"]["http"].is_null());
    assert_eq!(
        doc["operations"]["send_readings"]["bindings"]["mqtt"]["qos"],
        1
    );
    let payload = &doc["components"]["messages"]["source_readings"]["payload"];
    assert_eq!(
        payload["properties"]["reading"]["$ref"],
        "#/components/messages/source_readings/payload/$defs/reading",
        "the schema's own reference, pointing into the document"
    );
    assert_eq!(payload["required"], json!(["temperature"]));
    assert!(
        doc["components"]["messages"]["source_telemetry"]["payload"].is_null(),
        "a source without a schema takes any JSON object"
    );
    let listed: Vec<String> = doc["x-sluice-tagRules"]
        .as_array()
        .expect("tag rules")
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(listed, rules, "in their order, with their ids");
    assert_eq!(
        doc["x-sluice-tagRules"],
        api.get("/api/v1/workspaces/plant/tag-rules", &jo.token)
            .json()["rules"],
        "the rules as the tag-rules API shows them"
    );

    // Outputs, export endpoints and webhooks, each with its id.
    let outputs = api
        .get("/api/v1/workspaces/plant/outputs", &jo.token)
        .json();
    for output in outputs["items"].as_array().expect("outputs") {
        let slug = output["slug"].as_str().expect("slug");
        let message = &doc["components"]["messages"][format!("output_{slug}")];
        assert_eq!(message["x-sluice-outputId"], output["id"], "{message}");
        assert_eq!(message["x-sluice-source"], output["source"]);
        assert_eq!(message["x-sluice-filter"], output["filter"]);
        assert_eq!(message["x-sluice-fields"], output["fields"]);
        assert_eq!(message["title"], output["name"]);
    }
    let hot = &doc["components"]["messages"]["output_hot"]["payload"];
    assert_eq!(
        hot["properties"]["reading"]["$ref"],
        "#/components/messages/source_readings/payload/$defs/reading",
        "a field of the source's schema refers into the source's payload"
    );
    assert_eq!(hot["properties"]["temp"]["type"], "number");
    let endpoint = api
        .get("/api/v1/workspaces/plant/export-endpoints/live", &jo.token)
        .json();
    let live = &doc["channels"]["stream_live"];
    assert_eq!(live["x-sluice-endpointId"], endpoint["id"], "{live}");
    assert_eq!(live["x-sluice-output"], "hot");
    assert_eq!(live["address"], "/v1/stream/plant/live");
    assert_eq!(live["title"], "Live board");
    let read = &doc["operations"]["receive_stream_live"];
    assert_eq!(read["action"], "receive");
    assert_eq!(read["bindings"]["http"]["method"], "GET");
    assert_eq!(
        read["security"],
        json!([{"$ref": "#/components/securitySchemes/readToken"}])
    );
    assert_eq!(
        doc["components"]["messages"]["export_live"]["payload"]["$ref"],
        "#/components/messages/output_hot/payload"
    );
    let webhooks = api
        .get("/api/v1/workspaces/plant/webhooks", &jo.token)
        .json();
    for webhook in webhooks["items"].as_array().expect("webhooks") {
        let slug = webhook["slug"].as_str().expect("slug");
        let channel = &doc["channels"][format!("webhook_{slug}")];
        assert_eq!(
            channel["x-sluice-subscriptionId"], webhook["id"],
            "{channel}"
        );
        assert_eq!(channel["x-sluice-url"], webhook["url"]);
        assert_eq!(channel["x-sluice-output"], webhook["output"]);
        assert_eq!(channel["x-sluice-enabled"], webhook["enabled"]);
        assert_eq!(
            channel["x-sluice-batchEventsMax"],
            webhook["batch_events_max"]
        );
        assert_eq!(
            channel["x-sluice-batchBytesMax"],
            webhook["batch_bytes_max"]
        );
        assert_eq!(
            channel["x-sluice-batchIntervalMs"],
            webhook["batch_interval_ms"]
        );
        assert_eq!(
            channel["x-sluice-disableAfterS"],
            webhook["disable_after_s"]
        );
        assert_eq!(
            doc["operations"][format!("receive_webhook_{slug}")]["action"],
            "receive"
        );
        assert_eq!(
            doc["servers"][format!("webhook_{slug}")]["host"],
            "93.184.216.34"
        );
    }
    assert_eq!(
        doc["channels"]["webhook_crm"]["address"], "/hooks/sluice?team=%7Bops%7D",
        "braces would be AsyncAPI parameters"
    );
    assert_eq!(
        doc["components"]["messages"]["webhook_crm"]["payload"]["items"]["$ref"],
        "#/components/messages/output_hot/payload"
    );

    // No secret: not the token, nor its hash or hint, nor a webhook's secret.
    for webhook_secret in &webhook_secrets {
        assert!(!a.body.contains(webhook_secret), "a webhook secret leaked");
    }
    assert!(!a.body.contains("whsec_") && !a.body.contains("sealed"));
    assert!(!a.body.contains(&secret), "the token leaked");
    assert!(!a.body.contains(&hint), "the token's hint leaked");
    for word in ["sha256", "\"hint\"", "\"secret\""] {
        assert!(!a.body.contains(word), "{word} in the document");
    }

    // The same workspace exports the same bytes.
    assert_eq!(export(&api, &jo.token, "plant", None).body, a.body);
}

#[test]
fn every_member_may_export_and_nobody_else_learns_the_workspace_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &[
            "--ingest-public-url",
            "https://ingest.example.com/sluice",
            "--mqtt-public-url",
            "mqtts://mqtt.example.com:8883",
        ],
    );
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    populate(&api, &jo);
    let vi = verified_user(&api, &outbox, "vi@example.com");
    add_member(&api, &outbox, &jo, "plant", &vi, "viewer");
    let eve = verified_user(&api, &outbox, "eve@example.com");

    let a = export(&api, &vi.token, "plant", None);
    assert_eq!(a.status, 200, "a Viewer exports: {}", a.body);
    let doc = a.json();
    assert_eq!(
        doc["servers"]["http"],
        json!({"host": "ingest.example.com", "protocol": "https", "pathname": "/sluice",
               "description": doc["servers"]["http"]["description"],
               "security": [{"$ref": "#/components/securitySchemes/ingestToken"}]}),
        "the configured public URL"
    );
    assert_eq!(doc["servers"]["mqtt"]["host"], "mqtt.example.com:8883");
    assert_eq!(doc["servers"]["mqtt"]["protocol"], "secure-mqtt");
    let found = check_with_asyncapi_tools(dir.path(), "public-urls.json", &a.body);
    assert!(found.errors().is_empty(), "errors: {:?}", found.errors());

    let a = export(&api, &eve.token, "plant", None);
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.problem(), "unknown-workspace");
    let a = Answer::of(
        agent()
            .get(format!("{}/api/v1/workspaces/plant/asyncapi", api.base))
            .call()
            .expect("request sent"),
    );
    assert_eq!(a.status, 401, "{}", a.body);
}

fn import(api: &Api, token: &str, query: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = ureq::http::Request::builder()
        .method("PUT")
        .uri(format!(
            "{}/api/v1/workspaces/plant/asyncapi{query}",
            api.base
        ))
        .header("authorization", format!("Bearer {token}"));
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Answer::of(
        agent()
            .run(req.body(body.as_bytes().to_vec()).expect("request"))
            .expect("request sent"),
    )
}

fn version(doc: &Value) -> u64 {
    doc["info"]["x-sluice-configVersion"]
        .as_u64()
        .expect("x-sluice-configVersion")
}

#[test]
fn importing_the_export_changes_nothing_and_exports_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    populate(&api, &jo);
    populate_data_out(&api, &jo);
    let before = export(&api, &jo.token, "plant", None);
    for (content_type, body) in [
        ("application/json", before.body.clone()),
        (
            "application/yaml",
            export(&api, &jo.token, "plant", Some("application/yaml")).body,
        ),
    ] {
        let a = import(
            &api,
            &jo.token,
            "",
            &[("content-type", content_type)],
            &body,
        );
        assert_eq!(a.status, 200, "{content_type}: {}", a.body);
        let plan = a.json();
        assert_eq!(plan["created"], json!([]), "{plan}");
        assert_eq!(plan["updated"], json!([]), "{plan}");
        assert_eq!(plan["deleted"], json!([]), "{plan}");
        assert_eq!(
            plan["config_version"],
            json!(version(&before.json())),
            "no new version"
        );
        assert_eq!(
            export(&api, &jo.token, "plant", None).body,
            before.body,
            "byte for byte"
        );
    }
}

#[test]
fn a_hand_edited_document_adds_renames_and_deletes_in_one_version_and_the_new_source_ingests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    let (sources, rules) = populate(&api, &jo);
    populate_data_out(&api, &jo);
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&jo.token),
        json!({"name": "device", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let device_token = a.json()["secret"].as_str().expect("secret").to_owned();
    let exported = export(&api, &jo.token, "plant", None).json();
    let mut doc = exported.clone();

    // Rename a channel key (advisory), change the source behind it, delete `alarms` by
    // omission, add a source without an id, drop the second tag rule and add one.
    let channels = doc["channels"].as_object_mut().expect("channels");
    let mut readings = channels.remove("ingest_readings").expect("readings");
    readings["x-sluice-onInvalid"] = json!("reject");
    channels.insert("renamed-by-hand".into(), readings);
    channels.remove("ingest_alarms");
    channels.insert(
        "ingest_pumps".into(),
        json!({
            "address": "ingest/pumps",
            "title": "Pumps",
            "messages": {"event": {"payload": {
                "type": "object",
                "properties": {"rpm": {"type": "integer"}},
                "required": ["rpm"],
            }}},
        }),
    );
    // Delete the webhook `audit` by omission; add an output of the new source, an endpoint
    // that serves it and a webhook that delivers it, all without ids.
    channels.remove("webhook_audit");
    channels.insert(
        "stream_pumps".into(),
        json!({"title": "Pumps live", "x-sluice-output": "pumps-all"}),
    );
    channels.insert(
        "webhook_pump-hook".into(),
        json!({"x-sluice-output": "pumps-all", "x-sluice-url": "https://93.184.216.34/pumps",
               "x-sluice-batchEventsMax": 50}),
    );
    doc["components"]["messages"]["output_pumps-all"] = json!({
        "x-sluice-source": "pumps",
        "x-sluice-fields": [{"from": "event_id"}, {"from": "/rpm"}],
    });
    let tag_rules = doc["x-sluice-tagRules"].as_array_mut().expect("rules");
    tag_rules.truncate(1);
    tag_rules.push(json!({"name": "pump line", "sources": ["pumps"],
        "extract": {"from": "query", "name": "line", "tag": "line"}}));
    let text = doc.to_string();

    let dry = import(&api, &jo.token, "?dry_run=true", &[], &text);
    assert_eq!(dry.status, 200, "{}", dry.body);
    let plan = dry.json();
    assert_eq!(plan["dry_run"], true);
    let names = |list: &Value| -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = list
            .as_array()
            .expect("list")
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap_or_default().to_owned(),
                    e["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let pair = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    assert_eq!(
        names(&plan["created"]),
        vec![
            pair("export_endpoint", "pumps"),
            pair("output", "pumps-all"),
            pair("source", "pumps"),
            pair("tag_rule", "pump line"),
            pair("webhook", "pump-hook"),
        ]
    );
    assert_eq!(names(&plan["updated"]), vec![pair("source", "readings")]);
    assert_eq!(
        names(&plan["deleted"]),
        vec![
            pair("source", "alarms"),
            pair("tag_rule", "firmware"),
            pair("webhook", "audit"),
        ]
    );
    assert!(!dry.body.contains("whsec_"), "a dry run makes no secret");
    let alarms_id = &sources
        .iter()
        .find(|(s, _)| s == "alarms")
        .expect("alarms")
        .1;
    assert!(plan["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .any(|e| e["id"] == json!(alarms_id)));
    assert_eq!(
        export(&api, &jo.token, "plant", None).json(),
        exported,
        "a dry run changes nothing"
    );

    // Another workspace changes: the version of this one does not move, so If-Match holds.
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Other", "slug": "other"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/other/sources",
        Some(&jo.token),
        json!({"slug": "elsewhere"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        version(&export(&api, &jo.token, "plant", None).json()),
        version(&exported)
    );

    // A stale If-Match is refused; the exported version applies.
    let stale = import(&api, &jo.token, "", &[("if-match", "\"1\"")], &text);
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(stale.problem(), "config-changed");
    let current = format!("\"{}\"", version(&exported));
    let a = import(&api, &jo.token, "", &[("if-match", &current)], &text);
    assert_eq!(a.status, 200, "{}", a.body);
    let applied = a.json();
    let after = export(&api, &jo.token, "plant", None).json();
    assert!(version(&after) > version(&exported));
    assert_eq!(
        applied["config_version"],
        json!(version(&after)),
        "one configuration version for the whole import, the next export's"
    );
    // The created webhook's secret, in this answer only; no other entry has one.
    for entry in applied["created"].as_array().expect("created") {
        let secret = entry["secret"].as_str();
        if entry["kind"] == "webhook" {
            assert!(secret.is_some_and(|s| s.starts_with("whsec_")), "{entry}");
        } else {
            assert!(secret.is_none(), "{entry}");
        }
    }
    let again = import(&api, &jo.token, "", &[("if-match", &current)], &text);
    assert_eq!(again.status, 412, "the version moved: {}", again.body);
    // The document exported now imports as it is.
    let a = import(&api, &jo.token, "", &[], &after.to_string());
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["updated"], json!([]), "{}", a.body);

    // Outputs, endpoints and webhooks through the API.
    let slugs_of = |path: &str| -> Vec<String> {
        let mut all: Vec<String> = api
            .get(&format!("/api/v1/workspaces/plant/{path}"), &jo.token)
            .json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|x| x["slug"].as_str().map(str::to_owned))
            .collect();
        all.sort();
        all
    };
    assert_eq!(slugs_of("outputs"), vec!["all", "hot", "pumps-all"]);
    assert_eq!(slugs_of("export-endpoints"), vec!["live", "pumps"]);
    assert_eq!(slugs_of("webhooks"), vec!["crm", "pump-hook"]);
    let hook = api
        .get("/api/v1/workspaces/plant/webhooks/pump-hook", &jo.token)
        .json();
    assert_eq!(hook["batch_events_max"], 50);
    assert_eq!(hook["output"], "pumps-all");
    assert_eq!(hook["enabled"], true);
    let pumps = api
        .get("/api/v1/workspaces/plant/export-endpoints/pumps", &jo.token)
        .json();
    assert_eq!(pumps["name"], "Pumps live");
    assert_eq!(pumps["url"], "/v1/stream/plant/pumps");

    let listed = api
        .get("/api/v1/workspaces/plant/sources", &jo.token)
        .json();
    let mut slugs: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["slug"].as_str())
        .collect();
    slugs.sort();
    assert_eq!(slugs, vec!["pumps", "readings", "telemetry"]);
    let readings = api
        .get("/api/v1/workspaces/plant/sources/readings", &jo.token)
        .json();
    assert_eq!(readings["on_invalid"], "reject");
    let readings_id = &sources
        .iter()
        .find(|(s, _)| s == "readings")
        .expect("readings")
        .1;
    assert_eq!(&readings["id"], &json!(readings_id), "kept its id");
    assert_eq!(
        readings["schema"],
        reading_schema(),
        "its schema as it was saved"
    );
    let rules_now = api
        .get("/api/v1/workspaces/plant/tag-rules", &jo.token)
        .json();
    assert_eq!(rules_now["rules"][0]["id"], json!(rules[0]));
    assert_eq!(rules_now["rules"][1]["name"], "pump line");

    // The new source takes events once the node has the new version.
    let url = format!("{}?line=7", sluice.ingest_url("plant", "pumps"));
    let auth = format!("Bearer {device_token}");
    let accepted = common::wait_for(std::time::Duration::from_secs(10), || {
        common::post(
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            br#"{"rpm": 1200}"#,
        )
        .status
            == 202
    });
    assert!(accepted, "the imported source ingests");
    let refused = common::post(
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"rpm": "fast"}"#,
    );
    assert_eq!(refused.status, 422, "its schema applies: {}", refused.body);

    // The node serves the new export endpoint to a read token.
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&jo.token),
        json!({"name": "reader", "scopes": ["read"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let reader = format!("Bearer {}", a.json()["secret"].as_str().expect("secret"));
    let page = format!("{}/v1/stream/plant/pumps?from=beginning", sluice.base_url());
    let served = common::wait_for(std::time::Duration::from_secs(10), || {
        let resp = agent()
            .get(&page)
            .header("authorization", &reader)
            .header("accept", "application/x-ndjson")
            .call()
            .expect("request sent");
        Answer::of(resp).status == 200
    });
    assert!(served, "the imported endpoint is served");
}

/// The YAML block of docs/asyncapi.md's worked example, as written there.
fn worked_example() -> String {
    let docs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/asyncapi.md"))
            .expect("docs/asyncapi.md");
    let (_, rest) = docs
        .split_once("<!-- worked-example:")
        .expect("the worked example's marker");
    let (_, rest) = rest.split_once("```yaml\n").expect("its YAML block");
    let (block, _) = rest.split_once("```").expect("the block's end");
    block.to_owned()
}

#[test]
fn the_worked_example_of_the_docs_imports_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let yaml = [("content-type", "application/yaml")];
    let text = worked_example();
    let dry = import(&api, &jo.token, "?dry_run=true", &yaml, &text);
    assert_eq!(dry.status, 200, "{}", dry.body);
    let a = import(&api, &jo.token, "", &yaml, &text);
    assert_eq!(a.status, 200, "{}", a.body);
    let applied = a.json();
    let kinds: Vec<(String, String)> = applied["created"]
        .as_array()
        .expect("created")
        .iter()
        .map(|e| (e["kind"].to_string(), e["name"].to_string()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("source", "pumps"),
        ("tag_rule", "pump line"),
        ("output", "fast-pumps"),
        ("export_endpoint", "fast-pumps"),
        ("webhook", "pump-alerts"),
    ]
    .iter()
    .map(|(k, n)| (json!(k).to_string(), json!(n).to_string()))
    .collect();
    assert_eq!(kinds, expected, "in the order the docs show");
    assert!(applied["created"][4]["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    let output = api
        .get("/api/v1/workspaces/plant/outputs/fast-pumps", &jo.token)
        .json();
    assert_eq!(output["filter"]["conditions"][0]["value"], 3000);
    assert_eq!(output["fields"][1]["name"], "device");

    // The second step: export, delete the webhook by omission, import against the version.
    let exported = export(&api, &jo.token, "plant", None).json();
    let found = check_with_asyncapi_tools(dir.path(), "plant.json", &exported.to_string());
    assert!(found.errors().is_empty(), "errors: {:?}", found.errors());
    assert_eq!(found.warnings(), Vec::<String>::new(), "{:?}", found.parser);
    let mut doc = exported.clone();
    doc["channels"]
        .as_object_mut()
        .expect("channels")
        .remove("webhook_pump-alerts");
    let current = format!("\"{}\"", version(&exported));
    let a = import(
        &api,
        &jo.token,
        "",
        &[("if-match", &current)],
        &doc.to_string(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["deleted"][0]["name"], "pump-alerts", "{}", a.body);
    assert_eq!(a.json()["created"], json!([]));
    let webhooks = api
        .get("/api/v1/workspaces/plant/webhooks", &jo.token)
        .json();
    assert_eq!(webhooks["items"], json!([]));
}

#[test]
fn imports_are_refused_with_every_problem_and_only_admins_and_editors_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let (sources, _) = populate(&api, &jo);
    populate_data_out(&api, &jo);
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&jo.token),
        json!({"name": "board", "scopes": ["read"], "endpoints": ["live"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let exported = export(&api, &jo.token, "plant", None);
    let doc = exported.json();

    // Roles: a Viewer exports but may not apply, not even a dry run; an Editor applies.
    let vi = verified_user(&api, &outbox, "vi@example.com");
    add_member(&api, &outbox, &jo, "plant", &vi, "viewer");
    let ed = verified_user(&api, &outbox, "ed@example.com");
    add_member(&api, &outbox, &jo, "plant", &ed, "editor");
    for query in ["", "?dry_run=true"] {
        let a = import(&api, &vi.token, query, &[], &exported.body);
        assert_eq!(a.status, 403, "{}", a.body);
        assert_eq!(a.problem(), "insufficient-role");
    }
    let a = import(&api, &ed.token, "", &[], &exported.body);
    assert_eq!(a.status, 200, "an Editor applies: {}", a.body);

    // Several problems at once, each with its pointer.
    let mut bad = doc.clone();
    bad["channels"]["ingest_readings"]["x-sluice-onInvalid"] = json!("drop");
    bad["components"]["messages"]["source_alarms"]["payload"]["type"] = json!("no-such-type");
    bad["x-sluice-tagRules"][0]["extract"]["pattern"] = json!("ingest/{a}/{a}");
    let a = import(&api, &jo.token, "", &[], &bad.to_string());
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.problem(), "invalid-asyncapi");
    let pointers: Vec<String> = a.json()["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["pointer"].as_str().unwrap_or_default().to_owned())
        .collect();
    for expected in [
        "/channels/ingest_readings/x-sluice-onInvalid",
        "/components/messages/source_alarms/payload/type",
        "/x-sluice-tagRules/0",
    ] {
        assert!(
            pointers.iter().any(|p| p == expected),
            "{expected} in {pointers:?}"
        );
    }

    // What the official AsyncAPI schema refuses: a misspelt channel field.
    let mut misspelt = doc.clone();
    misspelt["channels"]["ingest_telemetry"]["adress"] = json!("ingest/telemetry");
    let a = import(&api, &jo.token, "", &[], &misspelt.to_string());
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        a.json()["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .any(|e| e["pointer"]
                .as_str()
                .is_some_and(|p| p.starts_with("/channels/ingest_telemetry"))
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("not AsyncAPI 3.0.0"))),
        "{}",
        a.body
    );

    // An id twice, and an id of another workspace.
    let mut twice = doc.clone();
    twice["channels"]["ingest_copy"] = doc["channels"]["ingest_readings"].clone();
    twice["channels"]["ingest_copy"]["x-sluice-slug"] = json!("copy");
    let a = import(&api, &jo.token, "", &[], &twice.to_string());
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(a.body.contains("appears twice"), "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Other", "slug": "other"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/other/sources",
        Some(&jo.token),
        json!({"slug": "foreign"}),
    );
    let foreign_id = a.json()["id"].clone();
    let mut foreign = doc.clone();
    foreign["channels"]["ingest_telemetry"]["x-sluice-sourceId"] = foreign_id;
    let a = import(&api, &jo.token, "", &[], &foreign.to_string());
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(a.body.contains("another workspace"), "{}", a.body);

    // Data out, all in one answer: an endpoint a read token names deleted by omission, a
    // webhook to a private address, an output whose pointer misses its source's schema, and
    // one that reads a source the document does not have.
    let mut broken = doc.clone();
    broken["channels"]
        .as_object_mut()
        .expect("channels")
        .remove("stream_live");
    broken["channels"]["webhook_crm"]["x-sluice-url"] = json!("https://10.1.2.3/in");
    broken["components"]["messages"]["output_hot"]["x-sluice-filter"]["conditions"][0]["pointer"] =
        json!("/temprature");
    broken["components"]["messages"]["output_ghost"] = json!({"x-sluice-source": "nowhere"});
    for query in ["", "?dry_run=true"] {
        let a = import(&api, &jo.token, query, &[], &broken.to_string());
        assert_eq!(a.status, 422, "{}", a.body);
        assert_eq!(a.problem(), "invalid-asyncapi");
        let errors = a.json()["errors"].clone();
        let found = |pointer: &str, words: &[&str]| {
            errors.as_array().expect("errors").iter().any(|e| {
                e["pointer"] == pointer
                    && words
                        .iter()
                        .all(|w| e["message"].as_str().is_some_and(|m| m.contains(w)))
            })
        };
        assert!(found("/channels", &["\"live\"", "\"board\""]), "{errors}");
        assert!(
            found(
                "/channels/webhook_crm/x-sluice-url",
                &["address-not-allowed"]
            ),
            "{errors}"
        );
        assert!(
            found("/components/messages/output_hot", &["/temprature"]),
            "{errors}"
        );
        assert!(
            found(
                "/components/messages/output_ghost/x-sluice-source",
                &["nowhere"]
            ),
            "{errors}"
        );
    }

    // Hostile documents: too large, too deep, a $ref loop, an alias bomb, unknown extensions.
    let huge = format!(
        r#"{{"asyncapi": "3.0.0", "info": {{"title": "x", "version": "1"}}, "x-pad": "{}"}}"#,
        "a".repeat(5 << 20)
    );
    // The server answers 413 as soon as the body passes the bound and closes: the client may
    // see the answer, or a broken pipe while it is still sending.
    let req = ureq::http::Request::builder()
        .method("PUT")
        .uri(format!("{}/api/v1/workspaces/plant/asyncapi", api.base))
        .header("authorization", format!("Bearer {}", jo.token))
        .header("content-type", "application/json")
        .body(huge.into_bytes())
        .expect("request");
    match agent().run(req) {
        Ok(resp) => assert_eq!(Answer::of(resp).status, 413),
        Err(ureq::Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Err(e) => panic!("{e}"),
    }
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let a = import(&api, &jo.token, "", &[], &deep);
    assert_eq!(a.status, 422, "{}", a.body);
    let a = import(
        &api,
        &jo.token,
        "",
        &[("content-type", "application/yaml")],
        &deep,
    );
    assert_eq!(a.status, 422, "{}", a.body);
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..30 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let started = std::time::Instant::now();
    let a = import(
        &api,
        &jo.token,
        "",
        &[("content-type", "application/yaml")],
        &bomb,
    );
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let mut looped = doc.clone();
    looped["components"]["messages"]["source_alarms"]["payload"] = json!({
        "$ref": "#/components/messages/source_alarms/payload/$defs/a",
        "$defs": {"a": {"$ref": "#/components/messages/source_alarms/payload/$defs/b"},
                  "b": {"$ref": "#/components/messages/source_alarms/payload/$defs/a"}},
    });
    let a = import(&api, &jo.token, "", &[], &looped.to_string());
    assert!(
        a.status == 200 || a.status == 422,
        "a $ref loop is answered, not hung on: {}",
        a.body
    );
    let mut unknown = doc.clone();
    unknown["x-someone-else"] = json!({"anything": [1, 2, 3]});
    unknown["channels"]["ingest_telemetry"]["x-sluice-future"] = json!(true);
    let a = import(&api, &jo.token, "?dry_run=true", &[], &unknown.to_string());
    assert_eq!(
        a.status, 200,
        "unknown extensions are left alone: {}",
        a.body
    );

    // Nothing of the refused imports happened.
    let listed = api
        .get("/api/v1/workspaces/plant/sources", &jo.token)
        .json();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(sources.len()),
        "{listed}"
    );
    let endpoints = api
        .get("/api/v1/workspaces/plant/export-endpoints", &jo.token)
        .json();
    assert_eq!(endpoints["items"].as_array().map(Vec::len), Some(1));
    let crm = api
        .get("/api/v1/workspaces/plant/webhooks/crm", &jo.token)
        .json();
    assert_eq!(crm["url"], RECEIVER);
}

#[test]
fn an_admin_makes_the_document_public_and_private_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    populate(&api, &jo);
    let ed = verified_user(&api, &outbox, "ed@example.com");
    add_member(&api, &outbox, &jo, "plant", &ed, "editor");
    let vi = verified_user(&api, &outbox, "vi@example.com");
    add_member(&api, &outbox, &jo, "plant", &vi, "viewer");
    let anonymous = |path: &str| {
        Answer::of(
            agent()
                .get(format!("{}{path}", api.base))
                .call()
                .expect("request sent"),
        )
    };

    for path in ["/public/plant/asyncapi.json", "/public/plant/asyncapi.yaml"] {
        let a = anonymous(path);
        assert_eq!(a.status, 404, "private: {}", a.body);
        assert_eq!(a.problem(), "not-found");
    }
    let unknown = anonymous("/public/nothing-here/asyncapi.json");
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json()["title"],
        anonymous("/public/plant/asyncapi.json").json()["title"],
        "a private workspace answers as one that does not exist"
    );

    for user in [&ed, &vi] {
        let a = api.put(
            "/api/v1/workspaces/plant/asyncapi/public",
            &user.token,
            json!({"public": true}),
        );
        assert_eq!(a.status, 403, "Admin only: {}", a.body);
        assert_eq!(a.problem(), "insufficient-role");
    }
    let state = api.get("/api/v1/workspaces/plant/asyncapi/public", &vi.token);
    assert_eq!(state.status, 200, "any member reads it: {}", state.body);
    assert_eq!(state.json()["public"], false);
    let exported = export(&api, &jo.token, "plant", None);
    let a = api.put(
        "/api/v1/workspaces/plant/asyncapi/public",
        &jo.token,
        json!({"public": true}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["public"], true);
    assert_eq!(
        api.get("/api/v1/workspaces/plant/asyncapi/public", &vi.token)
            .json()["public"],
        true
    );
    assert_eq!(
        a.json()["json_url"],
        format!("{}/public/plant/asyncapi.json", api.base)
    );

    let public = anonymous("/public/plant/asyncapi.json");
    assert_eq!(public.status, 200, "{}", public.body);
    assert_eq!(public.content_type, "application/json");
    assert_eq!(
        public.body, exported.body,
        "exactly the members' export; the toggle made no configuration version"
    );
    let yaml = anonymous("/public/plant/asyncapi.yaml");
    assert_eq!(yaml.status, 200, "{}", yaml.body);
    assert_eq!(yaml.content_type, "application/yaml");
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml.body).expect("the YAML reads");
    assert_eq!(from_yaml, exported.json());
    for member in ["jo@example.com", "ed@example.com", "vi@example.com"] {
        assert!(!public.body.contains(member), "no member data");
    }

    let a = api.put(
        "/api/v1/workspaces/plant/asyncapi/public",
        &jo.token,
        json!({"public": false}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(anonymous("/public/plant/asyncapi.json").status, 404);
}
