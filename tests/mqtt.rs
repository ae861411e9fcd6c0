//! MQTT ingest with real clients: Eclipse Paho (Python) for 3.1.1 and 5, `mosquitto_pub` when
//! installed, and raw sockets for hostile input. Everything acknowledged is read back from
//! Parquet with DuckDB.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::controlplane::{make_certs, verified_user, Api};
use common::mqtt::{
    connect_raw, connect_v311, event, paho, publish_qos0, publish_qos1, publish_qos2, publish_raw,
    raw_connect, read_packet, Background,
};
use common::{duckdb, wait_for, Sluice};
use serde_json::{json, Value};

/// A node with a fast batch age, the default workspace's token and an operator session.
struct Fixture {
    sluice: Sluice,
    api: Api,
    operator: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start(extra: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["--batch-max-age-ms", "300"];
        args.extend_from_slice(extra);
        let sluice = Sluice::start(&dir.path().join("data"), &args);
        let api = Api::new(sluice.api_url());
        let operator = api.operator_session(&sluice.data_dir);
        let token = sluice.bootstrap()["token"]
            .as_str()
            .expect("token")
            .to_owned();
        let fx = Fixture {
            sluice,
            api,
            operator,
            token,
            _dir: dir,
        };
        fx.wait_config();
        fx
    }

    fn mqtt_port(&self) -> u16 {
        self.sluice.mqtt_port
    }

    fn lake(&self) -> std::path::PathBuf {
        self.sluice.data_dir.join("lake")
    }

    /// A token of the default workspace with extra fields (`sources`, `device_id`, ...).
    fn token_with(&self, fields: Value) -> (String, String) {
        let mut body = json!({"name": "device", "scopes": ["ingest"]});
        if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
            b.extend(f.clone());
        }
        let a = self.api.post(
            "/api/v1/workspaces/default/tokens",
            Some(&self.operator),
            body,
        );
        assert_eq!(a.status, 201, "{}", a.body);
        let secret = a.json()["secret"].as_str().expect("secret").to_owned();
        self.wait_until_served("default", &secret, "telemetry");
        (a.json()["id"].as_str().expect("id").to_owned(), secret)
    }

    fn add_source(&self, slug: &str) {
        let a = self.api.post(
            "/api/v1/workspaces/default/sources",
            Some(&self.operator),
            json!({"slug": slug, "name": slug}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        self.wait_until_served("default", &self.token, slug);
    }

    /// Waits until the node knows `secret` and `source`: an HTTP ingest of a body that is not
    /// JSON is refused for another reason than those two (and stores nothing).
    fn wait_until_served(&self, workspace: &str, secret: &str, source: &str) {
        let url = self.sluice.ingest_url(workspace, source);
        let auth = format!("Bearer {secret}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        assert!(
            wait_for(Duration::from_secs(10), || {
                let problem = common::post(&url, &headers, b"probe: not json").problem();
                problem != "invalid-token" && problem != "unknown-source"
            }),
            "the node never served the new token or source {source}"
        );
    }

    /// Waits until the node serves the configuration the control plane wrote last.
    fn wait_config(&self) {
        let path = self.sluice.data_dir.join("config-snapshot.json");
        let written = || {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["version"].as_u64())
        };
        assert!(
            wait_for(Duration::from_secs(10), || {
                let served = self.sluice.readyz()["config_version"].as_u64();
                written().is_some_and(|w| served >= Some(w))
            }),
            "the node did not pick up configuration version {:?}",
            written()
        );
    }

    /// Stops the node (it uploads what it holds) and runs `sql` over the lake.
    fn query(&mut self, sql: &str) -> Vec<Vec<Value>> {
        self.sluice.stop();
        let rows = duckdb(&self.lake(), sql);
        self.sluice.restart();
        rows
    }
}

/// A raw connection of MQTT `version` (4: 3.1.1, 5) to the bootstrap workspace, its CONNECT
/// accepted; reads wait up to 20 s.
fn connected(
    port: u16,
    version: u8,
    client: &str,
    token: &str,
    keep_alive: u16,
) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(&connect_raw(version, client, "default", token, keep_alive))
        .expect("CONNECT");
    let (first, connack) = read_packet(&mut s).expect("CONNACK");
    assert_eq!((first, connack[1]), (0x20, 0), "{client} accepted");
    s
}

fn with_creds<'a>(args: &[&'a str], token: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(&["--username", "default", "--password", token]);
    v
}

