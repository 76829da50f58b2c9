//! `meshctl inject`: adds the Bulwark sidecar to the workloads of Kubernetes manifests, offline,
//! with the same `bulwark-inject` code the control plane's admission webhook runs. Every
//! document is written back (injected or untouched) to stdout; a note per document goes to
//! stderr. When any document is refused nothing is written to stdout, so that a pipe into
//! `kubectl apply -f -` never applies half a change.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bulwark_inject::{InjectOptions, Injected, Skip, inject_object};
use serde_json::Value;

use crate::errors::CliError;
use crate::output::Output;

/// The caller's choices; unset ones keep the injector's defaults.
#[derive(Debug)]
pub struct Flags<'a> {
    pub control_plane: Option<&'a str>,
    pub image: Option<&'a str>,
    /// Add the capture container (unless a pod says otherwise).
    pub capture: bool,
    pub init_image: Option<&'a str>,
    /// Give sidecars a workload identity (unless a pod says otherwise).
    pub identity: bool,
    /// The inbound mTLS mode of pods that set none.
    pub inbound_mtls: Option<&'a str>,
    /// The collector sidecars export request spans to.
    pub otlp_endpoint: Option<&'a str>,
    /// The sampling ratio of pods that set none.
    pub trace_sampling: Option<&'a str>,
}

/// Injects every document of `files` (paths, or `-` for standard input), in order.
pub fn run(files: &[PathBuf], flags: &Flags<'_>) -> (Output, Option<CliError>) {
    let mut opts = InjectOptions::default();
    if let Some(control_plane) = flags.control_plane {
        opts.control_plane = control_plane.to_string();
    }
    if let Some(image) = flags.image {
        opts.image = image.to_string();
    }
    opts.capture = flags.capture;
    opts.identity = flags.identity;
    opts.inbound_mtls = flags.inbound_mtls.map(str::to_string);
    opts.otlp_endpoint = flags.otlp_endpoint.map(str::to_string);
    opts.trace_sampling = flags.trace_sampling.map(str::to_string);
    if let Some(image) = flags.init_image {
        opts.init_image = image.to_string();
    }
    if let Err(e) = opts.validate() {
        return (Output::default(), Some(CliError::Usage(e.to_string())));
    }

    let mut out = Output::default();
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let docs = match read(file) {
            Ok(text) => match serde_saphyr::from_multiple::<Value>(&text) {
                Ok(docs) => docs,
                Err(e) => {
                    problems.push(format!("{name}: invalid YAML: {e}"));
                    continue;
                }
            },
            Err(e) => {
                problems.push(format!("{name}: cannot read: {e}"));
                continue;
            }
        };
        // Empty documents (a trailing `---`) carry nothing worth writing back.
        for (i, doc) in docs.into_iter().filter(|d| !d.is_null()).enumerate() {
            let id = object_id(&doc);
            match inject_object(&doc, &opts) {
                Ok(Injected::Injected(injected)) => {
                    out.note(format_args!("{id}: injected"));
                    documents.push(injected);
                }
                Ok(Injected::Skipped(skip)) => {
                    let why = match skip {
                        Skip::NotAWorkload(_) => "not a workload",
                        Skip::OptedOut => "bulwark.dev/inject: disabled",
                    };
                    out.note(format_args!("{id}: {why}, unchanged"));
                    documents.push(doc);
                }
                Err(e) => problems.push(format!("{name}: document {}: {id}: {e}", i + 1)),
            }
        }
    }
    if !problems.is_empty() {
        return (Output::default(), Some(CliError::Invalid(problems)));
    }
    for (i, doc) in documents.iter().enumerate() {
        if i > 0 {
            out.text("---\n");
        }
        match serde_saphyr::to_string(doc) {
            Ok(yaml) => out.text(&yaml),
            Err(e) => {
                let error = CliError::Usage(format!("cannot write YAML: {e}"));
                return (Output::default(), Some(error));
            }
        }
    }
    (out, None)
}

/// A file's text, or standard input's for `-`.
pub fn read(file: &Path) -> std::io::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        fs::read_to_string(file)
    }
}

/// `Kind/namespace/name`, or `Kind/name` when the document names no namespace.
fn object_id(doc: &Value) -> String {
    let field = |pointer: &str| doc.pointer(pointer).and_then(Value::as_str);
    let kind = field("/kind").unwrap_or("(no kind)");
    let name = field("/metadata/name").unwrap_or("(no name)");
    match field("/metadata/namespace") {
        Some(namespace) => format!("{kind}/{namespace}/{name}"),
        None => format!("{kind}/{name}"),
    }
}
