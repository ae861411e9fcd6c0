"""A real MQTT client (Eclipse Paho) for Sluice's tests; prints one JSON object per line.

Actions:
  publish    connect, publish --count messages, wait for their acks, report
  hold       connect and stay connected until the server closes the connection
  subscribe  connect and try to subscribe
  fleet      --clients connections publishing QoS 1 until stopped; one line per PUBACK

Paho (2.x) reports MQTT 3.1.1 CONNACK return codes as their MQTT 5 reason codes
(4 -> 134 bad user name or password, 5 -> 135 not authorized, 2 -> 133 identifier rejected).
"""

import argparse
import json
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

lock = threading.Lock()


def emit(**fields):
    with lock:
        print(json.dumps(fields), flush=True)


def code(reason):
    return getattr(reason, "value", reason)


class Conn:
    def __init__(self, args, client_id):
        version = mqtt.MQTTv5 if args.version == 5 else mqtt.MQTTv311
        kwargs = {"client_id": client_id, "protocol": version}
        if version == mqtt.MQTTv311:
            kwargs["clean_session"] = True
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.client.max_inflight_messages_set(args.inflight)
        self.client.max_queued_messages_set(0)
        if args.username is not None:
            self.client.username_pw_set(args.username, args.password)
        if args.ca:
            self.client.tls_set(ca_certs=args.ca, cert_reqs=ssl.CERT_REQUIRED)
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.connack = None
        self.disconnect_rc = None
        self.acks = {}
        self.ack_cond = threading.Condition()
        self.on_ack = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = None
        self.sub_event = threading.Event()

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.connack = code(reason)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.disconnect_rc = code(reason)
        self.gone.set()
        self.connected.set()
        with self.ack_cond:
            self.ack_cond.notify_all()
        # No automatic reconnect: the tests look at what one connection did.
        client.disconnect()

    def _on_publish(self, client, userdata, mid, reason, properties):
        with self.ack_cond:
            self.acks[mid] = code(reason)
            self.ack_cond.notify_all()
        if self.on_ack is not None:
            self.on_ack(mid, code(reason))

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        self.subscribed = [code(r) for r in reasons]
        self.sub_event.set()

    def connect(self, args):
        try:
            self.client.connect(args.host, args.port, keepalive=args.keepalive)
        except OSError as err:
            emit(event="connect-failed", error=str(err))
            sys.exit(0)
        self.client.loop_start()
        self.connected.wait(args.timeout)
        emit(event="connack", rc=self.connack)
        return self.connack == 0

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish(args):
    conn = Conn(args, args.client_id)
    if not conn.connect(args):
        conn.close()
        return
    mids = []
    for i in range(args.count):
        payload = args.payload.replace("{i}", str(i))
        if args.pad:
            payload = json.dumps({"i": i, "pad": "x" * args.pad})
        payload = payload.encode()
        info = conn.client.publish(args.topic, payload, qos=args.qos)
        mids.append(info.mid)
    deadline = time.time() + args.timeout
    if args.qos > 0:
        with conn.ack_cond:
            while time.time() < deadline and not conn.gone.is_set():
                if all(m in conn.acks for m in mids):
                    break
                conn.ack_cond.wait(0.1)
    else:
        # QoS 0 has no ack; give the messages time to leave and the node time to store them.
        time.sleep(args.settle)
    acked = [i for i, m in enumerate(mids) if conn.acks.get(m) is not None and conn.acks[m] < 128]
    refused = {str(i): conn.acks[m] for i, m in enumerate(mids) if conn.acks.get(m, 0) >= 128}
    gone = conn.gone.is_set()
    emit(event="published", sent=len(mids), acked=acked, refused=refused,
         disconnected=conn.disconnect_rc if gone else None)
    conn.close()


def hold(args):
    conn = Conn(args, args.client_id)
    if not conn.connect(args):
        conn.close()
        return
    conn.gone.wait(args.timeout)
    emit(event="disconnected" if conn.gone.is_set() else "still-connected", rc=conn.disconnect_rc)
    conn.close()


def subscribe(args):
    conn = Conn(args, args.client_id)
    if not conn.connect(args):
        conn.close()
        return
    conn.client.subscribe(args.topic, qos=1)
    conn.sub_event.wait(args.timeout)
    emit(event="suback", codes=conn.subscribed,
         disconnected=conn.disconnect_rc if conn.gone.is_set() else None)
    conn.close()


def fleet(args):
    """Every client publishes {"c": client, "n": seq} at QoS 1 and prints each PUBACK as
    {"c": .., "n": ..}; stops at --duration or when the node goes away."""
    stop = time.time() + args.duration
    threads = []

    def run(c):
        conn = Conn(args, f"{args.client_id}-{c}")
        if not conn.connect(args):
            return
        pending = {}

        def acked(mid, rc):
            n = pending.pop(mid, None)
            if n is not None and rc < 128:
                emit(c=c, n=n)

        conn.on_ack = acked
        n = 0
        while time.time() < stop and not conn.gone.is_set():
            with conn.ack_cond:
                while len(pending) >= args.inflight and not conn.gone.is_set():
                    conn.ack_cond.wait(0.05)
            if conn.gone.is_set():
                break
            payload = json.dumps({"c": c, "n": n})
            info = conn.client.publish(args.topic, payload, qos=1)
            with conn.ack_cond:
                if info.mid in conn.acks:
                    acked(info.mid, conn.acks[info.mid])
                else:
                    pending[info.mid] = n
            n += 1
        conn.close()

    for c in range(args.clients):
        t = threading.Thread(target=run, args=(c,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(args.duration + args.timeout)
    emit(event="fleet-done")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["publish", "hold", "subscribe", "fleet"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", type=int, choices=[3, 5], default=5)
    p.add_argument("--client-id", default="device-1")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--ca", help="CA certificate (PEM) to verify a TLS server with")
    p.add_argument("--topic", default="ingest/telemetry")
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--payload", default='{"i": {i}}')
    p.add_argument("--pad", type=int, default=0, help="send {i, pad} with this many bytes of padding")
    p.add_argument("--inflight", type=int, default=20)
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()
    {"publish": publish, "hold": hold, "subscribe": subscribe, "fleet": fleet}[args.action](args)


if __name__ == "__main__":
    main()
