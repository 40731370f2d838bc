//! QEMU integration tests of ACPI PCI hot-plug (seed 004, Figures 5, 6, 14,
//! 15, 17) and the ACPI power button, driven through QMP, on q35 (devices
//! into cold-plugged `pcie-root-port`s) and on pc (the hot-pluggable root
//! bus). Every test is bounded in time; every QEMU is killed when its
//! `Guest` drops.

mod support;
use support::events::num;
use support::image::{kernel, scratch};

use lparhv::machine::qemu::{self, AccelChoice, Guest, GuestExit, GuestSpec, Machine};
use lparhv::machine::qmp::Qmp;
use lparhv::Event;
use proto::pattern;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const T: Duration = Duration::from_secs(30);
const DISK_BYTES: u64 = 8 << 20;

/// One guest with a QMP monitor, `ports` root ports (q35) and `disks`
/// block nodes `d0..` (raw images, not attached to any device yet).
struct Hp {
    guest: Guest,
    qmp: Qmp,
    dir: TempDir,
    machine: Machine,
}

impl Hp {
    fn start(tag: &str, machine: Machine, ports: usize, disks: usize, cmdline: &str) -> Hp {
        Self::start_with(tag, machine, ports, disks, cmdline, Vec::new())
    }

    fn start_with(tag: &str, machine: Machine, ports: usize, disks: usize, cmdline: &str, mut extra: Vec<String>) -> Hp {
        let dir = scratch(tag);
        let d = qemu::choose_accel(AccelChoice::Auto, &kernel()).unwrap();
        let mut spec = GuestSpec::new(tag, &kernel(), d.accel);
        spec.machine = machine;
        spec.cmdline = format!("quiet {cmdline}");
        let sock = dir.path().join("qmp.sock");
        spec.extra = vec!["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())];
        if machine == Machine::Q35 {
            for i in 0..ports {
                spec.extra.push("-device".into());
                spec.extra.push(format!("pcie-root-port,id=rp{i},chassis={},bus=pcie.0,addr={:#x}", i + 1, i + 2));
            }
        }
        for i in 0..disks {
            let img = dir.path().join(format!("d{i}.img"));
            std::fs::File::create(&img).unwrap().set_len(DISK_BYTES).unwrap();
            spec.extra.push("-blockdev".into());
            spec.extra.push(format!("driver=raw,node-name=d{i},file.driver=file,file.filename={}", img.display()));
        }
        spec.extra.append(&mut extra);
        let mut guest = Guest::spawn(&spec, false).unwrap();
        let qmp = Qmp::connect(&sock, T).unwrap();
        guest.wait_event("hotplug_ready", T).unwrap();
        guest.wait_event("ready", T).unwrap();
        Hp { guest, qmp, dir, machine }
    }

    fn image(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}.img"))
    }

    /// device_add a virtio disk on node `node` (into root port `port` on q35).
    fn add(&mut self, id: &str, node: &str, port: usize) {
        let bus = format!("rp{port}");
        let mut props = vec![("drive", node)];
        if self.machine == Machine::Q35 {
            props.push(("bus", bus.as_str()));
        }
        self.qmp.device_add("virtio-blk-pci", id, &props).unwrap();
    }

    fn wait(&mut self, name: &str) -> Event {
        self.guest.wait_event(name, T).unwrap().0
    }

    /// device_del `id` and wait for the guest's eject and DEVICE_DELETED.
    fn remove(&mut self, id: &str) -> Event {
        self.qmp.device_del(id).unwrap();
        let ev = self.guest.wait_event_where(T, |e| e.name == "hotplug_remove").unwrap().0;
        assert_eq!((ev.get("reason"), ev.get("ok")), (Some("eject"), Some("1")), "{ev:?}");
        self.qmp.wait_device_deleted(id, T).unwrap();
        ev
    }
}

