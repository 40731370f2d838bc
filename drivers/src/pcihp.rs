//! QEMU's ACPI PCI hot-plug: the register block (`hw/acpi/pcihp.c` in QEMU:
//! 0x0cc0 on q35's ICH9 LPC, 0xae00 on pc's PIIX4 PM; 32-bit accesses only)
//! and the mapping from its bus-select numbers (BSEL) to PCI buses.
//!
//! QEMU numbers its hot-pluggable buses itself, in the order of its own
//! device tree, not by PCI bus number, and writes each number into the DSDT
//! as `Name (BSEL, n)` inside the bridge device (`Device (Sxx) { Name (_ADR,
//! ...) ... }`), or, for pc's hot-pluggable root bus, into the scope of the
//! host bridge (`Scope (PCI0) { Name (BSEL, 0) ... }`). The guest reads the
//! numbers from the DSDT's AML bytes here: [`find_bsels`] returns, for each
//! BSEL, the chain of `_ADR` values from the host bridge down to the bridge
//! whose secondary bus it selects; the kernel turns that chain into a bus
//! number with configuration reads (bridge secondary bus numbers). This
//! does not depend on QEMU's allocation order, which is an implementation
//! detail (it walks child buses depth first in the order of its own lists).
//!
//! The AML walk is a small structural parser, not an interpreter: it
//! descends into `Scope` and `Device`, reads `Name` objects with integer
//! values, skips the bodies of methods and of the other operators that carry
//! a package length, and steps over anything else one byte at a time. The
//! table is untrusted input: every length is checked, nothing panics.

use alloc::vec::Vec;

/// Register offsets in the hot-plug block.
pub mod reg {
    /// Slots with a device inserted since the last read (bitmap; reading clears it).
    pub const UP: u16 = 0x00;
    /// Slots with a pending eject request (bitmap; stays until the slot is ejected).
    pub const DOWN: u16 = 0x04;
    /// Write `1 << slot` to eject the device(s) in that slot.
    pub const EJECT: u16 = 0x08;
    /// Slots that can be hot-removed (bitmap).
    pub const REMOVABLE: u16 = 0x0c;
    /// Bus select: write a BSEL before touching the registers above.
    pub const SELECT: u16 = 0x10;
    /// Length of the block.
    pub const LEN: u16 = 0x18;
}

/// Hot-plug register base on q35 (ICH9 LPC, `acpi-pci-hotplug-with-bridge-support`).
pub const Q35_BASE: u16 = 0x0cc0;
/// Hot-plug register base on pc (PIIX4 PM).
pub const PC_BASE: u16 = 0xae00;
/// GPE bit QEMU raises for PCI hot-plug.
pub const GPE_PCI_HOTPLUG: u8 = 1;

/// The chipset device on bus 0 that tells the two machines apart.
pub fn base_for_chipset(vendor: u16, device: u16) -> Option<u16> {
    match (vendor, device) {
        (0x8086, 0x2918) => Some(Q35_BASE), // ICH9 LPC bridge (00:1f.0 on q35)
        (0x8086, 0x7113) => Some(PC_BASE),  // PIIX4 power management (00:01.3 on pc)
        _ => None,
    }
}

/// One hot-pluggable bus as the DSDT names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BselEntry {
    pub bsel: u32,
    /// `_ADR` values (`device << 16 | function`) from the host bridge's
    /// bus down to the bridge whose secondary bus this is; empty for the
    /// host bridge's own (root) bus.
    pub path: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Scope,
    Device,
}

/// A `Scope` or `Device` found in the AML.
struct Node {
    kind: Kind,
    parent: Option<usize>,
    /// Last name segment.
    name: [u8; 4],
    adr: Option<u64>,
    bsel: Option<u64>,
    host_bridge: bool,
}

