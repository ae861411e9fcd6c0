//! The workspace as an AsyncAPI 3.0.0 document, against a real `sluice up`: the export in JSON
//! and YAML passes the official AsyncAPI tooling (`@asyncapi/parser` 3 with no errors, and the
//! 3.0.0 JSON Schema of `@asyncapi/specs` checked with Ajv, both from npm in
//! `tests/asyncapi/`), carries every source and tag rule with its id, names this node's
//! listeners, holds no secret, and is readable by every member and nobody else.

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

#[test]
fn the_export_passes_the_asyncapi_parser_and_the_official_schema_in_json_and_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    let (sources, rules) = populate(&api, &jo);
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

    // No secret: not the token, nor its hash or hint.
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
