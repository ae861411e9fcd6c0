//! Reading an AsyncAPI document back into a workspace's sources, tag rules, outputs, export
//! endpoints and webhooks: the document replaces them (known ids updated, entries without an
//! id created, absent ones deleted). The data-out entities are `data_out`'s; this module reads
//! the document around them and the sources and tag rules.
//!
//! Two steps, so that the expensive one never holds the store's writer: [`read`] checks the
//! document on its own (its structure, every source's JSON Schema, every tag rule) and
//! [`plan`] matches it against the workspace's state inside the write. Both collect every
//! problem they find, each with a JSON pointer into the document, rather than stop at the
//! first. Nothing here trusts the document's size or shape: the caller bounds its bytes, and
//! [`read`] its depth and its number of channels before looking further.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_config::shaping::{self, Extract, OnInvalid, TagRule, TAG_RULES_MAX};
use utoipa::ToSchema;
use uuid::Uuid;

use super::data_out::{self, ChannelKind, ProposedEndpoint, ProposedOutput, ProposedWebhook};
use super::{pointer_token, rewrite_refs, ASYNCAPI_VERSION};
use crate::model::{Protocol, Source, TagRules, Workspace};
use crate::problem::FieldError;
use crate::store::{Change, State};

/// Largest document accepted, in bytes.
pub const DOCUMENT_BYTES_MAX: usize = 4 << 20;
/// Deepest nesting of arrays and objects accepted (a source's schema lives four levels down).
pub const DOCUMENT_DEPTH_MAX: usize = 64;
/// Most channels a document may have.
pub const CHANNELS_MAX: usize = 1000;
/// Most problems reported for one document: enough to fix many at once, and a bound on the
/// answer's size.
const PROBLEMS_MAX: usize = 100;

/// A source as the document gives it; `id` absent for a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposedSource {
    pub id: Option<Uuid>,
    /// Pointer of its channel, for the problems found when matching it.
    pub at: String,
    pub slug: String,
    pub name: String,
    pub protocols: Vec<Protocol>,
    pub schema: Option<Value>,
    pub on_invalid: OnInvalid,
    pub keep_payload: bool,
}

/// A tag rule as the document gives it; `id` absent for a new one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedRule {
    pub id: Option<Uuid>,
    pub name: String,
    #[serde(default)]
    pub sources: Vec<String>,
    pub extract: Extract,
}

/// What a document asks for, checked on its own.
#[derive(Debug, Clone, Default)]
pub struct Proposed {
    pub sources: Vec<ProposedSource>,
    pub rules: Vec<ProposedRule>,
    pub outputs: Vec<ProposedOutput>,
    pub endpoints: Vec<ProposedEndpoint>,
    pub webhooks: Vec<ProposedWebhook>,
}

/// One entity the import creates, updates or deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PlannedEntity {
    /// `source`, `tag_rule`, `output`, `export_endpoint` or `webhook`.
    pub kind: &'static str,
    pub id: Uuid,
    /// The entity's slug, or a tag rule's name.
    pub name: String,
    /// Only for a webhook an applied import created: its signing secret (`whsec_...`), in
    /// this answer only. The document never holds secrets, so this is the one time it shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What an import does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Plan {
    pub created: Vec<PlannedEntity>,
    pub updated: Vec<PlannedEntity>,
    pub deleted: Vec<PlannedEntity>,
}

/// Collects problems up to [`PROBLEMS_MAX`].
#[derive(Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        if self.0.len() < PROBLEMS_MAX {
            self.0.push(FieldError::at(pointer, message));
        }
    }

    /// How many were found (to tell whether an entity added any).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// The deepest nesting in `value`, counted without recursion (a hostile document must not
