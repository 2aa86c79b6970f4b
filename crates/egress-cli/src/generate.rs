//! `egress generate man DIR` and `egress generate completions DIR`: the man
//! pages (clap_mangen) and the shell completions (clap_complete) from the
//! same clap definitions as `--help`, for packages (scripts/release). Not one
//! of the commands `--help` lists, nor in the pages and completions: users
//! get the files from their package.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::{exit, Cli, Failure};

/// `egress generate`.
#[derive(clap::Parser)]
#[command(
    name = "egress generate",
    about = "Write egress's man pages or shell completions (for packages)"
)]
pub struct Args {
    /// What to write.
    #[arg(value_enum)]
    what: What,
    /// The folder to write into (created when missing).
    dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    /// egress.1, and egress-COMMAND.1 for each command and subcommand.
    Man,
    /// egress.bash, _egress (zsh) and egress.fish.
    Completions,
}

/// Parses `egress generate …` and writes; prints each file written.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let args = Args::parse_from(
        std::iter::once("egress generate".into()).chain(std::env::args_os().skip(2)),
    );
    match run(&args) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("egress generate: {message}");
            std::process::ExitCode::from(code)
        }
    }
}

fn run(args: &Args) -> Result<Vec<PathBuf>, Failure> {
    let fail = |path: &Path, e: std::io::Error| {
        (
            exit::FAILURE,
            format!("cannot write {}: {e}", path.display()),
        )
    };
    std::fs::create_dir_all(&args.dir).map_err(|e| fail(&args.dir, e))?;
    let mut written = Vec::new();
    let mut cmd = Cli::command();
    cmd.build();
    match args.what {
        What::Man => man_pages(&cmd, "egress", &args.dir, &mut written)
            .map_err(|(path, e)| fail(&path, e))?,
        What::Completions => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let path = clap_complete::generate_to(shell, &mut cmd, "egress", &args.dir)
                    .map_err(|e| fail(&args.dir, e))?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

/// `name`.1 for `cmd`, then one page per visible subcommand, named with
/// dashes as git's are (egress-federation-test.1).
fn man_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name)
        .render(&mut out)
        .and_then(|()| std::fs::write(&path, out))
        .map_err(|e| (path.clone(), e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
