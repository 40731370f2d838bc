//! QEMU integration tests of the clustering agent: heartbeats between an
//! active and a standby partition on one virtual LAN, and failure
//! detection when the active dies; and the full failover demo through the
//! lparhv binary, with its loss check shown to fail on a planted fault.

mod support;
use support::image::{scratch, spec};

use lparhv::machine::qemu::{self, Guest, Nic};
use lparhv::machine::vswitch::VSwitch;
use std::time::{Duration, Instant};

#[test]
fn qemu_standby_detects_a_dead_active_and_only_then() {
    let dir = scratch("cluster");
    let ports = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let switch = VSwitch::start(&dir.path().join("switch.sock"), ports.to_vec()).unwrap();
    let guest = |name: &str, n: usize, role: &str, peer: usize| {
        let mut s = spec(name);
        s.cmdline = format!("quiet ip=10.0.0.{n}/24 cluster={role} cluster_peer_ip=10.0.0.{peer} cluster_peer=lpar{peer} cluster_slot=1 cluster_slot_pci=10.0");
        s.nics.push(Nic { mac: format!("52:54:00:00:01:{n:02x}"), local: ports[n - 1].clone(), remote: switch.path().into() });
        Guest::spawn(&s, false).unwrap()
    };
    let mut active = guest("lpar1", 1, "active", 2);
    let mut standby = guest("lpar2", 2, "standby", 1);
    active.wait_event("cluster_start", Duration::from_secs(30)).unwrap();
    standby.wait_event("cluster_start", Duration::from_secs(30)).unwrap();

    // Three seconds of a live active: the standby must not act.
    std::thread::sleep(Duration::from_secs(3));
    let early: Vec<String> = standby.console().into_iter().map(|l| l.text).filter(|t| t.contains("peer_failed")).collect();
    assert!(early.is_empty(), "failover with a live active: {early:?}");

    // Kill the active: the standby declares it failed within its timeout.
    let killed = Instant::now();
    active.kill();
    let (ev, at) =
        standby.wait_event_where(Duration::from_secs(15), |e| e.name == "cluster_notice" && e.get("what") == Some("peer_failed")).unwrap();
    let detect = at - killed;
    eprintln!("standby declared the active failed {detect:?} after the kill ({ev:?})");
    assert!(detect < Duration::from_secs(10), "detection took {detect:?}");
    // Its first step is the fence.
    let (step, _) = standby.wait_event("cluster_action", Duration::from_secs(15)).unwrap();
    assert_eq!(step.get("action"), Some("DeactPeer"));
}

/// Runs `lparhv demo failover` with `extra` arguments through the real
/// binary; returns whether it succeeded, its stdout and its stderr.
fn failover_demo(extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lparhv"))
        .args(["demo", "failover"])
        .args(extra)
        .env("LPAROS_KERNEL", qemu::test_kernel())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The number after `prefix` on the first stdout line that contains it.
fn number_after(stdout: &str, prefix: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        let rest = &l[l.find(prefix)? + prefix.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

/// The main demo: the active partition is killed, the standby fences it,
/// moves the slot, resumes the service and restarts the failed partition as
/// the new standby. Every record up to the failed partition's last ack is
/// on a copy of the disk taken before the takeover, and every record the
/// new active acknowledged is on the disk at the end.
#[test]
fn qemu_failover_demo_moves_the_service_and_loses_nothing() {
    let (ok, stdout, stderr) = failover_demo(&[]);
    assert!(ok, "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for step in ["DeactPeer", "RemPciFromPeer", "AddPciToSelf", "ActPeer", "lpar2 is ACTIVE", "lpar1 is back as standby"] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    let last_ack = number_after(&stdout, "ends with the ack of record ").expect("lpar1's last ack");
    assert!(last_ack >= 50, "lpar1 was killed after acknowledging {last_ack} records:\n{stdout}");
    let copy_checked = format!("before lpar2 could write: records 1..={last_ack} checked, 0 missing");
    assert!(stdout.contains(&copy_checked), "missing {copy_checked:?} in:\n{stdout}");
    let resumed = number_after(&stdout, "lpar2 service resumed after record ").expect("resume point");
    assert!(resumed >= last_ack, "resumed after {resumed}, last ack {last_ack}:\n{stdout}");
    let new_last_ack = number_after(&stdout, "at the end records 1..=").expect("lpar2's last ack");
    assert!(new_last_ack > resumed, "{stdout}");
    assert!(stdout.contains(&format!("1..={new_last_ack} (lpar2's last ack so far) checked, 0 missing")), "{stdout}");
    eprintln!("{stdout}");
}

/// The check is not circular: the demo's test-only planted fault zeroes
/// the failed partition's last acknowledged record on the disk after the
/// kill and before the standby takes over (the standby would then resume
/// below it and rewrite it). The demo must fail and name that record.
#[test]
fn qemu_failover_demo_fails_when_an_acknowledged_record_is_lost() {
    let (ok, stdout, stderr) = failover_demo(&["--plant-lost-record"]);
    assert!(!ok, "demo passed with a destroyed record\nstdout:\n{stdout}");
    let planted = number_after(&stdout, "PLANTED FAULT (test only): record ")
        .unwrap_or_else(|| panic!("the demo never planted its fault\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    let named = format!("missing from the shared disk before the takeover: [{planted}]");
    assert!(stderr.contains(&named), "missing {named:?} in stderr:\n{stderr}\nstdout:\n{stdout}");
    eprintln!("{stdout}{stderr}");
}
