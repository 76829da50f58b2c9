//! Policy files for the tests, written as the YAML a user would write: UpstreamPolicies with
//! static endpoints and a ServicePolicy for the inbound side.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// An UpstreamPolicy under construction; [`UpstreamYaml::to_yaml`] renders it.
#[derive(Debug, Clone)]
pub struct UpstreamYaml {
    name: String,
    namespace: Option<String>,
    endpoints: Vec<String>,
    protocol: Option<String>,
    host_rewrite: Option<bool>,
    spec_lines: Vec<String>,
}

/// An UpstreamPolicy `name` (namespace `default`) with one static endpoint.
pub fn upstream(name: &str, endpoint: SocketAddr) -> UpstreamYaml {
    UpstreamYaml {
        name: name.to_string(),
        namespace: None,
        endpoints: vec![endpoint.to_string()],
        protocol: None,
        host_rewrite: None,
        spec_lines: Vec::new(),
    }
}

impl UpstreamYaml {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// Another static endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoints.push(endpoint.to_string());
        self
    }

    /// `auto` (the default), `http1`, `http2` or `grpc`.
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = Some(protocol.to_string());
        self
    }

    pub fn host_rewrite(mut self, on: bool) -> Self {
        self.host_rewrite = Some(on);
        self
    }

    /// A raw line under `spec:`, e.g. `timeouts: { request: 2s }`.
    pub fn spec(mut self, line: &str) -> Self {
        self.spec_lines.push(line.to_string());
        self
    }

    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "apiVersion: bulwark/v1");
        let _ = writeln!(y, "kind: UpstreamPolicy");
        let _ = writeln!(y, "metadata:");
        let _ = writeln!(y, "  name: {}", self.name);
        if let Some(ns) = &self.namespace {
            let _ = writeln!(y, "  namespace: {ns}");
        }
        let _ = writeln!(y, "spec:");
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let _ = writeln!(y, "  endpoints: {{ static: [{}] }}", endpoints.join(", "));
        if let Some(p) = &self.protocol {
            let _ = writeln!(y, "  protocol: {p}");
        }
        if let Some(on) = self.host_rewrite {
            let _ = writeln!(y, "  hostRewrite: {on}");
        }
        for line in &self.spec_lines {
            let _ = writeln!(y, "  {line}");
        }
        y
    }
}

/// A ServicePolicy for the service the sidecar sits beside, with its app on `app_port`.
pub fn service(name: &str, namespace: &str, app_port: u16) -> String {
    format!(
        "apiVersion: bulwark/v1\n\
         kind: ServicePolicy\n\
         metadata: {{ name: {name}, namespace: {namespace} }}\n\
         spec:\n  app: {{ port: {app_port} }}\n"
    )
}

/// Joins documents into one multi-document YAML file.
pub fn documents<I, S>(docs: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    docs.into_iter()
        .map(|d| d.as_ref().trim_end().to_string() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The workspace's `examples/` directory.
pub fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
}

/// The names of the policy files in `examples/` (`*.yaml`), sorted.
pub fn example_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("read examples/")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// The text of `examples/{file}`.
pub fn example(file: &str) -> String {
    let path = examples_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `yaml` with every `dns: HOST:PORT` endpoint replaced by `static: ["ADDR"]`, the address
/// given for that host: `targets` pairs a host, or its first DNS label, with an address.
/// Panics when a `dns:` endpoint has no target, or a target matches no endpoint, so an edited
/// example cannot silently keep pointing at a cluster name.
pub fn static_endpoints(yaml: &str, targets: &[(&str, SocketAddr)]) -> String {
    let mut used = vec![false; targets.len()];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.split_inclusive('\n') {
        let Some(at) = line.find("dns: ") else {
            out.push_str(line);
            continue;
        };
        let value_start = at + "dns: ".len();
        let value_len = line[value_start..]
            .find(|c: char| c.is_whitespace() || c == ',' || c == '}')
            .unwrap_or(line.len() - value_start);
        let value = &line[value_start..value_start + value_len];
        let host = value.rsplit_once(':').map_or(value, |(h, _)| h);
        let first_label = host.split('.').next().unwrap_or(host);
        let Some(i) = targets
            .iter()
            .position(|(name, _)| *name == host || *name == first_label)
        else {
            panic!("no target address for the endpoint {value:?} in: {line}");
        };
        used[i] = true;
        out.push_str(&line[..at]);
        let _ = write!(out, "static: [\"{}\"]", targets[i].1);
        out.push_str(&line[value_start + value_len..]);
    }
    for (i, used) in used.iter().enumerate() {
        assert!(
            used,
            "no dns endpoint matches the target {:?}",
            targets[i].0
        );
    }
    out
}

/// An UpstreamPolicy `name` with one static endpoint, as the JSON the REST API takes.
pub fn upstream_json(name: &str, addr: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "bulwark/v1",
        "kind": "UpstreamPolicy",
        "metadata": {"name": name},
        "spec": {"endpoints": {"static": [addr]}}
    })
}

/// A ServicePolicy for `namespace/name` with its app on `port`, as JSON.
pub fn service_json(namespace: &str, name: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "bulwark/v1",
        "kind": "ServicePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"app": {"port": port}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_endpoints_rewrite_dns_names() {
        let yaml = "spec:\n  endpoints: { dns: midtrans-proxy.payments.svc.cluster.local:8080 }\n\
                    ---\nspec:\n  endpoints:\n    dns: xendit:80\n    dnsRefresh: 5s\n";
        let a: SocketAddr = "127.0.0.1:4000".parse().expect("address");
        let b: SocketAddr = "127.0.0.1:4001".parse().expect("address");
        assert_eq!(
            static_endpoints(yaml, &[("midtrans-proxy", a), ("xendit", b)]),
            "spec:\n  endpoints: { static: [\"127.0.0.1:4000\"] }\n\
             ---\nspec:\n  endpoints:\n    static: [\"127.0.0.1:4001\"]\n    dnsRefresh: 5s\n"
        );
    }

    /// The examples are where the e2e tests look for them, and they are valid policy.
    #[test]
    fn examples_are_found() {
        let files = example_files();
        assert!(files.len() >= 4, "{files:?}");
        for file in files {
            let text = example(&file);
            let resources =
                bulwark_proto::policy::parse_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            for r in &resources {
                r.validate().unwrap_or_else(|e| panic!("{file}: {e:?}"));
            }
        }
    }

    /// The YAML the tests hand the sidecar must be valid policy, or a failing test would blame
    /// the sidecar for the kit's mistake.
    #[test]
    fn generated_policies_parse_and_validate() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().expect("address");
        let text = documents([
            upstream("echo", addr).to_yaml(),
            upstream("grpc-echo", addr)
                .namespace("payments")
                .endpoint("127.0.0.1:4001".parse().expect("address"))
                .protocol("grpc")
                .host_rewrite(true)
                .spec("timeouts: { request: 2s }")
                .to_yaml(),
            service("orders", "shop", 8080),
        ]);
        let resources = bulwark_proto::policy::parse_yaml(&text).expect("the kit's YAML parses");
        assert_eq!(resources.len(), 3);
        for r in &resources {
            r.validate().expect("the kit's policies are valid");
        }
        assert_eq!(resources[1].id(), "UpstreamPolicy/payments/grpc-echo");
        assert_eq!(resources[2].id(), "ServicePolicy/shop/orders");
    }
}
