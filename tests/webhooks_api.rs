//! Webhook subscriptions through the control-plane API, against a real `sluice up`: create,
//! read, change, rotate and delete; the signing secret shown once and travelling to the node
//! sealed with the cluster secret; URLs refused for `http://` and private addresses unless the
//! operator allows private hosts; roles; a signed test delivery to a receiver that verifies the
//! Standard Webhooks signature; nodes' delivery reports in the delivery and failure logs; and
//! a webhook that fails past `disable_after_s` disabled, with a mail to the workspace's Admins
//! through the workspace's own SMTP server (aiosmtpd).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::controlplane::{add_member, verified_user, wait_mail, Api, SmtpServer, User};
use common::{post, wait_for, Answer, Sluice};
use serde_json::{json, Value};
use sluice_config::webhook_signature::Signer;

const WEBHOOKS: &str = "/api/v1/workspaces/plant/webhooks";
const SECRET: &str = "test-cluster-secret-for-webhooks";
/// The operator's override: private receivers (and SMTP servers) allowed.
const PRIVATE: &str = "--smtp-allow-private-hosts";
/// A public address literal: accepted without resolving anything (nothing is sent to it).
const PUBLIC_URL: &str = "https://93.184.216.34/hooks/sluice";

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

/// A user with workspace `plant`, its source `telemetry` and output `hot`.
fn setup(sluice: &Sluice) -> (Api, User) {
    let api = Api::new(sluice.api_url());
    let jo = verified_user(&api, &sluice.data_dir.join("outbox"), "jo@example.com");
    for (path, body) in [
        (
            "/api/v1/workspaces",
            json!({"name": "Plant", "slug": "plant"}),
        ),
        (
            "/api/v1/workspaces/plant/sources",
            json!({"slug": "telemetry"}),
        ),
        (
            "/api/v1/workspaces/plant/outputs",
            json!({"slug": "hot", "source": "telemetry"}),
        ),
    ] {
        let a = api.post(path, Some(&jo.token), body);
        assert_eq!(a.status, 201, "{path}: {}", a.body);
    }
    (api, jo)
}

/// Plant's webhook `slug` as the node's configuration file carries it, once it does and
/// `check` holds.
fn in_snapshot(sluice: &Sluice, slug: &str, check: impl Fn(&Value) -> bool) -> Value {
    let path = sluice.data_dir.join("config-snapshot.json");
    let mut seen = Value::Null;
    let found = wait_for(Duration::from_secs(10), || {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return false;
        };
        let snapshot: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let version = snapshot["version"].as_u64().unwrap_or(u64::MAX);
        seen = snapshot["workspaces"]
            .as_array()
            .and_then(|all| all.iter().find(|w| w["slug"] == "plant"))
            .and_then(|w| w["webhooks"].as_array())
            .and_then(|all| all.iter().find(|h| h["slug"] == slug))
            .cloned()
            .unwrap_or(Value::Null);
        // The node validated and applied that version (or a later one).
        check(&seen)
            && sluice.readyz()["config_version"]
                .as_u64()
                .is_some_and(|v| v >= version)
    });
    assert!(
        found,
        "webhook {slug} did not reach the node as expected: {seen}"
    );
    seen
}

fn opened(cluster_secret: &str, webhook: &Value) -> String {
    sluice_config::sealed::open(
        cluster_secret,
        webhook["secret_sealed"].as_str().expect("secret_sealed"),
    )
    .expect("the sealed secret opens with the cluster secret")
}

