//! Workspace SMTP against real SMTP servers (aiosmtpd, started by the tests on loopback):
//! mail through the workspace's own server and back to the platform's, STARTTLS and implicit
//! TLS with a test CA, authentication, failures with their SMTP errors, the encrypted password,
//! the 50-row delivery log and the roles.

mod common;

use std::path::Path;
use std::time::Duration;

use common::controlplane::{
    add_member, mails_to, read_mails_like_a_client, verified_user, wait_mail, wait_mail_file, Api,
    SmtpOptions, SmtpServer, User,
};
use common::{free_port, Answer, Sluice};
use serde_json::{json, Value};

/// The test servers listen on loopback, which workspace SMTP refuses unless allowed.
const PRIVATE: &str = "--smtp-allow-private-hosts";

fn assert_problem(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status, status, "expected {status} {kind}, got {}", a.body);
    assert_eq!(a.content_type, "application/problem+json", "{}", a.body);
    assert_eq!(a.problem(), kind, "{}", a.body);
}

fn workspace(api: &Api, user: &User, slug: &str) {
    let a = api.post(
        "/api/v1/workspaces",
        Some(&user.token),
        json!({"name": slug, "slug": slug}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
}

fn smtp_settings(server: &SmtpServer, security: &str, login: Option<(&str, &str)>) -> Value {
    let mut settings = json!({
        "host": "127.0.0.1",
        "port": server.port,
        "security": security,
        "from_address": "ops@acme.example",
        "from_name": "Acme Ops",
    });
    if let Some((user, password)) = login {
        settings["username"] = json!(user);
        settings["password"] = json!(password);
    }
    settings
}

/// Points workspace `acme` at a server that accepts one connection and says nothing for
/// `hold`; join the handle to wait until it lets go.
fn use_silent_server(api: &Api, admin: &User, hold: Duration) -> std::thread::JoinHandle<()> {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let conn = silent.accept().map(|(s, _)| s);
        std::thread::sleep(hold);
        drop(conn);
    });
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        json!({"host": "127.0.0.1", "port": port, "security": "none",
            "from_address": "ops@acme.example"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    held
}

fn test_send(api: &Api, user: &User, slug: &str, to: &str) -> Value {
    let a = api.post(
        &format!("/api/v1/workspaces/{slug}/smtp/test"),
        Some(&user.token),
        json!({"to": to}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

fn deliveries(api: &Api, user: &User, slug: &str) -> Vec<Value> {
    let a = api.get(
        &format!("/api/v1/workspaces/{slug}/email-deliveries"),
        &user.token,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["items"].as_array().cloned().unwrap_or_default()
}

fn file_contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).expect("file");
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn invitations_go_through_the_workspace_smtp_until_it_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platform = SmtpServer::start(&dir.path().join("platform"));
    let own = SmtpServer::start_with(
        &dir.path().join("own"),
        SmtpOptions {
            login: Some(("acme", "s3cret-smtp-password")),
            ..SmtpOptions::default()
        },
    );
    let mut sluice = Sluice::start(
        &dir.path().join("data"),
        &["--smtp-url", &platform.url(), PRIVATE],
    );
    let api = Api::new(sluice.api_url());
    let admin = verified_user(&api, &platform.maildir, "admin@acme.example");
    workspace(&api, &admin, "acme");

    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        smtp_settings(&own, "none", Some(("acme", "s3cret-smtp-password"))),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["password_set"], true);
    let read = api.get("/api/v1/workspaces/acme/smtp", &admin.token);
    assert_eq!(read.json()["password_set"], true);
    assert_eq!(read.json()["security"], "none");
    for body in [&a.body, &read.body] {
        assert!(
            !body.contains("s3cret"),
            "the password is never returned: {body}"
        );
    }
    // Pointing the settings elsewhere needs the password again, so nobody can send it to a
    // server of their own.
    let mut elsewhere = smtp_settings(&own, "none", None);
    elsewhere["port"] = json!(free_port());
    elsewhere["username"] = json!("acme");
    let refused = api.put("/api/v1/workspaces/acme/smtp", &admin.token, elsewhere);
    assert_problem(&refused, 400, "invalid-smtp-settings");
    assert!(
        refused.body.contains("password must be given again"),
        "{}",
        refused.body
    );
    assert_eq!(
        api.get("/api/v1/workspaces/acme/smtp", &admin.token).body,
        read.body,
        "nothing saved"
    );
    let mut renamed = smtp_settings(&own, "none", None);
    renamed["username"] = json!("acme");
    renamed["from_name"] = json!("Acme Operations");
    let a = api.put("/api/v1/workspaces/acme/smtp", &admin.token, renamed);
    assert_eq!(
        a.status, 200,
        "the same server keeps its password: {}",
        a.body
    );
    assert_eq!(a.json()["password_set"], true);

    // The password survives a restart (the key is kept in the data dir).
    sluice.stop();
    sluice.restart();
    let api = Api::new(sluice.api_url());
    let admin = User {
        token: api.sign_in(&admin.email, &admin.password),
        ..admin
    };
    assert!(
        !file_contains(
            &sluice.data_dir.join("controlplane.redb"),
            "s3cret-smtp-password"
        ),
        "the stored password is not readable in the redb file"
    );

    let invite = |email: &str| {
        let a = api.post(
            "/api/v1/workspaces/acme/invitations",
            Some(&admin.token),
            json!({"email": email, "role": "viewer"}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    };
    invite("bob@example.com");
    let mail = wait_mail(&own.maildir, "bob@example.com", "invited", 0);
    assert!(mail.from.contains("ops@acme.example"), "{mail:?}");
    assert!(mail.from.contains("Acme Operations"), "{mail:?}");
    assert!(mails_to(&platform.maildir, "bob@example.com", "invited").is_empty());

    assert_eq!(
        api.delete("/api/v1/workspaces/acme/smtp", &admin.token)
            .status,
        204
    );
    assert_problem(
        &api.get("/api/v1/workspaces/acme/smtp", &admin.token),
        404,
        "smtp-not-configured",
    );
    invite("carol@example.com");
    let mail = wait_mail(&platform.maildir, "carol@example.com", "invited", 0);
    assert!(!mail.from.contains("acme.example"), "{mail:?}");
    assert!(mails_to(&own.maildir, "carol@example.com", "invited").is_empty());

    // The attempt is recorded right after the server answers.
    assert!(common::wait_for(Duration::from_secs(5), || {
        deliveries(&api, &admin, "acme").len() == 2
    }));
    let log = deliveries(&api, &admin, "acme");
    let seen: Vec<(String, String, String, String)> = log
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (s("recipient"), s("purpose"), s("transport"), s("status"))
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "carol@example.com".into(),
                "invitation".into(),
                "platform_smtp".into(),
                "sent".into()
            ),
            (
                "bob@example.com".into(),
                "invitation".into(),
                "workspace_smtp".into(),
                "sent".into()
            ),
        ],
        "newest first"
    );
    assert!(!serde_json::to_string(&log)
        .expect("json")
        .contains("s3cret"));
}

#[test]
fn starttls_implicit_tls_and_authentication_against_real_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::controlplane::make_certs(dir.path());
    let cert = dir.path().join("server.pem");
    let login = Some(("mailer", "right-password"));
    let starttls = SmtpServer::start_with(
        &dir.path().join("starttls"),
        SmtpOptions {
            mode: Some("starttls"),
            cert: Some(cert.clone()),
            login,
            ..SmtpOptions::default()
        },
    );
    let implicit = SmtpServer::start_with(
        &dir.path().join("implicit"),
        SmtpOptions {
            mode: Some("tls"),
            cert: Some(cert),
            login,
            ..SmtpOptions::default()
        },
    );
    let ca = dir.path().join("ca.pem");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--smtp-ca-file", ca.to_str().expect("path"), PRIVATE],
    );
    let api = Api::new(sluice.api_url());
    let admin = verified_user(&api, &sluice.data_dir.join("outbox"), "admin@acme.example");
    workspace(&api, &admin, "acme");

    for (server, security) in [(&starttls, "starttls"), (&implicit, "tls")] {
        let put = |password: &str| {
            let a = api.put(
                "/api/v1/workspaces/acme/smtp",
                &admin.token,
                smtp_settings(server, security, Some(("mailer", password))),
            );
            assert_eq!(a.status, 200, "{}", a.body);
        };
        put("right-password");
        let to = format!("{security}@example.com");
        let sent = test_send(&api, &admin, "acme", &to);
        assert_eq!(
            sent["status"],
            "sent",
            "{security}: {sent}; server log: {}",
            std::fs::read_to_string(server.maildir.with_extension("log")).unwrap_or_default()
        );
        assert_eq!(sent["transport"], "workspace_smtp");
        let mail = wait_mail(&server.maildir, &to, "SMTP test", 0);
        assert!(mail.from.contains("ops@acme.example"), "{mail:?}");

        put("wrong-password");
        let failed = test_send(&api, &admin, "acme", &to);
        assert_eq!(failed["status"], "failed", "{security}: {failed}");
        for answer in [&sent, &failed] {
            assert!(!answer.to_string().contains("password"), "{answer}");
        }
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("authentication failed"),
            "{security}: {error}"
        );
    }

    // Implicit TLS against a server that speaks plain SMTP first fails in the handshake.
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        smtp_settings(&starttls, "tls", Some(("mailer", "right-password"))),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let failed = test_send(&api, &admin, "acme", "tls-mismatch@example.com");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("TLS failure"),
        "{failed}"
    );

    // A certificate from a CA nobody configured is refused.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    common::controlplane::make_certs(&other);
    let untrusted = SmtpServer::start_with(
        &dir.path().join("untrusted"),
        SmtpOptions {
            mode: Some("tls"),
            cert: Some(other.join("server.pem")),
            ..SmtpOptions::default()
        },
    );
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        smtp_settings(&untrusted, "tls", None),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let failed = test_send(&api, &admin, "acme", "untrusted@example.com");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("TLS failure"),
        "{failed}"
    );
    assert!(mails_to(&untrusted.maildir, "untrusted@example.com", "").is_empty());

    // STARTTLS is required, not hoped for: a server without it is refused.
    let plain = SmtpServer::start(&dir.path().join("plain"));
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        smtp_settings(&plain, "starttls", None),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let failed = test_send(&api, &admin, "acme", "downgrade@example.com");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(mails_to(&plain.maildir, "downgrade@example.com", "").is_empty());
}

