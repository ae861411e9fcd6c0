//! OAuth 2.1 on the MCP endpoint of a workspace, against a real `sluice up`.
//!
//! The official MCP TypeScript SDK (`tests/mcp/oauth_client.mjs`) completes the whole flow
//! headlessly: discovery from the 401, dynamic registration, PKCE authorization with the
//! signed-in session and the consent form, the token exchange, tools, a refresh when its access
//! token expires, and losing access when an Admin revokes the grant; and again identified by a
//! client metadata document (served over HTTPS by a test CA) instead of registering. The refusals are driven
//! over plain HTTP: PKCE plain, a redirect URI not registered, another workspace's resource, a
//! read-only grant or a Viewer calling a write tool, an expired access token, a reused code or
//! refresh token, a foreign `Origin`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::controlplane::{add_member, verified_user, Api, User};
use common::{agent, Answer, Sluice};
use serde_json::{json, Value};

/// The PKCE pair of RFC 7636 appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const REDIRECT: &str = "http://127.0.0.1:9/cb";

fn config_file(dir: &Path, controlplane: &str) -> String {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, format!("[controlplane]\n{controlplane}")).expect("config");
    path.to_str().expect("path").to_owned()
}

/// An HTTP client that follows no redirect: the test reads each `Location` itself.
fn browser() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn get(url: &str, cookie: Option<&str>) -> Answer {
    let mut req = browser().get(url);
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    Answer::of(req.call().expect("request sent"))
}

fn post_form(url: &str, cookie: Option<&str>, pairs: &[(&str, &str)]) -> Answer {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut req = browser()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    Answer::of(req.send(body).expect("request sent"))
}

/// Runs `tests/mcp/oauth_client.mjs` against `url` with `config`.
fn sdk_client(url: &str, config: Value) -> Value {
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    assert!(
        tools
            .join("node_modules/@modelcontextprotocol/sdk")
            .is_dir(),
        "the MCP SDK is missing: run scripts/test.sh (npm ci in tests/mcp)"
    );
    let out = Command::new("node")
        .arg(tools.join("oauth_client.mjs"))
        .arg(url)
        .arg(config.to_string())
        .output()
        .expect("node runs (scripts/test.sh needs Node.js)");
    assert!(
        out.status.success(),
        "oauth_client.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oauth_client.mjs prints JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One JSON-RPC request to an MCP URL, stateless.
fn rpc(url: &str, token: &str, method: &str, params: Value, origin: Option<&str>) -> Answer {
    let mut req = agent()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {token}"));
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Answer::of(req.send(body.to_string()).expect("request sent"))
}

/// A tool call's result (the JSON-RPC `result`), asserting the transport accepted it.
fn call_tool(url: &str, token: &str, name: &str, arguments: Value) -> Value {
    let a = rpc(
        url,
        token,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
        None,
    );
    assert_eq!(a.status, 200, "{name}: {}", a.body);
    a.json()["result"].clone()
}

fn problem_type(result: &Value) -> String {
    result["structuredContent"]["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:sluice:problem:")
        .to_owned()
}

fn query_param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(location).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A raw OAuth client of the tests: registered once, then authorization requests.
struct RawClient {
    base: String,
    client_id: String,
}

impl RawClient {
    fn register(base: &str) -> RawClient {
        let a = common::post(
            &format!("{base}/oauth/register"),
            &[("content-type", "application/json")],
            json!({"client_name": "Raw test client", "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none"})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        RawClient {
            base: base.to_owned(),
            client_id: a.json()["client_id"]
                .as_str()
                .expect("client_id")
                .to_owned(),
        }
    }

    fn authorize_url(&self, overrides: &[(&str, Option<&str>)]) -> String {
        let resource = format!("{}/mcp/plant", self.base);
        let mut params: Vec<(&str, Option<String>)> = vec![
            ("response_type", Some("code".into())),
            ("client_id", Some(self.client_id.clone())),
            ("redirect_uri", Some(REDIRECT.into())),
            ("code_challenge", Some(CHALLENGE.into())),
            ("code_challenge_method", Some("S256".into())),
            ("resource", Some(resource)),
            ("state", Some("xyz".into())),
        ];
        for (name, value) in overrides {
            match params.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.map(str::to_owned),
                None => params.push((name, value.map(str::to_owned))),
            }
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                params
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v))),
            )
            .finish();
        format!("{}/oauth/authorize?{query}", self.base)
    }

    /// Shows the consent page to `cookie` and allows it: the redirect's `Location`.
    fn consent(&self, cookie: &str, overrides: &[(&str, Option<&str>)]) -> Answer {
        let page = get(&self.authorize_url(overrides), Some(cookie));
        if page.status != 200 {
            return page;
        }
        let consent = consent_id(&page.body);
        post_form(
            &format!("{}/oauth/authorize", self.base),
            Some(cookie),
            &[("consent", &consent), ("decision", "allow")],
        )
    }

    /// A code for `cookie`'s user with `overrides`.
    fn code(&self, cookie: &str, overrides: &[(&str, Option<&str>)]) -> String {
        let a = self.consent(cookie, overrides);
        assert_eq!(a.status, 303, "{}", a.body);
        let location = a.header("location").expect("location");
        query_param(&location, "code").unwrap_or_else(|| panic!("no code in {location}"))
    }

    fn token(&self, pairs: &[(&str, &str)]) -> Answer {
        post_form(&format!("{}/oauth/token", self.base), None, pairs)
    }

    fn exchange(&self, code: &str) -> Answer {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", &self.client_id),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
    }

    /// Access and refresh tokens for `cookie`'s user with `overrides`.
    fn tokens(&self, cookie: &str, overrides: &[(&str, Option<&str>)]) -> (String, String) {
        let code = self.code(cookie, overrides);
        let a = self.exchange(&code);
        assert_eq!(a.status, 200, "{}", a.body);
        let t = a.json();
        (
            t["access_token"].as_str().expect("access").to_owned(),
            t["refresh_token"].as_str().expect("refresh").to_owned(),
        )
    }
}

