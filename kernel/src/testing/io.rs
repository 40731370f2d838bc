//! Guest services the integration tests drive from the kernel command line
//! (contract in docs/drivers.md): `disk_test=`, `console_test=`, and the
//! network roles (`ip=`, `net_role=`, `peer=`, `count=`).

use crate::devices;
use crate::runtime::console::{ev, event};
use crate::testing::spec::parse_disk_test;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use proto::pattern::{fill_sector, sector_matches, SECTOR};

/// Sectors per disk request batch in the test.
const BATCH: u64 = 128;

/// Run the disk test; prints its event and returns whether it passed.
pub async fn disk_test(spec: String) -> bool {
    let parsed = parse_disk_test(&spec);
    let (write, seed, sectors) = match parsed {
        Ok(p) => p,
        Err(e) => {
            event(ev(if spec.starts_with("read") { "disk_read" } else { "disk_write" }).field("ok", 0).field("error", e));
            return false;
        }
    };
    let name = if write { "disk_write" } else { "disk_read" };
    let Some(disk) = devices::first_blk() else {
        event(ev(name).field("ok", 0).field("error", "no virtio-blk disk"));
        return false;
    };
    if sectors > disk.capacity() {
        event(ev(name).field("ok", 0).field("error", format!("{sectors} sectors requested, disk has {}", disk.capacity())));
        return false;
    }
    log::info!("{name}: {sectors} sectors, seed {seed}, disk {}", disk.bdf);
    let mut buf = vec![0u8; (BATCH as usize) * SECTOR];
    if write {
        let mut s = 0;
        while s < sectors {
            let n = (sectors - s).min(BATCH);
            for (i, chunk) in buf[..n as usize * SECTOR].chunks_exact_mut(SECTOR).enumerate() {
                let sector: &mut [u8; SECTOR] = chunk.try_into().expect("exact chunk");
                fill_sector(seed, s + i as u64, sector);
            }
            if let Err(e) = disk.write(s, &buf[..n as usize * SECTOR]).await {
                event(ev(name).field("ok", 0).field("error", format!("write at sector {s}: {e}")));
                return false;
            }
            s += n;
        }
        if let Err(e) = disk.flush().await {
            event(ev(name).field("ok", 0).field("error", format!("flush: {e}")));
            return false;
        }
        event(ev(name).field("ok", 1).field("sectors", sectors).field("seed", seed));
        true
    } else {
        let (mut mismatches, mut first_bad) = (0u64, -1i64);
        let mut s = 0;
        while s < sectors {
            let n = (sectors - s).min(BATCH);
            if let Err(e) = disk.read(s, &mut buf[..n as usize * SECTOR]).await {
                event(ev(name).field("ok", 0).field("sectors", sectors).field("error", format!("read at sector {s}: {e}")));
                return false;
            }
            for (i, chunk) in buf[..n as usize * SECTOR].chunks_exact(SECTOR).enumerate() {
                let sector: &[u8; SECTOR] = chunk.try_into().expect("exact chunk");
                if !sector_matches(seed, s + i as u64, sector) {
                    mismatches += 1;
                    if first_bad < 0 {
                        first_bad = (s + i as u64) as i64;
                    }
                }
            }
            s += n;
        }
        let ok = mismatches == 0;
        event(ev(name).field("ok", ok as u8).field("sectors", sectors).field("mismatches", mismatches).field("first_bad", first_bad));
        ok
    }
}

/// Write `text` + newline to the first virtio console, then read one line
/// (up to 5 s). Passes when both happened.
pub async fn console_test(text: String, reactor: alloc::sync::Arc<crate::executor::Reactor>) -> bool {
    let Some(con) = devices::first_console() else {
        event(ev("console_write").field("ok", 0).field("error", "no virtio console"));
        return false;
    };
    log::info!("console_test on {}", con.bdf);
    let mut line = text.into_bytes();
    line.push(b'\n');
    let deadline = reactor.now_ns() + 5_000_000_000;
    let wrote = match con.write_all(&line, deadline).await {
        Ok(()) => {
            event(ev("console_write").field("ok", 1).field("bytes", line.len()));
            true
        }
        Err(e) => {
            event(ev("console_write").field("ok", 0).field("error", e.to_string()));
            false
        }
    };
    let deadline = reactor.now_ns() + 5_000_000_000;
    let read = match con.read_line(deadline).await {
        Ok(Some(l)) => {
            event(ev("console_read").field("ok", 1).field("line", l));
            true
        }
        Ok(None) => {
            event(ev("console_read").field("ok", 0).field("line", "").field("error", "timeout"));
            false
        }
        Err(e) => {
            event(ev("console_read").field("ok", 0).field("line", "").field("error", e.to_string()));
            false
        }
    };
    wrote && read
}

