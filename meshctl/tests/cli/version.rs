//! `meshctl version` (the client's and the control plane's, the client's even when the server
//! cannot be asked), `meshctl completion` and `meshctl man`: what a new user installs first.

use std::process::Command;

use bulwark_telemetry::{REVISION, VERSION};
use serde_json::json;

use crate::support::{FakeControlPlane, Reply, dead_server, meshctl, scratch_dir};

#[test]
fn version_names_the_client_and_the_server() {
    let cp = FakeControlPlane::start(&[(
        "GET /v1/version",
        Reply::ok(json!({"version": "0.1.0", "revision": "0123456789ab"})),
    )]);
    let run = meshctl(&["--server", &cp.url, "version"], &[]);
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        format!("Client: {VERSION} ({REVISION})\nServer: 0.1.0 (0123456789ab)\n")
    );
    assert_eq!(run.code, Some(0));

    let run = meshctl(&["--server", &cp.url, "version", "-o", "json"], &[]);
    let parsed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(
        parsed,
        json!({
            "client": {"version": VERSION, "revision": REVISION},
            "server": {"version": "0.1.0", "revision": "0123456789ab"},
        })
    );
}

#[test]
fn without_a_server_version_still_names_the_client_and_fails() {
    let dead = dead_server();
    let run = meshctl(&["--server", &dead, "version"], &[]);
    assert_eq!(run.stdout, format!("Client: {VERSION} ({REVISION})\n"));
    assert_eq!(
        run.stderr,
        format!("meshctl: cannot reach the control plane at {dead}: connection refused\n")
    );
    assert_eq!(run.code, Some(2));
    // `--version` needs no server at all.
    let run = meshctl(&["--version"], &[]);
    assert_eq!(run.stdout, format!("meshctl {VERSION} ({REVISION})\n"));
}

#[test]
fn completion_scripts_load_in_their_shell() {
    let run = meshctl(&["completion", "bash"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // bash parses the script and registers the completion function for meshctl.
    let script = scratch_dir("completion").join("meshctl.bash");
    std::fs::write(&script, &run.stdout).expect("write the script");
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p meshctl",
            script.display()
        ))
        .output()
        .expect("bash runs");
    let registered = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && registered.contains("meshctl"),
        "{registered}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let run = meshctl(&["completion", shell], &[]);
        assert_eq!(run.code, Some(0), "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("meshctl"), "{shell}");
    }
    let run = meshctl(&["completion", "tcsh"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("invalid value 'tcsh'"),
        "{}",
        run.stderr
    );
}

#[test]
fn man_writes_a_page_per_command() {
    let dir = scratch_dir("man");
    let _ = std::fs::remove_dir_all(&dir);
    let run = meshctl(&["man", dir.to_str().expect("utf-8 path")], &[]);
    assert_eq!(run.stderr, "");
    assert_eq!(run.code, Some(0));
    let written: Vec<&str> = run.stdout.lines().collect();
    for page in [
        "meshctl.1",
        "meshctl-apply.1",
        "meshctl-delete.1",
        "meshctl-version.1",
        "meshctl-auth-can-i.1",
        "meshctl-config-set-context.1",
    ] {
        let path = dir.join(page);
        assert!(
            written.contains(&path.to_str().expect("utf-8 path")),
            "{page} in {written:?}"
        );
        let roff = std::fs::read_to_string(&path).expect("the page");
        let title = format!(".TH {} 1", page.trim_end_matches(".1"));
        assert!(roff.contains(&title), "{page}: {roff}");
    }
    // Each page is the command's own: its synopsis is what one types.
    let can_i = std::fs::read_to_string(dir.join("meshctl-auth-can-i.1")).expect("page");
    assert!(can_i.contains(".TH meshctl-auth-can-i 1"), "{can_i}");
    assert!(can_i.contains("meshctl auth can\\-i"), "{can_i}");
    assert!(can_i.contains("\\-\\-cluster"), "{can_i}");
}

#[test]
fn explain_describes_a_field_offline_and_names_what_a_block_has() {
    let run = meshctl(&["explain", "upstreampolicy.spec.timeouts.request"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.starts_with(
            "KIND:     UpstreamPolicy\nFIELD:    spec.timeouts.request\nTYPE:     duration\nDEFAULT:  `15s`\n"
        ),
        "{}",
        run.stdout
    );
    let run = meshctl(&["explain", "svc.spec.inbound.rateLimit.by"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = meshctl(&["explain", "up.spec.timeout"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.starts_with(
            "meshctl: UpstreamPolicy has no field spec.timeout; spec has: endpoints, "
        ),
        "{}",
        run.stderr
    );
    let run = meshctl(&["explain", "gateway.spec"], &[]);
    assert_eq!(
        run.stderr,
        "meshctl: unknown kind \"gateway\"; expected upstreampolicy (up) or servicepolicy (svc)\n"
    );
}
