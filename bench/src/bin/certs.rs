//! `bulwark-bench-certs`: a workload certificate from a development authority's issuer
//! (`control-plane --dev-identity DIR`), written as PEM files, for a proxy that reads its
//! certificate from disk — Envoy in bench/mtls — and for `bulwark-bench-handshakes`.
//!
//! ```text
//! bulwark-bench-certs --issuer DIR --spiffe-id spiffe://cluster.local/ns/shop/sa/frontend --out CERTS/frontend
//! ```
//!
//! writes `PREFIX.pem` (the leaf, then the issuer: the chain to present) and `PREFIX.key` (the
//! leaf's PKCS#8 key, mode 0600). The leaf is issued the way the control plane issues sidecars'
//! (`bulwark_identity::Issuer`): an ECDSA P-256 key, the SPIFFE ID as its URI name and the ID's
//! server-name form (`<sa>.<ns>.sa.bulwark.<trust-domain>`) as its DNS name, server and client
//! use.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
use bulwark_identity::{Issuer, SpiffeId};
use clap::Parser;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

#[derive(Debug, Parser)]
#[command(
    name = "bulwark-bench-certs",
    version,
    about = "A workload certificate from a development authority, as PEM files"
)]
struct Args {
    /// The development authority's directory (issuer.pem, issuer.key).
    #[arg(long)]
    issuer: PathBuf,
    /// The identity to certify.
    #[arg(long)]
    spiffe_id: SpiffeId,
    /// Where to write: PREFIX.pem and PREFIX.key.
    #[arg(long)]
    out: PathBuf,
    /// How long the certificate lives, in hours.
    #[arg(long, default_value_t = 24)]
    hours: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let chain_file = args.issuer.join("issuer.pem");
    let key_file = args.issuer.join("issuer.key");
    let chain_pem =
        fs::read(&chain_file).with_context(|| format!("read {}", chain_file.display()))?;
    let key_pem =
        fs::read_to_string(&key_file).with_context(|| format!("read {}", key_file.display()))?;
    let lifetime = Duration::from_secs(args.hours.max(1) * 3600);
    let issuer = Issuer::from_pem(&chain_pem, &key_pem, lifetime)?;

    // The key and the certificate request, as a sidecar makes them (PendingKey), but here the
    // key leaves the process: the proxy reads it from a file.
    let key = KeyPair::generate().context("make a key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = args
        .spiffe_id
        .to_string()
        .try_into()
        .with_context(|| format!("{} as a URI name", args.spiffe_id))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .context("make a certificate request")?;
    let issued = issuer.issue(csr.der(), &args.spiffe_id, None, SystemTime::now())?;

    let chain: String = issued
        .chain
        .iter()
        .map(|cert| pem("CERTIFICATE", cert.as_ref()))
        .collect();
    write(&with_extension(&args.out, "pem"), &chain, 0o644)?;
    write(
        &with_extension(&args.out, "key"),
        &key.serialize_pem(),
        0o600,
    )?;
    Ok(())
}

/// `PREFIX.ext` (the prefix may contain dots of its own).
fn with_extension(prefix: &Path, ext: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}
