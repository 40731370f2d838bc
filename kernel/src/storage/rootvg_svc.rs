//! The rootvg service: at boot (`rootvg=on`, or implied by `vios_test=`)
//! activate the volume group on the first virtio-blk disk, open LVs
//! `config` and `data`, and offer services a block API on them whose
//! durable write is acknowledged only after a flush. Also the
//! `vios_test=writer:<seed>` service (continuous checked writes to `data`).
//! Contract and events: docs/vios.md.

use crate::devices::{self, BlockDevice};
use crate::executor::Reactor;
use crate::rootvg_io::{self, AsyncBlockDevice, AsyncLv};
use crate::runtime::console::{ev, event};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use drivers::virtio;
use proto::event::{keys, names};
use proto::writer_log::{self, RECORD_SIZE};
use rootvg::{IoError, VolumeGroup};
use spin::{Mutex, Once};

/// The kernel's virtio-blk driver as rootvg's asynchronous device.
impl AsyncBlockDevice for BlockDevice {
    fn sector_count(&self) -> u64 {
        self.capacity()
    }
    async fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        BlockDevice::read(self, lba, buf).await.map_err(io_error)
    }
    async fn write(&self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        BlockDevice::write(self, lba, buf).await.map_err(io_error)
    }
    async fn flush(&self) -> Result<(), IoError> {
        BlockDevice::flush(self).await.map_err(io_error)
    }
}

/// virtio-blk status byte for "I/O error" (VIRTIO_BLK_S_IOERR).
const VIRTIO_BLK_S_IOERR: u8 = 1;

fn io_error(e: virtio::Error) -> IoError {
    match e {
        virtio::Error::Status(s) => IoError::Device(u32::from(s)),
        virtio::Error::BadRequest => IoError::OutOfRange,
        // The driver's own time limit: the device (storage server) did not
        // answer. The request may still complete later.
        virtio::Error::Protocol(_) => IoError::Unavailable,
        _ => IoError::Device(0x100),
    }
}

fn io_error_text(e: &rootvg::Error) -> String {
    match e {
        rootvg::Error::Io(IoError::Device(s)) if *s == u32::from(VIRTIO_BLK_S_IOERR) => "virtio-blk IOERR".to_string(),
        other => format!("{other}"),
    }
}

/// The active rootvg and its two LVs.
pub struct RootVg {
    pub vg: Mutex<VolumeGroup>,
    pub dev: Arc<BlockDevice>,
    pub config: AsyncLv<BlockDevice>,
    pub data: AsyncLv<BlockDevice>,
}

static ROOTVG: Once<Arc<RootVg>> = Once::new();

/// The active rootvg, for services (None before activation or if it failed).
#[allow(dead_code)] // the block API for services; the writer gets it directly
pub fn rootvg() -> Option<Arc<RootVg>> {
    ROOTVG.get().cloned()
}

/// Activate the rootvg on the first disk. Prints `rootvg_active` or
/// `rootvg_error`.
pub async fn bring_up() -> Option<Arc<RootVg>> {
    if let Some(r) = ROOTVG.get() {
        return Some(r.clone());
    }
    let result = async {
        let dev = devices::first_blk().ok_or("no virtio-blk disk")?;
        let vg = rootvg_io::activate(&*dev).await.map_err(|e| format!("activation on {}: {e}", dev.bdf))?;
        let shared = Arc::new(vg.clone());
        let config = AsyncLv::open(shared.clone(), "config", dev.clone()).map_err(|e| format!("LV config: {e}"))?;
        let data = AsyncLv::open(shared, "data", dev.clone()).map_err(|e| format!("LV data: {e}"))?;
        Ok::<_, String>(RootVg { vg: Mutex::new(vg), dev, config, data })
    }
    .await;
    match result {
        Ok(r) => {
            let r = ROOTVG.call_once(|| Arc::new(r)).clone();
            {
                let vg = r.vg.lock();
                event(
                    ev("rootvg_active")
                        .field("vg", vg.label().vg_name)
                        .field("uuid", vg.label().vg_uuid)
                        .field("generation", vg.generation())
                        .field("lvs", vg.lvs().count())
                        .field("slot", vg.current_slot())
                        .field("disk", &r.dev.bdf),
                );
            }
            log::info!("rootvg: LV config {} KiB, LV data {} KiB", r.config.size_bytes() / 1024, r.data.size_bytes() / 1024);
            Some(r)
        }
        Err(e) => {
            log::error!("rootvg: {e}");
            event(ev("rootvg_error").field(keys::ERROR, e));
            None
        }
    }
}

/// Re-read the metadata after an I/O outage and print `rootvg_reverify`.
async fn reverify(r: &RootVg) -> bool {
    let mut vg = r.vg.lock().clone();
    let result = rootvg_io::reverify(&mut vg, &*r.dev).await;
    match &result {
        Ok(()) => {
            let generation = vg.generation();
            *r.vg.lock() = vg;
            event(ev("rootvg_reverify").field(keys::OK, 1).field("generation", generation));
        }
        Err(e) => event(ev("rootvg_reverify").field(keys::OK, 0).field(keys::ERROR, format!("{e}"))),
    }
    result.is_ok()
}

