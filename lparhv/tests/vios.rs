//! The storage server ("VIOS") and the guest's rootvg on an NBD LUN:
//! supervision of qemu-storage-daemon, a guest that activates its rootvg
//! and does checked writes, a planned restart of the VIOS (no I/O error, no
//! lost write) and a crash that outlasts the NBD reconnect-delay (the
//! unregistered guest sees I/O errors, retries, survives, loses nothing it
//! acknowledged), and werror=stop (QMP shows the VM stopped for the I/O
//! error; `cont` after the VIOS is back lets the writer finish with no
//! error). Every acknowledged write is read back from the image.
//! Timings are printed with eprintln (`--nocapture` to see them).

mod support;
use support::events::{events_named, num};
use support::image::{kernel, scratch};

use lparhv::machine::qemu::{self, AccelChoice, Guest, GuestExit, GuestSpec};
use lparhv::machine::qmp::Qmp;
use lparhv::storage::vios::{self, Lun, Stopped, Vios};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A rootvg image made from the sample spec `images/rootvg.toml`.
fn rootvg_image(dir: &Path) -> PathBuf {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/rootvg.toml");
    let img = dir.join("lun0.img");
    rootvg::host::create_image_from_toml(&spec, &img).unwrap();
    img
}

fn writer_guest(name: &str, vios: &Vios, reconnect_delay: u32, seed: u64, stop_after: u64) -> Guest {
    let d = qemu::choose_accel(AccelChoice::Auto, &kernel()).unwrap();
    let mut s = GuestSpec::new(name, &kernel(), d.accel);
    s.cmdline = format!("quiet rootvg=on vios_test=writer:{seed} vios_test_stop_after={stop_after}");
    s.extra = vios.nbd_disk("lun0", reconnect_delay).qemu_args("rootlun");
    eprintln!("{name}: accelerator {} ({})", d.accel, d.reason);
    Guest::spawn(&s, false).unwrap()
}

#[test]
fn qemu_vios_supervision_restart_crash_and_cleanup() {
    let dir = scratch("sup");
    let img = dir.path().join("a.img");
    std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    assert!(Vios::start("bad", &[Lun::new("x", &dir.path().join("missing.img"))], dir.path()).is_err());
    assert!(Vios::start("bad", &[Lun::new("a b", &img)], dir.path()).is_err());

    let t = Instant::now();
    let mut v = Vios::start("vios1", &[Lun::new("lun0", &img)], dir.path()).unwrap();
    eprintln!("vios start → serving: {:?}", t.elapsed());
    let sock = v.socket().to_path_buf();
    assert!(v.is_serving(Duration::from_secs(2)));
    let pid1 = v.pid().unwrap();

    let r = v.restart().unwrap();
    eprintln!("planned restart: {r:?}");
    assert!(matches!(r.stopped, Stopped::Graceful(_)), "SIGTERM is enough: {r:?}");
    assert_ne!(v.pid().unwrap(), pid1);
    assert!(sock.exists() && v.is_serving(Duration::from_secs(2)));

    v.crash().unwrap();
    assert!(!v.is_serving(Duration::from_millis(200)), "a killed daemon does not serve");
    assert!(v.crash().is_err(), "nothing left to crash");
    assert!(sock.exists(), "the socket outlives the daemon");
    let again = v.start_again().unwrap();
    eprintln!("start after crash → serving: {again:?}");
    assert!(v.is_serving(Duration::from_secs(2)));
    assert_eq!(v.starts(), 3);

    let pid = v.pid().unwrap();
    drop(v);
    assert!(!sock.exists(), "socket removed on drop");
    let alive = lparhv::machine::process::Process::open(pid).is_ok();
    assert!(!alive, "daemon {pid} outlived its Vios");
}

const SEED: u64 = 0x5eed_0001;

