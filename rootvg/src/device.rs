//! device.rs — the block-device contract between rootvg and whatever carries
//! the LUN: the guest's virtio-blk driver, a file on the host, or memory in
//! tests. Owns [`BlockDevice`], [`IoError`] and the in-memory [`MemDevice`].
//!
//! # Durability contract
//!
//! * `write_sectors` returning `Ok` means the device accepted the data; it may
//!   still sit in a volatile cache and can be lost on a crash or an outage of
//!   the storage server.
//! * `flush` returning `Ok` means every write that returned `Ok` before the
//!   `flush` call started is durable (virtio-blk `VIRTIO_BLK_T_FLUSH`,
//!   `fdatasync` for a file).
//! * Callers (rootvg itself, and services through
//!   [`LogicalVolume`](crate::LogicalVolume)) acknowledge a write to their own
//!   clients only after a subsequent `flush` returned `Ok`.
//! * A failed `write_sectors` or `flush` leaves the affected sectors in an
//!   unknown state: old data, new data, or (for multi-sector writes) a mix at
//!   sector granularity. A single 512-byte sector is assumed to be written
//!   atomically; nothing larger is.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::format::SECTOR_SIZE;

/// An I/O failure reported by a [`BlockDevice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The request addressed sectors past the end of the device.
    OutOfRange,
    /// The buffer length is not a multiple of the sector size.
    BadBufferLength,
    /// The device is temporarily unreachable (e.g. the storage server is
    /// restarting). The same request may succeed if retried later.
    Unavailable,
    /// The device reported a failure; the code is driver-specific
    /// (for virtio-blk: the request status byte).
    Device(u32),
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::OutOfRange => f.write_str("request past the end of the device"),
            IoError::BadBufferLength => f.write_str("buffer length is not a multiple of 512"),
            IoError::Unavailable => f.write_str("device temporarily unavailable"),
            IoError::Device(c) => write!(f, "device error {}", c),
        }
    }
}

/// A LUN addressed in 512-byte sectors. `buf.len()` is always a non-zero
/// multiple of 512 when rootvg calls these.
pub trait BlockDevice {
    /// Size of the device in 512-byte sectors.
    fn sector_count(&self) -> u64;
    /// Read `buf.len() / 512` sectors starting at `lba`.
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Write `buf.len() / 512` sectors starting at `lba` (not yet durable).
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError>;
    /// Make every previously completed write durable.
    fn flush(&mut self) -> Result<(), IoError>;
}

impl<T: BlockDevice + ?Sized> BlockDevice for &mut T {
    fn sector_count(&self) -> u64 {
        (**self).sector_count()
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        (**self).write_sectors(lba, buf)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        (**self).flush()
    }
}

/// Checks shared by device implementations: returns the byte range of the
/// request inside a device of `sectors` sectors.
pub fn request_range(sectors: u64, lba: u64, len: usize) -> Result<core::ops::Range<usize>, IoError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(IoError::BadBufferLength);
    }
    let n = (len / SECTOR_SIZE) as u64;
    let end = lba.checked_add(n).ok_or(IoError::OutOfRange)?;
    if end > sectors {
        return Err(IoError::OutOfRange);
    }
    let start = usize::try_from(lba).map_err(|_| IoError::OutOfRange)? * SECTOR_SIZE;
    Ok(start..start + len)
}

/// A device held in memory. Used by tests and by the host tool to build an
/// image before writing it out. Writes are durable immediately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemDevice {
    pub data: Vec<u8>,
}

impl MemDevice {
    /// A zero-filled device of `sectors` sectors.
    pub fn new(sectors: usize) -> MemDevice {
        MemDevice { data: vec![0; sectors * SECTOR_SIZE] }
    }

    /// Wrap an existing image; a trailing partial sector is ignored.
    pub fn from_vec(data: Vec<u8>) -> MemDevice {
        MemDevice { data }
    }
}

impl BlockDevice for MemDevice {
    fn sector_count(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = request_range(self.sector_count(), lba, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        let r = request_range(self.sector_count(), lba, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_bounds() {
        let mut d = MemDevice::new(4);
        let mut b = [0u8; 512];
        assert_eq!(d.read_sectors(3, &mut b), Ok(()));
        assert_eq!(d.read_sectors(4, &mut b), Err(IoError::OutOfRange));
        assert_eq!(d.read_sectors(u64::MAX, &mut b), Err(IoError::OutOfRange));
        assert_eq!(d.write_sectors(0, &b[..100]), Err(IoError::BadBufferLength));
        let w = [9u8; 1024];
        d.write_sectors(2, &w).unwrap();
        d.read_sectors(3, &mut b).unwrap();
        assert_eq!(b, [9u8; 512]);
    }
}
