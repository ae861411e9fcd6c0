//! The control-plane API as people and scripts use it: sign-up with a code from a real SMTP
//! server, workspaces, invitations followed through the mailed link, the roles table, every
//! refusal, trials, the OpenAPI document, and persistence across restarts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::controlplane::{add_member, verified_user, wait_mail, Api, SmtpServer, User};
use common::{agent, wait_for, Answer, Sluice};
use serde_json::{json, Value};

fn api(sluice: &Sluice) -> Api {
    Api::new(sluice.api_url())
}

fn outbox(sluice: &Sluice) -> std::path::PathBuf {
    sluice.data_dir.join("outbox")
}

fn assert_problem(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status, status, "expected {status} {kind}, got {}", a.body);
    assert_eq!(
        a.content_type, "application/problem+json",
        "content type of {}",
        a.body
    );
    assert_eq!(a.problem(), kind, "problem type of {}", a.body);
    assert!(
        !a.json()["detail"].as_str().unwrap_or_default().is_empty(),
        "a detail to act on: {}",
        a.body
    );
}

fn create_workspace(api: &Api, user: &User, name: &str, slug: &str) -> Value {
    let a = api.post(
        "/api/v1/workspaces",
        Some(&user.token),
        json!({"name": name, "slug": slug}),
    );
    assert_eq!(a.status, 201, "create workspace {slug}: {}", a.body);
    a.json()
}

/// A client that does not follow redirects and keeps no cookies, like a script.
fn manual_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn location(resp: &ureq::http::Response<ureq::Body>) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned()
}

