//! Parsers of the test behaviours' command-line values (the behaviours
//! themselves are in the test image only): `disk_test=` and the steps of
//! `slot_test=`.

use alloc::format;
use alloc::string::String;
use hypercall_client::hypercall_abi::Name;
use hypercall_client::Call;
use proto::num::parse_u64;

/// Parse `write:<seed>:<sectors>` / `read:<seed>:<sectors>`.
pub fn parse_disk_test(spec: &str) -> Result<(bool, u64, u64), String> {
    let mut parts = spec.split(':');
    let write = match parts.next() {
        Some("write") => true,
        Some("read") => false,
        _ => return Err(format!("disk_test={spec}: expected write:<seed>:<sectors> or read:<seed>:<sectors>")),
    };
    let num = |p: Option<&str>, what: &str| -> Result<u64, String> {
        let p = p.ok_or_else(|| format!("disk_test={spec}: missing {what}"))?;
        parse_u64(p).map_err(|_| format!("disk_test={spec}: bad {what}"))
    };
    let seed = num(parts.next(), "seed")?;
    let sectors = num(parts.next(), "sector count")?;
    if parts.next().is_some() || sectors == 0 {
        return Err(format!("disk_test={spec}: expected a non-zero sector count and nothing after it"));
    }
    Ok((write, seed, sectors))
}

/// One `slot_test=` step (`deact:<p>`, `act:<p>`, `add:<slot>`,
/// `rem:<slot>:<p>`, `share:<percent>[:<p>]`): the operation's event name
/// and the call; `None` when the step cannot be parsed.
pub fn parse_step(step: &str) -> Option<(&'static str, Call)> {
    let mut parts = step.split(':');
    let op = parts.next()?;
    let a = parts.next();
    let b = parts.next();
    let name = |s: Option<&str>| s.and_then(|s| Name::new(s).ok());
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
    Some(match op {
        "deact" => ("deact", Call::Deact { partition: name(a)? }),
        "act" => ("act", Call::Act { partition: name(a)? }),
        "add" => ("add_pci", Call::AddPci { slot: num(a)? }),
        "rem" => ("rem_pci", Call::RemPci { slot: num(a)?, partition: name(b)? }),
        "share" => {
            let percent = u8::try_from(num(a)?).ok()?;
            let partition = match b {
                Some(s) => Some(Name::new(s).ok()?),
                None => None,
            };
            ("set_cpu_share", Call::SetCpuShare { partition, percent })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_test_values() {
        assert_eq!(parse_disk_test("write:7:64"), Ok((true, 7, 64)));
        assert_eq!(parse_disk_test("read:0x10:8"), Ok((false, 16, 8)));
        for bad in ["erase:1:8", "write:1", "write:x:8", "write:1:0", "read:1:8:9", ""] {
            assert!(parse_disk_test(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slot_steps() {
        let (op, call) = parse_step("rem:2:p1").unwrap();
        assert_eq!(op, "rem_pci");
        assert!(matches!(call, Call::RemPci { slot: 2, partition } if partition.as_str() == "p1"));
        assert!(matches!(parse_step("add:5"), Some(("add_pci", Call::AddPci { slot: 5 }))));
        assert!(matches!(parse_step("share:50"), Some(("set_cpu_share", Call::SetCpuShare { partition: None, percent: 50 }))));
        assert!(matches!(parse_step("deact:p2"), Some(("deact", Call::Deact { .. }))));
        for bad in ["share:300", "add:x", "rem:1", "boot:p1", "act:", ""] {
            assert!(parse_step(bad).is_none(), "{bad}");
        }
    }
}