/// Sectors written per pass of the hot-plug I/O loop.
const HP_BATCH: u64 = 16;

/// `hotplug_test=io`: on every hot-added disk, write / flush / read back /
/// verify the disk pattern (seed `seed`), a new range of sectors each pass
/// (sectors `p*16 ..`, wrapping at the end of the disk), until the disk is
/// removed. Then `@ev hotplug_io ok=<1|0> writes=<passes> acked_sectors=<n>
/// seed=<s> bdf=<bdf>`: sectors `0..acked_sectors` were flushed (so the host
/// must find the pattern there). `ok=0` on a mismatch or an I/O error that
/// is not the removal.
pub async fn hotplug_io(disk: alloc::sync::Arc<devices::BlockDevice>, seed: u64) {
    let cap = disk.capacity();
    let mut buf = vec![0u8; HP_BATCH as usize * SECTOR];
    let mut back = vec![0u8; HP_BATCH as usize * SECTOR];
    let (mut passes, mut acked, mut error) = (0u64, 0u64, None::<String>);
    if cap < HP_BATCH {
        error = Some(format!("disk too small ({cap} sectors)"));
    }
    while error.is_none() {
        let start = (passes * HP_BATCH) % (cap - cap % HP_BATCH);
        for (i, chunk) in buf.chunks_exact_mut(SECTOR).enumerate() {
            let sector: &mut [u8; SECTOR] = chunk.try_into().expect("exact chunk");
            fill_sector(seed, start + i as u64, sector);
        }
        let r = async {
            disk.write(start, &buf).await?;
            disk.flush().await?;
            Ok::<_, drivers::virtio::Error>(())
        }
        .await;
        match r {
            Ok(()) => acked = acked.max(start + HP_BATCH),
            Err(drivers::virtio::Error::Removed) => break,
            Err(e) => {
                error = Some(format!("write at {start}: {e}"));
                break;
            }
        }
        match disk.read(start, &mut back).await {
            Ok(()) => {}
            Err(drivers::virtio::Error::Removed) => break,
            Err(e) => {
                error = Some(format!("read at {start}: {e}"));
                break;
            }
        }
        if back != buf {
            error = Some(format!("read-back mismatch at sector {start}"));
            break;
        }
        passes += 1;
    }
    let mut e = ev("hotplug_io")
        .field("ok", error.is_none() as u8)
        .field("writes", passes)
        .field("acked_sectors", acked)
        .field("seed", seed)
        .field("bdf", &disk.bdf);
    if let Some(err) = error {
        e = e.field("error", err);
    }
    event(e);
}

/// Sectors `hotplug_test=check` reads at most.
const CHECK_MAX_SECTORS: u64 = 4096;

/// `hotplug_test=check` (with `hotplug_seed`): read a hot-added disk from
/// sector 0 and count how many leading sectors hold the disk pattern of
/// that seed (what another partition's `hotplug_test=io` wrote):
/// `@ev hotplug_check bdf=<bdf> ok=<0|1> matched_sectors=<n>`.
pub async fn hotplug_check(disk: alloc::sync::Arc<devices::BlockDevice>, seed: u64) {
    let cap = disk.capacity().min(CHECK_MAX_SECTORS);
    let mut buf = vec![0u8; HP_BATCH as usize * SECTOR];
    let mut matched = 0u64;
    let mut error = None::<String>;
    'outer: while matched + HP_BATCH <= cap {
        if let Err(e) = disk.read(matched, &mut buf).await {
            error = Some(format!("read at {matched}: {e}"));
            break;
        }
        for chunk in buf.chunks_exact(SECTOR) {
            let sector: &[u8; SECTOR] = chunk.try_into().expect("exact chunk");
            if !sector_matches(seed, matched, sector) {
                break 'outer;
            }
            matched += 1;
        }
    }
    let mut line = ev("hotplug_check").field("bdf", disk.bdf.as_str()).field("ok", error.is_none() as u8).field("matched_sectors", matched);
    if let Some(e) = error {
        line = line.field("error", e);
    }
    event(line);
}
