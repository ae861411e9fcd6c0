//! What nodes report about webhook deliveries, and what the control plane makes of it: each
//! subscription's delivery log (its [`ATTEMPTS_KEPT`] most recent attempts, every node
//! together), its failure log (the most recent batches given up), and its health, which
//! disables it after failing for `disable_after_s`.
//!
//! Health is judged by the attempts' own times (`at`, taken as the report's arrival when it is
//! in the future), not by when reports arrive, so that a node that reports late or in bulk is
//! judged the same. `failing_since` is the first attempt that did not deliver after the last
//! one that did, on any node. Reports arrive out of order: a delivery reported late that is
//! newer than `failing_since` clears it, and when failures newer than that delivery are known,
//! `failing_since` restarts at the latest of them (later than exact, so never disabling early).
//! Attempts before `counted_from` (the last re-enabling) do not count, so that reports still on
//! their way do not disable a subscription again right after it is enabled.

use chrono::{DateTime, Utc};
use sluice_config::stream::{
    WebhookAttempt, WebhookOutcome, WEBHOOK_ERROR_CHARS_MAX, WEBHOOK_MESSAGE_ID_CHARS_MAX,
};
use uuid::{NoContext, Timestamp, Uuid};

use crate::mail::Mail;
use crate::model::{
    MailPurpose, Webhook, WebhookAttemptRecord, WebhookDisabled, WebhookHealth, Workspace,
};
use crate::roles::Role;
use crate::store::{Change, State};

/// Attempts kept per subscription in each log.
pub const ATTEMPTS_KEPT: usize = 50;

/// A UUIDv7 of `at` (random in its other bits), so that the logs sort by the attempts' times.
pub fn attempt_id(at: DateTime<Utc>) -> Uuid {
    let seconds = u64::try_from(at.timestamp()).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        seconds,
        at.timestamp_subsec_nanos(),
    ))
}

/// `text` cut at `chars` characters.
fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// A node's attempt as the logs keep it: its time no later than `now`, its texts bounded.
pub fn record(
    webhook: &Webhook,
    node: &str,
    attempt: &WebhookAttempt,
    now: DateTime<Utc>,
) -> WebhookAttemptRecord {
    let at = attempt.at.min(now);
    WebhookAttemptRecord {
        id: attempt_id(at),
        webhook_id: webhook.id,
        workspace_id: webhook.workspace_id,
        node: node.to_owned(),
        at,
        outcome: attempt.outcome,
        status: attempt.status,
        events: attempt.events,
        first_event_id: attempt.first_event_id,
        last_event_id: attempt.last_event_id,
        duration_ms: attempt.duration_ms,
        error: attempt
            .error
            .as_deref()
            .map(|e| cut(e, WEBHOOK_ERROR_CHARS_MAX)),
        webhook_message_id: cut(&attempt.webhook_message_id, WEBHOOK_MESSAGE_ID_CHARS_MAX),
        test: false,
    }
}

/// The changes that add `new` attempts (of any webhooks) to the delivery logs and, the
/// `failed` ones of nodes (batches given up; not tests), to the failure logs, dropping what falls out of each window. Attempts of
/// webhooks that no longer exist are dropped.
pub fn log_changes(s: &State, new: &[WebhookAttemptRecord]) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut webhooks: Vec<Uuid> = new.iter().map(|a| a.webhook_id).collect();
    webhooks.sort();
    webhooks.dedup();
    for webhook in webhooks.into_iter().filter(|w| s.webhooks.contains_key(w)) {
        let mine = new.iter().filter(|a| a.webhook_id == webhook);
        let kept: Vec<Uuid> = s.webhook_deliveries_of(webhook).map(|a| a.id).collect();
        window(
            kept,
            mine.clone().cloned().collect(),
            Change::PutWebhookDelivery,
            |id| Change::DeleteWebhookDelivery(webhook, id),
            &mut changes,
        );
        let kept: Vec<Uuid> = s.webhook_failures_of(webhook).map(|a| a.id).collect();
        window(
            kept,
            mine.filter(|a| a.outcome == WebhookOutcome::Failed && !a.test)
                .cloned()
                .collect(),
            Change::PutWebhookFailure,
            |id| Change::DeleteWebhookFailure(webhook, id),
            &mut changes,
        );
    }
    changes
}

