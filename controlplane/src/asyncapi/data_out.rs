//! Outputs, export endpoints and webhooks in the workspace's AsyncAPI document, both ways.
//!
//! The document describes the clients of Sluice, as the ingest channels do (devices `send`):
//! a reader of an export endpoint and a webhook's receiver both `receive`. So:
//!
//! - an export endpoint is a channel `stream_<slug>` whose address is its HTTP path on the
//!   `http` server (the data plane that also takes ingest), with a `receive` operation
//!   (`GET`, a `read` token) and the message `export_<slug>`: one event of its output;
//! - a webhook is a server `webhook_<slug>` (the receiver's host) and a channel
//!   `webhook_<slug>` (the URL's path and query), with a `receive` operation (`POST`) and the
//!   message `webhook_<slug>`: a signed batch, a JSON array of its output's events;
//! - an output is the message `output_<slug>`, whose payload is the JSON Schema of what it
//!   produces, carrying its definition (source, filter, fields) in extensions.
//!
//! Each entity is identified by its id extension. What the document derives from an entity
//! (addresses, servers, operations, payloads of outputs, exports and batches) is ignored on
//! import; what defines it is read back by [`read_outputs`], [`read_endpoint`] and
//! [`read_webhook`], and matched against the workspace by [`plan`]. Never a secret: a webhook's
//! signing secret is neither written nor read.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use serde_json::{json, Map, Value};
use sluice_config::data_out::{
    self, default_batch_bytes, default_batch_events, default_batch_interval, Field, Filter,
    OutputConfig, ENDPOINTS_MAX, OUTPUTS_MAX, WEBHOOKS_MAX,
};
use url::Url;
use uuid::Uuid;

use super::import::{PlannedEntity, Problems};
use super::{pointer_token, rewrite_refs, SOURCE_MESSAGE_PREFIX};
use crate::model::{
    AccessToken, ExportEndpoint, Output, Webhook, WebhookDisabled, WebhookHealth, Workspace,
};
use crate::store::{Change, State};

/// Prefix of an export endpoint's channel key.
pub const STREAM_CHANNEL_PREFIX: &str = "stream_";
/// Prefix of a webhook's channel, server and message keys.
pub const WEBHOOK_PREFIX: &str = "webhook_";
/// Prefix of an output's message key.
pub const OUTPUT_MESSAGE_PREFIX: &str = "output_";
/// Prefix of an export endpoint's message key.
pub const EXPORT_MESSAGE_PREFIX: &str = "export_";
/// HTTP binding version of the operations (AsyncAPI bindings, `http` 0.3.0).
const HTTP_BINDING_VERSION: &str = "0.3.0";

/// Shortest, longest and default `disable_after_s`, as the webhooks API has them.
use crate::api::{DISABLE_AFTER_S_DEFAULT, DISABLE_AFTER_S_MAX, DISABLE_AFTER_S_MIN};

/// What the data-out entities add to a document.
#[derive(Default)]
pub struct Parts {
    pub servers: Map<String, Value>,
    pub channels: Map<String, Value>,
    pub operations: Map<String, Value>,
    pub messages: Map<String, Value>,
}

/// `#/components/messages/<key>`.
fn message_ref(key: &str) -> String {
    format!("#/components/messages/{}", pointer_token(key))
}

/// The JSON Schema `output` produces, with every local reference (which the source's schema
/// gave, relative to its own root) pointing at the source's schema in the document, so that
/// tools resolve it.
fn output_payload(s: &State, ws: &Workspace, output: &Output) -> Value {
    let source_schema = s
        .sources_of(ws.id)
        .find(|x| x.slug == output.source)
        .and_then(|x| x.schema.as_ref());
    let mut payload = output.config().produced_schema(source_schema);
    let at = format!(
        "{}/payload",
        message_ref(&format!("{SOURCE_MESSAGE_PREFIX}{}", output.source))
    );
    rewrite_refs(&mut payload, &|r| {
        r.strip_prefix('#').map(|rest| format!("{at}{rest}"))
    });
    payload
}

/// A webhook's URL as an AsyncAPI server (its scheme and host) and a channel address (its
/// path and query, with `{` and `}` escaped: AsyncAPI reads them as parameters).
fn webhook_address(url: &str) -> (Map<String, Value>, String) {
    let mut server = Map::new();
    let (protocol, host, address) = match Url::parse(url) {
        Ok(u) => {
            let host = match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                (None, _) => String::new(),
            };
            let mut address = u.path().to_owned();
            if let Some(q) = u.query() {
                address.push('?');
                address.push_str(q);
            }
            (u.scheme().to_owned(), host, address)
        }
        // Saved URLs parse (they are checked when saved); one that does not is shown whole.
        Err(_) => ("https".to_owned(), url.to_owned(), "/".to_owned()),
    };
    server.insert("host".into(), Value::String(host));
    server.insert("protocol".into(), Value::String(protocol));
    let address = address.replace('{', "%7B").replace('}', "%7D");
    (server, address)
}

