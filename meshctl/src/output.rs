//! What a finished command prints: its stdout text and its stderr notes, written by `main`
//! in one go so that commands stay free of I/O and easy to test.

use std::fmt::Write as _;

use serde::Serialize;

/// Printed when a read was served by a replica that cannot reach etcd.
pub const STALE_NOTE: &str = "(stale: the control plane cannot reach etcd)";

/// `-o` of every command that shows something: a table for people (`wide`: with every column
/// there is), or the control plane's own documents, exactly as it answered, for programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Wide,
    Yaml,
    Json,
}

impl Format {
    /// Whether the answer is printed as documents rather than a table.
    pub fn documents(self) -> bool {
        matches!(self, Format::Yaml | Format::Json)
    }
}

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

    /// Appends `value` as pretty JSON or as YAML (a table format prints nothing here).
    pub fn document(&mut self, format: Format, value: &impl Serialize) -> Result<(), String> {
        let text = match format {
            Format::Json => serde_json::to_string_pretty(value)
                .map_err(|e| format!("cannot print JSON: {e}"))?,
            Format::Yaml => {
                serde_saphyr::to_string(value).map_err(|e| format!("cannot print YAML: {e}"))?
            }
            Format::Table | Format::Wide => return Ok(()),
        };
        self.text(&text);
        Ok(())
    }

    /// Notes that a read may be out of date.
    pub fn stale(&mut self, stale: bool) {
        if stale {
            self.note(STALE_NOTE);
        }
    }
}
