//! The chaos suite: a whole mesh — a 3-member etcd, two control-plane replicas, two sidecars
//! and a real upstream — under steady open-loop load while one fault at a time strikes: the
//! leader replica killed, an etcd member killed, etcd quorum lost and given back, a replica
//! partitioned from etcd, a sidecar restarted with the control plane down (and its snapshot
//! corrupted), a sidecar drained with slow requests in flight. Each scenario asserts its
//! promise (failed requests, applies lost, what stored data changed) and records its figures
//! (reconnect and convergence times) under `target/tmp/chaos/`, which `scripts/chaos.sh`
//! prints and `docs/reliability.md` quotes.
//!
//! Scenarios run one at a time (a lock, not test threads): they share two cores, and each
//! measures times that a neighbour's load would distort.

mod control_plane;
mod etcd;
mod mesh;
mod sidecar;