/// Adds the workspace's outputs, export endpoints and webhooks to `parts`, ordered by slug.
pub fn export(s: &State, ws: &Workspace, parts: &mut Parts) {
    let mut outputs: Vec<&Output> = s.outputs_of(ws.id).collect();
    outputs.sort_by(|a, b| a.slug.cmp(&b.slug));
    for output in outputs {
        let key = format!("{OUTPUT_MESSAGE_PREFIX}{}", output.slug);
        parts.messages.insert(
            key.clone(),
            json!({
                "name": key,
                "title": output.name,
                "summary": format!(
                    "What output {:?} produces: events of source {:?}, filtered and projected",
                    output.slug, output.source
                ),
                "contentType": "application/json",
                "payload": output_payload(s, ws, output),
                "x-sluice-outputId": output.id,
                "x-sluice-slug": output.slug,
                "x-sluice-source": output.source,
                "x-sluice-filter": output.filter,
                "x-sluice-fields": output.fields,
            }),
        );
    }

    let mut endpoints: Vec<&ExportEndpoint> = s.export_endpoints_of(ws.id).collect();
    endpoints.sort_by(|a, b| a.slug.cmp(&b.slug));
    for endpoint in endpoints {
        let channel_key = format!("{STREAM_CHANNEL_PREFIX}{}", endpoint.slug);
        let message_key = format!("{EXPORT_MESSAGE_PREFIX}{}", endpoint.slug);
        let channel_ref = format!("#/channels/{}", pointer_token(&channel_key));
        parts.channels.insert(
            channel_key.clone(),
            json!({
                "address": format!("/v1/stream/{}/{}", ws.slug, endpoint.slug),
                "title": endpoint.name,
                "description": format!(
                    "Events of output {:?}, read with a read token: GET on the http server, \
                     live as Server-Sent Events (each event's data one message, its id a \
                     cursor) or page by page as NDJSON (Accept: application/x-ndjson).",
                    endpoint.output
                ),
                "servers": [{"$ref": "#/servers/http"}],
                "messages": {"event": {"$ref": message_ref(&message_key)}},
                "x-sluice-endpointId": endpoint.id,
                "x-sluice-slug": endpoint.slug,
                "x-sluice-output": endpoint.output,
            }),
        );
        parts.operations.insert(
            format!("receive_{channel_key}"),
            json!({
                "action": "receive",
                "title": format!("Read {}", endpoint.name),
                "channel": {"$ref": channel_ref},
                "messages": [{"$ref": format!("{channel_ref}/messages/event")}],
                "security": [{"$ref": "#/components/securitySchemes/readToken"}],
                "bindings": {"http": {
                    "method": "GET",
                    "query": {
                        "type": "object",
                        "properties": {
                            "from": {"type": "string", "enum": ["beginning", "now"]},
                            "since": {"type": "string", "format": "date-time"},
                            "after": {"type": "string", "description": "A cursor: an SSE event's id, or Sluice-Cursor of a page"},
                            "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    },
                    "bindingVersion": HTTP_BINDING_VERSION,
                }},
            }),
        );
        let mut message = json!({
            "name": message_key,
            "title": format!("An event of {}", endpoint.name),
            "contentType": "application/json",
        });
        if s.outputs_of(ws.id).any(|o| o.slug == endpoint.output) {
            message["payload"] = json!({"$ref": format!(
                "{}/payload",
                message_ref(&format!("{OUTPUT_MESSAGE_PREFIX}{}", endpoint.output))
            )});
        }
        parts.messages.insert(message_key, message);
    }

    let mut webhooks: Vec<&Webhook> = s.webhooks_of(ws.id).collect();
    webhooks.sort_by(|a, b| a.slug.cmp(&b.slug));
    for webhook in webhooks {
        let key = format!("{WEBHOOK_PREFIX}{}", webhook.slug);
        let channel_ref = format!("#/channels/{}", pointer_token(&key));
        let (mut server, address) = webhook_address(&webhook.url);
        server.insert(
            "description".into(),
            json!(format!("The receiver of webhook {:?}", webhook.slug)),
        );
        parts.servers.insert(key.clone(), Value::Object(server));
        parts.channels.insert(
            key.clone(),
            json!({
                "address": address,
                "title": webhook.name,
                "description": format!(
                    "Batches of output {:?} that every data-plane node POSTs to x-sluice-url, \
                     signed per Standard Webhooks with the webhook's secret (never in this \
                     document).",
                    webhook.output
                ),
                "servers": [{"$ref": format!("#/servers/{}", pointer_token(&key))}],
                "messages": {"batch": {"$ref": message_ref(&key)}},
                "x-sluice-subscriptionId": webhook.id,
                "x-sluice-slug": webhook.slug,
                "x-sluice-output": webhook.output,
                "x-sluice-url": webhook.url,
                "x-sluice-enabled": webhook.enabled,
                "x-sluice-batchEventsMax": webhook.batch_events_max,
                "x-sluice-batchBytesMax": webhook.batch_bytes_max,
                "x-sluice-batchIntervalMs": webhook.batch_interval_ms,
                "x-sluice-disableAfterS": webhook.disable_after_s,
            }),
        );
        parts.operations.insert(
            format!("receive_{key}"),
            json!({
                "action": "receive",
                "title": format!("Receive the batches of {}", webhook.name),
                "channel": {"$ref": channel_ref},
                "messages": [{"$ref": format!("{channel_ref}/messages/batch")}],
                "bindings": {"http": {"method": "POST", "bindingVersion": HTTP_BINDING_VERSION}},
            }),
        );
        let mut payload = json!({
            "type": "array",
            "minItems": 1,
            "maxItems": webhook.batch_events_max,
        });
        if s.outputs_of(ws.id).any(|o| o.slug == webhook.output) {
            payload["items"] = json!({"$ref": format!(
                "{}/payload",
                message_ref(&format!("{OUTPUT_MESSAGE_PREFIX}{}", webhook.output))
            )});
        }
        let header = |description: &str| json!({"type": "string", "description": description});
        parts.messages.insert(
            key.clone(),
            json!({
                "name": key,
                "title": format!("A batch of {}", webhook.name),
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "properties": {
                        "webhook-id": header("msg_...: the same for every attempt at this batch"),
                        "webhook-timestamp": header("Unix seconds of this attempt"),
                        "webhook-signature": header("v1,<base64 HMAC-SHA256 of \"<webhook-id>.<webhook-timestamp>.<body>\">"),
                    },
                    "required": ["webhook-id", "webhook-timestamp", "webhook-signature"],
                },
                "payload": payload,
            }),
        );
    }
}

/// An output as the document gives it; `id` absent for a new one.
#[derive(Debug, Clone)]
pub struct ProposedOutput {
    pub id: Option<Uuid>,
    /// Pointer of its message.
    pub at: String,
    pub slug: String,
    pub name: String,
    pub source: String,
    pub filter: Filter,
    pub fields: Vec<Field>,
}

/// An export endpoint as the document gives it.
#[derive(Debug, Clone)]
pub struct ProposedEndpoint {
    pub id: Option<Uuid>,
    /// Pointer of its channel.
    pub at: String,
    pub slug: String,
    pub name: String,
    pub output: String,
}

/// A webhook as the document gives it (never its secret).
#[derive(Debug, Clone)]
pub struct ProposedWebhook {
    pub id: Option<Uuid>,
    /// Pointer of its channel.
    pub at: String,
    pub slug: String,
    pub name: String,
    pub output: String,
    pub url: String,
    pub enabled: bool,
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_interval_ms: u64,
    pub disable_after_s: u64,
}

/// What a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Source,
    Stream,
    Webhook,
}

