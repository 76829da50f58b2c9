//! The control plane's integration tests: the real `control-plane` binary over real etcd (one
//! member, a cluster, or behind a proxy that cuts it off), driven through its REST API and the
//! sidecars' Discovery stream, with the shared test kit (`bulwark-tests`).

mod auth;
mod discovery;
mod etcd_tls;
mod identity;
mod outage;
mod rest;
mod webhook;

use bulwark_tests::ControlPlane;

/// A replica over `etcd`, as these tests run it: etcd calls give up after 2 s, so outages show
/// quickly.
pub async fn replica(etcd: &[String]) -> ControlPlane {
    replica_with(etcd, &[]).await
}

/// A replica with extra flags.
pub async fn replica_with(etcd: &[String], extra: &[&str]) -> ControlPlane {
    let mut args = vec!["--etcd-timeout", "2s"];
    args.extend_from_slice(extra);
    ControlPlane::start_with(&etcd.join(","), &next_replica_id(), &args).await
}

/// Every replica of a test run its own name, as every real replica (pod) has.
fn next_replica_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("replica-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
