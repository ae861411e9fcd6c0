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
use std::time::Duration;

use common::controlplane::{add_member, verified_user, Api};
use common::{agent, duckdb, Answer, Sluice};
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

/// `sluice_call` arguments that send `body` to source `source` of `workspace`.
fn ingest_call(workspace: &str, source: &str, body: Value) -> Value {
    json!({"method": "POST", "path": format!("/v1/ingest/{workspace}/{source}"), "body": body})
}

/// The problem type of a tool error, without its URN prefix.
fn tool_problem(result: &Value) -> String {
    result["structuredContent"]["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:sluice:problem:")
        .to_owned()
}

#[test]
fn mcp_clients_ingest_through_sluice_call_and_the_events_are_in_parquet_once_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "300"]);
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
    add_member(&api, &outbox, &jo, "plant", &kim, "viewer");
    let a = api.post(
        "/api/v1/me/tokens",
        Some(&jo.token),
        json!({"name": "mcp client"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let pat = a.json()["secret"].as_str().expect("secret").to_owned();
    let url = format!("{}/mcp/plant", sluice.api_url());

    // An Admin's personal token: a JSON array with a device id, and NDJSON; each answered with
    // the node's count once durable. Then the refusals: a source the workspace lacks (the
    // node's own 404), another workspace's path, a body over the bound, and GET.
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&jo.token),
        json!({"slug": "boilers", "name": "Boilers"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let mut ndjson = ingest_call(
        "plant",
        "boilers",
        json!("{\"temp_c\":3}\n{\"temp_c\":4}\n"),
    );
    ndjson["content_type"] = json!("application/x-ndjson");
    let mut with_device = ingest_call("plant", "boilers", json!([{"temp_c": 1}, {"temp_c": 2}]));
    with_device["device_id"] = json!("probe-7");
    let mut get = ingest_call("plant", "boilers", json!({"temp_c": 0}));
    let mut bad_device = ingest_call("plant", "boilers", json!({"temp_c": 0}));
    bad_device["device_id"] = json!("two words");
    get["method"] = json!("GET");
    let out = mcp_client(
        &url,
        &pat,
        json!([
            {"op": "call", "name": "sluice_call", "arguments": with_device},
            {"op": "call", "name": "sluice_call", "arguments": ndjson},
            {"op": "call", "name": "sluice_call", "arguments": ingest_call("plant", "nowhere", json!({"temp_c": 0}))},
            {"op": "call", "name": "sluice_call", "arguments": ingest_call("other", "boilers", json!({"temp_c": 0}))},
            {"op": "call", "name": "sluice_call", "arguments": get},
            {"op": "call", "name": "list_tokens", "arguments": {}},
            {"op": "call", "name": "sluice_call", "arguments": bad_device},
        ]),
    );
    assert!(out["connectError"].is_null(), "{out}");
    let steps = out["steps"].as_array().expect("steps");
    assert_eq!(steps[0]["isError"], false, "{}", steps[0]);
    assert_eq!(steps[0]["structuredContent"], json!({"accepted": 2}));
    assert_eq!(
        steps[1]["structuredContent"],
        json!({"accepted": 2}),
        "{}",
        steps[1]
    );
    assert_eq!(steps[2]["isError"], true, "{}", steps[2]);
    assert_eq!(steps[2]["structuredContent"]["status"], 404, "{}", steps[2]);
    assert_eq!(tool_problem(&steps[2]), "unknown-source", "{}", steps[2]);
    assert_eq!(steps[3]["code"], -32602, "{}", steps[3]);
    assert!(
        steps[3]["thrown"]
            .as_str()
            .is_some_and(|t| t.contains("serves workspace \"plant\" only")),
        "{}",
        steps[3]
    );
    assert_eq!(steps[4]["code"], -32602, "{}", steps[4]);
    // The control plane's own ingest credential is no token of the workspace's list.
    assert_eq!(
        steps[5]["structuredContent"]["items"],
        json!([]),
        "{}",
        steps[5]
    );
    assert_eq!(steps[6]["code"], -32602, "{}", steps[6]);

    // A body over sluice_call's bound (a command line could not carry it to the SDK client:
    // plain JSON-RPC) is refused before it is forwarded.
    let big = "x".repeat(600 * 1024);
    let a = rpc_call(
        &url,
        &pat,
        "sluice_call",
        ingest_call("plant", "boilers", json!({"blob": big})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let result = &a.json()["result"];
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(result["structuredContent"]["status"], 413, "{result}");
    assert_eq!(tool_problem(result), "body-too-large", "{result}");

    // The Python SDK sends one event with the same token.
    let python = python_client(
        &url,
        &pat,
        "sluice_call",
        ingest_call("plant", "boilers", json!({"temp_c": 5})),
    );
    assert_eq!(
        python["call"]["structuredContent"],
        json!({"accepted": 1}),
        "{python}"
    );

    // A Viewer may not send events (the role), and lean mode serves no sluice_call.
    let out = mcp_client(
        &url,
        &kim.token,
        json!([
            {"op": "call", "name": "sluice_call", "arguments": ingest_call("plant", "boilers", json!({"temp_c": 9}))},
        ]),
    );
    let refused = &out["steps"][0];
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(tool_problem(refused), "insufficient-role", "{refused}");
    let out = mcp_client(
        &format!("{url}?mode=lean"),
        &pat,
        json!([
            {"op": "call", "name": "sluice_call", "arguments": ingest_call("plant", "boilers", json!({"temp_c": 9}))},
        ]),
    );
    assert_eq!(out["steps"][0]["isError"], true, "{out}");

    // Acknowledged means durable: DuckDB reads the five events, with the device id, from the
    // Parquet files, and none of the refused ones.
    let lake = sluice.data_dir.join("lake");
    let landed = common::wait_for(Duration::from_secs(30), || {
        common::parquet_files(&lake) > 0
            && duckdb(&lake, "SELECT count(*) FROM {lake}") == vec![vec![json!(5)]]
    });
    assert!(landed, "{:?}", duckdb(&lake, "SELECT count(*) FROM {lake}"));
    let rows = duckdb(
        &lake,
        "SELECT CAST(payload->>'temp_c' AS INTEGER) AS t, device_id, source FROM {lake} ORDER BY t",
    );
    assert_eq!(
        rows,
        vec![
            vec![json!(1), json!("probe-7"), json!("boilers")],
            vec![json!(2), json!("probe-7"), json!("boilers")],
            vec![json!(3), Value::Null, json!("boilers")],
            vec![json!(4), Value::Null, json!("boilers")],
            vec![json!(5), Value::Null, json!("boilers")],
        ]
    );
}

/// A stand-in data plane that holds every ingest request it gets until released, then
/// answers `202 {"accepted":1}`: MCP requests forwarding to it stay in flight as long as the
/// test wants, without any timing.
struct HeldIngest {
    port: u16,
    /// The request heads received so far.
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    release: std::sync::mpsc::Sender<()>,
}

impl HeldIngest {
    fn start() -> HeldIngest {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let seen = heads.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                seen.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&head).into_owned());
                held.push(stream);
                if held.len() >= 2 {
                    // Wait for the test's word, then answer every held request.
                    let _ = released.recv();
                    for mut s in held.drain(..) {
                        let _ = s.write_all(
                            b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 14\r\nconnection: close\r\n\r\n{\"accepted\":1}",
                        );
                    }
                }
            }
        });
        HeldIngest {
            port,
            heads,
            release,
        }
    }

    fn held(&self) -> usize {
        self.heads.lock().expect("lock").len()
    }
}

fn rpc_call(url: &str, token: &str, name: &str, arguments: Value) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}});
    Answer::of(
        agent()
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .send(body.to_string())
            .expect("request sent"),
    )
}