/// What a channel is: its id extension says; without one, a webhook has `x-sluice-url`, an
/// endpoint `x-sluice-output`, else the key's prefix (`stream_`, `webhook_`) says, else it is
/// a source (as in documents written before endpoints and webhooks were in them).
pub fn channel_kind(
    p: &mut Problems,
    at: &str,
    key: &str,
    channel: &Map<String, Value>,
) -> ChannelKind {
    let by_id: Vec<ChannelKind> = [
        ("x-sluice-sourceId", ChannelKind::Source),
        ("x-sluice-endpointId", ChannelKind::Stream),
        ("x-sluice-subscriptionId", ChannelKind::Webhook),
    ]
    .into_iter()
    .filter(|(field, _)| channel.contains_key(*field))
    .map(|(_, kind)| kind)
    .collect();
    if by_id.len() > 1 {
        p.add(
            at,
            "a channel is one entity: it has one of x-sluice-sourceId, x-sluice-endpointId and \
             x-sluice-subscriptionId",
        );
    }
    if let Some(kind) = by_id.first() {
        return *kind;
    }
    if channel.contains_key("x-sluice-url") || key.starts_with(WEBHOOK_PREFIX) {
        ChannelKind::Webhook
    } else if channel.contains_key("x-sluice-output") || key.starts_with(STREAM_CHANNEL_PREFIX) {
        ChannelKind::Stream
    } else {
        ChannelKind::Source
    }
}

fn uuid_at(p: &mut Problems, value: Option<&Value>, at: &str) -> Option<Uuid> {
    let value = value?;
    let id = value.as_str().and_then(|s| Uuid::parse_str(s).ok());
    if id.is_none() {
        p.add(
            at,
            "an id is a UUID as the export gives it; leave it out for a new entity",
        );
    }
    id
}

/// `x-sluice-slug`, or the key without `prefix`; checked.
fn slug_of(
    p: &mut Problems,
    at: &str,
    key: &str,
    prefix: &str,
    entity: &Map<String, Value>,
) -> String {
    let slug = match entity.get("x-sluice-slug") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            p.add(format!("{at}/x-sluice-slug"), "the slug is a string");
            return String::new();
        }
        None => key.strip_prefix(prefix).unwrap_or(key).to_owned(),
    };
    if let Err(e) = crate::api::valid_slug(&slug) {
        p.add(format!("{at}/x-sluice-slug"), e.detail);
    }
    slug
}

/// `title` (the name), or the slug; checked.
fn name_of(p: &mut Problems, at: &str, slug: &str, entity: &Map<String, Value>) -> String {
    match entity.get("title") {
        None => slug.to_owned(),
        Some(Value::String(t)) => {
            match crate::api::valid_text("the name", t, data_out::NAME_LEN_MAX) {
                Ok(name) => name,
                Err(e) => {
                    p.add(format!("{at}/title"), e.detail);
                    String::new()
                }
            }
        }
        Some(_) => {
            p.add(format!("{at}/title"), "the title (the name) is a string");
            String::new()
        }
    }
}

/// A slug another entity names: `field`, a string, required.
fn named_slug(p: &mut Problems, at: &str, field: &str, entity: &Map<String, Value>) -> String {
    match entity.get(field) {
        Some(Value::String(s)) => s.clone(),
        _ => {
            p.add(
                format!("{at}/{field}"),
                format!("{field} is the slug of what this entity reads, a string"),
            );
            String::new()
        }
    }
}