#[test]
fn webhooks_keep_their_secret_shown_once_reach_the_node_sealed_and_refuse_private_receivers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No cluster secret given: `sluice up` makes one, in the data dir.
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let cluster_secret = std::fs::read_to_string(sluice.data_dir.join("cluster-secret"))
        .expect("sluice up made a cluster secret");
    let (api, jo) = setup(&sluice);
    let outbox = sluice.data_dir.join("outbox");

    // Receivers must be public and https, unless the operator allows private hosts.
    for (url, kind) in [
        ("http://93.184.216.34/in", "invalid-webhook"),
        ("http://127.0.0.1:9000/in", "invalid-webhook"),
        ("https://127.0.0.1/in", "address-not-allowed"),
        ("https://[::ffff:10.0.0.1]/in", "address-not-allowed"),
        ("https://localhost:8443/in", "address-not-allowed"),
        ("https://no-such-host.invalid/in", "invalid-webhook"),
        ("https://user:pw@93.184.216.34/in", "invalid-webhook"),
    ] {
        let a = api.post(
            WEBHOOKS,
            Some(&jo.token),
            json!({"slug": "alerts", "output": "hot", "url": url}),
        );
        assert_problem(&a, 400, kind);
    }
    let a = api.post(
        WEBHOOKS,
        Some(&jo.token),
        json!({"slug": "alerts", "output": "cold", "url": PUBLIC_URL}),
    );
    assert_problem(&a, 400, "unknown-output");
    let a = api.post(
        WEBHOOKS,
        Some(&jo.token),
        json!({"slug": "alerts", "output": "hot", "url": PUBLIC_URL, "disable_after_s": 59}),
    );
    assert_problem(&a, 400, "invalid-webhook");

    let created = api.post(
        WEBHOOKS,
        Some(&jo.token),
        json!({"slug": "alerts", "name": "Alerts", "output": "hot", "url": PUBLIC_URL}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let view = created.json();
    let secret = view["secret"]
        .as_str()
        .expect("the secret, once")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(view["status"], "active");
    assert_eq!(view["enabled"], true);
    assert_eq!(view["batch_events_max"], 500);
    assert_eq!(view["batch_bytes_max"], 1 << 20);
    assert_eq!(view["batch_interval_ms"], 1000);
    assert_eq!(view["disable_after_s"], 86_400);
    assert_eq!(view["failing_since"], Value::Null);
    assert_problem(
        &api.post(
            WEBHOOKS,
            Some(&jo.token),
            json!({"slug": "alerts", "output": "hot", "url": PUBLIC_URL}),
        ),
        409,
        "webhook-exists",
    );

    // Never again: not in the list, one webhook, or a change.
    let list = api.get(WEBHOOKS, &jo.token);
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json()["items"][0]["slug"], "alerts");
    let one = api.get(&format!("{WEBHOOKS}/alerts"), &jo.token);
    assert_eq!(one.json()["name"], "Alerts");
    let changed = api.patch(
        &format!("{WEBHOOKS}/alerts"),
        &jo.token,
        json!({"batch_events_max": 100, "batch_interval_ms": 250}),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    for body in [&list.body, &one.body, &changed.body] {
        assert!(
            !body.contains("whsec_") && !body.contains("\"secret\""),
            "{body}"
        );
    }
    assert_problem(
        &api.patch(
            &format!("{WEBHOOKS}/alerts"),
            &jo.token,
            json!({"batch_bytes_max": 10}),
        ),
        400,
        "invalid-webhook",
    );
    assert_problem(
        &api.patch(
            &format!("{WEBHOOKS}/alerts"),
            &jo.token,
            json!({"url": "https://10.9.8.7/in"}),
        ),
        400,
        "address-not-allowed",
    );
    assert_problem(
        &api.get(&format!("{WEBHOOKS}/nope"), &jo.token),
        404,
        "unknown-webhook",
    );

    // The node gets it, its secret sealed with the cluster secret.
    let pushed = in_snapshot(&sluice, "alerts", |w| w["batch_events_max"] == 100);
    assert_eq!(pushed["url"], PUBLIC_URL);
    assert_eq!(pushed["output"], "hot");
    assert_eq!(pushed["batch_interval_ms"], 250);
    assert!(!pushed.to_string().contains(&secret), "sealed, never clear");
    assert_eq!(opened(&cluster_secret, &pushed), secret);

    // A rotation shows the new secret once; the node gets it.
    let rotated = api.post(
        &format!("{WEBHOOKS}/alerts/rotate-secret"),
        Some(&jo.token),
        json!({}),
    );
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_secret = rotated.json()["secret"].as_str().expect("new").to_owned();
    assert_ne!(new_secret, secret);
    let pushed = in_snapshot(&sluice, "alerts", |w| {
        w["secret_sealed"]
            .as_str()
            .and_then(|s| sluice_config::sealed::open(&cluster_secret, s).ok())
            .is_some_and(|s| s != secret)
    });
    assert_eq!(opened(&cluster_secret, &pushed), new_secret);

    // Roles: Admins and Editors manage, Viewers read.
    let vi = verified_user(&api, &outbox, "vi@example.com");
    let ed = verified_user(&api, &outbox, "ed@example.com");
    add_member(&api, &outbox, &jo, "plant", &vi, "viewer");
    add_member(&api, &outbox, &jo, "plant", &ed, "editor");
    assert_eq!(api.get(WEBHOOKS, &vi.token).status, 200);
    assert_eq!(
        api.get(&format!("{WEBHOOKS}/alerts/deliveries"), &vi.token)
            .status,
        200
    );
    for a in [
        api.post(
            WEBHOOKS,
            Some(&vi.token),
            json!({"slug": "viewer-made", "output": "hot", "url": PUBLIC_URL}),
        ),
        api.patch(
            &format!("{WEBHOOKS}/alerts"),
            &vi.token,
            json!({"name": "x"}),
        ),
        api.post(
            &format!("{WEBHOOKS}/alerts/test"),
            Some(&vi.token),
            json!({}),
        ),
        api.post(
            &format!("{WEBHOOKS}/alerts/rotate-secret"),
            Some(&vi.token),
            json!({}),
        ),
        api.delete(&format!("{WEBHOOKS}/alerts"), &vi.token),
    ] {
        assert_problem(&a, 403, "insufficient-role");
    }
    let by_editor = api.post(
        WEBHOOKS,
        Some(&ed.token),
        json!({"slug": "audit", "output": "hot", "url": PUBLIC_URL, "enabled": false}),
    );
    assert_eq!(by_editor.status, 201, "{}", by_editor.body);
    assert_eq!(by_editor.json()["status"], "disabled");

    // The output stays while webhooks deliver it.
    let a = api.delete("/api/v1/workspaces/plant/outputs/hot", &jo.token);
    assert_problem(&a, 409, "in-use");
    assert!(
        a.body.contains("alerts") && a.body.contains("audit"),
        "{}",
        a.body
    );
    for slug in ["alerts", "audit"] {
        let a = api.delete(&format!("{WEBHOOKS}/{slug}"), &ed.token);
        assert_eq!(a.status, 204, "{}", a.body);
    }
    assert_problem(
        &api.get(&format!("{WEBHOOKS}/alerts"), &jo.token),
        404,
        "unknown-webhook",
    );
    let a = api.delete("/api/v1/workspaces/plant/outputs/hot", &jo.token);
    assert_eq!(a.status, 204, "{}", a.body);
}

/// One request a receiver got: its headers (lower-cased names) and body.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// A webhook receiver on loopback: answers each request with the next of `statuses` and
/// passes what it got on.
fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hooks/in", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for status in statuses {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).expect("request line");
            loop {
                line.clear();
                reader.read_line(&mut line).expect("header");
                let trimmed = line.trim_end();
                if trimmed.is_empty() {
                    break;
                }
                if let Some((name, value)) = trimmed.split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let answer_body = if status < 300 { "" } else { "nope" };
            let answer = format!(
                "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer_body}",
                answer_body.len()
            );
            let _ = reader.get_mut().write_all(answer.as_bytes());
            let _ = tx.send(Received { headers, body });
        }
    });
    (url, rx)
}

