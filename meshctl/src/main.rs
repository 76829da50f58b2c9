//! `meshctl`, Bulwark's operator command line: parses the flags, runs one subcommand, prints
//! what it produced and exits 0 (ok), 1 (input rejected) or 2 (control plane unreachable).

mod api;
mod apply;
mod client;
mod config;
mod degrade;
mod delete;
mod errors;
mod events;
mod get;
mod history;
mod inject;
mod output;
mod pods;
mod status;
mod table;
mod validate;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::errors::CliError;
use crate::get::{Format, Query, Scope};
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate a Bulwark mesh")]
struct Cli {
    /// The control plane's REST address; otherwise `server:` in $BULWARK_CONFIG or
    /// ~/.config/bulwark/meshctl.yaml, otherwise http://127.0.0.1:8080.
    #[arg(long, global = true, env = "BULWARK_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The namespace of the resource(s) named on the command line.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    namespace: String,
    /// Who makes a change, recorded in the history (default: $USER).
    #[arg(long, global = true, value_name = "WHO")]
    by: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update policies: checked locally, then applied all-or-nothing.
    ///
    /// Prints `Kind/namespace/name created|updated|unchanged (version N)` per resource.
    Apply {
        /// A policy file (YAML or JSON, several documents allowed), a directory whose
        /// *.yaml, *.yml and *.json files are read in name order, or `-` for standard input.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE_OR_DIR",
            required = true
        )]
        files: Vec<PathBuf>,
        /// Show what would change (the server's diff per resource) and store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show one resource or list them.
    Get {
        /// upstreampolicy (upstreampolicies, up) or servicepolicy (servicepolicies, svc).
        kind: String,
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// List across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only resources with these labels: `key=value`, repeatable or comma-separated.
        #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE")]
        selector: Vec<String>,
    },
    /// Delete one resource.
    Delete {
        kind: String,
        name: String,
        /// Delete only if the stored resource is still at this version.
        #[arg(long, value_name = "VERSION")]
        resource_version: Option<String>,
    },
    /// List a resource's recorded changes, newest first.
    History { kind: String, name: String },
    /// Restore a resource as it was at a revision listed by `history`.
    Rollback {
        kind: String,
        name: String,
        /// The revision to go back to.
        #[arg(long = "to", value_name = "REVISION")]
        to: u64,
    },
    /// Check policy files offline: parse every resource and validate every field.
    ///
    /// Prints `ok: Kind/namespace/name` for each valid resource; otherwise prints every
    /// problem as `FILE: Kind/namespace/name: path: message` and exits with status 1.
    Validate {
        /// A policy file (YAML or JSON, several documents allowed), a directory whose
        /// *.yaml, *.yml and *.json files are read in name order, or `-` for standard input.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE_OR_DIR",
            required = true
        )]
        files: Vec<PathBuf>,
    },
    /// Degradation level per service, then convergence per resource.
    ///
    /// First a table of every service with a ServicePolicy: its level (`(forced)` under an
    /// override, `(computed X)` while a lower level waits out `lowerAfter`), the dependencies
    /// judged unhealthy, the pods reporting (and how many are taken out of rotation) and the
    /// reasons. Then, after a blank line, each resource's version, how many pods applied it,
    /// and every pod that refused a snapshot and why.
    Status,
    /// Pods connected to the control plane, with their workload identity.
    ///
    /// Prints NAMESPACE, SERVICE, POD, VERSION (the snapshot it applied), IDENTITY (its
    /// SPIFFE ID, `-` without mTLS) and EXPIRES (when its certificate runs out, `EXPIRED …
    /// ago` when renewal failed) for the pods of -n's namespace, or of all with -A.
    Pods {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Level changes, breaker transitions and overrides, newest first.
    ///
    /// Prints TIME, SERVICE (`*` for the mesh-wide override), KIND (level, breaker or
    /// override), CHANGE (`from -> to`), BY and REASONS.
    Events {
        /// Only this service's events: NAME (in -n's namespace), NAMESPACE/NAME, or `*` for
        /// the mesh-wide override.
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        /// At most this many events.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Force a degradation level on a service or the whole mesh until a TTL runs out, or
    /// clear that override.
    ///
    /// `meshctl degrade order-orchestrator -n mrg --level emergency --ttl 15m --reason
    /// "payment provider outage"` prints `mrg/order-orchestrator forced to EMERGENCY until
    /// 2026-11-22T10:15:00Z (payment provider outage)`; `--clear` prints
    /// `mrg/order-orchestrator override cleared`, or fails with `no override for
    /// mrg/order-orchestrator` when there is none. The change is recorded with --by.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["service", "mesh"])))]
    Degrade {
        /// The service: NAME (in -n's namespace) or NAMESPACE/NAME.
        service: Option<String>,
        /// Every service in the mesh instead of one.
        #[arg(long)]
        mesh: bool,
        /// NORMAL, DEGRADED, SEVERE or EMERGENCY, in any case.
        #[arg(long, value_name = "LEVEL", required_unless_present = "clear")]
        level: Option<String>,
        /// How long the override holds, at most 24h: `15m`, `1h30m`.
        #[arg(long, value_name = "DURATION", required_unless_present = "clear")]
        ttl: Option<String>,
        /// Why, recorded with the override and shown by status and events.
        #[arg(long, value_name = "TEXT", required_unless_present = "clear")]
        reason: Option<String>,
        /// Remove the override now instead of forcing one.
        #[arg(long, conflicts_with_all = ["level", "ttl", "reason"])]
        clear: bool,
    },
    /// Add the Bulwark sidecar to Kubernetes manifests, offline.
    ///
    /// Reads Deployments, StatefulSets, DaemonSets, Jobs, CronJobs and Pods (several
    /// documents allowed) and writes every document to stdout, the workloads with the sidecar
    /// injected, everything else unchanged: `meshctl inject -f app.yaml | kubectl apply -f -`.
    /// Per-pod settings come from the pod template's bulwark.dev/* annotations. Any document
    /// that cannot be injected is reported on stderr, nothing is written, and the exit status
    /// is 1.
    Inject {
        /// A manifest file (YAML, several documents allowed), or `-` for standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// The control plane's gRPC address(es) the sidecars connect to, comma-separated
        /// [default: http://bulwark-control-plane.bulwark.svc:8081].
        #[arg(long, value_name = "URL")]
        control_plane: Option<String>,
        /// The sidecar image [default: ghcr.io/bulwark-mesh/sidecar:<meshctl's version>].
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Leave out the bulwark-init container that captures the pods' traffic with iptables
        /// (it needs NET_ADMIN): apps call the sidecar on localhost. Pods override it with
        /// bulwark.dev/capture.
        #[arg(long)]
        no_capture: bool,
        /// The bulwark-init image [default: ghcr.io/bulwark-mesh/init:<meshctl's version>].
        #[arg(long, value_name = "IMAGE")]
        init_image: Option<String>,
        /// Leave out the workload identity (the ServiceAccount token and trust anchors
        /// volumes): no mutual TLS. Pods override it with bulwark.dev/identity.
        #[arg(long)]
        no_identity: bool,
        /// The inbound mTLS mode of every injected pod (strict, permissive or disable) unless
        /// it sets bulwark.dev/inbound-mtls [default: the sidecar's, permissive].
        #[arg(long, value_name = "MODE")]
        inbound_mtls: Option<String>,
    },
}

fn main() -> ExitCode {
    // Usage errors are rejected input (exit 1); exit 2 is kept for "server unreachable".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Command::Validate { files } = &cli.command {
        let report = validate::run(files);
        let mut out = Output::default();
        for id in &report.valid {
            out.line(format_args!("ok: {id}"));
        }
        let problems = if report.problems.is_empty() {
            None
        } else {
            Some(CliError::Invalid(report.problems))
        };
        return finish(out, problems);
    }
    if let Command::Inject {
        files,
        control_plane,
        image,
        no_capture,
        init_image,
        no_identity,
        inbound_mtls,
    } = &cli.command
    {
        let flags = inject::Flags {
            control_plane: control_plane.as_deref(),
            image: image.as_deref(),
            capture: !no_capture,
            init_image: init_image.as_deref(),
            identity: !no_identity,
            inbound_mtls: inbound_mtls.as_deref(),
        };
        let (out, error) = inject::run(files, &flags);
        return finish(out, error);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let error = CliError::Usage(format!("cannot start the async runtime: {e}"));
            return finish(Output::default(), Some(error));
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => finish(out, None),
        Err(error) => finish(Output::default(), Some(error)),
    }
}

