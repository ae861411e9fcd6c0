//! The node's Prometheus registry: request metrics of the front end plus the storage
//! pipeline's metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_storage::metrics::StorageMetrics;

/// `outcome` is `accepted` or a problem slug (`invalid-token`, `body-too-large`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// `reason` of an MQTT refusal or closed session, e.g. `bad-credentials`, `unknown-source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// `io_driver` (`io_uring` or `epoll`) of an HTTP thread.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IoDriverLabel {
    pub io_driver: &'static str,
}

/// The `outcome` label of everything taken in.
pub const ACCEPTED: &str = "accepted";

/// `qos` (0, 1 or 2) and `outcome` (`accepted` or the refusal) of an MQTT PUBLISH.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub qos: u8,
    pub outcome: &'static str,
}

/// Metrics of the MQTT front end.
pub struct MqttMetrics {
    /// Open MQTT sessions (after a successful CONNECT).
    pub sessions: Gauge,
    pub connects_total: Family<Outcome, Counter>,
    pub publishes_total: Family<PublishLabels, Counter>,
    /// `publishes_total{outcome="accepted"}` for QoS 0, 1 and 2, resolved once: looking a
    /// labelled counter up takes a lock and a hash, which showed in the per-publish profile.
    pub publishes_accepted: [Counter; 3],
    /// Sessions the node closed: taken over, token revoked, workspace disabled, ...
    pub sessions_closed_total: Family<Reason, Counter>,
    pub ack_seconds: Histogram,
    /// Connections waiting for a place among those authenticating (`mqtt.connecting_max`):
    /// above zero, a burst of new connections is being served in turn.
    pub connecting_waiting: Gauge,
}

/// Metrics of export endpoints and webhook deliveries.
pub struct DataOutMetrics {
    /// Live (SSE) streams open.
    pub export_streams: Gauge,
    /// Events sent to readers of export endpoints (live and pages).
    pub export_events_total: Counter,
    /// Webhook attempts by outcome (`delivered`, `retrying`, `failed`).
    pub webhook_attempts_total: Family<Outcome, Counter>,
    /// Events in batches receivers took.
    pub webhook_events_delivered_total: Counter,
}

/// Metrics of the HTTP front end.
pub struct NodeMetrics {
    pub requests_total: Family<Outcome, Counter>,
    pub events_total: Family<Outcome, Counter>,
    /// `requests_total` and `events_total` with `outcome="accepted"`, resolved once for the
    /// hot path (see [`MqttMetrics::publishes_accepted`]).
    pub requests_accepted: Counter,
    pub events_accepted: Counter,
    pub body_bytes_total: Counter,
    pub connections: Gauge,
    pub connections_refused_total: Counter,
    /// HTTP threads serving, by I/O driver: where `auto` met a kernel or seccomp profile that
    /// refuses io_uring, this is where an operator sees it besides the log.
    pub http_threads: Family<IoDriverLabel, Gauge>,
    pub ack_seconds: Histogram,
    pub config_version: Gauge,
    /// 1 while the configuration stream from the control plane is connected.
    pub config_stream_connected: Gauge,
    pub mqtt: MqttMetrics,
    pub data_out: DataOutMetrics,
    registry: Registry,
}

impl NodeMetrics {
    pub fn new(storage: &StorageMetrics) -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests_total = Family::<Outcome, Counter>::default();
        let events_total = Family::<Outcome, Counter>::default();
        let accepted = Outcome { outcome: ACCEPTED };
        let publishes_total = Family::<PublishLabels, Counter>::default();
        let publishes_accepted = [0, 1, 2].map(|qos| {
            publishes_total
                .get_or_create(&PublishLabels {
                    qos,
                    outcome: ACCEPTED,
                })
                .clone()
        });
        let requests_accepted = requests_total.get_or_create(&accepted).clone();
        let events_accepted = events_total.get_or_create(&accepted).clone();
        let metrics = NodeMetrics {
            requests_accepted,
            events_accepted,
            requests_total,
            events_total,
            body_bytes_total: Counter::default(),
            connections: Gauge::default(),
            connections_refused_total: Counter::default(),
            http_threads: Family::default(),
            // 50 µs .. ~3 s
            ack_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
            config_version: Gauge::default(),
            config_stream_connected: Gauge::default(),
            mqtt: MqttMetrics {
                sessions: Gauge::default(),
                connects_total: Family::default(),
                publishes_total,
                publishes_accepted,
                sessions_closed_total: Family::default(),
                ack_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
                connecting_waiting: Gauge::default(),
            },
            data_out: DataOutMetrics {
                export_streams: Gauge::default(),
                export_events_total: Counter::default(),
                webhook_attempts_total: Family::default(),
                webhook_events_delivered_total: Counter::default(),
            },
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "Ingest requests by outcome",
            metrics.requests_total.clone(),
        );
        registry.register(
            "events",
            "Events by outcome (accepted or the refusal)",
            metrics.events_total.clone(),
        );
        registry.register(
            "http_body_bytes",
            "Request body bytes received by ingest (as sent, before decompression)",
            metrics.body_bytes_total.clone(),
        );
        registry.register(
            "http_connections",
            "Open HTTP connections",
            metrics.connections.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections closed at once because the connection limit was reached",
            metrics.connections_refused_total.clone(),
        );
        registry.register(
            "http_threads",
            "HTTP threads serving, by I/O driver",
            metrics.http_threads.clone(),
        );
        registry.register(
            "ingest_ack_seconds",
            "Time from request start to a durable 202",
            metrics.ack_seconds.clone(),
        );
        registry.register(
            "config_version",
            "Version of the configuration snapshot in use",
            metrics.config_version.clone(),
        );
        registry.register(
            "config_stream_connected",
            "1 while the configuration stream from the control plane is connected (0 also when the node has none)",
            metrics.config_stream_connected.clone(),
        );
        let mqtt = &metrics.mqtt;
        registry.register("mqtt_sessions", "Open MQTT sessions", mqtt.sessions.clone());
        registry.register(
            "mqtt_connects",
            "MQTT CONNECTs by outcome (accepted or the refusal)",
            mqtt.connects_total.clone(),
        );
        registry.register(
            "mqtt_publishes",
            "MQTT PUBLISHes by QoS and outcome (accepted or the refusal)",
            mqtt.publishes_total.clone(),
        );
        registry.register(
            "mqtt_sessions_closed",
            "MQTT sessions closed by the node, by reason",
            mqtt.sessions_closed_total.clone(),
        );
        registry.register(
            "mqtt_ack_seconds",
            "Time from a QoS 1 or 2 PUBLISH to its durable PUBACK or PUBREC",
            mqtt.ack_seconds.clone(),
        );
        registry.register(
            "mqtt_connecting_waiting",
            "MQTT connections waiting for a place among those authenticating (mqtt.connecting_max)",
            mqtt.connecting_waiting.clone(),
        );
        let out = &metrics.data_out;
        registry.register(
            "export_streams",
            "Live (SSE) export streams open",
            out.export_streams.clone(),
        );
        registry.register(
            "export_events",
            "Events sent to readers of export endpoints (live streams and pages)",
            out.export_events_total.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts from this node by outcome (delivered, retrying, failed)",
            out.webhook_attempts_total.clone(),
        );
        registry.register(
            "webhook_events_delivered",
            "Events in webhook batches receivers took",
            out.webhook_events_delivered_total.clone(),
        );
        storage.register(&mut registry);
        NodeMetrics {
            registry,
            ..metrics
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