#[test]
fn qemu_guest_activates_rootvg_on_nbd_lun_and_every_acked_write_is_on_disk() {
    let dir = scratch("w");
    let img = rootvg_image(dir.path());
    let v = Vios::start("vios1", &[Lun::new("lun0", &img)], dir.path()).unwrap();
    let n = 300;
    let mut g = writer_guest("rootvg-writer", &v, 5, SEED, n);
    let (act, _) = g.wait_event("rootvg_active", Duration::from_secs(60)).unwrap();
    assert_eq!((act.get("vg"), act.get("lvs"), act.get("generation")), (Some("rootvg"), Some("2"), Some("1")), "{act:?}");
    let (start, t_start) = g.wait_event("io_start", Duration::from_secs(10)).unwrap();
    assert_eq!(num(&start, "blocks"), 32 * 256, "LV data is 32 MiB of 4 KiB records");
    let (done, t_done) = g.wait_event("io_done", Duration::from_secs(120)).unwrap();
    assert_eq!((num(&done, "acked"), num(&done, "errors"), num(&done, "retries")), (n, 0, 0), "{done:?}");
    assert_eq!(g.wait_exit(Duration::from_secs(10)).unwrap(), GuestExit::Code(0));
    assert_eq!(events_named(&g.console_log(), "io_ack").len() as u64, n / 50);
    let secs = (t_done - t_start).as_secs_f64();
    eprintln!(
        "{n} durable 4 KiB writes (write + flush) in {secs:.2} s: {:.0}/s, slowest ack {} us",
        n as f64 / secs,
        num(&done, "max_ack_us")
    );

    drop(v);
    let c = vios::verify_writer_log(&img, "data", SEED, n).unwrap();
    assert_eq!((c.checked, c.intact, c.lost), (n, n, 0), "{c:?}");
    // The check can fail: damage one acknowledged record in the image.
    let mut dev = rootvg::host::FileDevice::open(&img, true).unwrap();
    let vg = rootvg::VolumeGroup::activate(&mut dev).unwrap();
    let seg = vg.lv("data").unwrap().map_bytes(41 * 4096, 4096).unwrap().next().unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[seg.lba as usize * 512 + 1000] ^= 0x40;
    std::fs::write(&img, &bytes).unwrap();
    let c = vios::verify_writer_log(&img, "data", SEED, n).unwrap();
    assert_eq!((c.lost, c.first_losses[0].map(|l| l.0)), (1, Some(42)), "{c:?}");
}

/// Acks the writer must still have to do after the outage starts, so the
/// outage really happens during the run.
const TOTAL: u64 = 1500;

#[test]
fn qemu_planned_vios_restart_is_invisible_to_the_guest_and_loses_nothing() {
    let dir = scratch("pr");
    let img = rootvg_image(dir.path());
    let mut v = Vios::start("vios1", &[Lun::new("lun0", &img)], dir.path()).unwrap();
    let mut g = writer_guest("planned", &v, 10, SEED + 1, TOTAL);
    g.wait_event("rootvg_active", Duration::from_secs(60)).unwrap();
    g.wait_event_where(Duration::from_secs(60), |e| e.name == "io_ack").unwrap();

    let r = v.restart().unwrap();
    let restarted = Instant::now();
    eprintln!("planned restart under load: {r:?}");
    assert!(matches!(r.stopped, Stopped::Graceful(_)), "{r:?}");

    let (done, t_done) = g.wait_event("io_done", Duration::from_secs(180)).unwrap();
    assert!(t_done > restarted, "the writer finished before the restart: raise TOTAL");
    assert_eq!(g.wait_exit(Duration::from_secs(10)).unwrap(), GuestExit::Code(0), "guest failed: {done:?}");
    assert_eq!((num(&done, "acked"), num(&done, "errors"), num(&done, "retries")), (TOTAL, 0, 0), "{done:?}");
    assert!(events_named(&g.console_log(), "io_error").is_empty());
    let slow: Vec<String> =
        events_named(&g.console_log(), "io_slow").iter().map(|(e, _)| format!("seq {} {} us", num(e, "seq"), num(e, "us"))).collect();
    eprintln!(
        "planned restart: host outage {:?} (stop {:?}, start {:?}); guest: slowest ack {} us; slow acks: {:?}",
        r.outage,
        r.stop,
        r.start,
        num(&done, "max_ack_us"),
        slow
    );
    drop(v);
    let c = vios::verify_writer_log(&img, "data", SEED + 1, TOTAL).unwrap();
    assert_eq!((c.checked, c.lost), (TOTAL, 0), "{c:?}");
}

#[test]
fn qemu_vios_crash_beyond_reconnect_delay_gives_errors_that_the_guest_retries_and_survives() {
    let dir = scratch("cr");
    let img = rootvg_image(dir.path());
    let mut v = Vios::start("vios1", &[Lun::new("lun0", &img)], dir.path()).unwrap();
    let delay = 1;
    let mut g = writer_guest("unregistered", &v, delay, SEED + 2, TOTAL);
    g.wait_event("rootvg_active", Duration::from_secs(60)).unwrap();
    g.wait_event_where(Duration::from_secs(60), |e| e.name == "io_ack").unwrap();

    v.crash().unwrap();
    let crashed = Instant::now();
    let (err, t_err) = g.wait_event("io_error", Duration::from_secs(30)).unwrap();
    let first_error_after = t_err - crashed;
    eprintln!("crash: first guest I/O error {first_error_after:?} after the kill: {err:?}");
    assert!(first_error_after >= Duration::from_millis(delay as u64 * 1000 - 200), "errors only after reconnect-delay");
    std::thread::sleep(Duration::from_secs(2));
    let back = v.start_again().unwrap();
    let outage = crashed.elapsed();
    eprintln!("crash: VIOS back after {outage:?} (start {back:?})");

    let (done, t_done) = g.wait_event("io_done", Duration::from_secs(180)).unwrap();
    assert!(t_done > crashed + outage);
    let exit = g.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(exit, GuestExit::Code(1), "errors were seen, so the writer reports failure (but no panic/exception): {done:?}");
    let (acked, errors, retries) = (num(&done, "acked"), num(&done, "errors"), num(&done, "retries"));
    assert_eq!((acked, done.get("gave_up")), (TOTAL, Some("0")), "retries carried the writer through: {done:?}");
    assert!(errors > 0 && retries == errors, "{done:?}");
    assert_eq!(events_named(&g.console_log(), "io_error").len() as u64, errors);
    let reverify = events_named(&g.console_log(), "rootvg_reverify");
    assert!(
        !reverify.is_empty() && reverify.iter().all(|(e, _)| e.get("ok") == Some("1")),
        "metadata re-verified after the outage: {reverify:?}"
    );
    let (last_err, t_last) = events_named(&g.console_log(), "io_error").pop().unwrap();
    eprintln!(
        "crash: guest saw {errors} I/O errors ({retries} retries) between {:?} and {:?} after the kill; slowest ack {} us; last error {last_err:?}",
        first_error_after,
        t_last - crashed,
        num(&done, "max_ack_us")
    );
    drop(v);
    let c = vios::verify_writer_log(&img, "data", SEED + 2, TOTAL).unwrap();
    assert_eq!((c.checked, c.lost), (TOTAL, 0), "{c:?}");
}

