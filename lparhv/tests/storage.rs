//! PAUSE/RESUME and the NPIV freeze end to end (docs/vios.md): lparhv's
//! daemon, a VIOS and lparos guests doing checked writes on their rootvg.
//! Every acknowledged write is read back from the images afterwards.
//! Timings are printed with eprintln (`--nocapture`).

use lparhv::lab::{GuestPlan, Lab, LabSpec};
use lparhv::machine::qemu::GuestExit;
use lparhv::storage::pause::PauseLimits;
use lparhv::storage::vios;
use proto::writer_log;
use std::time::{Duration, Instant};
use support::events::{events_named, num};
use support::image::{accel, kernel, scratch};
use tempfile::TempDir;

mod support;

fn lab(tag: &str, guests: Vec<GuestPlan>, down: Duration) -> (Lab, TempDir) {
    let dir = scratch(tag);
    let spec = LabSpec { dir: dir.path().to_path_buf(), kernel: kernel(), accel: accel(), vios: "vios1".into(), guests, down, echo: false };
    (Lab::start(&spec).unwrap(), dir)
}

/// Wait for `name`'s writer to be registered (or not) and writing.
fn ready(lab: &mut Lab, name: &str) {
    let g = &mut lab.guest(name).unwrap().guest;
    let (r, _) = g.wait_event("vios_registered", Duration::from_secs(60)).unwrap();
    eprintln!("{name}: {r:?}");
    g.wait_event("io_ack", Duration::from_secs(60)).unwrap();
}

/// io_done → (acked, errors); then every acknowledged record is checked
/// on the image.
fn finish(lab: &mut Lab, name: &str, expect_exit: GuestExit) -> (u64, u64, lparhv::Event) {
    let lg = lab.guest(name).unwrap();
    let (done, _) = lg.guest.wait_event("io_done", Duration::from_secs(90)).unwrap();
    assert_eq!(lg.guest.wait_exit(Duration::from_secs(10)).unwrap(), expect_exit, "{name}: {done:?}");
    let (acked, errors) = (num(&done, "acked"), num(&done, "errors"));
    let c = vios::verify_writer_log(&lg.image, "data", lg.plan.seed, acked).unwrap();
    assert_eq!((c.checked, c.lost), (acked, 0), "{name}: every acknowledged write read back: {c:?}");
    (acked, errors, done)
}

#[test]
fn qemu_planned_restart_with_pause_resume_and_an_initiator_that_ignores_pause() {
    let mut good = GuestPlan::writer("p-good", 0x5101, true);
    good.stop_after = Some(2500);
    let mut deaf = GuestPlan::writer("p-deaf", 0x5102, true);
    deaf.stop_after = Some(2500);
    deaf.ignore_pause = true;
    let (mut lab, _s) = lab("pr", vec![good, deaf], Duration::from_secs(1));
    ready(&mut lab, "p-good");
    ready(&mut lab, "p-deaf");
    let limits = PauseLimits { pause_complete: Duration::from_millis(1500) };
    let r = lab.planned_restart(&limits).unwrap();
    eprintln!("planned restart: {r:#?}");
    assert_eq!(r.paused.initiators.len(), 2);
    assert_eq!(r.paused.quiesced.iter().map(|q| q.0.as_str()).collect::<Vec<_>>(), vec!["p-good"]);
    assert_eq!(r.paused.not_quiesced, vec!["p-deaf".to_string()], "the target records who did not quiesce");
    assert!(r.paused.quiesce >= Duration::from_millis(1400), "target waited for its limit: {:?}", r.paused.quiesce);
    assert!(lab.log(200).iter().any(|e| e.kind == "pause_timeout" && e.detail.contains("p-deaf")), "event log names it");

    let g = &mut lab.guest("p-good").unwrap().guest;
    let (pc, _) = g.wait_event("vios_pause_complete", Duration::from_secs(10)).unwrap();
    assert_eq!(pc.get("ok"), Some("1"), "{pc:?}");
    let (res, _) = g.wait_event("vios_resume", Duration::from_secs(10)).unwrap();
    eprintln!("p-good: {pc:?} {res:?}");
    let d = &mut lab.guest("p-deaf").unwrap().guest;
    assert!(!events_named(&d.console_log(), "vios_pause_ignored").is_empty());
    for name in ["p-good", "p-deaf"] {
        let (acked, errors, done) = finish(&mut lab, name, GuestExit::Code(0));
        eprintln!("{name}: {done:?}");
        assert_eq!((acked, errors), (2500, 0));
    }
    lab.stop();
}