/// Every `Name (BSEL, n)` in the DSDT/SSDT bytes `aml` (the table body or
/// the whole table: a 36-byte SDT header is skipped if present).
pub fn find_bsels(aml: &[u8]) -> Vec<BselEntry> {
    let body = if aml.len() >= 36 && (&aml[..4] == b"DSDT" || &aml[..4] == b"SSDT") { &aml[36..] } else { aml };
    let mut nodes: Vec<Node> = Vec::new();
    walk(body, None, &mut nodes, 0);
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let Some(bsel) = n.bsel else { continue };
        let Ok(bsel) = u32::try_from(bsel) else { continue };
        // Walk up through devices collecting _ADR until the host bridge or a
        // scope (a scope in the PCI part of the namespace opens the host
        // bridge, `Scope (\_SB.PCI0)` / `Scope (PCI0)`).
        let mut path = Vec::new();
        let mut at = Some(i);
        let mut ok = true;
        while let Some(j) = at {
            let node = &nodes[j];
            if node.kind == Kind::Scope || node.host_bridge {
                break;
            }
            match node.adr.and_then(|a| u32::try_from(a).ok()) {
                Some(a) => path.push(a),
                None => {
                    ok = false;
                    break;
                }
            }
            at = node.parent;
        }
        let top = at.map(|j| &nodes[j]);
        // The chain must end at something that is plausibly the PCI root.
        let rooted = top.is_some_and(|t| t.host_bridge || (t.kind == Kind::Scope && t.name.starts_with(b"PCI")));
        if ok && rooted {
            path.reverse();
            out.push(BselEntry { bsel, path });
        }
    }
    out.sort_by_key(|e| e.bsel);
    out.dedup_by_key(|e| e.bsel);
    out
}

/// Parse a PkgLength at `aml[i..]`: (length value, bytes it occupies).
fn pkg_length(aml: &[u8], i: usize) -> Option<(usize, usize)> {
    let lead = *aml.get(i)?;
    let follow = (lead >> 6) as usize;
    if follow == 0 {
        return Some(((lead & 0x3f) as usize, 1));
    }
    let mut len = (lead & 0x0f) as usize;
    for k in 0..follow {
        len |= (*aml.get(i + 1 + k)? as usize) << (4 + 8 * k);
    }
    Some((len, 1 + follow))
}

fn is_lead(c: u8) -> bool {
    c.is_ascii_uppercase() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    is_lead(c) || c.is_ascii_digit()
}

fn name_seg(aml: &[u8], i: usize) -> Option<[u8; 4]> {
    let s = aml.get(i..i + 4)?;
    (is_lead(s[0]) && s[1..].iter().all(|&c| is_name_char(c))).then(|| [s[0], s[1], s[2], s[3]])
}

/// Parse a NameString: (last segment, bytes used). NullName gives `None` segment.
fn name_string(aml: &[u8], mut i: usize) -> Option<(Option<[u8; 4]>, usize)> {
    let start = i;
    while matches!(aml.get(i), Some(b'\\') | Some(b'^')) {
        i += 1;
    }
    let count = match *aml.get(i)? {
        0x00 => return Some((None, i + 1 - start)),
        0x2e => {
            i += 1;
            2
        }
        0x2f => {
            let n = *aml.get(i + 1)? as usize;
            i += 2;
            n
        }
        _ => 1,
    };
    if count == 0 {
        return None;
    }
    let mut last = None;
    for _ in 0..count {
        last = Some(name_seg(aml, i)?);
        i += 4;
    }
    Some((last, i - start))
}

/// An integer data object at `aml[i..]`: (value, bytes used).
fn integer(aml: &[u8], i: usize) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let b = aml.get(i + 1..i + 1 + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
    };
    match *aml.get(i)? {
        0x00 => Some((0, 1)),
        0x01 => Some((1, 1)),
        0xff => Some((u64::MAX, 1)),
        0x0a => Some((le(1)?, 2)),
        0x0b => Some((le(2)?, 3)),
        0x0c => Some((le(4)?, 5)),
        0x0e => Some((le(8)?, 9)),
        _ => None,
    }
}

/// EISA ids of a PCI / PCIe host bridge (`PNP0A03`, `PNP0A08`) as AML dwords.
const HOST_BRIDGE_IDS: [u64; 2] = [0x030a_d041, 0x080a_d041];

