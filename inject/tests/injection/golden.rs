//! Golden files: every `golden/*.in.yaml` injected with the default options must equal its
//! `*.out.yaml`, and injecting that output again must change nothing. `BULWARK_BLESS=1 cargo
//! test -p bulwark-inject --test golden` rewrites the outputs (review the diff before keeping
//! it); `deploy/validate.sh` checks them against the Kubernetes schemas.

use std::fs;
use std::path::{Path, PathBuf};

use bulwark_inject::{InjectOptions, Injected, inject_object};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/injection/golden")
}

fn inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("golden directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    inputs
}

fn parse(path: &Path) -> Value {
    let text = fs::read_to_string(path).expect("golden file readable");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn injected(obj: &Value) -> Value {
    match inject_object(obj, &InjectOptions::default()) {
        Ok(Injected::Injected(value)) => value,
        other => panic!("expected an injected object, got {other:?}"),
    }
}

#[test]
fn every_kind_matches_its_golden_output() {
    let inputs = inputs();
    let kinds = [
        "cronjob",
        "daemonset",
        "deployment",
        "job",
        "pod",
        "statefulset",
    ];
    for kind in kinds {
        assert!(
            inputs.iter().any(|p| p
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == format!("{kind}.in.yaml"))),
            "golden/{kind}.in.yaml is missing"
        );
    }
    let bless = std::env::var_os("BULWARK_BLESS").is_some();
    for input in inputs {
        let output = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        let actual = injected(&parse(&input));
        if bless {
            let text = serde_saphyr::to_string(&actual).expect("YAML");
            fs::write(&output, text).expect("golden output written");
            continue;
        }
        let expected = parse(&output);
        assert!(
            actual == expected,
            "{} differs from {}; got:\n{}",
            input.display(),
            output.display(),
            serde_saphyr::to_string(&actual).unwrap_or_default()
        );
    }
}

#[test]
fn injecting_the_output_again_changes_nothing() {
    for input in inputs() {
        let once = injected(&parse(&input));
        let twice = injected(&once);
        assert!(
            once == twice,
            "{}: second injection differs",
            input.display()
        );
    }
}
