//! `meshctl man DIR`: man pages rendered from the same clap definition as `--help` (so they
//! cannot drift from it): `meshctl.1`, and one page per command and subcommand
//! (`meshctl-apply.1`, `meshctl-auth-can-i.1`, …).

use std::path::Path;

use crate::errors::CliError;
use crate::output::Output;

/// Writes the pages of `command` and its subcommands into `dir`, naming each file written.
pub fn write(command: clap::Command, dir: &Path) -> Result<Output, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut out = Output::default();
    page(command, dir, ("meshctl", "meshctl"), &mut out)?;
    Ok(out)
}

/// `names`: the page's (`meshctl-auth-can-i`) and what one types (`meshctl auth can-i`).
fn page(
    command: clap::Command,
    dir: &Path,
    (page_name, typed): (&str, &str),
    out: &mut Output,
) -> Result<(), CliError> {
    let command = command
        .display_name(page_name.to_string())
        .bin_name(typed.to_string());
    let mut roff = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut roff)
        .map_err(|e| CliError::Usage(format!("cannot render the page of {typed}: {e}")))?;
    let path = dir.join(format!("{page_name}.1"));
    std::fs::write(&path, roff)
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
    out.line(path.display());
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_page = format!("{page_name}-{}", sub.get_name());
        let sub_typed = format!("{typed} {}", sub.get_name());
        page(sub.clone(), dir, (&sub_page, &sub_typed), out)?;
    }
    Ok(())
}