/// `field` as a `T`, or `default` when absent.
fn typed<T: serde::de::DeserializeOwned>(
    p: &mut Problems,
    at: &str,
    field: &str,
    entity: &Map<String, Value>,
    default: T,
    what: &str,
) -> T {
    match entity.get(field) {
        None => default,
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(x) => x,
            Err(e) => {
                p.add(format!("{at}/{field}"), format!("{what}: {e}"));
                default
            }
        },
    }
}

/// Outputs of the document: the messages of `components.messages` with `x-sluice-outputId` or
/// `x-sluice-source`, or keyed `output_<slug>`.
pub fn read_outputs(p: &mut Problems, document: &Value) -> Vec<ProposedOutput> {
    let Some(messages) = document
        .pointer("/components/messages")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, message) in messages {
        let Some(message) = message.as_object() else {
            continue;
        };
        let is_output = message.contains_key("x-sluice-outputId")
            || message.contains_key("x-sluice-source")
            || key.starts_with(OUTPUT_MESSAGE_PREFIX);
        if !is_output {
            continue;
        }
        let at = format!("/components/messages/{}", pointer_token(key));
        let before = p.len();
        let id = uuid_at(
            p,
            message.get("x-sluice-outputId"),
            &format!("{at}/x-sluice-outputId"),
        );
        let slug = slug_of(p, &at, key, OUTPUT_MESSAGE_PREFIX, message);
        let name = name_of(p, &at, &slug, message);
        let source = named_slug(p, &at, "x-sluice-source", message);
        let filter = typed(
            p,
            &at,
            "x-sluice-filter",
            message,
            Filter::default(),
            "not an output's filter",
        );
        let fields = typed(
            p,
            &at,
            "x-sluice-fields",
            message,
            Vec::new(),
            "not an output's fields",
        );
        if p.len() == before {
            out.push(ProposedOutput {
                id,
                at,
                slug,
                name,
                source,
                filter,
                fields,
            });
        }
    }
    out
}

/// The export endpoint a channel describes.
pub fn read_endpoint(
    p: &mut Problems,
    at: &str,
    key: &str,
    channel: &Map<String, Value>,
) -> Option<ProposedEndpoint> {
    let before = p.len();
    let id = uuid_at(
        p,
        channel.get("x-sluice-endpointId"),
        &format!("{at}/x-sluice-endpointId"),
    );
    let slug = slug_of(p, at, key, STREAM_CHANNEL_PREFIX, channel);
    let name = name_of(p, at, &slug, channel);
    let output = named_slug(p, at, "x-sluice-output", channel);
    (p.len() == before).then(|| ProposedEndpoint {
        id,
        at: at.to_owned(),
        slug,
        name,
        output,
    })
}

/// The webhook a channel describes; its URL's form is checked by [`plan`] (it depends on the
/// operator's policy), where its host resolves by the caller.
pub fn read_webhook(
    p: &mut Problems,
    at: &str,
    key: &str,
    channel: &Map<String, Value>,
) -> Option<ProposedWebhook> {
    let before = p.len();
    let id = uuid_at(
        p,
        channel.get("x-sluice-subscriptionId"),
        &format!("{at}/x-sluice-subscriptionId"),
    );
    let slug = slug_of(p, at, key, WEBHOOK_PREFIX, channel);
    let name = name_of(p, at, &slug, channel);
    let output = named_slug(p, at, "x-sluice-output", channel);
    let url = match channel.get("x-sluice-url") {
        Some(Value::String(u)) => u.trim().to_owned(),
        _ => {
            p.add(
                format!("{at}/x-sluice-url"),
                "x-sluice-url is the receiver's URL, https://host[:port]/path?query",
            );
            String::new()
        }
    };
    let enabled = typed(p, at, "x-sluice-enabled", channel, true, "true or false");
    let batch_events_max = typed(
        p,
        at,
        "x-sluice-batchEventsMax",
        channel,
        default_batch_events(),
        "a whole number",
    );
    let batch_bytes_max = typed(
        p,
        at,
        "x-sluice-batchBytesMax",
        channel,
        default_batch_bytes(),
        "a whole number",
    );
    let batch_interval_ms = typed(
        p,
        at,
        "x-sluice-batchIntervalMs",
        channel,
        default_batch_interval(),
        "a whole number",
    );
    let disable_after_s = typed(
        p,
        at,
        "x-sluice-disableAfterS",
        channel,
        DISABLE_AFTER_S_DEFAULT,
        "a whole number",
    );
    if !(DISABLE_AFTER_S_MIN..=DISABLE_AFTER_S_MAX).contains(&disable_after_s) {
        p.add(
            format!("{at}/x-sluice-disableAfterS"),
            format!("disableAfterS is {DISABLE_AFTER_S_MIN} to {DISABLE_AFTER_S_MAX}"),
        );
    }
    (p.len() == before).then(|| ProposedWebhook {
        id,
        at: at.to_owned(),
        slug,
        name,
        output,
        url,
        enabled,
        batch_events_max,
        batch_bytes_max,
        batch_interval_ms,
        disable_after_s,
    })
}

/// What [`plan`] needs besides the state and the document.
pub struct Context<'a> {
    /// The operator's `smtp_allow_private_hosts`.
    pub allow_private: bool,
    /// Who imports, for the reason of a webhook the import disables.
    pub actor: &'a str,
    /// URL -> why its host is not allowed (`Err`), for every URL the document gives a webhook
    /// that is new or changed; checked (resolved) before the store's writer is taken.
    pub url_checks: &'a HashMap<String, Result<(), String>>,
}