fn add_remove_cycle(machine: Machine, tag: &str) {
    let mut hp = Hp::start(tag, machine, 2, 1, "");
    hp.add("hp0", "d0", 1);
    let add = hp.wait("hotplug_add");
    assert_eq!((add.get("kind"), add.get("sectors")), (Some("blk"), Some("16384")), "{add:?}");
    let bdf = add.get("bdf").unwrap().to_string();
    if machine == Machine::Q35 {
        assert!(bdf.ends_with(":00.0") && bdf != "00:00.0", "behind a root port: {bdf}");
    }
    let rem = hp.remove("hp0");
    assert_eq!(rem.get("bdf"), Some(bdf.as_str()));
    // The slot is free again: QEMU accepts the same device id once more.
    hp.add("hp0", "d0", 0);
    hp.wait("hotplug_add");
    hp.remove("hp0");
    assert!(hp.guest.is_running());
}

#[test]
fn qemu_q35_hot_add_then_eject() {
    add_remove_cycle(Machine::Q35, "q35-cycle");
}

#[test]
fn qemu_pc_hot_add_then_eject() {
    add_remove_cycle(Machine::Pc, "pc-cycle");
}

#[test]
fn qemu_q35_two_devices_in_flight() {
    let mut hp = Hp::start("q35-two", Machine::Q35, 2, 2, "");
    hp.add("hpa", "d0", 0);
    hp.add("hpb", "d1", 1);
    let a = hp.wait("hotplug_add");
    let b = hp.wait("hotplug_add");
    assert_ne!(a.get("bdf"), b.get("bdf"));
    // Both removals requested before either is done.
    hp.qmp.device_del("hpa").unwrap();
    hp.qmp.device_del("hpb").unwrap();
    let mut removed = Vec::new();
    for _ in 0..2 {
        let ev = hp.guest.wait_event_where(T, |e| e.name == "hotplug_remove").unwrap().0;
        assert_eq!(ev.get("ok"), Some("1"), "{ev:?}");
        removed.push(ev.get("bdf").unwrap().to_string());
    }
    removed.sort();
    let mut added = vec![a.get("bdf").unwrap().to_string(), b.get("bdf").unwrap().to_string()];
    added.sort();
    assert_eq!(removed, added);
    hp.qmp.wait_device_deleted("hpa", T).unwrap();
    hp.qmp.wait_device_deleted("hpb", T).unwrap();
}

/// `n` hot-add / hot-remove cycles, alternating between two slots (two
/// root ports on q35; on pc QEMU picks the slot). The figures after the
/// last cycle must equal those after the first cycle in each slot: the
/// first use of a slot's BAR window maps it, which allocates page tables
/// once, so the baseline is taken after cycle 2. Vectors and BAR space
/// must match exactly, the heap within a small slack.
fn cycles(machine: Machine, tag: &str, n: usize) {
    let mut hp = Hp::start(tag, machine, 2, 1, "");
    let mut all = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        hp.add("hp0", "d0", i % 2);
        hp.wait("hotplug_add");
        hp.qmp.device_del("hp0").unwrap();
        let stats = hp.wait("hotplug_stats");
        hp.qmp.wait_device_deleted("hp0", T).unwrap();
        all.push(stats);
    }
    let heap: Vec<u64> = all.iter().map(|e| num(e, "heap_used")).collect();
    eprintln!("{tag}: {n} cycles in {:?}; heap_used per cycle {heap:?}", started.elapsed());
    let (first, last) = (all[1].clone(), all[n - 1].clone());
    assert_eq!(num(&first, "vectors_free"), num(&last, "vectors_free"), "MSI-X vectors leaked");
    assert_eq!(num(&first, "bar_free"), num(&last, "bar_free"), "BAR space leaked");
    let (h0, h1) = (num(&first, "heap_used"), num(&last, "heap_used"));
    assert!(h1 <= h0 + 4096, "heap grew from {h0} to {h1} bytes over {n} cycles");
    // Steady state: not one byte more over the second half.
    assert_eq!(heap[n / 2], heap[n - 1], "heap grows cycle after cycle");
}

#[test]
fn qemu_q35_100_cycles_without_leaks() {
    cycles(Machine::Q35, "q35-100", 100);
}

#[test]
fn qemu_pc_cycles_without_leaks() {
    cycles(Machine::Pc, "pc-20", 20);
}

