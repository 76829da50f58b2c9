//! `meshctl validate` (and the local check before `apply`): reads policy files and
//! directories, parses and validates every resource with `bulwark-proto` (the same code the
//! control plane and the sidecar run), and reports each problem prefixed by its file and, in
//! YAML, the line and column of the field (`file:line:col:`, as compilers say it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bulwark_proto::policy::refs::{Reference, references};
use bulwark_proto::policy::{LoadError, Resource, parse_each_in, policy_files};

use crate::locate::locate;

/// What `meshctl validate` found.
#[derive(Debug, Default)]
pub struct Report {
    /// `Kind/namespace/name` of each valid resource, in input order.
    pub valid: Vec<String>,
    /// The valid resources themselves, in input order (what `apply` sends).
    pub resources: Vec<Resource>,
    /// One line per problem: `FILE: document N: path: message` when a document does not
    /// parse, `FILE: Kind/namespace/name: path: message` when a resource is invalid.
    pub problems: Vec<String>,
    /// The UpstreamPolicies each valid resource requires (its failover targets), with where
    /// it names them (`FILE:LINE:COL`) and its id.
    pub requires: Vec<(String, String, Reference)>,
}

impl Report {
    /// The failover targets none of the files defines, as problems, their resources taken out
    /// of `valid`: offline, a target must be validated with the policy that names it (apply
    /// checks against what the control plane stores).
    pub fn check_references(&mut self) {
        let defined: BTreeSet<String> = self.resources.iter().map(Resource::id).collect();
        let mut broken = BTreeSet::new();
        for (place, id, reference) in &self.requires {
            if !defined.contains(&reference.target()) {
                self.problems.push(format!(
                    "{place}: {id}: {}: names {}, which none of these files defines; validate it \
                     with the file that does (apply checks it against the control plane)",
                    reference.path,
                    reference.target()
                ));
                broken.insert(id.clone());
            }
        }
        self.valid.retain(|id| !broken.contains(id));
    }
}

/// Validates every resource in `inputs` (files, directories, or `-` for standard input).
pub fn run(inputs: &[PathBuf], namespace: &str) -> Report {
    let mut report = Report::default();
    // Resource id → the file that defined it first: applying both would silently keep one.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    // A file named twice (`-f dir -f dir/a.yaml`) is read once.
    let mut read_files: BTreeSet<PathBuf> = BTreeSet::new();
    for input in inputs {
        for file in expand(input, &mut report) {
            let canonical = fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if file == Path::new("-") || read_files.insert(canonical) {
                check_file(&file, namespace, &mut report, &mut seen);
            }
        }
    }
    report
}

/// The files an input names: itself, or a directory's policy files sorted by name (the same
/// rule the sidecar reads a policy directory by: `*.yaml`, `*.yml`, `*.json`, hidden files
/// skipped).
fn expand(input: &Path, report: &mut Report) -> Vec<PathBuf> {
    if input == Path::new("-") || !input.is_dir() {
        return vec![input.to_path_buf()];
    }
    let files = match policy_files(input) {
        Ok(files) => files,
        Err(e) => {
            report
                .problems
                .push(format!("{}: cannot read directory: {e}", input.display()));
            return Vec::new();
        }
    };
    if files.is_empty() {
        report.problems.push(format!(
            "{}: contains no *.yaml, *.yml or *.json files",
            input.display()
        ));
    }
    files
}

fn read(file: &Path) -> std::io::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        fs::read_to_string(file)
    }
}

/// Checks one file; a resource in it without `metadata.namespace` is in `namespace`.
fn check_file(
    file: &Path,
    namespace: &str,
    report: &mut Report,
    seen: &mut BTreeMap<String, String>,
) {
    let name = file.display().to_string();
    let text = match read(file) {
        Ok(text) => text,
        Err(e) => return report.problems.push(format!("{name}: cannot read: {e}")),
    };
    // Every document is read: one that does not fit the model does not hide the others.
    let documents = match parse_each_in(&text, namespace) {
        Ok(documents) => documents,
        Err(e) => return report.problems.push(format!("{name}: {e}")),
    };
    let parsed = documents.len();
    // `file:line:col` of a field of the n-th document, or `file` when it cannot be placed.
    let at = |doc: usize, path: &str| match locate(&text, doc, path) {
        Some((line, column)) => format!("{name}:{line}:{column}"),
        None => name.clone(),
    };
    let mut resources = Vec::with_capacity(parsed);
    for (i, document) in documents.into_iter().enumerate() {
        match document {
            Ok(resource) => resources.push((i + 1, resource)),
            Err(e) => {
                let place = match &e {
                    LoadError::Field { doc, path, .. } => at(*doc, path),
                    _ => name.clone(),
                };
                report.problems.push(format!("{place}: {e}"));
            }
        }
    }
    if parsed == 0 {
        report
            .problems
            .push(format!("{name}: contains no policy resources"));
    }
    for (doc, resource) in resources {
        let id = resource.id();
        let mut valid = true;
        if let Some(first) = seen.get(&id) {
            report.problems.push(format!(
                "{}: {id}: metadata.name: also defined in {first}",
                at(doc, "metadata.name")
            ));
            valid = false;
        }
        if let Err(e) = resource.validate() {
            report.problems.extend(
                e.errors
                    .iter()
                    .map(|field| format!("{}: {id}: {field}", at(doc, &field.path))),
            );
            valid = false;
        }
        seen.entry(id.clone()).or_insert_with(|| name.clone());
        if valid {
            for reference in references(&resource).into_iter().filter(|r| r.required) {
                let place = at(doc, &reference.path);
                report.requires.push((place, id.clone(), reference));
            }
            report.valid.push(id);
            report.resources.push(resource);
        }
    }
}
