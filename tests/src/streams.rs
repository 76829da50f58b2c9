//! Servers and clients that are not plain HTTP request/response, for the capture tests: a
//! line-echo TCP server, one that speaks first (as SMTP and MySQL servers do), a WebSocket echo
//! server, and a TLS echo server with its certificate authority — each counting what it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::process::lock;

/// What a stream server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    /// TLS: the server names clients asked for.
    pub server_names: Mutex<Vec<String>>,
}

/// A running server; it stops accepting when dropped.
#[derive(Debug)]
pub struct StreamServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamServer {
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn server_names(&self) -> Vec<String> {
        lock(&self.seen.server_names).clone()
    }

    fn spawn<F, Fut>(listener: TcpListener, serve: F) -> StreamServer
    where
        F: Fn(tokio::net::TcpStream, Arc<Seen>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().expect("the listener's address");
        let seen = Arc::new(Seen::default());
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, seen.clone()));
                }
            })
        };
        StreamServer { addr, seen, task }
    }

    /// Echoes every line it reads.
    pub fn line_echo(listener: TcpListener) -> StreamServer {
        StreamServer::spawn(listener, |stream, _| async move {
            let _ = echo_lines(stream, None).await;
        })
    }

    /// Says `220 ready` first, then echoes every line.
    pub fn greeter(listener: TcpListener) -> StreamServer {
        StreamServer::spawn(listener, |stream, _| async move {
            let _ = echo_lines(stream, Some(b"220 ready\r\n")).await;
        })
    }

    /// A WebSocket server that echoes text and binary messages (and answers pings).
    pub fn websocket_echo(listener: TcpListener) -> StreamServer {
        StreamServer::spawn(listener, |stream, _| async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                let reply = match message {
                    Message::Text(_) | Message::Binary(_) => message,
                    Message::Close(_) => break,
                    // Pings are answered by tungstenite itself.
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        })
    }

    /// A TLS server with a certificate for `names` (signed by `ca`) that echoes lines and
    /// records the server name each client asked for.
    pub fn tls_echo(listener: TcpListener, ca: &TestCa, names: &[&str]) -> StreamServer {
        let config = ca.server_config(names);
        StreamServer::spawn(listener, move |stream, seen| {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Some(name) = tls.get_ref().1.server_name() {
                    lock(&seen.server_names).push(name.to_string());
                }
                let _ = echo_lines(tls, None).await;
            }
        })
    }
}

async fn echo_lines<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    greeting: Option<&[u8]>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    if let Some(g) = greeting {
        write.write_all(g).await?;
    }
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        write.write_all(format!("{line}\n").as_bytes()).await?;
    }
    Ok(())
}

/// Writes `line` and reads one line back.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write a line");
    read_line(stream).await
}

/// Reads one line (without its end).
pub async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::io::AsyncReadExt::read(stream, &mut byte)
            .await
            .expect("read a line");
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out)
        .trim_end_matches('\r')
        .to_string()
}

/// A certificate authority for the tests' TLS servers, and a client that trusts only it.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bulwark test CA");
        let cert = params.self_signed(&key).expect("the CA certificate");
        let issuer = rcgen::Issuer::new(params, key);
        TestCa { cert, issuer }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server configuration with a leaf certificate for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().expect("a leaf key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let leaf = params
            .signed_by(&key, &self.issuer)
            .expect("the leaf certificate");
        let chain = vec![leaf.der().clone(), self.cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .expect("a DER private key");
        let config = rustls::ServerConfig::builder_with_provider(TestCa::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the server configuration");
        Arc::new(config)
    }

    /// A leaf certificate for `names` (IP addresses become IP names) and its key, PEM.
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a leaf key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let leaf = params.signed_by(&key, &self.issuer).expect("the leaf");
        (leaf.pem(), key.serialize_pem())
    }

    /// A leaf certificate whose fields `edit` sets, and its key, PEM (the chain: leaf, then
    /// this CA).
    pub fn leaf_pem_with(
        &self,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a leaf key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        edit(&mut params);
        let leaf = params.signed_by(&key, &self.issuer).expect("the leaf");
        (leaf.pem() + &self.cert.pem(), key.serialize_pem())
    }

    /// A leaf whose fields `edit` sets, signed by another CA given as PEM (its certificate and
    /// key), and its key, PEM (the chain: leaf, then that CA).
    pub fn sign_with(
        ca_pem: &str,
        ca_key_pem: &str,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).expect("the CA key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).expect("the CA");
        let key = rcgen::KeyPair::generate().expect("a leaf key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        edit(&mut params);
        let leaf = params.signed_by(&key, &issuer).expect("the leaf");
        (leaf.pem() + ca_pem, key.serialize_pem())
    }

    /// The CA certificate, PEM: what a client given a CA file trusts.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS client trusting only this CA.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("the CA is a root");
        let config = rustls::ClientConfig::builder_with_provider(TestCa::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A TLS 1.3 client that presents a certificate of this CA naming `spiffe_id` and trusts
    /// only `roots_pem`: a caller from outside the mesh that claims a mesh identity.
    pub fn impostor_client(&self, spiffe_id: &str, roots_pem: &[u8]) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::pem::PemObject;
        let key = rcgen::KeyPair::generate().expect("a leaf key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(spiffe_id).expect("a URI"),
        )];
        let leaf = params.signed_by(&key, &self.issuer).expect("the leaf");
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .expect("a DER private key");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem) {
            roots.add(cert.expect("a PEM certificate")).expect("a root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(TestCa::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf.der().clone(), self.cert.der().clone()], key)
            .expect("the client configuration");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