#[test]
fn mcp_requests_beyond_mcp_requests_max_get_503_with_retry_after_and_the_endpoint_serves_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[controlplane]\nmcp_requests_max = 2\n").expect("config");
    let held = HeldIngest::start();
    let ingest = format!("http://127.0.0.1:{}", held.port);
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().expect("path"),
            "--ingest-public-url",
            &ingest,
        ],
    );
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let url = format!("{}/mcp/plant", sluice.api_url());

    // Two ingest calls fill the bound: the stand-in data plane holds both.
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let (url, token) = (url.clone(), jo.token.clone());
            std::thread::spawn(move || {
                let mut arguments = ingest_call("plant", "telemetry", json!({"n": i}));
                arguments["device_id"] = json!(format!("probe-{i}"));
                rpc_call(&url, &token, "sluice_call", arguments)
            })
        })
        .collect();
    assert!(
        common::wait_for(Duration::from_secs(30), || held.held() == 2),
        "the forwarded requests did not arrive: {:?}",
        held.heads.lock().expect("lock")
    );
    for head in held.heads.lock().expect("lock").iter() {
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.starts_with("post /v1/ingest/plant/telemetry http/1.1"),
            "{head}"
        );
        assert!(lower.contains("authorization: bearer sluice_"), "{head}");
        assert!(lower.contains("x-device-id: probe-"), "{head}");
    }

    // A third request, of any kind, is refused at once while they are in flight.
    let refused = post_mcp(&url, Some(&jo.token));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert_eq!(refused.json()["error"]["code"], -32000, "{}", refused.body);
    assert_eq!(refused.json()["jsonrpc"], "2.0", "{}", refused.body);

    // Released, both calls end with the node's answer, and the endpoint serves again.
    held.release.send(()).expect("release");
    for call in calls {
        let a = call.join().expect("call thread");
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.json()["result"]["structuredContent"],
            json!({"accepted": 1}),
            "{}",
            a.body
        );
    }
    let a = post_mcp(&url, Some(&jo.token));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("sluice_call"), "{}", a.body);
}

