//! `egress --version` names the commit it was built from: EGRESS_COMMIT when
//! the build sets it, else `git rev-parse` of the source tree, else the
//! commit `cargo package` recorded in `.cargo_vcs_info.json` (a build of the
//! published crate has no .git), else "unknown commit". It is the commit
//! HEAD was at: changes not committed are not marked (cargo reruns this
//! script when HEAD moves, not when a file changes).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EGRESS_COMMIT");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Rerun when HEAD moves (a commit, a checkout): HEAD, and the branch's
    // ref, loose or packed. Only files that exist: cargo takes a missing one
    // as changed, and would rerun this and relink egress on every build.
    if let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]) {
        let branch = git(dir, &["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD", "packed-refs"]
            .into_iter()
            .map(str::to_owned)
            .chain(branch);
        for path in watched {
            let path = std::path::Path::new(&git_dir).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = std::env::var("EGRESS_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(dir, &["rev-parse", "--short=12", "HEAD"]))
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
/// (`"sha1": "<40 hex>"`).
fn packaged(dir: &std::path::Path) -> Option<String> {
    let info = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let rest = &info[info.find("\"sha1\"")? + 6..];
    let start = rest.find('"')? + 1;
    let sha1 = rest.get(start..start + 40)?;
    if !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(sha1[..12].to_owned())
}
