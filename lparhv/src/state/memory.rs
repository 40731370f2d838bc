//! The owner's memory regions, each backed by a real file in the state
//! directory (`<state_dir>/mem/<name>.mem`), so that the bytes survive an
//! lparhv restart and a later ivshmem hot-plug (QEMU `memory-backend-file`,
//! `share=on`) can map the very same bytes. Copies go through positioned
//! reads and writes (`pread`/`pwrite`), always under the system lock and
//! only after the caller's logical-to-physical check passed. A region file
//! is mode 0600 (only lparhv's user, and the QEMU it starts, may read
//! shared memory); an older, wider file is narrowed when it is opened.

use crate::owner::ResourceId;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One region file.
#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    file: File,
}

/// The mode of a region file: read and write for lparhv's user only.
pub const REGION_MODE: u32 = 0o600;

impl Region {
    /// Opens or creates the file (mode [`REGION_MODE`]) and gives it
    /// exactly `size` bytes.
    pub fn open(dir: &Path, name: &str, size: u64) -> io::Result<Region> {
        let path = dir.join(format!("{name}.mem"));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(REGION_MODE).open(&path)?;
        // A file created before this rule (0644) is narrowed, not trusted.
        if file.metadata()?.permissions().mode() & 0o7777 != REGION_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(REGION_MODE))?;
        }
        if file.metadata()?.len() != size {
            file.set_len(size)?;
        }
        Ok(Region { name: name.into(), path, size, file })
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "range outside the region")),
        }
    }

    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check(offset, len)?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        self.file.write_all_at(data, offset)
    }
}

/// All regions by resource id.
#[derive(Debug, Default)]
pub struct MemoryRegions {
    regions: BTreeMap<ResourceId, Region>,
}

impl MemoryRegions {
    pub fn insert(&mut self, id: ResourceId, region: Region) {
        self.regions.insert(id, region);
    }

    pub fn get(&self, id: ResourceId) -> Option<&Region> {
        self.regions.get(&id)
    }
}

/// Whether a grant of `length` bytes at `offset` of a region of
/// `region_size` bytes can be mapped directly into a partition (an ivshmem
/// device maps whole power-of-two regions of at least a page).
pub fn mappable(offset: u64, length: u64, region_size: u64) -> bool {
    offset == 0 && length == region_size && region_size.is_power_of_two() && region_size >= 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_round_trip_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let r = Region::open(dir.path(), "m", 8192).unwrap();
        r.write(4090, b"abcdef").unwrap();
        assert_eq!(r.read(4090, 6).unwrap(), b"abcdef");
        assert!(r.write(8190, b"abc").is_err());
        assert!(r.read(u64::MAX, 2).is_err());
        drop(r);
        let again = Region::open(dir.path(), "m", 8192).unwrap();
        assert_eq!(again.read(4090, 6).unwrap(), b"abcdef");
    }

    #[test]
    fn region_files_are_private_even_if_they_were_not() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = Region::open(dir.path(), "fresh", 4096).unwrap();
        assert_eq!(mode(&fresh.path), REGION_MODE);
        let old = dir.path().join("old.mem");
        std::fs::write(&old, [0u8; 4096]).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = Region::open(dir.path(), "old", 4096).unwrap();
        assert_eq!(mode(&reopened.path), REGION_MODE);
    }

    #[test]
    fn only_whole_power_of_two_regions() {
        assert!(mappable(0, 65536, 65536));
        assert!(!mappable(4096, 61440, 65536));
        assert!(!mappable(0, 12288, 12288));
        assert!(!mappable(0, 0, 0));
    }
}