/// Acknowledged writes between two `io_ack` events.
const ACK_EVERY: u64 = 50;
/// An acknowledged write that took longer than this is reported (`io_slow`).
const SLOW_US: u64 = 100_000;

/// The writer's running totals. Its `io_done` line is the acknowledgement
/// high-water mark the host checks the image against, so it is printed
/// however the writer ends: by itself ([`Tally::done`]) or stopped by the
/// orderly shutdown (power button), which calls [`writer_stopped`]
/// (`cancelled=1`).
#[derive(Clone, Default)]
struct Tally {
    acked: u64,
    errors: u64,
    retries: u64,
    max_ack_us: u64,
    gave_up: bool,
    offline: bool,
}

/// The running writer's totals as of its last change (None: no writer, or
/// it has printed its `io_done`).
static LIVE_TALLY: Mutex<Option<Tally>> = Mutex::new(None);

impl Tally {
    fn report(&self, cancelled: bool) {
        event(
            ev(names::IO_DONE)
                .field(keys::ACKED, self.acked)
                .field("errors", self.errors)
                .field("retries", self.retries)
                .field("max_ack_us", self.max_ack_us)
                .field("gave_up", self.gave_up as u8)
                .field("offline", self.offline as u8)
                .field("cancelled", cancelled as u8),
        );
    }

    /// Make these totals the ones a shutdown would report.
    fn publish(&self) {
        *LIVE_TALLY.lock() = Some(self.clone());
    }

    /// The writer ended by itself: print `io_done`; whether no write failed.
    fn done(self) -> bool {
        LIVE_TALLY.lock().take();
        self.report(false);
        self.errors == 0 && !self.gave_up && !self.offline
    }
}

/// The orderly shutdown stopped the services: print the running writer's
/// `io_done` (its exact count of acknowledged writes), if there is one.
/// Call it after cancelling the writer's task.
pub fn writer_stopped() {
    let live = LIVE_TALLY.lock().take();
    if let Some(t) = live {
        t.report(true);
    }
}

/// `vios_test=writer:<seed>`: continuous checked writes to LV `data`
/// (record format: `proto::writer_log`). Returns whether no write
/// failed.
///
/// Each record is timed twice: `us` from submission to acknowledgement
/// (reactor time), and `held_us` from the moment the record was ready,
/// before the PAUSE gate, to its acknowledgement, on the guest's own clock
/// (`time::now_ns`, which a freeze stops under TCG and jumps under KVM):
/// the longest time an I/O of this partition was held. `io_ack` carries the
/// longest `held_us` of its 50 records.
pub async fn writer(spec: String, stop_after: Option<u64>, reactor: Arc<Reactor>) -> bool {
    let seed = match writer_log::parse_writer_spec(&spec) {
        Ok(s) => s,
        Err(e) => {
            event(
                ev(names::IO_DONE)
                    .field(keys::ACKED, 0)
                    .field("errors", 0)
                    .field("retries", 0)
                    .field(keys::ERROR, format!("vios_test={spec}: {e}")),
            );
            return false;
        }
    };
    let Some(r) = bring_up().await else {
        event(ev(names::IO_DONE).field(keys::ACKED, 0).field("errors", 0).field("retries", 0).field(keys::ERROR, "no rootvg"));
        return false;
    };
    let blocks = r.data.size_bytes() / RECORD_SIZE as u64;
    if blocks == 0 {
        event(
            ev(names::IO_DONE)
                .field(keys::ACKED, 0)
                .field("errors", 0)
                .field("retries", 0)
                .field(keys::ERROR, "LV data smaller than one record"),
        );
        return false;
    }
    event(ev("io_start").field("seed", seed).field("blocks", blocks).field("stop_after", stop_after.unwrap_or(0)));
    let mut t = Tally::default();
    t.publish();
    let mut window_max_held_us = 0u64;
    let mut rec = [0u8; RECORD_SIZE];
    let mut seq = 1u64;
    while stop_after.is_none_or(|n| t.acked < n) {
        // After a freeze: the disk was away while we were stopped; check
        // the VG before trusting it further.
        if crate::vios::events::take_reverify() {
            let ok = reverify(&r).await;
            event(ev("rootvg_reverified").field(keys::OK, ok as u8).field("why", "thawed"));
            if !ok {
                t.gave_up = true;
                break;
            }
        }
        let ready = crate::hal::time::now_ns();
        // PAUSE/RESUME: wait while the storage server is paused; stop for
        // good once it was declared offline (orderly shutdown).
        let Ok(_ticket) = crate::vios::events::enter().await else {
            t.offline = true;
            break;
        };
        writer_log::encode(seed, seq, blocks, &mut rec);
        let offset = writer_log::block_of(seq, blocks) * RECORD_SIZE as u64;
        let started = reactor.now_ns();
        let mut attempt = 0u32;
        loop {
            match r.data.write_durable(offset, &rec).await {
                Ok(()) => break,
                Err(e) => {
                    t.errors += 1;
                    t.publish();
                    event(ev(names::IO_ERROR).field(keys::SEQ, seq).field("attempt", attempt).field(keys::ERROR, io_error_text(&e)));
                    attempt += 1;
                    if attempt > writer_log::MAX_RETRIES {
                        t.gave_up = true;
                        break;
                    }
                    t.retries += 1;
                    t.publish();
                    let delay = writer_log::backoff_ms(attempt);
                    event(ev("io_retry").field(keys::SEQ, seq).field("attempt", attempt).field("delay_ms", delay));
                    reactor.sleep_ms(delay).await;
                }
            }
        }
        if t.gave_up {
            break;
        }
        let took_us = reactor.now_ns().saturating_sub(started) / 1000;
        let held_us = crate::hal::time::now_ns().saturating_sub(ready) / 1000;
        t.max_ack_us = t.max_ack_us.max(took_us);
        window_max_held_us = window_max_held_us.max(held_us);
        t.acked += 1;
        t.publish();
        if took_us > SLOW_US {
            event(ev("io_slow").field(keys::SEQ, seq).field("us", took_us).field("held_us", held_us).field("attempts", attempt + 1));
        }
        if attempt > 0 {
            // The disk was away: check the VG is still the one we activated
            // before trusting it further.
            if !reverify(&r).await {
                t.gave_up = true;
                break;
            }
        }
        if t.acked.is_multiple_of(ACK_EVERY) {
            event(
                ev(names::IO_ACK)
                    .field(keys::SEQ, seq)
                    .field(keys::ACKED, t.acked)
                    .field(keys::MAX_HELD_US, core::mem::take(&mut window_max_held_us)),
            );
        }
        seq += 1;
    }
    t.done()
}

