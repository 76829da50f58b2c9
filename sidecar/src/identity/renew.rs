//! Keeping a certificate in force: request one at start, renew it at about 70 % of its
//! lifetime (jittered, so that a fleet started together does not renew together), retry a
//! failed request with backoff across the control-plane addresses; and reload the trust
//! anchors when their file changes (a root rotation).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulwark_identity::PendingKey;
use bulwark_identity::cert::unix_seconds;
use bulwark_proto::backoff::Backoff;
use bulwark_proto::v1::identity_client::IdentityClient;
use bulwark_proto::v1::{CertifyRequest, certify_request};
use rustls_pki_types::CertificateDer;

use super::{Identity, IdentitySettings, ProofSource};
use crate::metrics::Metrics;

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A certificate is renewed at this share of its lifetime, give or take `RENEW_JITTER`.
const RENEW_AT: f64 = 0.7;
const RENEW_JITTER: f64 = 0.1;

/// Requests and renews the certificate for as long as the sidecar runs.
pub async fn run(
    identity: Arc<Identity>,
    settings: IdentitySettings,
    metrics: Arc<Metrics>,
    pod: String,
) {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    let mut server = 0usize;
    loop {
        let addr = &settings.servers[server % settings.servers.len()];
        match request(&identity, &settings, addr, &pod).await {
            Ok((not_before, not_after)) => {
                backoff.reset();
                metrics.certificate_renewal("issued");
                metrics.certificate_expiry(unix_seconds(not_after));
                // Certificates are dated back a little (clock skew): the lifetime that counts is
                // what is left of it from now.
                let start = not_before.max(SystemTime::now());
                let at = renewal_time(start, not_after, fastrand::f64());
                {
                    let mut status = identity.status();
                    status.issued += 1;
                    status.last_error = None;
                    status.next_renewal = Some(at);
                }
                tracing::info!(
                    identity = %identity.id,
                    not_after = unix_seconds(not_after),
                    renew_at = unix_seconds(at),
                    "workload certificate in force"
                );
                tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await;
            }
            Err(e) => {
                server += 1;
                metrics.certificate_renewal("failed");
                {
                    let mut status = identity.status();
                    status.failed += 1;
                    status.last_error = Some(e.clone());
                }
                tracing::warn!(identity = %identity.id, control_plane = %addr, error = %e, retry_within = ?backoff.step(), "workload certificate request failed");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at 70 % of its
/// lifetime, ±5 % (`rand` in [0, 1)).
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, rand: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let share = RENEW_AT + (rand - 0.5) * RENEW_JITTER;
    not_before + lifetime.mul_f64(share.clamp(0.0, 1.0))
}

/// One request: a new key, a request for this identity with the proof, the answer installed.
async fn request(
    identity: &Identity,
    settings: &IdentitySettings,
    addr: &str,
    pod: &str,
) -> Result<(SystemTime, SystemTime), String> {
    let (pending, csr) = PendingKey::new(&identity.id)?;
    let proof = match &settings.proof {
        ProofSource::ServiceAccountToken(path) => certify_request::Proof::ServiceAccountToken(
            read_secret(path)
                .map_err(|e| format!("service account token {}: {e}", path.display()))?,
        ),
        ProofSource::JoinToken(path) => certify_request::Proof::JoinToken(
            read_secret(path).map_err(|e| format!("join token {}: {e}", path.display()))?,
        ),
    };
    let channel = crate::channel::connect(addr, settings.tls.as_ref(), |e| {
        e.connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
    })
    .await?;
    let answer = IdentityClient::new(channel)
        .certify(CertifyRequest {
            csr,
            proof: Some(proof),
            pod: pod.to_string(),
        })
        .await
        .map_err(|s| {
            format!(
                "{addr} refused the certificate request ({}): {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    let chain = answer.chain.into_iter().map(CertificateDer::from).collect();
    let certified = identity.credentials.install(pending, chain)?;
    identity.certified.send_replace(true);
    Ok((certified.info.not_before, certified.info.not_after))
}

fn read_secret(path: &std::path::Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// Reloads the trust anchors when their file changes. A file that cannot be used leaves the
/// anchors in force, and says why.
pub async fn watch_anchors(
    identity: Arc<Identity>,
    path: std::path::PathBuf,
    every: Duration,
    mut last: Vec<u8>,
) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(now) = std::fs::read(&path) else {
            continue;
        };
        if now == last {
            continue;
        }
        match identity.anchors.replace(&now) {
            Ok(()) => {
                let roots: Vec<String> = identity
                    .anchors
                    .load()
                    .roots
                    .iter()
                    .map(|r| r.subject.clone())
                    .collect();
                tracing::info!(path = %path.display(), ?roots, "trust anchors reloaded");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "trust anchors not reloaded; keeping those in force");
            }
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_about_seventy_percent_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(100);
        let at = |rand| {
            renewal_time(start, end, rand)
                .duration_since(start)
                .unwrap()
        };
        assert_eq!(at(0.5), Duration::from_secs(70));
        assert_eq!(at(0.0), Duration::from_secs(65));
        assert!(at(0.999) < Duration::from_secs(75));
        // A certificate dated after its expiry renews at once.
        assert_eq!(renewal_time(end, start, 0.5), end);
    }
}
