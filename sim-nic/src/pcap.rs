//! Classic pcap (libpcap 2.4, microsecond timestamps, LINKTYPE_ETHERNET).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Magic of a microsecond-resolution pcap written in host order (we write
/// little-endian, so readers see d4 c3 b2 a1 on disk).
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
pub const PCAP_VERSION_MAJOR: u16 = 2;
pub const PCAP_VERSION_MINOR: u16 = 4;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Snap length: large enough for any frame this lab produces.
pub const SNAPLEN: u32 = 262_144;

/// Writes a pcap stream.
pub struct PcapWriter<W: Write> {
    w: W,
    records: u64,
}

impl PcapWriter<BufWriter<File>> {
    /// Create (truncate) `path` and write the global header.
    pub fn create(path: &Path) -> io::Result<Self> {
        PcapWriter::new(BufWriter::new(File::create(path)?))
    }
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&PCAP_MAGIC.to_le_bytes());
        h.extend_from_slice(&PCAP_VERSION_MAJOR.to_le_bytes());
        h.extend_from_slice(&PCAP_VERSION_MINOR.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        w.write_all(&h)?;
        Ok(PcapWriter { w, records: 0 })
    }

    /// Append one frame captured at `ts`.
    pub fn write_packet(&mut self, ts: SystemTime, data: &[u8]) -> io::Result<()> {
        let d = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let incl = data.len().min(SNAPLEN as usize);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(d.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&d.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(&data[..incl])?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

/// A record read back by [`read_pcap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcapRecord {
    pub ts_sec: u32,
    pub ts_usec: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcapError {
    #[error("pcap file shorter than its global header")]
    Short,
    #[error("bad pcap magic {0:#x}")]
    Magic(u32),
    #[error("link type {0} is not Ethernet")]
    LinkType(u32),
    #[error("record {0} is truncated")]
    Truncated(usize),
}

/// Parse a classic little-endian pcap (used by tests and the report).
pub fn read_pcap(b: &[u8]) -> Result<Vec<PcapRecord>, PcapError> {
    let u32le = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let magic = u32le(0).ok_or(PcapError::Short)?;
    if magic != PCAP_MAGIC {
        return Err(PcapError::Magic(magic));
    }
    let lt = u32le(20).ok_or(PcapError::Short)?;
    if lt != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(lt));
    }
    let mut off = 24;
    let mut out = Vec::new();
    while off < b.len() {
        let n = out.len();
        let (Some(s), Some(us), Some(incl), Some(orig)) =
            (u32le(off), u32le(off + 4), u32le(off + 8), u32le(off + 12))
        else {
            return Err(PcapError::Truncated(n));
        };
        let start = off + 16;
        let end = start
            .checked_add(incl as usize)
            .filter(|e| *e <= b.len())
            .ok_or(PcapError::Truncated(n))?;
        out.push(PcapRecord {
            ts_sec: s,
            ts_usec: us,
            orig_len: orig,
            data: b[start..end].to_vec(),
        });
        off = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(
            UNIX_EPOCH + std::time::Duration::from_micros(1_500_001),
            &[1, 2, 3],
        )
        .unwrap();
        w.write_packet(SystemTime::now(), &[9; 60]).unwrap();
        let b = w.into_inner();
        assert_eq!(&b[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let r = read_pcap(&b).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].ts_sec, r[0].ts_usec, r[0].data.clone()),
            (1, 500_001, vec![1, 2, 3])
        );
        assert_eq!(r[1].orig_len, 60);
        assert!(read_pcap(&b[..b.len() - 1]).is_err());
        assert!(read_pcap(&b[..10]).is_err());
    }
}