fn acked(lines: &[Value]) -> usize {
    event(lines, "published")["acked"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn every_qos_on_both_versions_lands_in_parquet_once_with_its_topic_and_device() {
    let mut fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    let count = 40;
    let count_s = count.to_string();
    for version in ["3", "5"] {
        for qos in ["0", "1", "2"] {
            let client = format!("dev-v{version}-q{qos}");
            let payload = format!(r#"{{"v": {version}, "q": {qos}, "i": {{i}}}}"#);
            let lines = paho(
                port,
                &with_creds(
                    &[
                        "publish",
                        "--version",
                        version,
                        "--qos",
                        qos,
                        "--client-id",
                        &client,
                        "--count",
                        &count_s,
                        "--topic",
                        &format!("ingest/telemetry/floor-{qos}/room"),
                        "--payload",
                        &payload,
                    ],
                    &fx.token,
                ),
            );
            assert_eq!(event(&lines, "connack")["rc"], 0, "{lines:?}");
            if qos != "0" {
                assert_eq!(acked(&lines), count, "v{version} QoS {qos}: {lines:?}");
            }
        }
    }
    let mosquitto = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if mosquitto {
        for (version, qos) in [("mqttv311", "1"), ("mqttv5", "2")] {
            let status = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
                .args(["-q", qos, "-i", &format!("mosq-{version}")])
                .args(["-u", "default", "-P", &fx.token, "-t", "ingest/telemetry"])
                .args(["-m", &format!(r#"{{"mosquitto": "{version}"}}"#)])
                .status()
                .expect("mosquitto_pub");
            assert!(status.success(), "mosquitto_pub {version} failed");
        }
    }

    let rows = fx.query(
        "SELECT device_id, topic, protocol, count(*), count(DISTINCT payload->>'i') \
         FROM {lake} WHERE payload->>'i' IS NOT NULL GROUP BY ALL ORDER BY device_id",
    );
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in &rows {
        let device = row[0].as_str().expect("device");
        let qos = &device[device.len() - 1..];
        assert_eq!(
            row[1],
            format!("ingest/telemetry/floor-{qos}/room"),
            "{row:?}"
        );
        assert_eq!(row[2], "mqtt");
        // Once each, every one of them (QoS 0 on loopback arrives too).
        assert_eq!(row[3], json!(count), "{row:?}");
        assert_eq!(row[4], json!(count), "{row:?}");
    }
    if mosquitto {
        let rows = fx.query(
            "SELECT payload->>'mosquitto', device_id FROM {lake} \
             WHERE payload->>'mosquitto' IS NOT NULL ORDER BY 1",
        );
        assert_eq!(
            rows,
            vec![
                vec![json!("mqttv311"), json!("mosq-mqttv311")],
                vec![json!("mqttv5"), json!("mosq-mqttv5")],
            ]
        );
    }
    let metrics = fx.sluice.metrics();
    assert!(metrics.contains("sluice_mqtt_sessions "), "{metrics}");
}

#[test]
fn refusals_get_reason_codes_on_mqtt5_a_disconnect_on_311_and_store_nothing() {
    let mut fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    fx.add_source("private");
    let (_, limited) = fx.token_with(json!({"sources": ["telemetry"]}));
    let (_, bound) = fx.token_with(json!({"device_id": "sensor-7"}));
    let (_, read_only) = {
        let a = fx.api.post(
            "/api/v1/workspaces/default/tokens",
            Some(&fx.operator),
            json!({"name": "reader", "scopes": ["read"]}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        let secret = a.json()["secret"].as_str().expect("secret").to_owned();
        fx.wait_until_served("default", &secret, "telemetry");
        ((), secret)
    };

    // CONNECT refusals, both versions (Paho reports 3.1.1 return codes 4, 5, 2 as the MQTT 5
    // codes 134, 135, 133).
    for version in ["3", "5"] {
        let connack = |args: &[&str]| -> Value {
            let mut a = vec!["publish", "--version", version];
            a.extend_from_slice(args);
            event(&paho(port, &a), "connack")["rc"].clone()
        };
        assert_eq!(
            connack(&["--username", "default", "--password", "sluice_wrong"]),
            134
        );
        assert_eq!(
            connack(&["--username", "nope", "--password", &fx.token]),
            134
        );
        assert_eq!(connack(&[]), 134, "no credentials");
        assert_eq!(
            connack(&[
                "--username",
                "default",
                "--password",
                &bound,
                "--client-id",
                "other"
            ]),
            135,
            "a token bound to sensor-7 connecting as another device"
        );
        assert_eq!(
            connack(&["--username", "default", "--password", &read_only]),
            135,
            "a token without the ingest scope"
        );
        assert_eq!(
            connack(&[
                "--username",
                "default",
                "--password",
                &fx.token,
                "--client-id",
                "a b"
            ]),
            133,
            "a client id that is not a device id"
        );
        assert_eq!(
            connack(&[
                "--username",
                "default",
                "--password",
                &bound,
                "--client-id",
                "sensor-7"
            ]),
            0
        );
    }

    // The raw 3.1.1 return code for wrong credentials is 4.
    let (_, connack) = raw_connect(port, "raw-1", "default", "sluice_wrong");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x04]);

    // PUBLISH refusals on MQTT 5: reason codes, the connection stays.
    let publish5 = |token: &str, topic: &str, payload: &str| -> Value {
        let lines = paho(
            port,
            &with_creds(
                &[
                    "publish",
                    "--version",
                    "5",
                    "--qos",
                    "1",
                    "--topic",
                    topic,
                    "--payload",
                    payload,
                ],
                token,
            ),
        );
        event(&lines, "published").clone()
    };
    let refused = |p: &Value| p["refused"]["0"].clone();
    assert_eq!(
        refused(&publish5(&fx.token, "ingest/nosuch", r#"{"r": "unknown"}"#)),
        0x90
    );
    assert_eq!(
        refused(&publish5(
            &fx.token,
            "elsewhere/telemetry",
            r#"{"r": "topic"}"#
        )),
        0x90
    );
    assert_eq!(
        refused(&publish5(
            &limited,
            "ingest/private",
            r#"{"r": "not-allowed"}"#
        )),
        0x87
    );
    assert_eq!(
        refused(&publish5(&fx.token, "ingest/telemetry", "not json at all")),
        0x99
    );
    assert_eq!(
        refused(&publish5(&fx.token, "ingest/telemetry", "[1, 2]")),
        0x99,
        "events must be JSON objects"
    );
    let fine = publish5(&limited, "ingest/telemetry", r#"{"r": "fine"}"#);
    assert_eq!(fine["acked"], json!([0]), "{fine}");
    assert_eq!(fine["disconnected"], Value::Null);

    // On 3.1.1 a refused PUBLISH closes the connection and is never acknowledged.
    for (token, topic, payload) in [
        (&fx.token, "ingest/nosuch", r#"{"r": "v3-unknown"}"#),
        (&limited, "ingest/private", r#"{"r": "v3-not-allowed"}"#),
        (&fx.token, "ingest/telemetry", "v3 not json"),
    ] {
        let lines = paho(
            port,
            &with_creds(
                &[
                    "publish",
                    "--version",
                    "3",
                    "--qos",
                    "1",
                    "--topic",
                    topic,
                    "--payload",
                    payload,
                    "--timeout",
                    "5",
                ],
                token,
            ),
        );
        let p = event(&lines, "published");
        assert_eq!(p["acked"], json!([]), "{lines:?}");
        assert!(!p["disconnected"].is_null(), "{lines:?}");
    }

    // A packet over the maximum packet size (1 MiB by default) ends the connection.
    let lines = paho(
        port,
        &with_creds(
            &[
                "publish",
                "--version",
                "5",
                "--qos",
                "1",
                "--pad",
                "1100000",
            ],
            &fx.token,
        ),
    );
    let p = event(&lines, "published");
    assert_eq!(p["acked"], json!([]), "{lines:?}");
    assert!(!p["disconnected"].is_null(), "{lines:?}");

    // SUBSCRIBE is refused: 0x87 per filter on 5, 0x80 on 3.1.1.
    for (version, code) in [("5", 0x87), ("3", 0x80)] {
        let lines = paho(
            port,
            &with_creds(
                &["subscribe", "--version", version, "--topic", "ingest/#"],
                &fx.token,
            ),
        );
        assert_eq!(event(&lines, "suback")["codes"], json!([code]), "{lines:?}");
    }

    let metrics = fx.sluice.metrics();
    for needle in [
        r#"sluice_mqtt_connects_total{outcome="bad-credentials"}"#,
        r#"sluice_mqtt_connects_total{outcome="not-authorized"}"#,
        r#"sluice_mqtt_publishes_total{qos="1",outcome="unknown-source"}"#,
        r#"sluice_mqtt_publishes_total{qos="1",outcome="payload-invalid"}"#,
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }

    // Nothing refused was stored; the one accepted event was.
    let rows = fx.query("SELECT payload->>'r' FROM {lake} WHERE payload->>'r' IS NOT NULL");
    assert_eq!(rows, vec![vec![json!("fine")]]);
}

/// A source's `protocols` are enforced on the node: an HTTP-only source refuses MQTT (0x87 on
/// MQTT 5, a closed connection on 3.1.1), an MQTT-only source refuses HTTP with
/// `403 protocol-not-allowed`, and nothing refused is stored.
#[test]
fn a_source_takes_events_only_over_its_protocols() {
    let mut fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    for (slug, protocols) in [
        ("http-only", json!(["http"])),
        ("mqtt-only", json!(["mqtt"])),
    ] {
        let a = fx.api.post(
            "/api/v1/workspaces/default/sources",
            Some(&fx.operator),
            json!({"slug": slug, "protocols": protocols}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        fx.wait_until_served("default", &fx.token, slug);
    }
    let auth = format!("Bearer {}", fx.token);
    let http = |source: &str, r: &str| {
        common::post(
            &fx.sluice.ingest_url("default", source),
            &[("authorization", &auth)],
            format!(r#"{{"r": "{r}"}}"#).as_bytes(),
        )
    };
    let refused = http("mqtt-only", "http-to-mqtt-only");
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("urn:sluice:problem:protocol-not-allowed"),
        "{}",
        refused.body
    );
    assert_eq!(http("http-only", "http-ok").status, 202);

    let publish = |version: &str, topic: &str, r: &str| -> Value {
        let payload = format!(r#"{{"r": "{r}"}}"#);
        let lines = paho(
            port,
            &with_creds(
                &[
                    "publish",
                    "--version",
                    version,
                    "--qos",
                    "1",
                    "--topic",
                    topic,
                    "--payload",
                    &payload,
                    "--timeout",
                    "5",
                ],
                &fx.token,
            ),
        );
        event(&lines, "published").clone()
    };
    let p = publish("5", "ingest/http-only/room-1", "mqtt5-to-http-only");
    assert_eq!(p["refused"]["0"], 0x87, "{p}");
    let p = publish("3", "ingest/http-only/room-1", "mqtt3-to-http-only");
    assert_eq!(p["acked"], json!([]), "{p}");
    assert!(
        !p["disconnected"].is_null(),
        "3.1.1 closes the connection: {p}"
    );
    let p = publish("5", "ingest/mqtt-only/room-1", "mqtt-ok");
    assert_eq!(p["acked"], json!([0]), "{p}");
    // Connections leave no library notices in the log, only Sluice's own lines.
    assert!(
        !fx.sluice.log().contains("does not exist, using default"),
        "{}",
        fx.sluice.log()
    );

    let mut rows = fx.query("SELECT payload->>'r' FROM {lake} WHERE payload->>'r' IS NOT NULL");
    rows.sort_by_key(|r| r[0].to_string());
    assert_eq!(rows, vec![vec![json!("http-ok")], vec![json!("mqtt-ok")]]);
}

#[test]
fn mqtt_over_tls_takes_events_from_clients_that_trust_the_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let server = certs.path().join("server.pem");
    let server = server.to_str().expect("path");
    let tls_port = common::free_port();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let mut fx = Fixture::start(&[
        "--mqtts-addr",
        &tls_addr,
        "--mqtt-tls-cert",
        server,
        "--mqtt-tls-key",
        server,
    ]);
    let ca = certs.path().join("ca.pem");
    for version in ["3", "5"] {
        let lines = paho(
            tls_port,
            &with_creds(
                &[
                    "publish",
                    "--version",
                    version,
                    "--ca",
                    ca.to_str().expect("path"),
                    "--payload",
                    &format!(r#"{{"tls": {version}}}"#),
                    "--client-id",
                    &format!("tls-{version}"),
                ],
                &fx.token,
            ),
        );
        assert_eq!(event(&lines, "connack")["rc"], 0, "{lines:?}");
        assert_eq!(acked(&lines), 1, "{lines:?}");
    }
    // A plain-text client on the TLS port gets nowhere.
    let lines = paho(
        tls_port,
        &with_creds(&["publish", "--timeout", "3"], &fx.token),
    );
    assert_ne!(lines[0]["rc"], 0, "{lines:?}");
    let rows = fx.query("SELECT count(*) FROM {lake} WHERE payload->>'tls' IS NOT NULL");
    assert_eq!(rows, vec![vec![json!(2)]]);
}

#[test]
fn sessions_are_taken_over_and_closed_when_their_token_or_workspace_stops_working() {
    let fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    let hold = |version: &str, token: &str, client: &str| {
        let bg = Background::start(
            port,
            &with_creds(
                &[
                    "hold",
                    "--version",
                    version,
                    "--client-id",
                    client,
                    "--timeout",
                    "30",
                ],
                token,
            ),
        );
        let connack = bg.next(Duration::from_secs(10)).expect("connack");
        assert_eq!(connack["rc"], 0, "{connack}");
        bg
    };
    let disconnected = |bg: &Background, what: &str| -> Value {
        let line = bg
            .next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the node did not close the session: {what}"));
        assert_eq!(line["event"], "disconnected", "{line}");
        line["rc"].clone()
    };

    // Takeover: the second CONNECT with a client id closes the first (0x8E on MQTT 5).
    let first = hold("5", &fx.token, "twin");
    let second = hold("5", &fx.token, "twin");
    assert_eq!(disconnected(&first, "takeover v5"), 0x8E);
    let first3 = hold("3", &fx.token, "twin3");
    let _second3 = hold("3", &fx.token, "twin3");
    disconnected(&first3, "takeover 3.1.1");
    drop(second);

    // Revocation closes the sessions of that token (0x87 on MQTT 5), and only those.
    let (id, secret) = fx.token_with(json!({}));
    let doomed5 = hold("5", &secret, "doomed-5");
    let doomed3 = hold("3", &secret, "doomed-3");
    let bystander = hold("5", &fx.token, "bystander");
    let a = fx.api.delete(
        &format!("/api/v1/workspaces/default/tokens/{id}"),
        &fx.operator,
    );
    assert!(a.status < 300, "{}", a.body);
    assert_eq!(disconnected(&doomed5, "revoked v5"), 0x87);
    disconnected(&doomed3, "revoked 3.1.1");
    assert!(
        bystander.next(Duration::from_millis(500)).is_none(),
        "a session of another token stays"
    );
    let lines = paho(port, &with_creds(&["publish"], &secret));
    assert_eq!(
        event(&lines, "connack")["rc"],
        134,
        "revoked tokens cannot connect"
    );

    // An expiring token: the session closes when it expires.
    let soon = chrono_in_secs(4);
    let (_, expiring) = fx.token_with(json!({"expires_at": soon}));
    let expiring_session = hold("5", &expiring, "expiring");
    assert_eq!(disconnected(&expiring_session, "expired"), 0x87);

    // Disabling a workspace (the trial of its creator ends) closes every session in it.
    let ada = verified_user(
        &fx.api,
        &fx.sluice.data_dir.join("outbox"),
        "ada@example.com",
    );
    let a = fx.api.post(
        "/api/v1/workspaces",
        Some(&ada.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = fx.api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&ada.token),
        json!({"slug": "telemetry", "name": "Telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = fx.api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&ada.token),
        json!({"name": "plant", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let plant_token = a.json()["secret"].as_str().expect("secret").to_owned();
    fx.wait_until_served("plant", &plant_token, "telemetry");
    let plant_creds = |action: &str, client: &str| -> Vec<String> {
        [
            action,
            "--version",
            "5",
            "--client-id",
            client,
            "--timeout",
            "30",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--username".into(),
            "plant".into(),
            "--password".into(),
            plant_token.clone(),
        ])
        .collect()
    };
    let args = plant_creds("hold", "plant-1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let plant_session = Background::start(port, &args);
    assert_eq!(
        plant_session
            .next(Duration::from_secs(10))
            .expect("connack")["rc"],
        0
    );
    let a = fx.api.put(
        &format!("/api/v1/operator/users/{}/trial", ada.id),
        &fx.operator,
        json!({"trial_ends_at": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(disconnected(&plant_session, "workspace disabled"), 0x87);
    assert!(
        bystander.next(Duration::from_millis(300)).is_none(),
        "sessions of other workspaces stay"
    );
    let args = plant_creds("publish", "plant-2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = paho(port, &args);
    assert_eq!(event(&lines, "connack")["rc"], 135, "a disabled workspace");

    let metrics = fx.sluice.metrics();
    assert!(
        metrics.contains(r#"sluice_mqtt_sessions_closed_total{reason="taken-over"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_mqtt_sessions_closed_total{reason="not-authorized"}"#),
        "{metrics}"
    );
}

/// RFC 3339 time `secs` from now.
fn chrono_in_secs(secs: u64) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("+{secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn every_puback_survives_kill_9_exactly_once() {
    let mut fx = Fixture::start(&[]);
    let mut acked: Vec<(u64, u64, u64)> = Vec::new();
    for round in 0..3u64 {
        let prefix = format!("crash-{round}");
        let fleet = Background::start(
            fx.mqtt_port(),
            &with_creds(
                &[
                    "fleet",
                    "--version",
                    if round % 2 == 0 { "5" } else { "3" },
                    "--clients",
                    "6",
                    "--duration",
                    "20",
                    "--client-id",
                    &prefix,
                ],
                &fx.token,
            ),
        );
        // Kill at a different point of each round.
        std::thread::sleep(Duration::from_millis(700 + 600 * round));
        fx.sluice.kill9();
        for line in fleet.finish(Duration::from_secs(15)) {
            if let (Some(c), Some(n)) = (line["c"].as_u64(), line["n"].as_u64()) {
                acked.push((round, c, n));
            }
        }
        fx.sluice.restart();
    }
    assert!(acked.len() > 100, "the fleet got only {} acks", acked.len());
    // The fleet's payloads carry {"c": client, "n": seq}; the round is in the device id.
    let rows = fx.query(
        "SELECT device_id, payload->>'c', payload->>'n', count(*) FROM {lake} \
         WHERE device_id LIKE 'crash-%' GROUP BY ALL",
    );
    let stored: HashMap<(u64, u64, u64), i64> = rows
        .iter()
        .map(|r| {
            let device = r[0].as_str().expect("device");
            let round: u64 = device[6..7].parse().expect("round");
            let c: u64 = r[1].as_str().expect("c").parse().expect("c");
            let n: u64 = r[2].as_str().expect("n").parse().expect("n");
            ((round, c, n), r[3].as_i64().expect("count"))
        })
        .collect();
    for key in &acked {
        assert_eq!(
            stored.get(key),
            Some(&1),
            "acknowledged message {key:?} is not in Parquet exactly once"
        );
    }
    assert!(
        stored.values().all(|n| *n == 1),
        "no message is stored twice"
    );
}

/// How long until the node closes `stream`, if within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
}

/// Clients without a token get little: a CONNECT declaring more than `mqtt.connect_bytes_max`
/// is cut off before its bytes are held, and past `mqtt.connecting_max` connections waiting to
/// authenticate, new ones wait for a place (not closed: issue 22) and are answered once one
/// comes free.
#[test]
fn unauthenticated_connections_hold_little_and_are_bounded_in_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[mqtt]\nconnecting_max = 4\n").expect("config");
    let fx = Fixture::start(&["--config", config.to_str().expect("utf8")]);
    let addr = format!("127.0.0.1:{}", fx.mqtt_port());

    // A CONNECT declaring 1 MiB (remaining length 0x80 0x80 0x40), of which 10 bytes arrive.
    let mut big = TcpStream::connect(&addr).expect("connect");
    big.write_all(&[
        0x10, 0x80, 0x80, 0x40, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60,
    ])
    .expect("send");
    let closed = closed_within(&mut big, Duration::from_secs(3));
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(1)),
        "an oversized CONNECT is cut off at once, not held for the connect timeout: {closed:?}"
    );

    // Four half-sent CONNECTs take every place; a fifth connection's CONNECT waits for one.
    let mut waiting: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(&[0x10, 0x20, 0, 4]).expect("send");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(&addr).expect("the kernel accepts");
    fifth
        .write_all(&connect_v311("waits-1", "default", &fx.token))
        .expect("CONNECT");
    fifth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let early = fifth.read(&mut [0u8; 16]);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "a connection past mqtt.connecting_max waits, neither closed nor answered: {early:?}"
    );
    let metrics = fx.sluice.metrics();
    assert!(
        metrics.contains("sluice_mqtt_connecting_waiting 1"),
        "the wait is visible: {}",
        metrics
            .lines()
            .filter(|l| l.contains("connecting"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    waiting.clear();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (first, body) = read_packet(&mut fifth).expect("a CONNACK once a place is free");
    assert_eq!((first, body), (0x20, vec![0, 0]), "accepted");
    drop(fifth);
    std::thread::sleep(Duration::from_millis(300));
    let lines = paho(
        fx.mqtt_port(),
        &with_creds(&["publish", "--version", "5", "--qos", "1"], &fx.token),
    );
    assert_eq!(event(&lines, "published")["acked"], json!([0]), "{lines:?}");
    assert!(waiting.is_empty());
}

#[test]
fn hostile_input_leaves_the_node_serving_everyone_else() {
    let fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let _ = s.write_all(bytes);
        let mut buf = [0u8; 64];
        // The node answers with a refusal or closes; either way it does not hang.
        let _ = s.read(&mut buf);
    };
    // A truncated CONNECT, then the peer goes away.
    let connect = connect_v311("h-1", "default", &fx.token);
    send(&connect[..connect.len() / 2]);
    // A remaining length that never ends (five continuation bytes).
    send(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    // A remaining length of 256 MiB.
    send(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]);
    // A PUBLISH before any CONNECT.
    send(&publish_qos0(b"ingest/telemetry", br#"{"x":1}"#));
    // A valid CONNECT, then a PUBLISH whose topic is not UTF-8.
    let mut bytes = connect.clone();
    bytes.extend_from_slice(&publish_qos0(b"ingest/\xff\xfe", br#"{"x":1}"#));
    send(&bytes);
    // Garbage.
    send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // A flood of connections that send nothing, held open while others work.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    // A CONNECT flood with wrong passwords.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..5 {
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                        let _ = s.write_all(&connect_v311(&format!("f-{t}-{i}"), "default", "x"));
                        let mut buf = [0u8; 4];
                        let _ = s.read(&mut buf);
                    }
                }
            })
        })
        .collect();
    let lines = paho(
        port,
        &with_creds(
            &[
                "publish",
                "--version",
                "5",
                "--count",
                "20",
                "--client-id",
                "honest",
            ],
            &fx.token,
        ),
    );
    assert_eq!(acked(&lines), 20, "{lines:?}");
    for h in handles {
        h.join().expect("flood thread");
    }
    drop(flood);
    assert_eq!(
        common::agent()
            .get(format!("{}/healthz", fx.sluice.base_url()))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0),
        200
    );
    let lines = paho(
        port,
        &with_creds(&["publish", "--client-id", "after"], &fx.token),
    );
    assert_eq!(acked(&lines), 1, "{lines:?}");
}

/// With a window of 4 (`mqtt.receive_max`), a client that writes 40 QoS 1 and then 10 QoS 2
/// publishes at once is read 4 unanswered at a time: the publishes already read behind a full
/// window are taken as answers free it (no more bytes arrive to wake the connection), every one
/// is answered in order and stored once, on both versions.
#[test]
fn publishes_past_the_receive_maximum_wait_in_order_and_are_all_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[mqtt]\nreceive_max = 4\n").expect("config");
    let mut fx = Fixture::start(&["--config", config.to_str().expect("utf8")]);
    for version in [4u8, 5] {
        let props: Option<&[u8]> = (version == 5).then_some(&[]);
        let mut s = connected(
            fx.mqtt_port(),
            version,
            &format!("window-{version}"),
            &fx.token,
            30,
        );
        let mut all = Vec::new();
        for id in 1..=50u16 {
            let first = if id <= 40 { 0x32 } else { 0x34 };
            let payload = format!(r#"{{"window": {version}, "n": {id}}}"#);
            all.extend(publish_raw(
                first,
                "ingest/telemetry",
                Some(id),
                props,
                payload.as_bytes(),
            ));
        }
        s.write_all(&all).expect("one write");
        let mut answers = Vec::new();
        while answers.len() < 50 {
            let (first, body) = read_packet(&mut s).expect("an answer");
            assert_eq!(body.get(2).copied().unwrap_or(0), 0, "success: {body:?}");
            answers.push((first, u16::from_be_bytes([body[0], body[1]])));
        }
        let expected: Vec<(u8, u16)> = (1..=50u16)
            .map(|id| (if id <= 40 { 0x40 } else { 0x50 }, id))
            .collect();
        assert_eq!(answers, expected, "v{version}");
        drop(s);
    }
    for version in [4, 5] {
        let rows = fx.query(&format!(
            "SELECT count(*), count(DISTINCT payload->>'n') FROM {{lake}} \
             WHERE payload->>'window' = '{version}'"
        ));
        assert_eq!(rows, vec![vec![json!(50), json!(50)]], "v{version}");
    }
}

#[test]
fn publishes_split_across_tcp_writes_arrive_whole_while_others_are_in_flight() {
    let mut fx = Fixture::start(&[]);
    let (mut s, connack) = raw_connect(fx.mqtt_port(), "splitter", "default", &fx.token);
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let count = 40u16;
    for id in 1..=count {
        let payload = format!(r#"{{"split": {id}, "pad": "{}"}}"#, "y".repeat(300));
        let packet = publish_qos1("ingest/telemetry", id, payload.as_bytes());
        // Every other packet arrives in two pieces, the cut inside the payload, so the node
        // sees a header whose payload is still on its way while earlier publishes are stored.
        if id % 2 == 0 {
            let cut = packet.len() - 100;
            s.write_all(&packet[..cut]).expect("first piece");
            std::thread::sleep(Duration::from_millis(15));
            s.write_all(&packet[cut..]).expect("second piece");
        } else {
            s.write_all(&packet).expect("publish");
        }
    }
    let mut acked = Vec::new();
    let mut ack = [0u8; 4];
    while acked.len() < count as usize {
        s.read_exact(&mut ack).expect("PUBACK");
        assert_eq!(ack[..2], [0x40, 0x02], "{ack:?}");
        acked.push(u16::from_be_bytes([ack[2], ack[3]]));
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=count).collect::<Vec<_>>());
    drop(s);

    // Then several connections, each pipelining publishes written in slices that ignore packet
    // boundaries, as a busy network delivers them.
    let port = fx.mqtt_port();
    let token = fx.token.clone();
    let per_connection = 3000u16;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let token = token.clone();
            std::thread::spawn(move || {
                let (mut s, connack) = raw_connect(port, &format!("slicer-{c}"), "default", &token);
                assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
                let mut stream = Vec::new();
                for id in 1..=per_connection {
                    let payload = format!(r#"{{"slice": {c}, "n": {id}}}"#);
                    stream.extend(publish_qos1("ingest/telemetry", id, payload.as_bytes()));
                }
                let mut writer = s.try_clone().expect("clone");
                let sender = std::thread::spawn(move || {
                    for piece in stream.chunks(777) {
                        if writer.write_all(piece).is_err() {
                            break;
                        }
                    }
                });
                let mut acks = 0;
                let mut ack = [0u8; 4];
                while acks < per_connection {
                    if s.read_exact(&mut ack).is_err() || ack[..2] != [0x40, 0x02] {
                        break;
                    }
                    acks += 1;
                }
                drop(s);
                let _ = sender.join();
                acks
            })
        })
        .collect();
    for client in clients {
        assert_eq!(
            client.join().expect("client"),
            per_connection,
            "every sliced publish is acknowledged and the connection stays"
        );
    }
    let rows = fx.query(
        "SELECT count(*), count(DISTINCT payload->>'split'), min(length(payload->>'pad')) \
         FROM {lake} WHERE payload->>'split' IS NOT NULL",
    );
    assert_eq!(rows, vec![vec![json!(count), json!(count), json!(300)]]);
    let rows = fx.query(
        "SELECT count(*), count(DISTINCT (payload->>'slice', payload->>'n')) \
         FROM {lake} WHERE payload->>'slice' IS NOT NULL",
    );
    let total = 4 * i64::from(per_connection);
    assert_eq!(rows, vec![vec![json!(total), json!(total)]]);
}

#[test]
fn qos0_publishes_read_in_bulk_land_once_and_in_order_among_markers_and_unusual_ones() {
    // Many publishes in one read, of every kind: plain QoS 0, QoS 0 with RETAIN or MQTT 5
    // properties, QoS 1 markers. Sent as a paced device fleet sends (every 100th message a
    // QoS 1 marker, at most two markers unacknowledged), in slices that ignore packet
    // boundaries, on both versions.
    let mut fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    let count = 3000u16;
    let per_marker = 100u16;
    for version in [4u8, 5] {
        let props: Option<&[u8]> = (version == 5).then_some(&[]);
        let mut s = connected(port, version, &format!("bulk-{version}"), &fx.token, 30);

        // Chunk k ends with marker k (packet id k).
        let chunks: Vec<Vec<u8>> = (0..count / per_marker)
            .map(|k| {
                let mut chunk = Vec::new();
                for seq in k * per_marker..(k + 1) * per_marker {
                    let payload = format!(r#"{{"bulk": {version}, "seq": {seq}}}"#);
                    let packet = match seq {
                        _ if seq % per_marker == per_marker - 1 => publish_raw(
                            0x32,
                            "ingest/telemetry",
                            Some(k + 1),
                            props,
                            payload.as_bytes(),
                        ),
                        _ if seq % 250 == 7 => {
                            publish_raw(0x31, "ingest/telemetry", None, props, payload.as_bytes())
                        }
                        // Payload format indicator: UTF-8.
                        _ if version == 5 && seq % 333 == 5 => publish_raw(
                            0x30,
                            "ingest/telemetry",
                            None,
                            Some(&[0x01, 0x01]),
                            payload.as_bytes(),
                        ),
                        _ => publish_raw(0x30, "ingest/telemetry", None, props, payload.as_bytes()),
                    };
                    chunk.extend(packet);
                }
                chunk
            })
            .collect();
        let mut acked = Vec::new();
        for (k, chunk) in chunks.iter().enumerate() {
            if k >= 2 {
                let (first, ack) = read_packet(&mut s).expect("PUBACK");
                assert_eq!(first, 0x40, "a PUBACK: {ack:?}");
                assert!(ack.len() < 3 || ack[2] == 0, "success: {ack:?}");
                acked.push(u16::from_be_bytes([ack[0], ack[1]]));
            }
            for piece in chunk.chunks(1499) {
                s.write_all(piece).expect("write");
            }
        }
        while acked.len() < chunks.len() {
            let (first, ack) = read_packet(&mut s).expect("PUBACK");
            assert_eq!(first, 0x40, "a PUBACK: {ack:?}");
            acked.push(u16::from_be_bytes([ack[0], ack[1]]));
        }
        let markers = count / per_marker;
        assert_eq!(acked, (1..=markers).collect::<Vec<_>>(), "v{version}");
        // A record this large is stored zstd-compressed in the WAL; it reads back whole.
        let big = format!(r#"{{"big": {version}, "pad": "{}"}}"#, "z".repeat(10_000));
        s.write_all(&publish_raw(
            0x32,
            "ingest/telemetry",
            Some(markers + 1),
            props,
            big.as_bytes(),
        ))
        .expect("big publish");
        let (first, ack) = read_packet(&mut s).expect("PUBACK");
        assert_eq!((first, &ack[..2]), (0x40, &(markers + 1).to_be_bytes()[..]));
        drop(s);
    }

    // Before the queries, which restart the node.
    let metrics = fx.sluice.metrics();
    let accepted = format!(
        r#"sluice_mqtt_publishes_total{{qos="0",outcome="accepted"}} {}"#,
        2 * (count - count / per_marker)
    );
    assert!(metrics.contains(&accepted), "{accepted} in {metrics}");
    for version in [4, 5] {
        let rows = fx.query(&format!(
            "SELECT count(*), count(DISTINCT payload->>'seq') FROM {{lake}} \
             WHERE payload->>'bulk' = '{version}'"
        ));
        assert_eq!(
            rows,
            vec![vec![json!(count), json!(count)]],
            "every message once, v{version}"
        );
        // Messages keep their order, whatever their QoS: stored in sequence, a later one is
        // never received before an earlier one.
        let rows = fx.query(&format!(
            "SELECT count(*) FROM (SELECT received_at < lag(received_at) OVER \
             (ORDER BY (payload->>'seq')::INT) AS back FROM {{lake}} \
             WHERE payload->>'bulk' = '{version}') WHERE back"
        ));
        assert_eq!(rows, vec![vec![json!(0)]], "order, v{version}");
        let rows = fx.query(&format!(
            "SELECT length(payload->>'pad') FROM {{lake}} WHERE payload->>'big' = '{version}'"
        ));
        assert_eq!(rows, vec![vec![json!(10_000)]], "the big one, v{version}");
    }
}

#[test]
fn a_device_sending_only_qos0_is_not_timed_out_by_its_keep_alive() {
    // Keep-alive 1 s, no PINGREQ: the QoS 0 publishes themselves keep the connection alive;
    // silence then closes it.
    let mut fx = Fixture::start(&[]);
    let port = fx.mqtt_port();
    for version in [4u8, 5] {
        let props: Option<&[u8]> = (version == 5).then_some(&[]);
        let mut s = connected(port, version, &format!("keepalive-{version}"), &fx.token, 1);
        let started = std::time::Instant::now();
        let mut sent = 0u32;
        while started.elapsed() < Duration::from_secs(3) {
            let mut burst = Vec::new();
            for _ in 0..10 {
                let payload = format!(r#"{{"alive": {version}, "n": {sent}}}"#);
                burst.extend(publish_raw(
                    0x30,
                    "ingest/telemetry",
                    None,
                    props,
                    payload.as_bytes(),
                ));
                sent += 1;
            }
            s.write_all(&burst).expect("the connection is still open");
            std::thread::sleep(Duration::from_millis(50));
        }
        s.write_all(&publish_raw(
            0x32,
            "ingest/telemetry",
            Some(1),
            props,
            b"{}",
        ))
        .expect("fence");
        let (first, ack) = read_packet(&mut s).expect("PUBACK after 3 s without PINGREQ");
        assert_eq!((first, &ack[..2]), (0x40, &[0u8, 1][..]), "v{version}");

        // Silent from now on: closed after one and a half keep-alives (MQTT 5 is told why,
        // 0x8D keep alive timeout), not before a keep-alive and not much after.
        let silent = std::time::Instant::now();
        let closing = read_packet(&mut s);
        let waited = silent.elapsed();
        match version {
            5 => assert_eq!(
                closing
                    .as_ref()
                    .map(|(first, body)| (*first, body.first().copied()))
                    .ok(),
                Some((0xE0, Some(0x8D))),
                "{closing:?}"
            ),
            _ => assert!(closing.is_err(), "3.1.1 sees the close: {closing:?}"),
        }
        assert!(
            waited >= Duration::from_millis(1200) && waited < Duration::from_secs(4),
            "closed after {waited:?}"
        );
        let rows = fx.query(&format!(
            "SELECT count(DISTINCT payload->>'n') FROM {{lake}} \
             WHERE payload->>'alive' = '{version}'"
        ));
        assert_eq!(rows, vec![vec![json!(sent)]], "v{version}");
    }
}

#[test]
fn a_workspace_over_its_rate_is_slowed_down_not_refused() {
    // 20 events a second for the workspace: 60 QoS 1 messages must take about two seconds,
    // every one acknowledged, none refused.
    let mut fx = Fixture::start(&["--workspace-events-per-second", "20"]);
    let started = std::time::Instant::now();
    let lines = paho(
        fx.mqtt_port(),
        &with_creds(
            &[
                "publish",
                "--version",
                "5",
                "--count",
                "60",
                "--client-id",
                "paced",
                "--payload",
                r#"{"paced": {i}}"#,
                "--timeout",
                "30",
            ],
            &fx.token,
        ),
    );
    let took = started.elapsed();
    assert_eq!(acked(&lines), 60, "{lines:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "60 events at 20/s were acknowledged in {took:?}"
    );
    let metrics = fx.sluice.metrics();
    assert!(!metrics.contains("quota-exceeded"), "{metrics}");
    let rows = fx.query("SELECT count(*) FROM {lake} WHERE payload->>'paced' IS NOT NULL");
    assert_eq!(rows, vec![vec![json!(60)]]);
}

#[test]
fn a_qos2_duplicate_is_stored_once_and_failed_connects_are_slowed_down() {
    let mut fx = Fixture::start(&[]);
    let port = fx.mqtt_port();

    // QoS 2: the same packet id again before PUBREL (a resend) must not store twice.
    let (mut s, connack) = raw_connect(port, "qos2-dup", "default", &fx.token);
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let payload = br#"{"qos2": "once"}"#;
    s.write_all(&publish_qos2("ingest/telemetry", 7, payload, false))
        .expect("PUBLISH");
    let mut pubrec = [0u8; 4];
    s.read_exact(&mut pubrec).expect("PUBREC");
    assert_eq!(pubrec, [0x50, 0x02, 0x00, 0x07]);
    // The resend gets the same PUBREC again, and the message is not stored twice; PUBREL
    // then completes it (tests/mqtt_conformance.rs checks the bytes of more cases).
    s.write_all(&publish_qos2("ingest/telemetry", 7, payload, true))
        .expect("resend");
    s.read_exact(&mut pubrec).expect("PUBREC again");
    assert_eq!(pubrec, [0x50, 0x02, 0x00, 0x07]);
    s.write_all(&[0x62, 0x02, 0x00, 0x07]).expect("PUBREL");
    let mut pubcomp = [0u8; 4];
    s.read_exact(&mut pubcomp).expect("PUBCOMP");
    assert_eq!(pubcomp, [0x70, 0x02, 0x00, 0x07]);
    drop(s);

    // CONNECT refusals from one address: after 10 in a minute each answer is delayed, 250 ms
    // more per failure.
    let refuse = || {
        let started = std::time::Instant::now();
        let (_, connack) = raw_connect(port, "guesser", "default", "sluice_guess");
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x04]);
        started.elapsed()
    };
    for _ in 0..10 {
        refuse();
    }
    let slowed = refuse();
    let slower = refuse();
    // A timer wheel may end a sleep a few milliseconds early: compare with some margin.
    assert!(
        slowed >= Duration::from_millis(200),
        "11th refusal took {slowed:?}"
    );
    assert!(
        slower >= Duration::from_millis(400),
        "12th refusal took {slower:?}"
    );

    let rows = fx.query("SELECT count(*) FROM {lake} WHERE payload->>'qos2' = 'once'");
    assert_eq!(rows, vec![vec![json!(1)]]);
}

/// `mqtt.io_driver` no longer chooses anything (MQTT runs on epoll), but a configuration or
/// command line naming it still starts, and says so.
#[test]
fn an_io_driver_setting_still_starts_the_node_and_mqtt_can_be_turned_off() {
    let mut fx = Fixture::start(&["--mqtt-io-driver", "io_uring"]);
    assert!(
        fx.sluice.log().contains("is not used any more"),
        "{}",
        fx.sluice.log()
    );
    let lines = paho(
        fx.mqtt_port(),
        &with_creds(
            &[
                "publish",
                "--qos",
                "1",
                "--payload",
                r#"{"driver": "io_uring"}"#,
            ],
            &fx.token,
        ),
    );
    assert_eq!(acked(&lines), 1, "{lines:?}");
    let rows = fx.query("SELECT count(*) FROM {lake} WHERE payload->>'driver' = 'io_uring'");
    assert_eq!(rows, vec![vec![json!(1)]]);

    // `--mqtt-addr off`: HTTP serves, and the node opens no MQTT listener at all (not even
    // the default port).
    let off = Fixture::start(&["--mqtt-addr", "off"]);
    assert!(
        !off.sluice.log().contains("MQTT listening"),
        "{}",
        off.sluice.log()
    );
    assert!(fx.sluice.log().contains("MQTT listening"));
    assert!(off.sluice.readyz()["ready"].as_bool().unwrap_or(false));
}

/// Connections that stop taking part are closed: a TLS handshake never finished and a CONNECT
/// never sent within `mqtt.connect_timeout_secs`, and a client that stops reading its answers
/// after one and a half keep-alives of waiting to write them. Everyone else is served
/// throughout.
#[test]
fn connections_that_stall_are_closed_and_the_node_serves_others() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let server = certs.path().join("server.pem");
    let server = server.to_str().expect("path");
    let config = certs.path().join("sluice.toml");
    std::fs::write(&config, "[mqtt]\nconnect_timeout_secs = 1\n").expect("config");
    let tls_port = common::free_port();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let mut fx = Fixture::start(&[
        "--config",
        config.to_str().expect("utf8"),
        "--mqtts-addr",
        &tls_addr,
        "--mqtt-tls-cert",
        server,
        "--mqtt-tls-key",
        server,
    ]);
    let port = fx.mqtt_port();

    // Silent after the TCP handshake, on the TLS port and on the plain one; and a TLS record
    // header promising a ClientHello that never comes.
    let mut stalled = vec![
        (
            "TLS, nothing sent",
            TcpStream::connect(&tls_addr).expect("connect"),
        ),
        (
            "plain, nothing sent",
            TcpStream::connect(("127.0.0.1", port)).expect("connect"),
        ),
    ];
    let mut half_hello = TcpStream::connect(&tls_addr).expect("connect");
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("send");
    stalled.push(("TLS, half a ClientHello", half_hello));
    let started = std::time::Instant::now();
    for (what, s) in &mut stalled {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        let closed = closed_within(s, left).map(|_| started.elapsed());
        assert!(
            closed.is_some_and(|t| t >= Duration::from_millis(800)),
            "{what}: closed after the connect timeout of 1 s, not before and not never: {closed:?}"
        );
    }

    // A client that publishes at QoS 1 and never reads a PUBACK: once the node's answers
    // fill the socket, the node waits 1.5 keep-alives (1.5 s) to write them, then closes,
    // and the client's writes fail.
    let s = connected(port, 5, "deaf", &fx.token, 1);
    let mut writer = s.try_clone().expect("clone");
    writer
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("write timeout");
    let flood = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut id = 0u16;
        loop {
            let mut burst = Vec::new();
            for _ in 0..256 {
                id = id % u16::MAX + 1;
                burst.extend(publish_raw(
                    0x32,
                    "ingest/telemetry",
                    Some(id),
                    Some(&[]),
                    br#"{"deaf":1}"#,
                ));
            }
            if let Err(err) = writer.write_all(&burst) {
                return (started.elapsed(), err.kind());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return (started.elapsed(), std::io::ErrorKind::TimedOut);
            }
        }
    });
    // Meanwhile another device is served.
    served(port, &fx.token, "meanwhile");
    let (took, kind) = flood.join().expect("the flooding thread");
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the node gave the deaf client up: {kind:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(20), "given up after {took:?}");
    drop(s);
    served(port, &fx.token, "after");
    let rows = fx.query(
        "SELECT count(*) FILTER (WHERE device_id IN ('meanwhile', 'after')), \
         count(*) FILTER (WHERE device_id = 'deaf') > 0 FROM {lake}",
    );
    assert_eq!(rows, vec![vec![json!(2), json!(true)]]);
}

/// Asserts that device `client_id` gets one QoS 1 publish acknowledged (Paho, MQTT 5).
fn served(port: u16, token: &str, client_id: &str) {
    let lines = paho(
        port,
        &with_creds(
            &[
                "publish",
                "--version",
                "5",
                "--qos",
                "1",
                "--client-id",
                client_id,
            ],
            token,
        ),
    );
    assert_eq!(
        event(&lines, "published")["acked"],
        json!([0]),
        "{client_id}: {lines:?}"
    );
}

/// A node shutting down answers the publishes it is still storing before it sends DISCONNECT
/// 0x8B, and what it acknowledged reaches Parquet.
#[test]
fn a_node_shutting_down_answers_what_it_is_storing_before_its_disconnect() {
    // One event a second for the workspace: the second publish waits for the rate when the
    // node is told to stop, and no drain period holds the close back.
    let mut fx = Fixture::start(&[
        "--workspace-events-per-second",
        "1",
        "--shutdown-drain-ms",
        "0",
    ]);
    let mut s = connected(fx.mqtt_port(), 5, "ending", &fx.token, 30);
    s.write_all(&publish_raw(
        0x32,
        "ingest/telemetry",
        Some(1),
        Some(&[]),
        br#"{"ending":1}"#,
    ))
    .expect("PUBLISH 1");
    let (first, body) = read_packet(&mut s).expect("PUBACK 1");
    assert_eq!((first, &body[..2]), (0x40, &[0u8, 1][..]), "{body:?}");
    assert_eq!(body.get(2).copied().unwrap_or(0), 0, "stored: {body:?}");
    s.write_all(&publish_raw(
        0x32,
        "ingest/telemetry",
        Some(2),
        Some(&[]),
        br#"{"ending":2}"#,
    ))
    .expect("PUBLISH 2");
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Command::new("kill")
        .arg("-TERM")
        .arg(fx.sluice.child.id().to_string())
        .status()
        .expect("kill");
    assert!(signalled.success());

    let (first, body) = read_packet(&mut s).expect("the waiting publish is answered");
    assert_eq!(
        (first, &body[..2]),
        (0x40, &[0u8, 2][..]),
        "PUBACK 2 first: {body:?}"
    );
    assert_eq!(body.get(2).copied().unwrap_or(0), 0, "stored: {body:?}");
    let (first, body) = read_packet(&mut s).expect("then the DISCONNECT");
    assert_eq!(
        (first, body.first().copied()),
        (0xE0, Some(0x8B)),
        "{body:?}"
    );

    fx.sluice.stop();
    let rows = duckdb(
        &fx.lake(),
        "SELECT string_agg(payload->>'ending', ',' ORDER BY payload->>'ending') FROM {lake} \
         WHERE payload->>'ending' IS NOT NULL",
    );
    assert_eq!(
        rows,
        vec![vec![json!("1,2")]],
        "both acknowledged events, once each"
    );
    fx.sluice.restart();
}
