//! Standalone mode: policies from a YAML/JSON file or a directory of them, checked again every
//! reload interval. A changed set is parsed and validated as a whole; an invalid one is rejected
//! with every error logged, and the policies in force stay as they were.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_proto::policy::{parse_documents, policy_files};
use tokio::sync::watch;

use crate::route::PolicySet;

/// The raw bytes of every policy file, read together.
fn read_all(path: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    policy_files(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .map(|f| {
            std::fs::read_to_string(&f)
                .map(|text| (f.clone(), text))
                .map_err(|e| format!("{}: {e}", f.display()))
        })
        .collect()
}

fn fingerprint(files: &[(PathBuf, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

/// Parses and validates every file; `Err` lists every problem, one per line.
fn parse_all(
    path: &Path,
    files: &[(PathBuf, String)],
    version: String,
) -> Result<PolicySet, Vec<String>> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        match parse_documents(text) {
            Ok(docs) => resources.extend(docs),
            Err(e) => errors.push(format!("{}: {e}", file.display())),
        }
    }
    let mut seen = HashSet::new();
    for r in &resources {
        if let Err(e) = r.validate() {
            errors.extend(e.errors.iter().map(|fe| format!("{}: {fe}", r.id())));
        }
        if !seen.insert(r.id()) {
            errors.push(format!("{}: defined more than once", r.id()));
        }
    }
    if errors.is_empty() {
        Ok(PolicySet {
            version,
            source: format!("file:{}", path.display()),
            resources,
        })
    } else {
        Err(errors)
    }
}

/// Loads the policies once; `Err` lists every problem.
pub fn load(path: &Path) -> Result<(PolicySet, u64), Vec<String>> {
    let files = read_all(path).map_err(|e| vec![e])?;
    let print = fingerprint(&files);
    parse_all(path, &files, format!("{print:016x}")).map(|set| (set, print))
}

/// Watches `path` every `interval`, sending each new valid set; ends when every receiver is
/// gone.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    mut last: u64,
    tx: watch::Sender<PolicySet>,
    on_rejected: impl Fn(),
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let files = match read_all(&path) {
            Ok(files) => files,
            Err(e) => {
                // A file replaced mid-read (editors, ConfigMap symlink swaps) is retried next tick.
                tracing::warn!(path = %path.display(), error = %e, "cannot read policies; keeping the policies in force");
                continue;
            }
        };
        let print = fingerprint(&files);
        if print == last {
            continue;
        }
        last = print;
        match parse_all(&path, &files, format!("{print:016x}")) {
            Ok(set) => {
                tracing::info!(path = %path.display(), version = %set.version, resources = set.resources.len(), "policy files changed");
                tx.send_replace(set);
            }
            Err(errors) => {
                on_rejected();
                tracing::error!(
                    path = %path.display(),
                    errors = %errors.join("; "),
                    "policy files rejected; keeping the policies in force"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bulwark-file-source-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const GOOD: &str = "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: echo }\nspec: { endpoints: { static: [\"127.0.0.1:1\"] } }\n";

    #[test]
    fn loads_a_directory_and_rejects_duplicates() {
        let dir = temp_dir("dir");
        std::fs::write(dir.join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.join(".hidden.yaml"), "not: [valid").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let (set, _) = load(&dir).unwrap();
        assert_eq!(set.resources.len(), 1);

        std::fs::write(dir.join("b.yaml"), GOOD).unwrap();
        let errors = load(&dir).unwrap_err();
        assert_eq!(
            errors,
            ["UpstreamPolicy/default/echo: defined more than once"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reports_parse_errors_with_the_file() {
        let dir = temp_dir("bad");
        let file = dir.join("p.yaml");
        std::fs::write(&file, GOOD.replace("endpoints", "endpoint")).unwrap();
        let errors = load(&file).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(&format!(
                "{}: document 1: spec.endpoint: unknown field `endpoint`",
                file.display()
            )),
            "{errors:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
