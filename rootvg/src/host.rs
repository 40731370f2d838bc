//! host.rs — host-side tooling (feature `std`, never built into the guest):
//! the TOML image spec, creating an image file from it, `inspect` (human and
//! JSON summaries) and `check` (full validation with located messages), and
//! [`FileDevice`], a [`BlockDevice`] over a regular file.
//!
//! These are library functions; `lparhv rootvg create|inspect|check` wraps
//! them.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use proto::num::SizeError;
use serde::{Deserialize, Serialize};

use crate::activate::{choose, read_label, Slot};
use crate::device::{request_range, BlockDevice, IoError};
use crate::error::Error;
use crate::format::{
    Label, Name, Uuid, DEFAULT_EXTENT_SECTORS, DEFAULT_SLOT_SECTORS, MAX_EXTENT_SECTORS, MAX_SLOT_SECTORS, MIN_EXTENT_SECTORS,
    MIN_SLOT_SECTORS, SECTOR_SIZE,
};
use crate::metadata::{LvRecord, Metadata, Run, LV_FLAG_READ_ONLY};
use crate::VolumeGroup;

// ---------------------------------------------------------------------------
// errors

/// Failure of a host operation as a whole (as opposed to damage found by
/// `check`, which is reported in a [`CheckReport`]).
#[derive(Debug)]
pub enum HostError {
    Io { path: PathBuf, source: std::io::Error },
    Spec(String),
    Vg(Error),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            HostError::Spec(m) => write!(f, "spec: {}", m),
            HostError::Vg(e) => write!(f, "{}", e),
        }
    }
}

impl std::error::Error for HostError {}

impl From<Error> for HostError {
    fn from(e: Error) -> HostError {
        HostError::Vg(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------
// the spec

/// A size in bytes: an integer, or a string such as `"64MiB"`, `"4 KiB"`,
/// `"1G"` (binary multiples only).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// Parse `"<n>[K|KiB|M|MiB|G|GiB|T|TiB|B]"` (case-insensitive, spaces
/// allowed): `proto::num::parse_size` with this tool's messages.
pub fn parse_size(s: &str) -> Result<u64, String> {
    proto::num::parse_size(s).map_err(|e| match e {
        SizeError::BadNumber => format!("bad size {s:?}"),
        SizeError::BadUnit => format!("bad size unit in {s:?} (use KiB, MiB, GiB, TiB)"),
        SizeError::Overflow => format!("size {s:?} overflows"),
    })
}

/// One LV in a spec.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LvSpec {
    pub name: String,
    /// Rounded up to whole extents.
    pub size: Size,
    #[serde(default)]
    pub read_only: bool,
    /// Fixed UUID (for reproducible images); random when absent.
    #[serde(default)]
    pub uuid: Option<String>,
}

/// An image spec, usually read from TOML:
///
/// ```toml
/// vg_name = "rootvg"
/// device_size = "64MiB"
/// extent_size = "1MiB"          # optional, default 1 MiB
/// metadata_slot_size = "64KiB"  # optional, default 64 KiB
/// # uuid = "…"                  # optional, random when absent
///
/// [[lv]]
/// name = "config"
/// size = "4MiB"
///
/// [[lv]]
/// name = "data"
/// size = "32MiB"
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub vg_name: String,
    pub device_size: Size,
    #[serde(default)]
    pub extent_size: Option<Size>,
    #[serde(default)]
    pub metadata_slot_size: Option<Size>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default, rename = "lv")]
    pub lvs: Vec<LvSpec>,
}

/// A fresh random (version 4) UUID; the randomness comes from the OS via
/// std's hash-map seeding.
pub fn random_uuid() -> Uuid {
    let mut b = [0u8; 16];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid(b)
}

fn spec_uuid(s: &Option<String>, what: &str) -> Result<Uuid, HostError> {
    match s {
        None => Ok(random_uuid()),
        Some(t) => match Uuid::parse(t) {
            Some(u) if !u.is_nil() => Ok(u),
            _ => Err(HostError::Spec(format!("{}: bad UUID {:?}", what, t))),
        },
    }
}

impl Spec {
    pub fn from_toml(text: &str) -> Result<Spec, HostError> {
        toml::from_str(text).map_err(|e| HostError::Spec(e.to_string()))
    }

