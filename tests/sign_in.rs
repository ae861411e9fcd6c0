//! Sign-in with OpenID Connect against a real OpenID provider: node-oidc-provider
//! (`tests/oidc/provider.mjs`, installed by `scripts/test.sh` with `npm ci` in tests/oidc),
//! its login and consent pages driven over HTTP the way a browser would, with one cookie jar
//! per server. And GitHub and X against a stand-in of their documented endpoints
//! (`tests/oauth2_standin.py`).
//!
//! The control plane runs as `sluice controlplane --config <toml>` with the providers in
//! `[[controlplane.sign_in.providers]]` and the client secret in an environment variable.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::controlplane::{verified_user, wait_mail, Api};
use common::{free_port, python, wait_for, Proc};
use serde_json::{json, Value};

const CLIENT_ID: &str = "sluice-test";
const CLIENT_SECRET: &str = "oidc-test-secret-0123456789";
const SECRET_ENV: &str = "SLUICE_TEST_SIGN_IN_SECRET";

/// A child process killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    let up = wait_for(Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "{what} did not listen on {port}");
}

/// node-oidc-provider with one client whose redirect URI is `redirect_uri`.
fn start_provider(dir: &Path, redirect_uri: &str) -> Server {
    let oidc = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    assert!(
        oidc.join("node_modules/oidc-provider").exists(),
        "oidc-provider is not installed: run scripts/test.sh (npm ci in tests/oidc)"
    );
    let port = free_port();
    let log_path = dir.join("oidc-provider.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new("node")
        .arg(oidc.join("provider.mjs"))
        .args(["--port", &port.to_string()])
        .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
        .args(["--redirect-uri", redirect_uri])
        .current_dir(&oidc)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("node runs (scripts/test.sh needs Node.js)");
    wait_listening(port, &mut child, "oidc-provider", &log_path);
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The GitHub and X stand-in.
fn start_standin(dir: &Path, github_email_verified: bool) -> Server {
    let port = free_port();
    let log_path = dir.join("standin.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth2_standin.py"))
        .args(["--port", &port.to_string()])
        .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
        .args([
            "--github-email-verified",
            if github_email_verified {
                "true"
            } else {
                "false"
            },
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("python runs");
    wait_listening(port, &mut child, "the OAuth 2 stand-in", &log_path);
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// A control plane with `providers` (TOML) and no SMTP server: mail goes to the outbox.
struct ControlPlane {
    proc: Proc,
    api: Api,
    data_dir: PathBuf,
}

impl ControlPlane {
    fn outbox(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }
}

fn start_control_plane(dir: &Path, port: u16, providers: &str) -> ControlPlane {
    let data_dir = dir.join("cp");
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!("[controlplane]\nsign_in_attempts_per_address = 1000\n{providers}"),
    )
    .expect("config");
    // The child inherits the secret from this process (one test per process under nextest).
    std::env::set_var(SECRET_ENV, CLIENT_SECRET);
    let proc = Proc::start(
        &[
            "controlplane".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--api-addr".to_owned(),
            format!("127.0.0.1:{port}"),
        ],
        dir.join("cp.log"),
        format!("http://127.0.0.1:{port}/healthz"),
    );
    ControlPlane {
        proc,
        api: Api::new(format!("http://127.0.0.1:{port}")),
        data_dir,
    }
}

fn oidc_entry(issuer: &str) -> String {
    format!(
        "[[controlplane.sign_in.providers]]\nkind = \"oidc\"\nid = \"test-idp\"\nname = \"Test IdP\"\n\
         issuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{SECRET_ENV}\"\n"
    )
}

/// A provider and a control plane that uses it.
struct Setup {
    _dir: tempfile::TempDir,
    provider: Server,
    cp: ControlPlane,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/auth/test-idp/callback");
    let provider = start_provider(dir.path(), &redirect);
    // A second provider that cannot be reached, for the refusal when discovery fails.
    let down = "[[controlplane.sign_in.providers]]\nkind = \"oidc\"\nid = \"down\"\n\
                issuer = \"http://127.0.0.1:1\"\nclient_id = \"c\"\n";
    let cp = start_control_plane(
        dir.path(),
        port,
        &format!("{}{down}", oidc_entry(&provider.base)),
    );
    Setup {
        _dir: dir,
        provider,
        cp,
    }
}

/// One answer, as a browser sees it.
#[derive(Debug)]
struct Page {
    status: u16,
    location: Option<String>,
    content_type: String,
    body: String,
}

impl Page {
    fn problem(&self) -> String {
        serde_json::from_str::<Value>(&self.body).unwrap_or(Value::Null)["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("urn:sluice:problem:")
            .to_owned()
    }
}

/// A browser: no redirects followed, cookies kept per server (host and port), paths ignored.
struct Browser {
    agent: ureq::Agent,
    jars: HashMap<String, HashMap<String, String>>,
    /// Send `Accept: text/html` (off: no Accept header, as a script).
    accept_html: bool,
}

fn origin_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or_default().to_owned()
}

impl Browser {
    fn new() -> Browser {
        Browser {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
            jars: HashMap::new(),
            accept_html: false,
        }
    }

    fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jars.get(&origin_of(url))?.get(name).cloned()
    }

    fn send(&mut self, method: &str, url: &str, form: Option<&str>) -> Page {
        let origin = origin_of(url);
        let cookies: Vec<String> = self
            .jars
            .get(&origin)
            .map(|jar| jar.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if !cookies.is_empty() {
            request = request.header("cookie", cookies.join("; "));
        }
        if form.is_some() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        if self.accept_html {
            request = request.header("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        }
        let request = request
            .body(form.unwrap_or_default().as_bytes().to_vec())
            .expect("request");
        let mut response = self.agent.run(request).expect("request sent");
        let jar = self.jars.entry(origin.clone()).or_default();
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap_or_default();
            let pair = value.split(';').next().unwrap_or_default();
            if let Some((name, v)) = pair.split_once('=') {
                if v.is_empty() || value.contains("Max-Age=0") {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_owned(), v.to_owned());
                }
            }
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header("location").map(|l| {
            if l.starts_with('/') {
                format!("http://{origin}{l}")
            } else {
                l
            }
        });
        Page {
            status: response.status().as_u16(),
            location,
            content_type: header("content-type").unwrap_or_default(),
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&mut self, url: &str) -> Page {
        self.send("GET", url, None)
    }

    /// A GET that asks for HTML, as a browser's navigation does.
    fn get_html(&mut self, url: &str) -> Page {
        self.accept_html = true;
        let page = self.send("GET", url, None);
        self.accept_html = false;
        page
    }

    fn post(&mut self, url: &str, form: &str) -> Page {
        self.send("POST", url, Some(form))
    }

    /// From Sluice's start URL through the provider's login (as `login`) and consent pages,
    /// to the callback URL the provider sends the browser back to (not followed).
    fn through_provider(&mut self, start: &str, login: &str) -> String {
        let page = self.get(start);
        assert_eq!(page.status, 303, "start: {page:?}");
        let mut url = page.location.expect("to the provider");
        let sluice = origin_of(start);
        for _ in 0..10 {
            if origin_of(&url) == sluice {
                return url;
            }
            let page = self.get(&url);
            if page.status == 303 || page.status == 302 {
                url = page.location.expect("a redirect");
                continue;
            }
            assert_eq!(page.status, 200, "{url}: {page:?}");
            let form = if page.body.contains("name=\"login\"") {
                format!("prompt=login&login={}&password=x", urlencode(login))
            } else {
                "prompt=consent".to_owned()
            };
            let page = self.post(&url, &form);
            assert!(page.status == 303 || page.status == 302, "{url}: {page:?}");
            url = page.location.expect("a redirect");
        }
        panic!("the provider never sent the browser back: {url}");
    }

    /// Signs in with the provider and follows the callback; returns the session token from the
    /// session cookie, and where the callback went (as an absolute URL).
    fn sign_in(&mut self, start: &str, login: &str) -> (String, String) {
        let callback = self.through_provider(start, login);
        let page = self.get(&callback);
        assert_eq!(page.status, 303, "callback: {page:?}");
        let token = self
            .cookie(start, "sluice_session")
            .expect("the session cookie");
        (token, page.location.expect("to next"))
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn start_url(cp: &ControlPlane) -> String {
    format!("{}/auth/test-idp/start", cp.api.base)
}

fn me(api: &Api, token: &str) -> Value {
    let a = api.get("/api/v1/me", token);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

fn identities(api: &Api, token: &str) -> Vec<Value> {
    let a = api.get("/api/v1/me/identities", token);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_new_user_signs_up_through_the_provider_and_returns_as_the_same_user() {
    let s = setup();
    let api = &s.cp.api;
    let providers = api.call("GET", "/api/v1/auth/providers", None, None);
    assert_eq!(providers.status, 200, "{}", providers.body);
    assert_eq!(providers.json()["items"][0]["id"], "test-idp");
    assert_eq!(providers.json()["items"][0]["kind"], "oidc");
    let login = Browser::new().get(&format!("{}/login?next=/api/v1/workspaces", api.base));
    assert!(
        login.body.contains("action=\"/auth/test-idp/start\"")
            && login.body.contains("Sign in with Test IdP")
            && login.body.contains("value=\"/api/v1/workspaces\""),
        "a button per provider, keeping next: {}",
        login.body
    );

    let signup = Browser::new().get(&format!("{}/signup", api.base));
    assert!(
        signup.body.contains("Sign up with Test IdP"),
        "{}",
        signup.body
    );

    let mut browser = Browser::new();
    let (token, next) = browser.sign_in(
        &format!("{}?next=/api/v1/workspaces", start_url(&s.cp)),
        "alice",
    );
    assert_eq!(next, format!("{}/api/v1/workspaces", api.base));
    let alice = me(api, &token);
    assert_eq!(alice["email"], "alice@example.com");
    assert_eq!(alice["email_verified"], true);
    assert_eq!(alice["plan"], "trial");
    let workspaces = api.get("/api/v1/workspaces", &token);
    assert_eq!(
        workspaces.json()["items"].as_array().map(Vec::len),
        Some(1),
        "a first workspace, as at sign-up: {}",
        workspaces.body
    );
    let linked = identities(api, &token);
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0]["provider"], "test-idp");
    assert_eq!(linked[0]["email"], "alice@example.com");
    assert!(
        browser.cookie(&s.cp.api.base, "sluice_sign_in").is_none(),
        "the sign-in cookie is removed once signed in"
    );

    // Returning, from another browser: the same user, no second identity.
    let (again, _) = Browser::new().sign_in(&start_url(&s.cp), "alice");
    assert_ne!(again, token, "a new session");
    assert_eq!(me(api, &again)["id"], alice["id"]);
    assert_eq!(identities(api, &again).len(), 1);

    // The only way to sign in cannot be unlinked.
    let id = linked[0]["id"].as_str().expect("id");
    let a = api.delete(&format!("/api/v1/me/identities/{id}"), &token);
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(a.problem(), "last-sign-in-method");
    let a = api.delete(
        "/api/v1/me/identities/0190f3a0-0000-7000-8000-000000000001",
        &token,
    );
    assert_eq!(a.problem(), "unknown-identity", "{}", a.body);
    let log = s.cp.proc.log_text();
    assert!(
        !log.contains(CLIENT_SECRET) && !log.contains(&token),
        "secrets and tokens stay out of the log: {log}"
    );
    // And a password sign-in does not work for an account that never set one.
    let a = api.post(
        "/api/v1/sessions",
        None,
        json!({"email": "alice@example.com", "password": ""}),
    );
    assert_eq!(a.status, 401, "{}", a.body);

    // Alice sets a password with the password reset; then the identity may go.
    let a = api.post(
        "/api/v1/password-reset/code",
        None,
        json!({"email": "alice@example.com"}),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let code = wait_mail(&s.cp.outbox(), "alice@example.com", "reset code", 0).code();
    let a = api.post(
        "/api/v1/password-reset",
        None,
        json!({"email": "alice@example.com", "code": code, "password": "alices-new-password"}),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    let token = api.sign_in("alice@example.com", "alices-new-password");
    let a = api.delete(&format!("/api/v1/me/identities/{id}"), &token);
    assert_eq!(a.status, 204, "{}", a.body);
    assert!(identities(api, &token).is_empty());
}

#[test]
fn a_verified_address_links_to_the_password_user_and_takes_an_unverified_account_back() {
    let s = setup();
    let api = &s.cp.api;
    let bob = verified_user(api, &s.cp.outbox(), "bob@example.com");
    let (token, _) = Browser::new().sign_in(&start_url(&s.cp), "bob");
    assert_eq!(
        me(api, &token)["id"],
        bob.id.as_str(),
        "linked, not a new user"
    );
    let linked = identities(api, &bob.token);
    assert_eq!(linked.len(), 1, "{linked:?}");
    // Bob has a password too, so the identity may go.
    let id = linked[0]["id"].as_str().expect("id");
    let a = api.delete(&format!("/api/v1/me/identities/{id}"), &bob.token);
    assert_eq!(a.status, 204, "{}", a.body);
    assert!(identities(api, &bob.token).is_empty());
    api.sign_in("bob@example.com", &bob.password);

    // Someone signed up with Hank's address and never entered the code; Hank signs in with
    // the provider, which vouches for the address: the account is Hank's, the password set by
    // whoever signed up no longer works, and their session has ended.
    let squatter = api.post(
        "/api/v1/users",
        None,
        json!({"email": "hank@example.com", "password": "squatters-password",
               "first_name": "Not", "last_name": "Hank"}),
    );
    assert_eq!(squatter.status, 201, "{}", squatter.body);
    let squatter_session = api.sign_in("hank@example.com", "squatters-password");
    let (token, _) = Browser::new().sign_in(&start_url(&s.cp), "hank");
    let hank = me(api, &token);
    assert_eq!(hank["id"], squatter.json()["id"]);
    assert_eq!(hank["email_verified"], true);
    let a = api.post(
        "/api/v1/sessions",
        None,
        json!({"email": "hank@example.com", "password": "squatters-password"}),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(api.get("/api/v1/me", &squatter_session).status, 401);
}

#[test]
fn an_unverified_address_links_nothing_until_the_mailed_code_is_entered() {
    let s = setup();
    let api = &s.cp.api;
    let outbox = s.cp.outbox();
    let carol = verified_user(api, &outbox, "carol@example.com");
    let mut browser = Browser::new();
    let callback = browser.through_provider(&start_url(&s.cp), "unverified.carol@example.com");
    let page = browser.get(&callback);
    assert_eq!(page.status, 403, "{page:?}");
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(
        page.body.contains("does not confirm") && page.body.contains("carol@example.com"),
        "{}",
        page.body
    );
    assert!(
        browser.cookie(&api.base, "sluice_session").is_none(),
        "not signed in"
    );
    assert!(
        identities(api, &carol.token).is_empty(),
        "nothing linked yet"
    );

    // The code mailed to the address (after the one of carol's sign-up).
    let code = wait_mail(&outbox, "carol@example.com", "verification code", 1).code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let verify = format!("{}/auth/verify", api.base);
    let page = browser.post(&verify, &format!("code={wrong}"));
    assert_eq!(page.status, 400, "{page:?}");
    assert!(
        page.body.contains("wrong, expired or used up"),
        "{}",
        page.body
    );
    assert!(identities(api, &carol.token).is_empty());
    // Another browser cannot use the code: the held sign-in is bound to the first one.
    let page = Browser::new().post(&verify, &format!("code={code}"));
    assert_eq!(page.status, 400, "{page:?}");

    let page = browser.post(&verify, &format!("code={code}"));
    assert_eq!(page.status, 303, "{page:?}");
    let token = browser
        .cookie(&api.base, "sluice_session")
        .expect("signed in");
    assert_eq!(me(api, &token)["id"], carol.id.as_str());
    assert_eq!(identities(api, &carol.token).len(), 1);
}

#[test]
fn a_wrong_state_a_replayed_code_another_audience_and_an_expired_token_are_refused() {
    let s = setup();
    let api = &s.cp.api;
    let agent = common::agent();
    let next_id_token = |changes: Value| {
        let r = agent
            .post(&format!("{}/test/next-id-token", s.provider.base))
            .header("content-type", "application/json")
            .send(changes.to_string())
            .expect("test hook");
        assert_eq!(r.status(), 204);
    };

    // A wrong state; the right one from another browser.
    let mut browser = Browser::new();
    let callback = browser.through_provider(&start_url(&s.cp), "dan");
    let (base, query) = callback.split_once('?').expect("a query");
    let tampered: String = query
        .split('&')
        .map(|p| {
            if p.starts_with("state=") {
                "state=forged".to_owned()
            } else {
                p.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let page = browser.get(&format!("{base}?{tampered}"));
    assert_eq!(
        (page.status, page.problem().as_str()),
        (400, "sign-in-state-invalid"),
        "{page:?}"
    );
    let page = Browser::new().get(&callback);
    assert_eq!(page.problem(), "sign-in-state-invalid", "{page:?}");
    // A browser that asks for HTML gets a page with the reason and a way back.
    let page = Browser::new().get_html(&callback);
    assert_eq!(page.status, 400, "{page:?}");
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(
        page.body.contains("start signing in again") && page.body.contains("href=\"/login\""),
        "{}",
        page.body
    );
    // The other browser's attempt used the state up: the flow must start again.
    let page = browser.get(&callback);
    assert_eq!(page.problem(), "sign-in-state-invalid", "{page:?}");

    // A replayed callback, and its code under a new state.
    let callback = browser.through_provider(&start_url(&s.cp), "dan");
    assert_eq!(browser.get(&callback).status, 303);
    let page = browser.get(&callback);
    assert_eq!(page.problem(), "sign-in-state-invalid", "{page:?}");
    let old_code = callback
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .expect("code")
        .to_owned();
    let fresh = browser.through_provider(&start_url(&s.cp), "dan");
    let replayed: String = fresh
        .split('&')
        .map(|p| match p.split_once("code=") {
            Some((head, _)) => format!("{head}code={old_code}"),
            None => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    let page = browser.get(&replayed);
    assert_eq!(
        (page.status, page.problem().as_str()),
        (400, "sign-in-failed"),
        "{page:?}"
    );

    // The person declines at the provider; an unknown provider; one that cannot be reached.
    let callback = browser.through_provider(&start_url(&s.cp), "dan");
    let state = callback
        .split(['?', '&'])
        .find(|p| p.starts_with("state="))
        .expect("state");
    let page = browser.get(&format!(
        "{}/auth/test-idp/callback?error=access_denied&{state}",
        api.base
    ));
    assert_eq!(
        (page.status, page.problem().as_str()),
        (400, "sign-in-failed"),
        "{page:?}"
    );
    let page = browser.get(&format!("{}/auth/nope/start", api.base));
    assert_eq!(
        (page.status, page.problem().as_str()),
        (404, "unknown-provider"),
        "{page:?}"
    );
    let page = browser.get(&format!("{}/auth/down/start", api.base));
    assert_eq!(
        (page.status, page.problem().as_str()),
        (502, "provider-unavailable"),
        "{page:?}"
    );

    // An ID token for another audience, then an expired one, each signed with the real key.
    next_id_token(json!({"aud": "someone-else"}));
    let mut erin = Browser::new();
    let callback = erin.through_provider(&start_url(&s.cp), "erin");
    let page = erin.get(&callback);
    assert_eq!(
        (page.status, page.problem().as_str()),
        (400, "id-token-invalid"),
        "{page:?}"
    );
    assert!(page.body.contains("audience"), "{}", page.body);
    next_id_token(json!({"exp_offset_s": -3600}));
    let callback = erin.through_provider(&start_url(&s.cp), "erin");
    let page = erin.get(&callback);
    assert_eq!(page.problem(), "id-token-invalid", "{page:?}");
    assert!(page.body.contains("expired"), "{}", page.body);
    assert!(erin.cookie(&api.base, "sluice_session").is_none());
    // Nothing was created for the refused sign-ins; a clean one still works.
    let (token, _) = erin.sign_in(&start_url(&s.cp), "erin");
    assert_eq!(me(api, &token)["email"], "erin@example.com");
}

#[test]
fn an_invitation_is_accepted_after_signing_in_with_the_provider_only_for_its_address() {
    let s = setup();
    let api = &s.cp.api;
    let outbox = s.cp.outbox();
    let admin = verified_user(api, &outbox, "admin@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&admin.token),
        json!({"name": "Fleet", "slug": "fleet"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/fleet/invitations",
        Some(&admin.token),
        json!({"email": "frank@example.com", "role": "viewer"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let link = wait_mail(&outbox, "frank@example.com", "invited", 0).link();

    // Someone else signed in with the provider cannot use Frank's link.
    let mut grace = Browser::new();
    let (_, _) = grace.sign_in(&start_url(&s.cp), "grace");
    let page = grace.get(&link);
    assert_eq!(page.status, 403, "{page:?}");
    assert_eq!(page.problem(), "invitation-email-mismatch");

    // Frank follows the link, is sent to /login, takes the provider's button, and comes back.
    let mut frank = Browser::new();
    let page = frank.get(&link);
    assert_eq!(page.status, 303, "{page:?}");
    let login = page.location.expect("to /login");
    let page = frank.get(&login);
    let next = link
        .split_once("/invitations/")
        .map(|(_, rest)| format!("/invitations/{rest}"))
        .expect("path");
    assert!(
        page.body.contains(&format!("value=\"{next}\"")),
        "{}",
        page.body
    );
    let start = format!("{}?next={}", start_url(&s.cp), urlencode(&next));
    let (_, to) = frank.sign_in(&start, "frank");
    assert_eq!(to, format!("{}{next}", api.base));
    let page = frank.get(&to);
    assert_eq!(page.status, 200, "{page:?}");
    let workspace: Value = serde_json::from_str(&page.body).expect("json");
    assert_eq!(workspace["slug"], "fleet");
    assert_eq!(workspace["role"], "viewer");
}

#[test]
fn github_and_x_sign_in_through_a_stand_in_of_their_documented_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = start_standin(dir.path(), true);
    let port = free_port();
    let b = &standin.base;
    let providers = format!(
        "[[controlplane.sign_in.providers]]\nkind = \"github\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_env = \"{SECRET_ENV}\"\nauthorization_url = \"{b}/login/oauth/authorize\"\n\
         token_url = \"{b}/login/oauth/access_token\"\napi_url = \"{b}\"\n\
         [[controlplane.sign_in.providers]]\nkind = \"x\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_env = \"{SECRET_ENV}\"\nauthorization_url = \"{b}/i/oauth2/authorize\"\n\
         token_url = \"{b}/2/oauth2/token\"\napi_url = \"{b}/2\"\n"
    );
    let cp = start_control_plane(dir.path(), port, &providers);
    let api = &cp.api;

    // GitHub: the verified primary address signs up.
    let mut browser = Browser::new();
    let start = format!("{}/auth/github/start", api.base);
    let (token, _) = browser.sign_in(&start, "");
    let octo = me(api, &token);
    assert_eq!(octo["email"], "octo@example.com");
    assert_eq!(octo["first_name"], "Octo");
    assert_eq!(identities(api, &token)[0]["provider"], "github");

    // X gives no address: the person gives one and confirms it by code.
    let mut browser = Browser::new();
    let callback = browser.through_provider(&format!("{}/auth/x/start", api.base), "");
    let page = browser.get(&callback);
    assert_eq!(page.status, 403, "{page:?}");
    assert!(page.body.contains("name=\"email\""), "{}", page.body);
    let verify = format!("{}/auth/verify", api.base);
    let page = browser.post(&verify, "email=xena%40example.com");
    assert_eq!(page.status, 200, "{page:?}");
    let code = wait_mail(&cp.outbox(), "xena@example.com", "verification code", 0).code();
    let page = browser.post(&verify, &format!("code={code}"));
    assert_eq!(page.status, 303, "{page:?}");
    let token = browser
        .cookie(&api.base, "sluice_session")
        .expect("signed in");
    let xena = me(api, &token);
    assert_eq!(xena["email"], "xena@example.com");
    assert_eq!(xena["first_name"], "Ex");
    assert_eq!(identities(api, &token)[0]["provider"], "x");
    // Next time X's account alone signs in, no code asked.
    let (again, _) = Browser::new().sign_in(&format!("{}/auth/x/start", api.base), "");
    assert_eq!(me(api, &again)["id"], xena["id"]);
}

#[test]
fn github_s_unverified_primary_address_asks_for_the_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = start_standin(dir.path(), false);
    let port = free_port();
    let b = &standin.base;
    let providers = format!(
        "[[controlplane.sign_in.providers]]\nkind = \"github\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_env = \"{SECRET_ENV}\"\nauthorization_url = \"{b}/login/oauth/authorize\"\n\
         token_url = \"{b}/login/oauth/access_token\"\napi_url = \"{b}\"\n"
    );
    let cp = start_control_plane(dir.path(), port, &providers);
    let mut browser = Browser::new();
    let callback = browser.through_provider(&format!("{}/auth/github/start", cp.api.base), "");
    let page = browser.get(&callback);
    assert_eq!(page.status, 403, "{page:?}");
    assert!(page.body.contains("octo@example.com"), "{}", page.body);
    let code = wait_mail(&cp.outbox(), "octo@example.com", "verification code", 0).code();
    let page = browser.post(
        &format!("{}/auth/verify", cp.api.base),
        &format!("code={code}"),
    );
    assert_eq!(page.status, 303, "{page:?}");
}

#[test]
fn a_provider_whose_secret_variable_is_unset_stops_the_start_with_what_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[[controlplane.sign_in.providers]]\nkind = \"google\"\nclient_id = \"c\"\n\
         client_secret_env = \"SLUICE_TEST_UNSET_SECRET\"\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["controlplane", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("cp"))
        .args(["--api-addr", "127.0.0.1:0"])
        .env_remove("SLUICE_TEST_UNSET_SECRET")
        .output()
        .expect("sluice runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"google\"")
            && stderr.contains("SLUICE_TEST_UNSET_SECRET")
            && stderr.contains("is not set"),
        "{stderr}"
    );
}
