//! The `[system]` table: the system's name, its state directory, the
//! owner-failure grace and the accelerator the partitions run under.

use super::error::{ConfigError, Ctx};
use super::raw::RawSystem;
use super::{MAX_GRACE_MS, MIN_GRACE_MS};
use crate::machine::qemu::AccelChoice;
use std::path::PathBuf;
use toml::Spanned;

/// The validated `[system]` table.
pub(super) struct SystemSection {
    pub(super) name: String,
    pub(super) state_dir: PathBuf,
    pub(super) grace_ms: u64,
    pub(super) accel: AccelChoice,
}

pub(super) fn validate(ctx: &Ctx, system: &RawSystem) -> Result<SystemSection, ConfigError> {
    let name = ctx.name(&system.name, "system name")?;
    if system.state_dir.get_ref().trim().is_empty() {
        return Err(ctx.error(
            Some(system.state_dir.span()),
            "state_dir is empty",
            "set state_dir to a directory lparhv may create and own, e.g. \"../target/lparhv/demo\" (relative to the config file)",
        ));
    }
    let state_dir = ctx.resolve(system.state_dir.get_ref());
    let grace_ms = grace(ctx, system.grace_ms.as_ref())?;
    let accel = accel(ctx, system.accel.as_ref())?;
    Ok(SystemSection { name, state_dir, grace_ms, accel })
}

fn grace(ctx: &Ctx, grace_ms: Option<&Spanned<u64>>) -> Result<u64, ConfigError> {
    match grace_ms {
        None => Ok(MIN_GRACE_MS),
        Some(g) if *g.get_ref() < MIN_GRACE_MS => Err(ctx.error(
            Some(g.span()),
            format!("grace_ms = {} is shorter than the 2 s minimum owner-failure grace", g.get_ref()),
            format!("set grace_ms to at least {MIN_GRACE_MS}"),
        )),
        Some(g) if *g.get_ref() > MAX_GRACE_MS => Err(ctx.error(
            Some(g.span()),
            format!("grace_ms = {} is longer than the {MAX_GRACE_MS} ms maximum", g.get_ref()),
            format!("set grace_ms between {MIN_GRACE_MS} and {MAX_GRACE_MS}"),
        )),
        Some(g) => Ok(*g.get_ref()),
    }
}

fn accel(ctx: &Ctx, accel: Option<&Spanned<String>>) -> Result<AccelChoice, ConfigError> {
    let Some(a) = accel else { return Ok(AccelChoice::Auto) };
    AccelChoice::from_name(a.get_ref()).ok_or_else(|| {
        ctx.error(Some(a.span()), format!("unknown accelerator {:?}", a.get_ref()), "use accel = \"auto\", \"kvm\" or \"tcg\"")
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{assert_rejected, err, line_of, parse, place_of, GOOD};
    use super::super::DEFAULT_OWNER_NAME;
    use super::*;
    use crate::machine::qemu::Accel;
    use std::path::Path;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[system]\nname = \"m\"\nstate_dir = \"/s\"\n").unwrap();
        assert_eq!(c.grace_ms, MIN_GRACE_MS);
        assert_eq!(c.owner.name, DEFAULT_OWNER_NAME);
        assert_eq!(c.accel, AccelChoice::Auto);
        assert!(c.partitions.is_empty());
    }

    #[test]
    fn system_values_are_read() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.name, "two-lpars");
        assert_eq!(c.state_dir, Path::new("/etc/lparhv/state"));
        assert_eq!(c.grace_ms, 3000);
        let kvm = parse(&GOOD.replacen("grace_ms = 3000", "grace_ms = 3000\naccel = \"kvm\"", 1)).unwrap();
        assert_eq!(kvm.accel, AccelChoice::Force(Accel::Kvm));
    }

    #[test]
    fn short_grace_names_line_and_fix() {
        let text = GOOD.replace("grace_ms = 3000", "grace_ms = 1500");
        let e = err(&text);
        assert_eq!(e.line, Some(line_of(&text, "grace_ms")));
        assert!(e.message.contains("2 s minimum"), "{e}");
        assert!(e.fix.contains("2000"), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("/etc/lparhv/test.toml:{}:", e.line.unwrap())), "{shown}");
    }

    #[test]
    fn bad_system_values_are_rejected() {
        assert_rejected(
            GOOD,
            &[
                ("state_dir = \"state\"", "state_dir = \"\"", "state_dir"),
                ("grace_ms = 3000", "grace_ms = 99999999", "maximum"),
                ("grace_ms = 3000", "grace_ms = 3000\naccel = \"xen\"", "accelerator"),
            ],
        );
    }

    #[test]
    fn unknown_accelerator_points_at_its_value() {
        // An empty word is not "auto" in a config file (only on the command line).
        for bad in ["xen", ""] {
            let text = GOOD.replacen("grace_ms = 3000", &format!("grace_ms = 3000\naccel = \"{bad}\""), 1);
            let e = err(&text);
            assert_eq!((e.line, e.column), {
                let (l, c) = place_of(&text, &format!("\"{bad}\""));
                (Some(l), Some(c))
            });
            assert_eq!(e.message, format!("unknown accelerator {bad:?}"));
            assert_eq!(e.fix, "use accel = \"auto\", \"kvm\" or \"tcg\"");
        }
    }
}
