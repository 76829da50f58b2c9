//! A listener's TLS certificate (the webhook's, the API's): read from the PEM files that cert-manager (through the kubelet's
//! Secret volume) or an operator keeps up to date, and read again when they change — so a
//! rotation needs no restart.
//!
//! The files are looked at on TLS handshakes, at most every [`RECHECK`], and parsed only when
//! their bytes changed. Changes are told by content, not modification time: Linux file times
//! advance by the clock tick, so a same-size rewrite in place within one tick would look
//! unchanged. Until a usable pair has been read (the Secret volume is optional and may be filled
//! in late), handshakes fail and the rest of the control plane runs on. A change that leaves the
//! pair unusable (a half-written rotation, a certificate beside the previous key) keeps the
//! previous certificate in service until the next change. Each unusable change is logged once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;

/// How often, at most, handshakes look at the files again. Rotations are rare and certificates
/// are renewed well before they expire: a few seconds of delay costs nothing, and reading the
/// files on every handshake would.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Larger files are refused unread: a certificate chain and a key take a few kilobytes.
const MAX_FILE: u64 = 1024 * 1024;

/// Why the files do not give a usable certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the certificate file {path}: {source}")]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the certificate file {path} is not valid PEM: {source}")]
    BadCert { path: PathBuf, source: pem::Error },
    #[error("the certificate file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read the private key file {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the private key file {path} is not valid PEM: {source}")]
    BadKey { path: PathBuf, source: pem::Error },
    #[error("the private key file {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the certificate {cert} and the key {key} cannot be used together: {source}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// What one look at the files found.
#[derive(Debug)]
pub enum Refresh {
    /// Not looked at (looked at less than [`RECHECK`] ago), or unchanged since.
    Unchanged,
    /// A new certificate is in service.
    Loaded,
    /// The files changed but are not usable; the previous certificate, if any, stays.
    Failed(CertError),
}

/// A [`ResolvesServerCert`] serving the certificate in `cert` with the key in `key`, read again
/// when the files change.
#[derive(Debug)]
pub struct CertReloader {
    /// Whose certificate, for the log: `webhook`, `API`.
    what: &'static str,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// No look at the files before this.
    next_check: Option<Instant>,
    /// The files as they were at the last look.
    seen: Option<Files>,
    current: Option<Arc<CertifiedKey>>,
}

/// Both files' bytes, or why they could not be read.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    cert: Result<Vec<u8>, std::io::ErrorKind>,
    key: Result<Vec<u8>, std::io::ErrorKind>,
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    // Follows symlinks: the Secret volume's files are links into its current version.
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {MAX_FILE} bytes"),
        ));
    }
    Ok(bytes)
}

impl CertReloader {
    /// Reads nothing yet: see [`CertReloader::refresh_now`].
    pub fn new(
        what: &'static str,
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> CertReloader {
        CertReloader {
            what,
            cert,
            key,
            provider,
            state: Mutex::default(),
        }
    }

    /// Looks at the files now, whenever it last did; logs what it found.
    pub fn refresh_now(&self) -> Refresh {
        self.refresh(true).0
    }

    /// The certificate in service, after looking at the files if [`RECHECK`] passed.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.refresh(false).1
    }

