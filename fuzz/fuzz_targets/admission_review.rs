//! AdmissionReview requests as the Kubernetes API server (or anyone who reaches the injector)
//! sends them: the answer is always an AdmissionReview response carrying the request's uid
//! and an `allowed` verdict, with a base64 JSON Patch when it allows with changes; nothing
//! panics.
#![no_main]

use bulwark_inject::{InjectOptions, admission_review_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for namespace_enabled in [false, true] {
        let answer =
            admission_review_response(&review, &InjectOptions::default(), namespace_enabled);
        let response = &answer["response"];
        assert!(response["allowed"].is_boolean(), "{answer}");
        let uid = review.get("request").and_then(|r| r.get("uid"));
        assert_eq!(
            Some(&response["uid"]),
            uid.or(Some(&serde_json::json!(""))),
            "{answer}"
        );
    }
});
