//! The key-value service's command line (docs/events.md, docs/kvstore.md):
//! `service=writer|kv` chooses what the cluster's active partition runs on
//! the shared disk (default `writer`, the pattern-record writer); without
//! `cluster=`, `service=kv` runs the key-value service on the first disk by
//! itself. `kv_port=<n>` is its TCP port (default 6379).

use crate::runtime::cmdline::Cmdline;
use alloc::format;
use alloc::string::String;

/// The Redis port.
pub const DEFAULT_PORT: u16 = 6379;

/// Where and how the key-value service listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvArgs {
    pub port: u16,
}

/// `Ok(Some(..))` for `service=kv`, `Ok(None)` for `service=writer` or no
/// `service=`; an error names the bad key.
pub fn parse(cmdline: &Cmdline) -> Result<Option<KvArgs>, String> {
    match cmdline.get("service") {
        None | Some("writer") => return Ok(None),
        Some("kv") => {}
        Some(other) => return Err(format!("service={other}: expected writer or kv")),
    }
    let port = match cmdline.get_u64("kv_port") {
        Ok(None) => DEFAULT_PORT,
        Ok(Some(p)) if (1..=u16::MAX as u64).contains(&p) => p as u16,
        _ => return Err(format!("kv_port={}: expected a TCP port 1..65535", cmdline.get("kv_port").unwrap_or(""))),
    };
    Ok(Some(KvArgs { port }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Option<KvArgs>, String> {
        parse(&Cmdline::parse(s.as_bytes()).unwrap())
    }

    #[test]
    fn service_and_port() {
        assert_eq!(parse_str("ip=10.0.0.2/24"), Ok(None));
        assert_eq!(parse_str("service=writer kv_port=1"), Ok(None));
        assert_eq!(parse_str("service=kv"), Ok(Some(KvArgs { port: 6379 })));
        assert_eq!(parse_str("service=kv kv_port=7000"), Ok(Some(KvArgs { port: 7000 })));
        assert!(parse_str("service=redis").unwrap_err().contains("service=redis"));
        assert!(parse_str("service=kv kv_port=0").unwrap_err().contains("kv_port=0"));
        assert!(parse_str("service=kv kv_port=65536").is_err());
        assert!(parse_str("service=kv kv_port=x").is_err());
    }
}
