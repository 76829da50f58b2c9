//! Names the commit the binaries are built from: `BULWARK_REVISION` if set (a build from a
//! source archive), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BULWARK_REVISION");
    let revision = std::env::var("BULWARK_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BULWARK_REVISION={revision}");
}

fn git_revision() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let git = root.join(".git");
    // Built again when HEAD moves: the branch it names, or HEAD itself when detached.
    if git.join("HEAD").is_file() {
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
            && git.join(reference).is_file()
        {
            println!("cargo:rerun-if-changed={}", git.join(reference).display());
        }
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    let revision = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !revision.is_empty()).then_some(revision)
}