/// overflow the stack here either), stopping once past `max`.
pub fn depth_exceeds(value: &Value, max: usize) -> bool {
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

/// Reads the text of a document, JSON or YAML; `Err` says why it cannot be read.
pub fn parse(bytes: &[u8], yaml: bool) -> Result<Value, String> {
    if bytes.len() > DOCUMENT_BYTES_MAX {
        return Err(format!(
            "the document is {} bytes; at most {DOCUMENT_BYTES_MAX} are accepted",
            bytes.len()
        ));
    }
    // serde_json stops at 128 levels of nesting and serde_yaml_ng at its own recursion limit,
    // and refuses alias expansions past a bound (no "billion laughs"), so neither reader can
    // be made to recurse or allocate without bound; the depth check below is then cheap.
    let value: Value = if yaml {
        serde_yaml_ng::from_slice(bytes).map_err(|e| format!("the YAML does not read: {e}"))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| format!("the JSON does not read: {e}"))?
    };
    if depth_exceeds(&value, DOCUMENT_DEPTH_MAX) {
        return Err(format!(
            "the document nests deeper than {DOCUMENT_DEPTH_MAX} levels"
        ));
    }
    Ok(value)
}

fn uuid_at(p: &mut Problems, value: Option<&Value>, at: &str) -> Option<Uuid> {
    let value = value?;
    match value.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
        Some(id) => Some(id),
        None => {
            p.add(
                at,
                "an id is a UUID as the export gives it; leave it out for a new entity",
            );
            None
        }
    }
}

/// The message of a channel: inline, or a `$ref` to `#/components/messages/<key>`. Returns it
/// with the pointer of its payload (for the references inside the schema).
fn message_of<'d>(
    p: &mut Problems,
    document: &'d Value,
    channel: &'d Map<String, Value>,
    at: &str,
) -> Option<(&'d Map<String, Value>, String)> {
    let messages = match channel.get("messages") {
        None => return None,
        Some(Value::Object(m)) => m,
        Some(_) => {
            p.add(
                format!("{at}/messages"),
                "messages is an object of messages",
            );
            return None;
        }
    };
    let mut entries = messages.iter();
    let (key, message) = entries.next()?;
    if entries.next().is_some() {
        p.add(
            format!("{at}/messages"),
            "a source's channel has one message, whose payload is the source's schema",
        );
        return None;
    }
    let here = format!("{at}/messages/{}", pointer_token(key));
    let Some(message) = message.as_object() else {
        p.add(here, "a message is an object");
        return None;
    };
    let Some(reference) = message.get("$ref") else {
        return Some((message, format!("#{here}/payload")));
    };
    let target = reference
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/messages/"))
        .filter(|key| !key.contains('/'));
    let found = target.and_then(|key| {
        let key = key.replace("~1", "/").replace("~0", "~");
        document
            .pointer("/components/messages")
            .and_then(|m| m.get(&key))
            .and_then(Value::as_object)
            .map(|m| {
                (
                    m,
                    format!("#/components/messages/{}/payload", pointer_token(&key)),
                )
            })
    });
    if found.is_none() {
        p.add(
            format!("{here}/$ref"),
            "the message is referred to as #/components/messages/<key>, and that message must exist",
        );
    }
    found
}

