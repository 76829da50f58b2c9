//! Where a field is written in a YAML policy file, so that `validate` can say `file:line:col`
//! as compilers do and editors jump to. The model parses documents into values that keep no
//! positions; this follows a field path (`spec.routes[1].match.path`) through the document's
//! text by indentation, block and flow style alike, as far as it can — a field it cannot
//! follow to the end is placed at the deepest part it found.

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// A line's indentation and content; `None` for blank and comment-only lines.
fn content(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start_matches(' ');
    (!trimmed.is_empty() && !trimmed.starts_with('#'))
        .then(|| (line.len() - trimmed.len(), trimmed))
}

/// Where the first key of a line is and its text: after the `- ` of a sequence item, the item's
/// first key (`- name: x` → the indentation of `name`).
fn entry(line: &str) -> Option<(usize, &str)> {
    let (indent, c) = content(line)?;
    match c.strip_prefix('-') {
        Some(rest) if rest.starts_with(' ') => {
            let key = rest.trim_start();
            Some((indent + c.len() - key.len(), key))
        }
        _ => Some((indent, c)),
    }
}

/// The line ranges of the non-empty documents of a YAML stream.
fn documents(lines: &[&str]) -> Vec<(usize, usize)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let push = |from: usize, to: usize, docs: &mut Vec<(usize, usize)>| {
        if lines[from..to]
            .iter()
            .any(|l| content(l).is_some_and(|(_, c)| c != "..."))
        {
            docs.push((from, to));
        }
    };
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("---") {
            push(start, i, &mut docs);
            start = i + 1;
        }
    }
    push(start, lines.len(), &mut docs);
    docs
}

/// Whether `text` begins with the key `key` followed by `:`, quoted or not.
fn starts_with_key(text: &str, key: &str) -> bool {
    [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ]
    .iter()
    .any(|k| text.starts_with(k.as_str()))
}

/// The byte offset of key `key` in flow text `text` (`{ a: 1, key: { … } }`), at a key
/// position: after `{`, `,` or the start, ignoring spaces.
fn flow_key(text: &str, key: &str) -> Option<usize> {
    let mut i = 0;
    while i < text.len() {
        let before_ok = text[..i]
            .trim_end_matches(' ')
            .chars()
            .next_back()
            .is_none_or(|c| c == '{' || c == ',');
        if before_ok && starts_with_key(&text[i..], key) {
            return Some(i);
        }
        i += 1;
        while i < text.len() && !text.is_char_boundary(i) {
            i += 1;
        }
    }
    None
}

/// The offset of the `n`-th element of the flow sequence that starts at `text` (`[a, b, c]`).
fn flow_item(text: &str, n: usize) -> Option<usize> {
    let open = text.find('[')?;
    let mut depth = 0;
    let mut index = 0;
    let mut start = open + 1;
    for (i, c) in text.char_indices().skip_while(|(i, _)| *i <= open) {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' if depth == 0 => break,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                if index == n {
                    break;
                }
                index += 1;
                start = i + 1;
            }
            _ => {}
        }
    }
    (index == n).then(|| start + text[start..].len() - text[start..].trim_start().len())
}