#[test]
fn a_new_user_signs_up_by_mail_and_an_invitee_joins_through_the_mailed_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start(&dir.path().join("maildir"));
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &[
            "--smtp-url",
            &smtp.url(),
            "--mail-from",
            "Sluice Test <noreply@test.example>",
        ],
    );
    let api = api(&sluice);
    let mail = smtp.maildir.clone();

    let alice = verified_user(&api, &mail, "alice@example.com");
    let code_mail = wait_mail(&mail, "alice@example.com", "verification code", 0);
    assert!(
        code_mail.from.contains("noreply@test.example"),
        "{code_mail:?}"
    );
    assert!(
        !outbox(&sluice).exists() || std::fs::read_dir(outbox(&sluice)).expect("dir").count() == 0,
        "with SMTP configured nothing goes to the outbox"
    );

    create_workspace(&api, &alice, "Fleet EU", "fleet-eu");
    let a = api.post(
        "/api/v1/workspaces/fleet-eu/invitations",
        Some(&alice.token),
        json!({"email": "Bob@Example.com", "role": "viewer"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let pending = api.get("/api/v1/workspaces/fleet-eu/invitations", &alice.token);
    let items = pending.json()["items"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{}", pending.body);
    assert_eq!(items[0]["email"], "Bob@Example.com");
    assert_eq!(items[0]["role"], "viewer");
    assert!(items[0]["created_at"].is_string());
    assert!(
        !pending.body.contains("token"),
        "the link is never listed: {}",
        pending.body
    );

    let bob = verified_user(&api, &mail, "bob@example.com");
    let link = wait_mail(&mail, "bob@example.com", "invited", 0).link();
    assert!(
        link.starts_with(&format!("{}/invitations/accept?token=", sluice.api_url())),
        "{link}"
    );

    // A browser without a session is sent to sign in, then back to the link.
    let browser = manual_agent();
    let resp = browser.get(&link).call().expect("link");
    assert_eq!(resp.status().as_u16(), 303);
    let to_login = location(&resp);
    assert!(to_login.starts_with("/login?next="), "{to_login}");
    let mut form_page = browser
        .get(format!("{}{to_login}", sluice.api_url()))
        .call()
        .expect("login page");
    assert_eq!(form_page.status().as_u16(), 200);
    let html = form_page.body_mut().read_to_string().expect("html");
    assert!(html.contains("<form"), "{html}");
    let next: String = url_decode(to_login.trim_start_matches("/login?next="));
    let resp = browser
        .post(format!("{}/login", sluice.api_url()))
        .send_form([
            ("email", bob.email.as_str()),
            ("password", bob.password.as_str()),
            ("next", next.as_str()),
        ])
        .expect("login form");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(location(&resp), next);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("session cookie")
        .to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let cookie = cookie.split(';').next().expect("cookie pair").to_owned();
    let mut joined = browser
        .get(format!("{}{next}", sluice.api_url()))
        .header("cookie", &cookie)
        .call()
        .expect("back at the link");
    assert_eq!(joined.status().as_u16(), 200);
    let joined: Value =
        serde_json::from_str(&joined.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(joined["slug"], "fleet-eu");
    assert_eq!(joined["role"], "viewer");

    // The link works once.
    let again = browser
        .get(&link)
        .header("cookie", &cookie)
        .call()
        .expect("link again");
    assert_eq!(again.status().as_u16(), 404);

    let members = api.get("/api/v1/workspaces/fleet-eu/members", &bob.token);
    assert_eq!(members.status, 200, "{}", members.body);
    let mut roles: Vec<(String, String)> = members.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["email"].as_str().unwrap_or_default().to_owned(),
                m["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        vec![
            ("alice@example.com".to_owned(), "admin".to_owned()),
            ("bob@example.com".to_owned(), "viewer".to_owned())
        ]
    );
    let pending = api.get("/api/v1/workspaces/fleet-eu/invitations", &alice.token);
    assert_eq!(pending.json()["items"], json!([]));
}

fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() + 1 => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Anonymous,
    Outsider,
    Viewer,
    Editor,
    Admin,
}

const ADMIN: &[Who] = &[Who::Admin];
const EDITORS: &[Who] = &[Who::Admin, Who::Editor];
const ALL: &[Who] = &[Who::Admin, Who::Editor, Who::Viewer];

/// One endpoint of the matrix: `prepare` makes what one attempt needs (a fresh token to
/// revoke, a fresh slug) and returns the path and body.
struct Case {
    method: &'static str,
    allowed: &'static [Who],
    prepare: Box<dyn Fn() -> (String, Option<Value>)>,
}

#[test]
fn every_workspace_endpoint_follows_the_roles_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = api(&sluice);
    let mail = outbox(&sluice);
    let admin = verified_user(&api, &mail, "admin@example.com");
    let editor = verified_user(&api, &mail, "editor@example.com");
    let viewer = verified_user(&api, &mail, "viewer@example.com");
    let outsider = verified_user(&api, &mail, "outsider@example.com");
    let leaver = verified_user(&api, &mail, "leaver@example.com");
    create_workspace(&api, &admin, "Acme", "acme");
    create_workspace(&api, &admin, "Acme spare", "acme-spare");
    create_workspace(&api, &outsider, "Elsewhere", "elsewhere");
    add_member(&api, &mail, &admin, "acme", &editor, "editor");
    add_member(&api, &mail, &admin, "acme", &viewer, "viewer");
    add_member(&api, &mail, &admin, "acme", &leaver, "viewer");

    let seq = std::rc::Rc::new(std::cell::Cell::new(0));
    let next = {
        let seq = seq.clone();
        move || {
            seq.set(seq.get() + 1);
            seq.get()
        }
    };
    let new_token = {
        let api = api.clone();
        let token = admin.token.clone();
        move || {
            let a = api.post(
                "/api/v1/workspaces/acme/tokens",
                Some(&token),
                json!({"name": "device", "scopes": ["ingest"]}),
            );
            assert_eq!(a.status, 201, "{}", a.body);
            a.json()["id"].as_str().expect("id").to_owned()
        }
    };
    let new_source = {
        let api = api.clone();
        let token = admin.token.clone();
        let next = next.clone();
        move || {
            let slug = format!("src-{}", next());
            let a = api.post(
                "/api/v1/workspaces/acme/sources",
                Some(&token),
                json!({"slug": slug}),
            );
            assert_eq!(a.status, 201, "{}", a.body);
            slug
        }
    };
    let new_rule = {
        let api = api.clone();
        let token = admin.token.clone();
        move || {
            let a = api.post(
                "/api/v1/workspaces/acme/tag-rules",
                Some(&token),
                json!({"name": "site", "extract": {"from": "header", "name": "X-Site", "tag": "site"}}),
            );
            assert_eq!(a.status, 201, "{}", a.body);
            a.json()["id"].as_str().expect("id").to_owned()
        }
    };
    let rule_body =
        json!({"name": "line", "extract": {"from": "query", "name": "line", "tag": "line"}});
    let fixed_token = new_token();
    let fixed_source = new_source();
    // An output (on `fixed_source`) or an export endpoint (on `fixed_output`) made by the Admin.
    let new_data_out = {
        let api = api.clone();
        let token = admin.token.clone();
        let next = next.clone();
        let source = fixed_source.clone();
        move |kind: &str| {
            let slug = format!("{kind}-{}", next());
            let (path, body) = match kind {
                "outputs" => ("outputs", json!({"slug": slug, "source": source})),
                _ => (
                    "export-endpoints",
                    json!({"slug": slug, "output": "out-fixed"}),
                ),
            };
            let a = api.post(
                &format!("/api/v1/workspaces/acme/{path}"),
                Some(&token),
                body,
            );
            assert_eq!(a.status, 201, "{}", a.body);
            slug
        }
    };
    let a = api.post(
        "/api/v1/workspaces/acme/outputs",
        Some(&admin.token),
        json!({"slug": "out-fixed", "source": fixed_source}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let fixed_endpoint = new_data_out("export-endpoints");
    // A webhook of `out-fixed` made by the Admin (to a public address literal, not resolved;
    // nothing is sent to it).
    let new_webhook = {
        let api = api.clone();
        let token = admin.token.clone();
        let next = next.clone();
        move || {
            let slug = format!("hook-{}", next());
            let a = api.post(
                "/api/v1/workspaces/acme/webhooks",
                Some(&token),
                json!({"slug": slug, "output": "out-fixed", "url": "https://93.184.216.34/in"}),
            );
            assert_eq!(a.status, 201, "{}", a.body);
            slug
        }
    };
    let fixed_webhook = new_webhook();
    let invitation = {
        let a = api.post(
            "/api/v1/workspaces/acme/invitations",
            Some(&admin.token),
            json!({"email": "pending@example.com", "role": "editor"}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()["id"].as_str().expect("id").to_owned()
    };
    let ws = "/api/v1/workspaces/acme";
    let fixed =
        |method: &'static str, allowed: &'static [Who], path: String, body: Option<Value>| Case {
            method,
            allowed,
            prepare: Box::new(move || (path.clone(), body.clone())),
        };
    let mut cases = vec![
        fixed("GET", ALL, ws.into(), None),
        fixed("PATCH", ADMIN, ws.into(), Some(json!({"name": "Acme Inc"}))),
        fixed("GET", ALL, format!("{ws}/members"), None),
        fixed(
            "PATCH",
            ADMIN,
            format!("{ws}/members/{}", viewer.id),
            Some(json!({"role": "viewer"})),
        ),
        fixed("DELETE", ADMIN, format!("{ws}/members/{}", leaver.id), None),
        fixed("GET", ALL, format!("{ws}/invitations"), None),
        fixed(
            "POST",
            ADMIN,
            format!("{ws}/invitations"),
            Some(json!({"email": "new@example.com", "role": "viewer"})),
        ),
        fixed(
            "DELETE",
            ADMIN,
            format!("{ws}/invitations/{invitation}"),
            None,
        ),
        fixed("GET", ALL, format!("{ws}/tokens"), None),
        fixed(
            "POST",
            EDITORS,
            format!("{ws}/tokens"),
            Some(json!({"name": "t", "scopes": ["ingest"]})),
        ),
        fixed("GET", ALL, format!("{ws}/tokens/{fixed_token}"), None),
        Case {
            method: "DELETE",
            allowed: EDITORS,
            prepare: Box::new(move || (format!("{ws}/tokens/{}", new_token()), None)),
        },
        fixed("GET", ALL, format!("{ws}/sources"), None),
        Case {
            method: "POST",
            allowed: EDITORS,
            prepare: Box::new({
                let next = next.clone();
                move || {
                    (
                        format!("{ws}/sources"),
                        Some(json!({"slug": format!("made-{}", next())})),
                    )
                }
            }),
        },
        fixed("GET", ALL, format!("{ws}/sources/{fixed_source}"), None),
        fixed(
            "PATCH",
            EDITORS,
            format!("{ws}/sources/{fixed_source}"),
            Some(json!({"name": "Telemetry"})),
        ),
        Case {
            method: "DELETE",
            allowed: EDITORS,
            prepare: Box::new(move || (format!("{ws}/sources/{}", new_source()), None)),
        },
        fixed("GET", ALL, format!("{ws}/tag-rules"), None),
        fixed(
            "POST",
            EDITORS,
            format!("{ws}/tag-rules"),
            Some(rule_body.clone()),
        ),
        Case {
            method: "GET",
            allowed: ALL,
            prepare: Box::new({
                let new_rule = new_rule.clone();
                move || (format!("{ws}/tag-rules/{}", new_rule()), None)
            }),
        },
        Case {
            method: "PUT",
            allowed: EDITORS,
            prepare: Box::new({
                let new_rule = new_rule.clone();
                let body = rule_body.clone();
                move || (format!("{ws}/tag-rules/{}", new_rule()), Some(body.clone()))
            }),
        },
        Case {
            method: "DELETE",
            allowed: EDITORS,
            prepare: Box::new({
                let new_rule = new_rule.clone();
                move || (format!("{ws}/tag-rules/{}", new_rule()), None)
            }),
        },
        fixed(
            "PUT",
            EDITORS,
            format!("{ws}/tag-rules"),
            Some(json!({"rules": [rule_body]})),
        ),
        fixed("GET", ALL, format!("{ws}/outputs"), None),
        fixed("GET", ALL, format!("{ws}/outputs/out-fixed"), None),
        fixed(
            "PATCH",
            EDITORS,
            format!("{ws}/outputs/out-fixed"),
            Some(json!({"name": "Fixed"})),
        ),
        fixed("GET", ALL, format!("{ws}/export-endpoints"), None),
        fixed(
            "GET",
            ALL,
            format!("{ws}/export-endpoints/{fixed_endpoint}"),
            None,
        ),
        fixed(
            "PATCH",
            EDITORS,
            format!("{ws}/export-endpoints/{fixed_endpoint}"),
            Some(json!({"name": "Fixed"})),
        ),
        Case {
            method: "POST",
            allowed: EDITORS,
            prepare: Box::new({
                let next = next.clone();
                let source = fixed_source.clone();
                move || {
                    (
                        format!("{ws}/outputs"),
                        Some(json!({"slug": format!("made-{}", next()), "source": source})),
                    )
                }
            }),
        },
        Case {
            method: "POST",
            allowed: EDITORS,
            prepare: Box::new({
                let next = next.clone();
                move || {
                    (
                        format!("{ws}/export-endpoints"),
                        Some(json!({"slug": format!("made-{}", next()), "output": "out-fixed"})),
                    )
                }
            }),
        },
        Case {
            method: "DELETE",
            allowed: EDITORS,
            prepare: Box::new({
                let new_data_out = new_data_out.clone();
                move || (format!("{ws}/outputs/{}", new_data_out("outputs")), None)
            }),
        },
        Case {
            method: "DELETE",
            allowed: EDITORS,
            prepare: Box::new({
                let new_data_out = new_data_out.clone();
                move || {
                    (
                        format!("{ws}/export-endpoints/{}", new_data_out("export-endpoints")),
                        None,
                    )
                }
            }),
        },
        fixed("GET", ALL, format!("{ws}/webhooks"), None),
        fixed("GET", ALL, format!("{ws}/webhooks/{fixed_webhook}"), None),
        fixed(
            "GET",
            ALL,
            format!("{ws}/webhooks/{fixed_webhook}/deliveries"),
            None,
        ),
        fixed(
            "GET",
            ALL,
            format!("{ws}/webhooks/{fixed_webhook}/failures"),
            None,
        ),
        fixed(
            "PATCH",
            EDITORS,
            format!("{ws}/webhooks/{fixed_webhook}"),
            Some(json!({"name": "Fixed", "batch_events_max": 50})),
        ),
        fixed(
            "POST",
            EDITORS,
            format!("{ws}/webhooks/{fixed_webhook}/rotate-secret"),
            None,
        ),
        Case {
            method: "POST",
            allowed: EDITORS,
            prepare: Box::new({
                let next = next.clone();
                move || {
                    (
                        format!("{ws}/webhooks"),
                        Some(
                            json!({"slug": format!("made-{}", next()), "output": "out-fixed",
                            "url": "https://93.184.216.34/in"}),
                        ),
                    )
                }
            }),
        },
        Case {
            method: "DELETE",
            allowed: EDITORS,
            prepare: Box::new({
                let new_webhook = new_webhook.clone();
                move || (format!("{ws}/webhooks/{}", new_webhook()), None)
            }),
        },
        fixed("GET", ALL, format!("{ws}/cors"), None),
        fixed(
            "PUT",
            ADMIN,
            format!("{ws}/cors"),
            Some(json!({"allowed_origins": ["https://app.example.com"]})),
        ),
        // Last: it removes the workspace.
        fixed("DELETE", ADMIN, ws.into(), None),
    ];
    let token_of = |who: Who| match who {
        Who::Anonymous => None,
        Who::Outsider => Some(outsider.token.as_str()),
        Who::Viewer => Some(viewer.token.as_str()),
        Who::Editor => Some(editor.token.as_str()),
        Who::Admin => Some(admin.token.as_str()),
    };
    // Everything a refused request could have changed, as the Admin sees it.
    let state = || {
        [
            "",
            "/members",
            "/invitations",
            "/tokens",
            "/sources",
            "/tag-rules",
            "/outputs",
            "/export-endpoints",
            "/webhooks",
            "/cors",
        ]
        .iter()
        .map(|part| api.get(&format!("{ws}{part}"), &admin.token).body)
        .collect::<Vec<_>>()
    };
    for case in cases.drain(..) {
        for who in [
            Who::Anonymous,
            Who::Outsider,
            Who::Viewer,
            Who::Editor,
            Who::Admin,
        ] {
            let (path, body) = (case.prepare)();
            let before = state();
            let a = api.call(case.method, &path, token_of(who), body.as_ref());
            let what = format!("{} {path} as {who:?}", case.method);
            match who {
                Who::Anonymous => assert_problem(&a, 401, "unauthenticated"),
                Who::Outsider => assert_problem(&a, 404, "unknown-workspace"),
                _ if case.allowed.contains(&who) => {
                    assert!((200..300).contains(&a.status), "{what}: {}", a.body);
                    continue;
                }
                _ => assert_problem(&a, 403, "insufficient-role"),
            }
            assert_eq!(before, state(), "{what} was refused but changed something");
        }
    }
    let gone = api.get(ws, &admin.token);
    assert_problem(&gone, 404, "unknown-workspace");

    // Operator endpoints: operators only.
    let op = operator_session(&sluice, &api);
    let operator_cases = [
        ("GET", "/api/v1/operator/users".to_owned(), None),
        (
            "PUT",
            format!("/api/v1/operator/users/{}/plan", viewer.id),
            Some(json!({"plan": "paid"})),
        ),
        (
            "PUT",
            format!("/api/v1/operator/users/{}/trial", viewer.id),
            Some(json!({"trial_ends_at": "2030-01-01T00:00:00Z"})),
        ),
    ];
    for (method, path, body) in operator_cases {
        let a = api.call(method, &path, None, body.as_ref());
        assert_problem(&a, 401, "unauthenticated");
        for user in [&admin, &editor, &viewer, &outsider] {
            let a = api.call(method, &path, Some(&user.token), body.as_ref());
            assert_problem(&a, 403, "operator-only");
        }
        let a = api.call(method, &path, Some(&op), body.as_ref());
        assert_eq!(a.status, 200, "{method} {path} as operator: {}", a.body);
    }
}

/// Signs in as the operator created on first start.
fn operator_session(sluice: &Sluice, api: &Api) -> String {
    api.operator_session(&sluice.data_dir)
}

#[test]
fn account_refusals_sessions_tokens_and_password_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = api(&sluice);
    let mail = outbox(&sluice);

    // Bad input is refused with problem+json and changes nothing.
    let signup = |email: &str, password: &str| {
        api.post(
            "/api/v1/users",
            None,
            json!({"email": email, "password": password, "first_name": "A", "last_name": "B"}),
        )
    };
    assert_problem(
        &signup("not-an-address", "long enough pw"),
        400,
        "invalid-email",
    );
    assert_problem(&signup("short@example.com", "short"), 400, "weak-password");
    let raw = |content_type: &str, body: Vec<u8>| {
        Answer::of(
            agent()
                .post(format!("{}/api/v1/users", sluice.api_url()))
                .header("content-type", content_type)
                .send(&body[..])
                .expect("sent"),
        )
    };
    assert_problem(
        &raw("application/json", b"{\"email\": ".to_vec()),
        400,
        "malformed-json",
    );
    assert_problem(
        &raw("text/plain", b"{}".to_vec()),
        415,
        "unsupported-media-type",
    );
    // Just over the 1 MiB limit: small enough that the client finishes sending before it
    // reads the answer.
    let mut big = b"{\"email\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'a', (1 << 20) + (16 << 10)));
    big.extend(b"\"}");
    assert_problem(&raw("application/json", big), 413, "body-too-large");
    assert_problem(
        &raw(
            "application/json",
            br#"{"email": "x@example.com", "password": "long enough pw", "first_name": "A", "last_name": "B", "admin": true}"#.to_vec(),
        ),
        400,
        "invalid-body",
    );

    // Unverified users can sign in but not create workspaces; codes expire after 5 wrong tries.
    assert_eq!(signup("Carol@Example.com", "carol's password").status, 201);
    assert_problem(
        &signup("carol@EXAMPLE.com", "another password"),
        409,
        "email-taken",
    );
    let carol = api.sign_in("carol@example.com", "carol's password");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&carol),
        json!({"name": "Carol's"}),
    );
    assert_problem(&a, 403, "email-not-verified");
    let a = api.post("/api/v1/me/tokens", Some(&carol), json!({"name": "x"}));
    assert_problem(&a, 403, "email-not-verified");
    let code = wait_mail(&mail, "carol@example.com", "verification code", 0).code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let a = api.post(
            "/api/v1/email-verification",
            None,
            json!({"email": "carol@example.com", "code": wrong}),
        );
        assert_problem(&a, 400, "invalid-code");
    }
    let a = api.post(
        "/api/v1/email-verification",
        None,
        json!({"email": "carol@example.com", "code": code}),
    );
    assert_problem(&a, 400, "invalid-code");
    let a = api.post(
        "/api/v1/email-verification/code",
        None,
        json!({"email": "carol@example.com"}),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let code = wait_mail(&mail, "carol@example.com", "verification code", 1).code();
    let a = api.post(
        "/api/v1/email-verification",
        None,
        json!({"email": "carol@example.com", "code": code}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Mailed codes act as credentials: the outbox has them, the log never does.
    assert!(
        !sluice.log().contains(&code),
        "a mailed code reached the log: {}",
        sluice.log()
    );
    assert_eq!(a.json()["email_verified"], true);
    // Unknown addresses get the same answer as known ones.
    let a = api.post(
        "/api/v1/email-verification/code",
        None,
        json!({"email": "nobody@example.com"}),
    );
    assert_eq!(a.status, 202);

    // Every user starts with a workspace of their own, and cannot delete their last one.
    let dave = verified_user(&api, &mail, "dave@example.com");
    let own = api.get("/api/v1/workspaces", &dave.token);
    let own = &own.json()["items"];
    assert_eq!(own.as_array().map(Vec::len), Some(1), "{own}");
    assert_eq!(own[0]["role"], "admin");
    let own_slug = own[0]["slug"].as_str().expect("slug").to_owned();
    assert_problem(
        &api.delete(&format!("/api/v1/workspaces/{own_slug}"), &dave.token),
        409,
        "last-workspace",
    );
    create_workspace(&api, &dave, "Dave", "dave");
    let a = api.delete(&format!("/api/v1/workspaces/{own_slug}"), &dave.token);
    assert_eq!(a.status, 204, "with another one left: {}", a.body);
    assert_problem(
        &api.delete("/api/v1/workspaces/dave", &dave.token),
        409,
        "last-workspace",
    );
    assert_problem(
        &api.patch(
            &format!("/api/v1/workspaces/dave/members/{}", dave.id),
            &dave.token,
            json!({"role": "editor"}),
        ),
        409,
        "last-admin",
    );
    assert_problem(
        &api.delete("/api/v1/workspaces/dave/members/me", &dave.token),
        409,
        "last-admin",
    );
    let erin = verified_user(&api, &mail, "erin@example.com");
    add_member(&api, &mail, &dave, "dave", &erin, "admin");
    // Any member may leave.
    let fay = verified_user(&api, &mail, "fay@example.com");
    add_member(&api, &mail, &dave, "dave", &fay, "viewer");
    let a = api.delete("/api/v1/workspaces/dave/members/me", &fay.token);
    assert_eq!(a.status, 204, "a viewer leaves: {}", a.body);
    assert_problem(
        &api.get("/api/v1/workspaces/dave", &fay.token),
        404,
        "unknown-workspace",
    );
    let a = api.delete("/api/v1/workspaces/dave/members/me", &dave.token);
    assert_eq!(a.status, 204, "{}", a.body);
    assert_problem(
        &api.get("/api/v1/workspaces/dave", &dave.token),
        404,
        "unknown-workspace",
    );
    assert_problem(
        &api.delete(
            &format!("/api/v1/workspaces/dave/members/{}", erin.id),
            &erin.token,
        ),
        409,
        "last-admin",
    );

    // Sign-in: wrong passwords are limited per account.
    for _ in 0..10 {
        let a = api.post(
            "/api/v1/sessions",
            None,
            json!({"email": "erin@example.com", "password": "wrong password!"}),
        );
        assert_problem(&a, 401, "unauthenticated");
    }
    let a = api.post(
        "/api/v1/sessions",
        None,
        json!({"email": "erin@example.com", "password": erin.password}),
    );
    assert_problem(&a, 429, "rate-limited");

    // Personal access tokens: secret shown once, listed by hint, revocable.
    let a = api.post(
        "/api/v1/me/tokens",
        Some(&dave.token),
        json!({"name": "ci script"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let pat = a.json()["secret"].as_str().expect("secret").to_owned();
    let pat_id = a.json()["id"].as_str().expect("id").to_owned();
    assert!(pat.starts_with("sluice_pat_"), "{pat}");
    assert_eq!(
        api.get("/api/v1/me", &pat).json()["email"],
        "dave@example.com"
    );
    let list = api.get("/api/v1/me/tokens", &dave.token);
    assert!(!list.body.contains(&pat), "{}", list.body);
    assert!(list.body.contains(&pat[pat.len() - 4..]), "{}", list.body);
    assert_eq!(
        api.delete(&format!("/api/v1/me/tokens/{pat_id}"), &dave.token)
            .status,
        204
    );
    assert_problem(&api.get("/api/v1/me", &pat), 401, "unauthenticated");

    // Sessions are listed (never with their secret) and can be ended one by one.
    let other = api.sign_in("dave@example.com", &dave.password);
    let list = api.get("/api/v1/me/sessions", &dave.token);
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(!list.body.contains(&other), "{}", list.body);
    let items = list.json()["items"].as_array().cloned().expect("items");
    assert!(items.len() >= 2, "{}", list.body);
    assert_eq!(items.iter().filter(|i| i["current"] == true).count(), 1);
    let other_id = items
        .iter()
        .find(|i| {
            i["current"] == false
                && other.ends_with(
                    i["hint"]
                        .as_str()
                        .unwrap_or("?")
                        .trim_start_matches("sluice_ses_…"),
                )
        })
        .and_then(|i| i["id"].as_str())
        .expect("the other session")
        .to_owned();
    let a = api.delete(&format!("/api/v1/me/sessions/{other_id}"), &dave.token);
    assert_eq!(a.status, 204, "{}", a.body);
    assert_problem(&api.get("/api/v1/me", &other), 401, "unauthenticated");
    assert_eq!(api.get("/api/v1/me", &dave.token).status, 200);

    // Sign out ends the session.
    let session = api.sign_in("dave@example.com", &dave.password);
    assert_eq!(
        api.call("DELETE", "/api/v1/sessions/current", Some(&session), None)
            .status,
        204
    );
    assert_problem(&api.get("/api/v1/me", &session), 401, "unauthenticated");

    // Password reset by mailed code ends every session and revokes personal tokens.
    let a = api.post(
        "/api/v1/me/tokens",
        Some(&dave.token),
        json!({"name": "before the reset"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let old_pat = a.json()["secret"].as_str().expect("secret").to_owned();
    let a = api.post(
        "/api/v1/password-reset/code",
        None,
        json!({"email": "dave@example.com"}),
    );
    assert_eq!(a.status, 202);
    let code = wait_mail(&mail, "dave@example.com", "password reset", 0).code();
    let a = api.post(
        "/api/v1/password-reset",
        None,
        json!({"email": "dave@example.com", "code": code, "password": "a brand new password"}),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert_problem(&api.get("/api/v1/me", &dave.token), 401, "unauthenticated");
    assert_problem(&api.get("/api/v1/me", &old_pat), 401, "unauthenticated");
    let dave_token = api.sign_in("dave@example.com", "a brand new password");

    // Everything survives a restart.
    sluice.stop();
    sluice.restart();
    let api = Api::new(sluice.api_url());
    assert_eq!(api.get("/api/v1/me", &dave_token).status, 200);
    let ws = api.get("/api/v1/workspaces", &erin.token);
    assert!(
        ws.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|w| w["slug"] == "dave" && w["role"] == "admin"),
        "{}",
        ws.body
    );
}

#[test]
fn invitation_links_refuse_expired_cancelled_reused_replaced_and_other_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[controlplane]\ninvitation_ttl_secs = 5\ninvitations_per_workspace_per_day = 5\n",
    )
    .expect("config");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("path")],
    );
    let api = api(&sluice);
    let mail = outbox(&sluice);
    let admin = verified_user(&api, &mail, "admin@example.com");
    let frank = verified_user(&api, &mail, "frank@example.com");
    let gina = verified_user(&api, &mail, "gina@example.com");
    let hal = verified_user(&api, &mail, "hal@example.com");
    create_workspace(&api, &admin, "Team", "team");
    let invite = |email: &str| {
        let a = api.post(
            "/api/v1/workspaces/team/invitations",
            Some(&admin.token),
            json!({"email": email, "role": "editor"}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()["id"].as_str().expect("id").to_owned()
    };
    let token_in = |email: &str, nth: usize| {
        let link = wait_mail(&mail, email, "invited", nth).link();
        link.split("token=").nth(1).expect("token").to_owned()
    };
    let accept = |user: &User, token: &str| {
        api.post(
            "/api/v1/invitations/acceptance",
            Some(&user.token),
            json!({"token": token}),
        )
    };
    let pending = || {
        api.get("/api/v1/workspaces/team/invitations", &admin.token)
            .json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["email"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };

    // Hal's invitation is left to expire while the rest runs (each step takes well under the
    // 5 s an invitation lives).
    let expiring_since = std::time::Instant::now();
    invite("hal@example.com");
    let late = token_in("hal@example.com", 0);

    // Someone else cannot use Frank's link.
    invite("frank@example.com");
    let frank_link = token_in("frank@example.com", 0);
    assert_problem(
        &accept(&gina, &frank_link),
        403,
        "invitation-email-mismatch",
    );
    // A cancelled link is dead at once.
    let id = invite("gina@example.com");
    let gina_link = token_in("gina@example.com", 0);
    assert_eq!(
        api.delete(
            &format!("/api/v1/workspaces/team/invitations/{id}"),
            &admin.token
        )
        .status,
        204
    );
    assert_problem(&accept(&gina, &gina_link), 404, "unknown-invitation");
    assert!(!pending().contains(&"gina@example.com".to_owned()));
    // Inviting again replaces the pending invitation: the old link is dead, the new works once.
    invite("frank@example.com");
    let new_link = token_in("frank@example.com", 1);
    assert_problem(&accept(&frank, &frank_link), 404, "unknown-invitation");
    assert_eq!(accept(&frank, &new_link).status, 200);
    assert_problem(&accept(&frank, &new_link), 404, "unknown-invitation");
    // Members cannot be invited.
    let a = api.post(
        "/api/v1/workspaces/team/invitations",
        Some(&admin.token),
        json!({"email": "FRANK@example.com", "role": "viewer"}),
    );
    assert_problem(&a, 409, "already-member");
    // The workspace may send 5 invitations a day.
    invite("fifth@example.com");
    let a = api.post(
        "/api/v1/workspaces/team/invitations",
        Some(&admin.token),
        json!({"email": "sixth@example.com", "role": "viewer"}),
    );
    assert_problem(&a, 429, "rate-limited");
    assert!(a.retry_after.is_some(), "429 says when to retry");
    assert!(!pending().contains(&"sixth@example.com".to_owned()));

    // An expired link is refused, and no longer listed as pending.
    if let Some(left) = Duration::from_millis(5500).checked_sub(expiring_since.elapsed()) {
        std::thread::sleep(left);
    }
    assert!(!pending().contains(&"hal@example.com".to_owned()));
    assert_problem(&accept(&hal, &late), 410, "invitation-expired");
    // It keeps saying so (until the sweep removes it, minutes later), through the link too.
    assert_problem(&accept(&hal, &late), 410, "invitation-expired");
    assert_problem(
        &api.get(&format!("/invitations/accept?token={late}"), &hal.token),
        410,
        "invitation-expired",
    );
    let members = api.get("/api/v1/workspaces/team/members", &admin.token);
    assert_eq!(
        members.json()["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        members.body
    );
}

fn snapshot_enabled(data_dir: &Path, slug: &str) -> Option<bool> {
    let text = std::fs::read_to_string(data_dir.join("config-snapshot.json")).ok()?;
    let snapshot: Value = serde_json::from_str(&text).ok()?;
    snapshot["workspaces"]
        .as_array()?
        .iter()
        .find(|w| w["slug"] == slug)
        .and_then(|w| w["enabled"].as_bool())
}

#[test]
fn an_ended_trial_disables_the_creators_workspaces_until_an_operator_prolongs_it() {
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
    let api = api(&sluice);
    let mail = outbox(&sluice);
    let operator = operator_session(&sluice, &api);
    let hank = verified_user(&api, &mail, "hank@example.com");
    create_workspace(&api, &hank, "Trial", "trial");
    let a = api.post(
        "/api/v1/workspaces/trial/sources",
        Some(&hank.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/trial/tokens",
        Some(&hank.token),
        json!({"name": "device", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let device = format!("Bearer {}", a.json()["secret"].as_str().expect("secret"));
    let ingest = || {
        common::post(
            &sluice.ingest_url("trial", "telemetry"),
            &[("authorization", &device)],
            br#"{"t": 1}"#,
        )
    };
    assert_problem(
        &api.get("/api/v1/operator/users", &hank.token),
        403,
        "operator-only",
    );

    let disabled = wait_for(Duration::from_secs(20), || {
        api.get("/api/v1/workspaces/trial", &hank.token).json()["enabled"] == false
    });
    assert!(disabled, "the workspace is disabled when the trial ends");
    assert!(wait_for(Duration::from_secs(5), || snapshot_enabled(
        &sluice.data_dir,
        "trial"
    ) == Some(false)));
    assert!(
        wait_for(Duration::from_secs(5), || ingest().problem()
            == "workspace-disabled"),
        "devices of a disabled workspace are refused"
    );
    let a = api.post(
        "/api/v1/workspaces/trial/sources",
        Some(&hank.token),
        json!({"slug": "more"}),
    );
    assert_problem(&a, 403, "workspace-disabled");
    // The refusal says who and what can enable it again: the creator's trial or plan, changed
    // by an operator at the endpoint named.
    for a in [
        api.post(
            "/api/v1/workspaces/trial/tokens",
            Some(&hank.token),
            json!({"name": "more", "scopes": ["ingest"]}),
        ),
        api.patch(
            "/api/v1/workspaces/trial",
            &hank.token,
            json!({"name": "Renamed"}),
        ),
    ] {
        assert_problem(&a, 403, "workspace-disabled");
        let detail = a.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains("hank@example.com"), "{detail}");
        assert!(
            detail.contains(&format!("PUT /api/v1/operator/users/{}/trial", hank.id)),
            "{detail}"
        );
        assert!(!detail.contains("choose a paid plan"), "{detail}");
    }

    let users = api.get("/api/v1/operator/users", &operator);
    assert!(users.body.contains("hank@example.com"), "{}", users.body);
    let later = (chrono_like_now_plus_days(30)).to_string();
    let a = api.put(
        &format!("/api/v1/operator/users/{}/trial", hank.id),
        &operator,
        json!({"trial_ends_at": later}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        api.get("/api/v1/workspaces/trial", &hank.token).json()["enabled"],
        true
    );
    assert!(wait_for(Duration::from_secs(5), || snapshot_enabled(
        &sluice.data_dir,
        "trial"
    ) == Some(true)));
    let a = api.post(
        "/api/v1/workspaces/trial/sources",
        Some(&hank.token),
        json!({"slug": "more"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(
        wait_for(Duration::from_secs(5), || ingest().status == 202),
        "devices are accepted again"
    );

    // A paid plan keeps the workspace enabled whatever the trial says.
    let a = api.put(
        &format!("/api/v1/operator/users/{}/plan", hank.id),
        &operator,
        json!({"plan": "paid"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.put(
        &format!("/api/v1/operator/users/{}/trial", hank.id),
        &operator,
        json!({"trial_ends_at": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        api.get("/api/v1/workspaces/trial", &hank.token).json()["enabled"],
        true
    );
}

/// RFC 3339 time `days` from now, computed with the system clock (no chrono in tests).
fn chrono_like_now_plus_days(days: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("+{days} days"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_openapi_document_is_valid_and_every_documented_operation_is_routed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let mut resp = agent()
        .get(format!("{}/api/v1/openapi.json", sluice.api_url()))
        .call()
        .expect("openapi");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.body_mut().read_to_string().expect("body");
    let doc: Value = serde_json::from_str(&text).expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    // A real validator (openapi-spec-validator, installed by scripts/test.sh).
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).expect("write");
    let out = std::process::Command::new(common::python())
        .args([
            "-c",
            "import sys; from openapi_spec_validator import validate; from openapi_spec_validator.readers import read_from_filename; validate(read_from_filename(sys.argv[1])[0]); print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "the OpenAPI document is not valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented operation reaches a handler: nothing answers "no such route" or 405.
    let api = api(&sluice);
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        // Ids get a well-formed UUID nobody has, names a slug nobody has.
        let concrete: String = path
            .split('/')
            .map(
                |segment| match segment.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) if name.ends_with("_id") || name == "user" => {
                        "0190f3a0-0000-7000-8000-000000000001"
                    }
                    Some(_) => "nope",
                    None => segment,
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().expect("item").keys() {
            let a = api.call(
                &method.to_uppercase(),
                &format!("{concrete}?token=x"),
                Some("sluice_ses_unknown"),
                Some(&json!({})),
            );
            assert_ne!(a.status, 405, "{method} {path}: {}", a.body);
            assert_ne!(a.problem(), "no-route", "{method} {path}: {}", a.body);
            operations += 1;
        }
    }
    assert!(operations >= 30, "only {operations} operations documented");
    for path in [
        "/healthz",
        "/api/v1/openapi.json",
        "/invitations/accept",
        "/login",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    // Paths outside the document get the problem+json fallback.
    let a = api.get("/api/v1/undocumented", "x");
    assert_problem(&a, 404, "no-route");
}

#[test]
fn deleting_a_workspace_removes_its_tokens_sources_and_data_in_the_lake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = api(&sluice);
    let mail = outbox(&sluice);
    let ivy = verified_user(&api, &mail, "ivy@example.com");
    let doomed = create_workspace(&api, &ivy, "Doomed", "doomed");
    let kept = create_workspace(&api, &ivy, "Kept", "kept");
    for ws in ["doomed", "kept"] {
        let a = api.post(
            &format!("/api/v1/workspaces/{ws}/sources"),
            Some(&ivy.token),
            json!({"slug": "telemetry"}),
        );
        assert_eq!(a.status, 201);
        let a = api.post(
            &format!("/api/v1/workspaces/{ws}/tokens"),
            Some(&ivy.token),
            json!({"name": "d", "scopes": ["ingest"]}),
        );
        assert_eq!(a.status, 201);
    }
    let lake = sluice.data_dir.join("lake");
    let file_of = |ws: &Value| {
        lake.join(format!(
            "workspace={}/source=telemetry/date=2026-01-01/hour=00/n-1.parquet",
            ws["id"].as_str().expect("id")
        ))
    };
    for ws in [&doomed, &kept] {
        let f = file_of(ws);
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(&f, b"PAR1").expect("write");
    }
    assert!(wait_for(Duration::from_secs(5), || {
        snapshot_enabled(&sluice.data_dir, "doomed") == Some(true)
    }));

    let a = api.delete("/api/v1/workspaces/doomed", &ivy.token);
    assert_eq!(a.status, 204, "{}", a.body);
    assert!(
        wait_for(Duration::from_secs(10), || !file_of(&doomed).exists()),
        "the deleted workspace's data leaves the lake"
    );
    assert!(file_of(&kept).exists(), "other workspaces' data stays");
    let dir_of = |ws: &Value| lake.join(format!("workspace={}", ws["id"].as_str().expect("id")));
    assert!(
        wait_for(Duration::from_secs(10), || !dir_of(&doomed).exists()),
        "no empty directories of the deleted workspace are left in the lake: {:?}",
        std::fs::read_dir(&lake).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    assert!(dir_of(&kept).is_dir() && lake.is_dir());
    assert!(wait_for(Duration::from_secs(5), || {
        snapshot_enabled(&sluice.data_dir, "doomed").is_none()
    }));
    let snapshot =
        std::fs::read_to_string(sluice.data_dir.join("config-snapshot.json")).expect("snapshot");
    let snapshot: Value = serde_json::from_str(&snapshot).expect("json");
    let slugs: Vec<&str> = snapshot["workspaces"]
        .as_array()
        .expect("workspaces")
        .iter()
        .filter_map(|w| w["slug"].as_str())
        .collect();
    assert!(
        slugs.contains(&"kept") && !slugs.contains(&"doomed"),
        "{slugs:?}"
    );
    assert!(
        !snapshot.to_string().contains("sluice_"),
        "no secrets in the snapshot"
    );
}

#[test]
fn in_sluice_up_a_token_made_through_the_api_ingests_at_once_and_stops_when_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "200"]);
    let api = api(&sluice);
    let mail = outbox(&sluice);

    // The first start's workspace is control-plane data, owned by the operator.
    let boot = sluice.bootstrap();
    let a = common::post(
        &sluice.ingest_url("default", "telemetry"),
        &[(
            "authorization",
            &format!("Bearer {}", boot["token"].as_str().expect("token")),
        )],
        br#"{"boot": 1}"#,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sluice.data_dir.join("initial-operator.json"))
        .expect("initial-operator.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the operator's password is private");
    assert!(
        sluice.log().contains("created the operator account"),
        "the log shows the operator account once: {}",
        sluice.log()
    );
    let operator: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sluice.data_dir.join("initial-operator.json"))
            .expect("initial-operator.json"),
    )
    .expect("initial-operator.json is JSON");
    let password = operator["password"].as_str().expect("password");
    assert!(
        !sluice.log().contains(password),
        "the operator's password reached the log"
    );
    let op = operator_session(&sluice, &api);
    let tokens = api.get("/api/v1/workspaces/default/tokens", &op);
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    assert_eq!(tokens.json()["items"].as_array().map(Vec::len), Some(1));

    let jo = verified_user(&api, &mail, "jo@example.com");
    let ws = create_workspace(&api, &jo, "Plant", "plant");
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&jo.token),
        json!({"slug": "line-1"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&jo.token),
        json!({"name": "press 7", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let secret = a.json()["secret"].as_str().expect("secret").to_owned();
    let token_id = a.json()["id"].as_str().expect("id").to_owned();
    let bearer = format!("Bearer {secret}");
    let accepted = std::cell::Cell::new(0);
    let send = |body: &[u8]| {
        let a = common::post(
            &sluice.ingest_url("plant", "line-1"),
            &[("authorization", &bearer), ("x-device-id", "press-7")],
            body,
        );
        if a.status == 202 {
            accepted.set(accepted.get() + 1);
        }
        a
    };
    assert!(
        wait_for(Duration::from_secs(5), || send(br#"{"psi": 1}"#).status
            == 202),
        "the new token ingests within the propagation delay"
    );
    assert_eq!(send(br#"{"psi": 2}"#).status, 202);

    let a = api.delete(
        &format!("/api/v1/workspaces/plant/tokens/{token_id}"),
        &jo.token,
    );
    assert_eq!(a.status, 204);
    assert!(
        wait_for(Duration::from_secs(5), || send(br#"{"psi": 3}"#).status
            == 401),
        "a revoked token is refused"
    );

    sluice.stop();
    let lake = sluice.data_dir.join("lake");
    let rows = common::duckdb(
        &lake,
        &format!(
            "SELECT count(*), min(device_id) FROM {{lake}} WHERE workspace_id = '{}' AND source = 'line-1'",
            ws["id"].as_str().expect("id")
        ),
    );
    assert_eq!(
        rows[0][0].as_i64(),
        Some(accepted.get()),
        "every accepted event is in Parquet once: {rows:?}"
    );
    assert_eq!(rows[0][1], "press-7");
}

/// The caller's workspaces.
fn workspaces_of(api: &Api, user: &User) -> Vec<Value> {
    let a = api.get("/api/v1/workspaces", &user.token);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_member_left_without_a_workspace_gets_a_fresh_one_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = api(&sluice);
    let mail = outbox(&sluice);
    let alice = verified_user(&api, &mail, "alice@example.com");
    let bob = verified_user(&api, &mail, "bob@example.com");
    let carol = verified_user(&api, &mail, "carol@example.com");
    let dave = verified_user(&api, &mail, "dave@example.com");
    create_workspace(&api, &alice, "Shared", "shared");
    create_workspace(&api, &alice, "Team", "team");
    add_member(&api, &mail, &alice, "shared", &bob, "editor");
    add_member(&api, &mail, &alice, "shared", &carol, "viewer");
    add_member(&api, &mail, &alice, "team", &dave, "viewer");
    // Bob and Dave delete the workspace they started with: Alice's is all they have.
    for user in [&bob, &dave] {
        let own = workspaces_of(&api, user)
            .into_iter()
            .find(|w| w["role"] == "admin")
            .expect("the first workspace");
        let a = api.delete(
            &format!("/api/v1/workspaces/{}", own["id"].as_str().expect("id")),
            &user.token,
        );
        assert_eq!(a.status, 204, "{}", a.body);
        assert_eq!(workspaces_of(&api, user).len(), 1);
    }
    let carols = workspaces_of(&api, &carol).len();

    // Deleting the shared workspace leaves Bob with none: he gets one of his own, as at
    // verification. Carol still has hers and gets nothing new.
    let a = api.delete("/api/v1/workspaces/shared", &alice.token);
    assert_eq!(a.status, 204, "{}", a.body);
    let bobs = workspaces_of(&api, &bob);
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(bobs[0]["role"], "admin");
    assert_eq!(bobs[0]["name"], "Test's workspace");
    assert_eq!(bobs[0]["enabled"], true);
    assert_eq!(bobs[0]["created_by"], bob.id.as_str());
    let a = api.post(
        &format!(
            "/api/v1/workspaces/{}/sources",
            bobs[0]["slug"].as_str().expect("slug")
        ),
        Some(&bob.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "he can use it: {}", a.body);
    assert_eq!(workspaces_of(&api, &carol).len(), carols - 1);

    // The same when an Admin removes a member from their only workspace.
    let a = api.delete(
        &format!("/api/v1/workspaces/team/members/{}", dave.id),
        &alice.token,
    );
    assert_eq!(a.status, 204, "{}", a.body);
    let daves = workspaces_of(&api, &dave);
    assert_eq!(daves.len(), 1, "{daves:?}");
    assert_eq!(daves[0]["role"], "admin");
    assert_ne!(daves[0]["slug"], bobs[0]["slug"], "each their own");
}

/// The value of the first `href="…"` in `html` that starts with `prefix`, unescaped.
fn href(html: &str, prefix: &str) -> String {
    let start = html
        .find(&format!("href=\"{prefix}"))
        .unwrap_or_else(|| panic!("a link to {prefix} in {html}"))
        + "href=\"".len();
    let end = start + html[start..].find('"').expect("end of the link");
    html[start..end].replace("&amp;", "&")
}

fn html_of(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    resp.body_mut().read_to_string().expect("html")
}

#[test]
fn an_invitee_without_an_account_signs_up_from_the_login_page_and_returns_to_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = api(&sluice);
    let mail = outbox(&sluice);
    let base = sluice.api_url();
    let alice = verified_user(&api, &mail, "alice@example.com");
    create_workspace(&api, &alice, "Crew", "crew");
    let a = api.post(
        "/api/v1/workspaces/crew/invitations",
        Some(&alice.token),
        json!({"email": "newbie@example.com", "role": "viewer"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let link = wait_mail(&mail, "newbie@example.com", "invited", 0).link();

    // The link sends a browser to sign in; the sign-in page links to sign-up, keeping `next`.
    let browser = manual_agent();
    let resp = browser.get(&link).call().expect("link");
    assert_eq!(resp.status().as_u16(), 303);
    let to_login = location(&resp);
    let next = url_decode(to_login.trim_start_matches("/login?next="));
    let mut page = browser
        .get(format!("{base}{to_login}"))
        .call()
        .expect("login page");
    let login_html = html_of(&mut page);
    let to_signup = href(&login_html, "/signup?");
    assert_eq!(
        url_decode(to_signup.trim_start_matches("/signup?next=")),
        next,
        "{to_signup}"
    );
    let mut page = browser
        .get(format!("{base}{to_signup}"))
        .call()
        .expect("sign-up page");
    assert_eq!(page.status().as_u16(), 200);
    let signup_html = html_of(&mut page);
    assert!(signup_html.contains("<form"), "{signup_html}");
    assert!(
        signup_html.contains(&format!(
            "name=\"next\" value=\"{}\"",
            next.replace('&', "&amp;")
        )),
        "{signup_html}"
    );

    // A refusal shows the form again with what was wrong.
    let password = "a long enough passphrase";
    let form = |password: &'static str| {
        vec![
            ("email", "newbie@example.com"),
            ("password", password),
            ("first_name", "New"),
            ("last_name", "Bie"),
            ("next", next.as_str()),
        ]
    };
    let mut weak = browser
        .post(format!("{base}/signup"))
        .send_form(form("short"))
        .expect("sign up");
    assert_eq!(weak.status().as_u16(), 400);
    let weak_html = html_of(&mut weak);
    assert!(
        weak_html.contains("<form") && weak_html.contains("characters"),
        "{weak_html}"
    );
    let mut signed_up = browser
        .post(format!("{base}/signup"))
        .send_form(form(password))
        .expect("sign up");
    assert_eq!(signed_up.status().as_u16(), 200);
    let verify_html = html_of(&mut signed_up);
    assert!(
        verify_html.contains("action=\"/signup/verify\""),
        "{verify_html}"
    );
    let code = wait_mail(&mail, "newbie@example.com", "verification code", 0).code();
    let resp = browser
        .post(format!("{base}/signup/verify"))
        .send_form([
            ("email", "newbie@example.com"),
            ("code", code.as_str()),
            ("next", next.as_str()),
        ])
        .expect("verify");
    assert_eq!(resp.status().as_u16(), 303);
    let to_login = location(&resp);
    assert_eq!(
        url_decode(to_login.trim_start_matches("/login?next=")),
        next,
        "{to_login}"
    );

    // A wrong password shows the sign-in form again, readable, not problem+json.
    let mut wrong = browser
        .post(format!("{base}/login"))
        .send_form([
            ("email", "newbie@example.com"),
            ("password", "not the password"),
            ("next", next.as_str()),
        ])
        .expect("login form");
    assert_eq!(wrong.status().as_u16(), 401);
    let wrong_html = html_of(&mut wrong);
    assert!(wrong_html.contains("<form"), "{wrong_html}");
    assert!(
        wrong_html.contains("wrong e-mail or password"),
        "{wrong_html}"
    );
    assert!(
        wrong_html.contains(&format!("value=\"{}\"", next.replace('&', "&amp;"))),
        "keeps next: {wrong_html}"
    );

    let resp = browser
        .post(format!("{base}/login"))
        .send_form([
            ("email", "newbie@example.com"),
            ("password", password),
            ("next", next.as_str()),
        ])
        .expect("login form");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(location(&resp), next);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_owned();
    let mut joined = browser
        .get(format!("{base}{next}"))
        .header("cookie", &cookie)
        .call()
        .expect("back at the link");
    assert_eq!(joined.status().as_u16(), 200);
    let joined: Value =
        serde_json::from_str(&joined.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(joined["slug"], "crew");
}
