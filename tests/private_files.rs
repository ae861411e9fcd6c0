//! The data dir holds secrets (token hashes, the secret key, mailed codes and links): whatever
//! Sluice writes there is its user's only, also in a data dir an earlier release left open.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::Sluice;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_data_dir_and_everything_in_it_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut sluice = Sluice::start(&data, &["--batch-max-age-ms", "200"]);
    // A mail to the outbox (sign-up sends a code) and an event to the lake.
    let api = common::controlplane::Api::new(sluice.api_url());
    let a = api.post(
        "/api/v1/users",
        None,
        serde_json::json!({"email": "eve@example.com", "password": "a long password",
            "first_name": "Eve", "last_name": "Example"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let token = sluice.bootstrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let a = common::post(
        &sluice.ingest_url("default", "telemetry"),
        &[("authorization", &format!("Bearer {token}"))],
        br#"{"a":1}"#,
    );
    assert_eq!(a.status, 202);
    sluice.stop();

    assert_eq!(mode(&data), 0o700, "the data dir");
    let mut files = 0;
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                assert_eq!(
                    mode(&path) & 0o077,
                    0,
                    "{} is open to others",
                    path.display()
                );
                stack.push(path);
            } else {
                assert_eq!(
                    mode(&path) & 0o077,
                    0,
                    "{} is open to others",
                    path.display()
                );
                files += 1;
            }
        }
    }
    for name in [
        "controlplane.redb",
        "cache.redb",
        "progress.redb",
        "bootstrap.json",
    ] {
        assert!(data.join(name).exists(), "{name}");
    }
    let outbox: Vec<_> = std::fs::read_dir(data.join("outbox"))
        .expect("outbox")
        .collect();
    assert!(!outbox.is_empty(), "the code went to the outbox");
    assert!(files >= 8, "{files} files checked");
}