#[test]
fn failures_are_logged_with_their_smtp_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let picky = SmtpServer::start_with(
        &dir.path().join("picky"),
        SmtpOptions {
            reject_domain: Some("blocked.example"),
            ..SmtpOptions::default()
        },
    );
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[controlplane]\nsmtp_timeout_ms = 1000\n").expect("config");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("path"), PRIVATE],
    );
    let api = Api::new(sluice.api_url());
    let admin = verified_user(&api, &sluice.data_dir.join("outbox"), "admin@acme.example");
    workspace(&api, &admin, "acme");

    // Server down: nothing listens on the port.
    let down = json!({"host": "127.0.0.1", "port": free_port(), "security": "none",
        "from_address": "ops@acme.example"});
    assert_eq!(
        api.put("/api/v1/workspaces/acme/smtp", &admin.token, down)
            .status,
        200
    );
    let failed = test_send(&api, &admin, "acme", "someone@example.com");
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("connection failed"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");

    // A server that accepts the connection and never answers: the send gives up in time.
    let held = use_silent_server(&api, &admin, Duration::from_secs(3));
    let started = std::time::Instant::now();
    let timed_out = test_send(&api, &admin, "acme", "someone@example.com");
    assert_eq!(timed_out["status"], "failed");
    assert!(
        timed_out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{timed_out}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "bounded by smtp_timeout_ms (1 s here), took {:?}",
        started.elapsed()
    );
    let _ = held.join();

    // Recipient refused.
    assert_eq!(
        api.put(
            "/api/v1/workspaces/acme/smtp",
            &admin.token,
            smtp_settings(&picky, "none", None)
        )
        .status,
        200
    );
    let refused = test_send(&api, &admin, "acme", "nobody@blocked.example");
    assert_eq!(refused["status"], "failed");
    let refused_error = refused["error"].as_str().unwrap_or_default().to_owned();
    assert!(refused_error.contains("550"), "{refused_error}");
    assert!(refused_error.contains("refused"), "{refused_error}");
    let fine = test_send(&api, &admin, "acme", "somebody@fine.example");
    assert_eq!(fine["status"], "sent", "{fine}");

    let log = deliveries(&api, &admin, "acme");
    assert_eq!(log.len(), 4);
    assert_eq!(log[0]["status"], "sent");
    assert_eq!(log[1]["error"].as_str(), Some(refused_error.as_str()));
    assert_eq!(log[2]["error"], timed_out["error"]);
    assert_eq!(log[3]["error"].as_str(), Some(error.as_str()));
    assert!(log.iter().all(|d| d["purpose"] == "smtp_test"));

    // Each bad field gets its own clear refusal, and nothing is saved.
    let before = api.get("/api/v1/workspaces/acme/smtp", &admin.token).body;
    for (settings, needle) in [
        (
            json!({"host": "bad host!", "port": 25, "security": "none", "from_address": "a@b.example"}),
            "host",
        ),
        (
            json!({"host": "mail.example", "port": 0, "security": "none", "from_address": "a@b.example"}),
            "port",
        ),
        (
            json!({"host": "mail.example", "port": 25, "security": "none", "from_address": "not-an-address"}),
            "from_address",
        ),
        (
            json!({"host": "mail.example", "port": 25, "security": "none", "from_address": "a@b.example", "password": "x"}),
            "username",
        ),
    ] {
        let a = api.put("/api/v1/workspaces/acme/smtp", &admin.token, settings);
        assert_problem(&a, 400, "invalid-smtp-settings");
        assert!(a.body.contains(needle), "{needle}: {}", a.body);
    }
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        json!({"host": "mail.example", "port": 25, "security": "ssl", "from_address": "a@b.example"}),
    );
    assert_problem(&a, 400, "invalid-body");
    assert!(a.body.contains("starttls"), "names the choices: {}", a.body);
    assert_eq!(
        api.get("/api/v1/workspaces/acme/smtp", &admin.token).body,
        before
    );
}