/// One log's changes: the newest [`ATTEMPTS_KEPT`] of `kept` (ids) and `new` stay.
fn window(
    kept: Vec<Uuid>,
    new: Vec<WebhookAttemptRecord>,
    put: impl Fn(WebhookAttemptRecord) -> Change,
    delete: impl Fn(Uuid) -> Change,
    changes: &mut Vec<Change>,
) {
    if new.is_empty() {
        return;
    }
    let mut all: Vec<(Uuid, Option<WebhookAttemptRecord>)> =
        kept.into_iter().map(|id| (id, None)).collect();
    all.extend(new.into_iter().map(|a| (a.id, Some(a))));
    all.sort_by_key(|(id, _)| *id);
    let surplus = all.len().saturating_sub(ATTEMPTS_KEPT);
    for (index, (id, record)) in all.into_iter().enumerate() {
        match (index < surplus, record) {
            (true, None) => changes.push(delete(id)),
            (true, Some(_)) => {}
            (false, Some(record)) => changes.push(put(record)),
            (false, None) => {}
        }
    }
}

/// Updates `health` with one attempt (any order).
pub fn judge(health: &mut WebhookHealth, attempt: &WebhookAttemptRecord) {
    if attempt.test || health.counted_from.is_some_and(|from| attempt.at < from) {
        return;
    }
    let at = attempt.at;
    if attempt.outcome == WebhookOutcome::Delivered {
        if health.last_delivered_at.is_none_or(|d| at > d) {
            health.last_delivered_at = Some(at);
        }
        if health.failing_since.is_some_and(|f| f <= at) {
            // Failures after this delivery are known only by the latest of them.
            health.failing_since = health.last_failure_at.filter(|f| *f > at);
        }
        return;
    }
    if health.last_failure_at.is_none_or(|f| at >= f) {
        health.last_failure_at = Some(at);
        health.last_error = attempt.error.clone().or_else(|| {
            attempt
                .status
                .map(|status| format!("the receiver answered {status}"))
        });
    }
    if health.last_delivered_at.is_none_or(|d| at > d)
        && health.failing_since.is_none_or(|f| at < f)
    {
        health.failing_since = Some(at);
    }
}

/// A webhook the reports just disabled.
#[derive(Debug, Clone)]
pub struct Disabled {
    pub workspace: Workspace,
    pub webhook: Webhook,
    /// The e-mail addresses of the workspace's Admins.
    pub admins: Vec<String>,
}

/// Whether `health` has failed long enough at `now` to disable `webhook`; the disabling when
/// it has.
pub fn disabling(
    webhook: &Webhook,
    health: &WebhookHealth,
    now: DateTime<Utc>,
) -> Option<WebhookDisabled> {
    let since = health.failing_since?;
    let failing_s = (now - since).num_seconds();
    if !webhook.enabled || failing_s < i64::try_from(webhook.disable_after_s).unwrap_or(i64::MAX) {
        return None;
    }
    let last_error = health.last_error.as_deref().unwrap_or("no error text");
    Some(WebhookDisabled {
        at: now,
        reason: format!(
            "failing since {} (last error: {last_error}), more than disable_after_s ({} s)",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            webhook.disable_after_s
        ),
    })
}