fn consent_id(html: &str) -> String {
    let start = html
        .find("name=\"consent\" value=\"")
        .unwrap_or_else(|| panic!("no consent form in {html}"))
        + "name=\"consent\" value=\"".len();
    html[start..]
        .split('"')
        .next()
        .expect("consent id")
        .to_owned()
}

fn cookie(user: &User) -> String {
    format!("sluice_session={}", user.token)
}

#[test]
fn the_typescript_sdk_authorizes_with_oauth_refreshes_and_loses_access_when_the_grant_is_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "oauth_access_token_ttl_secs = 4\n");
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let url = format!("{}/mcp/plant", sluice.api_url());
    let state = dir.path().join("sdk-state.json");

    let out = sdk_client(
        &url,
        json!({
            "state": state, "cookie": cookie(&jo), "consent": true,
            "steps": [
                {"op": "list"},
                {"op": "call", "name": "list_sources", "arguments": {}},
                {"op": "call", "name": "create_source", "arguments": {"body": {"slug": "boilers", "name": "Boilers"}}},
                {"op": "tokens"},
                {"op": "sleep", "ms": 5000},
                {"op": "call", "name": "get_source", "arguments": {"source": "boilers"}},
                {"op": "tokens"},
            ]
        }),
    );
    assert!(out["connectError"].is_null(), "{out}");
    assert_eq!(out["protocolVersion"], "2025-11-25", "{out}");
    // One authorization: S256 PKCE for this MCP URL, consent allowed, code back to the client.
    let authorizations = out["authorizations"].as_array().expect("authorizations");
    assert_eq!(authorizations.len(), 1, "{out}");
    let first = authorizations[0]["url"].as_str().expect("url");
    assert_eq!(
        query_param(first, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(first, "resource").as_deref(),
        Some(url.as_str())
    );
    assert_eq!(authorizations[0]["pageStatus"], 200, "{out}");
    assert_eq!(authorizations[0]["formStatus"], 303, "{out}");
    assert!(
        out["client"]["client_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("sluice_ocl_")),
        "{out}"
    );

    let steps = out["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for name in [
        "create_source",
        "list_oauth_grants",
        "revoke_oauth_grant",
        "workspace_spec_get",
        "workspace_spec_import",
        "sluice_call",
    ] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    assert_eq!(steps[1]["isError"], false, "{}", steps[1]);
    assert_eq!(steps[2]["isError"], false, "{}", steps[2]);
    let listed = api
        .get("/api/v1/workspaces/plant/sources", &jo.token)
        .json();
    assert_eq!(listed["items"][0]["slug"], "boilers", "{listed}");

    // The access token expired during the sleep: the SDK refreshed and went on.
    assert_eq!(steps[5]["isError"], false, "{}", steps[5]);
    assert_eq!(steps[5]["structuredContent"]["slug"], "boilers");
    let before = &steps[3]["tokens"];
    let after = &steps[6]["tokens"];
    assert_ne!(before["access_token"], after["access_token"], "{out}");
    assert_ne!(before["refresh_token"], after["refresh_token"], "{out}");
    assert!(out["savedTokens"].as_u64() >= Some(2), "{out}");
    assert!(
        before["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("sluice_oat_")),
        "{before}"
    );
    // The expired access token is refused with the challenge that leads back to discovery.
    let expired = before["access_token"].as_str().expect("access token");
    let a = rpc(&url, expired, "tools/list", json!({}), None);
    assert_eq!(a.status, 401, "{}", a.body);
    let challenge = a.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/plant\"",
            sluice.api_url()
        )),
        "{challenge}"
    );

    // The workspace's grants, as an Admin sees them, and revoking one ends its tokens at once.
    let grants = api
        .get("/api/v1/workspaces/plant/oauth-grants", &jo.token)
        .json();
    let items = grants["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{grants}");
    assert_eq!(items[0]["client_name"], "Sluice test agent");
    assert_eq!(items[0]["user_email"], "jo@example.com");
    assert_eq!(items[0]["resource"], url.as_str());
    assert!(items[0]["last_used_at"].is_string(), "{grants}");
    let current = after["access_token"].as_str().expect("access token");
    assert_eq!(
        rpc(&url, current, "tools/list", json!({}), None).status,
        200
    );
    let grant = items[0]["id"].as_str().expect("id");
    let a = api.delete(
        &format!("/api/v1/workspaces/plant/oauth-grants/{grant}"),
        &jo.token,
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(
        rpc(&url, current, "tools/list", json!({}), None).status,
        401
    );
    // The SDK's refresh fails too: it can only start a new authorization (not given here).
    let out = sdk_client(
        &url,
        json!({"state": state, "cookie": cookie(&jo), "consent": false,
            "steps": [{"op": "list"}]}),
    );
    assert_eq!(out["connectError"]["unauthorized"], true, "{out}");
    assert_eq!(out["authorizations"][0]["skipped"], true, "{out}");
    let grants = api
        .get("/api/v1/workspaces/plant/oauth-grants", &jo.token)
        .json();
    assert_eq!(grants["items"], json!([]), "{grants}");
}

