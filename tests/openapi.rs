//! The OpenAPI document describes what the control-plane API does: Schemathesis (installed by
//! `scripts/test.sh` from tests/requirements.txt) generates requests from the served document,
//! valid and invalid ones, sends them to a real `sluice up` as the operator, and checks every
//! answer against the document: its status is documented, its media type and body are the
//! documented ones, valid requests are not refused with 400 and invalid ones are refused, and
//! nothing answers 5xx.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::controlplane::Api;
use common::Sluice;
use serde_json::json;

/// Requests generated per operation and phase: enough for the boundaries of every constraint,
/// few enough for the run to take well under a minute on two cores.
const EXAMPLES_PER_OPERATION: &str = "10";

/// Fixed, so that a failure reproduces; change it to explore other requests.
const SEED: &str = "1";

/// Longest the run may take before the test gives up on it.
const RUN_TIME_MAX: Duration = Duration::from_secs(240);

/// The operations left out, and the checks relaxed per operation. Each entry says why.
const CONFIG: &str = r#"
# The checks about the document's truthfulness; the others test authorization and API design,
# which the control plane's own tests cover.
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
negative_data_rejection.enabled = true
positive_data_acceptance.enabled = true

# Left out of the run:
# - config_stream: a long-lived NDJSON stream that never ends on its own (and with no cluster
#   secret configured it answers 404 cluster-disabled to everything anyway);
# - revoke_personal_token: stateful testing finds the run's own token in GET /api/v1/me/tokens
#   and would revoke it, after which every request is 401.
[[operations]]
include-operation-id = ["config_stream", "revoke_personal_token"]
enabled = false

# Operations that refuse some schema-valid requests for rules JSON Schema cannot state; every
# other check still runs on them, negative data included.
[[operations]]
# A one-time code is right only if it was mailed (400 invalid-code); a new password must also
# not be the e-mail address or one repeated character (400 weak-password). `/auth/verify`
# needs a sign-in held in the browser (400 sign-in-state-invalid without one).
include-operation-id = ["verify_email", "verify_form", "reset_password", "verify_identity"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# Only a session can sign out; the run uses a personal access token (400 not-a-session).
include-operation-id = ["sign_out"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# The password must not be the e-mail address or one repeated character (400 weak-password).
include-operation-id = ["sign_up", "signup_form"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# `expires_at` must be in the future (400 invalid-expiry); a token's `sources` must name
# sources the workspace has (400 unknown-source) and its `endpoints` endpoints it has (400
# unknown-export-endpoint); a token has one scope and only that scope's limits (400
# invalid-scopes).
include-operation-id = ["create_token", "create_personal_token"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# A source's `schema` must itself be a JSON Schema the nodes can compile (400 invalid-schema),
# and `keep_payload: false` needs a schema that gives typed columns (400 invalid-body).
include-operation-id = ["create_source", "update_source"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# A tag rule's `sources` must name sources the workspace has (400 unknown-source), a topic
# pattern must capture a segment and its `device_id` name a capture, and an `id` in a list must
# be one of the workspace's rules (400 invalid-tag-rule).
include-operation-id = ["create_tag_rule", "replace_tag_rules", "update_tag_rule"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# An output's `source` must name a source the workspace has (400 unknown-source), a condition's
# `value` must suit its `op`, field names must be unique, the whole output must fit 16 KiB and,
# where the source has a schema, every pointer must name a property of it (400
# invalid-output); an endpoint's `output` must name an output the workspace has (400
# unknown-output).
include-operation-id = ["create_output", "update_output", "create_export_endpoint", "update_export_endpoint"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# The body must be a whole AsyncAPI 3.0.0 document whose sources, schemas, tag rules and ids
# fit the workspace (422 invalid-asyncapi, every problem listed), and `If-Match` must name the
# current configuration version (412 config-changed): the OpenAPI document can only say
# "an object" for it, the AsyncAPI schema and the workspace's state being outside its reach.
include-operation-id = ["import_asyncapi"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# A webhook's `output` must name an output the workspace has (400 unknown-output) and its URL's
# host must resolve, to public addresses unless the operator allows private ones (400
# invalid-webhook, address-not-allowed): the workspace's state and DNS are outside the
# document's reach.
include-operation-id = ["create_webhook", "update_webhook"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# A password needs a username, and the stored password must be given again when the server
# changes (400 invalid-smtp-settings).
include-operation-id = ["put_smtp"]
checks.positive_data_acceptance.enabled = false
"#;

#[test]
fn schemathesis_finds_no_mismatch_between_the_api_and_its_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    // A personal access token rather than the session: generated requests end sessions
    // (DELETE /api/v1/sessions/current, DELETE /api/v1/me/sessions/{id}), and this way they
    // are tested too without locking the run out.
    let session = api.operator_session(&sluice.data_dir);
    let created = api.post(
        "/api/v1/me/tokens",
        Some(&session),
        json!({"name": "schemathesis"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let token = created.json()["secret"]
        .as_str()
        .expect("the new token's secret")
        .to_owned();

    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write schemathesis.toml");
    let started = Instant::now();
    let (succeeded, output) = schemathesis(
        dir.path(),
        &config,
        &[
            "run",
            &format!("{}/api/v1/openapi.json", sluice.api_url()),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--max-examples",
            EXAMPLES_PER_OPERATION,
            "--seed",
            SEED,
            "--request-timeout",
            "10",
            // Nothing kept between runs: each run starts from the seed alone.
            "--generation-database",
            "none",
        ],
    );
    let took = started.elapsed();
    assert!(
        succeeded,
        "Schemathesis found mismatches between the API and its OpenAPI document (in {took:?}):\n{output}\nserver log:\n{}",
        sluice.log()
    );
    eprintln!("Schemathesis ran in {took:?}:\n{output}");
}

/// Runs the Schemathesis CLI of the test venv in `dir` with `config`; returns whether it
/// exited with success and what it printed. Gives up after [`RUN_TIME_MAX`].
fn schemathesis(dir: &Path, config: &Path, args: &[&str]) -> (bool, String) {
    let log = dir.join("schemathesis.log");
    let out = std::fs::File::create(&log).expect("schemathesis.log");
    let err = out.try_clone().expect("schemathesis.log");
    let mut child = Command::new(common::python())
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(config)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start schemathesis (pip install -r tests/requirements.txt into .venv)");
    let deadline = Instant::now() + RUN_TIME_MAX;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(status) => (status.success(), output),
        None => (
            false,
            format!("Schemathesis did not finish within {RUN_TIME_MAX:?}:\n{output}"),
        ),
    }
}

/// The password-reset operations (which the sign-in form's "Forgot your password?" uses) are
/// in the served document, with no authentication required.
#[test]
fn the_password_reset_operations_are_documented_without_authentication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let document = api.get("/api/v1/openapi.json", "").json();
    for path in ["/api/v1/password-reset/code", "/api/v1/password-reset"] {
        let post = &document["paths"][path]["post"];
        assert!(post.is_object(), "{path} is not documented");
        assert_eq!(post["security"], json!([{}]), "{path}: {post}");
    }
}