/// The source a channel describes.
fn read_source(
    p: &mut Problems,
    document: &Value,
    key: &str,
    channel: &Value,
) -> Option<ProposedSource> {
    let at = format!("/channels/{}", pointer_token(key));
    let Some(channel) = channel.as_object() else {
        p.add(at, "a channel is an object");
        return None;
    };
    let before = p.0.len();
    let id = uuid_at(
        p,
        channel.get("x-sluice-sourceId"),
        &format!("{at}/x-sluice-sourceId"),
    );
    // The slug says which source; the channel key only suggests it, so a hand-written channel
    // may leave x-sluice-slug out and be named `ingest_<slug>`.
    let slug = match channel.get("x-sluice-slug") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            p.add(format!("{at}/x-sluice-slug"), "the slug is a string");
            String::new()
        }
        None => key
            .strip_prefix(super::INGEST_CHANNEL_PREFIX)
            .unwrap_or(key)
            .to_owned(),
    };
    if let Err(e) = crate::api::valid_slug(&slug) {
        p.add(format!("{at}/x-sluice-slug"), e.detail);
    }
    let name = match channel.get("title") {
        None => slug.clone(),
        Some(Value::String(t)) => match crate::api::valid_display_name(t) {
            Ok(name) => name,
            Err(e) => {
                p.add(format!("{at}/title"), e.detail);
                String::new()
            }
        },
        Some(_) => {
            p.add(
                format!("{at}/title"),
                "the title (the source's name) is a string",
            );
            String::new()
        }
    };
    let protocols = match channel.get("x-sluice-protocols") {
        None => vec![Protocol::Http, Protocol::Mqtt],
        Some(v) => match serde_json::from_value::<Vec<Protocol>>(v.clone()) {
            Ok(list) if !list.is_empty() => {
                let mut unique = Vec::new();
                for protocol in list {
                    if !unique.contains(&protocol) {
                        unique.push(protocol);
                    }
                }
                unique
            }
            _ => {
                p.add(
                    format!("{at}/x-sluice-protocols"),
                    "protocols are a non-empty list of \"http\" and \"mqtt\"",
                );
                Vec::new()
            }
        },
    };
    let on_invalid = match channel.get("x-sluice-onInvalid") {
        None => OnInvalid::default(),
        Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
            p.add(
                format!("{at}/x-sluice-onInvalid"),
                "onInvalid is \"reject\" or \"quarantine\"",
            );
            OnInvalid::default()
        }),
    };
    let keep_payload = match channel.get("x-sluice-keepPayload") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.add(
                format!("{at}/x-sluice-keepPayload"),
                "keepPayload is true or false",
            );
            true
        }
    };
    let mut schema = None;
    if let Some((message, payload_at)) = message_of(p, document, channel, &at) {
        if let Some(payload) = message.get("payload") {
            let mut payload = payload.clone();
            let mut outside = Vec::new();
            rewrite_refs(&mut payload, &|r| {
                // A reference into the payload loses the payload's place; anything else local
                // would point at the document around the schema, which nodes never see.
                r.strip_prefix(payload_at.as_str())
                    .map(|rest| format!("#{rest}"))
            });
            collect_local_refs(&payload, "", &mut outside);
            let pointer = payload_at.trim_start_matches('#').to_owned();
            for (r, inner) in outside {
                p.add(
                    format!("{pointer}{inner}"),
                    format!(
                        "{r:?} points outside the schema: a source's schema may refer only to \
                         itself (e.g. {payload_at}/$defs/<name>)"
                    ),
                );
            }
            match crate::schema::check(&payload) {
                Ok(()) => schema = Some(payload),
                Err(problems) => {
                    for e in problems {
                        p.add(format!("{pointer}{}", e.pointer), e.message);
                    }
                }
            }
        }
    }
    let typed = schema
        .as_ref()
        .is_some_and(|s| !shaping::columns(s).is_empty());
    if !keep_payload && !typed && p.0.len() == before {
        p.add(
            format!("{at}/x-sluice-keepPayload"),
            "keepPayload false needs a schema whose properties give typed columns: without them \
             nothing of the events would be stored",
        );
    }
    (p.0.len() == before).then_some(ProposedSource {
        id,
        at,
        slug,
        name,
        protocols,
        schema,
        on_invalid,
        keep_payload,
    })
}

