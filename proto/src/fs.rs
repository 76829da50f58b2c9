//! Writing a file so that readers never see half of it: the content goes to a temporary file
//! beside it, which is then renamed over it (a rename within a directory is atomic on POSIX
//! file systems). [`Durability::Synced`] also flushes the file and its directory, so a crash or
//! power loss leaves the old file or the new one; [`Durability::Renamed`] skips the flushes for
//! files that only matter while the process runs (ready files).

use std::io::Write;
use std::path::{Path, PathBuf};

/// How far a write must have reached before [`write_atomically`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Readers see the old content or the new one; a crash may lose the new one.
    Renamed,
    /// As `Renamed`, and on disk (file and directory entry) when the call returns.
    Synced,
}

/// Replaces `path` with `content`, creating its directory when missing. On error the old file
/// is left as it was.
pub fn write_atomically(
    path: &Path,
    content: &[u8],
    durability: Durability,
) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temporary(path);
    let mut file = std::fs::File::create(&tmp)?;
    let written = file.write_all(content).and_then(|()| match durability {
        Durability::Synced => file.sync_all(),
        Durability::Renamed => Ok(()),
    });
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let (Durability::Synced, Some(dir)) = (durability, dir) {
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `name` → `.name.tmp` beside it: hidden, so a directory reader that skips hidden files (a
/// policy directory, a ConfigMap mount) never picks up a half-written file.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulwark-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = dir("replace");
        let path = d.join("sub").join("snapshot.json");
        write_atomically(&path, b"one", Durability::Synced).unwrap();
        write_atomically(&path, b"two", Durability::Renamed).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["snapshot.json"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let d = dir("fail");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("target");
        write_atomically(&path, b"old", Durability::Renamed).unwrap();
        // The temporary cannot be created where a directory of its name stands.
        std::fs::create_dir(d.join(".target.tmp")).unwrap();
        assert!(write_atomically(&path, b"new", Durability::Synced).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