/// Eject while the guest writes, flushes and verifies continuously: the
/// guest stops cleanly, and every sector it reported flushed is on the
/// host's image.
fn eject_during_io(machine: Machine, tag: &str) {
    let seed = 4242;
    let mut hp = Hp::start(tag, machine, 1, 1, &format!("hotplug_test=io hotplug_seed={seed}"));
    hp.add("hp0", "d0", 0);
    hp.wait("hotplug_add");
    std::thread::sleep(Duration::from_millis(700));
    hp.qmp.device_del("hp0").unwrap();
    let io = hp.wait("hotplug_io");
    assert_eq!(io.get("ok"), Some("1"), "{io:?}");
    let writes = num(&io, "writes");
    let acked = num(&io, "acked_sectors");
    assert!(writes >= 2 && acked >= 16, "the loop ran: {io:?}");
    hp.qmp.wait_device_deleted("hp0", T).unwrap();
    let image = std::fs::read(hp.image(0)).unwrap();
    assert!(acked <= image.len() as u64 / 512);
    assert_eq!(pattern::mismatched_sectors(seed, &image, acked), Vec::<u64>::new(), "acknowledged writes lost");
    eprintln!("{tag}: {writes} passes, {acked} sectors acknowledged and found on the host");
}

#[test]
fn qemu_q35_eject_during_io_loses_no_acknowledged_write() {
    eject_during_io(Machine::Q35, "q35-io");
}

#[test]
fn qemu_pc_eject_during_io_loses_no_acknowledged_write() {
    eject_during_io(Machine::Pc, "pc-io");
}

/// Figure 17: the backend fails (blkdebug injects EIO for writes that
/// touch sector 160): the guest takes the disk out itself, QEMU reports
/// DEVICE_DELETED without any device_del, and the guest keeps running.
#[test]
fn qemu_q35_backend_failure_removes_the_device() {
    let dir_img = scratch("q35-err-img");
    let img = dir_img.path().join("bad.img");
    std::fs::File::create(&img).unwrap().set_len(DISK_BYTES).unwrap();
    let node = format!(
        r#"{{"driver":"raw","node-name":"bad","file":{{"driver":"blkdebug","inject-error":[{{"event":"write_aio","errno":5,"sector":160}}],"image":{{"driver":"file","filename":"{}"}}}}}}"#,
        img.display()
    );
    let mut hp = Hp::start_with("q35-err", Machine::Q35, 1, 0, "hotplug_test=io", vec!["-blockdev".into(), node]);
    hp.add("hpx", "bad", 0);
    hp.wait("hotplug_add");
    let io = hp.wait("hotplug_io");
    assert_eq!(io.get("ok"), Some("0"), "{io:?}");
    assert_eq!(num(&io, "acked_sectors"), 160, "{io:?}");
    let rem = hp.wait("hotplug_remove");
    assert_eq!((rem.get("reason"), rem.get("ok")), (Some("error"), Some("1")), "{rem:?}");
    hp.qmp.wait_device_deleted("hpx", T).unwrap();
    assert!(hp.guest.is_running());
    assert_eq!(hp.qmp.query_status().unwrap(), ("running".to_string(), true));
}

fn power_button(machine: Machine, tag: &str) {
    let mut hp = Hp::start(tag, machine, 1, 1, "hotplug_test=io");
    hp.add("hp0", "d0", 0);
    hp.wait("hotplug_add");
    let r = hp.qmp.execute("system_powerdown", None).unwrap();
    assert_eq!(r, serde_json::json!({}));
    hp.wait("power_button");
    let sd = hp.wait("shutdown");
    assert_eq!((sd.get("reason"), sd.get("disks_flushed")), (Some("power_button"), Some("1")), "{sd:?}");
    assert_eq!(hp.guest.wait_exit(T).unwrap(), GuestExit::PoweredOff);
}

#[test]
fn qemu_q35_power_button_shuts_down_in_order() {
    power_button(Machine::Q35, "q35-pwr");
}

#[test]
fn qemu_pc_power_button_shuts_down_in_order() {
    power_button(Machine::Pc, "pc-pwr");
}
