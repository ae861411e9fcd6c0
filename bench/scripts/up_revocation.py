"""Revocation on `sluice up`: time from the control-plane DELETE of a token to the close of an
MQTT 5 session using it (or, with PROBE_HTTP=1, to the first HTTP ingest refused with that
token), while N other MQTT sessions (the bootstrap token) stay idle. Prints the median and the
largest over the rounds, from the DELETE's start and from its answer. With
PROBE_OTHER_WORKSPACE=1 the revoked tokens belong to a second workspace, so the idle sessions'
workspace never changes (a node re-checks only the sessions of workspaces a change touches).

Usage: python3 bench/scripts/up_revocation.py <sluice binary> <idle sessions> <rounds>
Needs `target/release/sluice-loadtest` (or SLUICE_LOADTEST) for the idle sessions; uses ports
18090 (API), 18081 (HTTP) and 18831 (MQTT) on 127.0.0.1 and a temporary data dir."""
import json, os, shutil, socket, struct, subprocess, sys, tempfile, time, urllib.request

BIN, IDLE, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
LOADTEST = os.environ.get("SLUICE_LOADTEST", "target/release/sluice-loadtest")
API, MQTT = "127.0.0.1:18090", 18831
data = tempfile.mkdtemp(prefix="revoke-")
node = subprocess.Popen([BIN, "up", "--data-dir", data, "--http-addr", "127.0.0.1:18081",
                         "--mqtt-addr", f"127.0.0.1:{MQTT}", "--api-addr", API],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def call(method, path, body=None, token=None):
    req = urllib.request.Request(f"http://{API}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None

def utf8(s):
    b = s.encode(); return struct.pack(">H", len(b)) + b

def varint(n):
    out = b""
    while True:
        d = n % 128; n //= 128
        out += bytes([d | (0x80 if n else 0)])
        if not n: return out

def connect(client, user, password):
    s = socket.create_connection(("127.0.0.1", MQTT), timeout=10)
    vh = utf8("MQTT") + bytes([5, 0xC2]) + struct.pack(">H", 600) + b"\x00"
    pl = utf8(client) + utf8(user) + utf8(password)
    body = vh + pl
    s.sendall(b"\x10" + varint(len(body)) + body)
    ack = s.recv(64)
    assert ack[:1] == b"\x20" and ack[3] == 0, ack
    return s

try:
    for _ in range(100):
        try:
            boot = json.load(open(os.path.join(data, "bootstrap.json")))
            op = json.load(open(os.path.join(data, "initial-operator.json")))
            session = call("POST", "/api/v1/sessions", {"email": op["email"], "password": op["password"]})
            break
        except Exception:
            time.sleep(0.1)
    auth = session["token"]
    ws = boot["workspace"]
    probe_ws = ws
    if os.environ.get("PROBE_OTHER_WORKSPACE"):
        probe_ws = call("POST", "/api/v1/workspaces", {"name": "Revocation probe", "slug": "probe"}, auth)["slug"]
    idle = None
    if IDLE:
        idle = subprocess.Popen([LOADTEST, "mqtt", "--host", "127.0.0.1", "--port", str(MQTT), "--devices", str(IDLE),
                                 "--idle", "--connect-rate", "4000", "--duration-secs", "600", "--warmup-secs", "0",
                                 "--username", ws, "--password", boot["token"], "--topic", "ingest/telemetry"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(IDLE / 4000 + 3)
    took = []
    for i in range(ROUNDS):
        tok = call("POST", f"/api/v1/workspaces/{probe_ws}/tokens", {"name": f"r{i}", "scopes": ["ingest"]}, auth)
        s = None
        for _ in range(50):
            try:
                s = connect(f"probe-{i}", probe_ws, tok["secret"]); break
            except (AssertionError, OSError, IndexError):
                time.sleep(0.05)
        if s is None:
            sys.exit("the probe's MQTT session could not be opened")
        s.settimeout(10)
        t0 = time.perf_counter()
        call("DELETE", f"/api/v1/workspaces/{probe_ws}/tokens/{tok['id']}", None, auth)
        t_api = time.perf_counter()
        if os.environ.get("PROBE_HTTP"):
            while True:
                req = urllib.request.Request(f"http://127.0.0.1:18081/v1/ingest/{probe_ws}/telemetry", method="POST", data=b'{"a":1}')
                req.add_header("Authorization", f"Bearer {tok['secret']}")
                req.add_header("Content-Type", "application/json")
                try:
                    urllib.request.urlopen(req, timeout=5).read()
                except urllib.error.HTTPError as e:
                    if e.code in (401, 403):
                        break
        else:
            s.recv(64)  # DISCONNECT 0x87, or the close
        t1 = time.perf_counter()
        took.append(((t1 - t0) * 1e3, (t1 - t_api) * 1e3))
        s.close()
        time.sleep(0.2)
    took.sort()
    total = [t for t, _ in took]; after = sorted(a for _, a in took)
    where = " (probe in another workspace)" if probe_ws != ws else ""
    print(f"{os.path.basename(BIN)} idle={IDLE}{where}: DELETE->close ms p50 {total[len(total)//2]:.1f} max {total[-1]:.1f}; "
          f"after the API answered p50 {after[len(after)//2]:.1f} max {after[-1]:.1f}")
finally:
    if idle: idle.kill()
    node.terminate(); node.wait(timeout=20)
    shutil.rmtree(data, ignore_errors=True)
