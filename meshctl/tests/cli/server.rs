//! Which control plane `meshctl` talks to (flag, env, config file, default) and what it says
//! when that control plane cannot be reached or cannot reach etcd: exit status 2, one line.

use std::fs;

use crate::support::{
    FakeControlPlane, Reply, dead_server, example, meshctl, scratch, scratch_dir,
};
use serde_json::json;

fn list_reply() -> Reply {
    Reply::ok(json!({"items": [], "revision": 7}))
}

#[test]
fn an_unreachable_server_exits_2_with_one_clear_line() {
    let dead = dead_server();
    let payments = example("payments.yaml");
    for args in [
        vec!["--server", dead.as_str(), "apply", "-f", payments.as_str()],
        vec!["--server", dead.as_str(), "get", "up"],
        vec!["--server", dead.as_str(), "status"],
    ] {
        let run = meshctl(&args, &[]);
        assert_eq!(run.stdout, "", "{args:?}");
        assert_eq!(
            run.stderr,
            format!("meshctl: cannot reach the control plane at {dead}: connection refused\n"),
            "{args:?}"
        );
        assert_eq!(run.code, Some(2), "{args:?}");
    }
}

#[test]
fn an_etcd_outage_exits_2_with_the_servers_message() {
    let cp = FakeControlPlane::start(&[(
        "POST /v1/apply",
        Reply::json(
            503,
            json!({"error": "unavailable", "message": "etcd is unreachable (127.0.0.1:2379): connection refused"}),
        ),
    )]);
    let payments = example("payments.yaml");
    let run = meshctl(&["--server", &cp.url, "apply", "-f", &payments], &[]);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "meshctl: cannot reach the control plane at {}: 503 Service Unavailable: etcd is unreachable (127.0.0.1:2379): connection refused\n",
            cp.url
        )
    );
    assert_eq!(run.code, Some(2));
}

#[test]
fn the_config_file_names_the_server_when_no_flag_or_env_does() {
    let cp = FakeControlPlane::start(&[("GET /v1/UpstreamPolicy?namespace=default", list_reply())]);
    let config = scratch(
        "meshctl-config.yaml",
        &format!("# where the control plane is\nserver: {}\n", cp.url),
    );
    let run = meshctl(&["get", "up"], &[("BULWARK_CONFIG", &config)]);
    assert_eq!(
        run.stderr,
        "no UpstreamPolicy resources in namespace default\n"
    );
    assert_eq!(run.code, Some(0));
    assert_eq!(cp.requests().len(), 1);
}

#[test]
fn the_default_config_file_lives_under_home() {
    let cp = FakeControlPlane::start(&[
        (
            "GET /v1/levels",
            Reply::ok(json!({"computedAt": 1795341600000_i64, "services": []})),
        ),
        ("GET /v1/status", Reply::ok(json!({"resources": []}))),
    ]);
    let home = scratch_dir("home-with-config");
    fs::create_dir_all(home.join(".config/bulwark")).expect("config dir");
    fs::write(
        home.join(".config/bulwark/config"),
        format!("server: {}\n", cp.url),
    )
    .expect("config written");
    let home = home.display().to_string();
    let run = meshctl(&["status"], &[("HOME", &home)]);
    assert_eq!(
        run.stderr,
        "no services with a ServicePolicy\nno resources\n"
    );
    assert_eq!(run.code, Some(0));
    assert_eq!(cp.requests().len(), 2);
}

#[test]
fn the_env_var_beats_the_config_file_and_the_flag_beats_both() {
    let cp = FakeControlPlane::start(&[("GET /v1/UpstreamPolicy?namespace=default", list_reply())]);
    let dead = dead_server();
    let config = scratch("meshctl-config-dead.yaml", &format!("server: {dead}\n"));

    let run = meshctl(
        &["get", "up"],
        &[("BULWARK_CONFIG", &config), ("BULWARK_SERVER", &cp.url)],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let run = meshctl(
        &["get", "up", "--server", &cp.url],
        &[("BULWARK_CONFIG", &config), ("BULWARK_SERVER", &dead)],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(cp.requests().len(), 2);

    // And without either, the config file's (dead) server is the one tried.
    let run = meshctl(&["get", "up"], &[("BULWARK_CONFIG", &config)]);
    assert_eq!(
        run.stderr,
        format!("meshctl: cannot reach the control plane at {dead}: connection refused\n")
    );
    assert_eq!(run.code, Some(2));
}

#[test]
fn a_missing_named_config_file_or_a_bad_address_is_rejected_input() {
    let missing = scratch_dir("no-config").join("meshctl.yaml");
    let missing = missing.display().to_string();
    let run = meshctl(&["status"], &[("BULWARK_CONFIG", &missing)]);
    assert_eq!(
        run.stderr,
        format!(
            "meshctl: {missing}: cannot read the config file: No such file or directory (os error 2)\n"
        )
    );
    assert_eq!(run.code, Some(1));

    let run = meshctl(&["--server", "ftp://cp:8443", "status"], &[]);
    assert_eq!(
        run.stderr,
        "meshctl: invalid server address \"ftp://cp:8443\": expected https://host:port (or http:// for --insecure-dev)\n"
    );
    assert_eq!(run.code, Some(1));

    let run = meshctl(
        &["--server", "http://cp:8080", "--token", "t", "status"],
        &[],
    );
    assert_eq!(
        run.stderr,
        "meshctl: refusing to send credentials in plaintext to http://cp:8080: use https://\n"
    );
    assert_eq!(run.code, Some(1));
}

#[test]
fn an_answer_outside_the_contract_exits_1_and_says_what_was_wrong() {
    let cp = FakeControlPlane::start(&[("GET /v1/status", Reply::ok(json!({"pods": []})))]);
    let run = meshctl(&["--server", &cp.url, "status"], &[]);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "meshctl: unexpected answer from the control plane at {}: /v1/status: missing field `resources` at line 1 column 11\n",
            cp.url
        )
    );
    assert_eq!(run.code, Some(1));
}
