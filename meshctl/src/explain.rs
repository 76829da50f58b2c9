//! `meshctl explain upstreampolicy.spec.retry`, like `kubectl explain`: a field's type, default,
//! rules and meaning, or a block's description and fields. Read from the policy reference
//! (`docs/policies.md`, built into meshctl), whose rows tests hold to the policy model — every
//! field has a row, every row a field, every default the model's — so what `explain` says is
//! what `validate` enforces.

use bulwark_proto::policy::Kind;

use crate::errors::CliError;
use crate::output::Output;

const REFERENCE: &str = include_str!("../../docs/policies.md");

/// One row of a field table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// Which resources have it: `None` for both (the resource header).
    kind: Option<Kind>,
    /// As written, `spec.routes[i].match`.
    path: String,
    ty: String,
    default: String,
    rules: String,
    meaning: String,
}

/// A `### block` of a kind's section: its name and the prose before its first table.
#[derive(Debug)]
struct Block {
    kind: Kind,
    name: String,
    text: String,
}

/// `spec.routes[i].match` → `spec.routes.match`: how a user names a field.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// The cells of a table line, `\|` kept inside a cell.
fn cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_string()),
            c => cell.push(c),
        }
    }
    cells
}

fn parse(reference: &str) -> (Vec<Row>, Vec<Block>) {
    let mut rows = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut kind: Option<Option<Kind>> = None;
    let mut in_table = false;
    for line in reference.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            kind = match heading.trim() {
                "UpstreamPolicy" => Some(Some(Kind::UpstreamPolicy)),
                "ServicePolicy" => Some(Some(Kind::ServicePolicy)),
                h if h.starts_with("Resource header") => Some(None),
                _ => None,
            };
            continue;
        }
        let Some(scope) = kind else { continue };
        if let (Some(name), Some(k)) = (line.strip_prefix("### "), scope) {
            blocks.push(Block {
                kind: k,
                name: name.trim().to_string(),
                text: String::new(),
            });
            in_table = false;
            continue;
        }
        if line.starts_with('|') {
            in_table = true;
            let c = cells(line);
            let Some(path) = c
                .first()
                .and_then(|p| p.strip_prefix('`'))
                .and_then(|p| p.strip_suffix('`'))
            else {
                continue;
            };
            if c.len() >= 5 {
                rows.push(Row {
                    kind: scope,
                    path: path.to_string(),
                    ty: c[1].clone(),
                    default: c[2].clone(),
                    rules: c[3].clone(),
                    meaning: c[4].clone(),
                });
            }
        } else if !in_table
            && let Some(block) = blocks.last_mut().filter(|b| Some(b.kind) == scope)
            && (!block.text.is_empty() || !line.trim().is_empty())
        {
            block.text.push_str(line);
            block.text.push('\n');
        }
    }
    (rows, blocks)
}

/// `kind.path` as the user wrote it: `upstreampolicy.spec.retry`, `svc.spec.inbound`, `up`.
pub fn run(target: &str) -> Result<Output, CliError> {
    let (kind_text, path) = target.split_once('.').unwrap_or((target, ""));
    let kind = crate::api::parse_kind(kind_text)?;
    explain(REFERENCE, kind, path)
}

fn explain(reference: &str, kind: Kind, path: &str) -> Result<Output, CliError> {
    let (rows, blocks) = parse(reference);
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.kind.is_none_or(|k| k == kind))
        .collect();
    let wanted = normalize(path.trim_matches('.'));
    let mut out = Output::default();
    out.line(format_args!("KIND:     {kind}"));
    if let Some(row) = rows.iter().find(|r| normalize(&r.path) == wanted) {
        out.line(format_args!("FIELD:    {}", row.path));
        out.line(format_args!("TYPE:     {}", row.ty));
        out.line(format_args!("DEFAULT:  {}", row.default));
        out.line(format_args!("RULES:    {}", row.rules));
        out.line("");
        out.line("DESCRIPTION:");
        out.line(format_args!("    {}", row.meaning));
    }
    // The fields one level below `wanted`, with the row of each when it is a field itself.
    let prefix = if wanted.is_empty() {
        String::new()
    } else {
        format!("{wanted}.")
    };
    let mut children: Vec<(String, Option<&Row>)> = Vec::new();
    for row in &rows {
        let Some(rest) = normalize(&row.path)
            .strip_prefix(&prefix)
            .map(str::to_string)
        else {
            continue;
        };
        let name = rest.split('.').next().unwrap_or_default().to_string();
        if name.is_empty() {
            continue;
        }
        let own = (rest == name).then_some(*row);
        match children.iter_mut().find(|(n, _)| *n == name) {
            Some((_, slot)) => {
                if slot.is_none() {
                    *slot = own;
                }
            }
            None => children.push((name, own)),
        }
    }
    let is_field = rows.iter().any(|r| normalize(&r.path) == wanted);
    if !is_field && children.is_empty() {
        return Err(CliError::Usage(no_such_field(&rows, kind, &wanted)));
    }
    if !children.is_empty() {
        if !is_field {
            out.line(format_args!(
                "FIELD:    {}",
                if wanted.is_empty() {
                    "(the resource)"
                } else {
                    &wanted
                }
            ));
            let block = wanted
                .strip_prefix("spec.")
                .and_then(|name| blocks.iter().find(|b| b.kind == kind && b.name == name));
            if let Some(block) = block.filter(|b| !b.text.trim().is_empty()) {
                out.line("");
                out.line("DESCRIPTION:");
                for line in block.text.trim_end().lines() {
                    out.line(format_args!("    {line}"));
                }
            }
        }
        out.line("");
        out.line("FIELDS:");
        let width = children.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, row) in &children {
            match row {
                Some(r) => out.line(format_args!("    {name:width$}  <{}>  {}", r.ty, r.meaning)),
                None => out.line(format_args!("    {name:width$}  <object>")),
            }
        }
    }
    Ok(out)
}

