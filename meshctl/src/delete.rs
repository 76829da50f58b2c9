//! `meshctl delete KIND NAME`: removes one resource, optionally only at a known version; an
//! UpstreamPolicy other policies still name only with `--force`.

use bulwark_proto::policy::Kind;

use crate::api::{self, Deleted};
use crate::client::Client;
use crate::errors::CliError;
use crate::output::Output;

pub async fn run(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    resource_version: Option<&str>,
    by: &str,
    force: bool,
) -> Result<Output, CliError> {
    let mut pairs = vec![("by", by)];
    if let Some(version) = resource_version {
        pairs.push(("resourceVersion", version));
    }
    if force {
        pairs.push(("force", "true"));
    }
    let path = format!(
        "{}{}",
        api::resource_path(kind, namespace, name),
        api::query(&pairs)
    );
    let deleted = client.delete::<Deleted>(&path).await?.body;
    let mut out = Output::default();
    match deleted.revision {
        Some(revision) => out.line(format_args!("{} deleted (revision {revision})", deleted.id)),
        None => out.line(format_args!("{} deleted", deleted.id)),
    }
    Ok(out)
}