#[test]
fn oauth_refuses_plain_pkce_foreign_redirects_other_resources_reused_tokens_and_scopes_beyond_the_grant(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let base = sluice.api_url();
    let api = Api::new(base.clone());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let vic = verified_user(&api, &outbox, "vic@example.com");
    let kim = verified_user(&api, &outbox, "kim@example.com");
    for (user, slug) in [(&jo, "plant"), (&jo, "lab"), (&kim, "other")] {
        let a = api.post(
            "/api/v1/workspaces",
            Some(&user.token),
            json!({"name": slug, "slug": slug}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    add_member(&api, &outbox, &jo, "plant", &vic, "viewer");
    let plant = format!("{base}/mcp/plant");

    // Discovery documents.
    let a = get(
        &format!("{base}/.well-known/oauth-authorization-server"),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let metadata = a.json();
    assert_eq!(metadata["issuer"], base.as_str());
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert_eq!(metadata["client_id_metadata_document_supported"], true);
    assert_eq!(
        metadata["registration_endpoint"],
        format!("{base}/oauth/register")
    );
    let alias = get(&format!("{base}/.well-known/openid-configuration"), None).json();
    assert_eq!(alias, metadata);
    for path in [
        "/.well-known/oauth-protected-resource/mcp/plant",
        "/mcp/plant/.well-known/oauth-protected-resource",
    ] {
        let a = get(&format!("{base}{path}"), None);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_eq!(a.json()["resource"], plant.as_str(), "{path}");
        assert_eq!(a.json()["authorization_servers"], json!([base]), "{path}");
    }

    // Registration: public clients, allowed redirect URIs only.
    let refused = common::post(
        &format!("{base}/oauth/register"),
        &[("content-type", "application/json")],
        br#"{"client_name":"x","redirect_uris":["http://evil.example/cb"]}"#,
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "invalid_redirect_uri");
    let client = RawClient::register(&base);

    // Not signed in: to the sign-in form, and back to the authorization after it.
    let a = get(&client.authorize_url(&[]), None);
    assert_eq!(a.status, 303, "{}", a.body);
    let login = a.header("location").expect("location");
    assert!(login.starts_with("/login?next="), "{login}");
    let next = query_param(&format!("{base}{login}"), "next").expect("next");
    let a = post_form(
        &format!("{base}/login"),
        None,
        &[
            ("email", &jo.email),
            ("password", &jo.password),
            ("next", &next),
        ],
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location").as_deref(), Some(next.as_str()));
    let session = a
        .header("set-cookie")
        .and_then(|c| c.split(';').next().map(str::to_owned))
        .expect("session cookie");
    let page = get(&format!("{base}{next}"), Some(&session));
    assert_eq!(page.status, 200, "{}", page.body);
    for text in [
        "Raw test client",
        "plant",
        "workspace:read",
        "workspace:write",
    ] {
        assert!(page.body.contains(text), "{text} not in {}", page.body);
    }
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    // The consent form from another session (CSRF) is refused, and the page stays answerable.
    let consent = consent_id(&page.body);
    let forged = post_form(
        &format!("{base}/oauth/authorize"),
        Some(&cookie(&kim)),
        &[("consent", &consent), ("decision", "allow")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    let allowed = post_form(
        &format!("{base}/oauth/authorize"),
        Some(&session),
        &[("consent", &consent), ("decision", "allow")],
    );
    assert_eq!(allowed.status, 303, "{}", allowed.body);
    let location = allowed.header("location").expect("location");
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(base.as_str())
    );

    let jo_cookie = cookie(&jo);
    // PKCE plain, or none: refused back to the client.
    for overrides in [
        vec![("code_challenge_method", Some("plain"))],
        vec![("code_challenge_method", None), ("code_challenge", None)],
    ] {
        let a = get(&client.authorize_url(&overrides), Some(&jo_cookie));
        assert_eq!(a.status, 303, "{}", a.body);
        let location = a.header("location").expect("location");
        assert!(location.starts_with(REDIRECT), "{location}");
        assert_eq!(
            query_param(&location, "error").as_deref(),
            Some("invalid_request")
        );
        assert!(query_param(&location, "code").is_none());
    }
    // A redirect URI not registered: a page, never a redirect there.
    let a = get(
        &client.authorize_url(&[("redirect_uri", Some("http://127.0.0.1:9/other"))]),
        Some(&jo_cookie),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.header("location").is_none());
    // Loopback redirect URIs match on any port (RFC 8252).
    let a = get(
        &client.authorize_url(&[("redirect_uri", Some("http://127.0.0.1:5555/cb"))]),
        Some(&jo_cookie),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // The resource must be an MCP URL of a workspace of the user.
    for (resource, error) in [
        (Some(format!("{base}/mcp/other")), "access_denied"),
        (
            Some("https://evil.example/mcp/plant".to_owned()),
            "invalid_target",
        ),
        (None, "invalid_target"),
    ] {
        let a = get(
            &client.authorize_url(&[("resource", resource.as_deref())]),
            Some(&jo_cookie),
        );
        assert_eq!(a.status, 303, "{}", a.body);
        let location = a.header("location").expect("location");
        assert_eq!(
            query_param(&location, "error").as_deref(),
            Some(error),
            "{location}"
        );
    }

    // The exchange: the verifier, the redirect URI and the client must be the request's.
    let code = client.code(&jo_cookie, &[]);
    for (name, value) in [
        ("code_verifier", "a".repeat(43)),
        ("redirect_uri", "http://127.0.0.1:9/other".to_owned()),
        ("client_id", "sluice_ocl_someone_else".to_owned()),
    ] {
        let mut pairs = [
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("client_id", client.client_id.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_verifier", VERIFIER.to_owned()),
        ];
        for pair in pairs.iter_mut().filter(|(n, _)| *n == name) {
            pair.1 = value.clone();
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let a = client.token(&pairs);
        assert_eq!(a.status, 400, "{name}: {}", a.body);
        assert_eq!(a.json()["error"], "invalid_grant", "{name}");
    }
    let a = client.exchange(&code);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("cache-control").as_deref(), Some("no-store"));
    let tokens = a.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "workspace:read workspace:write");
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    assert_eq!(
        rpc(&plant, &access, "tools/list", json!({}), None).status,
        200
    );
    // A code used twice: refused, and what its first exchange gave is revoked.
    let again = client.exchange(&code);
    assert_eq!(again.json()["error"], "invalid_grant", "{}", again.body);
    assert_eq!(
        rpc(&plant, &access, "tools/list", json!({}), None).status,
        401
    );

    // A token is for its own workspace's MCP URL only, even where its user is a member.
    let (access, refresh) = client.tokens(&jo_cookie, &[]);
    let a = rpc(
        &format!("{base}/mcp/lab"),
        &access,
        "tools/list",
        json!({}),
        None,
    );
    assert_eq!(a.status, 401, "{}", a.body);
    let a = rpc(
        &format!("{base}/mcp/other"),
        &access,
        "tools/list",
        json!({}),
        None,
    );
    assert_eq!(a.status, 401, "{}", a.body);

    // Rotating refresh tokens: the old one presented again revokes the whole grant.
    let a = client.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("client_id", &client.client_id),
    ]);
    assert_eq!(a.status, 200, "{}", a.body);
    let rotated = a.json();
    let access2 = rotated["access_token"].as_str().expect("access").to_owned();
    let refresh2 = rotated["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(refresh2, refresh);
    assert_eq!(
        rpc(&plant, &access2, "tools/list", json!({}), None).status,
        200
    );
    let reused = client.token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]);
    assert_eq!(reused.status, 400, "{}", reused.body);
    assert_eq!(reused.json()["error"], "invalid_grant");
    assert_eq!(
        rpc(&plant, &access2, "tools/list", json!({}), None).status,
        401
    );
    let a = client.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh2),
    ]);
    assert_eq!(a.json()["error"], "invalid_grant", "{}", a.body);

    // Revocation (RFC 7009) of an access token.
    let (access, _) = client.tokens(&jo_cookie, &[]);
    let a = post_form(&format!("{base}/oauth/revoke"), None, &[("token", &access)]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        rpc(&plant, &access, "tools/list", json!({}), None).status,
        401
    );

    // A read-only grant reads and cannot write, through any tool.
    let (read_only, _) = client.tokens(&jo_cookie, &[("scope", Some("workspace:read"))]);
    let listed = call_tool(&plant, &read_only, "list_sources", json!({}));
    assert_eq!(listed["isError"], false, "{listed}");
    let created = call_tool(
        &plant,
        &read_only,
        "create_source",
        json!({"body": {"slug": "nope", "name": "Nope"}}),
    );
    assert_eq!(created["isError"], true, "{created}");
    assert_eq!(problem_type(&created), "insufficient-scope", "{created}");
    let called = call_tool(
        &plant,
        &read_only,
        "sluice_call",
        json!({"method": "POST", "path": "/sources", "body": {"slug": "nope", "name": "Nope"}}),
    );
    assert_eq!(problem_type(&called), "insufficient-scope", "{called}");
    let spec = call_tool(&plant, &read_only, "workspace_spec_get", json!({}));
    assert_eq!(spec["isError"], false, "{spec}");
    assert_eq!(spec["structuredContent"]["asyncapi"], "3.0.0", "{spec}");

    // A Viewer's grant with write scopes still only reads: the role decides first.
    let (viewer, _) = client.tokens(&cookie(&vic), &[]);
    let listed = call_tool(&plant, &viewer, "list_sources", json!({}));
    assert_eq!(listed["isError"], false, "{listed}");
    let created = call_tool(
        &plant,
        &viewer,
        "create_source",
        json!({"body": {"slug": "nope", "name": "Nope"}}),
    );
    assert_eq!(problem_type(&created), "insufficient-role", "{created}");
    let grants = api.get("/api/v1/workspaces/plant/oauth-grants", &vic.token);
    assert_eq!(grants.status, 403, "{}", grants.body);

    // sluice_call and the spec tools with a full grant; nothing outside the workspace.
    let (full, _) = client.tokens(&jo_cookie, &[]);
    let made = call_tool(
        &plant,
        &full,
        "sluice_call",
        json!({"method": "POST", "path": "/sources", "body": {"slug": "kilns", "name": "Kilns"}}),
    );
    assert_eq!(made["isError"], false, "{made}");
    assert_eq!(made["structuredContent"]["slug"], "kilns");
    let escape = call_tool(
        &plant,
        &full,
        "sluice_call",
        json!({"method": "GET", "path": "/../../me"}),
    );
    assert!(escape["isError"] == true || escape.is_null(), "{escape}");
    let spec = call_tool(&plant, &full, "workspace_spec_get", json!({}));
    let document = spec["structuredContent"].clone();
    let dry = call_tool(
        &plant,
        &full,
        "workspace_spec_import",
        json!({"document": document, "dry_run": true}),
    );
    assert_eq!(dry["isError"], false, "{dry}");
    assert_eq!(dry["structuredContent"]["dry_run"], true, "{dry}");

    // A browser Origin other than the control plane's own is refused with a JSON-RPC error.
    let a = rpc(
        &plant,
        &full,
        "tools/list",
        json!({}),
        Some("http://evil.example"),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["jsonrpc"], "2.0", "{}", a.body);
    assert!(a.json()["error"]["code"].is_i64(), "{}", a.body);
    let a = rpc(&plant, &full, "tools/list", json!({}), Some(&base));
    assert_eq!(a.status, 200, "{}", a.body);

    // The Admin sees every grant of the workspace.
    let grants = api
        .get("/api/v1/workspaces/plant/oauth-grants", &jo.token)
        .json();
    assert!(
        grants["items"].as_array().map_or(0, Vec::len) >= 3,
        "{grants}"
    );
    // Registrations are bounded per client address: 20 an hour (one made above).
    let register = || {
        common::post(
            &format!("{base}/oauth/register"),
            &[("content-type", "application/json")],
            json!({"client_name": "again", "redirect_uris": [REDIRECT]})
                .to_string()
                .as_bytes(),
        )
    };
    for _ in 0..19 {
        assert_eq!(register().status, 201);
    }
    let a = register();
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.json()["error"], "too_many_requests", "{}", a.body);
    assert!(a.retry_after.is_some(), "{:?}", a.headers);
}

