// k6 load test for Sluice's HTTP ingest API: POST /v1/ingest/{workspace}/{source}.
//
// Each VU sends POSTs back to back (closed loop), one JSON object per request when BATCH=1,
// otherwise BATCH events as NDJSON. Every answer must be 202 with {"accepted": BATCH}; the run
// fails (non-zero exit) when more than 1% of requests fail or of checks do not pass.
//
// Environment:
//   SLUICE_URL    full ingest URL, e.g. http://127.0.0.1:8081/v1/ingest/default/telemetry
//                 (bootstrap.json's "http_url")
//   SLUICE_TOKEN  ingest token (bootstrap.json's "token")
//   BATCH         events per request [1]
//   VUS           virtual users, i.e. concurrent connections [10]
//   DURATION      how long, k6 syntax [30s]
//
//   k6 run -e SLUICE_URL=... -e SLUICE_TOKEN=... -e BATCH=1000 loadtest/k6/ingest.js
//
// See loadtest/README.md.

import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';

const URL = __ENV.SLUICE_URL;
const TOKEN = __ENV.SLUICE_TOKEN;
const BATCH = parseInt(__ENV.BATCH || '1', 10);
const VUS = parseInt(__ENV.VUS || '10', 10);
const DURATION = __ENV.DURATION || '30s';

if (!URL || !TOKEN) {
  fail('set SLUICE_URL and SLUICE_TOKEN (both are in <data-dir>/bootstrap.json)');
}
if (!(BATCH >= 1)) {
  fail(`BATCH must be a whole number >= 1, got ${__ENV.BATCH}`);
}

export const options = {
  vus: VUS,
  duration: DURATION,
  // Keep-alive connections, as real senders use.
  noConnectionReuse: false,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

// Events the server said it took; its rate in the summary is events/s.
const eventsAccepted = new Counter('events_accepted');

// Bodies are built once per VU in the init stage so that the loop measures the server, not
// JavaScript string building. Values vary from event to event, as real telemetry does.
const SITES = ['plant-north', 'plant-south', 'depot-a', 'depot-b', 'lab-3', 'yard'];
let seq = 0;

function event() {
  seq += 1;
  const device = Math.floor(Math.random() * 5000).toString().padStart(5, '0');
  return JSON.stringify({
    ts: new Date(Date.UTC(2025, 5, 1) + seq * 37).toISOString(),
    device_id: `probe-${device}`,
    site: SITES[seq % SITES.length],
    temp_c: Math.round((15 + Math.random() * 15) * 100) / 100,
    humidity_pct: Math.round((30 + Math.random() * 40) * 10) / 10,
    pressure_hpa: Math.round((980 + Math.random() * 50) * 100) / 100,
    battery_v: Math.round((3.3 + Math.random() * 0.9) * 100) / 100,
    rssi_dbm: -40 - Math.floor(Math.random() * 50),
    status: Math.random() < 0.95 ? 'ok' : 'degraded',
    fw: '2.4.1',
    seq: seq,
  });
}

function body() {
  if (BATCH === 1) {
    return event();
  }
  const lines = [];
  for (let i = 0; i < BATCH; i++) {
    lines.push(event());
  }
  return lines.join('\n') + '\n';
}

const BODIES = [];
for (let i = 0; i < 16; i++) {
  BODIES.push(body());
}

const PARAMS = {
  headers: {
    Authorization: `Bearer ${TOKEN}`,
    'Content-Type': BATCH === 1 ? 'application/json' : 'application/x-ndjson',
  },
  tags: { name: 'ingest' },
};

function acceptedCount(res) {
  try {
    return res.json('accepted');
  } catch (e) {
    return undefined;
  }
}

export default function () {
  const res = http.post(URL, BODIES[__ITER % BODIES.length], PARAMS);
  const accepted = acceptedCount(res);
  const ok = check(res, {
    'status is 202': (r) => r.status === 202,
    'accepted equals batch size': () => accepted === BATCH,
  });
  if (ok) {
    eventsAccepted.add(BATCH);
  }
}