/// The changes a node's report makes: the logs, each webhook's health, and the disabling of
/// those that failed too long (a new configuration version, so that nodes stop). Returns the
/// webhooks disabled, for the mail to their Admins.
pub fn report_changes(
    s: &State,
    node: &str,
    attempts: &[WebhookAttempt],
    now: DateTime<Utc>,
) -> (Vec<Change>, Vec<Disabled>) {
    let records: Vec<WebhookAttemptRecord> = attempts
        .iter()
        .filter_map(|a| {
            s.webhooks
                .get(&a.webhook_id)
                .map(|webhook| record(webhook, node, a, now))
        })
        .collect();
    let mut changes = log_changes(s, &records);
    let mut disabled = Vec::new();
    let mut webhooks: Vec<Uuid> = records.iter().map(|a| a.webhook_id).collect();
    webhooks.sort();
    webhooks.dedup();
    for id in webhooks {
        let Some(webhook) = s.webhooks.get(&id) else {
            continue;
        };
        let mut health = s
            .webhook_health
            .get(&id)
            .cloned()
            .unwrap_or_else(|| WebhookHealth::new(webhook, None));
        for attempt in records.iter().filter(|a| a.webhook_id == id) {
            judge(&mut health, attempt);
        }
        if let Some(off) = disabling(webhook, &health, now) {
            let mut updated = webhook.clone();
            updated.enabled = false;
            updated.disabled = Some(off);
            if let Some(workspace) = s.workspaces.get(&webhook.workspace_id) {
                disabled.push(Disabled {
                    workspace: workspace.clone(),
                    webhook: updated.clone(),
                    admins: admins_of(s, workspace.id),
                });
            }
            changes.push(Change::PutWebhook(updated));
        }
        changes.push(Change::PutWebhookHealth(health));
    }
    (changes, disabled)
}

/// The e-mail addresses of a workspace's Admins.
fn admins_of(s: &State, workspace: Uuid) -> Vec<String> {
    s.members_of(workspace)
        .filter(|m| m.role == Role::Admin)
        .filter_map(|m| s.users.get(&m.user_id))
        .map(|u| u.email.clone())
        .collect()
}

