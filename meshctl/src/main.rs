//! `meshctl`, Bulwark's operator command line: parses the flags, runs one subcommand, prints
//! what it produced and exits 0 (ok), 1 (input rejected) or 2 (control plane unreachable).

mod access;
mod api;
mod apply;
mod check;
mod client;
mod config;
mod convert;
mod degrade;
mod delete;
mod errors;
mod events;
mod explain;
mod get;
mod history;
mod inject;
mod locate;
mod man;
mod output;
mod pods;
mod status;
mod table;
mod validate;
mod version;
mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::Client;
use crate::errors::CliError;
use crate::get::{Query, Scope};
use crate::output::{Format, Output};

#[derive(Debug, Parser)]
#[command(name = "meshctl", version = bulwark_telemetry::LONG_VERSION, about = "Operate a Bulwark mesh")]
struct Cli {
    /// The control plane's REST address (https://host:port); otherwise the context's,
    /// otherwise http://127.0.0.1:8080.
    #[arg(long, global = true, env = "BULWARK_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The context of the config file ($BULWARK_CONFIG or ~/.config/bulwark/config) to use
    /// instead of its current one.
    #[arg(long, global = true, env = "BULWARK_CONTEXT", value_name = "NAME")]
    context: Option<String>,
    /// The CA (PEM) the control plane's certificate is checked against [default: the
    /// context's, else Mozilla's roots].
    #[arg(long, global = true, env = "BULWARK_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A bearer token (prefer --token-file: a flag's value is visible to other users).
    #[arg(
        long,
        global = true,
        env = "BULWARK_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, env = "BULWARK_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A client certificate (PEM, with its chain) to authenticate with.
    #[arg(long, global = true, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The namespace of the resource(s) named on the command line, and of those in files
    /// (`apply`, `validate`) that name none.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    namespace: String,
    /// Who makes a change, recorded in the history (default: $USER) where the control plane
    /// does not authenticate; otherwise the authenticated user is.
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
    /// Show what `apply` would change: the control plane's diff of each resource that differs
    /// from what is stored (YAML lines, `-` stored, `+` the file's), nothing stored.
    ///
    /// Exits 0 when nothing would change, 1 when something would (as `kubectl diff`), and
    /// with the usual errors otherwise.
    Diff {
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
        /// After the list, print each change as it happens (ADDED, MODIFIED, DELETED).
        #[arg(short = 'w', long, conflicts_with = "name")]
        watch: bool,
    },
    /// Delete one resource.
    Delete {
        kind: String,
        name: String,
        /// Delete only if the stored resource is still at this version.
        #[arg(long, value_name = "VERSION")]
        resource_version: Option<String>,
        /// Delete an UpstreamPolicy even though other policies still name it (as a failover
        /// target or a dependency); without it, the control plane refuses and names them.
        #[arg(long)]
        force: bool,
    },
    /// List a resource's recorded changes, newest first.
    History {
        kind: String,
        name: String,
        #[command(flatten)]
        output: OutputFlag,
    },
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
    /// problem of every document as `FILE:LINE:COL: Kind/namespace/name: path: message` (the
    /// field's place in YAML; `FILE:` alone in JSON) and exits with status 1.
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
    Status {
        #[command(flatten)]
        output: OutputFlag,
        /// Then print each change of a level or a resource's convergence as it happens.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Pods connected to the control plane, with their workload identity.
    ///
    /// Prints NAMESPACE, SERVICE, POD, VERSION (the snapshot it applied), IDENTITY (its
    /// SPIFFE ID, `-` without mTLS) and EXPIRES (when its certificate runs out, `EXPIRED …
    /// ago` when renewal failed) for the pods of -n's namespace, or of all with -A.
    Pods {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        output: OutputFlag,
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
        #[command(flatten)]
        output: OutputFlag,
        /// After the last events (oldest first), print each new one as it is recorded.
        #[arg(short = 'w', long)]
        watch: bool,
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
    /// Who you are to the control plane, and what you may do.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Role bindings: who holds which role (viewer, editor, operator, admin), where.
    #[command(subcommand)]
    Rolebinding(BindingCommand),
    /// The audit log: every write with who made it, from where, and how it ended.
    ///
    /// Prints TIME, USER, FROM, VERB, RESOURCE, NAME and RESULT, newest first, of -n's
    /// namespace, or with -A of everything the caller may read.
    Audit {
        /// Every namespace (and cluster-wide records).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// At most this many records.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Contexts of the config file: server, CA and credentials, like kubeconfig.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Describe a policy field or block, like `kubectl explain`: type, default, rules and
    /// meaning, or a block's description and fields. Offline.
    ///
    /// `meshctl explain upstreampolicy.spec.retry`, `meshctl explain up.spec.retry.budget.ratio`,
    /// `meshctl explain servicepolicy.spec.inbound`; indices are left out
    /// (`up.spec.routes.match`).
    Explain {
        /// KIND[.FIELD.PATH]: upstreampolicy (up) or servicepolicy (svc), then the field.
        field: String,
    },
    /// Turn Istio DestinationRules and VirtualServices into UpstreamPolicies, offline.
    ///
    /// One UpstreamPolicy per host (named by its first label, in the namespace the host names
    /// or else the resource's): timeouts, retries, connection pool limits, outlier detection
    /// and TLS carried over as docs/migration.md maps them; every setting without a
    /// counterpart is named on stderr. The output is valid (checked as `validate` checks):
    /// `meshctl convert -f istio.yaml > policies.yaml`.
    Convert {
        /// Files with Istio resources (several documents allowed), or `-` for standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
    /// Check the mesh, like `linkerd check`: one line per check (✓ or ×, with a hint under
    /// each failure), non-zero exit status when one failed.
    ///
    /// The control plane: it answers and its version, meshctl's version, etcd, an elected
    /// leader, the webhook's and the identity issuer's certificates (at least 7 days left).
    /// The data plane: every connected pod on the newest policies, no snapshot refused,
    /// workload certificates with at least an hour left.
    Check,
    /// This client's version and commit, then the control plane's.
    ///
    /// Prints `Client: 0.1.0 (1f55482ec448)` and `Server: 0.1.0 (1f55482ec448)`; the
    /// client's line even when the control plane cannot be asked (then the error, and a
    /// non-zero exit status).
    Version {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print the JSON Schema of policy documents, for editors.
    ///
    /// `meshctl schema > policy.schema.json`, then point the YAML language server (VS Code's
    /// YAML extension, Neovim, JetBrains IDEs) at it: policies are checked and completed as
    /// they are written. The repository publishes the same schema as
    /// schema/policy.schema.json.
    Schema,
    /// Print a shell completion script: `source <(meshctl completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (meshctl.1 and one per command, meshctl-apply.1, …) into a directory.
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
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
        /// [default: https://bulwark-control-plane.bulwark.svc:8081].
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
        /// The OpenTelemetry collector (http://HOST:4317) sidecars export request spans to.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// The share (0 to 1) of the traces sidecars start that are sampled, unless a pod sets
        /// bulwark.dev/trace-sampling [default: the sidecar's, 0.01].
        #[arg(long, value_name = "RATIO")]
        trace_sampling: Option<String>,
    },
}

/// `-o` of the commands that list things.
#[derive(Debug, clap::Args)]
struct OutputFlag {
    /// Output format: table, wide (every column there is), or the control plane's own
    /// documents as json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// The authenticated user, its groups and roles.
    Whoami,
    /// Whether you may do something: `meshctl auth can-i apply upstreampolicies -n payments`
    /// prints `yes` (exit 0) or `no` and why (exit 1).
    CanI {
        /// get, list, apply, delete or rollback.
        verb: String,
        /// servicepolicies, upstreampolicies, levels, events, pods, status, overrides,
        /// rolebindings, audit or metrics.
        resource: String,
        /// Ask cluster-wide instead of in -n's namespace.
        #[arg(long)]
        cluster: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BindingCommand {
    /// Every role binding you may read.
    List {
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Give a role to users, groups or service accounts, in -n's namespace or (--cluster)
    /// everywhere; replaces a binding of the same name.
    Set {
        name: String,
        /// viewer, editor, operator or admin.
        #[arg(long)]
        role: String,
        /// Cluster-wide instead of in -n's namespace.
        #[arg(long)]
        cluster: bool,
        #[arg(long = "user", value_name = "NAME")]
        users: Vec<String>,
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        #[arg(long = "serviceaccount", value_name = "NAMESPACE/NAME")]
        service_accounts: Vec<String>,
    },
    /// Remove a role binding.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Add or replace a context from --server, --ca, --token-file and --client-cert /
    /// --client-key (the first context becomes current).
    SetContext { name: String },
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
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
        let mut report = validate::run(files, &cli.namespace);
        report.check_references();
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
        otlp_endpoint,
        trace_sampling,
    } = &cli.command
    {
        let flags = inject::Flags {
            control_plane: control_plane.as_deref(),
            image: image.as_deref(),
            capture: !no_capture,
            init_image: init_image.as_deref(),
            identity: !no_identity,
            inbound_mtls: inbound_mtls.as_deref(),
            otlp_endpoint: otlp_endpoint.as_deref(),
            trace_sampling: trace_sampling.as_deref(),
        };
        let (out, error) = inject::run(files, &flags);
        return finish(out, error);
    }
    if let Command::Convert { files } = &cli.command {
        let (out, error) = convert::run(files, &cli.namespace);
        return finish(out, error);
    }
    if let Command::Explain { field } = &cli.command {
        return match explain::run(field) {
            Ok(out) => finish(out, None),
            Err(e) => finish(Output::default(), Some(e)),
        };
    }
    if let Command::Schema = &cli.command {
        let schema = bulwark_proto::policy::schema::document();
        let mut out = Output::default();
        match serde_json::to_string_pretty(&schema) {
            Ok(text) => out.text(&format!("{text}\n")),
            Err(e) => return finish(out, Some(CliError::Usage(format!("the schema: {e}")))),
        }
        return finish(out, None);
    }
    if let Command::Completion { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "meshctl", &mut script);
        let mut out = Output::default();
        out.text(&String::from_utf8_lossy(&script));
        return finish(out, None);
    }
    if let Command::Man { dir } = &cli.command {
        return match man::write(Cli::command(), dir) {
            Ok(out) => finish(out, None),
            Err(e) => finish(Output::default(), Some(e)),
        };
    }
    if let Command::Config(command) = &cli.command {
        let result = match command {
            ConfigCommand::SetContext { name } => match &cli.server {
                Some(server) => access::set_context(config::Context {
                    name: name.clone(),
                    server: server.clone(),
                    ca: absolute(cli.ca.as_ref()),
                    token_file: absolute(cli.token_file.as_ref()),
                    token: None,
                    client_cert: absolute(cli.client_cert.as_ref()),
                    client_key: absolute(cli.client_key.as_ref()),
                }),
                None => Err(CliError::Usage(
                    "config set-context needs --server URL".into(),
                )),
            },
            ConfigCommand::UseContext { name } => access::use_context(name),
            ConfigCommand::GetContexts => access::get_contexts(),
            ConfigCommand::CurrentContext => access::current_context(),
        };
        return match result {
            Ok(out) => finish(out, None),
            Err(e) => finish(Output::default(), Some(e)),
        };
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
        Err(CliError::Denied(out) | CliError::Differs(out)) => {
            let _ = write_all(&out);
            ExitCode::FAILURE
        }
        Err(CliError::Partial(out, error)) => finish(out, Some(*error)),
        Err(error) => finish(Output::default(), Some(error)),
    }
}

/// Runs a command that talks to the control plane.
async fn run(cli: Cli) -> Result<Output, CliError> {
    let connection = config::connection(&config::Flags {
        context: cli.context.clone(),
        server: cli.server.clone(),
        ca: cli.ca.clone(),
        token: cli.token.clone(),
        token_file: cli.token_file.clone(),
        client_cert: cli.client_cert.clone(),
        client_key: cli.client_key.clone(),
    })?;
    let client = Client::new(connection)?;
    let by = config::by(cli.by.as_deref());
    let namespace = cli.namespace.as_str();
    match cli.command {
        Command::Apply { files, dry_run } => {
            apply::run(&client, &files, namespace, dry_run, &by).await
        }
        Command::Diff { files } => match apply::diff(&client, &files, namespace, &by).await? {
            (out, true) => Err(CliError::Differs(out)),
            (out, false) => Ok(out),
        },
        Command::Get {
            kind,
            name,
            output,
            all_namespaces,
            selector,
            watch,
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
            if watch {
                get::watch(&client, &query).await
            } else {
                get::run(&client, &query).await
            }
        }
        Command::Delete {
            kind,
            name,
            resource_version,
            force,
        } => {
            let kind = api::parse_kind(&kind)?;
            let version = resource_version.as_deref();
            delete::run(&client, kind, namespace, &name, version, &by, force).await
        }
        Command::History { kind, name, output } => {
            let kind = api::parse_kind(&kind)?;
            history::history(&client, kind, namespace, &name, output.format).await
        }
        Command::Rollback { kind, name, to } => {
            let kind = api::parse_kind(&kind)?;
            history::rollback(&client, kind, namespace, &name, to, &by).await
        }
        Command::Status { output, watch } => {
            if watch {
                status::watch(&client, output.format).await
            } else {
                status::run(&client, output.format).await
            }
        }
        Command::Pods {
            all_namespaces,
            output,
        } => {
            pods::run(
                &client,
                (!all_namespaces).then_some(namespace),
                output.format,
            )
            .await
        }
        Command::Events {
            service,
            limit,
            output,
            watch,
        } => {
            let service = service
                .as_deref()
                .map(|s| api::parse_target(s, namespace))
                .transpose()?;
            if watch {
                events::watch(&client, service.as_ref(), limit, output.format).await
            } else {
                events::run(&client, service.as_ref(), limit, output.format).await
            }
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
        Command::Auth(AuthCommand::Whoami) => access::whoami(&client).await,
        Command::Auth(AuthCommand::CanI {
            verb,
            resource,
            cluster,
        }) => {
            let (out, allowed) =
                access::can_i(&client, &verb, &resource, (!cluster).then_some(namespace)).await?;
            if allowed {
                Ok(out)
            } else {
                Err(CliError::Denied(out))
            }
        }
        Command::Rolebinding(BindingCommand::List { output }) => {
            access::list_bindings(&client, output.format).await
        }
        Command::Rolebinding(BindingCommand::Set {
            name,
            role,
            cluster,
            users,
            groups,
            service_accounts,
        }) => {
            let who = access::Subjects {
                users,
                groups,
                service_accounts,
            };
            access::set_binding(&client, &name, &role, (!cluster).then_some(namespace), &who).await
        }
        Command::Rolebinding(BindingCommand::Delete { name }) => {
            access::delete_binding(&client, &name).await
        }
        Command::Audit {
            limit,
            all_namespaces,
            output,
        } => {
            let namespace = (!all_namespaces).then_some(namespace);
            access::audit(&client, namespace, limit, output.format).await
        }
        // Handled in `main` before any runtime or server is set up.
        Command::Config(_) => Err(CliError::Usage("config runs offline".into())),
        Command::Validate { .. } => Err(CliError::Usage("validate runs offline".into())),
        Command::Inject { .. } => Err(CliError::Usage("inject runs offline".into())),
        Command::Completion { .. } => Err(CliError::Usage("completion runs offline".into())),
        Command::Schema => Err(CliError::Usage("schema runs offline".into())),
        Command::Explain { .. } => Err(CliError::Usage("explain runs offline".into())),
        Command::Convert { .. } => Err(CliError::Usage("convert runs offline".into())),
        Command::Man { .. } => Err(CliError::Usage("man runs offline".into())),
        Command::Version { output } => version::run(&client, output).await,
        Command::Check => check::run(&client).await,
    }
}

/// A path as the config file keeps it: absolute, so that the context works from anywhere.
fn absolute(path: Option<&PathBuf>) -> Option<PathBuf> {
    path.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
