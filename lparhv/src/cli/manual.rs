//! `lparhv completions <shell>` and `lparhv man`: shell completion scripts
//! (clap_complete) and man pages (clap_mangen), both generated from the
//! clap definitions, so they always list the commands and options this
//! binary has (README, "lparhv"; docs/lparhv.md, "The CLI").

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write lparhv.1 and one page per subcommand (lparhv-status.1, ...)
    /// into this directory instead of printing lparhv.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "lparhv", &mut script);
    super::out(&script);
    Ok(())
}

pub fn man(args: ManArgs) -> Result<()> {
    let cmd = super::Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
            eprintln!("lparhv: man pages written to {} (read one with `man -l {}/lparhv.1`)", dir.display(), dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page).context("rendering the man page")?;
            super::out(&page);
        }
    }
    Ok(())
}
