//! Where the control plane is and how to prove who is asking, like kubeconfig: contexts in
//! the config file (`$BULWARK_CONFIG`, else `~/.config/bulwark/config`), each a server, the CA
//! its certificate is checked against, and a credential (a token file, a token, or a client
//! certificate and key). Flags and environment override the context: `--server`
//! (`BULWARK_SERVER`), `--ca` (`BULWARK_CA`), `--token` (`BULWARK_TOKEN`), `--token-file`
//! (`BULWARK_TOKEN_FILE`), `--client-cert`/`--client-key`, `--context` (`BULWARK_CONTEXT`).
//! Without any, `http://127.0.0.1:8080` and no credential. `--by` (else `$USER`) names the
//! author only where the control plane runs without authentication.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::errors::CliError;

/// Used when neither flag, environment nor config file names a server.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The config file. Unknown keys are ignored so that later releases can add some.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<Context>,
    /// A server without a context (the file's older form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// One control plane and the credentials to use with it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub name: String,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// The control plane's base URL, checked: `http(s)://host:port` plus an optional path prefix.
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
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad(
                "expected https://host:port (or http:// for --insecure-dev)",
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("expected https://host:port"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(bad("a query or fragment makes no sense here"));
        }
        Ok(Server { url })
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// The full URI of an API path such as `/v1/status`.
    pub fn uri(&self, path_and_query: &str) -> Result<hyper::Uri, CliError> {
        let full = format!("{}{path_and_query}", self.url);
        full.parse()
            .map_err(|e| CliError::Usage(format!("cannot build a request URI from {full:?}: {e}")))
    }
}

/// What the flags and environment say (clap folds the environment in).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub context: Option<String>,
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How to prove who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Token(String),
    /// PEM chain and key.
    Certificate {
        chain: Vec<u8>,
        key: Vec<u8>,
    },
}

/// Where to connect and how.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: Server,
    /// PEM roots for https (none: Mozilla's).
    pub ca: Option<Vec<u8>>,
    pub credential: Credential,
}

/// Resolves flags over the current (or named) context over the defaults.
pub fn connection(flags: &Flags) -> Result<Connection, CliError> {
    let file = load()?;
    let wanted = flags
        .context
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| file.current_context.clone());
    let context = match &wanted {
        Some(name) => Some(
            file.contexts
                .iter()
                .find(|c| c.name == *name)
                .cloned()
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "no context {name:?} in {}; `meshctl config get-contexts` lists them",
                        path().map(|p| p.display().to_string()).unwrap_or_default()
                    ))
                })?,
        ),
        None => None,
    };
    let ctx = context.clone().unwrap_or_default();
    let server = flags
        .server
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| context.as_ref().map(|c| c.server.clone()))
        .or(file.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let server = Server::parse(&server)?;
    let ca = match flags.ca.clone().or(ctx.ca) {
        Some(path) => Some(read(&path, "the CA file")?),
        None => None,
    };
    let cert = flags.client_cert.clone().or(ctx.client_cert);
    let key = flags.client_key.clone().or(ctx.client_key);
    let token = match (&flags.token, &flags.token_file) {
        (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
        (_, Some(path)) => Some(read_token(path)?),
        _ if flags.client_cert.is_some() => None,
        _ => match (ctx.token, ctx.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
            (_, Some(path)) => Some(read_token(&path)?),
            _ => None,
        },
    };
    let credential = match (token, cert, key) {
        (Some(token), _, _) => Credential::Token(token),
        (None, Some(cert), Some(key)) => Credential::Certificate {
            chain: read(&cert, "the client certificate")?,
            key: read(&key, "the client key")?,
        },
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(CliError::Usage(
                "a client certificate needs both --client-cert and --client-key".into(),
            ));
        }
        (None, None, None) => Credential::None,
    };
    if !server.is_https() && credential != Credential::None {
        return Err(CliError::Usage(format!(
            "refusing to send credentials in plaintext to {}: use https://",
            server.url
        )));
    }
    Ok(Connection {
        server,
        ca,
        credential,
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read {what} {}: {e}", path.display())))
}

fn read_token(path: &Path) -> Result<String, CliError> {
    let bytes = read(path, "the token file")?;
    let token = String::from_utf8_lossy(&bytes).trim().to_string();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// Who is recorded in the history for a write where the control plane does not authenticate:
/// `--by`, else `$USER`, else `$LOGNAME`.
pub fn by(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The config file's path: `$BULWARK_CONFIG`, else `~/.config/bulwark/config`.
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BULWARK_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").filter(|p| !p.is_empty())?;
    Some(PathBuf::from(home).join(".config/bulwark/config"))
}

/// The config file; a missing one is an empty one, unless `$BULWARK_CONFIG` names it.
pub fn load() -> Result<ConfigFile, CliError> {
    let named = std::env::var_os("BULWARK_CONFIG").is_some_and(|p| !p.is_empty());
    read_file(named)
}

/// The config file to change: a missing one (named or not) is an empty one, written anew.
pub fn load_for_update() -> Result<ConfigFile, CliError> {
    read_file(false)
}

fn read_file(named: bool) -> Result<ConfigFile, CliError> {
    let Some(path) = path() else {
        return Ok(ConfigFile::default());
    };
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !named => {
            return Ok(ConfigFile::default());
        }
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

fn parse_config(text: &str) -> Result<ConfigFile, String> {
    // An empty or comment-only file is a valid "nothing configured".
    let file: Option<ConfigFile> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(file.unwrap_or_default())
}

/// Writes the config file (readable by its owner only: it may hold a token).
pub fn save(file: &ConfigFile) -> Result<PathBuf, CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = path()
        .ok_or_else(|| CliError::Usage("no config file: set $BULWARK_CONFIG or $HOME".into()))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let text = serde_saphyr::to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot write the config file: {e}")))?;
    let tmp = path.with_extension("tmp");
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&tmp, &path));
    written.map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            Server::parse("https://cp.example:8080/").ok(),
            Some(Server {
                url: "https://cp.example:8080".into()
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
        for bad in ["ftp://cp", "http://", "http://cp:8080?x=1"] {
            assert!(
                matches!(Server::parse(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_files() {
        let file = parse_config(
            "currentContext: dev\ncontexts:\n  - { name: dev, server: https://cp:8080, ca: /ca.pem, tokenFile: /t }\nother: 1\n",
        )
        .expect("parses");
        assert_eq!(file.current_context.as_deref(), Some("dev"));
        assert_eq!(
            file.contexts[0].token_file.as_deref(),
            Some(Path::new("/t"))
        );
        assert_eq!(
            parse_config("server: http://cp:9000\n").map(|f| f.server),
            Ok(Some("http://cp:9000".to_string()))
        );
        assert_eq!(parse_config("# nothing yet\n"), Ok(ConfigFile::default()));
        assert_eq!(parse_config(""), Ok(ConfigFile::default()));
        assert!(parse_config("server: [").is_err());
        let again = parse_config(&serde_saphyr::to_string(&file).expect("writes")).expect("reads");
        assert_eq!(again.contexts, file.contexts);
    }
}