/// Matches the document's outputs, endpoints and webhooks against `ws`'s, as `sources` (slug
/// -> schema) leave the workspace: the changes, added to `changes`, and what they do, added
/// to `out`. Every reference must hold in the result.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    p: &mut Problems,
    s: &State,
    ws: &Workspace,
    sources: &HashMap<String, Option<Value>>,
    outputs: Vec<ProposedOutput>,
    endpoints: Vec<ProposedEndpoint>,
    webhooks: Vec<ProposedWebhook>,
    cx: &Context,
    out: &mut super::import::Plan,
    changes: &mut Vec<Change>,
) {
    let now = Utc::now();
    // Deletions first, so that a slug may move from a deleted entity to a new one.
    let mut deletions = Vec::new();
    let mut puts = Vec::new();

    // Outputs.
    if outputs.len() > OUTPUTS_MAX {
        p.add(
            "/components/messages",
            format!("a workspace has at most {OUTPUTS_MAX} outputs"),
        );
    }
    let old_outputs: HashMap<Uuid, &Output> = s.outputs_of(ws.id).map(|o| (o.id, o)).collect();
    let mut ids = HashSet::new();
    let mut slugs: HashMap<String, String> = HashMap::new();
    let mut new_outputs = Vec::new();
    for o in outputs {
        let at_id = format!("{}/x-sluice-outputId", o.at);
        let Some(old) = match_id(
            p,
            &at_id,
            o.id,
            &mut ids,
            &old_outputs,
            "output",
            ws,
            |id| s.outputs.contains_key(&id),
        ) else {
            continue;
        };
        if let Some(old) = old {
            fixed_slug(p, &o.at, "output", &old.slug, &o.slug);
        }
        if slugs.insert(o.slug.clone(), o.at.clone()).is_some() {
            p.add(
                format!("{}/x-sluice-slug", o.at),
                format!("two messages are output {:?}", o.slug),
            );
        }
        let output = Output {
            id: old.map_or_else(Uuid::now_v7, |x| x.id),
            workspace_id: ws.id,
            slug: o.slug,
            name: o.name,
            source: o.source,
            filter: o.filter,
            fields: o.fields,
            created_at: old.map_or(now, |x| x.created_at),
        };
        let config = output.config();
        if let Err(e) = config.check() {
            p.add(&o.at, e.to_string());
        } else {
            match sources.get(&output.source) {
                None => p.add(
                    format!("{}/x-sluice-source", o.at),
                    format!(
                        "output {:?} reads source {:?}, which the document does not have",
                        output.slug, output.source
                    ),
                ),
                Some(Some(schema)) => {
                    if let Err(e) = config.check_against_schema(schema) {
                        p.add(&o.at, e.to_string());
                    }
                }
                Some(None) => {}
            }
        }
        let entity = entity("output", output.id, &output.slug);
        match old {
            None => out.created.push(entity),
            Some(x) if same_output(x, &output) => {}
            Some(_) => out.updated.push(entity),
        }
        if old.is_none_or(|x| !same_output(x, &output)) {
            puts.push(Change::PutOutput(output.clone()));
        }
        new_outputs.push(output);
    }
    let output_slugs: HashSet<&str> = new_outputs.iter().map(|o| o.slug.as_str()).collect();
    let kept: HashSet<Uuid> = new_outputs.iter().map(|o| o.id).collect();
    for old in sorted(
        old_outputs.values().filter(|o| !kept.contains(&o.id)),
        |o| o.slug.as_str(),
    ) {
        out.deleted.push(entity("output", old.id, &old.slug));
        deletions.push(Change::DeleteOutput(old.id));
    }

    // Export endpoints.
    if endpoints.len() > ENDPOINTS_MAX {
        p.add(
            "/channels",
            format!("a workspace has at most {ENDPOINTS_MAX} export endpoints"),
        );
    }
    let old_endpoints: HashMap<Uuid, &ExportEndpoint> =
        s.export_endpoints_of(ws.id).map(|e| (e.id, e)).collect();
    let mut ids = HashSet::new();
    let mut slugs = HashSet::new();
    let mut new_endpoints = Vec::new();
    for e in endpoints {
        let at_id = format!("{}/x-sluice-endpointId", e.at);
        let Some(old) = match_id(
            p,
            &at_id,
            e.id,
            &mut ids,
            &old_endpoints,
            "export endpoint",
            ws,
            |id| s.export_endpoints.contains_key(&id),
        ) else {
            continue;
        };
        if let Some(old) = old {
            fixed_slug(p, &e.at, "export endpoint", &old.slug, &e.slug);
        }
        if !slugs.insert(e.slug.clone()) {
            p.add(
                format!("{}/x-sluice-slug", e.at),
                format!("two channels are export endpoint {:?}", e.slug),
            );
        }
        let endpoint = ExportEndpoint {
            id: old.map_or_else(Uuid::now_v7, |x| x.id),
            workspace_id: ws.id,
            slug: e.slug,
            name: e.name,
            output: e.output,
            created_at: old.map_or(now, |x| x.created_at),
        };
        if let Err(err) = endpoint.config().check() {
            p.add(&e.at, err.to_string());
        } else if !output_slugs.contains(endpoint.output.as_str()) {
            p.add(
                format!("{}/x-sluice-output", e.at),
                format!(
                    "export endpoint {:?} serves output {:?}, which the document does not have",
                    endpoint.slug, endpoint.output
                ),
            );
        }
        let entity = entity("export_endpoint", endpoint.id, &endpoint.slug);
        match old {
            None => out.created.push(entity),
            Some(x) if same_endpoint(x, &endpoint) => {}
            Some(_) => out.updated.push(entity),
        }
        if old.is_none_or(|x| !same_endpoint(x, &endpoint)) {
            puts.push(Change::PutExportEndpoint(endpoint.clone()));
        }
        new_endpoints.push(endpoint);
    }
    let kept: HashSet<Uuid> = new_endpoints.iter().map(|e| e.id).collect();
    for old in sorted(
        old_endpoints.values().filter(|e| !kept.contains(&e.id)),
        |e| e.slug.as_str(),
    ) {
        // A token's endpoints never change behind its creator's back, and an endpoint made
        // later under the same slug must not become readable by it (as the API refuses).
        let named_by: Vec<&AccessToken> = s
            .tokens_of(ws.id)
            .filter(|t| t.endpoints.as_ref().is_some_and(|l| l.contains(&old.slug)))
            .collect();
        if !named_by.is_empty() {
            let tokens: Vec<String> = named_by
                .iter()
                .map(|t| format!("{:?} ({})", t.name, t.id))
                .collect();
            p.add(
                "/channels",
                format!(
                    "export endpoint {:?} ({}) would be deleted, but access token(s) {} name it: \
                     keep its channel, or revoke the token(s) first",
                    old.slug,
                    old.id,
                    tokens.join(", ")
                ),
            );
        }
        out.deleted
            .push(entity("export_endpoint", old.id, &old.slug));
        deletions.push(Change::DeleteExportEndpoint(old.id));
    }

    // Webhooks.
    if webhooks.len() > WEBHOOKS_MAX {
        p.add(
            "/channels",
            format!("a workspace has at most {WEBHOOKS_MAX} webhooks"),
        );
    }
    let old_webhooks: HashMap<Uuid, &Webhook> = s.webhooks_of(ws.id).map(|w| (w.id, w)).collect();
    let mut ids = HashSet::new();
    let mut slugs = HashSet::new();
    let mut new_webhooks = Vec::new();
    for w in webhooks {
        let at_id = format!("{}/x-sluice-subscriptionId", w.at);
        let Some(old) = match_id(
            p,
            &at_id,
            w.id,
            &mut ids,
            &old_webhooks,
            "webhook",
            ws,
            |id| s.webhooks.contains_key(&id),
        ) else {
            continue;
        };
        if let Some(old) = old {
            fixed_slug(p, &w.at, "webhook", &old.slug, &w.slug);
        }
        if !slugs.insert(w.slug.clone()) {
            p.add(
                format!("{}/x-sluice-slug", w.at),
                format!("two channels are webhook {:?}", w.slug),
            );
        }
        let mut webhook = match old {
            Some(x) => (*x).clone(),
            None => Webhook {
                id: Uuid::now_v7(),
                workspace_id: ws.id,
                slug: w.slug.clone(),
                name: String::new(),
                output: String::new(),
                url: String::new(),
                enabled: true,
                batch_events_max: 0,
                batch_bytes_max: 0,
                batch_interval_ms: 0,
                disable_after_s: 0,
                // Made by the caller, who holds the keys, for the webhooks this creates.
                secret_sealed: String::new(),
                secret_for_nodes: None,
                disabled: None,
                created_at: now,
            },
        };
        webhook.slug = w.slug;
        webhook.name = w.name;
        webhook.output = w.output;
        webhook.url = w.url;
        webhook.batch_events_max = w.batch_events_max;
        webhook.batch_bytes_max = w.batch_bytes_max;
        webhook.batch_interval_ms = w.batch_interval_ms;
        webhook.disable_after_s = w.disable_after_s;
        let url_at = format!("{}/x-sluice-url", w.at);
        if let Err(e) = data_out::check_webhook_url(&webhook.url, cx.allow_private) {
            p.add(&url_at, e);
        } else if let Some(Err(e)) = cx.url_checks.get(&webhook.url) {
            p.add(&url_at, e.clone());
        }
        let mut health = None;
        match (old.map(|x| x.enabled), w.enabled) {
            (None, enabled) => {
                webhook.enabled = enabled;
                if !enabled {
                    webhook.disabled = Some(WebhookDisabled {
                        at: now,
                        reason: format!("created disabled by an AsyncAPI import of {}", cx.actor),
                    });
                }
                // Every attempt counts, as for a webhook the API creates.
                health = Some(WebhookHealth::new(&webhook, None));
            }
            (Some(false), true) => {
                webhook.enabled = true;
                webhook.disabled = None;
                // As PATCH {"enabled": true}: failures so far are forgiven.
                health = Some(WebhookHealth::new(&webhook, Some(now)));
            }
            (Some(true), false) => {
                webhook.enabled = false;
                webhook.disabled = Some(WebhookDisabled {
                    at: now,
                    reason: format!("disabled by an AsyncAPI import of {}", cx.actor),
                });
            }
            _ => {}
        }
        if let Err(e) = webhook.config(cx.allow_private).check() {
            p.add(&w.at, e.to_string());
        } else if !output_slugs.contains(webhook.output.as_str()) {
            p.add(
                format!("{}/x-sluice-output", w.at),
                format!(
                    "webhook {:?} delivers output {:?}, which the document does not have",
                    webhook.slug, webhook.output
                ),
            );
        }
        let entity = entity("webhook", webhook.id, &webhook.slug);
        match old {
            None => out.created.push(entity),
            Some(x) if same_webhook(x, &webhook) => {}
            Some(_) => out.updated.push(entity),
        }
        if let Some(h) = health {
            puts.push(Change::PutWebhookHealth(h));
        }
        if old.is_none_or(|x| !same_webhook(x, &webhook)) {
            puts.push(Change::PutWebhook(webhook.clone()));
        }
        new_webhooks.push(webhook);
    }
    let kept: HashSet<Uuid> = new_webhooks.iter().map(|w| w.id).collect();
    for old in sorted(
        old_webhooks.values().filter(|w| !kept.contains(&w.id)),
        |w| w.slug.as_str(),
    ) {
        out.deleted.push(entity("webhook", old.id, &old.slug));
        deletions.extend(s.webhook_deletion(old.id));
    }

    // The whole workspace as nodes will check it: a last guard for what the checks above do
    // not name (they report the same problems with better pointers).
    if p.is_empty() {
        let source_slugs: Vec<&str> = sources.keys().map(String::as_str).collect();
        let outputs: Vec<OutputConfig> = new_outputs.iter().map(Output::config).collect();
        let endpoints: Vec<_> = new_endpoints.iter().map(ExportEndpoint::config).collect();
        let webhooks: Vec<_> = new_webhooks.iter().map(|w| w.config(true)).collect();
        if let Err(e) = data_out::check_workspace(&source_slugs, &outputs, &endpoints, &webhooks) {
            p.add("", e.to_string());
        }
    }
    // Deletions of data-out entities before anything else of the import; their puts after
    // the sources they read.
    changes.splice(0..0, deletions);
    changes.extend(puts);
}

