//! A storage server configured in the system config, run by the real
//! daemon (`lparhv up` in-process), disturbed through the control socket
//! as `lparhv vios restart|crash` does: the registered guest doing checked
//! writes on its rootvg LUN sees PAUSE/RESUME on the planned restart and
//! is frozen and thawed on the crash, with no I/O error; afterwards every
//! acknowledged write is read back from the image. Nothing is left
//! running: the daemon's stop kills the guest and the storage daemon,
//! which the test checks by pid.

use lparhv::config::SystemConfig;
use lparhv::control::{self, ControlRequest, ViosAction};
use lparhv::daemon::Daemon;
use lparhv::owner::OsCookieSource;
use lparhv::state::{Runtime, StatusView};
use lparhv::storage::served::ServerView;
use lparhv::storage::vios;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::events::{num, Events};
use support::image::{accel, kernel, scratch};

mod support;

const SEED: u64 = 0x5d01;
const WRITES: u64 = 4000;

fn vios_op(control: &Path, action: ViosAction, name: &str) -> Value {
    let reply = control::request(control, &ControlRequest::Vios { action, name: Some(name.into()) }).unwrap();
    assert!(reply.ok, "{action:?}: {reply:?}");
    reply.result.unwrap()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is not running anything; its parent (this process) reaps.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[test]
fn qemu_configured_vios_restart_and_crash_through_the_control_socket() {
    let t0 = Instant::now();
    let kernel = kernel();
    let accel = accel();
    let scratch = scratch("vd");
    let dir = scratch.path();
    let image = dir.join("lun0.img");
    rootvg::host::create_image_from_toml(&lparhv::lab::rootvg_spec(), &image).unwrap();
    let text = format!(
        "[system]\nname = \"vd-{pid}\"\nstate_dir = \"{st}\"\n\n\
         [[vios]]\nname = \"vios1\"\ndown_ms = 1000\npause_complete_ms = 2000\nluns = [ {{ name = \"lun0\", image = \"{img}\" }} ]\n\n\
         [[partition]]\nname = \"vd1\"\nmemory_mib = 64\nimage = \"{k}\"\ncmdline = \"quiet hcall=on vios_test=writer:{SEED} vios_test_stop_after={WRITES}\"\nluns = [\"vios1:lun0\"]\n",
        pid = std::process::id(),
        st = dir.join("st").display(),
        img = image.display(),
        k = kernel.display(),
    );
    let path = dir.join("system.toml");
    std::fs::write(&path, &text).unwrap();
    let config = SystemConfig::load(&path).unwrap();
    config.check_files().unwrap();
    let control = lparhv::state::control_socket_path(&config.state_dir);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut daemon = rt.block_on(Daemon::start(&config, Box::new(OsCookieSource))).unwrap();
    daemon.start_partitions(accel, false).unwrap();
    let system = daemon.system().clone();
    let mut log = Events::new("vd1", &daemon.slots().console("vd1").unwrap());
    let list: Vec<ServerView> =
        serde_json::from_value(control::call(&control, &ControlRequest::Vios { action: ViosAction::List, name: None }).unwrap()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].running, list[0].initiators.clone()), (true, vec!["vd1".to_string()]), "{list:?}");
    let mut pids: Vec<u32> = list[0].pid.into_iter().collect();

    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reg = log.wait_name("vios_registered", Duration::from_secs(30));
        assert_eq!((reg.get("ok"), reg.get("server")), (Some("1"), Some("vios1")), "vios= came from the config: {reg:?}");
        log.wait_name("io_ack", Duration::from_secs(30));

        // Planned: PAUSE/RESUME around a graceful restart.
        let r = vios_op(&control, ViosAction::Restart, "vios1");
        eprintln!("restart report: {r:#}");
        let quiesced: Vec<&str> = r["quiesced"].as_array().unwrap().iter().map(|q| q["partition"].as_str().unwrap()).collect();
        assert_eq!(quiesced, vec!["vd1"], "{r}");
        assert!(names(&r["not_quiesced"]).is_empty() && names(&r["no_session"]).is_empty(), "{r}");
        let pc = log.wait_name("vios_pause_complete", Duration::from_secs(10));
        assert_eq!(pc.get("ok"), Some("1"), "{pc:?}");
        let res = log.wait_name("vios_resume", Duration::from_secs(10));
        eprintln!("guest: {pc:?} {res:?}");
        let ack = log.wait_name("io_ack", Duration::from_secs(20));
        eprintln!("writing again after RESUME: {ack:?}");

        // Unplanned: the storage daemon is killed; lparhv freezes vd1.
        let f = vios_op(&control, ViosAction::Crash, "vios1");
        eprintln!("crash report: {f:#}");
        assert!(f["error"].is_null(), "{f}");
        let frozen = f["frozen"].as_array().unwrap();
        assert_eq!(frozen.len(), 1, "{f}");
        assert_eq!(frozen[0]["partition"], "vd1");
        assert!(frozen[0]["error"].is_null(), "{f}");
        assert!(f["outage_ms"].as_f64().unwrap() >= 1000.0, "down_ms respected: {f}");
        let to_stop = f["qmp_connect_ms"].as_f64().unwrap() + f["freeze_all_ms"].as_f64().unwrap();
        assert!(to_stop < 1000.0, "stop issued well inside the 5 s reconnect-delay: {f}");
        let th = log.wait_name("thawed", Duration::from_secs(20));
        assert!(num(&th, "frozen_ms") >= 900, "{th:?}");
        let rv = log.wait_name("rootvg_reverified", Duration::from_secs(20));
        assert_eq!(rv.get("ok"), Some("1"), "{rv:?}");
        eprintln!("guest: {th:?}");

        let done = log.wait_name("io_done", Duration::from_secs(60));
        eprintln!("{done:?}");
        assert_eq!((num(&done, "acked"), num(&done, "errors")), (WRITES, 0), "no I/O error, every write acknowledged: {done:?}");
        let acked_at_crash = num(&ack, "acked");
        assert!(acked_at_crash < WRITES, "the writer was still writing when the server crashed ({acked_at_crash})");
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let st: StatusView = serde_json::from_value(control::call(&control, &ControlRequest::Status).unwrap()).unwrap();
            match &st.partitions.iter().find(|p| p.name == "vd1").unwrap().runtime {
                Runtime::Exited { how, .. } => {
                    assert_eq!(how, "Code(0)", "the guest ended successfully");
                    break;
                }
                other => assert!(Instant::now() < until, "vd1 still {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let list: Vec<ServerView> =
            serde_json::from_value(control::call(&control, &ControlRequest::Vios { action: ViosAction::List, name: None }).unwrap())
                .unwrap();
        assert_eq!((list[0].starts, list[0].running), (3, true), "started, restarted, recovered: {list:?}");
        list[0].pid
    }));
    if let Ok(Some(p)) = &run {
        pids.push(*p);
    }
    rt.block_on(daemon.stop());
    drop(system);
    rt.shutdown_timeout(Duration::from_secs(2));
    for p in &pids {
        assert!(!alive(*p), "storage daemon {p} still running after down");
    }
    assert!(!control.exists(), "control socket removed");
    if let Err(e) = run {
        std::panic::resume_unwind(e);
    }
    let c = vios::verify_writer_log(&image, "data", SEED, WRITES).unwrap();
    assert_eq!((c.checked, c.lost), (WRITES, 0), "every acknowledged write read back: {c:?}");
    eprintln!("whole test {:?}", t0.elapsed());
}
