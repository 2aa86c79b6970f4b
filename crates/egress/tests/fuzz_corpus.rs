//! Replays every committed fuzz input through the same entry points the
//! fuzz targets use (`egress::fuzzing`, the hidden `fuzzing` feature): the
//! corpora in `fuzz/corpus/<target>/` and the crashes fixed since, in
//! `fuzz/regressions/<target>/`. No cargo-fuzz needed; a regression fails
//! here with the file's name.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) -> usize {
    let (_, run) = egress::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        for file in files(&fuzz_dir().join(kind).join(target)) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{target}: {} fails: {message}", file.display());
            }
            count += 1;
        }
    }
    count
}

#[test]
fn every_target_has_a_committed_corpus() {
    for (target, _) in egress::fuzzing::TARGETS {
        assert!(
            !files(&fuzz_dir().join("corpus").join(target)).is_empty(),
            "fuzz/corpus/{target} is empty: run fuzz/run"
        );
    }
}

macro_rules! replay_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let n = replay(stringify!($name));
            eprintln!("{}: {n} inputs replayed", stringify!($name));
        }
    )*};
}

replay_tests!(
    proxy_url,
    no_proxy,
    connect_reply,
    homeserver_yaml,
    server_name,
    well_known,
    media,
    x_matrix,
    serve
);

#[test]
fn every_target_is_replayed() {
    let listed: Vec<&str> = egress::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        listed,
        [
            "proxy_url",
            "no_proxy",
            "connect_reply",
            "homeserver_yaml",
            "server_name",
            "well_known",
            "media",
            "x_matrix",
            "serve"
        ]
    );
}
