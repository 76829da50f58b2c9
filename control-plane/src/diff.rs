//! Diffs for apply and dry-run: a unified line diff (`diff -u` style, three lines of context)
//! of two resources' pretty-printed JSON, so an operator sees what an apply changes.

use std::fmt::Write as _;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Above this many line pairs the diff is not searched for common lines: it shows the old
/// text removed and the new one added (resources are far smaller in practice).
const MAX_CELLS: usize = 4_000_000;

/// A unified diff from `old` to `new`; empty when they are equal. `old` is `None` for a
/// resource that does not exist yet (every line is added).
pub fn unified(old: Option<(&str, &str)>, new: (&str, &str)) -> String {
    let (old_label, old_text) = old.unwrap_or(("/dev/null", ""));
    let (new_label, new_text) = new;
    let a: Vec<&str> = old_text.lines().collect();
    let b: Vec<&str> = new_text.lines().collect();
    if a == b {
        return String::new();
    }
    let ops = edit_script(&a, &b);
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    for hunk in hunks(&ops) {
        let (a_start, a_len, b_start, b_len) = hunk_range(&ops[hunk.clone()]);
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            range(a_start, a_len),
            range(b_start, b_len)
        );
        for op in &ops[hunk] {
            let (mark, line) = match op {
                Op::Same(i, _) => (' ', a[*i]),
                Op::Removed(i) => ('-', a[*i]),
                Op::Added(j) => ('+', b[*j]),
            };
            let _ = writeln!(out, "{mark}{line}");
        }
    }
    out
}

/// `start,len` as unified diffs write it (1-based; an empty range names the line before).
fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{len}", start + 1),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Line `.0` of old equals line `.1` of new.
    Same(usize, usize),
    Removed(usize),
    Added(usize),
}

/// The shortest edit script by longest common subsequence.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    // Common head and tail first: edits are usually small and local.
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut ops: Vec<Op> = (0..head).map(|i| Op::Same(i, i)).collect();
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) > MAX_CELLS {
        ops.extend((0..n).map(|i| Op::Removed(head + i)));
        ops.extend((0..m).map(|j| Op::Added(head + j)));
    } else {
        // lcs[i][j]: length of the LCS of am[i..] and bm[j..].
        let width = m + 1;
        let mut lcs = vec![0u32; (n + 1) * width];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * width + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push(Op::Same(head + i, head + j));
                i += 1;
                j += 1;
            } else if j < m && (i == n || lcs[i * width + j + 1] >= lcs[(i + 1) * width + j]) {
                ops.push(Op::Added(head + j));
                j += 1;
            } else {
                ops.push(Op::Removed(head + i));
                i += 1;
            }
        }
        // Removals before additions within a change reads better.
        reorder_changes(&mut ops);
    }
    ops.extend((0..tail).map(|k| Op::Same(a.len() - tail + k, b.len() - tail + k)));
    ops
}

/// Within each run of changes, puts the removals first.
fn reorder_changes(ops: &mut [Op]) {
    let mut start = 0;
    while start < ops.len() {
        if matches!(ops[start], Op::Same(..)) {
            start += 1;
            continue;
        }
        let end = ops[start..]
            .iter()
            .position(|op| matches!(op, Op::Same(..)))
            .map_or(ops.len(), |p| start + p);
        ops[start..end].sort_by_key(|op| match op {
            Op::Removed(i) => (0, *i),
            Op::Added(j) => (1, *j),
            Op::Same(..) => (2, 0),
        });
        start = end;
    }
}

/// Ranges of `ops` forming hunks: changes with up to `CONTEXT` common lines around them;
/// changes closer than twice that share a hunk.
fn hunks(ops: &[Op]) -> Vec<std::ops::Range<usize>> {
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &c in &changes {
        let start = c.saturating_sub(CONTEXT);
        let end = (c + CONTEXT + 1).min(ops.len());
        match out.last_mut() {
            Some(last) if start <= last.end => last.end = end,
            _ => out.push(start..end),
        }
    }
    out
}

