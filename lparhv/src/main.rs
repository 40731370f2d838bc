//! The `lparhv` command: boot partitions, run demos and benchmarks, run a
//! managed system and operate it. Every command prints which accelerator
//! it uses and why; a failure exits with the code of its kind
//! (cli::exit, docs/lparhv.md "Exit codes").

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // clap prints its own usage errors (and --help, --version) and exits 2 (or 0).
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lparhv: {e:#}");
            std::process::ExitCode::from(cli::exit::Failure::of(&e).code())
        }
    }
}