fn walk(aml: &[u8], parent: Option<usize>, nodes: &mut Vec<Node>, depth: u32) {
    if depth > 32 {
        return;
    }
    let mut i = 0;
    while i < aml.len() {
        let op = aml[i];
        let ext = op == 0x5b;
        let op2 = if ext { aml.get(i + 1).copied().unwrap_or(0) } else { 0 };
        // Scope (0x10) and Device (0x5b 0x82): descend.
        if op == 0x10 || (ext && op2 == 0x82) {
            let p = i + if ext { 2 } else { 1 };
            if let Some((len, used)) = pkg_length(aml, p) {
                let end = p + len;
                if len >= used && end <= aml.len() {
                    if let Some((Some(name), nlen)) = name_string(aml, p + used) {
                        let body_start = p + used + nlen;
                        if body_start <= end {
                            let kind = if ext { Kind::Device } else { Kind::Scope };
                            nodes.push(Node { kind, parent, name, adr: None, bsel: None, host_bridge: false });
                            let me = nodes.len() - 1;
                            walk(&aml[body_start..end], Some(me), nodes, depth + 1);
                            i = end;
                            continue;
                        }
                    }
                }
            }
            i += 1;
            continue;
        }
        // Name (0x08): record integer values of _ADR, BSEL, _HID, _CID.
        if op == 0x08 {
            if let Some((Some(name), nlen)) = name_string(aml, i + 1) {
                let v = i + 1 + nlen;
                if let Some((value, vlen)) = integer(aml, v) {
                    if let Some(node) = parent.and_then(|p| nodes.get_mut(p)) {
                        match &name {
                            b"_ADR" => node.adr = Some(value),
                            b"BSEL" => node.bsel = Some(value),
                            b"_HID" | b"_CID" if HOST_BRIDGE_IDS.contains(&value) => node.host_bridge = true,
                            _ => {}
                        }
                    }
                    i = v + vlen;
                    continue;
                }
                // Package / buffer / string values: skip them whole when we can.
                if matches!(aml.get(v), Some(0x11) | Some(0x12) | Some(0x13)) {
                    if let Some((len, _)) = pkg_length(aml, v + 1) {
                        if v + 1 + len <= aml.len() {
                            i = v + 1 + len;
                            continue;
                        }
                    }
                }
                i = v;
                continue;
            }
            i += 1;
            continue;
        }
        // Operators whose body we never need: Method, If, Else, While,
        // Buffer/Package at top level, and the extended Field, IndexField,
        // BankField, Processor, PowerResource, ThermalZone.
        let skip_at = match (op, op2) {
            (0x14 | 0xa0 | 0xa1 | 0xa2 | 0x11 | 0x12 | 0x13, _) if !ext => Some(i + 1),
            (0x5b, 0x81 | 0x83 | 0x84 | 0x85 | 0x86 | 0x87) => Some(i + 2),
            _ => None,
        };
        if let Some(p) = skip_at {
            if let Some((len, used)) = pkg_length(aml, p) {
                if len >= used && p + len <= aml.len() {
                    i = p + len;
                    continue;
                }
            }
        }
        i += 1;
    }
}

/// What one pass over the register block found for one bus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusEvents {
    pub bsel: u32,
    pub inserted: u32,
    pub eject_requested: u32,
}

