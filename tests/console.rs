//! The web console in a real browser (Debian's Chromium driven by Playwright,
//! tests/console_browser.py) against `sluice up`: sign-up with the mailed code, workspaces and the
//! switcher, rename, CORS origins, the MCP URL, the AsyncAPI export and Public toggle, a personal
//! token on the account page, an invitation accepted after the sign-in redirect, a Viewer without
//! write controls, a token whose secret is shown once and ingests, the workspace's SMTP server
//! saved and tested against a real SMTP server, forged forms refused, the security headers,
//! axe-core's accessibility check, deleting by typing the name, sign-out, and a password reset.
//! Screenshots of the main pages are saved in the test's temporary directory (kept when
//! `SLUICE_TEST_SCREENSHOTS` names a directory to copy them to).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::controlplane::{mails_to, verified_user, Api, SmtpServer};
use common::{post, python, wait_for, Sluice};
use serde_json::Value;

fn browser_available() -> bool {
    Path::new("/usr/bin/chromium").exists()
        && Command::new(python())
            .args(["-c", "import playwright"])
            .status()
            .is_ok_and(|s| s.success())
}

/// axe-core's script, which `npm ci` in tests/console/ installs (scripts/test.sh does).
fn axe_js() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/console/node_modules/axe-core/axe.min.js");
    assert!(
        path.exists(),
        "{path:?} is missing: run ./scripts/test.sh (or npm ci in tests/console)"
    );
    path
}

/// The headers every HTML page carries.
/// Each of `names` was saved in `shots` by the browser script (not empty), and is copied to
/// `SLUICE_TEST_SCREENSHOTS` when that names a directory (how docs/console/ is refreshed).
fn keep_screenshots(shots: &Path, names: &[&str]) {
    for shot in names {
        let path = shots.join(shot);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{path:?}"
        );
        if let Some(keep) = std::env::var_os("SLUICE_TEST_SCREENSHOTS") {
            std::fs::create_dir_all(&keep).expect("screenshots dir");
            std::fs::copy(&path, Path::new(&keep).join(shot)).expect("copy screenshot");
        }
    }
}