/// A static HTTPS server on 127.0.0.1 (Python, with the test CA's certificate) serving `root`.
struct StaticHttps {
    child: std::process::Child,
    port: u16,
}

impl StaticHttps {
    fn start(root: &Path, cert: &Path) -> StaticHttps {
        let port = common::free_port();
        let script = r#"
import functools, http.server, ssl, sys
root, cert, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
        let child = Command::new(common::python())
            .arg("-c")
            .arg(script)
            .arg(root)
            .arg(cert)
            .arg(port.to_string())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python runs");
        // Owned from here: dropped (killed and waited for) on every path, the panic included.
        let server = StaticHttps { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the HTTPS server did not start");
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for StaticHttps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_client_identified_by_its_metadata_document_url_authorizes_without_registering() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::controlplane::make_certs(dir.path());
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    let server = StaticHttps::start(&www, &dir.path().join("server.pem"));
    let document_url = server.url("/client.json");
    let redirect = "http://127.0.0.1:7777/callback";
    std::fs::write(
        www.join("client.json"),
        json!({"client_id": document_url, "client_name": "Document Agent",
            "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]})
        .to_string(),
    )
    .expect("document");
    std::fs::write(
        www.join("impostor.json"),
        json!({"client_id": "https://elsewhere.example/client.json", "redirect_uris": [redirect]})
            .to_string(),
    )
    .expect("document");
    // The document is on loopback: the operator's override of the outbound address policy
    // allows it, and the control plane trusts the test CA (rustls-native-certs reads
    // SSL_CERT_FILE).
    let ca = dir.path().join("ca.pem");
    let sluice = Sluice::start_with_env(
        &dir.path().join("data"),
        &["--smtp-allow-private-hosts"],
        &[("SSL_CERT_FILE", ca.to_str().expect("path"))],
    );
    let base = sluice.api_url();
    let api = Api::new(base.clone());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let url = format!("{base}/mcp/plant");

    let out = sdk_client(
        &url,
        json!({
            "state": dir.path().join("sdk-state.json"), "cookie": cookie(&jo), "consent": true,
            "clientMetadataUrl": document_url,
            "steps": [{"op": "call", "name": "list_sources", "arguments": {}}]
        }),
    );
    assert!(out["connectError"].is_null(), "{out}");
    assert_eq!(out["client"]["client_id"], document_url.as_str(), "{out}");
    let first = out["authorizations"][0]["url"].as_str().expect("url");
    assert_eq!(
        query_param(first, "client_id").as_deref(),
        Some(document_url.as_str())
    );
    assert_eq!(out["steps"][0]["isError"], false, "{out}");
    let grants = api
        .get("/api/v1/workspaces/plant/oauth-grants", &jo.token)
        .json();
    assert_eq!(
        grants["items"][0]["client_id"],
        document_url.as_str(),
        "{grants}"
    );
    assert_eq!(
        grants["items"][0]["client_name"], "Document Agent",
        "{grants}"
    );

    // A document that names another client id is refused, on a page (no redirect).
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", &server.url("/impostor.json")),
            ("redirect_uri", redirect),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("resource", &url),
        ])
        .finish();
    let a = get(
        &format!("{base}/oauth/authorize?{query}"),
        Some(&cookie(&jo)),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("client_id"), "{}", a.body);
    assert!(a.header("location").is_none());
}

/// POSTs `token` to the introspection endpoint with `bearer` as the caller.
fn introspect(base: &str, bearer: Option<&str>, token: &str) -> Answer {
    let mut req = browser()
        .post(format!("{base}/oauth/introspect"))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(bearer) = bearer {
        req = req.header("authorization", format!("Bearer {bearer}"));
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    Answer::of(req.send(body).expect("request sent"))
}

fn ingest_arguments(workspace: &str, events: Value) -> Value {
    json!({"method": "POST", "path": format!("/v1/ingest/{workspace}/boilers"), "body": events})
}

#[test]
fn only_an_ingest_grant_sends_events_through_mcp_and_introspection_tells_admins_and_the_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "300"]);
    let base = sluice.api_url();
    let api = Api::new(base.clone());
    let outbox = sluice.data_dir.join("outbox");
    let jo = verified_user(&api, &outbox, "jo@example.com");
    let vic = verified_user(&api, &outbox, "vic@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&jo.token),
        json!({"name": "plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&jo.token),
        json!({"slug": "boilers", "name": "Boilers"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    add_member(&api, &outbox, &jo, "plant", &vic, "viewer");
    let plant = format!("{base}/mcp/plant");
    let client = RawClient::register(&base);

    let metadata = get(
        &format!("{base}/.well-known/oauth-authorization-server"),
        None,
    )
    .json();
    assert_eq!(
        metadata["introspection_endpoint"],
        format!("{base}/oauth/introspect")
    );

    // An Admin's grant with `ingest` sends events; one without it cannot, `workspace:write`
    // included; nor can a Viewer's, whatever its scopes.
    let (ingest, ingest_refresh) =
        client.tokens(&cookie(&jo), &[("scope", Some("workspace:read ingest"))]);
    let (read, _) = client.tokens(&cookie(&jo), &[("scope", Some("workspace:read"))]);
    let (write, _) = client.tokens(&cookie(&jo), &[]);
    let (viewer, _) = client.tokens(
        &cookie(&vic),
        &[("scope", Some("workspace:read workspace:write ingest"))],
    );
    let sent = call_tool(
        &plant,
        &ingest,
        "sluice_call",
        ingest_arguments("plant", json!([{"temp_c": 1}, {"temp_c": 2}])),
    );
    assert_eq!(sent["isError"], false, "{sent}");
    assert_eq!(sent["structuredContent"], json!({"accepted": 2}), "{sent}");
    for (token, expected) in [
        (&read, "insufficient-scope"),
        (&write, "insufficient-scope"),
        (&viewer, "insufficient-role"),
    ] {
        let refused = call_tool(
            &plant,
            token,
            "sluice_call",
            ingest_arguments("plant", json!({"temp_c": 9})),
        );
        assert_eq!(refused["isError"], true, "{refused}");
        assert_eq!(problem_type(&refused), expected, "{refused}");
    }
    // An ingest grant changes nothing else of the workspace.
    let refused = call_tool(
        &plant,
        &ingest,
        "create_source",
        json!({"body": {"slug": "nope"}}),
    );
    assert_eq!(problem_type(&refused), "insufficient-scope", "{refused}");

    // Introspection: the Admin and the grant's own member see the token; another member who
    // is not an Admin, an unknown token or no caller learn nothing.
    let a = introspect(&base, Some(&jo.token), &ingest);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.header("cache-control").as_deref(),
        Some("no-store"),
        "{}",
        a.body
    );
    let seen = a.json();
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["scope"], "workspace:read ingest", "{seen}");
    assert_eq!(seen["client_id"], client.client_id.as_str(), "{seen}");
    assert_eq!(seen["token_type"], "Bearer", "{seen}");
    assert_eq!(seen["aud"], plant.as_str(), "{seen}");
    assert_eq!(seen["iss"], base.as_str(), "{seen}");
    assert_eq!(seen["username"], "jo@example.com", "{seen}");
    let (iat, exp) = (
        seen["iat"].as_i64().expect("iat"),
        seen["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 3600, "{seen}");
    let refresh = introspect(&base, Some(&jo.token), &ingest_refresh).json();
    assert_eq!(refresh["active"], true, "{refresh}");
    assert_eq!(refresh["token_type"], "refresh_token", "{refresh}");
    assert_eq!(
        introspect(&base, Some(&vic.token), &ingest).json(),
        json!({"active": false})
    );
    assert_eq!(
        introspect(&base, Some(&vic.token), &viewer).json()["active"],
        true
    );
    assert_eq!(
        introspect(&base, Some(&jo.token), "sluice_oat_unknown").json(),
        json!({"active": false})
    );
    let a = introspect(&base, None, &ingest);
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.json()["error"], "invalid_token", "{}", a.body);
    // An OAuth token is no caller of the endpoint itself (its audience is the MCP URL) ...
    assert_eq!(introspect(&base, Some(&ingest), &ingest).status, 401);

    // ... but through MCP, sluice_call introspects with the caller's authorization.
    let result = call_tool(
        &plant,
        &read,
        "sluice_call",
        json!({"method": "POST", "path": "/oauth/introspect", "body": {"token": ingest}}),
    );
    assert_eq!(result["structuredContent"]["active"], true, "{result}");
    assert_eq!(
        result["structuredContent"]["scope"], "workspace:read ingest",
        "{result}"
    );

    // Revoked: inactive at once.
    let a = post_form(
        &format!("{base}/oauth/revoke"),
        None,
        &[("token", &ingest_refresh)],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        introspect(&base, Some(&jo.token), &ingest).json(),
        json!({"active": false})
    );

    // The two events sent with the grant are in the Parquet files.
    let lake = sluice.data_dir.join("lake");
    let landed = common::wait_for(Duration::from_secs(30), || {
        common::parquet_files(&lake) > 0
            && common::duckdb(&lake, "SELECT count(*) FROM {lake}") == vec![vec![json!(2)]]
    });
    assert!(
        landed,
        "{:?}",
        common::duckdb(&lake, "SELECT count(*) FROM {lake}")
    );
}
