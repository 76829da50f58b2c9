//! Policy documents as users write them (YAML or JSON, one or many): parsing and validation
//! never panic; a resource that validates serializes to JSON that parses back to the same
//! resource; and the sidecar builds its routing table from valid resources without panicking.
#![no_main]

use std::sync::{Arc, LazyLock};

use bulwark_fuzz::{RUNTIME, apply, sidecar};
use bulwark_proto::policy::{parse_documents, parse_json};
use bulwark_sidecar::state::Shared;
use libfuzzer_sys::fuzz_target;

static SIDECAR: LazyLock<Arc<Shared>> = LazyLock::new(|| sidecar(None));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = parse_documents(text) else {
        return;
    };
    if resources.iter().any(|r| r.validate().is_err()) {
        return;
    }
    for resource in &resources {
        let json = serde_json::to_string(resource).expect("a valid resource serializes");
        let back = parse_json(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        assert_eq!(back, vec![resource.clone()], "{json}");
    }
    let _entered = RUNTIME.enter();
    let _ = apply(&SIDECAR, resources);
});
