//! The `nat` tables of the pod's network namespace, read with `iptables-save` and replaced with
//! `iptables-restore` of one backend: nf_tables (`iptables-nft-*`, Debian's default) or legacy
//! xtables (`iptables-legacy-*`). A table is replaced whole, in one `iptables-restore`: the
//! rules of others stay, ours are removed and (when installing) added again, so installing twice
//! gives the same table and removing gives back the table as it was before.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::rules::{Capture, Family, nat_rules, rewrite_nat};

/// Which iptables implementation holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

/// Why the tables could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot run {command}: {source} (install iptables: apt-get install iptables)")]
    Missing {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn save(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-save",
            (Backend::Nft, Family::V6) => "ip6tables-nft-save",
            (Backend::Legacy, Family::V4) => "iptables-legacy-save",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-save",
        }
    }

    fn restore(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-restore",
            (Backend::Nft, Family::V6) => "ip6tables-nft-restore",
            (Backend::Legacy, Family::V4) => "iptables-legacy-restore",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-restore",
        }
    }

    /// The backend the namespace already uses: the one whose tables hold rules (a node's
    /// kube-proxy or CNI picked it, and two backends at once would each see only half the
    /// rules); nf_tables when neither does or legacy cannot be read.
    pub fn detect() -> Backend {
        let rules = |backend: Backend| {
            run(backend.save(Family::V4), &[], None)
                .map(|out| out.lines().filter(|l| l.starts_with("-A ")).count())
                .unwrap_or(0)
        };
        if rules(Backend::Legacy) > rules(Backend::Nft) {
            Backend::Legacy
        } else {
            Backend::Nft
        }
    }

    /// The `nat` table as `iptables-save` prints it.
    pub fn save_nat(self, family: Family) -> Result<String, TableError> {
        run(self.save(family), &["-t", "nat"], None)
    }

    /// Installs the capture: the `nat` table with our rules replacing any earlier ones.
    /// Returns what was restored.
    pub fn install(self, family: Family, capture: &Capture) -> Result<String, TableError> {
        let saved = self.save_nat(family)?;
        let table = rewrite_nat(&saved, Some(&nat_rules(capture, family)));
        run(self.restore(family), &[], Some(&table))?;
        Ok(table)
    }

    /// Removes the capture, leaving every other rule of the `nat` table as it was.
    pub fn remove(self, family: Family) -> Result<(), TableError> {
        let saved = self.save_nat(family)?;
        run(self.restore(family), &[], Some(&rewrite_nat(&saved, None)))?;
        Ok(())
    }

    /// Whether this backend's tool for `family` can be run at all (an IPv6-less namespace or
    /// image has no `ip6tables`).
    pub fn available(self, family: Family) -> bool {
        run(self.save(family), &["-t", "nat"], None).is_ok()
    }
}

/// Runs `command` with `args`, writing `stdin` to it; its stdout.
fn run(command: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, TableError> {
    let mut child = Command::new(command)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| TableError::Missing { command, source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| TableError::Missing { command, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| TableError::Missing { command, source })?;
    if !out.status.success() {
        return Err(TableError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