#[test]
fn qemu_crash_freezes_registered_guest_and_unregistered_guest_sees_errors() {
    let mut reg = GuestPlan::writer("c-reg", 0x5201, true);
    reg.stop_after = Some(3000);
    let mut unreg = GuestPlan::writer("c-unreg", 0x5202, false);
    unreg.stop_after = Some(3000);
    let (mut lab, _s) = lab("cr", vec![reg, unreg], Duration::from_secs(2));
    ready(&mut lab, "c-reg");
    ready(&mut lab, "c-unreg");
    let t = Instant::now();
    lab.crash().unwrap();
    let reports = lab.wait_freezes(1, Duration::from_secs(30)).unwrap();
    let f = &reports[0];
    eprintln!("crash → freeze report after {:?}: {f:#?}", t.elapsed());
    assert!(f.error.is_none(), "{f:?}");
    assert_eq!(f.frozen.iter().map(|x| x.partition.as_str()).collect::<Vec<_>>(), vec!["c-reg"], "only the registered guest is frozen");
    assert!(f.freeze_all < Duration::from_millis(500), "stop issued well inside the reconnect-delay: {:?}", f.freeze_all);
    assert!(f.outage >= Duration::from_secs(2) && f.frozen[0].error.is_none(), "{f:?}");

    let g = &mut lab.guest("c-reg").unwrap().guest;
    let (th, _) = g.wait_event("thawed", Duration::from_secs(30)).unwrap();
    eprintln!("c-reg: {th:?}");
    assert!(num(&th, "frozen_ms") >= 1900, "{th:?}");
    let (rv, _) = g.wait_event("rootvg_reverified", Duration::from_secs(30)).unwrap();
    assert_eq!(rv.get("ok"), Some("1"));
    let (acked, errors, _) = finish(&mut lab, "c-reg", GuestExit::Code(0));
    assert_eq!((acked, errors), (3000, 0), "registered: no I/O error, no lost ack");
    let (acked, errors, done) = finish(&mut lab, "c-unreg", GuestExit::Code(1));
    eprintln!("c-unreg: {done:?}");
    assert_eq!(acked, 3000, "unregistered: retried through, nothing lost");
    assert!(errors > 0, "the old failure: I/O errors seen: {done:?}");
    lab.stop();
}

#[test]
fn qemu_vios_that_never_comes_back_ends_in_an_orderly_shutdown() {
    let mut g = GuestPlan::writer("n-gone", 0x5301, true);
    g.extra_cmdline = "vios_connect_ms=2000".into();
    let (mut lab, _s) = lab("nb", vec![g], Duration::from_secs(1));
    ready(&mut lab, "n-gone");
    // PAUSE … DISCONNECT, then the VIOS is stopped and never restarted.
    let paused = {
        let mut v = lab.vios.lock().unwrap();
        let p = lparhv::storage::pause::pause_and_disconnect(&lab.system, "vios1", &PauseLimits::default()).unwrap();
        v.stop(Duration::from_secs(2)).unwrap();
        // Keep the watcher from "repairing" it: hold the lock while waiting.
        let lg = lab.guests.iter_mut().find(|g| g.plan.name == "n-gone").unwrap();
        let (off, _) = lg.guest.wait_event("vios_offline", Duration::from_secs(30)).unwrap();
        eprintln!("{off:?}");
        assert_eq!(off.get("reason"), Some("no_connect"));
        let (done, _) = lg.guest.wait_event("io_done", Duration::from_secs(30)).unwrap();
        assert_eq!((done.get("offline"), done.get("errors")), (Some("1"), Some("0")), "{done:?}");
        let exit = lg.guest.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(exit, GuestExit::Code(1), "orderly: exit code 1 (Failure), never panic (2) or exception (3)");
        let acked = num(&done, "acked");
        let c = vios::verify_writer_log(&lg.image, "data", lg.plan.seed, acked).unwrap();
        assert_eq!(c.lost, 0, "{c:?}");
        let _ = v.start_again();
        p
    };
    assert_eq!(paused.quiesced.len(), 1);
    lab.stop();
}

