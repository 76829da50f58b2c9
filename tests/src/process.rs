//! What every child process of a test needs: a private temporary directory, free loopback
//! ports, its output captured line by line, and a mutex that survives a panicking test.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines a child process wrote, stdout and stderr together.
pub type Logs = Arc<Mutex<Vec<String>>>;

/// Locks `m`, also when a panicking test poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path under the system temp dir no other test (or run) uses.
pub fn unique_temp_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "bulwark-e2e-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A fresh directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = unique_temp_dir();
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback address (bound, then released for the process that will use it: a
/// collision is possible but rare, and shows as a start failure, not a wrong result).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Copies a pipe into `logs` line by line on a thread of its own (it ends at EOF, when the
/// process exits).
pub fn capture(pipe: impl Read + Send + 'static, logs: Logs) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            lock(&logs).push(line);
        }
    })
}

/// SIGKILL, and reaps the process.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
