//! `egress --version` names the commit it was built from: EGRESS_COMMIT when
//! the build sets it (a package built from a source tarball has no .git),
//! else `git rev-parse` of the source tree, else "unknown commit". A tree
//! with uncommitted changes is marked `-modified`.

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
