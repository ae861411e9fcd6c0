#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs
# formatting, lints and every test.
#
# Installs (idempotent, cached between runs):
#   - .venv/ with the Python packages of tests/requirements.txt: duckdb (tests read the Parquet
#     output with DuckDB), aiosmtpd and trustme (real SMTP servers with test certificates for
#     the mail and TLS tests), openapi-spec-validator (checks the control plane's OpenAPI
#     document), schemathesis (checks the API against that document, tests/openapi.rs) and
#     paho-mqtt (the Eclipse Paho MQTT client of the MQTT tests)
#   - the Debian packages mosquitto-clients and mosquitto when apt-get can install them (the
#     MQTT tests also publish with mosquitto_pub; the MQTT benchmark compares with mosquitto)
#   - Debian's chromium, which the CORS test drives through Playwright (in tests/requirements.txt;
#     it uses the system browser and downloads none)
#   - for deploy/check.sh (the deploy test): kubectl and haproxy from apt when missing, and
#     .venv-deploy/ with deploy/requirements.txt (Checkov, kubernetes-validate,
#     check-jsonschema, hadolint)
#   - s3s-fs, a real S3-compatible server, into ~/.cache/sluice/tools (the s3:// tests)
#   - tests/oidc/node_modules: node-oidc-provider, a real OpenID provider for the sign-in tests
#     (tests/sign_in.rs), with `npm ci` from the committed package-lock.json (needs Node.js)
#   - tests/asyncapi/node_modules: @asyncapi/parser and @asyncapi/specs (with Ajv), which check
#     the AsyncAPI documents of tests/asyncapi.rs, with `npm ci` the same way
#   - tests/mcp/node_modules: @modelcontextprotocol/sdk, the official MCP TypeScript SDK, the
#     client of tests/mcp.rs, with `npm ci` the same way
#   - tests/console/node_modules: axe-core, the accessibility check of the console pages in
#     tests/console.rs, with `npm ci` the same way
#   - cargo-nextest when missing (falls back to cargo test if it cannot be installed)
set -euo pipefail
cd "$(dirname "$0")/.."

# Free disk at each step, so that a run that runs out of space says where.
disk() { df -h . 2>/dev/null | awk 'NR == 2 { print "   (disk: " $4 " free of " $2 ")" }'; }
trap disk EXIT

tools="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}"
mkdir -p "$tools"

echo "== Python venv with duckdb, aiosmtpd, trustme, openapi-spec-validator, paho-mqtt, mcp"; disk
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export SLUICE_TEST_PYTHON="$PWD/.venv/bin/python"

echo "== mosquitto clients and broker (optional)"; disk
if ! command -v mosquitto_pub >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo -n"; fi
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update -q >/dev/null 2>&1 &&
      $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients >/dev/null 2>&1; } ||
    echo "mosquitto could not be installed; the tests that use mosquitto_pub skip that part"
fi

echo "== Chromium (the CORS and console tests drive a real browser with Playwright)"; disk
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo -n"; fi
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update -q >/dev/null 2>&1 &&
      $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } ||
    echo "chromium could not be installed; the CORS browser test will fail"
fi

echo "== deploy/ checks: kubectl (kustomize), HAProxy, and Checkov, kubernetes-validate, check-jsonschema, hadolint in .venv-deploy"; disk
for package in kubectl haproxy; do
  if ! command -v "$package" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo -n"; fi
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null 2>&1 ||
      { $sudo_cmd apt-get update -q >/dev/null 2>&1 &&
        $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null 2>&1; } ||
      echo "$package could not be installed; the deploy test will fail"
  fi
done
# A venv of its own: Checkov pins many packages that would fight with the test venv's.
if [ ! -x .venv-deploy/bin/python ]; then
  python3 -m venv .venv-deploy
fi
.venv-deploy/bin/pip install --quiet --disable-pip-version-check -r deploy/requirements.txt

echo "== s3s-fs (S3-compatible server for the s3:// tests)"; disk
if [ ! -x "$tools/bin/s3s-fs" ]; then
  # 0.14.1 is the newest s3s-fs that builds with rustc 1.95.
  cargo install s3s-fs@0.14.1 --features binary --locked --root "$tools"
fi
export SLUICE_TEST_S3S_FS="$tools/bin/s3s-fs"

echo "== oidc-provider (a real OpenID provider for tests/sign_in.rs)"; disk
# Installed again only when package-lock.json changed since the last install (a copy of it is
# kept in node_modules as the stamp).
if ! cmp -s tests/oidc/package-lock.json tests/oidc/node_modules/.sluice-installed-lock.json; then
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error &&
    cp package-lock.json node_modules/.sluice-installed-lock.json)
fi

echo "== AsyncAPI parser and schemas (tests/asyncapi.rs)"; disk
if ! cmp -s tests/asyncapi/package-lock.json tests/asyncapi/node_modules/.sluice-installed-lock.json; then
  (cd tests/asyncapi && npm ci --no-audit --no-fund --loglevel=error &&
    cp package-lock.json node_modules/.sluice-installed-lock.json)
fi

echo "== MCP TypeScript SDK (tests/mcp.rs)"; disk
if ! cmp -s tests/mcp/package-lock.json tests/mcp/node_modules/.sluice-installed-lock.json; then
  (cd tests/mcp && npm ci --no-audit --no-fund --loglevel=error &&
    cp package-lock.json node_modules/.sluice-installed-lock.json)
fi

echo "== axe-core (tests/console.rs checks console pages for accessibility)"; disk
if ! cmp -s tests/console/package-lock.json tests/console/node_modules/.sluice-installed-lock.json; then
  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error &&
    cp package-lock.json node_modules/.sluice-installed-lock.json)
fi

echo "== cargo fmt"; disk
cargo fmt --all -- --check

echo "== cargo clippy"; disk
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"; disk
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked || true
fi
if command -v cargo-nextest >/dev/null 2>&1; then
  # No doctests in the workspace (doc examples are `text` blocks), so nextest covers all.
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