    /// Turn the spec into a label and an LV table: sizes checked and rounded
    /// up to extents, LVs allocated contiguously in spec order.
    pub fn plan(&self) -> Result<(Label, Vec<LvRecord>), HostError> {
        let bad = |m: String| HostError::Spec(m);
        let vg_name = Name::new(&self.vg_name).map_err(|e| bad(format!("vg_name {:?}: {}", self.vg_name, e)))?;
        let ss = SECTOR_SIZE as u64;
        let dev = self.device_size.bytes().map_err(bad)?;
        if dev % ss != 0 {
            return Err(bad(format!("device_size {} is not a multiple of 512", dev)));
        }
        let ext = match &self.extent_size {
            Some(s) => s.bytes().map_err(bad)?,
            None => DEFAULT_EXTENT_SECTORS as u64 * ss,
        };
        if !ext.is_power_of_two() || ext < MIN_EXTENT_SECTORS as u64 * ss || ext > MAX_EXTENT_SECTORS as u64 * ss {
            return Err(bad(format!("extent_size {} must be a power of two from 4 KiB to 1 GiB", ext)));
        }
        let slot = match &self.metadata_slot_size {
            Some(s) => s.bytes().map_err(bad)?,
            None => DEFAULT_SLOT_SECTORS as u64 * ss,
        };
        if slot % 4096 != 0 || slot < MIN_SLOT_SECTORS as u64 * ss || slot > MAX_SLOT_SECTORS as u64 * ss {
            return Err(bad(format!("metadata_slot_size {} must be a multiple of 4 KiB from 4 KiB to 1 MiB", slot)));
        }
        let uuid = spec_uuid(&self.uuid, "VG")?;
        let label = Label::plan(uuid, vg_name, dev / ss, (ext / ss) as u32, (slot / ss) as u32)
            .map_err(|e| bad(format!("device_size {} is too small for this layout: {}", dev, e)))?;
        let mut lvs = Vec::new();
        let mut next = 0u64;
        for l in &self.lvs {
            let name = Name::new(&l.name).map_err(|e| bad(format!("LV name {:?}: {}", l.name, e)))?;
            let size = l.size.bytes().map_err(bad)?;
            if size == 0 {
                return Err(bad(format!("LV {} has size 0", name)));
            }
            let count = size.div_ceil(ext);
            if next + count > label.extent_count {
                return Err(bad(format!(
                    "LV {} needs {} extents but only {} of {} are free",
                    name,
                    count,
                    label.extent_count - next,
                    label.extent_count
                )));
            }
            lvs.push(LvRecord {
                name,
                uuid: spec_uuid(&l.uuid, &format!("LV {}", name))?,
                flags: if l.read_only { LV_FLAG_READ_ONLY } else { 0 },
                runs: vec![Run { start: next, count }],
            });
            next += count;
        }
        // Duplicates, metadata size etc. are caught by the same validation
        // the guest runs.
        Metadata { generation: 1, lvs: lvs.clone() }.encode_slot(&label).map_err(|e| bad(format!("LV table rejected: {}", e)))?;
        Ok((label, lvs))
    }
}

// ---------------------------------------------------------------------------
// a file as a block device

/// A [`BlockDevice`] over a regular file (an image, or a LUN's backing file).
/// `flush` is `fdatasync`.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    sectors: u64,
}

impl FileDevice {
    /// Open read-write (`writable`) or read-only. A trailing partial sector is
    /// ignored.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice, HostError> {
        let file = OpenOptions::new().read(true).write(writable).open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        Ok(FileDevice { file, sectors: len / SECTOR_SIZE as u64 })
    }
}

fn map_io(e: std::io::Error) -> IoError {
    IoError::Device(e.raw_os_error().unwrap_or(0) as u32)
}

impl BlockDevice for FileDevice {
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = request_range(self.sectors, lba, buf.len())?;
        self.file.seek(SeekFrom::Start(r.start as u64)).map_err(map_io)?;
        self.file.read_exact(buf).map_err(map_io)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        let r = request_range(self.sectors, lba, buf.len())?;
        self.file.seek(SeekFrom::Start(r.start as u64)).map_err(map_io)?;
        self.file.write_all(buf).map_err(map_io)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.file.sync_data().map_err(map_io)
    }
}

// ---------------------------------------------------------------------------
// create

/// Create a new image file at `path` (which must not exist yet) from `spec`.
/// The file is sparse: only the label and the metadata slots are written.
pub fn create_image(spec: &Spec, path: &Path) -> Result<Inspection, HostError> {
    let (label, lvs) = spec.plan()?;
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(io_err(path))?;
    file.set_len(label.device_sectors * SECTOR_SIZE as u64).map_err(io_err(path))?;
    drop(file);
    let mut dev = FileDevice::open(path, true)?;
    VolumeGroup::create(&mut dev, label, lvs)?;
    inspect(path)
}

/// Read a spec file and create the image.
pub fn create_image_from_toml(spec_path: &Path, image: &Path) -> Result<Inspection, HostError> {
    let text = std::fs::read_to_string(spec_path).map_err(io_err(spec_path))?;
    create_image(&Spec::from_toml(&text)?, image)
}

