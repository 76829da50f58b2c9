//! What a finished command prints: its stdout text and its stderr notes, written by `main`
//! in one go so that commands stay free of I/O and easy to test.

use std::fmt::Write as _;

/// Printed when a read was served by a replica that cannot reach etcd.
pub const STALE_NOTE: &str = "(stale: the control plane cannot reach etcd)";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Appends one line to stdout.
    pub fn line(&mut self, text: impl std::fmt::Display) {
        let _ = writeln!(self.stdout, "{text}");
    }

    /// Appends text that already ends in a newline (a rendered table, YAML) to stdout.
    pub fn text(&mut self, text: &str) {
        self.stdout.push_str(text);
        if !text.is_empty() && !text.ends_with('\n') {
            self.stdout.push('\n');
        }
    }

    /// Appends one line to stderr.
    pub fn note(&mut self, text: impl std::fmt::Display) {
        let _ = writeln!(self.stderr, "{text}");
    }

    /// Notes that a read may be out of date.
    pub fn stale(&mut self, stale: bool) {
        if stale {
            self.note(STALE_NOTE);
        }
    }
}
