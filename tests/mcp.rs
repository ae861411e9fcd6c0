//! The MCP endpoint of a workspace, `/mcp/{workspace}`, against a real `sluice up`, with the
//! official MCP TypeScript SDK (`@modelcontextprotocol/sdk` from npm in `tests/mcp/`) and the
//! official Python SDK (`mcp` from PyPI, `tests/mcp_client.py`) as clients and a personal
//! access token: every workspace operation of the served OpenAPI document is a tool (with the
//! spec tools and `sluice_call` beside them), a read tool and a write tool do what the API does,
//! lean mode serves and runs read-only tools only, another workspace is refused, no token is a
//! 401 pointing to the protected-resource metadata and a foreign `Host` a 403. OAuth is in
//! tests/mcp_oauth.rs.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::controlplane::{verified_user, Api};
use common::{agent, Answer, Sluice};
use serde_json::{json, Value};

/// Runs `tests/mcp/client.mjs` (Node.js with the SDK `scripts/test.sh` installs by `npm ci`):
/// connects to `url` with `token` and runs `steps`.
fn mcp_client(url: &str, token: &str, steps: Value) -> Value {
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    assert!(
        tools
            .join("node_modules/@modelcontextprotocol/sdk")
            .is_dir(),
        "the MCP SDK is missing: run scripts/test.sh (npm ci in tests/mcp)"
    );
    let out = Command::new("node")
        .arg(tools.join("client.mjs"))
        .arg(url)
        .arg(token)
        .arg(steps.to_string())
        .output()
        .expect("node runs (scripts/test.sh needs Node.js)");
    assert!(
        out.status.success(),
        "client.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client.mjs prints JSON")
}

/// The tools beside the generated ones: the AsyncAPI export and import, and the generic call
/// (`workspace_spec_get` only reads, so lean mode serves it).
const EXTRA_TOOLS: [&str; 3] = ["workspace_spec_get", "workspace_spec_import", "sluice_call"];

/// Runs `tests/mcp_client.py` (the official Python `mcp` SDK, from tests/requirements.txt):
/// lists the tools at `url` with `token` and calls `tool`.
fn python_client(url: &str, token: &str, tool: &str, arguments: Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let out = Command::new(common::python())
        .arg(script)
        .arg(url)
        .arg(token)
        .arg(tool)
        .arg(arguments.to_string())
        .output()
        .expect("python runs (scripts/test.sh makes .venv)");
    assert!(
        out.status.success(),
        "mcp_client.py failed (pip install -r tests/requirements.txt?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mcp_client.py prints JSON")
}

fn tool_names(listed: &Value) -> BTreeSet<String> {
    listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect()
}

/// The operation ids of the served document under `/api/v1/workspaces/{workspace}`, and those
/// of them that only read (GET).
fn workspace_operations(document: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    let mut reads = BTreeSet::new();
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let prefix = "/api/v1/workspaces/{workspace}";
        if path != prefix && !path.starts_with(&format!("{prefix}/")) {
            continue;
        }
        for (method, operation) in item.as_object().expect("path item") {
            if let Some(id) = operation["operationId"].as_str() {
                all.insert(id.to_owned());
                if method == "get" {
                    reads.insert(id.to_owned());
                }
            }
        }
    }
    (all, reads)
}

fn post_mcp(url: &str, token: Option<&str>) -> Answer {
    let mut req = agent()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    Answer::of(req.send(body.to_string()).expect("request sent"))
}