/// 1-based line and column of the field `path` in the `doc`-th (1-based) non-empty document of
/// the YAML `text`; `None` for JSON, or when not even the path's first key is found.
pub fn locate(text: &str, doc: usize, path: &str) -> Option<(usize, usize)> {
    if matches!(text.trim_start().chars().next(), Some('{' | '[')) {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let &(from, to) = documents(&lines).get(doc.checked_sub(1)?)?;
    let mut found = None;
    // Block mode: the lines a value spans and the indentation its keys are deeper than.
    let (mut lo, mut hi, mut parent) = (from, to, None::<usize>);
    // Flow mode: a line and the offset its value starts at.
    let mut flow: Option<(usize, usize)> = None;
    for step in steps(path) {
        if let Some((line, at)) = flow {
            let text = &lines[line][at..];
            let offset = match step {
                Step::Key(key) => flow_key(text, key).map(|o| o + key.len() + 1),
                Step::Index(n) => flow_item(text, n),
            };
            let Some(offset) = offset else { break };
            let column = match step {
                Step::Key(key) => at + offset - key.len() - 1,
                Step::Index(_) => at + offset,
            };
            found = Some((line + 1, column + 1));
            flow = Some((line, at + offset));
            continue;
        }
        match step {
            Step::Key(key) => {
                let child = lines[lo..hi]
                    .iter()
                    .filter_map(|l| entry(l))
                    .map(|(indent, _)| indent)
                    .find(|&indent| parent.is_none_or(|p| indent > p));
                let hit = (lo..hi).find(|&i| {
                    entry(lines[i])
                        .is_some_and(|(indent, c)| Some(indent) == child && starts_with_key(c, key))
                });
                let Some(line) = hit else { break };
                let (indent, c) = entry(lines[line])?;
                found = Some((line + 1, indent + 1));
                let value = c.split_once(':').map_or("", |(_, v)| v.trim_start());
                if value.starts_with('{') || value.starts_with('[') {
                    flow = Some((line, lines[line].len() - value.len()));
                    continue;
                }
                // The block below the key: deeper lines, and a sequence's items at its own
                // indentation.
                let end = (line + 1..hi)
                    .find(|&i| {
                        content(lines[i]).is_some_and(|(ind, c)| {
                            ind < indent || (ind == indent && !c.starts_with('-'))
                        })
                    })
                    .unwrap_or(hi);
                (lo, hi, parent) = (line + 1, end, Some(indent));
            }
            Step::Index(n) => {
                let item_indent = lines[lo..hi]
                    .iter()
                    .filter_map(|l| content(l))
                    .find(|(_, c)| c.starts_with('-'))
                    .map(|(indent, _)| indent);
                let Some(item_indent) = item_indent else {
                    break;
                };
                let items: Vec<usize> = (lo..hi)
                    .filter(|&i| {
                        content(lines[i])
                            .is_some_and(|(ind, c)| ind == item_indent && c.starts_with('-'))
                    })
                    .collect();
                let Some(&line) = items.get(n) else { break };
                found = Some((line + 1, item_indent + 1));
                let end = items.get(n + 1).copied().unwrap_or(hi);
                // The item's own keys: the first after `- `, the rest aligned with it.
                let rest = &lines[line][item_indent + 1..];
                let key_indent = item_indent + 1 + (rest.len() - rest.trim_start().len());
                let inline = rest.trim_start();
                if inline.starts_with('{') || inline.starts_with('[') {
                    flow = Some((line, key_indent));
                    continue;
                }
                // Seen as a block whose keys sit at `key_indent`, the item's line included
                // (`entry` reads its first key after the `- `).
                (lo, hi, parent) = (line, end, Some(key_indent - 1));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# payments
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata: { name: xendit, namespace: payments }
spec:
  endpoints: { dns: xendit.payments:8080 }
---
apiVersion: bulwark/v1
kind: UpstreamPolicy
metadata:
  name: midtrans
spec:
  timeouts: { request: 5s, perTry: 10s }
  retry:
    backoff:
      multiplier: 0.5
    retryOn: [connect-failure, reset, 4xx]
  routes:
  - name: pay
    match: { path: /pay }
  - match:
      pathPrefix: nope
    retry: { maxAttempts: 0 }
";

    #[test]
    fn block_and_flow_fields_and_sequence_items_are_found() {
        let at = |doc, path| locate(FILE, doc, path);
        assert_eq!(at(1, "metadata.namespace"), Some((4, 27)));
        assert_eq!(at(1, "spec.endpoints.dns"), Some((6, 16)));
        assert_eq!(at(2, "metadata.name"), Some((11, 3)));
        assert_eq!(at(2, "spec.timeouts.perTry"), Some((13, 28)));
        assert_eq!(at(2, "spec.retry.backoff.multiplier"), Some((16, 7)));
        assert_eq!(at(2, "spec.retry.retryOn[2]"), Some((17, 39)));
        assert_eq!(at(2, "spec.routes[0].name"), Some((19, 5)));
        assert_eq!(at(2, "spec.routes[0].match.path"), Some((20, 14)));
        assert_eq!(at(2, "spec.routes[1].match.pathPrefix"), Some((22, 7)));
        assert_eq!(at(2, "spec.routes[1].retry.maxAttempts"), Some((23, 14)));
    }

    #[test]
    fn what_cannot_be_followed_is_placed_at_its_deepest_part() {
        // An unknown field's block, a missing item, another document, JSON.
        assert_eq!(locate(FILE, 2, "spec.retry.budget.ratio"), Some((14, 3)));
        assert_eq!(locate(FILE, 2, "spec.routes[5].name"), Some((18, 3)));
        assert_eq!(locate(FILE, 3, "spec"), None);
        assert_eq!(locate("{\"spec\": {}}", 1, "spec"), None);
        assert_eq!(locate(FILE, 2, "nothing"), None);
    }
}