/// Runs a command that talks to the control plane.
async fn run(cli: Cli) -> Result<Output, CliError> {
    let server = config::server(cli.server.as_deref())?;
    let client = Client::new(server);
    let by = config::by(cli.by.as_deref());
    let namespace = cli.namespace.as_str();
    match cli.command {
        Command::Apply { files, dry_run } => apply::run(&client, &files, dry_run, &by).await,
        Command::Get {
            kind,
            name,
            output,
            all_namespaces,
            selector,
        } => {
            let query = Query {
                kind: api::parse_kind(&kind)?,
                name: name.as_deref(),
                scope: if all_namespaces {
                    Scope::All
                } else {
                    Scope::Namespace(namespace)
                },
                selector: &selector,
                format: output,
            };
            get::run(&client, &query).await
        }
        Command::Delete {
            kind,
            name,
            resource_version,
        } => {
            let kind = api::parse_kind(&kind)?;
            let version = resource_version.as_deref();
            delete::run(&client, kind, namespace, &name, version, &by).await
        }
        Command::History { kind, name } => {
            history::history(&client, api::parse_kind(&kind)?, namespace, &name).await
        }
        Command::Rollback { kind, name, to } => {
            let kind = api::parse_kind(&kind)?;
            history::rollback(&client, kind, namespace, &name, to, &by).await
        }
        Command::Status => status::run(&client).await,
        Command::Pods { all_namespaces } => {
            pods::run(&client, (!all_namespaces).then_some(namespace)).await
        }
        Command::Events { service, limit } => {
            let service = service
                .as_deref()
                .map(|s| api::parse_target(s, namespace))
                .transpose()?;
            events::run(&client, service.as_ref(), limit).await
        }
        Command::Degrade {
            service,
            mesh,
            level,
            ttl,
            reason,
            clear,
        } => {
            let target = match (mesh, service.as_deref()) {
                (true, _) => api::Target::Mesh,
                (false, Some(service)) => api::parse_target(service, namespace)?,
                // clap requires one of the two.
                (false, None) => return Err(CliError::Usage("name a SERVICE or --mesh".into())),
            };
            if clear {
                return degrade::clear(&client, &target, &by).await;
            }
            let force = degrade::Force::parse(
                level.as_deref().unwrap_or_default(),
                ttl.as_deref().unwrap_or_default(),
                reason.as_deref().unwrap_or_default(),
            )?;
            degrade::force(&client, &target, &force, &by).await
        }
        // Handled in `main` before any runtime or server is set up.
        Command::Validate { .. } => Err(CliError::Usage("validate runs offline".into())),
        Command::Inject { .. } => Err(CliError::Usage("inject runs offline".into())),
    }
}

/// Prints a command's output, then its error if any, and picks the exit status.
fn finish(out: Output, error: Option<CliError>) -> ExitCode {
    let written = write_all(&out);
    let error = error.or_else(|| written.err().map(CliError::Output));
    let Some(error) = error else {
        return ExitCode::SUCCESS;
    };
    let mut stderr = std::io::stderr().lock();
    for line in error.lines() {
        // Nothing sensible is left to do when stderr itself is gone.
        let _ = writeln!(stderr, "{line}");
    }
    error.exit_code()
}

fn write_all(out: &Output) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.stdout.as_bytes())?;
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(out.stderr.as_bytes())?;
    stderr.flush()
}