/// `$ref`s in `schema` that still point at the document (start with `#/` but were not inside
/// the payload), with their pointers inside the schema.
fn collect_local_refs(schema: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(fields) => {
            for (key, value) in fields {
                let here = format!("{at}/{}", pointer_token(key));
                match value {
                    Value::String(r) if key == "$ref" && r.starts_with("#/components/") => {
                        out.push((r.clone(), here));
                    }
                    Value::String(r) if key == "$ref" && r.starts_with("#/channels/") => {
                        out.push((r.clone(), here));
                    }
                    other => collect_local_refs(other, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_local_refs(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Checks a document on its own: AsyncAPI 3.0.0, its channels as sources, its tag rules.
pub fn read(document: &Value) -> Result<Proposed, Vec<FieldError>> {
    let mut p = Problems::default();
    // The official schema first: it catches what a tool reading the document would refuse
    // (a misspelt field, a wrong type anywhere), which the reading below never looks at.
    for problem in super::spec::check(document, PROBLEMS_MAX) {
        p.add(problem.pointer, problem.message);
    }
    let Some(root) = document.as_object() else {
        p.add("", "an AsyncAPI document is an object");
        return p.into_result(Proposed::default());
    };
    if root.get("asyncapi").and_then(Value::as_str) != Some(ASYNCAPI_VERSION) {
        p.add(
            "/asyncapi",
            format!("the document must be AsyncAPI {ASYNCAPI_VERSION}: \"asyncapi\": \"{ASYNCAPI_VERSION}\""),
        );
    }
    match root.get("info") {
        Some(Value::Object(info)) => {
            for field in ["title", "version"] {
                if !info.get(field).is_some_and(Value::is_string) {
                    p.add(
                        format!("/info/{field}"),
                        format!("info.{field} is a string (AsyncAPI requires it)"),
                    );
                }
            }
        }
        _ => p.add(
            "/info",
            "info is an object with title and version (AsyncAPI requires it)",
        ),
    }
    for field in ["servers", "operations", "components"] {
        if root.get(field).is_some_and(|v| !v.is_object()) {
            p.add(format!("/{field}"), format!("{field} is an object"));
        }
    }
    let mut proposed = Proposed::default();
    match root.get("channels") {
        None => {}
        Some(Value::Object(channels)) if channels.len() > CHANNELS_MAX => p.add(
            "/channels",
            format!(
                "a document has at most {CHANNELS_MAX} channels (it has {})",
                channels.len()
            ),
        ),
        Some(Value::Object(channels)) => {
            for (key, channel) in channels {
                let at = format!("/channels/{}", pointer_token(key));
                let Some(fields) = channel.as_object() else {
                    p.add(at, "a channel is an object");
                    continue;
                };
                match data_out::channel_kind(&mut p, &at, key, fields) {
                    ChannelKind::Source => {
                        if let Some(source) = read_source(&mut p, document, key, channel) {
                            proposed.sources.push(source);
                        }
                    }
                    ChannelKind::Stream => {
                        if let Some(e) = data_out::read_endpoint(&mut p, &at, key, fields) {
                            proposed.endpoints.push(e);
                        }
                    }
                    ChannelKind::Webhook => {
                        if let Some(w) = data_out::read_webhook(&mut p, &at, key, fields) {
                            proposed.webhooks.push(w);
                        }
                    }
                }
            }
        }
        Some(_) => p.add("/channels", "channels is an object"),
    }
    proposed.outputs = data_out::read_outputs(&mut p, document);
    let rules = &mut proposed.rules;
    match root.get("x-sluice-tagRules") {
        None => {}
        Some(Value::Array(list)) if list.len() > TAG_RULES_MAX => p.add(
            "/x-sluice-tagRules",
            format!(
                "a workspace has at most {TAG_RULES_MAX} tag rules (the document has {})",
                list.len()
            ),
        ),
        Some(Value::Array(list)) => {
            for (i, value) in list.iter().enumerate() {
                let at = format!("/x-sluice-tagRules/{i}");
                match serde_json::from_value::<ProposedRule>(value.clone()) {
                    Ok(rule) => {
                        let checked = TagRule {
                            id: rule.id.unwrap_or_else(Uuid::nil),
                            name: rule.name.clone(),
                            sources: rule.sources.clone(),
                            extract: rule.extract.clone(),
                        };
                        match checked.check() {
                            Ok(()) => rules.push(rule),
                            Err(e) => p.add(at, e.to_string()),
                        }
                    }
                    Err(e) => p.add(at, format!("not a tag rule: {e}")),
                }
            }
        }
        Some(_) => p.add(
            "/x-sluice-tagRules",
            "x-sluice-tagRules is a list of tag rules",
        ),
    }
    p.into_result(proposed)
}

/// Matches `proposed` against `ws` in `state`: the changes that make the workspace the
/// document's (none when it already is) and what they do.
pub fn plan(
    state: &State,
    ws: &Workspace,
    proposed: Proposed,
    sources_max: usize,
    cx: &data_out::Context,
) -> Result<(Plan, Vec<Change>), Vec<FieldError>> {
    let mut p = Problems::default();
    let mut out = Plan::default();
    let mut changes = Vec::new();
    let existing: HashMap<Uuid, &Source> = state.sources_of(ws.id).map(|s| (s.id, s)).collect();
    if proposed.sources.len() > sources_max {
        p.add(
            "/channels",
            format!(
                "a workspace has at most {sources_max} sources (the document has {})",
                proposed.sources.len()
            ),
        );
    }
    let mut ids = HashSet::new();
    let mut slugs = HashSet::new();
    let mut kept = HashSet::new();
    // The workspace's sources as the import leaves them: slug -> schema.
    let mut after: HashMap<String, Option<Value>> = HashMap::new();
    let now = Utc::now();
    for source in &proposed.sources {
        let at_id = format!("{}/x-sluice-sourceId", source.at);
        if !slugs.insert(source.slug.clone()) {
            p.add(
                format!("{}/x-sluice-slug", source.at),
                format!("two channels are source {:?}", source.slug),
            );
        }
        let old = match source.id {
            None => None,
            Some(id) if !ids.insert(id) => {
                p.add(at_id, format!("source {id} appears twice"));
                continue;
            }
            Some(id) => match existing.get(&id) {
                Some(old) => Some(*old),
                None if state.sources.contains_key(&id) => {
                    p.add(at_id, format!("source {id} belongs to another workspace"));
                    continue;
                }
                None => {
                    p.add(
                        at_id,
                        format!(
                            "workspace {:?} has no source {id}: leave the id out to create one",
                            ws.slug
                        ),
                    );
                    continue;
                }
            },
        };
        let new = Source {
            id: old.map_or_else(Uuid::now_v7, |o| o.id),
            workspace_id: ws.id,
            slug: source.slug.clone(),
            name: source.name.clone(),
            protocols: source.protocols.clone(),
            schema: source.schema.clone(),
            on_invalid: source.on_invalid,
            keep_payload: source.keep_payload,
            created_at: old.map_or(now, |o| o.created_at),
        };
        let entity = PlannedEntity {
            kind: "source",
            id: new.id,
            name: new.slug.clone(),
            secret: None,
        };
        match old {
            None => out.created.push(entity),
            Some(o) if same_source(o, &new) => {}
            Some(_) => out.updated.push(entity),
        }
        kept.insert(new.id);
        after.insert(new.slug.clone(), new.schema.clone());
        if old.is_none_or(|o| !same_source(o, &new)) {
            changes.push(Change::PutSource(new));
        }
    }
    let mut gone: Vec<&Source> = existing
        .values()
        .filter(|s| !kept.contains(&s.id))
        .copied()
        .collect();
    gone.sort_by(|a, b| a.slug.cmp(&b.slug));
    for s in gone {
        out.deleted.push(PlannedEntity {
            kind: "source",
            id: s.id,
            name: s.slug.clone(),
            secret: None,
        });
        // Deletions first: a slug may move from a deleted source to a new one.
        changes.insert(0, Change::DeleteSource(s.id));
    }

    let old_rules = state.tag_rules_of(ws.id);
    let mut rule_ids = HashSet::new();
    let mut rules = Vec::with_capacity(proposed.rules.len());
    for (i, rule) in proposed.rules.into_iter().enumerate() {
        let at = format!("/x-sluice-tagRules/{i}");
        let old = match rule.id {
            None => None,
            Some(id) if !rule_ids.insert(id) => {
                p.add(format!("{at}/id"), format!("tag rule {id} appears twice"));
                continue;
            }
            Some(id) => match old_rules.iter().find(|r| r.id == id) {
                Some(old) => Some(old),
                None => {
                    let elsewhere = state.tag_rules.values().flatten().any(|r| r.id == id);
                    p.add(
                        format!("{at}/id"),
                        if elsewhere {
                            format!("tag rule {id} belongs to another workspace")
                        } else {
                            format!("workspace {:?} has no tag rule {id}: leave the id out to create one", ws.slug)
                        },
                    );
                    continue;
                }
            },
        };
        let mut seen = HashSet::new();
        let sources: Vec<String> = rule
            .sources
            .into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect();
        for slug in &sources {
            // A slug the stored rule already names may stay after its source went (as the
            // tag-rules API allows), so that an export whose rule outlived its source imports.
            let named_before = old.is_some_and(|o| o.sources.contains(slug));
            if !slugs.contains(slug) && !named_before {
                p.add(
                    format!("{at}/sources"),
                    format!(
                        "tag rule {:?} names source {slug:?}, which the document does not have",
                        rule.name
                    ),
                );
            }
        }
        let new = TagRule {
            id: old.map_or_else(Uuid::now_v7, |o| o.id),
            name: rule.name,
            sources,
            extract: rule.extract,
        };
        let entity = PlannedEntity {
            kind: "tag_rule",
            id: new.id,
            name: new.name.clone(),
            secret: None,
        };
        match old {
            None => out.created.push(entity),
            Some(o) if *o == new => {}
            Some(_) => out.updated.push(entity),
        }
        rules.push(new);
    }
    for old in old_rules.iter().filter(|r| !rule_ids.contains(&r.id)) {
        out.deleted.push(PlannedEntity {
            kind: "tag_rule",
            id: old.id,
            name: old.name.clone(),
            secret: None,
        });
    }
    if let Err(e) = shaping::check_rules(&rules) {
        p.add("/x-sluice-tagRules", e.to_string());
    }
    if rules.as_slice() != old_rules {
        changes.push(Change::PutTagRules(TagRules {
            workspace_id: ws.id,
            rules,
        }));
    }
    data_out::plan(
        &mut p,
        state,
        ws,
        &after,
        proposed.outputs,
        proposed.endpoints,
        proposed.webhooks,
        cx,
        &mut out,
        &mut changes,
    );
    p.into_result((out, changes))
}

fn same_source(a: &Source, b: &Source) -> bool {
    a.slug == b.slug
        && a.name == b.name
        && a.protocols == b.protocols
        && a.schema == b.schema
        && a.on_invalid == b.on_invalid
        && a.keep_payload == b.keep_payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nesting_past_the_bound_is_found_without_recursion() {
        let mut deep = json!(1);
        for _ in 0..10_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(depth_exceeds(&deep, DOCUMENT_DEPTH_MAX));
        assert!(!depth_exceeds(&json!({"a": [{"b": 1}]}), 3));
        assert!(depth_exceeds(&json!({"a": [{"b": [1]}]}), 3));
        // Dropping a Value recurses: take it apart level by level instead.
        let mut v = deep;
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn yaml_aliases_and_nesting_are_bounded() {
        // A "billion laughs": each level doubles by aliases.
        let mut text = String::from("a0: &a0 [x, x]\n");
        for i in 1..40 {
            text.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
        }
        let started = std::time::Instant::now();
        assert!(
            parse(text.as_bytes(), true).is_err(),
            "refused, not expanded"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes(), true).is_err());
        assert!(parse(deep.as_bytes(), false).is_err());
    }

    #[test]
    fn every_problem_is_listed_with_its_pointer() {
        let doc = json!({
            "asyncapi": "2.6.0",
            "info": {"title": "x"},
            "channels": {
                "ingest_a": {"x-sluice-slug": "A!", "x-sluice-protocols": []},
                "ingest_b": {"messages": {"m": {"payload": {"type": 7}}}},
                "ingest_c": {"x-sluice-keepPayload": false},
            },
            "x-sluice-tagRules": [{"name": "r", "extract": {"from": "topic", "pattern": "a/b"}}],
        });
        let problems = read(&doc).expect_err("refused");
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        for expected in [
            "/asyncapi",
            "/info/version",
            "/channels/ingest_a/x-sluice-slug",
            "/channels/ingest_a/x-sluice-protocols",
            "/channels/ingest_b/messages/m/payload/type",
            "/channels/ingest_c/x-sluice-keepPayload",
            "/x-sluice-tagRules/0",
        ] {
            assert!(pointers.contains(&expected), "{expected} in {problems:?}");
        }
    }
}
