//! Shared by meshctl's CLI tests: a fake control plane (a real hyper HTTP/1.1 server on
//! `127.0.0.1:0` answering canned JSON per route and recording every request) and a runner
//! for the real `meshctl` binary in a clean environment.
//!
//! The fake stands in for the control plane until that binary exists; it knows nothing but
//! the routes each test gives it.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs;
use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// What the fake answers on one route.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    body: String,
    stale: bool,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: body.to_string(),
            stale: false,
        }
    }

    pub fn ok(body: Value) -> Self {
        Reply::json(200, body)
    }

    /// Adds `x-bulwark-stale: true`, as a replica that lost etcd does on reads.
    pub fn stale(mut self) -> Self {
        self.stale = true;
        self
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub body: String,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

type Routes = HashMap<String, Reply>;

/// A control plane that answers from a table of `"METHOD /path?query"` → reply.
pub struct FakeControlPlane {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeControlPlane {
    pub fn start(routes: &[(&str, Reply)]) -> Self {
        let routes: Arc<Routes> = Arc::new(
            routes
                .iter()
                .map(|(route, reply)| (route.to_string(), reply.clone()))
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let recorded = requests.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let routes = routes.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        answer(request, routes.clone(), recorded.clone())
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeControlPlane {
            url,
            requests,
            runtime: Some(runtime),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    routes: Arc<Routes>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let uri = request
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let route = format!("{method} {uri}");
    recorded
        .lock()
        .expect("lock")
        .push(Recorded { method, uri, body });
    let reply = routes.get(&route).cloned().unwrap_or_else(|| {
        Reply::json(
            404,
            serde_json::json!({"error": "not-found", "message": format!("the fake has no route {route}")}),
        )
    });
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).expect("status"))
        .header("content-type", "application/json");
    if reply.stale {
        response = response.header("x-bulwark-stale", "true");
    }
    Ok(response
        .body(Full::new(Bytes::from(reply.body)))
        .expect("response"))
}

/// An address where nothing listens: bound once to get a free port, then released.
pub fn dead_server() -> String {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// What a `meshctl` run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

/// Runs `meshctl` with `args` in an environment that names no server and no config file
/// (HOME is an empty scratch directory), with `USER=tester`, plus `env`.
pub fn meshctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    meshctl_with_stdin(args, env, "")
}

pub fn meshctl_with_stdin(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let home = scratch_dir("home");
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    command
        .args(args)
        // Output must not depend on the caller's environment (this machine sets it to 1).
        .env_remove("RUST_BACKTRACE")
        .env_remove("BULWARK_SERVER")
        .env_remove("BULWARK_CONFIG")
        .env("HOME", &home)
        .env("USER", "tester")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("meshctl starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    let out = child.wait_with_output().expect("meshctl runs");
    Run {
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        code: out.status.code(),
    }
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub fn example(name: &str) -> String {
    examples().join(name).display().to_string()
}

/// A directory in this test binary's scratch space, created if missing.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("meshctl-cli")
        .join(name);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A file in this test binary's scratch space, written fresh.
pub fn scratch(name: &str, contents: &str) -> String {
    let path = scratch_dir("files").join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("parent dir");
    }
    fs::write(&path, contents).expect("scratch file written");
    path.display().to_string()
}