/// The mail that tells an Admin a webhook was disabled, through the workspace's mailer.
pub fn disabled_mail(d: &Disabled, to: &str, public_url: &str) -> Mail {
    let reason = d
        .webhook
        .disabled
        .as_ref()
        .map(|x| x.reason.as_str())
        .unwrap_or_default();
    Mail {
        to: to.to_owned(),
        subject: format!(
            "Webhook {} of {} disabled after failing",
            d.webhook.slug, d.workspace.name
        ),
        body: format!(
            "The webhook \"{}\" of the Sluice workspace \"{}\" delivered nothing to {} and was \
             disabled: {reason}.\n\nNo events of output \"{}\" are sent to it until it is \
             enabled again; the events held meanwhile are sent then. Its delivery and failure \
             logs say more:\n\n{public_url}/api/v1/workspaces/{}/webhooks/{}/deliveries\n\n\
             Enable it again, once the receiver works, with PATCH \
             /api/v1/workspaces/{}/webhooks/{} and {{\"enabled\": true}}.\n",
            d.webhook.name,
            d.workspace.name,
            d.webhook.url,
            d.webhook.output,
            d.workspace.slug,
            d.webhook.slug,
            d.workspace.slug,
            d.webhook.slug,
        ),
        purpose: MailPurpose::WebhookDisabled,
        workspace: Some(d.workspace.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn webhook(created_at: DateTime<Utc>) -> Webhook {
        Webhook {
            id: Uuid::now_v7(),
            workspace_id: Uuid::now_v7(),
            slug: "alerts".into(),
            name: "alerts".into(),
            output: "hot".into(),
            url: "https://hooks.example.com/in".into(),
            enabled: true,
            batch_events_max: 500,
            batch_bytes_max: 1 << 20,
            batch_interval_ms: 1000,
            disable_after_s: 600,
            secret_sealed: String::new(),
            secret_for_nodes: None,
            disabled: None,
            created_at,
        }
    }

    fn attempt(w: &Webhook, at: DateTime<Utc>, outcome: WebhookOutcome) -> WebhookAttemptRecord {
        let a = WebhookAttempt {
            webhook_id: w.id,
            at,
            outcome,
            status: Some(if outcome == WebhookOutcome::Delivered {
                200
            } else {
                503
            }),
            events: 1,
            first_event_id: None,
            last_event_id: None,
            duration_ms: 5,
            error: (outcome != WebhookOutcome::Delivered).then(|| "503 busy".into()),
            webhook_message_id: "msg".into(),
        };
        record(w, "n1", &a, Utc::now())
    }

    #[test]
    fn failing_since_is_the_first_failure_after_the_last_delivery_in_any_order() {
        let t0 = Utc::now() - Duration::hours(1);
        let w = webhook(t0);
        let mut health = WebhookHealth::new(&w, Some(t0));
        let at = |s: i64| t0 + Duration::seconds(s);
        judge(&mut health, &attempt(&w, at(10), WebhookOutcome::Retrying));
        judge(&mut health, &attempt(&w, at(5), WebhookOutcome::Retrying));
        assert_eq!(health.failing_since, Some(at(5)), "the earliest failure");
        assert_eq!(health.last_error.as_deref(), Some("503 busy"));
        // A delivery reported late, between the failures: failing again from the later one.
        judge(&mut health, &attempt(&w, at(7), WebhookOutcome::Delivered));
        assert_eq!(health.failing_since, Some(at(10)));
        judge(&mut health, &attempt(&w, at(20), WebhookOutcome::Delivered));
        assert_eq!(health.failing_since, None);
        // Older than the last delivery: no longer failing.
        judge(&mut health, &attempt(&w, at(15), WebhookOutcome::Failed));
        assert_eq!(health.failing_since, None);
        judge(&mut health, &attempt(&w, at(30), WebhookOutcome::Failed));
        assert_eq!(health.failing_since, Some(at(30)));
        // Before it was (re-)enabled: not counted.
        let mut fresh = WebhookHealth::new(&w, Some(at(100)));
        judge(&mut fresh, &attempt(&w, at(50), WebhookOutcome::Retrying));
        assert_eq!(fresh.failing_since, None);
    }

    #[test]
    fn a_webhook_failing_past_disable_after_s_is_disabled_with_the_last_error() {
        let now = Utc::now();
        let w = webhook(now - Duration::hours(2));
        let mut health = WebhookHealth::new(&w, None);
        judge(
            &mut health,
            &attempt(&w, now - Duration::seconds(599), WebhookOutcome::Retrying),
        );
        assert!(disabling(&w, &health, now).is_none());
        judge(
            &mut health,
            &attempt(&w, now - Duration::seconds(601), WebhookOutcome::Retrying),
        );
        let off = disabling(&w, &health, now).expect("disabled");
        assert!(
            off.reason.starts_with("failing since ") && off.reason.contains("503 busy"),
            "{}",
            off.reason
        );
        let mut stopped = w.clone();
        stopped.enabled = false;
        assert!(disabling(&stopped, &health, now).is_none(), "once only");
    }

    #[test]
    fn each_log_keeps_the_newest_50_and_the_failure_log_only_failures() {
        let t0 = Utc::now() - Duration::hours(1);
        let w = webhook(t0);
        let mut s = State::default();
        s.apply(Change::PutWebhook(w.clone()));
        for batch in 0..3 {
            let new: Vec<WebhookAttemptRecord> = (0..30)
                .map(|i| {
                    let outcome = if i % 3 == 0 {
                        WebhookOutcome::Failed
                    } else {
                        WebhookOutcome::Delivered
                    };
                    attempt(&w, t0 + Duration::seconds(batch * 100 + i), outcome)
                })
                .collect();
            for change in log_changes(&s, &new) {
                s.apply(change);
            }
        }
        let kept: Vec<DateTime<Utc>> = s.webhook_deliveries_of(w.id).map(|a| a.at).collect();
        assert_eq!(kept.len(), ATTEMPTS_KEPT);
        assert_eq!(kept.first(), Some(&(t0 + Duration::seconds(110))));
        assert_eq!(kept.last(), Some(&(t0 + Duration::seconds(229))));
        assert_eq!(s.webhook_failures_of(w.id).count(), 30);
        assert!(s
            .webhook_failures_of(w.id)
            .all(|a| a.outcome == WebhookOutcome::Failed));
        // A future time is taken as now.
        let late = attempt(&w, Utc::now() + Duration::days(1), WebhookOutcome::Retrying);
        assert!(late.at <= Utc::now());
    }
}
