//! `meshctl degrade`: forces a degradation level on one service or the whole mesh for a
//! bounded time, or clears such an override before it runs out.

use std::time::Duration;

use bulwark_proto::policy::units::parse_duration;
use hyper::StatusCode;

use crate::api::{self, Cleared, DegradeRequest, Degraded, Level, Target};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::Output;

/// The longest override the control plane accepts: a forced level outliving the incident
/// that prompted it would hide the next one.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// What to force, checked locally before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Force<'a> {
    pub level: Level,
    pub ttl: &'a str,
    pub reason: &'a str,
}

impl<'a> Force<'a> {
    /// Checks `--level`, `--ttl` (a duration in (0, 24h]) and `--reason` (not blank).
    pub fn parse(level: &str, ttl: &'a str, reason: &'a str) -> Result<Self, CliError> {
        let level = api::parse_level(level)?;
        let ttl = ttl.trim();
        check_ttl(ttl)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(CliError::Usage(
                "--reason must say why: it is recorded with the override and shown by status and events"
                    .into(),
            ));
        }
        Ok(Force { level, ttl, reason })
    }
}

fn check_ttl(ttl: &str) -> Result<(), CliError> {
    let too_long = || CliError::Usage(format!("--ttl must be at most 24h, got {ttl:?}"));
    let parsed = match parse_duration(ttl) {
        Ok(parsed) => parsed,
        // The policy format's own ceiling (a year) is far above ours; name ours.
        Err(e) if e.starts_with("must be at most") => return Err(too_long()),
        Err(e) => return Err(CliError::Usage(format!("--ttl {e}"))),
    };
    if parsed.is_zero() {
        return Err(CliError::Usage(format!(
            "--ttl must be longer than zero, got {ttl:?}"
        )));
    }
    if parsed > MAX_TTL {
        return Err(too_long());
    }
    Ok(())
}

/// `PUT /v1/degrade/...`, then `mrg/order-orchestrator forced to EMERGENCY until
/// 2026-11-22T10:15:00Z (payment provider outage)`.
pub async fn force(
    client: &Client,
    target: &Target,
    force: &Force<'_>,
    by: &str,
) -> Result<Output, CliError> {
    let request = DegradeRequest {
        level: force.level,
        ttl: force.ttl,
        reason: force.reason,
        by,
    };
    let reply = client
        .put::<_, Degraded>(&api::degrade_path(target), &request)
        .await?;
    let mut out = Output::default();
    out.line(forced_line(target, &reply.body));
    Ok(out)
}

pub fn forced_line(target: &Target, degraded: &Degraded) -> String {
    let forced = &degraded.forced;
    let mut line = format!(
        "{target} forced to {} until {}",
        forced.level,
        bulwark_proto::time::rfc3339_seconds(forced.expires)
    );
    if !forced.reason.is_empty() {
        line.push_str(&format!(" ({})", forced.reason));
    }
    line
}

/// `DELETE /v1/degrade/...?by=WHO`, then `mrg/order-orchestrator override cleared`; a 404
/// (with the control plane's message) or `"cleared": false` means there was nothing to clear.
pub async fn clear(client: &Client, target: &Target, by: &str) -> Result<Output, CliError> {
    let path = format!("{}{}", api::degrade_path(target), api::query(&[("by", by)]));
    let cleared = match client.delete::<Cleared>(&path).await {
        Ok(reply) => reply.body.cleared,
        // A bare 404 comes from something that is not the control plane; keep it as it is.
        Err(CliError::Refused {
            status: StatusCode::NOT_FOUND,
            body,
            ..
        }) if !body.message.is_empty() => false,
        Err(e) => return Err(e),
    };
    if !cleared {
        return Err(CliError::NotFound(format!("no override for {target}")));
    }
    let mut out = Output::default();
    out.line(format_args!("{target} override cleared"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(result: Result<Force<'_>, CliError>) -> String {
        match result {
            Err(CliError::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn levels_are_read_in_any_case_and_sent_uppercase() {
        let force = Force::parse("emergency", " 15m ", " payment provider outage ").expect("ok");
        assert_eq!(
            force,
            Force {
                level: Level::Emergency,
                ttl: "15m",
                reason: "payment provider outage"
            }
        );
        let request = DegradeRequest {
            level: force.level,
            ttl: force.ttl,
            reason: force.reason,
            by: "alice",
        };
        assert_eq!(
            serde_json::to_string(&request).expect("encodes"),
            r#"{"level":"EMERGENCY","ttl":"15m","reason":"payment provider outage","by":"alice"}"#
        );
        assert_eq!(
            Force::parse("Severe", "1h30m", "x").map(|f| f.level).ok(),
            Some(Level::Severe)
        );
    }

    #[test]
    fn bad_levels_ttls_and_reasons_are_refused_with_the_rule() {
        assert_eq!(
            usage(Force::parse("critical", "15m", "x")),
            "unknown level \"critical\"; expected NORMAL, DEGRADED, SEVERE or EMERGENCY"
        );
        assert_eq!(
            usage(Force::parse("SEVERE", "15x", "x")),
            "--ttl must be a duration such as \"250ms\", \"10s\" or \"1m30s\" (units us, ms, s, m, h), got \"15x\""
        );
        assert_eq!(
            usage(Force::parse("SEVERE", "0s", "x")),
            "--ttl must be longer than zero, got \"0s\""
        );
        assert_eq!(
            usage(Force::parse("SEVERE", "24h1s", "x")),
            "--ttl must be at most 24h, got \"24h1s\""
        );
        assert_eq!(
            usage(Force::parse("SEVERE", "100000h", "x")),
            "--ttl must be at most 24h, got \"100000h\""
        );
        assert!(Force::parse("SEVERE", "24h", "x").is_ok());
        assert_eq!(
            usage(Force::parse("SEVERE", "15m", "  ")),
            "--reason must say why: it is recorded with the override and shown by status and events"
        );
    }

    #[test]
    fn the_answer_names_the_target_level_expiry_and_reason() {
        let degraded: Degraded = serde_json::from_str(
            r#"{"override": {"level": "EMERGENCY", "reason": "payment provider outage",
                "by": "alice", "expires": 1795342500000, "mesh": false}}"#,
        )
        .expect("answer parses");
        let service = api::parse_target("order-orchestrator", "mrg").expect("target");
        assert_eq!(
            forced_line(&service, &degraded),
            "mrg/order-orchestrator forced to EMERGENCY until 2026-11-22T10:15:00Z (payment provider outage)"
        );
        assert_eq!(
            forced_line(&Target::Mesh, &degraded),
            "mesh forced to EMERGENCY until 2026-11-22T10:15:00Z (payment provider outage)"
        );
    }
}