#[test]
fn qemu_power_button_ends_the_writer_with_its_acknowledgement_high_water_mark() {
    let (mut lab, _s) = lab("pb", vec![GuestPlan::writer("pb-1", 0x5401, true)], Duration::from_secs(1));
    ready(&mut lab, "pb-1");
    // Let it write on, so that the mark is unlikely to fall on an io_ack.
    std::thread::sleep(Duration::from_millis(1500));
    let id = lab.guest("pb-1").unwrap().id;
    let mut qmp = lab.qmps.lock().unwrap().remove(&id).unwrap();
    assert_eq!(qmp.execute("system_powerdown", None).unwrap(), serde_json::json!({}));
    let lg = lab.guest("pb-1").unwrap();
    let (done, _) = lg.guest.wait_event("io_done", Duration::from_secs(30)).unwrap();
    eprintln!("{done:?}");
    assert_eq!((done.get("cancelled"), done.get("errors")), (Some("1"), Some("0")), "{done:?}");
    assert_eq!(lg.guest.wait_exit(Duration::from_secs(20)).unwrap(), GuestExit::PoweredOff);
    // The high-water mark is exact, not rounded down to the last io_ack.
    let acked = num(&done, "acked");
    let last_ack_line = events_named(&lg.guest.console_log(), "io_ack").last().map(|(e, _)| num(e, "acked")).unwrap();
    assert!(acked >= last_ack_line, "{acked} < {last_ack_line}");
    let c = vios::verify_writer_log(&lg.image, "data", lg.plan.seed, acked).unwrap();
    assert_eq!((c.checked, c.intact, c.lost), (acked, acked, 0), "every acknowledged write up to the last one is on the image: {c:?}");
    lab.stop();
}

/// Write records `1..=upto` of writer `seed` to LV `data` of `image`, as the
/// guest's writer does; returns the LV's size in records.
fn write_log_on_host(image: &std::path::Path, seed: u64, seqs: std::ops::RangeInclusive<u64>) -> u64 {
    use proto::writer_log::{self, RECORD_SIZE};
    use rootvg::BlockDevice;
    let mut dev = rootvg::host::FileDevice::open(image, true).unwrap();
    let vg = rootvg::VolumeGroup::activate(&mut dev).unwrap();
    let map = vg.lv("data").unwrap();
    let blocks = map.size_bytes() / RECORD_SIZE as u64;
    let mut rec = [0u8; RECORD_SIZE];
    for seq in seqs {
        writer_log::encode(seed, seq, blocks, &mut rec);
        for s in map.map_bytes(writer_log::block_of(seq, blocks) * RECORD_SIZE as u64, RECORD_SIZE as u64).unwrap() {
            let at = s.offset as usize * 512;
            dev.write_sectors(s.lba, &rec[at..at + s.sectors as usize * 512]).unwrap();
        }
    }
    dev.flush().unwrap();
    blocks
}

/// Host-only (no QEMU): the checker's window is LV data's 8192 records;
/// a writer that wrapped past it is still checked, record by record, over
/// the newest 8192, and a loss anywhere in that window is found.
#[test]
fn writer_log_check_wraps_past_its_8192_record_window() {
    let dir = scratch("wrap");
    let image = dir.path().join("wrap.img");
    rootvg::host::create_image_from_toml(&lparhv::lab::rootvg_spec(), &image).unwrap();
    let seed = 0x5501;
    let acked = 8192 + 8192 / 2 + 37;
    let blocks = write_log_on_host(&image, seed, 1..=acked);
    assert_eq!(blocks, 8192, "the sample rootvg's LV data holds 8192 records");
    let c = vios::verify_writer_log(&image, "data", seed, acked).unwrap();
    assert_eq!((c.window, c.checked, c.intact, c.lost), (8192, 8192, 8192, 0), "{c:?}");

    // The newest acknowledged write did not land: its block still holds
    // the record one window older.
    write_log_on_host(&image, seed, acked - 8192..=acked - 8192);
    let c = vios::verify_writer_log(&image, "data", seed, acked).unwrap();
    assert_eq!((c.lost, c.first_losses[0]), (1, Some((acked, writer_log::LossKind::Older(acked - 8192)))), "{c:?}");
    write_log_on_host(&image, seed, acked..=acked);

    // The oldest record inside the window lost (overwritten by a record of
    // another writer); the one just outside the window is not checked.
    let oldest = acked - 8191;
    write_log_on_host(&image, seed + 1, oldest..=oldest);
    let c = vios::verify_writer_log(&image, "data", seed, acked).unwrap();
    assert_eq!((c.checked, c.lost, c.first_losses[0]), (8192, 1, Some((oldest, writer_log::LossKind::WrongSeed(seed + 1)))), "{c:?}");
    let c = vios::verify_writer_log(&image, "data", seed, acked + 1).unwrap();
    assert_eq!(c.first_losses[0].map(|l| l.0), Some(acked + 1), "acked + 1 was never written: {c:?}");
    assert_eq!(c.lost, 1, "record {oldest} fell out of the window once one more is acknowledged: {c:?}");
}
