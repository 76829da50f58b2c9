//! `meshctl apply`: checks every resource locally with the same validator as `validate`,
//! then sends them all in one all-or-nothing request and prints one line per result (or, on
//! a dry run, the server's diff of each resource). `meshctl diff` is the dry run that prints
//! only what would change, like `kubectl diff`.

use std::path::PathBuf;

use serde_json::Value;

use crate::api::{ApplyRequest, ApplyResponse, ApplyResult};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::Output;
use crate::validate;

pub async fn run(
    client: &Client,
    files: &[PathBuf],
    namespace: &str,
    dry_run: bool,
    by: &str,
) -> Result<Output, CliError> {
    // Nothing reaches the server unless every file is valid: a half-valid batch is a typo.
    let report = validate::run(files, namespace);
    if !report.problems.is_empty() {
        return Err(CliError::Invalid(report.problems));
    }
    let request = ApplyRequest {
        resources: &report.resources,
        dry_run,
        by,
    };
    let reply = client
        .post::<_, ApplyResponse>("/v1/apply", &request)
        .await?;
    let mut out = Output::default();
    if dry_run {
        render_dry_run(&reply.body.results, &mut out);
    } else {
        render_results(&reply.body.results, &mut out);
    }
    Ok(out)
}

/// `meshctl diff -f`: the server's diff of each resource that would change (a dry-run apply:
/// validated and compared by the control plane, nothing stored), and whether any would.
pub async fn diff(
    client: &Client,
    files: &[PathBuf],
    namespace: &str,
    by: &str,
) -> Result<(Output, bool), CliError> {
    let report = validate::run(files, namespace);
    if !report.problems.is_empty() {
        return Err(CliError::Invalid(report.problems));
    }
    let request = ApplyRequest {
        resources: &report.resources,
        dry_run: true,
        by,
    };
    let reply = client
        .post::<_, ApplyResponse>("/v1/apply", &request)
        .await?;
    let mut out = Output::default();
    let changed: Vec<&ApplyResult> = reply
        .body
        .results
        .iter()
        .filter(|r| r.action != "unchanged")
        .collect();
    for result in &changed {
        out.line(format_args!("{} would be {}", result.id, result.action));
        match &result.diff {
            None | Some(Value::Null) => {}
            Some(Value::String(diff)) => out.text(diff),
            Some(other) => out.text(&serde_json::to_string_pretty(other).unwrap_or_default()),
        }
    }
    if changed.is_empty() {
        out.note(format_args!(
            "no differences: {} resource(s) as stored",
            reply.body.results.len()
        ));
    }
    Ok((out, !changed.is_empty()))
}

/// `UpstreamPolicy/payments/midtrans created (version 41)`, one line per result; also the
/// answer to a rollback.
pub fn render_results(results: &[ApplyResult], out: &mut Output) {
    for result in results {
        match &result.resource_version {
            Some(version) => out.line(format_args!(
                "{} {} (version {version})",
                result.id, result.action
            )),
            None => out.line(format_args!("{} {}", result.id, result.action)),
        }
    }
}

/// `UpstreamPolicy/payments/midtrans updated (dry run)` followed by the server's diff.
fn render_dry_run(results: &[ApplyResult], out: &mut Output) {
    for result in results {
        out.line(format_args!("{} {} (dry run)", result.id, result.action));
        match &result.diff {
            None | Some(Value::Null) => {}
            Some(Value::String(diff)) => out.text(diff),
            Some(other) => out.text(&serde_json::to_string_pretty(other).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Version;

    fn result(action: &str, version: Option<&str>, diff: Option<Value>) -> ApplyResult {
        ApplyResult {
            id: "UpstreamPolicy/payments/midtrans".into(),
            action: action.into(),
            resource_version: version.map(|v| Version(v.into())),
            diff,
        }
    }

    #[test]
    fn results_name_action_and_version() {
        let mut out = Output::default();
        render_results(
            &[
                result("created", Some("41"), None),
                result("unchanged", None, None),
            ],
            &mut out,
        );
        assert_eq!(
            out.stdout,
            "UpstreamPolicy/payments/midtrans created (version 41)\n\
             UpstreamPolicy/payments/midtrans unchanged\n"
        );
    }

    #[test]
    fn dry_runs_show_the_diff_as_sent() {
        let mut out = Output::default();
        render_dry_run(
            &[
                result(
                    "updated",
                    Some("41"),
                    Some(Value::String("-a: 1\n+a: 2".into())),
                ),
                result("unchanged", Some("41"), Some(Value::String(String::new()))),
            ],
            &mut out,
        );
        assert_eq!(
            out.stdout,
            "UpstreamPolicy/payments/midtrans updated (dry run)\n-a: 1\n+a: 2\n\
             UpstreamPolicy/payments/midtrans unchanged (dry run)\n"
        );
    }
}
