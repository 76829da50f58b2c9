//! Bytes from a client, straight into the sidecar's outbound connection handling (hyper's
//! server with the sidecar's limits, routing, policy stack and a real loopback upstream) over
//! an in-memory duplex: whatever arrives, the sidecar answers or closes within the bound,
//! never panics, and whatever it writes back to an HTTP/1.x client is an HTTP/1.x response.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bulwark_fuzz::{RUNTIME, apply, builder, sidecar, upstream};
use bulwark_proto::policy::parse_yaml;
use bulwark_sidecar::listen::Target;
use bulwark_sidecar::listen::conn::Conn;
use bulwark_sidecar::state::Shared;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one input may take: the sidecar's header-read timeout plus room.
const BOUND: Duration = Duration::from_secs(5);

struct Setup {
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: tokio::sync::watch::Receiver<bool>,
    _stop: tokio::sync::watch::Sender<bool>,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let upstream = upstream();
    let shared = sidecar(None);
    let yaml = format!(
        "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: {{ name: echo, namespace: shop }}\nspec:\n  endpoints: {{ static: [\"{upstream}\"] }}\n  retry: {{ maxAttempts: 2 }}\n"
    );
    let resources = parse_yaml(&yaml).expect("the fuzz policy parses");
    {
        let _entered = RUNTIME.enter();
        apply(&shared, resources).expect("the fuzz policy applies");
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    Setup {
        shared,
        builder: builder(),
        stop,
        _stop: stop_tx,
    }
});

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    RUNTIME.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        let conn = Conn::new(
            "outbound",
            peer,
            setup.shared.clone(),
            setup.builder.clone(),
            setup.stop.clone(),
        );
        let serving = tokio::spawn(
            conn.timeouts(Duration::from_secs(2), Duration::from_secs(3600))
                .serve_http(server, Target::ByAuthority),
        );
        let (mut from_sidecar, mut to_sidecar) = tokio::io::split(client);
        let write = async {
            let _ = to_sidecar.write_all(data).await;
            let _ = to_sidecar.shutdown().await;
        };
        let read = async {
            let mut answer = Vec::new();
            let _ = from_sidecar.read_to_end(&mut answer).await;
            answer
        };
        let ((), answer) = tokio::time::timeout(BOUND, async { tokio::join!(write, read) })
            .await
            .expect("the sidecar answers or closes within the bound");
        tokio::time::timeout(BOUND, serving)
            .await
            .expect("the connection's task ends with the connection")
            .expect("the connection's task does not panic");
        let http2 = data.starts_with(b"PRI * HTTP/2.0");
        if !answer.is_empty() && !http2 {
            assert!(
                answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
                "not an HTTP/1.x response: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            );
        }
    });
});
