//! `meshctl version`: this client's version and commit, then the control plane's (`GET
//! /v1/version`), like `kubectl version`. The client's is printed even when the server cannot
//! be asked.

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::errors::CliError;
use crate::output::{Format, Output};

/// A version and the commit it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    pub revision: String,
}

impl Version {
    pub fn client() -> Version {
        Version {
            version: bulwark_telemetry::VERSION.to_string(),
            revision: bulwark_telemetry::REVISION.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Both<'a> {
    client: &'a Version,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a Version>,
}

pub async fn run(client: &Client, format: Format) -> Result<Output, CliError> {
    let mine = Version::client();
    let server = client.get::<Version>("/v1/version").await;
    let out = render(&mine, server.as_ref().ok().map(|r| &r.body), format)?;
    match server {
        Ok(_) => Ok(out),
        Err(e) => Err(CliError::Partial(out, Box::new(e))),
    }
}

/// The client's version, and the server's when it answered.
pub fn render(
    client: &Version,
    server: Option<&Version>,
    format: Format,
) -> Result<Output, CliError> {
    let mut out = Output::default();
    let both = Both { client, server };
    match format {
        Format::Table | Format::Wide => {
            out.line(format_args!(
                "Client: {} ({})",
                client.version, client.revision
            ));
            if let Some(s) = server {
                out.line(format_args!("Server: {} ({})", s.version, s.revision));
            }
        }
        Format::Json => out.text(
            &serde_json::to_string_pretty(&both)
                .map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?,
        ),
        Format::Yaml => out.text(
            &serde_saphyr::to_string(&both)
                .map_err(|e| CliError::Usage(format!("cannot print YAML: {e}")))?,
        ),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: &str, revision: &str) -> Version {
        Version {
            version: version.into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn client_and_server_in_each_format() {
        let (c, s) = (v("0.1.0", "abc"), v("0.1.0", "def"));
        let out = render(&c, Some(&s), Format::Table).expect("renders");
        assert_eq!(out.stdout, "Client: 0.1.0 (abc)\nServer: 0.1.0 (def)\n");
        let out = render(&c, None, Format::Json).expect("renders");
        let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"client": {"version": "0.1.0", "revision": "abc"}})
        );
        let out = render(&c, Some(&s), Format::Yaml).expect("renders");
        assert_eq!(
            out.stdout,
            "client:\n  version: \"0.1.0\"\n  revision: abc\nserver:\n  version: \"0.1.0\"\n  revision: def\n"
        );
    }
}