#[test]
fn the_typescript_sdk_lists_and_calls_the_workspace_tools_with_a_personal_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let kim = verified_user(&api, &outbox, "kim@example.com");
    for (user, slug) in [(&jo, "plant"), (&kim, "other")] {
        let a = api.post(
            "/api/v1/workspaces",
            Some(&user.token),
            json!({"name": slug, "slug": slug}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = api.post(
        "/api/v1/me/tokens",
        Some(&jo.token),
        json!({"name": "mcp client"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let pat = a.json()["secret"].as_str().expect("secret").to_owned();
    let url = format!("{}/mcp/plant", sluice.api_url());

    // Every workspace operation of the served document is a tool, and no other.
    let document = api.get("/api/v1/openapi.json", &jo.token).json();
    let (operations, reads) = workspace_operations(&document);
    assert!(operations.contains("create_source"), "{operations:?}");
    let out = mcp_client(
        &url,
        &pat,
        json!([
            {"op": "list"},
            {"op": "call", "name": "list_sources", "arguments": {}},
            {"op": "call", "name": "create_source", "arguments": {"body": {"slug": "boilers", "name": "Boilers"}}},
            {"op": "call", "name": "list_sources", "arguments": {}},
            {"op": "call", "name": "get_source", "arguments": {"source": "nowhere"}},
        ]),
    );
    assert!(out["connectError"].is_null(), "{out}");
    assert_eq!(out["protocolVersion"], "2025-11-25", "{out}");
    let steps = out["steps"].as_array().expect("steps");
    let mut expected = operations.clone();
    expected.extend(EXTRA_TOOLS.map(str::to_owned));
    assert_eq!(tool_names(&steps[0]), expected);
    let create = steps[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "create_source")
        .expect("create_source");
    assert!(
        create["inputSchema"]["properties"]["body"].is_object(),
        "{create}"
    );
    assert!(
        create["inputSchema"]["properties"]["workspace"].is_null(),
        "{create}"
    );
    assert!(
        !create["description"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{create}"
    );

    // A read tool, a write tool (checked through the API) and a refusal as a tool error.
    assert_eq!(steps[1]["isError"], false, "{}", steps[1]);
    assert_eq!(
        steps[1]["structuredContent"]["items"],
        json!([]),
        "{}",
        steps[1]
    );
    assert_eq!(steps[2]["isError"], false, "{}", steps[2]);
    assert_eq!(
        steps[2]["structuredContent"]["slug"], "boilers",
        "{}",
        steps[2]
    );
    let listed = api
        .get("/api/v1/workspaces/plant/sources", &jo.token)
        .json();
    assert_eq!(listed["items"][0]["slug"], "boilers", "{listed}");
    assert_eq!(steps[3]["structuredContent"]["items"][0]["slug"], "boilers");
    assert!(steps[3]["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.contains("boilers")));
    assert_eq!(steps[4]["isError"], true, "{}", steps[4]);
    assert_eq!(steps[4]["structuredContent"]["status"], 404, "{}", steps[4]);
    assert!(
        steps[4]["structuredContent"]["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("unknown-source")),
        "{}",
        steps[4]
    );
    assert!(steps[4]["structuredContent"]["detail"].is_string());

    // The Python SDK lists the same tools and calls one with the same token.
    let python = python_client(&url, &pat, "get_source", json!({"source": "boilers"}));
    let listed: BTreeSet<String> = python["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    assert_eq!(listed, expected, "{python}");
    assert_eq!(
        python["call"]["structuredContent"]["slug"], "boilers",
        "{python}"
    );
    assert_ne!(python["call"]["isError"], true, "{python}");
    assert!(python["protocolVersion"].is_string(), "{python}");

    // Lean mode: the read-only tools only, and a write tool is refused.
    let out = mcp_client(
        &format!("{url}?mode=lean"),
        &pat,
        json!([
            {"op": "list"},
            {"op": "call", "name": "create_source", "arguments": {"body": {"slug": "lean"}}},
        ]),
    );
    let steps = out["steps"].as_array().expect("steps");
    let mut expected = reads.clone();
    expected.insert("workspace_spec_get".to_owned());
    assert_eq!(tool_names(&steps[0]), expected);
    assert!(!reads.contains("create_source"));
    assert_eq!(steps[1]["isError"], true, "{}", steps[1]);
    let listed = api
        .get("/api/v1/workspaces/plant/sources", &jo.token)
        .json();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // Another user's workspace: 404 like the API, and the SDK cannot connect.
    let a = post_mcp(&format!("{}/mcp/other", sluice.api_url()), Some(&pat));
    assert_eq!(a.status, 404, "{}", a.body);
    let out = mcp_client(
        &format!("{}/mcp/other", sluice.api_url()),
        &pat,
        json!([{"op": "list"}]),
    );
    assert!(out["connectError"].is_object(), "{out}");

    // No token, or an unknown one: 401 with a Bearer challenge that points to the
    // protected-resource metadata.
    for token in [None, Some("sluice_pat_unknown")] {
        let a = post_mcp(&url, token);
        assert_eq!(a.status, 401, "{}", a.body);
        let challenge = a
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{challenge:?}");
        assert!(
            challenge.contains(&format!(
                "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/plant\"",
                sluice.api_url()
            )),
            "{challenge:?}"
        );
    }
    let out = mcp_client(&url, "", json!([{"op": "list"}]));
    assert!(out["connectError"].is_object(), "{out}");

    // Plain JSON-RPC without a session: stateless.
    let a = post_mcp(&url, Some(&pat));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.headers.get("mcp-session-id").is_none());
    assert!(a.body.contains("list_sources"), "{}", a.body);

    // No event stream to open (stateless), and a foreign Host is refused (DNS rebinding).
    let get = agent()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {pat}"))
        .call()
        .expect("request sent");
    assert_eq!(get.status().as_u16(), 405);
    let foreign = agent()
        .post(&url)
        .header("host", "evil.example")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {pat}"))
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
        .expect("request sent");
    assert_eq!(foreign.status().as_u16(), 403);
}