#[test]
fn the_delivery_log_keeps_the_50_newest_and_follows_the_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[controlplane]\nsmtp_tests_per_workspace_per_hour = 100\n",
    )
    .expect("config");
    let server = SmtpServer::start(&dir.path().join("own"));
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("path"), PRIVATE],
    );
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let admin = verified_user(&api, &outbox, "admin@acme.example");
    let editor = verified_user(&api, &outbox, "editor@acme.example");
    let viewer = verified_user(&api, &outbox, "viewer@acme.example");
    let outsider = verified_user(&api, &outbox, "outsider@acme.example");
    workspace(&api, &admin, "acme");
    add_member(&api, &outbox, &admin, "acme", &editor, "editor");
    add_member(&api, &outbox, &admin, "acme", &viewer, "viewer");

    let settings = smtp_settings(&server, "none", None);
    let smtp = "/api/v1/workspaces/acme/smtp";
    // Viewers read, Editors and Admins change; outsiders see nothing.
    assert_problem(
        &api.put(smtp, &viewer.token, settings.clone()),
        403,
        "insufficient-role",
    );
    assert_problem(
        &api.put(smtp, &outsider.token, settings.clone()),
        404,
        "unknown-workspace",
    );
    assert_problem(
        &api.call("PUT", smtp, None, Some(&settings)),
        401,
        "unauthenticated",
    );
    assert_eq!(api.put(smtp, &editor.token, settings.clone()).status, 200);
    assert_eq!(api.get(smtp, &viewer.token).status, 200);
    assert_problem(&api.get(smtp, &outsider.token), 404, "unknown-workspace");
    assert_problem(
        &api.post(
            &format!("{smtp}/test"),
            Some(&viewer.token),
            json!({"to": "x@example.com"}),
        ),
        403,
        "insufficient-role",
    );
    assert_problem(&api.delete(smtp, &viewer.token), 403, "insufficient-role");
    assert_eq!(
        api.get("/api/v1/workspaces/acme/email-deliveries", &viewer.token)
            .status,
        200
    );
    assert_problem(
        &api.get("/api/v1/workspaces/acme/email-deliveries", &outsider.token),
        404,
        "unknown-workspace",
    );

    for n in 0..55 {
        let sender = if n % 2 == 0 { &admin } else { &editor };
        let sent = test_send(&api, sender, "acme", &format!("r{n:02}@example.com"));
        assert_eq!(sent["status"], "sent", "{sent}");
    }
    let log = deliveries(&api, &viewer, "acme");
    let recipients: Vec<&str> = log.iter().filter_map(|d| d["recipient"].as_str()).collect();
    let expected: Vec<String> = (5..55)
        .rev()
        .map(|n| format!("r{n:02}@example.com"))
        .collect();
    assert_eq!(recipients, expected, "the 50 newest, newest first");

    // The log pages like every list: `limit` items a page, `next_cursor` to the next one.
    let mut paged: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=5&cursor={c}"),
            None => "?limit=5".to_owned(),
        };
        let a = api.get(
            &format!("/api/v1/workspaces/acme/email-deliveries{query}"),
            &viewer.token,
        );
        assert_eq!(a.status, 200, "{}", a.body);
        let page = a.json();
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 5, "limit=5 gives at most 5: {}", a.body);
        paged.extend(
            items
                .iter()
                .filter_map(|d| d["recipient"].as_str().map(str::to_owned)),
        );
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 20, "paging ends");
    }
    assert_eq!(pages, 10, "50 deliveries in pages of 5");
    assert_eq!(
        paged, expected,
        "the pages hold the 50 newest, newest first"
    );
    assert_problem(
        &api.get(
            "/api/v1/workspaces/acme/email-deliveries?limit=0",
            &viewer.token,
        ),
        400,
        "invalid-query",
    );
    assert_eq!(api.delete(smtp, &editor.token).status, 204);
}