fn assert_security_headers(headers: &HashMap<String, String>, page: &str) {
    let csp = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{page}: no CSP in {headers:?}"));
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{page}: {csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{page}: {csp}");
    assert_eq!(
        headers.get("x-frame-options").map(String::as_str),
        Some("DENY"),
        "{page}"
    );
    assert_eq!(
        headers.get("x-content-type-options").map(String::as_str),
        Some("nosniff"),
        "{page}"
    );
    assert!(
        headers.contains_key("referrer-policy"),
        "{page}: {headers:?}"
    );
}

#[test]
fn a_person_runs_a_workspace_from_the_console_in_a_browser() {
    if std::env::var_os("SLUICE_TEST_SKIP_BROWSER").is_some() {
        return;
    }
    assert!(
        browser_available(),
        "/usr/bin/chromium or playwright is missing: run ./scripts/test.sh, or set SLUICE_TEST_SKIP_BROWSER=1"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // The workspace's SMTP server listens on loopback, which workspace SMTP refuses unless
    // allowed.
    let sluice = Sluice::start(&dir.path().join("data"), &["--smtp-allow-private-hosts"]);
    let smtp = SmtpServer::start(&dir.path().join("smtp"));
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let bob = verified_user(&api, &outbox, "bob@example.com");
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");

    // The pages themselves, without a browser: HTML with the security headers, and the home
    // page to sign in first.
    let home = api.get("/app", &bob.token);
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(
        home.content_type.starts_with("text/html"),
        "{}",
        home.content_type
    );
    let headers: HashMap<String, String> = home
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    assert_security_headers(&headers, "/app");
    assert_eq!(
        headers.get("cache-control").map(String::as_str),
        Some("no-store")
    );
    let css = api.get("/app/static/console.css", &bob.token);
    assert!(
        css.content_type.starts_with("text/css"),
        "{}",
        css.content_type
    );

    let mut script = Command::new(python());
    script
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console_browser.py"
        ))
        .arg(sluice.api_url())
        .arg(sluice.base_url())
        .arg(&outbox)
        .arg(&shots)
        .arg(&bob.email)
        .arg(&bob.password);
    script.arg(axe_js()).arg(smtp.port.to_string());
    let out = script.output().expect("console_browser.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sluice.log()
    );
    let steps: HashMap<String, Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .map(|v| (v["step"].as_str().unwrap_or_default().to_owned(), v))
        .collect();
    let step = |name: &str| {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no step {name}: {stdout}"))
            .clone()
    };
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();

    let redirect = step("redirect");
    assert!(
        text(&redirect, "url").ends_with("/login?next=%2Fapp"),
        "{redirect}"
    );
    let headers: HashMap<String, String> =
        serde_json::from_value(redirect["headers"].clone()).expect("headers");
    assert_security_headers(&headers, "/login");

    let signed_up = step("signed_up");
    assert!(text(&signed_up, "url").ends_with("/app"), "{signed_up}");
    assert_eq!(
        signed_up["workspaces"], 1,
        "the first workspace is made: {signed_up}"
    );

    let created = step("created");
    assert!(text(&created, "notice").contains("created"), "{created}");
    let switched = step("switched");
    assert_eq!(switched["heading"], switched["other"], "{switched}");
    assert_eq!(switched["back"], "Fleet North", "{switched}");

    let renamed = step("renamed");
    assert_eq!(renamed["heading"], "Fleet North EU · Settings", "{renamed}");
    assert_eq!(renamed["after_escape"], "Fleet North EU", "{renamed}");

    let cors = step("cors");
    assert!(text(&cors, "refused").contains("not an origin"), "{cors}");
    assert_eq!(cors["saved"], "https://app.example.com", "{cors}");
    let mcp = step("mcp");
    assert_eq!(
        text(&mcp, "url"),
        format!("{}/mcp/fleet-north", sluice.api_url()),
        "{mcp}"
    );

    assert!(
        text(&mcp, "section").contains("No MCP client has been allowed in yet"),
        "{mcp}"
    );
    assert!(
        text(&mcp, "banner").contains("trial of this workspace's creator, ada@example.com"),
        "{mcp}"
    );
    let asyncapi = step("asyncapi");
    assert_eq!(asyncapi["export_status"], 200, "{asyncapi}");
    assert_eq!(asyncapi["version"], "3.0.0", "{asyncapi}");
    assert_eq!(
        text(&asyncapi, "public_url"),
        format!("{}/public/fleet-north/asyncapi.json", sluice.api_url()),
        "{asyncapi}"
    );
    assert_eq!(asyncapi["published"], 200, "{asyncapi}");
    assert_eq!(asyncapi["after_stop"], 404, "{asyncapi}");

    let account = step("account");
    assert_eq!(account["me"], 200, "{account}");
    assert_eq!(account["after_revoke"], 401, "{account}");
    assert_eq!(account["this_browser"], true, "{account}");
    assert!(
        text(&account, "providers").contains("None linked"),
        "{account}"
    );

    let invited = step("invited");
    assert!(text(&invited, "pending").contains(&bob.email), "{invited}");
    let accepted = step("accepted");
    assert!(
        text(&accepted, "login_url").contains("/login?next=%2Finvitations%2Faccept"),
        "{accepted}"
    );
    assert!(
        text(&accepted, "url").ends_with("/app/w/fleet-north?done=joined"),
        "{accepted}"
    );
    assert!(text(&accepted, "notice").contains("joined"), "{accepted}");

    let viewer = step("viewer");
    assert!(viewer["editor_access"].as_u64() > Some(0), "{viewer}");
    assert_eq!(viewer["access"], 0, "{viewer}");
    assert_eq!(viewer["settings"], 0, "{viewer}");

    let token = step("token");
    let secret = text(&token, "secret");
    assert!(secret.starts_with("sluice_"), "{token}");
    assert_eq!(token["copied"], token["secret"], "{token}");
    assert_eq!(token["shown_again"], false, "{token}");
    assert_eq!(token["in_url"], false, "{token}");
    assert_eq!(token["ingest_status"], 202, "{token}");
    assert!(
        text(&token, "bound").contains("device press-7; until 2100-01-01 00:00 UTC"),
        "{token}"
    );
    let sources_left = text(&token, "sources_left");
    assert!(
        sources_left.contains("sensors") && !sources_left.contains("spare"),
        "{token}"
    );

    let mail = step("smtp");
    assert!(text(&mail, "saved").contains("saved"), "{mail}");
    assert!(text(&mail, "test").contains("was sent"), "{mail}");
    let delivery = text(&mail, "delivery");
    assert!(
        delivery.contains("ada@example.com")
            && delivery.contains("smtp_test")
            && delivery.contains("workspace_smtp")
            && delivery.contains("sent"),
        "{mail}"
    );
    assert_eq!(mail["viewer_controls"], 0, "{mail}");
    assert_eq!(mail["viewer_sees_settings"], true, "{mail}");
    assert!(
        text(&mail, "removed").contains("goes through the platform"),
        "{mail}"
    );
    assert_eq!(
        mails_to(&smtp.maildir, "ada@example.com", "SMTP test").len(),
        1,
        "the test reached the workspace's server"
    );

    let left = step("left");
    assert!(!text(&left, "listed").contains("Fleet North"), "{left}");
    assert_eq!(left["status"], 404, "{left}");

    let import = step("import");
    assert!(
        text(&import, "refused").contains("cannot be imported"),
        "{import}"
    );
    let preview = text(&import, "preview");
    assert!(
        preview.contains("Preview")
            && preview.contains("Deleted")
            && preview.contains("source spare2"),
        "{import}"
    );
    assert!(text(&import, "imported").contains("Imported"), "{import}");
    let sources = text(&import, "sources");
    assert!(
        sources.contains("sensors") && !sources.contains("spare2"),
        "{import}"
    );

    let source = step("source");
    assert!(text(&source, "columns").contains("temperature"), "{source}");
    assert!(text(&source, "refused").contains("Not done"), "{source}");
    assert_eq!(source["kept"], r#"{"type": 12}"#, "{source}");

    let csrf = step("csrf");
    assert_eq!(csrf["no_token_status"], 403, "{csrf}");
    assert!(
        text(&csrf, "no_token_body").contains("security token"),
        "{csrf}"
    );
    assert!(text(&csrf, "cross_site").contains("another site"), "{csrf}");
    assert_eq!(csrf["name_after"], "Fleet North EU", "{csrf}");

    let axe = step("axe");
    for page in ["settings", "access", "mail", "account"] {
        assert_eq!(axe[page]["serious"], Value::Array(vec![]), "{axe}");
        assert!(axe[page]["rules_passed"].as_u64() > Some(5), "{axe}");
    }

    let deleted = step("deleted");
    assert!(
        text(&deleted, "wrong").contains("does not match"),
        "{deleted}"
    );
    assert!(text(&deleted, "notice").contains("deleted"), "{deleted}");
    assert!(
        !text(&deleted, "listed").contains("Fleet North"),
        "{deleted}"
    );
    let gone = api.get("/api/v1/workspaces/fleet-north", &bob.token);
    assert_eq!(gone.status, 404, "{}", gone.body);

    let signed_out = step("signed_out");
    assert!(
        text(&signed_out, "url").contains("/login?next=%2Fapp"),
        "{signed_out}"
    );

    let reset = step("password_reset");
    assert!(text(&reset, "url").ends_with("/app"), "{reset}");

    keep_screenshots(
        &shots,
        &[
            "sign-in.png",
            "workspace-switcher.png",
            "settings.png",
            "access-viewer.png",
            "access-new-token.png",
            "mail.png",
            "workspaces.png",
        ],
    );
}

/// A workspace page says when its creator's trial ends; once it has ended, the page says the
/// workspace is disabled and who can enable it, and a change is refused with the API's detail
/// on a page (no browser needed: the pages are plain HTML).
#[test]
fn a_trial_banner_then_a_disabled_workspace_whose_changes_are_refused_on_the_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &[
            "--trial-duration-secs",
            "8",
            "--trial-check-interval-ms",
            "200",
        ],
    );
    let api = Api::new(sluice.api_url());
    let hank = verified_user(&api, &sluice.data_dir.join("outbox"), "hank@example.com");
    let slug = api.get("/api/v1/workspaces", &hank.token).json()["items"][0]["slug"]
        .as_str()
        .expect("the first workspace")
        .to_owned();
    let settings = format!("/app/w/{slug}/settings");
    let page = api.get(&settings, &hank.token);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Trial: the free trial") && page.body.contains("hank@example.com"),
        "{}",
        page.body
    );

    let disabled = wait_for(Duration::from_secs(20), || {
        api.get(&settings, &hank.token)
            .body
            .contains("This workspace is disabled")
    });
    assert!(disabled, "the banner says the workspace is disabled");
    let page = api.get(&settings, &hank.token);
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form token on the page")
        .to_owned();
    let refused = post(
        &format!("{}/app/w/{slug}/rename", sluice.api_url()),
        &[
            ("authorization", &format!("Bearer {}", hank.token)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={csrf}&name=Renamed").as_bytes(),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.content_type.starts_with("text/html"),
        "{}",
        refused.content_type
    );
    assert!(
        refused.body.contains("role=\"alert\"")
            && refused.body.contains("is disabled because the trial"),
        "the API's detail, readable: {}",
        refused.body
    );
}

/// What people type (a workspace's name, a source's) is shown as text on every page, never as
/// markup; a page asked for by someone not signed in leads to the sign-in form and back.
#[test]
fn names_show_as_text_and_strangers_are_sent_to_sign_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let mel = verified_user(&api, &sluice.data_dir.join("outbox"), "mel@example.com");
    let name = r#"<img src=x onerror="alert(1)"> & "Co""#;
    let a = api.post(
        "/api/v1/workspaces",
        Some(&mel.token),
        serde_json::json!({"name": name, "slug": "markup"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let escaped = "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &quot;Co&quot;";
    for path in [
        "/app",
        "/app/w/markup",
        "/app/w/markup/settings",
        "/app/w/markup/access",
    ] {
        let page = api.get(path, &mel.token);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(page.body.contains(escaped), "{path}: {}", page.body);
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
    }
    // Not signed in: to the sign-in form, which returns here afterwards.
    let stranger = common::agent()
        .get(&format!("{}/app/w/markup/access", sluice.api_url()))
        .config()
        .max_redirects(0)
        .build()
        .call()
        .expect("answer");
    assert_eq!(stranger.status().as_u16(), 303);
    assert_eq!(
        stranger.headers()["location"],
        "/login?next=%2Fapp%2Fw%2Fmarkup%2Faccess"
    );
    // Another user's workspace is not there for them, as in the API.
    let other = verified_user(&api, &sluice.data_dir.join("outbox"), "zed@example.com");
    let page = api.get("/app/w/markup/settings", &other.token);
    assert_eq!(page.status, 404, "{}", page.body);
    assert!(page.body.contains("no workspace"), "{}", page.body);
}

/// An Admin's overview lists the MCP clients members allowed in (OAuth grants) and revokes
/// one; the client's access token stops working.
#[test]
fn an_admin_sees_the_mcp_clients_members_allowed_and_revokes_one() {
    // RFC 7636's example pair.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const REDIRECT: &str = "http://127.0.0.1:9/cb";
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let base = sluice.api_url();
    let api = Api::new(base.clone());
    let ann = verified_user(&api, &sluice.data_dir.join("outbox"), "ann@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&ann.token),
        serde_json::json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let no_redirects = || {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent()
    };
    let cookie = format!("sluice_session={}", ann.token);
    let form = |path: &str, pairs: &[(&str, &str)]| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        common::Answer::of(
            no_redirects()
                .post(&format!("{base}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", &cookie)
                .send(body)
                .expect("answer"),
        )
    };

    // A client registers, Ann allows it on the consent page, it takes its tokens.
    let registered = post(
        &format!("{base}/oauth/register"),
        &[("content-type", "application/json")],
        serde_json::json!({"client_name": "Raw test client", "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none"})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    let client_id = registered.json()["client_id"]
        .as_str()
        .expect("client_id")
        .to_owned();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("resource", &format!("{base}/mcp/plant")),
            ("state", "xyz"),
        ])
        .finish();
    let consent_page = common::Answer::of(
        no_redirects()
            .get(&format!("{base}/oauth/authorize?{query}"))
            .header("cookie", &cookie)
            .call()
            .expect("answer"),
    );
    assert_eq!(consent_page.status, 200, "{}", consent_page.body);
    let field = |html: &str, name: &str| {
        html.split(&format!("name=\"{name}\" value=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in {html}"))
            .to_owned()
    };
    let consent = field(&consent_page.body, "consent");
    let allowed = form(
        "/oauth/authorize",
        &[("consent", &consent), ("decision", "allow")],
    );
    assert_eq!(allowed.status, 303, "{}", allowed.body);
    let location = allowed.header("location").expect("location");
    let code = url::Url::parse(&location)
        .expect("redirect URL")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    let tokens = form(
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    );
    assert_eq!(tokens.status, 200, "{}", tokens.body);

    let access_token = tokens.json()["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let mcp_status = || {
        post(
            &format!("{base}/mcp/plant"),
            &[
                ("authorization", &format!("Bearer {access_token}")),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .status
    };
    assert_eq!(mcp_status(), 200, "the client's token works");

    // The overview lists it; Revoke ends it.
    let page = api.get("/app/w/plant", &ann.token);
    assert!(
        page.body.contains("Raw test client") && page.body.contains("workspace:"),
        "{}",
        page.body
    );
    let action = page
        .body
        .split("action=\"")
        .map(|rest| rest.split('"').next().unwrap_or_default())
        .find(|action| action.contains("/oauth-grants/"))
        .expect("a Revoke form")
        .to_owned();
    let revoked = common::Answer::of(
        no_redirects()
            .post(&format!("{base}{action}"))
            .header("authorization", &format!("Bearer {}", ann.token))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(format!("csrf={}", field(&page.body, "csrf")))
            .expect("answer"),
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    let page = api.get("/app/w/plant?done=grant-revoked", &ann.token);
    assert!(
        page.body.contains("access is revoked")
            && page.body.contains("No MCP client has been allowed in yet"),
        "{}",
        page.body
    );
    assert_eq!(
        mcp_status(),
        401,
        "the revoked grant's token no longer works"
    );
}

/// The Tag rules and Data out tabs in a real browser (tests/console_data_out_browser.py): tag
/// rules made, refused with the API's detail, moved, edited and deleted; an output with a
/// filter and a projection, export endpoints whose URL is copied, a webhook whose secret is
/// shown once and whose test delivery, Disable and Enable show on its page; a read token
/// limited to one endpoint reads, with a plain HTTP client, the value an ingest token sent and
/// nothing of another endpoint; a Viewer is offered no control; axe-core finds nothing serious.
#[test]
fn tag_rules_and_data_out_are_run_from_the_console_in_a_browser() {
    if std::env::var_os("SLUICE_TEST_SKIP_BROWSER").is_some() {
        return;
    }
    assert!(
        browser_available(),
        "/usr/bin/chromium or playwright is missing: run ./scripts/test.sh, or set SLUICE_TEST_SKIP_BROWSER=1"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // The webhook's receiver listens on loopback, which the outbound policy refuses unless
    // allowed; batches reach Parquet (and the endpoint) within half a second.
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--smtp-allow-private-hosts", "--batch-max-age-ms", "500"],
    );
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let ann = verified_user(&api, &outbox, "ann@example.com");
    let vic = verified_user(&api, &outbox, "vic@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&ann.token),
        serde_json::json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&ann.token),
        serde_json::json!({"slug": "meters"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    common::controlplane::add_member(&api, &outbox, &ann, "plant", &vic, "viewer");
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");

    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console_data_out_browser.py"
        ))
        .arg(sluice.api_url())
        .arg(sluice.base_url())
        .arg(&shots)
        .arg(&ann.token)
        .arg(&vic.token)
        .arg(axe_js())
        .output()
        .expect("console_data_out_browser.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sluice.log()
    );
    let steps: HashMap<String, Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .map(|v| (v["step"].as_str().unwrap_or_default().to_owned(), v))
        .collect();
    let step = |name: &str| {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no step {name}: {stdout}"))
            .clone()
    };
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let list = |v: &Value, key: &str| -> Vec<String> {
        serde_json::from_value(v[key].clone()).unwrap_or_default()
    };

    let rules = step("tag_rules");
    assert!(text(&rules, "refused").contains("Not done"), "{rules}");
    assert_eq!(rules["typed_back"], "no-slash", "{rules}");
    let made = list(&rules, "made");
    assert_eq!(made.len(), 2, "{rules}");
    assert!(
        made[0].contains("site from payload") && made[0].contains("/site"),
        "{rules}"
    );
    assert!(
        made[1].contains("line header") && made[1].contains("meters"),
        "{rules}"
    );
    let moved = list(&rules, "moved");
    assert!(moved[0].contains("line header"), "{rules}");
    let after = list(&rules, "after_delete");
    assert_eq!(after.len(), 1, "{rules}");
    assert!(after[0].contains("line header"), "{rules}");
    let stored = api
        .get("/api/v1/workspaces/plant/tag-rules", &ann.token)
        .json();
    assert_eq!(stored["rules"][0]["extract"]["name"], "x-line", "{stored}");

    let outputs = step("outputs");
    assert!(
        text(&outputs, "refused").contains("not a filter"),
        "{outputs}"
    );
    assert!(
        text(&outputs, "schema").contains("temperature"),
        "{outputs}"
    );
    let endpoint_url = format!("{}/v1/stream/plant/hot-feed", sluice.base_url());
    assert_eq!(text(&outputs, "endpoint_url"), endpoint_url, "{outputs}");
    assert_eq!(outputs["copied_url"], outputs["endpoint_url"], "{outputs}");
    let endpoints = list(&outputs, "endpoints").join("\n");
    assert!(
        endpoints.contains("Spare feed") && !endpoints.contains("old-feed"),
        "{outputs}"
    );
    assert!(text(&outputs, "in_use").contains("Not done"), "{outputs}");
    let output = api.get("/api/v1/workspaces/plant/outputs/hot", &ann.token);
    assert_eq!(output.status, 200, "still there: {}", output.body);

    let webhook = step("webhook");
    assert!(text(&webhook, "secret").starts_with("whsec_"), "{webhook}");
    assert_eq!(webhook["copied"], webhook["secret"], "{webhook}");
    assert_eq!(webhook["in_url"], false, "{webhook}");
    assert_eq!(webhook["shown_again"], false, "{webhook}");
    assert!(text(&webhook, "tested").contains("delivered"), "{webhook}");
    assert!(
        list(&webhook, "attempts")
            .first()
            .is_some_and(|row| row.contains("(test)") && row.contains("204")),
        "{webhook}"
    );
    assert!(
        text(&webhook, "disabled").starts_with("disabled"),
        "{webhook}"
    );
    assert_eq!(webhook["enabled"], "active", "{webhook}");
    assert!(
        text(&webhook, "url_refused").contains("Not done"),
        "{webhook}"
    );
    assert_eq!(webhook["url_kept"], "ftp://example.com/hook", "{webhook}");
    assert!(
        text(&webhook, "batches").contains("at least every 2000 ms"),
        "{webhook}"
    );

    let stream = step("stream");
    assert!(
        text(&stream, "tokens").contains("endpoints hot-feed"),
        "{stream}"
    );
    assert_eq!(
        stream["ingested"],
        serde_json::json!([202, 202]),
        "{stream}"
    );
    let lines = stream["streamed"]["lines"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        lines.len(),
        1,
        "only the hot event passes the filter: {stream}"
    );
    assert_eq!(lines[0]["temperature"], 35, "{stream}");
    assert_eq!(lines[0]["device_id"], "m-1", "{stream}");
    assert!(lines[0].get("payload").is_none(), "projected: {stream}");
    assert_eq!(
        stream["other_status"], 403,
        "the read token reads only the endpoint it is limited to: {stream}"
    );

    let overview = step("overview");
    let card = text(&overview, "card");
    assert!(
        card.contains("meters") && card.contains("\t2\t") && card.contains(".parquet"),
        "two events written, and the last file: {overview}"
    );
    assert_eq!(overview["sparkline"], 1, "{overview}");

    let import = step("import");
    assert_eq!(import["exported"], 200, "{import}");
    assert!(
        text(&import, "first_preview").contains("No changes"),
        "{import}"
    );
    assert!(
        text(&import, "previewed_version").parse::<u64>().is_ok(),
        "{import}"
    );
    assert_eq!(import["intruder"], 201, "{import}");
    assert!(
        text(&import, "changed").contains("changed at configuration version"),
        "the API's 412 detail: {import}"
    );
    assert!(
        text(&import, "second_preview").contains("source intruder"),
        "{import}"
    );
    assert!(text(&import, "imported").contains("Imported"), "{import}");
    let intruder = api.get("/api/v1/workspaces/plant/sources/intruder", &ann.token);
    assert_eq!(
        intruder.status, 404,
        "the import deleted it: {}",
        intruder.body
    );

    let viewer = step("viewer");
    for page in ["tag_rules", "data_out", "output", "webhook", "endpoint"] {
        assert_eq!(viewer["controls"][page], 0, "{page}: {viewer}");
    }
    assert_eq!(viewer["sees_hook"], true, "{viewer}");
    assert_eq!(viewer["sees_url"], true, "{viewer}");

    let axe = step("axe");
    for page in [
        "overview",
        "tag_rules",
        "output",
        "data_out",
        "webhook",
        "access",
    ] {
        assert_eq!(axe[page]["serious"], Value::Array(vec![]), "{page}: {axe}");
        assert!(axe[page]["rules_passed"].as_u64() > Some(5), "{axe}");
    }

    keep_screenshots(
        &shots,
        &[
            "tag-rules.png",
            "data-out.png",
            "webhook.png",
            "overview-ingest.png",
        ],
    );
}

/// Lists longer than the API's page (here `page_size_max = 2`) page on with plain links that
/// carry the API's cursor, each list alone; the overview counts past the first page; a personal
/// token made on the account page expires at the end of the day chosen.
#[test]
fn long_lists_page_on_and_a_personal_token_expires_on_the_day_chosen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[controlplane]\npage_size_max = 2\n").expect("config");
    let config = config.to_str().expect("path").to_owned();
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    let api = Api::new(sluice.api_url());
    let kim = verified_user(&api, &sluice.data_dir.join("outbox"), "kim@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&kim.token),
        serde_json::json!({"name": "Depot", "slug": "depot"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    for n in 1..=5 {
        let a = api.post(
            "/api/v1/workspaces/depot/tokens",
            Some(&kim.token),
            serde_json::json!({"name": format!("token-{n}"), "scopes": ["ingest"]}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    for slug in ["s1", "s2", "s3"] {
        let a = api.post(
            "/api/v1/workspaces/depot/sources",
            Some(&kim.token),
            serde_json::json!({"slug": slug}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    // The next page's link, as the page has it (HTML-escaped `&` included).
    let next = |body: &str, param: &str| {
        body.split("href=\"")
            .map(|rest| rest.split('"').next().unwrap_or_default())
            .find(|href| href.contains(&format!("?{param}=")))
            .map(|href| href.replace("&amp;", "&"))
    };
    let mut seen = Vec::new();
    let mut path = "/app/w/depot/access".to_owned();
    for _ in 0..5 {
        let page = api.get(&path, &kim.token);
        assert_eq!(page.status, 200, "{}", page.body);
        let tokens = page
            .body
            .split("id=\"tokens\"")
            .nth(1)
            .expect("the tokens section")
            .to_owned();
        for n in 1..=5 {
            if tokens.contains(&format!("<td>token-{n}</td>")) {
                seen.push(n);
            }
        }
        // The sources list stays on its first page while the tokens page on.
        assert!(page.body.contains("<code>s1</code>"), "{}", page.body);
        assert!(!page.body.contains("<code>s3</code>"), "{}", page.body);
        match next(&page.body, "tokens_after") {
            Some(href) => path = href,
            None => break,
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5], "every token once, in order");
    let last = api.get(&path, &kim.token);
    assert!(last.body.contains("First page"), "{}", last.body);
    let sources_next = next(
        &api.get("/app/w/depot/access", &kim.token).body,
        "sources_after",
    )
    .expect("a next page of sources");
    let second = api.get(&sources_next, &kim.token);
    assert!(
        second.body.contains("<code>s3</code>") && !second.body.contains("<code>s1</code>"),
        "{}",
        second.body
    );
    // The overview counts every token, not the first page's.
    let overview = api.get("/app/w/depot", &kim.token);
    assert!(
        overview.body.contains("<dd>5</dd>"),
        "5 tokens counted: {}",
        overview.body
    );

    // Three workspaces (the first made at sign-up): the home page pages on, and the
    // switcher leads there for the rest.
    let a = api.post(
        "/api/v1/workspaces",
        Some(&kim.token),
        serde_json::json!({"name": "Annex", "slug": "annex"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let home = api.get("/app", &kim.token);
    assert!(home.body.contains("All workspaces…"), "{}", home.body);
    let rest = next(&home.body, "workspaces_after").expect("a next page of workspaces");
    let rest = api.get(&rest, &kim.token);
    assert!(
        rest.body.contains("<code>annex</code>") && !home.body.contains("<code>annex</code>"),
        "{}",
        rest.body
    );

    // A personal token expiring at the end of 2100-01-01 (UTC).
    let account = api.get("/app/account", &kim.token);
    let csrf = account
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form token")
        .to_owned();
    let made = post(
        &format!("{}/app/account/tokens", sluice.api_url()),
        &[
            ("authorization", &format!("Bearer {}", kim.token)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={csrf}&name=script&expires_on=2100-01-01").as_bytes(),
    );
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body.contains("new-token-secret"), "{}", made.body);
    let listed = api.get("/api/v1/me/tokens?limit=2", &kim.token).json();
    let script = listed["items"]
        .as_array()
        .and_then(|items| items.iter().find(|t| t["name"] == "script"))
        .cloned()
        .unwrap_or_else(|| panic!("the token in {listed}"));
    assert_eq!(script["expires_at"], "2100-01-02T00:00:00Z", "{listed}");
    for name in ["second", "third"] {
        let a = api.post(
            "/api/v1/me/tokens",
            Some(&kim.token),
            serde_json::json!({"name": name}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let account = api.get("/app/account", &kim.token);
    let rest = next(&account.body, "tokens_after").expect("a next page of personal tokens");
    let rest = api.get(&rest, &kim.token);
    assert!(rest.body.contains("<td>third</td>"), "{}", rest.body);
    assert!(!account.body.contains("<td>third</td>"), "{}", account.body);
}

/// The AsyncAPI import form takes a file larger than other bodies (up to the API's 4 MiB
/// document), as `multipart/form-data` with the session's form token; a larger form is
/// refused with `413`, and a form without the token with `403`.
#[test]
fn an_asyncapi_file_larger_than_other_forms_reaches_the_import_and_a_larger_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let lou = verified_user(&api, &sluice.data_dir.join("outbox"), "lou@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&lou.token),
        serde_json::json!({"name": "Yard", "slug": "yard"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let page = api.get("/app/w/yard/asyncapi", &lou.token);
    assert!(
        page.body.contains("enctype=\"multipart/form-data\""),
        "{}",
        page.body
    );
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form token")
        .to_owned();
    let form = |csrf: &str, document_bytes: usize| {
        let document = format!(
            "{{\"asyncapi\": \"3.0.0\", \"padding\": \"{}\"}}",
            "a".repeat(document_bytes)
        );
        let body = format!(
            "--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
--XX\r\nContent-Disposition: form-data; name=\"document_file\"; filename=\"yard.json\"\r\n\
Content-Type: application/json\r\n\r\n{document}\r\n\
--XX\r\nContent-Disposition: form-data; name=\"document\"\r\n\r\n\r\n\
--XX\r\nContent-Disposition: form-data; name=\"step\"\r\n\r\npreview\r\n--XX--\r\n"
        );
        post(
            &format!("{}/app/w/yard/asyncapi", sluice.api_url()),
            &[
                ("authorization", &format!("Bearer {}", lou.token)),
                ("content-type", "multipart/form-data; boundary=XX"),
            ],
            body.as_bytes(),
        )
    };
    // 2 MiB: past the 1 MiB of other bodies, so the API's own check answers (not a document
    // it can import), on the page.
    let answered = form(&csrf, 2 << 20);
    assert_eq!(answered.status, 422, "{}", answered.body);
    assert!(
        answered.content_type.starts_with("text/html")
            && answered.body.contains("cannot be imported"),
        "{}",
        answered.body
    );
    // 5 MiB: refused with 413 as soon as the bound is passed; the server may close the
    // connection while the client is still sending the rest, which the client sees as a
    // broken pipe instead of the answer.
    let padding = "a".repeat(5 << 20);
    let sent = common::agent()
        .post(&format!("{}/app/w/yard/asyncapi", sluice.api_url()))
        .header("authorization", &format!("Bearer {}", lou.token))
        .header("content-type", "multipart/form-data; boundary=XX")
        .send(format!(
            "--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
--XX\r\nContent-Disposition: form-data; name=\"document\"\r\n\r\n{padding}\r\n--XX--\r\n"
        ));
    match sent {
        Ok(answer) => assert_eq!(answer.status().as_u16(), 413),
        Err(ureq::Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Err(e) => panic!("{e}"),
    }
    let forged = form("not-the-token", 10);
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("security token"), "{}", forged.body);
}
