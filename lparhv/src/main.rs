//! The `lparhv` command: boot partitions, run demos and benchmarks.
//! Every command prints which accelerator it uses and why.

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("lparhv: {e:#}");
        std::process::exit(1);
    }
}