/// The text a mail client shows for `mail` (JSON from `read_mails_like_a_client`).
fn text_of(mail: &Value) -> String {
    mail["text"].as_str().unwrap_or_default().to_owned()
}

/// The first `http://` link in `text`.
fn link_in(text: &str) -> String {
    let start = text.find("http://").expect("a link in the text");
    text[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn invitation_and_code_mails_are_complete_mime_messages_whose_links_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let own = SmtpServer::start(&dir.path().join("own"));
    // No platform SMTP server: codes and the invitations of `plain` go to the outbox.
    let sluice = Sluice::start(&dir.path().join("data"), &[PRIVATE]);
    let api = Api::new(sluice.api_url());
    let outbox = sluice.data_dir.join("outbox");
    let admin = verified_user(&api, &outbox, "admin@acme.example");
    let olga = verified_user(&api, &outbox, "olga@example.com");
    let piet = verified_user(&api, &outbox, "piet@example.com");
    // A name that must be escaped in HTML.
    let a = api.post(
        "/api/v1/workspaces",
        Some(&admin.token),
        json!({"name": "Acme <R&D>", "slug": "acme"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    workspace(&api, &admin, "plain");
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        smtp_settings(&own, "none", None),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    for (slug, user) in [("acme", &olga), ("plain", &piet)] {
        let a = api.post(
            &format!("/api/v1/workspaces/{slug}/invitations"),
            Some(&admin.token),
            json!({"email": user.email, "role": "editor"}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let sent = wait_mail_file(&own.maildir, &olga.email, "invited", 0);
    let outboxed = wait_mail_file(&outbox, &piet.email, "invited", 0);
    let code = wait_mail_file(&outbox, &admin.email, "verification code", 0);
    let mails = read_mails_like_a_client(&[sent, outboxed, code]);

    for mail in &mails {
        assert_eq!(mail["mime_version"], "1.0", "{mail:#}");
        assert_eq!(mail["content_type"], "multipart/alternative", "{mail:#}");
        assert_eq!(mail["defects"], json!([]), "{mail:#}");
        let parts = mail["parts"].as_array().expect("parts");
        let types: Vec<&str> = parts
            .iter()
            .filter_map(|p| p["content_type"].as_str())
            .collect();
        assert_eq!(types, ["text/plain", "text/html"], "{mail:#}");
        for part in parts {
            assert_eq!(part["charset"], "utf-8", "{part:#}");
            let encoding = part["transfer_encoding"].as_str().unwrap_or_default();
            assert!(
                ["7bit", "8bit", "quoted-printable", "base64"].contains(&encoding),
                "an explicit transfer encoding: {part:#}"
            );
        }
    }

    // The invitations: the link in the text works, the HTML links to the same place.
    for (mail, user, slug) in [(&mails[0], &olga, "acme"), (&mails[1], &piet, "plain")] {
        let text = text_of(mail);
        let link = link_in(&text);
        assert!(
            link.starts_with(&format!("{}/invitations/accept?token=", sluice.api_url())),
            "{text}"
        );
        let html = mail["html"].as_str().unwrap_or_default();
        assert!(
            html.contains(&format!("<a href=\"{link}\">")),
            "a real link in the HTML: {html}"
        );
        let token = link.split("token=").nth(1).expect("token");
        assert_eq!(token.len(), 36, "a whole token: {link}");
        let a = api.get(link.trim_start_matches(&sluice.api_url()), &user.token);
        assert_eq!(a.status, 200, "the accept link works: {}", a.body);
        assert_eq!(a.json()["slug"], slug, "{}", a.body);
    }
    let acme_html = mails[0]["html"].as_str().unwrap_or_default();
    assert!(
        acme_html.contains("Acme &lt;R&amp;D&gt;") && !acme_html.contains("<R&D>"),
        "names are escaped in HTML: {acme_html}"
    );
    assert!(
        text_of(&mails[0]).contains("Acme <R&D>"),
        "and shown as they are in the text"
    );

    // The code mail: the code is in both parts.
    let text = text_of(&mails[2]);
    let digits = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("a code in {text}"));
    assert!(
        mails[2]["html"]
            .as_str()
            .unwrap_or_default()
            .contains(digits),
        "{:#}",
        mails[2]
    );
}

#[test]
fn rotating_the_secret_key_keeps_stored_passwords_working() {
    const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SmtpServer::start_with(
        &dir.path().join("own"),
        SmtpOptions {
            login: Some(("acme", "rotate-me")),
            ..SmtpOptions::default()
        },
    );
    let mut sluice = Sluice::start(&dir.path().join("data"), &["--secret-key", OLD, PRIVATE]);
    let api = Api::new(sluice.api_url());
    let admin = verified_user(&api, &sluice.data_dir.join("outbox"), "admin@acme.example");
    workspace(&api, &admin, "acme");
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        smtp_settings(&server, "none", Some(("acme", "rotate-me"))),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let send = |sluice: &Sluice, n: usize| {
        let api = Api::new(sluice.api_url());
        let token = api.sign_in(&admin.email, &admin.password);
        let user = User {
            token,
            ..admin.clone()
        };
        test_send(&api, &user, "acme", &format!("r{n}@example.com"))
    };
    assert_eq!(send(&sluice, 1)["status"], "sent");

    // New key, old key as previous: the password opens and is sealed again with the new key.
    sluice.stop();
    sluice.args = vec![
        "--secret-key".into(),
        NEW.into(),
        "--previous-secret-keys".into(),
        OLD.into(),
        PRIVATE.into(),
    ];
    sluice.restart();
    assert_eq!(send(&sluice, 2)["status"], "sent");
    // The old key can go now.
    sluice.stop();
    sluice.args = vec!["--secret-key".into(), NEW.into(), PRIVATE.into()];
    sluice.restart();
    assert_eq!(send(&sluice, 3)["status"], "sent");
    // A wrong key does not stop the control plane; the workspace's mail fails and says why.
    sluice.stop();
    sluice.args = vec!["--secret-key".into(), OLD.into(), PRIVATE.into()];
    sluice.restart();
    let failed = send(&sluice, 4);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("password cannot be read"),
        "{failed}"
    );
}

#[test]
fn a_workspace_server_on_a_private_address_is_refused_unless_the_operator_allows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let internal = SmtpServer::start(&dir.path().join("internal"));
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let admin = verified_user(&api, &sluice.data_dir.join("outbox"), "admin@acme.example");
    workspace(&api, &admin, "acme");
    for host in ["127.0.0.1", "localhost"] {
        let mut settings = smtp_settings(&internal, "none", None);
        settings["host"] = json!(host);
        let a = api.put("/api/v1/workspaces/acme/smtp", &admin.token, settings);
        assert_eq!(a.status, 200, "{}", a.body);
        let failed = test_send(&api, &admin, "acme", "probe@example.com");
        assert_eq!(failed["status"], "failed", "{host}: {failed}");
        assert!(
            failed["error"]
                .as_str()
                .unwrap_or_default()
                .contains("non-public address"),
            "{host}: {failed}"
        );
    }
    assert!(mails_to(&internal.maildir, "probe@example.com", "").is_empty());
}

#[test]
fn a_full_mail_queue_refuses_the_request_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[controlplane]\nmail_queue_max = 1\nsmtp_timeout_ms = 3000\n",
    )
    .expect("config");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("path"), PRIVATE],
    );
    let api = Api::new(sluice.api_url());
    let admin = verified_user(&api, &sluice.data_dir.join("outbox"), "admin@acme.example");
    workspace(&api, &admin, "acme");
    // A workspace server that accepts and never answers holds the only place in the queue.
    let held = use_silent_server(&api, &admin, Duration::from_secs(4));
    let invite = |email: &str| {
        api.post(
            "/api/v1/workspaces/acme/invitations",
            Some(&admin.token),
            json!({"email": email, "role": "viewer"}),
        )
    };
    assert_eq!(invite("first@example.com").status, 201);
    let refused = invite("second@example.com");
    assert_problem(&refused, 503, "mail-unavailable");
    assert!(refused.retry_after.is_some(), "503 says when to retry");
    let pending = api.get("/api/v1/workspaces/acme/invitations", &admin.token);
    assert!(
        !pending.body.contains("second@example.com"),
        "the refused invitation was not stored: {}",
        pending.body
    );
    let _ = held.join();
    // Once the stuck send gave up, the queue takes mail again.
    assert!(common::wait_for(Duration::from_secs(10), || {
        invite("third@example.com").status == 201
    }));
}