fn entity(kind: &'static str, id: Uuid, slug: &str) -> PlannedEntity {
    PlannedEntity {
        kind,
        id,
        name: slug.to_owned(),
        secret: None,
    }
}

/// `items` ordered by `key`, so that plans list deletions in a stable order.
fn sorted<'a, T>(items: impl Iterator<Item = &'a &'a T>, key: impl Fn(&T) -> &str) -> Vec<&'a T>
where
    T: 'a,
{
    let mut v: Vec<&T> = items.copied().collect();
    v.sort_by(|a, b| key(a).cmp(key(b)));
    v
}

/// The stored entity an id names: `Some(None)` for a new one (no id), `None` when the id is
/// refused (problem added).
#[allow(clippy::too_many_arguments)]
fn match_id<'s, T>(
    p: &mut Problems,
    at: &str,
    id: Option<Uuid>,
    seen: &mut HashSet<Uuid>,
    existing: &HashMap<Uuid, &'s T>,
    kind: &str,
    ws: &Workspace,
    anywhere: impl Fn(Uuid) -> bool,
) -> Option<Option<&'s T>> {
    let Some(id) = id else {
        return Some(None);
    };
    if !seen.insert(id) {
        p.add(at, format!("{kind} {id} appears twice"));
        return None;
    }
    if let Some(old) = existing.get(&id) {
        return Some(Some(*old));
    }
    if anywhere(id) {
        p.add(at, format!("{kind} {id} belongs to another workspace"));
    } else {
        p.add(
            at,
            format!(
                "workspace {:?} has no {kind} {id}: leave the id out to create one",
                ws.slug
            ),
        );
    }
    None
}

