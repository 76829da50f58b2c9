//! `meshctl check`, like `linkerd check`: one line per check, `✓` or `×` with a hint under each
//! failure, and a non-zero exit status when one failed. The control plane: reachable and its
//! version, etcd, an elected leader, the webhook's and the identity issuer's certificates. The
//! data plane: every pod on the newest policies, no snapshot refused, workload certificates
//! not about to run out.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::api::{PodList, Status};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::Output;
use crate::version::Version;

/// A certificate the control plane serves with must be good for this long (ms).
const SERVING_MARGIN_MS: i64 = 7 * 24 * 3600 * 1000;
/// A workload certificate must be good for this long (ms): they are renewed well before.
const WORKLOAD_MARGIN_MS: i64 = 3600 * 1000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostics {
    pub etcd: EtcdState,
    pub leader: LeaderState,
    pub webhook: Option<CertState>,
    pub identity_issuer: Option<CertState>,
}

#[derive(Debug, Deserialize)]
pub struct EtcdState {
    pub reachable: bool,
    pub revision: i64,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LeaderState {
    pub replica: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertState {
    pub not_after_unix_ms: i64,
    #[serde(default)]
    pub error: Option<String>,
}

/// What the checks were run on.
pub struct Facts {
    pub server: String,
    pub client: Version,
    pub version: Version,
    pub diagnostics: Diagnostics,
    pub status: Status,
    pub pods: PodList,
    pub now_ms: i64,
}

/// One check's line and, when it failed, the hint under it.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub ok: bool,
    pub text: String,
    pub hint: Option<String>,
}

fn pass(text: impl Into<String>) -> Line {
    Line {
        ok: true,
        text: text.into(),
        hint: None,
    }
}

fn fail(text: impl Into<String>, hint: impl Into<String>) -> Line {
    Line {
        ok: false,
        text: text.into(),
        hint: Some(hint.into()),
    }
}

pub async fn run(client: &Client) -> Result<Output, CliError> {
    let server = client.server();
    let mut out = Output::default();
    // Without an answer nothing else can be checked: say so as a check line.
    let version = match client.get::<Version>("/v1/version").await {
        Ok(reply) => reply.body,
        Err(e) => {
            render(
                &[fail(
                    format!("the control plane answers at {server}"),
                    format!(
                        "{e}; see docs/troubleshooting.md (10. meshctl cannot reach the control plane)"
                    ),
                )],
                &mut out,
            );
            return Err(CliError::Partial(out, Box::new(CliError::ChecksFailed(1))));
        }
    };
    let facts = Facts {
        server: server.to_string(),
        client: Version::client(),
        version,
        diagnostics: client.get::<Diagnostics>("/v1/diagnostics").await?.body,
        status: client.get::<Status>("/v1/status").await?.body,
        pods: client.get::<PodList>("/v1/pods").await?.body,
        now_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    };
    let lines = checks(&facts);
    render(&lines, &mut out);
    match lines.iter().filter(|l| !l.ok).count() {
        0 => Ok(out),
        failed => Err(CliError::Partial(
            out,
            Box::new(CliError::ChecksFailed(failed)),
        )),
    }
}

/// Every check, in order: the control plane's, then the data plane's.
pub fn checks(f: &Facts) -> Vec<Line> {
    let mut lines = vec![pass(format!(
        "the control plane answers at {}: {} ({})",
        f.server, f.version.version, f.version.revision
    ))];
    lines.push(if f.client == f.version {
        pass("meshctl and the control plane are the same version")
    } else {
        fail(
            format!(
                "meshctl is {} ({}), the control plane {} ({})",
                f.client.version, f.client.revision, f.version.version, f.version.revision
            ),
            "use the meshctl of the control plane's release",
        )
    });
    let etcd = &f.diagnostics.etcd;
    lines.push(if etcd.reachable {
        pass(format!("the control plane reaches etcd (revision {})", etcd.revision))
    } else {
        fail(
            format!(
                "the control plane cannot reach etcd: {}",
                etcd.error.as_deref().unwrap_or("no answer")
            ),
            "reads are stale and writes fail until it can; check etcd's pods and the control plane's --etcd-* flags (docs/troubleshooting.md, 11.)",
        )
    });
    let leader = &f.diagnostics.leader;
    lines.push(match (&leader.replica, &leader.error) {
        (Some(replica), _) => pass(format!("a leader is elected: {replica}")),
        (None, Some(error)) => fail(
            format!("no leader known: {error}"),
            "levels are not computed without one; it needs etcd",
        ),
        (None, None) => fail(
            "no replica leads",
            "levels are not computed and alerts not sent until one does; check that the replicas run and reach etcd",
        ),
    });
    for (what, cert, hint) in [
        (
            "the webhook's certificate",
            &f.diagnostics.webhook,
            "renew the Secret bulwark-webhook-tls (cert-manager does it in the production overlay); pods are created without a sidecar while it is invalid",
        ),
        (
            "the identity issuer's certificate",
            &f.diagnostics.identity_issuer,
            "replace the Secret bulwark-identity-issuer (docs/identity.md): workload certificates cannot outlive it",
        ),
    ] {
        if let Some(cert) = cert {
            lines.push(certificate(what, cert, f.now_ms, hint));
        }
    }
    lines.extend(data_plane(f));
    lines
}

fn certificate(what: &str, cert: &CertState, now_ms: i64, hint: &str) -> Line {
    if let Some(error) = &cert.error {
        return fail(format!("{what} cannot be read: {error}"), hint);
    }
    let left = cert.not_after_unix_ms - now_ms;
    if left <= 0 {
        fail(format!("{what} expired {} ago", span(-left)), hint)
    } else if left < SERVING_MARGIN_MS {
        fail(format!("{what} runs out in {}", span(left)), hint)
    } else {
        pass(format!("{what} is valid for {}", span(left)))
    }
}

fn data_plane(f: &Facts) -> Vec<Line> {
    let mut lines = Vec::new();
    let resources = &f.status.resources;
    let behind: Vec<String> = resources
        .iter()
        .filter(|r| r.pods.applied < r.pods.total)
        .map(|r| format!("{} ({}/{})", r.id, r.pods.applied, r.pods.total))
        .collect();
    lines.push(if behind.is_empty() {
        pass(format!(
            "every connected pod runs the newest policies ({} resources, {} pods)",
            resources.len(),
            f.pods.pods.len()
        ))
    } else {
        fail(
            format!("pods are behind on {}", behind.join(", ")),
            "`meshctl status` names them; a pod behind for long is disconnected or refused the snapshot",
        )
    });
    let nacks: Vec<String> = resources
        .iter()
        .flat_map(|r| {
            r.pods
                .nacks
                .iter()
                .map(move |n| format!("{} refused {}: {}", n.pod, r.id, n.error))
        })
        .collect();
    lines.push(if nacks.is_empty() {
        pass("no pod refused a snapshot")
    } else {
        fail(
            nacks.join("; "),
            "fix the resource and apply it again; those pods keep their previous policies meanwhile (docs/troubleshooting.md, 2.)",
        )
    });
    let with_identity: Vec<_> = f
        .pods
        .pods
        .iter()
        .filter_map(|p| p.identity.as_ref().map(|id| (p, id)))
        .collect();
    if !with_identity.is_empty() {
        let short: Vec<String> = with_identity
            .iter()
            .filter(|(_, id)| id.expires_unix_ms - f.now_ms < WORKLOAD_MARGIN_MS)
            .map(|(p, id)| {
                let left = id.expires_unix_ms - f.now_ms;
                let when = match (id.expires_unix_ms, left) {
                    (0, _) => "has no certificate yet".to_string(),
                    (_, left) if left <= 0 => format!("expired {} ago", span(-left)),
                    (_, left) => format!("runs out in {}", span(left)),
                };
                format!("{}/{}/{} {when}", p.namespace, p.service, p.pod)
            })
            .collect();
        lines.push(if short.is_empty() {
            pass(format!(
                "every workload certificate is valid for over an hour ({} pods)",
                with_identity.len()
            ))
        } else {
            fail(
                short.join("; "),
                "renewal is failing: `GET /identity` in the pod says why (docs/troubleshooting.md, 7.)",
            )
        });
    }
    lines
}

/// `2d3h`, `5h10m`, `42m`, `15s`.
fn span(ms: i64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

fn render(lines: &[Line], out: &mut Output) {
    for line in lines {
        out.line(format_args!(
            "{} {}",
            if line.ok { "✓" } else { "×" },
            line.text
        ));
        if let Some(hint) = &line.hint {
            out.line(format_args!("    hint: {hint}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_at_a_glance() {
        assert_eq!(span(15_000), "15s");
        assert_eq!(span(42 * 60_000), "42m");
        assert_eq!(span(5 * 3_600_000 + 10 * 60_000), "5h10m");
        assert_eq!(span(2 * 86_400_000 + 3 * 3_600_000), "2d3h");
    }

    #[test]
    fn a_certificate_is_good_expiring_or_expired() {
        let now = 1_000_000_000_000;
        let cert = |left: i64| CertState {
            not_after_unix_ms: now + left,
            error: None,
        };
        assert!(certificate("c", &cert(30 * 86_400_000), now, "h").ok);
        let soon = certificate("c", &cert(3 * 86_400_000), now, "h");
        assert_eq!((soon.ok, soon.text.as_str()), (false, "c runs out in 3d0h"));
        let gone = certificate("c", &cert(-60_000), now, "h");
        assert_eq!((gone.ok, gone.text.as_str()), (false, "c expired 1m ago"));
    }
}
