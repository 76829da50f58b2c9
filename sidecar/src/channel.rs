//! Channels to the control plane: `http://` in plaintext (a control plane run with
//! `--insecure-dev`), `https://` over TLS — the control plane's certificate checked against the
//! trust anchors (or `--control-plane-ca`) and the host dialled, the workload certificate
//! presented once there is one. The TLS is ours (rustls, the sidecar's one provider); tonic is
//! handed the finished stream.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

/// A control-plane address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Address {
    pub fn parse(addr: &str) -> Result<Address, String> {
        let bad = |why: &str| format!("bad control-plane address {addr:?}: {why}");
        let uri: Uri = addr.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("it must start with http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Address { tls, host, port })
    }
}

/// Connects to `addr`; `tls` is required for `https://` addresses. `endpoint` sets timeouts
/// and keep-alives.
pub async fn connect(
    addr: &str,
    tls: Option<&Arc<ClientConfig>>,
    endpoint: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, String> {
    let address = Address::parse(addr)?;
    // tonic sees a plain URI either way: the connector below does the TLS.
    let plain = format!("http://{}", authority(&address));
    let base = Endpoint::from_shared(plain)
        .map_err(|e| format!("bad control-plane address {addr:?}: {e}"))?;
    let base = endpoint(base);
    if !address.tls {
        return base.connect().await.map_err(|e| describe(addr, &e));
    }
    let Some(tls) = tls.cloned() else {
        return Err(format!(
            "{addr}: https needs the roots to verify the control plane with: --trust-anchors or --control-plane-ca"
        ));
    };
    let name = ServerName::try_from(address.host.clone())
        .map_err(|e| format!("bad control-plane host {:?}: {e}", address.host))?;
    let target = (address.host.clone(), address.port);
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        let name = name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    base.connect_with_connector(connector)
        .await
        .map_err(|e| describe(addr, &e))
}

fn authority(a: &Address) -> String {
    if a.host.contains(':') {
        format!("[{}]:{}", a.host, a.port)
    } else {
        format!("{}:{}", a.host, a.port)
    }
}

/// The error with its causes: tonic's own text is only "transport error".
fn describe(addr: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{addr}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Connect and keep-alive settings of the Discovery stream.
pub fn stream_settings(e: Endpoint) -> Endpoint {
    e.connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_scheme_and_default_port() {
        assert_eq!(
            Address::parse("https://cp.bulwark-system.svc:8081").unwrap(),
            Address {
                tls: true,
                host: "cp.bulwark-system.svc".into(),
                port: 8081
            }
        );
        assert_eq!(
            Address::parse("https://[::1]").unwrap(),
            Address {
                tls: true,
                host: "::1".into(),
                port: 443
            }
        );
        assert_eq!(
            Address::parse("http://127.0.0.1:8081").unwrap(),
            Address {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8081
            }
        );
        assert_eq!(
            Address::parse("cp:8081").unwrap_err(),
            "bad control-plane address \"cp:8081\": it must start with http:// or https://"
        );
    }
}