/// Slots set in a bitmap, lowest first.
pub fn slots(bits: u32) -> impl Iterator<Item = u8> {
    (0..32u8).filter(move |s| bits & (1 << s) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encode a PkgLength covering `body` plus the length bytes themselves.
    fn pkg(body: &[u8]) -> Vec<u8> {
        let total1 = body.len() + 1;
        let mut out = Vec::new();
        if total1 < 0x40 {
            out.push(total1 as u8);
        } else {
            let total = body.len() + 2;
            assert!(total < 0x1000);
            out.push(0x40 | (total & 0xf) as u8);
            out.push((total >> 4) as u8);
        }
        out.extend_from_slice(body);
        out
    }

    fn device(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut inner = name.to_vec();
        inner.extend_from_slice(body);
        let mut out = vec![0x5b, 0x82];
        out.extend(pkg(&inner));
        out
    }

    fn scope(name: &[u8], body: &[u8]) -> Vec<u8> {
        let mut inner = name.to_vec();
        inner.extend_from_slice(body);
        let mut out = vec![0x10];
        out.extend(pkg(&inner));
        out
    }

    fn name_int(name: &[u8; 4], v: u32) -> Vec<u8> {
        let mut out = vec![0x08];
        out.extend_from_slice(name);
        match v {
            0 => out.push(0),
            1 => out.push(1),
            v if v < 256 => out.extend([0x0a, v as u8]),
            v => {
                out.push(0x0c);
                out.extend(v.to_le_bytes());
            }
        }
        out
    }

    fn method(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut inner = name.to_vec();
        inner.push(0); // flags
        inner.extend_from_slice(body);
        let mut out = vec![0x14];
        out.extend(pkg(&inner));
        out
    }

    fn root_port(name: &[u8; 4], adr: u32, bsel: u32) -> Vec<u8> {
        let mut b = name_int(b"_ADR", adr);
        b.extend(name_int(b"BSEL", bsel));
        // A method that mentions BSEL in an expression must not count.
        b.extend(method(b"DVNT", &[0x70, b'B', b'S', b'E', b'L', b'B', b'N', b'U', b'M']));
        b.extend(device(b"S00_", &name_int(b"_ADR", 0)));
        device(name, &b)
    }

    #[test]
    fn q35_style_root_ports_map_to_adr_paths() {
        let mut pci0 = name_int(b"_HID", 0x080a_d041);
        pci0.extend(name_int(b"_ADR", 0));
        // QEMU may number them in any order: BSEL 1 on 00:02.0, BSEL 0 on 00:03.0.
        pci0.extend(root_port(b"S10_", 0x0002_0000, 1));
        pci0.extend(root_port(b"S18_", 0x0003_0000, 0));
        // A nested bridge behind the second port.
        let mut nested = name_int(b"_ADR", 0x0003_0000);
        nested.extend(root_port(b"S08_", 0x0001_0000, 2));
        let mut table = b"DSDT".to_vec();
        table.resize(36, 0);
        table.extend(scope(b"\\_SB_", &device(b"PCI0", &pci0)));
        // A nested port inside a device without BSEL still gets its full path.
        table.extend(scope(b"\\_SB_", &device(b"PCI0", &[name_int(b"_HID", 0x030a_d041), device(b"S20_", &nested)].concat())));
        let got = find_bsels(&table);
        assert_eq!(
            got,
            vec![
                BselEntry { bsel: 0, path: vec![0x0003_0000] },
                BselEntry { bsel: 1, path: vec![0x0002_0000] },
                BselEntry { bsel: 2, path: vec![0x0003_0000, 0x0001_0000] },
            ]
        );
    }

    #[test]
    fn pc_style_root_bus_in_a_scope() {
        let mut body = name_int(b"BSEL", 0);
        body.extend(device(b"S08_", &name_int(b"_ADR", 0x0001_0000)));
        let table = scope(&[0x2e, b'_', b'S', b'B', b'_', b'P', b'C', b'I', b'0'], &body);
        assert_eq!(find_bsels(&table), vec![BselEntry { bsel: 0, path: vec![] }]);
    }

    #[test]
    fn garbage_never_panics() {
        // Truncated and random tables: no panic, no bogus entries from nothing.
        let mut table = scope(b"PCI0", &root_port(b"S10_", 0x0002_0000, 1));
        for cut in 0..table.len() {
            let _ = find_bsels(&table[..cut]);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % table.len();
            table[i] = (x >> 8) as u8;
            let _ = find_bsels(&table);
        }
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let _ = find_bsels(&noise);
    }

    #[test]
    fn long_pkg_lengths_and_chipsets() {
        let big = vec![0xa3u8; 300]; // Noop bytes make the device body long.
        let mut b = name_int(b"_ADR", 0x001c_0000);
        b.extend(name_int(b"BSEL", 5));
        b.extend(big);
        let table = scope(b"PCI0", &device(b"S70_", &b));
        assert_eq!(find_bsels(&table), vec![BselEntry { bsel: 5, path: vec![0x001c_0000] }]);
        assert_eq!(base_for_chipset(0x8086, 0x2918), Some(Q35_BASE));
        assert_eq!(base_for_chipset(0x8086, 0x7113), Some(PC_BASE));
        assert_eq!(base_for_chipset(0x1af4, 0x1001), None);
        assert_eq!(slots(0b1001).collect::<Vec<_>>(), vec![0, 3]);
    }
}
