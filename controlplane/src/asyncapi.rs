//! The workspace as an AsyncAPI 3.0.0 document: its sources as `ingest_<slug>` channels with
//! the source's JSON Schema as message payload, its tag rules, and its outputs, export
//! endpoints and webhooks (`data_out`), all with the ids that identify them on import
//! (docs/asyncapi.md).
//!
//! The document is built from one consistent read of the state and is a pure function of the
//! workspace (and of the public URLs): maps are ordered by key, entities by slug, tag rules in
//! their order, and its version is the workspace's own (`State::workspace_version`), so that
//! the same workspace always exports the same bytes, whatever other workspaces do. It never
//! holds a secret: no token, hash, password or webhook secret is written.

pub mod data_out;
pub mod import;
#[cfg(test)]
mod roundtrip;
mod spec;

use serde_json::{json, Map, Value};
use url::Url;

use crate::model::{Protocol, Source, Workspace};
use crate::store::State;

/// The AsyncAPI version written and read.
pub const ASYNCAPI_VERSION: &str = "3.0.0";
/// Prefix of the channel key of a source; the key is advisory (the id identifies the source).
pub const INGEST_CHANNEL_PREFIX: &str = "ingest_";
/// Prefix of the message key of a source.
pub const SOURCE_MESSAGE_PREFIX: &str = "source_";
/// HTTP binding version of the operations (AsyncAPI bindings, `http` 0.3.0).
const HTTP_BINDING_VERSION: &str = "0.3.0";
/// MQTT binding version of the operations (AsyncAPI bindings, `mqtt` 0.2.0).
const MQTT_BINDING_VERSION: &str = "0.2.0";

/// Where devices reach the data plane, as the document's `servers` name them.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    /// HTTP ingest, e.g. `https://ingest.example.com`.
    pub ingest: String,
    /// MQTT, e.g. `mqtts://mqtt.example.com:8883`.
    pub mqtt: String,
}

/// An AsyncAPI server from a public URL: `protocol`, `host` (with port) and `pathname`.
fn server(url: &str, default_scheme: &str) -> Map<String, Value> {
    let mut server = Map::new();
    // The URLs are checked when the control plane starts (`ControlPlaneConfig::validate`); an
    // unparsable one is still shown as given rather than dropped.
    let (protocol, host, path) = match Url::parse(url) {
        Ok(u) => {
            let host = match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                (None, _) => String::new(),
            };
            let path = u.path().trim_end_matches('/').to_owned();
            (u.scheme().to_owned(), host, path)
        }
        Err(_) => (default_scheme.to_owned(), url.to_owned(), String::new()),
    };
    let protocol = match protocol.as_str() {
        "mqtts" | "ssl" => "secure-mqtt".to_owned(),
        _ => protocol,
    };
    server.insert("host".into(), Value::String(host));
    server.insert("protocol".into(), Value::String(protocol));
    if !path.is_empty() {
        server.insert("pathname".into(), Value::String(path));
    }
    server
}

/// The HTTP path that ingests into `source` of `ws`, below the ingest server's pathname.
pub fn http_address(ws: &Workspace, source: &Source) -> String {
    format!("/v1/ingest/{}/{}", ws.slug, source.slug)
}

/// The MQTT topic of `source`: devices publish to it or to any topic below it.
pub fn mqtt_topic(source: &Source) -> String {
    format!("ingest/{}", source.slug)
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Mqtt => "mqtt",
    }
}

