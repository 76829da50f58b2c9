//! Where the control plane is and who is asking: `--server` (or `BULWARK_SERVER`, handled by
//! clap), else `server:` in the config file (`$BULWARK_CONFIG`, else
//! `~/.config/bulwark/meshctl.yaml`), else `http://127.0.0.1:8080`; `--by` else `$USER`.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::Deserialize;

use crate::errors::CliError;

/// Used when neither flag, environment nor config file names a server.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The config file; unknown keys are ignored so that later releases can add some.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    server: Option<String>,
}

/// The control plane's base URL, checked: `http://host:port` plus an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// As shown in messages: what the user wrote, without a trailing `/`.
    pub url: String,
}

impl Server {
    /// Checks a server address; a bare `host:port` means `http://host:port`.
    pub fn parse(text: &str) -> Result<Server, CliError> {
        let text = text.trim();
        let url = if text.contains("://") {
            text.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", text.trim_end_matches('/'))
        };
        let bad = |why: &str| CliError::Usage(format!("invalid server address {text:?}: {why}"));
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported yet; use http://")),
            _ => return Err(bad("expected http://host:port")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("expected http://host:port"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(bad("a query or fragment makes no sense here"));
        }
        Ok(Server { url })
    }

    /// The full URI of an API path such as `/v1/status`.
    pub fn uri(&self, path_and_query: &str) -> Result<hyper::Uri, CliError> {
        let full = format!("{}{path_and_query}", self.url);
        full.parse()
            .map_err(|e| CliError::Usage(format!("cannot build a request URI from {full:?}: {e}")))
    }
}

/// Picks the server: `flag` already folds in `BULWARK_SERVER` (clap reads it).
pub fn server(flag: Option<&str>) -> Result<Server, CliError> {
    if let Some(flag) = flag.filter(|s| !s.trim().is_empty()) {
        return Server::parse(flag);
    }
    match from_config_file()? {
        Some(server) => Server::parse(&server),
        None => Server::parse(DEFAULT_SERVER),
    }
}

/// Who is recorded in the history for a write: `--by`, else `$USER`, else `$LOGNAME`.
pub fn by(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `server:` from the config file. A file named by `$BULWARK_CONFIG` must exist; the default
/// one may be missing.
fn from_config_file() -> Result<Option<String>, CliError> {
    let (path, named) = match std::env::var_os("BULWARK_CONFIG").filter(|p| !p.is_empty()) {
        Some(path) => (PathBuf::from(path), true),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => (
                PathBuf::from(home).join(".config/bulwark/meshctl.yaml"),
                false,
            ),
            None => return Ok(None),
        },
    };
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) => {
            return Err(CliError::Usage(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            )));
        }
    };
    parse_config(&text)
        .map_err(|e| CliError::Usage(format!("{}: invalid config file: {e}", path.display())))
}

fn parse_config(text: &str) -> Result<Option<String>, String> {
    // An empty or comment-only file is a valid "nothing configured".
    let file: Option<ConfigFile> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(file.unwrap_or_default().server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            Server::parse("http://cp.example:8080/").ok(),
            Some(Server {
                url: "http://cp.example:8080".into()
            })
        );
        assert_eq!(
            Server::parse("10.0.0.1:8080").map(|s| s.url).ok(),
            Some("http://10.0.0.1:8080".to_string())
        );
        let with_prefix = Server::parse("http://gw/bulwark").expect("valid");
        assert_eq!(
            with_prefix.uri("/v1/status").expect("uri").to_string(),
            "http://gw/bulwark/v1/status"
        );
        for bad in [
            "https://cp:8443",
            "ftp://cp",
            "http://",
            "http://cp:8080?x=1",
        ] {
            assert!(
                matches!(Server::parse(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_files() {
        assert_eq!(
            parse_config("server: http://cp:9000\nother: 1\n"),
            Ok(Some("http://cp:9000".to_string()))
        );
        assert_eq!(parse_config("# nothing yet\n"), Ok(None));
        assert_eq!(parse_config(""), Ok(None));
        assert!(parse_config("server: [").is_err());
    }
}