// ---------------------------------------------------------------------------
// inspect

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LabelSummary {
    pub vg_name: String,
    pub vg_uuid: String,
    pub format_version: u32,
    pub extent_size_bytes: u64,
    pub device_size_bytes: u64,
    pub metadata_slot_bytes: u64,
    pub data_offset_bytes: u64,
    pub extent_count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SlotSummary {
    pub slot: String,
    pub offset_bytes: u64,
    pub valid: bool,
    pub generation: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LvSummary {
    pub name: String,
    pub uuid: String,
    pub size_bytes: u64,
    pub size_extents: u64,
    pub read_only: bool,
    /// `[first physical extent, count]` in logical order.
    pub runs: Vec<[u64; 2]>,
    /// Device byte offset of each run.
    pub run_offsets_bytes: Vec<u64>,
}

/// What `inspect` found. Best effort on damaged images: whatever could be
/// read is filled in, and `error` says why activation fails.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Inspection {
    pub path: String,
    pub file_size_bytes: u64,
    pub label: Option<LabelSummary>,
    pub slots: Vec<SlotSummary>,
    pub current_slot: Option<String>,
    pub generation: Option<u64>,
    pub lvs: Vec<LvSummary>,
    pub free_extents: Option<u64>,
    pub error: Option<String>,
}

fn slot_summary<D: BlockDevice>(dev: &mut D, label: &Label, slot: Slot) -> (SlotSummary, Result<Metadata, crate::SlotError>) {
    let r = Metadata::read_slot(dev, label, slot);
    let s = SlotSummary {
        slot: slot.to_string(),
        offset_bytes: label.slot_offset(slot) * SECTOR_SIZE as u64,
        valid: r.is_ok(),
        generation: r.as_ref().ok().map(|m| m.generation),
        error: r.as_ref().err().map(|e| e.to_string()),
    };
    (s, r)
}

/// Summarise an image file.
pub fn inspect(path: &Path) -> Result<Inspection, HostError> {
    let mut dev = FileDevice::open(path, false)?;
    let file_size_bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
    let mut out = Inspection {
        path: path.display().to_string(),
        file_size_bytes,
        label: None,
        slots: Vec::new(),
        current_slot: None,
        generation: None,
        lvs: Vec::new(),
        free_extents: None,
        error: None,
    };
    let label = match read_label(&mut dev) {
        Ok(l) => l,
        Err(e) => {
            out.error = Some(e.to_string());
            return Ok(out);
        }
    };
    let ss = SECTOR_SIZE as u64;
    out.label = Some(LabelSummary {
        vg_name: label.vg_name.to_string(),
        vg_uuid: label.vg_uuid.to_string(),
        format_version: crate::format::FORMAT_VERSION,
        extent_size_bytes: label.extent_bytes(),
        device_size_bytes: label.device_sectors * ss,
        metadata_slot_bytes: label.slot_bytes() as u64,
        data_offset_bytes: label.data_offset * ss,
        extent_count: label.extent_count,
    });
    let (sa, a) = slot_summary(&mut dev, &label, Slot::A);
    let (sb, b) = slot_summary(&mut dev, &label, Slot::B);
    out.slots = vec![sa, sb];
    match choose(a, b) {
        Err(e) => out.error = Some(e.to_string()),
        Ok((slot, md, _)) => {
            out.current_slot = Some(slot.to_string());
            out.generation = Some(md.generation);
            out.free_extents = Some(label.extent_count - md.used_extents());
            out.lvs = md
                .lvs
                .iter()
                .map(|l| LvSummary {
                    name: l.name.to_string(),
                    uuid: l.uuid.to_string(),
                    size_bytes: l.size_extents() * label.extent_bytes(),
                    size_extents: l.size_extents(),
                    read_only: l.read_only(),
                    runs: l.runs.iter().map(|r| [r.start, r.count]).collect(),
                    run_offsets_bytes: l.runs.iter().map(|r| (label.data_offset + r.start * label.extent_sectors as u64) * ss).collect(),
                })
                .collect();
        }
    }
    Ok(out)
}

impl Inspection {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{}\"}}", e))
    }
}

