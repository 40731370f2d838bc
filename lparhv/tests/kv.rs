//! QEMU integration test of the key-value service (`service=kv`,
//! docs/kvstore.md): one partition with a disk serves Debian's `redis-cli`;
//! after its QEMU is killed (no clean shutdown) a new partition on the same
//! disk replays the log and serves the same keys; malformed and oversize
//! requests get a RESP error and the connection closes.
//!
//! The host reaches the guest's TCP port through QEMU user-mode networking
//! (`-netdev user,hostfwd=...`), for this test only: the virtual LAN has no
//! host port yet (issue 9 item 6).

mod support;
use support::image::{scratch, skipped, spec};

use lparhv::machine::qemu::{Disk, Guest, GuestSpec};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const GUEST_IP: &str = "10.0.2.15";

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn kv_guest(name: &str, disk: &Path, port: u16) -> GuestSpec {
    let mut s = spec(name);
    s.cmdline = format!("quiet ip={GUEST_IP}/24 service=kv");
    s.disks.push(Disk { path: disk.to_path_buf(), format: "raw" });
    s.extra = vec![
        "-netdev".into(),
        format!("user,id=kvnet,restrict=on,hostfwd=tcp:127.0.0.1:{port}-{GUEST_IP}:6379"),
        "-device".into(),
        "virtio-net-pci,netdev=kvnet".into(),
    ];
    s
}

/// Start the guest and wait until it listens; returns its replay event.
fn start(s: &GuestSpec) -> (Guest, lparhv::Event) {
    let mut g = Guest::spawn(s, false).unwrap();
    let (replayed, _) = g.wait_event("kv_replayed", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", g.console_tail(20)));
    g.wait_event("kv_listening", Duration::from_secs(30)).unwrap();
    (g, replayed)
}

fn redis_cli_installed() -> bool {
    Command::new("redis-cli").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `redis-cli -p port args...`, its stdout trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Send `request`, then read until the server closes: everything it said.
/// The close must come within 10 s, well before the guest's 30 s timeout
/// for silent peers would end the connection anyway.
fn raw_exchange(port: u16, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close before it read all of an oversize request.
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    match s.read_to_end(&mut reply) {
        Ok(_) => reply,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reply,
        Err(e) => panic!("no close after {:?}: {e} (got {:?})", String::from_utf8_lossy(&request[..request.len().min(40)]), reply),
    }
}

#[test]
fn qemu_redis_cli_keys_survive_a_killed_partition() {
    let dir = scratch("kv");
    let disk = dir.path().join("kv.img");
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let port = free_port();
    let spec = kv_guest("kv", &disk, port);
    let (mut g, replayed) = start(&spec);
    assert_eq!((replayed.get("records"), replayed.get("tail")), (Some("0"), Some("clean")), "{replayed:?}");
    if !redis_cli_installed() {
        skipped("qemu_redis_cli_keys_survive_a_killed_partition", "redis-cli is not installed (./run.sh setup installs redis-tools)");
        return;
    }
    assert_eq!(cli(port, &["PING"]), "PONG");
    assert_eq!(cli(port, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(port, &["GET", "greeting"]), "hello world");
    assert_eq!(cli(port, &["INCR", "counter"]), "1");
    assert_eq!(cli(port, &["INCR", "counter"]), "2");
    assert_eq!(cli(port, &["SET", "gone", "x"]), "OK");
    assert_eq!(cli(port, &["DEL", "gone", "never-set"]), "1");
    assert_eq!(cli(port, &["EXISTS", "greeting", "counter", "gone"]), "2");
    assert_eq!(cli(port, &["DBSIZE"]), "2");
    assert_eq!(cli(port, &["GET", "gone"]), "");
    assert_eq!(cli(port, &["INCR", "greeting"]), "ERR value is not an integer or out of range");
    assert_eq!(cli(port, &["FLUSHALL"]), "ERR unknown command 'FLUSHALL'");
    // Every acknowledged write is flushed: a SIGKILL loses none of them.
    g.kill();
    drop(g);

    let (mut g, replayed) = start(&spec);
    assert_eq!(
        (replayed.get("records"), replayed.get("keys"), replayed.get("tail")),
        (Some("5"), Some("2"), Some("clean")),
        "{replayed:?}"
    );
    assert_eq!(cli(port, &["GET", "greeting"]), "hello world");
    assert_eq!(cli(port, &["GET", "counter"]), "2");
    assert_eq!(cli(port, &["EXISTS", "gone"]), "0");
    assert_eq!(cli(port, &["INCR", "counter"]), "3");
    assert_eq!(cli(port, &["DBSIZE"]), "2");
    g.kill();
}

#[test]
fn qemu_malformed_and_oversize_requests_get_an_error_and_the_connection_closes() {
    let dir = scratch("kv-bad");
    let disk = dir.path().join("kv.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let port = free_port();
    let (mut g, _) = start(&kv_guest("kv-bad", &disk, port));
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("bad bulk length", b"*1\r\n$x\r\nPING\r\n".to_vec(), "-ERR Protocol error: invalid bulk length\r\n"),
        ("no '$'", b"*2\r\n$4\r\nECHO\r\n:5\r\n".to_vec(), "-ERR Protocol error: expected '$', got ':'\r\n"),
        ("oversize bulk", b"*2\r\n$3\r\nGET\r\n$99999999\r\n".to_vec(), "-ERR Protocol error: invalid bulk length\r\n"),
        ("oversize inline", vec![b'A'; 200 * 1024], "-ERR Protocol error: request too large\r\n"),
    ];
    for (what, request, want) in cases {
        // The requests before a bad one are answered; then the error, then the close.
        let mut wire = b"PING\r\n".to_vec();
        wire.extend_from_slice(&request);
        let reply = raw_exchange(port, &wire);
        assert_eq!(String::from_utf8_lossy(&reply), format!("+PONG\r\n{want}"), "{what}");
    }
    // The service lives on.
    assert_eq!(raw_exchange(port, b"ECHO still-here\r\nQUIT\r\n"), b"$10\r\nstill-here\r\n+OK\r\n");
    g.kill();
}
