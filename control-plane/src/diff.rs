//! Diffs for apply and dry-run (and `meshctl diff`): a unified line diff (`diff -u` style,
//! three lines of context) of two resources as YAML, so an operator sees what an apply changes
//! in the form policies are written in. The diff itself is the `similar` crate's (Myers, with a
//! deadline so that a pathological pair of documents cannot hold a request).

use std::time::Duration;

use similar::{Algorithm, TextDiff};

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// The most one diff may take; past it the rest is shown as removed and added.
const DEADLINE: Duration = Duration::from_millis(200);

/// A unified diff from `old` to `new`; empty when they are equal. `old` is `None` for a
/// resource that does not exist yet (every line is added).
pub fn unified(old: Option<(&str, &str)>, new: (&str, &str)) -> String {
    let (old_label, old_text) = old.unwrap_or(("/dev/null", ""));
    let (new_label, new_text) = new;
    if old_text == new_text {
        return String::new();
    }
    TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .timeout(DEADLINE)
        .diff_lines(old_text, new_text)
        .unified_diff()
        .context_radius(CONTEXT)
        .missing_newline_hint(false)
        .header(old_label, new_label)
        .to_string()
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
