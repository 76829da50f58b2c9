//! A development certificate authority in a directory, for demos and tests without a cluster
//! (`control-plane --dev-identity DIR`): a root and an issuer signed by it, made on first use
//! and reused afterwards, so that sidecars started later trust the same root.
//!
//! ```text
//! DIR/root.pem        the root certificate: the trust anchors every sidecar is given
//! DIR/root.key        the root's key (0600), kept to sign a new issuer
//! DIR/issuer.pem      the issuer certificate the control plane signs leaves with
//! DIR/issuer.key      its key (0600)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The files of a development authority.
#[derive(Debug, Clone)]
pub struct DevAuthority {
    pub root: PathBuf,
    pub root_key: PathBuf,
    pub issuer: PathBuf,
    pub issuer_key: PathBuf,
}

impl DevAuthority {
    pub fn at(dir: &Path) -> DevAuthority {
        DevAuthority {
            root: dir.join("root.pem"),
            root_key: dir.join("root.key"),
            issuer: dir.join("issuer.pem"),
            issuer_key: dir.join("issuer.key"),
        }
    }

    /// The authority in `dir`, made there when it has none yet. `Ok(true)` when it was made.
    pub fn ensure(dir: &Path) -> io::Result<(DevAuthority, bool)> {
        let files = DevAuthority::at(dir);
        if files.issuer.exists() && files.issuer_key.exists() && files.root.exists() {
            return Ok((files, false));
        }
        fs::create_dir_all(dir)?;
        let now = SystemTime::now();
        let root_key = KeyPair::generate().map_err(io::Error::other)?;
        // Names unique to this authority: a chain from another development authority then
        // fails as "unknown issuer", not as a signature that does not match a same-named root.
        let tag = unique_tag()?;
        let root_params = ca_params(
            &format!("Bulwark development root {tag}"),
            now,
            10 * 365,
            None,
        );
        let root = root_params
            .self_signed(&root_key)
            .map_err(io::Error::other)?;
        let issuer_key = KeyPair::generate().map_err(io::Error::other)?;
        let issuer_params = ca_params(
            &format!("Bulwark development issuer {tag}"),
            now,
            365,
            Some(0),
        );
        let root_issuer = rcgen::Issuer::new(root_params, &root_key);
        let issuer = issuer_params
            .signed_by(&issuer_key, &root_issuer)
            .map_err(io::Error::other)?;
        write_private(&files.root_key, &root_key.serialize_pem())?;
        write_private(&files.issuer_key, &issuer_key.serialize_pem())?;
        fs::write(&files.issuer, issuer.pem())?;
        // Last: its presence says the authority is complete.
        fs::write(&files.root, root.pem())?;
        Ok((files, true))
    }
}

/// A CA certificate's parameters: `path_len` limits the CAs below it.
pub fn ca_params(
    name: &str,
    now: SystemTime,
    days: u64,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(days * 24 * 3600)).into();
    params.use_authority_key_identifier_extension = true;
    params
}

/// Eight random bytes in hex.
fn unique_tag() -> io::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret readable by its owner only (mode 0600).
pub fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}
