//! `egress --version` names the commit it was built from: EGRESS_COMMIT when
//! the build sets it, else `git rev-parse` of the source tree, else the
//! commit `cargo package` recorded in `.cargo_vcs_info.json` (a build of the
//! published crate has no .git), else "unknown commit". A tree with
//! uncommitted changes is marked `-modified`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EGRESS_COMMIT");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Rebuild when HEAD moves (a commit, a checkout) or the index changes.
    if let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]) {
        for path in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={git_dir}/{path}");
        }
        if let Some(head) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{head}");
        }
    }
    let commit = std::env::var("EGRESS_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
            let modified = git(dir, &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            Some(if modified {
                format!("{commit}-modified")
            } else {
                commit
            })
        })
        .or_else(|| packaged(dir))
        .unwrap_or_else(|| "unknown commit".to_owned());
    println!("cargo:rustc-env=EGRESS_COMMIT={commit}");
}

fn git(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The commit in the `.cargo_vcs_info.json` of a packaged crate
/// (`"sha1": "<40 hex>"`, and `"dirty": true` when packaged from a changed
/// tree).
fn packaged(dir: &std::path::Path) -> Option<String> {
    let info = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let rest = &info[info.find("\"sha1\"")? + 6..];
    let start = rest.find('"')? + 1;
    let sha1 = rest.get(start..start + 40)?;
    if !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let dirty = info.contains("\"dirty\": true");
    Some(format!(
        "{}{}",
        &sha1[..12],
        if dirty { "-modified" } else { "" }
    ))
}