/// RFC 3339 (UTC, seconds) of `seconds_ago` before now.
fn rfc3339_ago(seconds_ago: u64) -> String {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - seconds_ago;
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn report(api: &Api, secret: &str, body: &Value) -> Answer {
    post(
        &format!("{}/api/v1/cluster/webhook-attempts", api.base),
        &[
            ("authorization", &format!("Bearer {secret}")),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn attempt(webhook_id: &str, seconds_ago: u64, outcome: &str, status: Option<u16>) -> Value {
    json!({
        "webhook_id": webhook_id,
        "at": rfc3339_ago(seconds_ago),
        "outcome": outcome,
        "status": status,
        "events": 20,
        "first_event_id": "0193a4b0-0000-7000-8000-000000000001",
        "last_event_id": "0193a4b0-0000-7000-8000-000000000014",
        "duration_ms": 31,
        "error": status.filter(|s| *s >= 300).map(|s| format!("the receiver answered {s}")),
        "webhook_message_id": format!("msg_{seconds_ago}"),
    })
}

fn items(api: &Api, user: &User, path: &str) -> Vec<Value> {
    let a = api.get(path, &user.token);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_signed_test_delivery_reports_and_a_webhook_failing_too_long_disabled_with_mail_to_admins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start(&dir.path().join("own-smtp"));
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--cluster-secret", SECRET, PRIVATE],
    );
    let (api, jo) = setup(&sluice);
    let outbox = sluice.data_dir.join("outbox");
    let ed = verified_user(&api, &outbox, "ed@example.com");
    add_member(&api, &outbox, &jo, "plant", &ed, "editor");
    // The workspace's own mail server: the disabling mail goes through it.
    let a = api.put(
        "/api/v1/workspaces/plant/smtp",
        &jo.token,
        json!({"host": "127.0.0.1", "port": smtp.port, "security": "none",
            "from_address": "ops@plant.example"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);

    // With the operator's override, an http:// receiver on loopback is accepted.
    let (url, received) = receiver(vec![204, 410]);
    let created = api.post(
        WEBHOOKS,
        Some(&ed.token),
        json!({"slug": "alerts", "output": "hot", "url": url, "disable_after_s": 60}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.json()["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let pushed = in_snapshot(&sluice, "alerts", |w| !w.is_null());
    assert_eq!(pushed["allow_private"], true);
    assert_eq!(opened(SECRET, &pushed), secret);

    // A test delivery, signed as Standard Webhooks says, checked with the creation's secret.
    let test = api.post(
        &format!("{WEBHOOKS}/alerts/test"),
        Some(&ed.token),
        json!({}),
    );
    assert_eq!(test.status, 200, "{}", test.body);
    let outcome = test.json();
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["status"], 204);
    assert_eq!(outcome["error"], Value::Null);
    let got = received
        .recv_timeout(Duration::from_secs(10))
        .expect("the receiver got the test");
    let batch: Value = serde_json::from_slice(&got.body).expect("a JSON body");
    assert_eq!(batch[0]["test"], true);
    assert_eq!(batch[0]["webhook"], "alerts");
    assert!(batch[0]["sent_at"].is_string(), "{batch}");
    assert_eq!(got.header("content-type"), "application/json");
    let message_id = got.header("webhook-id");
    assert_eq!(message_id, outcome["webhook_message_id"]);
    let timestamp: i64 = got
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    let expected = Signer::new(&secret)
        .expect("the creation's secret")
        .sign(message_id, timestamp, &got.body);
    assert!(
        got.header("webhook-signature")
            .split(' ')
            .any(|s| s == expected),
        "signature {} is not {expected}",
        got.header("webhook-signature")
    );
    // A 4xx: not delivered, and nodes would give the batch up.
    let test = api.post(
        &format!("{WEBHOOKS}/alerts/test"),
        Some(&jo.token),
        json!({}),
    );
    assert_eq!(test.json()["ok"], false, "{}", test.body);
    assert_eq!(test.json()["status"], 410);
    assert_eq!(test.json()["outcome"], "failed");
    assert!(
        test.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("410"),
        "{}",
        test.body
    );
    let log = items(&api, &jo, &format!("{WEBHOOKS}/alerts/deliveries"));
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log
        .iter()
        .all(|a| a["test"] == true && a["node"] == "control-plane"));
    assert_eq!(log[0]["status"], 410, "newest first");

    // Reports need the cluster secret.
    let body = json!({"node": "node-a", "attempts": [attempt(&id, 300, "delivered", Some(200))]});
    assert_problem(&report(&api, "wrong-secret", &body), 401, "unauthenticated");
    let a = report(&api, SECRET, &body);
    assert_eq!(a.status, 204, "{}", a.body);
    let too_many: Vec<Value> = (0..1001)
        .map(|_| attempt(&id, 1, "delivered", Some(200)))
        .collect();
    assert_problem(
        &report(
            &api,
            SECRET,
            &json!({"node": "node-a", "attempts": too_many}),
        ),
        400,
        "invalid-body",
    );
    let log = items(&api, &jo, &format!("{WEBHOOKS}/alerts/deliveries"));
    let from_node: Vec<&Value> = log.iter().filter(|a| a["node"] == "node-a").collect();
    assert_eq!(from_node.len(), 1, "{log:?}");
    assert_eq!(from_node[0]["events"], 20);
    assert_eq!(from_node[0]["outcome"], "delivered");
    assert_eq!(from_node[0]["webhook_message_id"], "msg_300");

    // Two nodes fail for longer than disable_after_s (60 s): the webhook is disabled, judged
    // by the attempts' times.
    let a = report(
        &api,
        SECRET,
        &json!({"node": "node-b", "attempts": [attempt(&id, 30, "retrying", Some(503))]}),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    let one = api.get(&format!("{WEBHOOKS}/alerts"), &jo.token).json();
    assert_eq!(one["status"], "active", "{one}");
    assert!(one["failing_since"].is_string(), "{one}");
    let a = report(
        &api,
        SECRET,
        &json!({"node": "node-a", "attempts": [
            attempt(&id, 90, "failed", Some(400)),
            attempt(&id, 0, "retrying", None),
        ]}),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    let one = api.get(&format!("{WEBHOOKS}/alerts"), &jo.token).json();
    assert_eq!(one["status"], "disabled", "{one}");
    assert_eq!(one["enabled"], false);
    let reason = one["disabled_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("failing since "), "{reason}");
    assert!(one["disabled_at"].is_string(), "{one}");
    let failures = items(&api, &jo, &format!("{WEBHOOKS}/alerts/failures"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["status"], 400);
    assert_eq!(failures[0]["node"], "node-a");
    assert_eq!(
        items(&api, &jo, &format!("{WEBHOOKS}/alerts/deliveries")).len(),
        6
    );
    // Nodes stop it, and the Admin (not the Editor) is told through the workspace's server.
    in_snapshot(&sluice, "alerts", |w| w["enabled"] == false);
    let mail = wait_mail(&smtp.maildir, &jo.email, "disabled", 0);
    assert!(mail.subject.contains("alerts"), "{}", mail.subject);
    assert!(mail.body.contains("failing since"), "{}", mail.body);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        common::controlplane::mails_to(&smtp.maildir, &ed.email, "disabled").is_empty(),
        "Editors are not mailed"
    );
    let sent = items(&api, &jo, "/api/v1/workspaces/plant/email-deliveries");
    assert!(
        sent.iter()
            .any(|d| d["purpose"] == "webhook_disabled" && d["transport"] == "workspace_smtp"),
        "{sent:?}"
    );

    // Enabled again: healthy until new failures, which older reports are not.
    let a = api.patch(
        &format!("{WEBHOOKS}/alerts"),
        &ed.token,
        json!({"enabled": true}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["status"], "active");
    assert_eq!(a.json()["failing_since"], Value::Null);
    assert_eq!(a.json()["disabled_reason"], Value::Null);
    let a = report(
        &api,
        SECRET,
        &json!({"node": "node-b", "attempts": [attempt(&id, 100, "retrying", Some(503))]}),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    let one = api.get(&format!("{WEBHOOKS}/alerts"), &jo.token).json();
    assert_eq!(one["status"], "active", "{one}");
    assert_eq!(one["failing_since"], Value::Null, "{one}");
    in_snapshot(&sluice, "alerts", |w| w["enabled"] == true);
}
