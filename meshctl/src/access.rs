//! Who you are and what you may do: `meshctl auth whoami`, `meshctl auth can-i VERB RESOURCE
//! [-n NS]` (prints `yes` or `no` — and why not — and exits 0 or 1, like `kubectl auth
//! can-i`), the role bindings (`meshctl rolebinding list|set|delete`), the audit log
//! (`meshctl audit`), and the contexts of the config file (`meshctl config …`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api;
use crate::client::Client;
use crate::config::{self, Context};
use crate::errors::CliError;
use crate::output::{Format, Output};
use crate::table::Table;

#[derive(Debug, Deserialize)]
struct WhoAmI {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    method: String,
    #[serde(default)]
    roles: Vec<String>,
}

pub async fn whoami(client: &Client) -> Result<Output, CliError> {
    let me = client.get::<WhoAmI>("/v1/auth/whoami").await?.body;
    let mut out = Output::default();
    out.line(format_args!("user:   {}", me.user));
    out.line(format_args!(
        "groups: {}",
        if me.groups.is_empty() {
            "-".to_string()
        } else {
            me.groups.join(", ")
        }
    ));
    out.line(format_args!("via:    {}", me.method));
    out.line(format_args!(
        "roles:  {}",
        if me.roles.is_empty() {
            "none".to_string()
        } else {
            me.roles.join(", ")
        }
    ));
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct CanI {
    allowed: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// `Ok((output, allowed))`: the caller exits 1 when not allowed.
pub async fn can_i(
    client: &Client,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<(Output, bool), CliError> {
    let mut pairs = vec![("verb", verb), ("resource", resource)];
    if let Some(ns) = namespace {
        pairs.push(("namespace", ns));
    }
    let answer = client
        .get::<CanI>(&format!("/v1/auth/can-i{}", api::query(&pairs)))
        .await?
        .body;
    let mut out = Output::default();
    if answer.allowed {
        out.line("yes");
    } else {
        out.line("no");
        if let Some(reason) = answer.reason {
            out.note(reason);
        }
    }
    Ok((out, answer.allowed))
}

#[derive(Debug, Deserialize)]
struct AuditList {
    items: Vec<AuditRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditRecord {
    at: String,
    user: String,
    from: String,
    verb: String,
    resource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    result: String,
    #[serde(default)]
    detail: String,
}

pub async fn audit(
    client: &Client,
    namespace: Option<&str>,
    limit: u32,
    format: Format,
) -> Result<Output, CliError> {
    let limit = limit.to_string();
    let mut pairs = vec![("limit", limit.as_str())];
    if let Some(ns) = namespace {
        pairs.push(("namespace", ns));
    }
    let path = format!("/v1/audit{}", api::query(&pairs));
    if format.documents() {
        return client.document(&path, format).await;
    }
    let list = client.get::<AuditList>(&path).await?.body;
    let mut out = Output::default();
    if list.items.is_empty() {
        out.note("no audit records");
        return Ok(out);
    }
    let mut table = Table::new(&["TIME", "USER", "FROM", "VERB", "RESOURCE", "NAME", "RESULT"]);
    for r in list.items {
        let name = match (r.namespace.is_empty(), r.name.is_empty()) {
            (true, _) => r.name.clone(),
            (false, true) => r.namespace.clone(),
            (false, false) => format!("{}/{}", r.namespace, r.name),
        };
        let result = if r.detail.is_empty() {
            r.result
        } else {
            format!("{}: {}", r.result, r.detail)
        };
        table.row(vec![r.at, r.user, r.from, r.verb, r.resource, name, result]);
    }
    out.text(&table.render());
    Ok(out)
}

#[derive(Debug, Serialize, Deserialize)]
struct Subject {
    kind: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BindingList {
    items: Vec<NamedBinding>,
}

#[derive(Debug, Deserialize)]
struct NamedBinding {
    name: String,
    role: String,
    #[serde(default)]
    namespace: Option<String>,
    subjects: Vec<Subject>,
}

pub async fn list_bindings(client: &Client, format: Format) -> Result<Output, CliError> {
    if format.documents() {
        return client.document("/v1/rolebindings", format).await;
    }
    let reply = client.get::<BindingList>("/v1/rolebindings").await?;
    let mut out = Output::default();
    out.stale(reply.stale);
    if reply.body.items.is_empty() {
        out.note("no role bindings");
        return Ok(out);
    }
    let mut table = Table::new(&["NAME", "ROLE", "WHERE", "SUBJECTS"]);
    for b in reply.body.items {
        let subjects = b
            .subjects
            .iter()
            .map(|s| match &s.namespace {
                Some(ns) => format!("{}:{ns}/{}", s.kind, s.name),
                None => format!("{}:{}", s.kind, s.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        table.row(vec![
            b.name,
            b.role,
            b.namespace.unwrap_or_else(|| "cluster-wide".into()),
            subjects,
        ]);
    }
    out.text(&table.render());
    Ok(out)
}

/// Who a binding gives its role to, from the command line.
#[derive(Debug, Default)]
pub struct Subjects {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// `namespace/name`.
    pub service_accounts: Vec<String>,
}

pub async fn set_binding(
    client: &Client,
    name: &str,
    role: &str,
    namespace: Option<&str>,
    who: &Subjects,
) -> Result<Output, CliError> {
    let mut subjects = Vec::new();
    subjects.extend(who.users.iter().map(|u| Subject {
        kind: "User".into(),
        name: u.clone(),
        namespace: None,
    }));
    subjects.extend(who.groups.iter().map(|g| Subject {
        kind: "Group".into(),
        name: g.clone(),
        namespace: None,
    }));
    for sa in &who.service_accounts {
        let (ns, name) = sa.split_once('/').ok_or_else(|| {
            CliError::Usage(format!("--serviceaccount {sa:?}: expected NAMESPACE/NAME"))
        })?;
        subjects.push(Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(ns.into()),
        });
    }
    if subjects.is_empty() {
        return Err(CliError::Usage(
            "name who gets the role: --user, --group or --serviceaccount".into(),
        ));
    }
    let mut body = serde_json::json!({"role": role, "subjects": subjects});
    if let Some(ns) = namespace {
        body["namespace"] = Value::from(ns);
    }
    let path = format!("/v1/rolebindings/{}", api::encode_segment(name));
    client.put::<_, Value>(&path, &body).await?;
    let mut out = Output::default();
    out.line(format_args!(
        "rolebinding {name}: {role} {}",
        namespace.map_or_else(|| "cluster-wide".to_string(), |ns| format!("in {ns}"))
    ));
    Ok(out)
}

pub async fn delete_binding(client: &Client, name: &str) -> Result<Output, CliError> {
    let path = format!("/v1/rolebindings/{}", api::encode_segment(name));
    client.delete::<Value>(&path).await?;
    let mut out = Output::default();
    out.line(format_args!("rolebinding {name} deleted"));
    Ok(out)
}

/// `meshctl config set-context NAME …`: adds or replaces a context (and makes it current when
/// there is none).
pub fn set_context(context: Context) -> Result<Output, CliError> {
    config::Server::parse(&context.server)?;
    let mut file = config::load_for_update()?;
    let name = context.name.clone();
    match file.contexts.iter_mut().find(|c| c.name == name) {
        Some(existing) => *existing = context,
        None => file.contexts.push(context),
    }
    if file.current_context.is_none() {
        file.current_context = Some(name.clone());
    }
    let path = config::save(&file)?;
    let mut out = Output::default();
    out.line(format_args!("context {name} set in {}", path.display()));
    Ok(out)
}

pub fn use_context(name: &str) -> Result<Output, CliError> {
    let mut file = config::load()?;
    if !file.contexts.iter().any(|c| c.name == name) {
        return Err(CliError::Usage(format!(
            "no context {name:?}; `meshctl config get-contexts` lists them"
        )));
    }
    file.current_context = Some(name.to_string());
    config::save(&file)?;
    let mut out = Output::default();
    out.line(format_args!("switched to context {name}"));
    Ok(out)
}

pub fn get_contexts() -> Result<Output, CliError> {
    let file = config::load()?;
    let mut out = Output::default();
    if file.contexts.is_empty() {
        out.note("no contexts: add one with `meshctl config set-context NAME --server URL`");
        return Ok(out);
    }
    let mut table = Table::new(&["CURRENT", "NAME", "SERVER", "CREDENTIAL"]);
    for c in &file.contexts {
        let credential = match (&c.token_file, &c.token, &c.client_cert) {
            (Some(f), _, _) => format!("token file {}", f.display()),
            (None, Some(_), _) => "token".to_string(),
            (None, None, Some(cert)) => format!("client certificate {}", cert.display()),
            (None, None, None) => "-".to_string(),
        };
        let current = if file.current_context.as_deref() == Some(c.name.as_str()) {
            "*"
        } else {
            ""
        };
        table.row(vec![
            current.into(),
            c.name.clone(),
            c.server.clone(),
            credential,
        ]);
    }
    out.text(&table.render());
    Ok(out)
}

pub fn current_context() -> Result<Output, CliError> {
    let file = config::load()?;
    let mut out = Output::default();
    match file.current_context {
        Some(name) => out.line(name),
        None => return Err(CliError::Usage("no current context".into())),
    }
    Ok(out)
}