/// (old start, old length, new start, new length) of a hunk, 0-based starts.
fn hunk_range(ops: &[Op]) -> (usize, usize, usize, usize) {
    let (mut a_start, mut b_start) = (None, None);
    let (mut a_len, mut b_len) = (0, 0);
    for op in ops {
        match *op {
            Op::Same(i, j) => {
                a_start.get_or_insert(i);
                b_start.get_or_insert(j);
                a_len += 1;
                b_len += 1;
            }
            Op::Removed(i) => {
                a_start.get_or_insert(i);
                a_len += 1;
            }
            Op::Added(j) => {
                b_start.get_or_insert(j);
                b_len += 1;
            }
        }
    }
    // A hunk carries context whenever the texts share a line, so a side is empty in a hunk
    // only when that whole text is empty: it starts at 0 (printed `0,0`).
    (a_start.unwrap_or(0), a_len, b_start.unwrap_or(0), b_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified(Some(("a", "x\ny\n")), ("b", "x\ny\n")), "");
    }

    #[test]
    fn a_new_resource_is_all_additions() {
        assert_eq!(
            unified(None, ("UpstreamPolicy/default/echo", "{\n  \"a\": 1\n}")),
            "--- /dev/null\n+++ UpstreamPolicy/default/echo\n@@ -0,0 +1,3 @@\n+{\n+  \"a\": 1\n+}\n"
        );
    }

    #[test]
    fn a_change_shows_three_lines_of_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified(Some(("old", old)), ("new", new)),
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn distant_changes_make_two_hunks_and_near_ones_one() {
        let lines =
            |f: &dyn Fn(usize) -> String| -> String { (1..=20).map(|i| f(i) + "\n").collect() };
        let old = lines(&|i| i.to_string());
        let new = lines(&|i| match i {
            2 => "two".into(),
            18 => "eighteen".into(),
            i => i.to_string(),
        });
        let diff = unified(Some(("o", &old)), ("n", &new));
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        assert!(
            diff.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n 4\n 5\n"),
            "{diff}"
        );
        assert!(
            diff.contains("@@ -15,6 +15,6 @@\n 15\n 16\n 17\n-18\n+eighteen\n 19\n 20\n"),
            "{diff}"
        );

        let near = lines(&|i| match i {
            5 => "five".into(),
            11 => "eleven".into(),
            i => i.to_string(),
        });
        let diff = unified(Some(("o", &old)), ("n", &near));
        assert_eq!(diff.matches("@@ -").count(), 1, "{diff}");
    }

    #[test]
    fn insertions_and_deletions() {
        let diff = unified(Some(("o", "a\nb\nc\n")), ("n", "a\nb\nx\ny\nc\n"));
        assert_eq!(diff, "--- o\n+++ n\n@@ -1,3 +1,5 @@\n a\n b\n+x\n+y\n c\n");
        let diff = unified(Some(("o", "a\nb\nc\n")), ("n", "a\nc\n"));
        assert_eq!(diff, "--- o\n+++ n\n@@ -1,3 +1,2 @@\n a\n-b\n c\n");
        let diff = unified(Some(("o", "a\nb\n")), ("n", ""));
        assert_eq!(diff, "--- o\n+++ n\n@@ -1,2 +0,0 @@\n-a\n-b\n");
    }

    #[test]
    fn a_rewrite_lists_removals_before_additions() {
        let diff = unified(Some(("o", "x\na\nb\ny\n")), ("n", "x\nc\nd\ny\n"));
        assert_eq!(
            diff,
            "--- o\n+++ n\n@@ -1,4 +1,4 @@\n x\n-a\n-b\n+c\n+d\n y\n"
        );
    }

    #[test]
    fn huge_inputs_fall_back_to_replace() {
        let old: String = (0..3000).map(|i| format!("{i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("{}\n", i * 7 % 3001)).collect();
        let diff = unified(Some(("o", &old)), ("n", &new));
        assert!(diff.starts_with("--- o\n+++ n\n@@ "));
    }
}
