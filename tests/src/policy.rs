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

#[cfg(test)]
mod tests {
    use super::*;

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
