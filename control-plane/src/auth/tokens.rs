//! The static tokens file (`--tokens-file`): `{tokens: [{token, user, groups}]}` in YAML or
//! JSON, for local use and break-glass access. Read again when it changes; a file that cannot
//! be read or parsed refuses every token from it (and says why) rather than keep stale ones.
//! With `--dev-identity` the development administrator's token is added in memory.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::Deserialize;

use super::user::{AuthError, User, constant_time_eq};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

/// One token and whom it stands for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub token: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the file held at its last reading: its modification time and length, and the tokens
/// (or why there are none).
#[derive(Debug)]
struct Loaded {
    seen: Option<(SystemTime, u64)>,
    entries: Result<Vec<Entry>, String>,
}

/// The tokens.
#[derive(Debug)]
pub struct StaticTokens {
    path: Option<PathBuf>,
    extra: Vec<Entry>,
    loaded: Mutex<Loaded>,
}

impl StaticTokens {
    /// Tokens from `path` (if any) and `extra`.
    pub fn new(path: Option<PathBuf>, extra: Vec<Entry>) -> StaticTokens {
        StaticTokens {
            path,
            extra,
            loaded: Mutex::new(Loaded {
                seen: None,
                entries: Ok(Vec::new()),
            }),
        }
    }

    /// The user `token` stands for; `None` when it is none of these tokens.
    pub fn find(&self, token: &str) -> Result<Option<User>, AuthError> {
        let found = |entries: &[Entry]| {
            // Every entry is compared, so the time taken says nothing about near misses.
            let mut hit = None;
            for e in entries {
                if !e.token.is_empty() && constant_time_eq(e.token.as_bytes(), token.as_bytes()) {
                    hit = Some(User {
                        name: e.user.clone(),
                        groups: e.groups.clone(),
                        method: "token",
                        anonymous: false,
                    });
                }
            }
            hit
        };
        if let Some(user) = found(&self.extra) {
            return Ok(Some(user));
        }
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = std::fs::metadata(path)
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            .ok();
        if meta.is_none() || meta != loaded.seen {
            loaded.seen = meta;
            loaded.entries = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_saphyr::from_str::<File>(&text)
                        .map(|f| f.tokens)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = &loaded.entries {
                tracing::warn!(path = %path.display(), error = %e, "the tokens file cannot be used; its tokens are refused");
            }
        }
        match &loaded.entries {
            Ok(entries) => Ok(found(entries)),
            Err(e) => Err(AuthError::Unavailable(format!(
                "the tokens file {} cannot be used: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_user_and_groups_and_follow_the_file() {
        let dir = std::env::temp_dir().join(format!("bulwark-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - { token: t1, user: alice, groups: [pay-team] }\n",
        )
        .unwrap();
        let extra = vec![Entry {
            token: "dev".into(),
            user: "dev-admin".into(),
            groups: vec!["bulwark:admins".into()],
        }];
        let tokens = StaticTokens::new(Some(path.clone()), extra);
        let alice = tokens.find("t1").unwrap().unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.groups.as_slice()),
            ("alice", ["pay-team".to_string()].as_slice())
        );
        assert_eq!(tokens.find("dev").unwrap().unwrap().name, "dev-admin");
        assert_eq!(tokens.find("t2").unwrap(), None);
        std::fs::write(&path, "tokens:\n  - { token: t2222, user: bob }\n").unwrap();
        assert_eq!(tokens.find("t2222").unwrap().unwrap().name, "bob");
        assert_eq!(
            tokens.find("t1").unwrap(),
            None,
            "a removed token no longer works"
        );
        std::fs::write(&path, "tokens: [oops").unwrap();
        assert!(matches!(
            tokens.find("t2222"),
            Err(AuthError::Unavailable(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