/// Slugs of outputs, endpoints and webhooks are fixed once created, as in the API: endpoints'
/// URLs and read tokens name them.
fn fixed_slug(p: &mut Problems, at: &str, kind: &str, old: &str, new: &str) {
    if old != new {
        p.add(
            format!("{at}/x-sluice-slug"),
            format!(
                "the slug of {kind} {old:?} is fixed once created; to use {new:?}, leave the id \
                 out (a new {kind}) and remove this one"
            ),
        );
    }
}

fn same_output(a: &Output, b: &Output) -> bool {
    a.slug == b.slug
        && a.name == b.name
        && a.source == b.source
        && a.filter == b.filter
        && a.fields == b.fields
}

fn same_endpoint(a: &ExportEndpoint, b: &ExportEndpoint) -> bool {
    a.slug == b.slug && a.name == b.name && a.output == b.output
}

fn same_webhook(a: &Webhook, b: &Webhook) -> bool {
    a.slug == b.slug
        && a.name == b.name
        && a.output == b.output
        && a.url == b.url
        && a.enabled == b.enabled
        && a.batch_events_max == b.batch_events_max
        && a.batch_bytes_max == b.batch_bytes_max
        && a.batch_interval_ms == b.batch_interval_ms
        && a.disable_after_s == b.disable_after_s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asyncapi::import::Plan;
    use crate::model::Source;
    use sluice_config::shaping::OnInvalid;
    use sluice_config::snapshot::{Protocol, Scope};

    fn state() -> (State, Workspace) {
        let ws = Workspace {
            id: Uuid::now_v7(),
            slug: "plant".into(),
            name: "Plant".into(),
            created_by: Uuid::now_v7(),
            created_at: Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        };
        let mut s = State::default();
        s.apply(Change::PutWorkspace(ws.clone()));
        s.apply(Change::PutSource(Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "telemetry".into(),
            name: "telemetry".into(),
            protocols: vec![Protocol::Http],
            schema: None,
            on_invalid: OnInvalid::Reject,
            keep_payload: true,
            created_at: Utc::now(),
        }));
        s.apply(Change::PutOutput(Output {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "hot".into(),
            name: "hot".into(),
            source: "telemetry".into(),
            filter: Filter::default(),
            fields: vec![],
            created_at: Utc::now(),
        }));
        s.apply(Change::PutExportEndpoint(ExportEndpoint {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "live".into(),
            name: "live".into(),
            output: "hot".into(),
            created_at: Utc::now(),
        }));
        s.apply(Change::PutWebhook(Webhook {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "crm".into(),
            name: "crm".into(),
            output: "hot".into(),
            url: "https://93.184.216.34/in".into(),
            enabled: false,
            batch_events_max: 500,
            batch_bytes_max: 1 << 20,
            batch_interval_ms: 1000,
            disable_after_s: 86400,
            secret_sealed: "sealed".into(),
            secret_for_nodes: None,
            disabled: Some(WebhookDisabled {
                at: Utc::now(),
                reason: "failing".into(),
            }),
            created_at: Utc::now(),
        }));
        (s, ws)
    }

    /// The document's data out as the export gives it, read back.
    fn proposed(
        s: &State,
        ws: &Workspace,
    ) -> (
        Vec<ProposedOutput>,
        Vec<ProposedEndpoint>,
        Vec<ProposedWebhook>,
    ) {
        let mut parts = Parts::default();
        export(s, ws, &mut parts);
        let document = json!({"components": {"messages": parts.messages}});
        let mut p = Problems::default();
        let outputs = read_outputs(&mut p, &document);
        let mut endpoints = Vec::new();
        let mut webhooks = Vec::new();
        for (key, channel) in &parts.channels {
            let at = format!("/channels/{key}");
            let channel = channel.as_object().expect("a channel");
            match channel_kind(&mut p, &at, key, channel) {
                ChannelKind::Stream => endpoints.extend(read_endpoint(&mut p, &at, key, channel)),
                ChannelKind::Webhook => webhooks.extend(read_webhook(&mut p, &at, key, channel)),
                ChannelKind::Source => panic!("no source channels here"),
            }
        }
        assert!(p.is_empty());
        (outputs, endpoints, webhooks)
    }

    fn run(
        s: &State,
        ws: &Workspace,
        (outputs, endpoints, webhooks): (
            Vec<ProposedOutput>,
            Vec<ProposedEndpoint>,
            Vec<ProposedWebhook>,
        ),
    ) -> (Vec<String>, Plan, Vec<Change>) {
        let sources = HashMap::from([("telemetry".to_owned(), None)]);
        let checks = HashMap::new();
        let cx = Context {
            allow_private: false,
            actor: "ada@example.com",
            url_checks: &checks,
        };
        let mut p = Problems::default();
        let mut out = Plan::default();
        let mut changes = Vec::new();
        plan(
            &mut p,
            s,
            ws,
            &sources,
            outputs,
            endpoints,
            webhooks,
            &cx,
            &mut out,
            &mut changes,
        );
        let messages = p
            .into_result(())
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{} {}", e.pointer, e.message))
            .collect();
        (messages, out, changes)
    }

    #[test]
    fn the_export_reads_back_as_no_change() {
        let (s, ws) = state();
        let (problems, out, changes) = run(&s, &ws, proposed(&s, &ws));
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(out, Plan::default());
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn slugs_stay_and_an_endpoint_a_token_names_stays() {
        let (mut s, ws) = state();
        s.apply(Change::PutToken(AccessToken {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            name: "board".into(),
            sha256: "0".repeat(64),
            hint: String::new(),
            scopes: vec![Scope::Read],
            sources: None,
            device_id: None,
            endpoints: Some(vec!["live".into()]),
            expires_at: None,
            created_by: Uuid::now_v7(),
            created_at: Utc::now(),
        }));
        let (mut outputs, mut endpoints, webhooks) = proposed(&s, &ws);
        outputs[0].slug = "warm".into();
        // Deleted, and made again under its slug: the token must not read a new endpoint.
        endpoints[0].id = None;
        let (problems, _, _) = run(&s, &ws, (outputs, endpoints, webhooks));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("x-sluice-slug") && p.contains("fixed")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("/channels ") && p.contains("\"board\"")),
            "{problems:?}"
        );
    }

    #[test]
    fn enabling_forgives_failures_and_a_new_webhook_waits_for_its_secret() {
        let (s, ws) = state();
        let (outputs, endpoints, mut webhooks) = proposed(&s, &ws);
        webhooks[0].enabled = true;
        let mut new = webhooks[0].clone();
        new.id = None;
        new.slug = "audit".into();
        new.enabled = false;
        webhooks.push(new);
        let (problems, out, changes) = run(&s, &ws, (outputs, endpoints, webhooks));
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(out.updated.len(), 1);
        assert_eq!(out.created.len(), 1);
        let put: Vec<&Webhook> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PutWebhook(w) => Some(w),
                _ => None,
            })
            .collect();
        let crm = put.iter().find(|w| w.slug == "crm").expect("crm");
        assert!(crm.enabled && crm.disabled.is_none());
        assert_eq!(crm.secret_sealed, "sealed", "kept");
        let audit = put.iter().find(|w| w.slug == "audit").expect("audit");
        assert!(!audit.enabled && audit.disabled.is_some());
        assert!(
            audit.secret_sealed.is_empty(),
            "sealed by the caller, who holds the keys"
        );
        let forgiven = changes.iter().any(|c| {
            matches!(c, Change::PutWebhookHealth(h) if h.webhook_id == crm.id && h.counted_from.is_some())
        });
        assert!(forgiven, "{changes:?}");
    }
}
