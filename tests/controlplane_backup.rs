//! Backing up and restoring the control plane (deploy/README.md, "Backing up and restoring the
//! control plane"): `sluice controlplane backup` takes a consistent copy while the control
//! plane runs and a node follows it; `restore` (control plane stopped) puts it back, and the
//! node converges on the restored configuration: a token revoked after the backup works
//! again, one created after it is refused.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::controlplane::{verified_user, Api};
use common::s3::S3Server;
use common::{free_port, post, wait_for, Proc};
use serde_json::json;

const SECRET: &str = "backup-test-secret";

fn sluice(args: &[&str]) -> Output {
    sluice_with_env(args, &[])
}

fn sluice_with_env(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("sluice runs")
}

#[test]
fn a_backup_taken_while_running_restores_and_the_nodes_converge_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api_port, http) = (free_port(), free_port());
    let cp_dir = dir.path().join("cp");
    let cp = cp_dir.to_str().expect("path");
    let mut control = Proc::start(
        &[
            "controlplane",
            "--data-dir",
            cp,
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
            "--cluster-secret",
            SECRET,
        ]
        .map(String::from),
        dir.path().join("cp.log"),
        format!("http://127.0.0.1:{api_port}/healthz"),
    );
    let api = Api::new(format!("http://127.0.0.1:{api_port}"));
    let _node = Proc::start(
        &[
            "dataplane",
            "--data-dir",
            dir.path().join("node").to_str().expect("path"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--mqtt-addr",
            "off",
            "--http-threads",
            "1",
            "--control-plane",
            &api.base,
            "--cluster-secret",
            SECRET,
        ]
        .map(String::from),
        dir.path().join("node.log"),
        format!("http://127.0.0.1:{http}/healthz"),
    );
    let ingest = |token: &str| {
        post(
            &format!("http://127.0.0.1:{http}/v1/ingest/plant/telemetry"),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            b"{}",
        )
        .status
    };
    let answers =
        |token: &str, status: u16| wait_for(Duration::from_secs(20), || ingest(token) == status);

    let operator = api.operator_session(&cp_dir);
    let ada = verified_user(&api, &cp_dir.join("outbox"), "ada@example.com");
    for (path, body) in [
        (
            "/api/v1/workspaces",
            json!({"name": "Plant", "slug": "plant"}),
        ),
        (
            "/api/v1/workspaces/plant/sources",
            json!({"slug": "telemetry"}),
        ),
    ] {
        assert_eq!(api.post(path, Some(&ada.token), body).status, 201);
    }
    let new_token = || {
        let a = api.post(
            "/api/v1/workspaces/plant/tokens",
            Some(&ada.token),
            json!({"name": "device", "scopes": ["ingest"]}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        (
            a.json()["id"].as_str().expect("id").to_owned(),
            a.json()["secret"].as_str().expect("secret").to_owned(),
        )
    };
    let (before_id, before) = new_token();
    assert!(answers(&before, 202));

    // The backup, while the control plane runs: operators only, never over a file.
    let backup = dir.path().join("cp.backup");
    let backup_arg = backup.to_str().expect("path");
    let out = sluice(&[
        "controlplane",
        "backup",
        backup_arg,
        "--api-url",
        &api.base,
        "--token",
        &ada.token,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
    let out = sluice(&[
        "controlplane",
        "backup",
        backup_arg,
        "--api-url",
        &api.base,
        "--token",
        &operator,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(backup.exists());
    let out = sluice(&[
        "controlplane",
        "backup",
        backup_arg,
        "--api-url",
        &api.base,
        "--token",
        &operator,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an existing file is kept: {out:?}"
    );

    // Changes after the backup: a new token, the first one revoked.
    let (_, after) = new_token();
    let a = api.delete(
        &format!("/api/v1/workspaces/plant/tokens/{before_id}"),
        &ada.token,
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert!(answers(&after, 202) && answers(&before, 401));

    // Restore: refused while the control plane runs, then done with it stopped.
    let out = sluice(&["controlplane", "restore", backup_arg, "--data-dir", cp]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{out:?}"
    );
    control.stop();
    let out = sluice(&["controlplane", "restore", backup_arg, "--data-dir", cp]);
    assert!(out.status.success(), "{out:?}");
    control.restart();

    // The node converges on the restored configuration.
    assert!(
        answers(&before, 202),
        "the token revoked after the backup works again"
    );
    assert!(
        answers(&after, 401),
        "the token created after the backup is gone"
    );
}

/// The same through object storage: `backup s3://…` puts the copy in a bucket (never over an
/// object already there) and `restore s3://…` takes it back, on a real S3 server (s3s-fs).
#[test]
fn a_backup_goes_to_object_storage_and_restores_from_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"), free_port());
    std::fs::create_dir_all(s3.root.join("backups")).expect("bucket");
    let env = s3.env();
    let api_port = free_port();
    let cp_dir = dir.path().join("cp");
    let cp = cp_dir.to_str().expect("path");
    let mut control = Proc::start(
        &[
            "controlplane",
            "--data-dir",
            cp,
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
        ]
        .map(String::from),
        dir.path().join("cp.log"),
        format!("http://127.0.0.1:{api_port}/healthz"),
    );
    let api = Api::new(format!("http://127.0.0.1:{api_port}"));
    let operator = api.operator_session(&cp_dir);
    let ada = verified_user(&api, &cp_dir.join("outbox"), "ada@example.com");
    let workspace = json!({"name": "Kept", "slug": "kept"});
    assert_eq!(
        api.post("/api/v1/workspaces", Some(&ada.token), workspace)
            .status,
        201
    );

    let object = "s3://backups/control-plane/cp.redb";
    let backup = |token: &str| {
        sluice_with_env(
            &[
                "controlplane",
                "backup",
                object,
                "--api-url",
                &api.base,
                "--token",
                token,
            ],
            &env,
        )
    };
    let out = backup(&operator);
    assert!(out.status.success(), "{out:?}");
    assert!(
        s3.root.join("backups/control-plane/cp.redb").is_file(),
        "the object is in the bucket"
    );
    let out = backup(&operator);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an existing object is kept: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{out:?}"
    );

    // A workspace made after the backup is gone once the backup is restored.
    let later = json!({"name": "Later", "slug": "later"});
    assert_eq!(
        api.post("/api/v1/workspaces", Some(&ada.token), later)
            .status,
        201
    );
    control.stop();
    let out = sluice_with_env(&["controlplane", "restore", object, "--data-dir", cp], &env);
    assert!(out.status.success(), "{out:?}");
    control.restart();
    // Ada's session was made before the backup: the restored store still has it.
    let token = &ada.token;
    assert_eq!(api.get("/api/v1/workspaces/kept", token).status, 200);
    assert_eq!(api.get("/api/v1/workspaces/later", token).status, 404);
    let leftovers: Vec<_> = std::fs::read_dir(&cp_dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no scratch left: {leftovers:?}");
}