/// `vios_test=bench`: rootvg throughput on LV `data` at queue depth 1
/// (one request at a time, as the services use it): 4 KiB random writes
/// (then one flush, counted), 4 KiB random reads, sequential 64 KiB writes
/// (then a flush) and reads over 16 MiB. One `@ev vios_bench` line per
/// kind; the guest exits when done.
pub async fn bench(reactor: Arc<Reactor>) -> bool {
    let Some(r) = bring_up().await else {
        event(ev(names::VIOS_BENCH).field(keys::ERROR, "no rootvg"));
        return false;
    };
    const RANDOM_OPS: u64 = 2000;
    const SEQ_BYTES: u64 = 16 << 20;
    const SEQ_CHUNK: usize = 64 * 1024;
    let blocks = r.data.size_bytes() / 4096;
    if blocks == 0 || r.data.size_bytes() < SEQ_BYTES {
        event(ev(names::VIOS_BENCH).field(keys::ERROR, "LV data too small"));
        return false;
    }
    let mut buf = alloc::vec![0u8; SEQ_CHUNK];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_block = || {
        x = proto::pattern::splitmix64(x);
        x % blocks
    };
    let report = |kind: &str, ops: u64, bytes: u64, ns: u64| {
        let ns = ns.max(1);
        event(
            ev(names::VIOS_BENCH)
                .field(keys::KIND, kind)
                .field("ops", ops)
                .field("us", ns / 1000)
                .field(keys::IOPS, ops * 1_000_000_000 / ns)
                .field(keys::KIB_S, bytes * 1_000_000_000 / 1024 / ns),
        );
    };
    let t = reactor.now_ns();
    for i in 0..RANDOM_OPS {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        if r.data.write_at(next_block() * 4096, &buf[..4096]).await.is_err() {
            event(ev(names::VIOS_BENCH).field(keys::ERROR, "random write failed"));
            return false;
        }
    }
    let flushed = r.data.flush().await.is_ok();
    report("randwrite_4k", RANDOM_OPS, RANDOM_OPS * 4096, reactor.now_ns() - t);
    let t = reactor.now_ns();
    for _ in 0..RANDOM_OPS {
        if r.data.read_at(next_block() * 4096, &mut buf[..4096]).await.is_err() {
            event(ev(names::VIOS_BENCH).field(keys::ERROR, "random read failed"));
            return false;
        }
    }
    report("randread_4k", RANDOM_OPS, RANDOM_OPS * 4096, reactor.now_ns() - t);
    let chunks = SEQ_BYTES / SEQ_CHUNK as u64;
    let t = reactor.now_ns();
    for c in 0..chunks {
        if r.data.write_at(c * SEQ_CHUNK as u64, &buf).await.is_err() {
            event(ev(names::VIOS_BENCH).field(keys::ERROR, "sequential write failed"));
            return false;
        }
    }
    let flushed = flushed && r.data.flush().await.is_ok();
    report("seqwrite_64k", chunks, SEQ_BYTES, reactor.now_ns() - t);
    let t = reactor.now_ns();
    for c in 0..chunks {
        if r.data.read_at(c * SEQ_CHUNK as u64, &mut buf).await.is_err() {
            event(ev(names::VIOS_BENCH).field(keys::ERROR, "sequential read failed"));
            return false;
        }
    }
    report("seqread_64k", chunks, SEQ_BYTES, reactor.now_ns() - t);
    event(ev(names::VIOS_BENCH).field(keys::KIND, "done").field("flushed", flushed as u8));
    flushed
}