fn human(bytes: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024 && v.is_multiple_of(1024) && i < U.len() - 1 {
        v /= 1024;
        i += 1;
    }
    format!("{} {}", v, U[i])
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image {} ({})", self.path, human(self.file_size_bytes))?;
        if let Some(l) = &self.label {
            writeln!(f, "VG {}  uuid {}  format v{}", l.vg_name, l.vg_uuid, l.format_version)?;
            writeln!(
                f,
                "  device {}  extent {}  {} extents from byte {}  metadata slots {} each",
                human(l.device_size_bytes),
                human(l.extent_size_bytes),
                l.extent_count,
                l.data_offset_bytes,
                human(l.metadata_slot_bytes)
            )?;
        }
        for s in &self.slots {
            match (&s.generation, &s.error) {
                (Some(g), _) => writeln!(f, "  slot {} @ byte {}: valid, generation {}", s.slot, s.offset_bytes, g)?,
                (None, Some(e)) => writeln!(f, "  slot {} @ byte {}: INVALID: {}", s.slot, s.offset_bytes, e)?,
                _ => {}
            }
        }
        if let (Some(c), Some(g)) = (&self.current_slot, self.generation) {
            writeln!(f, "  current: slot {} (generation {})", c, g)?;
        }
        if self.label.is_some() && self.error.is_none() {
            writeln!(f, "  {} LV(s), {} free extent(s)", self.lvs.len(), self.free_extents.unwrap_or(0))?;
        }
        for l in &self.lvs {
            let runs: Vec<String> = l.runs.iter().map(|r| format!("{}+{}", r[0], r[1])).collect();
            writeln!(
                f,
                "  LV {:<16} {:>10}  {}{}  extents {}",
                l.name,
                human(l.size_bytes),
                l.uuid,
                if l.read_only { "  read-only" } else { "" },
                runs.join(",")
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "  ERROR: {}", e)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// check

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The VG activates but something is degraded (e.g. one metadata copy).
    Warning,
    /// The VG does not activate.
    Error,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Where: e.g. `label (sector 0, bytes 0..512)` or `metadata slot A (bytes 4096..69632)`.
    pub location: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    pub path: String,
    /// True when the VG activates (warnings allowed).
    pub activates: bool,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// No problems at all.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{}\"}}", e))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            let s = match p.severity {
                Severity::Warning => "warning",
                Severity::Error => "error",
            };
            writeln!(f, "{}: {}: {}: {}", self.path, s, p.location, p.message)?;
        }
        if self.problems.is_empty() {
            writeln!(f, "{}: ok", self.path)
        } else if self.activates {
            writeln!(f, "{}: VG activates, but see the warnings above", self.path)
        } else {
            writeln!(f, "{}: VG does NOT activate", self.path)
        }
    }
}

/// Validate an image file completely and say what is damaged and where.
/// Returns `Err` only if the file cannot be opened.
pub fn check(path: &Path) -> Result<CheckReport, HostError> {
    let mut dev = FileDevice::open(path, false)?;
    let size = std::fs::metadata(path).map_err(io_err(path))?.len();
    let mut problems = Vec::new();
    let mut push = |severity, location: String, message: String| problems.push(Problem { severity, location, message });
    let ss = SECTOR_SIZE as u64;
    if size % ss != 0 {
        push(
            Severity::Warning,
            format!("end of file (byte {})", size),
            format!("file size is not a multiple of 512; the last {} bytes are ignored", size % ss),
        );
    }
    match read_label(&mut dev) {
        Err(e @ Error::Truncated { .. }) => {
            push(Severity::Error, format!("device (file size {} bytes)", size), e.to_string());
        }
        Err(e) => {
            let msg = match e {
                Error::Label(l) => l.to_string(),
                other => other.to_string(),
            };
            push(Severity::Error, "label (sector 0, bytes 0..512)".to_string(), msg);
        }
        Ok(label) => {
            if dev.sector_count() < label.device_sectors {
                push(
                    Severity::Warning,
                    format!("device (file size {} bytes)", size),
                    format!("smaller than the {} bytes recorded at creation (all extents still fit)", label.device_sectors * ss),
                );
            }
            let mut results = Vec::new();
            for slot in [Slot::A, Slot::B] {
                let r = Metadata::read_slot(&mut dev, &label, slot);
                let start = label.slot_offset(slot) * ss;
                let loc = format!("metadata slot {} (bytes {}..{})", slot, start, start + label.slot_bytes() as u64);
                results.push((slot, loc, r));
            }
            let both_bad = results.iter().all(|(_, _, r)| r.is_err());
            for (slot, loc, r) in &results {
                if let Err(e) = r {
                    if both_bad {
                        push(Severity::Error, loc.clone(), e.to_string());
                    } else {
                        push(
                            Severity::Warning,
                            loc.clone(),
                            format!(
                                "{}; the VG activates from slot {} alone until the next metadata update rewrites slot {}",
                                e,
                                slot.other(),
                                slot
                            ),
                        );
                    }
                }
            }
            let b = results.pop().map(|x| x.2);
            let a = results.pop().map(|x| x.2);
            if let (Some(a), Some(b)) = (a, b) {
                match choose(a, b) {
                    Ok(_) | Err(Error::NoValidMetadata { .. }) => {} // slot errors already reported
                    Err(e) => push(Severity::Error, "metadata slots A and B".to_string(), e.to_string()),
                }
            }
        }
    }
    let activates = !problems.iter().any(|p| p.severity == Severity::Error);
    Ok(CheckReport { path: path.display().to_string(), activates, problems })
}