    fn refresh(&self, force: bool) -> (Refresh, Option<Arc<CertifiedKey>>) {
        // Every field is written whole, so a panic elsewhere while the lock was held leaves a
        // consistent state: go on serving.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if !force && state.next_check.is_some_and(|next| now < next) {
            return (Refresh::Unchanged, state.current.clone());
        }
        state.next_check = Some(now + RECHECK);
        let (cert, key) = (read(&self.cert), read(&self.key));
        let files = Files {
            cert: cert.as_ref().cloned().map_err(|e| e.kind()),
            key: key.as_ref().cloned().map_err(|e| e.kind()),
        };
        if state.seen.as_ref() == Some(&files) {
            return (Refresh::Unchanged, state.current.clone());
        }
        state.seen = Some(files);
        let refresh = match self.parse(cert, key) {
            Ok(key) => {
                tracing::info!(
                    cert = %self.cert.display(),
                    key = %self.key.display(),
                    "{} certificate loaded", self.what
                );
                state.current = Some(Arc::new(key));
                Refresh::Loaded
            }
            Err(error) if state.current.is_some() => {
                tracing::warn!(
                    %error,
                    "{} certificate files changed but cannot be used; keeping the previous certificate", self.what
                );
                Refresh::Failed(error)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "no usable {what} certificate: TLS handshakes are refused until there is one", what = self.what
                );
                Refresh::Failed(error)
            }
        };
        (refresh, state.current.clone())
    }

    fn parse(
        &self,
        cert: std::io::Result<Vec<u8>>,
        key: std::io::Result<Vec<u8>>,
    ) -> Result<CertifiedKey, CertError> {
        let cert = cert.map_err(|source| CertError::ReadCert {
            path: self.cert.clone(),
            source,
        })?;
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CertError::BadCert {
                path: self.cert.clone(),
                source,
            })?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = key.map_err(|source| CertError::ReadKey {
            path: self.key.clone(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|source| match source {
            pem::Error::NoItemsFound => CertError::NoKey {
                path: self.key.clone(),
            },
            source => CertError::BadKey {
                path: self.key.clone(),
                source,
            },
        })?;
        // Parses the end-entity certificate and checks that the key is its key.
        CertifiedKey::from_der(chain, key, &self.provider).map_err(|source| CertError::Unusable {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("bulwark-cp-certs-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed end-entity certificate and its key, as PEM.
    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn reloader(dir: &Dir) -> CertReloader {
        CertReloader::new(
            "test",
            dir.0.join("tls.crt"),
            dir.0.join("tls.key"),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
    }

    fn write(dir: &Dir, (cert, key): &(String, String)) {
        std::fs::write(dir.0.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.0.join("tls.key"), key).unwrap();
    }

    fn served(r: &CertReloader) -> Option<Vec<u8>> {
        r.current().map(|k| k.cert[0].to_vec())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn missing_files_fail_once_then_load_when_they_appear() {
        let dir = Dir::new();
        let r = reloader(&dir);
        assert!(matches!(
            r.refresh_now(),
            Refresh::Failed(CertError::ReadCert { .. })
        ));
        assert_eq!(served(&r), None);
        // Nothing changed: nothing to say again.
        assert!(matches!(r.refresh_now(), Refresh::Unchanged));

        let first = pair("a.example");
        write(&dir, &first);
        // Not looked at before RECHECK passed.
        assert_eq!(served(&r), None);
        tokio::time::advance(RECHECK).await;
        assert_eq!(served(&r), Some(der(&first.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_is_picked_up_and_a_mismatched_pair_keeps_the_previous() {
        let dir = Dir::new();
        let r = reloader(&dir);
        let first = pair("a.example");
        write(&dir, &first);
        assert!(matches!(r.refresh_now(), Refresh::Loaded));
        assert_eq!(served(&r), Some(der(&first.0)));

        // Half a rotation: the new certificate with the old key.
        let second = pair("b.example");
        std::fs::write(dir.0.join("tls.crt"), &second.0).unwrap();
        assert!(matches!(
            r.refresh_now(),
            Refresh::Failed(CertError::Unusable { .. })
        ));
        assert_eq!(served(&r), Some(der(&first.0)));

        // The rest of it.
        std::fs::write(dir.0.join("tls.key"), &second.1).unwrap();
        tokio::time::advance(RECHECK).await;
        assert_eq!(served(&r), Some(der(&second.0)));
    }

    #[tokio::test]
    async fn garbage_is_refused_with_its_reason() {
        let dir = Dir::new();
        let r = reloader(&dir);
        std::fs::write(dir.0.join("tls.crt"), "not a certificate").unwrap();
        std::fs::write(dir.0.join("tls.key"), "").unwrap();
        assert!(matches!(
            r.refresh_now(),
            Refresh::Failed(CertError::NoCertificate { .. })
        ));
        let (cert, _) = pair("a.example");
        std::fs::write(dir.0.join("tls.crt"), cert).unwrap();
        assert!(matches!(
            r.refresh_now(),
            Refresh::Failed(CertError::NoKey { .. })
        ));
    }
}