/// With werror=stop a request that fails past the reconnect-delay pauses
/// the VM: QMP shows it stopped for an I/O error (not running), the guest
/// sees no error, and after the VIOS is back a `cont` lets the writer
/// finish without a single error and with every ack on disk.
#[test]
fn qemu_werror_stop_pauses_the_guest_instead_of_failing_its_io() {
    let dir = scratch("st");
    let img = rootvg_image(dir.path());
    let mut v = Vios::start("vios1", &[Lun::new("lun0", &img)], dir.path()).unwrap();
    let d = qemu::choose_accel(AccelChoice::Auto, &kernel()).unwrap();
    let mut s = GuestSpec::new("werror-stop", &kernel(), d.accel);
    s.cmdline = format!("quiet rootvg=on vios_test=writer:{} vios_test_stop_after={TOTAL}", SEED + 3);
    let mut disk = v.nbd_disk("lun0", 1);
    disk.werror = vios::ErrorPolicy::Stop;
    disk.rerror = vios::ErrorPolicy::Stop;
    s.extra = disk.qemu_args("rootlun");
    let qmp_sock = dir.path().join("qmp.sock");
    s.extra.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", qmp_sock.display())]);
    let mut g = Guest::spawn(&s, false).unwrap();
    let mut q = Qmp::connect(&qmp_sock, Duration::from_secs(30)).unwrap();
    g.wait_event("rootvg_active", Duration::from_secs(60)).unwrap();
    g.wait_event_where(Duration::from_secs(60), |e| e.name == "io_ack").unwrap();
    assert_eq!(q.query_status().unwrap(), ("running".to_string(), true));

    v.crash().unwrap();
    let crashed = Instant::now();
    // Past the reconnect-delay the failed request pauses the VM.
    let err = q.wait_event("BLOCK_IO_ERROR", Duration::from_secs(30)).unwrap();
    assert_eq!(err.data.get("action").and_then(|a| a.as_str()), Some("stop"), "{err:?}");
    q.wait_event("STOP", Duration::from_secs(10)).unwrap();
    let paused = q.query_status().unwrap();
    eprintln!("werror=stop: BLOCK_IO_ERROR {:?} after the kill; query-status {paused:?}", err.received - crashed);
    assert_eq!(paused, ("io-error".to_string(), false), "the VM must be stopped for the I/O error");
    v.start_again().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(q.query_status().unwrap(), paused, "the VIOS coming back does not resume the guest by itself");
    assert!(events_named(&g.console_log(), "io_error").is_empty(), "werror=stop hides the error from the guest");
    assert!(events_named(&g.console_log(), "io_done").is_empty());
    let acks_while_paused = events_named(&g.console_log(), "io_ack").len();

    q.execute("cont", None).unwrap();
    q.wait_event("RESUME", Duration::from_secs(10)).unwrap();
    assert_eq!(q.query_status().unwrap(), ("running".to_string(), true));
    let (done, _) = g.wait_event("io_done", Duration::from_secs(180)).unwrap();
    assert!(events_named(&g.console_log(), "io_ack").len() > acks_while_paused, "the writer went on after `cont`");
    assert_eq!((num(&done, "acked"), num(&done, "errors"), num(&done, "retries")), (TOTAL, 0, 0), "{done:?}");
    assert_eq!(g.wait_exit(Duration::from_secs(10)).unwrap(), GuestExit::Code(0), "{done:?}");
    drop(v);
    let c = vios::verify_writer_log(&img, "data", SEED + 3, TOTAL).unwrap();
    assert_eq!((c.checked, c.lost), (TOTAL, 0), "{c:?}");
}
