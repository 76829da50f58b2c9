//! What a sidecar sends the control plane on its Discovery stream, as bytes off the wire:
//! decoding, the Hello's checks, and a health report turned into the record the control plane
//! stores (it round-trips through its JSON) and into the degradation level it computes for the
//! order orchestrator of the examples. Nothing panics; a Hello accepted names a pod.
#![no_main]

use std::sync::LazyLock;

use bulwark_control_plane::api::discovery::check_hello;
use bulwark_control_plane::degradation::compute::{Inputs, evaluate};
use bulwark_control_plane::store::values::HealthRecord;
use bulwark_proto::policy::{Resource, ServicePolicy, parse_yaml};
use bulwark_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const NOW: i64 = 1_700_000_000_000;

static ORCHESTRATOR: LazyLock<ServicePolicy> = LazyLock::new(|| {
    parse_yaml(include_str!("../../examples/order-orchestrator.yaml"))
        .expect("the example parses")
        .into_iter()
        .find_map(|r| match r {
            Resource::ServicePolicy(p) => Some(p),
            Resource::UpstreamPolicy(_) => None,
        })
        .expect("the example has a ServicePolicy")
});

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::SidecarMessage::decode(data) else {
        return;
    };
    match message.message {
        Some(pb::sidecar_message::Message::Hello(hello)) => {
            if let Ok((pod, version)) = check_hello(hello) {
                assert!(!pod.pod.is_empty() && version >= 0, "{pod:?} {version}");
            }
        }
        Some(pb::sidecar_message::Message::Health(report)) => {
            let record = HealthRecord::from_report(&report, "cp-0", NOW);
            let stored = serde_json::to_vec(&record).expect("a record serializes");
            let back: HealthRecord =
                serde_json::from_slice(&stored).expect("a stored record reads back");
            assert_eq!(back, record);
            let reports = [("orch-0", &record), ("orch-1", &back)];
            let _ = evaluate(
                &ORCHESTRATOR,
                Inputs {
                    reports: &reports,
                    forced: None,
                    previous: None,
                    now: NOW,
                },
            );
        }
        Some(pb::sidecar_message::Message::Ack(_)) | None => {}
    }
});