/// The tokens of workspace `slug` in the configuration the control plane wrote for the node.
fn snapshot_tokens(data_dir: &std::path::Path, slug: &str) -> Option<Vec<Value>> {
    let text = std::fs::read_to_string(data_dir.join("config-snapshot.json")).ok()?;
    let snapshot: Value = serde_json::from_str(&text).ok()?;
    snapshot["workspaces"]
        .as_array()?
        .iter()
        .find(|w| w["slug"] == slug)
        .and_then(|w| w["tokens"].as_array().cloned())
}

#[test]
fn the_mcp_ingest_credential_survives_restarts_and_key_rotation_and_goes_with_its_workspace() {
    const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(&dir.path().join("data"), &["--secret-key", OLD]);
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    for slug in ["plant", "lab"] {
        let a = api.post(
            "/api/v1/workspaces",
            Some(&jo.token),
            json!({"name": slug, "slug": slug}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&jo.token),
        json!({"slug": "boilers", "name": "Boilers"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/me/tokens",
        Some(&jo.token),
        json!({"name": "mcp client"}),
    );
    let pat = a.json()["secret"].as_str().expect("secret").to_owned();
    let send = |sluice: &Sluice| {
        let a = rpc_call(
            &format!("{}/mcp/plant", sluice.api_url()),
            &pat,
            "sluice_call",
            ingest_call("plant", "boilers", json!({"temp_c": 1})),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["result"].clone()
    };
    let credential = |sluice: &Sluice| -> String {
        let tokens = snapshot_tokens(&sluice.data_dir, "plant").expect("plant in the snapshot");
        let ours: Vec<&Value> = tokens
            .iter()
            .filter(|t| t["name"] == "MCP ingest (control plane)")
            .collect();
        assert_eq!(ours.len(), 1, "{tokens:?}");
        assert_eq!(ours[0]["scopes"], json!(["ingest"]), "{tokens:?}");
        ours[0]["sha256"].as_str().expect("sha256").to_owned()
    };

    // The first ingest mints it; nodes see it, the token list does not.
    assert!(
        snapshot_tokens(&sluice.data_dir, "plant").is_some_and(|t| t.is_empty()),
        "no credential before the first MCP ingest"
    );
    assert_eq!(send(&sluice)["structuredContent"], json!({"accepted": 1}));
    let first = credential(&sluice);
    let listed = api.get("/api/v1/workspaces/plant/tokens", &jo.token).json();
    assert_eq!(listed["items"], json!([]), "{listed}");

    // A new secret key with the old one as previous, then the new one alone: the sealed
    // secret is sealed again at start and keeps working, the same token for the nodes.
    for args in [
        vec!["--secret-key", NEW, "--previous-secret-keys", OLD],
        vec!["--secret-key", NEW],
    ] {
        sluice.stop();
        sluice.args = args.into_iter().map(str::to_owned).collect();
        sluice.restart();
        assert_eq!(send(&sluice)["structuredContent"], json!({"accepted": 1}));
        assert_eq!(credential(&sluice), first);
    }
    // A key that cannot open it: a new credential replaces it, and ingest still works.
    sluice.stop();
    sluice.args = vec!["--secret-key".into(), OLD.into()];
    sluice.restart();
    assert_eq!(send(&sluice)["structuredContent"], json!({"accepted": 1}));
    assert_ne!(credential(&sluice), first);

    // Deleting the workspace takes it along.
    let api = Api::new(sluice.api_url());
    let token = api.sign_in(&jo.email, &jo.password);
    let a = api.delete("/api/v1/workspaces/plant", &token);
    assert!(a.status == 204 || a.status == 200, "{}", a.body);
    assert!(
        common::wait_for(Duration::from_secs(10), || snapshot_tokens(
            &sluice.data_dir,
            "plant"
        )
        .is_none()),
        "plant left the snapshot"
    );
}