/// Rewrites every local reference (`"$ref": "#/..."`) in `schema` by `rewrite`. A source's
/// schema refers to its own root (`#/$defs/reading`); inside the AsyncAPI document `#` is the
/// document's root, so exported references are prefixed with the payload's own pointer and
/// imported ones have it taken off again.
pub fn rewrite_refs(schema: &mut Value, rewrite: &dyn Fn(&str) -> Option<String>) {
    match schema {
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                match value {
                    Value::String(r) if key == "$ref" => {
                        if let Some(new) = rewrite(r) {
                            *r = new;
                        }
                    }
                    other => rewrite_refs(other, rewrite),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, rewrite)),
        _ => {}
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The AsyncAPI document of `ws` as of `state`.
pub fn export(state: &State, ws: &Workspace, urls: &PublicUrls) -> Value {
    let mut sources: Vec<&Source> = state.sources_of(ws.id).collect();
    sources.sort_by(|a, b| a.slug.cmp(&b.slug));

    let mut http = server(&urls.ingest, "http");
    http.insert(
        "description".into(),
        json!("HTTP ingest: POST a JSON object, array or NDJSON to the channel's x-sluice-httpAddress"),
    );
    http.insert(
        "security".into(),
        json!([{"$ref": "#/components/securitySchemes/ingestToken"}]),
    );
    let mut mqtt = server(&urls.mqtt, "mqtt");
    mqtt.insert(
        "description".into(),
        json!("MQTT 3.1.1 and 5: publish to the channel's address or any topic below it"),
    );
    mqtt.insert(
        "security".into(),
        json!([{"$ref": "#/components/securitySchemes/mqttToken"}]),
    );

    let mut parts = data_out::Parts::default();
    let data_out::Parts {
        channels,
        operations,
        messages,
        ..
    } = &mut parts;
    for source in &sources {
        let channel_key = format!("{INGEST_CHANNEL_PREFIX}{}", source.slug);
        let message_key = format!("{SOURCE_MESSAGE_PREFIX}{}", source.slug);
        let servers: Vec<Value> = source
            .protocols
            .iter()
            .map(|p| json!({"$ref": format!("#/servers/{}", protocol_name(*p))}))
            .collect();
        let protocols: Vec<&str> = source.protocols.iter().map(|p| protocol_name(*p)).collect();
        channels.insert(
            channel_key.clone(),
            json!({
                "address": mqtt_topic(source),
                "title": source.name,
                "description": format!(
                    "Events of source {:?}: HTTP POST to x-sluice-httpAddress on the http server, \
                     or MQTT publish to the address or a topic below it on the mqtt server.",
                    source.slug
                ),
                "servers": servers,
                "messages": {
                    "event": {"$ref": format!("#/components/messages/{}", pointer_token(&message_key))}
                },
                "x-sluice-sourceId": source.id,
                "x-sluice-slug": source.slug,
                "x-sluice-protocols": protocols,
                "x-sluice-onInvalid": source.on_invalid,
                "x-sluice-keepPayload": source.keep_payload,
                "x-sluice-httpAddress": http_address(ws, source),
            }),
        );
        let mut bindings = Map::new();
        if source.protocols.contains(&Protocol::Http) {
            bindings.insert(
                "http".into(),
                json!({"method": "POST", "bindingVersion": HTTP_BINDING_VERSION}),
            );
        }
        if source.protocols.contains(&Protocol::Mqtt) {
            bindings.insert(
                "mqtt".into(),
                json!({"qos": 1, "retain": false, "bindingVersion": MQTT_BINDING_VERSION}),
            );
        }
        let channel_ref = format!("#/channels/{}", pointer_token(&channel_key));
        operations.insert(
            format!("send_{}", source.slug),
            json!({
                "action": "send",
                "title": format!("Send events to {}", source.name),
                "channel": {"$ref": channel_ref},
                "messages": [{"$ref": format!("{channel_ref}/messages/event")}],
                "bindings": bindings,
            }),
        );
        let mut message = json!({
            "name": message_key,
            "title": format!("An event of {}", source.name),
            "contentType": "application/json",
        });
        if let Some(schema) = &source.schema {
            let mut payload = schema.clone();
            let at = format!(
                "#/components/messages/{}/payload",
                pointer_token(&message_key)
            );
            rewrite_refs(&mut payload, &|r| {
                r.strip_prefix('#').map(|rest| format!("{at}{rest}"))
            });
            message["payload"] = payload;
        }
        messages.insert(message_key, message);
    }

    data_out::export(state, ws, &mut parts);
    let mut servers = parts.servers;
    servers.insert("http".into(), Value::Object(http));
    servers.insert("mqtt".into(), Value::Object(mqtt));
    let version = state.workspace_version(ws.id);
    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": ws.name,
            "version": version.to_string(),
            "description": format!(
                "Workspace {:?} of Sluice: its ingest channels, the schemas that check their \
                 events and the tag rules that shape them; its export endpoints (stream \
                 channels) and webhooks, and the outputs they carry. Entities are identified \
                 by the ids in the x-sluice-* extensions; channel and message keys are \
                 advisory.",
                ws.slug
            ),
            "x-sluice-workspaceId": ws.id,
            "x-sluice-workspaceSlug": ws.slug,
            "x-sluice-configVersion": version,
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": parts.channels,
        "operations": parts.operations,
        "components": {
            "messages": parts.messages,
            "securitySchemes": {
                "ingestToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A workspace access token with the ingest scope, as `Authorization: Bearer <token>`",
                },
                "mqttToken": {
                    "type": "userPassword",
                    "description": "User name: the workspace slug; password: a workspace access token with the ingest scope",
                },
                "readToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A workspace access token with the read scope (and, when it names endpoints, this one), as `Authorization: Bearer <token>`",
                },
            },
        },
        "x-sluice-tagRules": state.tag_rules_of(ws.id),
    })
}
