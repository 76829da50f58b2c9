//! Network namespaces for the capture tests, made and removed by the test itself (as root): a
//! namespace per "pod", joined by veth pairs to a switch namespace holding a bridge, so the pods
//! reach each other on their own subnet and nothing touches the host's network. The test's own
//! code can listen and connect *inside* a namespace ([`Netns::listen`], [`Netns::connect`]):
//! a socket belongs to the namespace of the thread that made it, so it is made on a thread that
//! entered the namespace first.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// One network namespace, deleted (with its veth ends) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace with its loopback up; its name carries the test process and a counter,
    /// so parallel tests and runs never collide.
    pub fn create(tag: &str) -> Arc<Netns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "bw{}x{}{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Arc::new(Netns { name });
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command in the namespace; its output, whatever its status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name))
    }

    /// Runs a command in the namespace that must succeed; its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs in the namespace (`ip netns exec NAME program …`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that entered the namespace: sockets it makes belong to it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("enter {}: {e}", path.display()));
            f()
        })
        .join()
        .expect("the thread in the namespace ends")
    }

    /// A listener bound to `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> tokio::net::TcpListener {
        let listener = self
            .run(move || std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.name));
        listener.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
    }

    /// A TCP connection to `addr` made from inside the namespace (as an app there would make
    /// it: the namespace's iptables rules apply to it).
    pub async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let ns = self.clone();
        let stream = tokio::task::spawn_blocking(move || {
            ns.run(move || {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            })
        })
        .await
        .expect("the connecting thread ends")?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// The `nat` table as `iptables-save` prints it, comments left out.
    pub fn nat_rules(&self, save: &str) -> String {
        self.exec_ok(&[save, "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            // Chain policies carry packet counters (`:PREROUTING ACCEPT [1:40]`).
            .map(|l| match l.find(" [") {
                Some(at) if l.starts_with(':') => &l[..at],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Namespaces on one subnet, `10.66.0.0/24` and `fd66::/64`, through a bridge in a switch
/// namespace: member `i` has `10.66.0.{i + 1}` and `fd66::{i + 1}`.
#[derive(Debug)]
pub struct Lan {
    switch: Arc<Netns>,
    pub members: Vec<Arc<Netns>>,
}

impl Lan {
    pub fn new(tags: &[&str]) -> Lan {
        let switch = Netns::create("sw");
        switch.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let mut members = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let ns = Netns::create(tag);
            let (inner, outer) = (format!("eth{i}"), format!("p{i}"));
            // The pair is made in the switch, and one end moved into the member.
            switch.exec_ok(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            switch.exec_ok(&["ip", "link", "set", &inner, "netns", ns.name()]);
            switch.exec_ok(&["ip", "link", "set", &outer, "master", "br0"]);
            switch.exec_ok(&["ip", "link", "set", &outer, "up"]);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", Lan::ip(i)),
                "dev",
                &inner,
            ]);
            // IPv6 too, usable at once (no duplicate address detection to wait for).
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}/64", Lan::ip6(i)),
                "dev",
                &inner,
                "nodad",
            ]);
            ns.exec_ok(&["ip", "link", "set", &inner, "up"]);
            members.push(ns);
        }
        Lan { switch, members }
    }

    /// The address of member `i`.
    pub fn ip(i: usize) -> IpAddr {
        IpAddr::from([10, 66, 0, u8::try_from(i + 1).expect("a small LAN")])
    }

    /// The IPv6 address of member `i`: `fd66::{i + 1}`.
    pub fn ip6(i: usize) -> IpAddr {
        let last = u16::try_from(i + 1).expect("a small LAN");
        IpAddr::from([0xfd66, 0, 0, 0, 0, 0, 0, last])
    }

    /// The switch namespace (kept so the bridge lives as long as the LAN).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {} (the capture tests run as root)",
        String::from_utf8_lossy(&out.stderr)
    );
}
