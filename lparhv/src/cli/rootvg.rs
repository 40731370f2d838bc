//! `lparhv rootvg create|inspect|check`: host tooling for rootvg images
//! (format: docs/rootvg.md), a thin front end to `rootvg::host`.

use super::out;
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args)]
pub struct RootvgArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Create a new (sparse) image from a TOML spec; refuses to overwrite.
    Create {
        /// The spec, e.g. images/rootvg.toml.
        spec: PathBuf,
        /// The image file to create.
        image: PathBuf,
    },
    /// Show the label, both metadata slots and the LVs (best effort on
    /// damaged images).
    Inspect { image: PathBuf },
    /// Validate everything. Exit status 0: clean; 2: activates but degraded
    /// (warnings); 1: does not activate (or the file cannot be read).
    Check { image: PathBuf },
}

impl RootvgArgs {
    /// inspect and check print JSON with --json.
    pub fn has_json_output(&self) -> bool {
        !matches!(self.which, Which::Create { .. })
    }
}

/// Runs the command; `json` (the global --json) makes inspect and check print JSON.
pub fn run(args: RootvgArgs, json: bool) -> Result<()> {
    match args.which {
        Which::Create { spec, image } => {
            let inspection = rootvg::host::create_image_from_toml(&spec, &image).map_err(|e| anyhow!("{e}"))?;
            out(inspection.to_string().as_bytes());
            Ok(())
        }
        Which::Inspect { image } => {
            let i = rootvg::host::inspect(&image).map_err(|e| anyhow!("{e}"))?;
            out((if json { i.to_json() + "\n" } else { i.to_string() }).as_bytes());
            Ok(())
        }
        Which::Check { image } => {
            let report = rootvg::host::check(&image).map_err(|e| anyhow!("{e}"))?;
            out((if json { report.to_json() + "\n" } else { report.to_string() }).as_bytes());
            let code = match (report.activates, report.is_clean()) {
                (true, true) => 0,
                (true, false) => 2,
                (false, _) => 1,
            };
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
    }
}