/// Names the closest block that exists and what it has.
fn no_such_field(rows: &[&Row], kind: Kind, wanted: &str) -> String {
    let mut parent = wanted;
    loop {
        parent = match parent.rsplit_once('.') {
            Some((p, _)) => p,
            None => "",
        };
        let prefix = if parent.is_empty() {
            String::new()
        } else {
            format!("{parent}.")
        };
        let mut names: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                normalize(&r.path)
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split('.').next().map(str::to_string))
            })
            .collect();
        names.dedup();
        let mut unique = Vec::new();
        for n in names {
            if !unique.contains(&n) {
                unique.push(n);
            }
        }
        if !unique.is_empty() || parent.is_empty() {
            let at = if parent.is_empty() { "it" } else { parent };
            return format!(
                "{kind} has no field {wanted}; {at} has: {}",
                unique.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: Kind, path: &str) -> String {
        explain(REFERENCE, kind, path).expect("explained").stdout
    }

    #[test]
    fn a_field_shows_its_type_default_rules_and_meaning() {
        assert_eq!(
            text(Kind::UpstreamPolicy, "spec.retry.maxAttempts"),
            "KIND:     UpstreamPolicy\nFIELD:    spec.retry.maxAttempts\nTYPE:     integer\nDEFAULT:  `1`\nRULES:    1–100\n\nDESCRIPTION:\n    attempts in all, the first included (`1` = no retry)\n"
        );
        // A cell with an escaped pipe stays one cell.
        assert!(
            text(Kind::UpstreamPolicy, "spec.retry.nonIdempotent")
                .contains("TYPE:     `never` | `with-idempotency-key` | `always`\n")
        );
    }

    #[test]
    fn a_block_shows_its_description_and_fields() {
        let out = text(Kind::UpstreamPolicy, "spec.retry");
        assert!(out.starts_with("KIND:     UpstreamPolicy\nFIELD:    spec.retry\n\nDESCRIPTION:\n    Also allowed per route as `spec.routes[i].retry`"), "{out}");
        assert!(
            out.contains("\nFIELDS:\n    maxAttempts        <integer>  attempts in all"),
            "{out}"
        );
        assert!(out.contains("\n    backoff            <object>\n"), "{out}");
        // Indices are left out as users write paths; the resource header is in both kinds.
        assert!(text(Kind::UpstreamPolicy, "spec.routes.match").contains("FIELD:    spec.routes"));
        assert!(text(Kind::ServicePolicy, "metadata.name").contains("TYPE:     string"));
        let top = text(Kind::ServicePolicy, "");
        assert!(top.contains("    spec        <object>"), "{top}");
        assert!(top.contains("    apiVersion  <string>"), "{top}");
    }

    #[test]
    fn an_unknown_field_names_what_its_block_has() {
        let err = explain(REFERENCE, Kind::UpstreamPolicy, "spec.retry.maxAttempt").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("UpstreamPolicy has no field spec.retry.maxAttempt; spec.retry has: maxAttempts, backoff, "),
            "{message}"
        );
        // A ServicePolicy has no retry block.
        let err = explain(REFERENCE, Kind::ServicePolicy, "spec.retry").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ServicePolicy has no field spec.retry; spec has: app, "),
            "{err}"
        );
    }
}
