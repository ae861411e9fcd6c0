//! `deploy/` holds what it claims, checked without a cluster: `deploy/check.sh` renders the
//! Kubernetes overlays and validates them (Kubernetes schemas, Checkov), validates the Compose
//! file against the Compose specification, and lints the HAProxy configuration and the
//! Containerfile. The tools are installed by `scripts/test.sh`.
//!
//! Beyond the tools' checks, the rendered objects are read for the promises deploy/README.md
//! makes: each data-plane pod has a WAL volume of its own, gets more termination grace than its
//! shutdown deadline, and is probed on the endpoints the node serves.

use std::path::Path;
use std::process::Command;

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| {
        panic!("{command:?} could not run ({e}); ./scripts/test.sh installs what it needs")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn deploy_checks_pass_without_a_cluster() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(Command::new(root.join("deploy/check.sh"))
        .env("SLUICE_DEPLOY_VENV", root.join(".venv-deploy").as_os_str()));
    assert!(out.contains("deploy/ checks passed"), "{out}");
}

/// The rendered objects of an overlay, as JSON values.
fn rendered(overlay: &str) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join("deploy/kubernetes/overlays").join(overlay)));
    // PyYAML comes with Checkov in .venv-deploy: no YAML parser in the Rust tests.
    let python = root.join(".venv-deploy/bin/python");
    let json = run(Command::new(python).args([
        "-c",
        "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(sys.argv[1]))))",
        &yaml,
    ]));
    serde_json::from_str(&json).expect("JSON")
}

fn object<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn data_plane_pods_keep_their_wal_and_get_time_to_upload_it() {
    for overlay in ["local", "s3"] {
        let objects = rendered(overlay);
        let node = object(&objects, "StatefulSet", "sluice-dataplane");
        let pod = &node["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env = |name: &str| {
            container["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str())
                .unwrap_or_else(|| panic!("{overlay}: no {name}"))
                .to_owned()
        };
        // The WAL is on a volume of the pod's own, mounted where the node keeps its data.
        assert_eq!(env("SLUICE_DATA_DIR"), "/data");
        assert_eq!(
            node["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
            "data"
        );
        assert!(container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/data"));
        // The pod is killed only after the node's own shutdown deadline has passed.
        let grace_ms: u64 = env("SLUICE_SHUTDOWN_GRACE_MS").parse().expect("ms");
        let termination_s = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        assert!(
            termination_s * 1000 >= grace_ms + 10_000,
            "{overlay}: {termination_s} s of termination grace for a {grace_ms} ms shutdown"
        );
        // Probed where the node answers, never as root, and not from the configuration of
        // another node: no node id is set, so each pod keeps the one in its volume.
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert!(!container["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "SLUICE_NODE_ID"));
        assert_eq!(
            node["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
            "Retain"
        );
    }
}
