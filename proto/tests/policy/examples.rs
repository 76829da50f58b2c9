//! Every policy in `examples/` parses and validates, so the examples stay true to the schema.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bulwark_proto::policy::parse_documents;

/// Resources expected in each example file. A new example must be added here, so that a file
/// that silently parses to fewer documents than written is caught.
const EXPECTED: [(&str, usize); 6] = [
    ("demo/catalog.yaml", 2),
    ("demo/resilience.yaml", 2),
    ("dispatch.yaml", 1),
    ("notifications.yaml", 3),
    ("order-orchestrator.yaml", 1),
    ("payments.yaml", 3),
];

#[test]
fn every_example_parses_and_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut counts = BTreeMap::new();
    let mut problems = Vec::new();
    for path in example_files(&dir) {
        let name = path
            .strip_prefix(&dir)
            .expect("under examples/")
            .to_str()
            .expect("UTF-8 file name")
            .to_string();
        let text = fs::read_to_string(&path).expect("example is readable");
        let resources = match parse_documents(&text) {
            Ok(resources) => resources,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        for resource in &resources {
            if let Err(e) = resource.validate() {
                problems.extend(
                    e.errors
                        .iter()
                        .map(|f| format!("{name}: {}: {f}", e.resource)),
                );
            }
        }
        counts.insert(name, resources.len());
    }
    assert_eq!(problems, Vec::<String>::new(), "every example is valid");
    let expected: BTreeMap<String, usize> = EXPECTED
        .iter()
        .map(|&(name, n)| (name.to_string(), n))
        .collect();
    assert_eq!(counts, expected, "resources per example file");
}

/// Every file under `dir`, subdirectories included.
fn example_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("examples/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(example_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}
