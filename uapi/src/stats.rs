//! Binary statistics files: rvmx's `RVMX_GET_VM_STATS_FD` /
//! `RVMX_GET_VCPU_STATS_FD` and KVM's `KVM_GET_STATS_FD`, which share one
//! format (header, id string, descriptors, data; see `docs/api.md`).
//!
//! The decoder knows no counter by name: it reads the descriptors once and
//! then the data block with `pread` as often as asked.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::sys;

/// Something a stats file can be read from at an offset: a `File`, or
/// bytes (tests).
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

/// How a value changes (descriptor type bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows: rates make sense.
    Cumulative,
    /// Goes up and down.
    Instant,
    /// The largest value seen.
    Peak,
    /// `size` buckets of `bucket_size` each.
    LinearHist,
    /// `size` buckets of powers of 2.
    LogHist,
    Unknown(u32),
}

/// What a value counts (descriptor unit bits), scaled by `exponent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    None,
    Bytes,
    Seconds,
    Cycles,
    Boolean,
    Unknown(u32),
}

/// One descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub name: String,
    pub kind: Kind,
    pub unit: Unit,
    /// Base 2 (true) or 10 (false) of `exponent`.
    pub pow2: bool,
    pub exponent: i16,
    /// Number of u64 values.
    pub size: u16,
    /// Byte offset of the first value in the data block.
    pub offset: u32,
    pub bucket_size: u32,
}

impl Desc {
    /// The unit as a suffix for display: "ns", "us", "B", "KiB", "cycles".
    pub fn unit_suffix(&self) -> String {
        let prefix10 = |e: i16| match e {
            0 => "",
            -3 => "m",
            -6 => "u",
            -9 => "n",
            3 => "k",
            6 => "M",
            9 => "G",
            _ => "?",
        };
        match self.unit {
            Unit::None | Unit::Boolean | Unit::Unknown(_) => String::new(),
            Unit::Seconds => format!("{}s", prefix10(self.exponent)),
            Unit::Cycles => "cycles".into(),
            Unit::Bytes if self.pow2 => match self.exponent {
                0 => "B".into(),
                10 => "KiB".into(),
                20 => "MiB".into(),
                30 => "GiB".into(),
                e => format!("2^{e} B"),
            },
            Unit::Bytes => format!("{}B", prefix10(self.exponent)),
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_exact_at<R: ReadAt + ?Sized>(r: &R, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = r.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(invalid(format!(
                "stats file ends at {} (wanted {} bytes at {offset})",
                offset + done as u64,
                buf.len()
            )));
        }
        done += n;
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-terminated string in `b` (all of `b` if it has no NUL).
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The most names of this size and descriptors a file may have: far more
/// than KVM or rvmx use, few enough to refuse a nonsensical header.
const MAX_NAME_SIZE: usize = 4096;
const MAX_DESCS: usize = 1 << 16;
const MAX_DATA: usize = 16 << 20;

/// A stats file, its descriptors read.
#[derive(Debug)]
pub struct Stats<R: ReadAt = File> {
    src: R,
    /// The id string ("rvmx-PID", "kvm-PID/vcpu-N").
    pub id: String,
    pub descs: Vec<Desc>,
    data_offset: u64,
    /// Bytes of the data block the descriptors cover.
    data_len: usize,
}

impl<R: ReadAt> Stats<R> {
    /// Reads the header, id string and descriptors.
    pub fn new(src: R) -> io::Result<Self> {
        let mut h = [0u8; std::mem::size_of::<sys::rvmx_stats_header>()];
        read_exact_at(&src, &mut h, 0)?;
        let (name_size, num_desc) = (u32_at(&h, 4) as usize, u32_at(&h, 8) as usize);
        let (id_offset, desc_offset) = (u64::from(u32_at(&h, 12)), u64::from(u32_at(&h, 16)));
        let data_offset = u64::from(u32_at(&h, 20));
        if name_size == 0 || name_size > MAX_NAME_SIZE || num_desc > MAX_DESCS {
            return Err(invalid(format!(
                "stats header with name_size {name_size}, num_desc {num_desc}"
            )));
        }
        let mut id = vec![0u8; name_size];
        read_exact_at(&src, &mut id, id_offset)?;
        let desc_size = std::mem::size_of::<sys::rvmx_stats_desc>();
        let stride = desc_size + name_size;
        let mut raw = vec![0u8; stride * num_desc];
        read_exact_at(&src, &mut raw, desc_offset)?;
        let mut descs = Vec::with_capacity(num_desc);
        let mut data_len = 0usize;
        for d in raw.chunks_exact(stride) {
            let flags = u32_at(d, 0);
            let size = u16::from_ne_bytes([d[6], d[7]]);
            let offset = u32_at(d, 8);
            let desc = Desc {
                name: c_string(&d[desc_size..]),
                kind: match flags & sys::RVMX_STATS_TYPE_MASK {
                    sys::RVMX_STATS_TYPE_CUMULATIVE => Kind::Cumulative,
                    sys::RVMX_STATS_TYPE_INSTANT => Kind::Instant,
                    sys::RVMX_STATS_TYPE_PEAK => Kind::Peak,
                    sys::RVMX_STATS_TYPE_LINEAR_HIST => Kind::LinearHist,
                    sys::RVMX_STATS_TYPE_LOG_HIST => Kind::LogHist,
                    t => Kind::Unknown(t),
                },
                unit: match flags & sys::RVMX_STATS_UNIT_MASK {
                    sys::RVMX_STATS_UNIT_NONE => Unit::None,
                    sys::RVMX_STATS_UNIT_BYTES => Unit::Bytes,
                    sys::RVMX_STATS_UNIT_SECONDS => Unit::Seconds,
                    sys::RVMX_STATS_UNIT_CYCLES => Unit::Cycles,
                    sys::RVMX_STATS_UNIT_BOOLEAN => Unit::Boolean,
                    u => Unit::Unknown(u),
                },
                pow2: flags & sys::RVMX_STATS_BASE_MASK == sys::RVMX_STATS_BASE_POW2,
                exponent: i16::from_ne_bytes([d[4], d[5]]),
                size,
                offset,
                bucket_size: u32_at(d, 12),
            };
            if offset % 8 != 0 {
                return Err(invalid(format!(
                    "{}: offset {offset} not 8-aligned",
                    desc.name
                )));
            }
            data_len = data_len.max(offset as usize + 8 * usize::from(size));
            if data_len > MAX_DATA {
                return Err(invalid(format!(
                    "{}: data past {MAX_DATA} bytes",
                    desc.name
                )));
            }
            descs.push(desc);
        }
        Ok(Self {
            src,
            id: c_string(&id),
            descs,
            data_offset,
            data_len,
        })
    }

    /// Reads the data block now: for each descriptor, its values.
    pub fn read(&self) -> io::Result<Snapshot> {
        let mut data = vec![0u8; self.data_len];
        read_exact_at(&self.src, &mut data, self.data_offset)?;
        let values = self
            .descs
            .iter()
            .map(|d| {
                (0..usize::from(d.size))
                    .map(|i| {
                        let at = d.offset as usize + 8 * i;
                        let mut v = [0u8; 8];
                        v.copy_from_slice(&data[at..at + 8]);
                        u64::from_ne_bytes(v)
                    })
                    .collect()
            })
            .collect();
        Ok(Snapshot { values })
    }

    /// Each descriptor's name with one value: the value itself, or the
    /// sum of a histogram's buckets (how many samples it has).
    pub fn scalars(&self, snap: &Snapshot) -> Vec<(String, u64)> {
        self.descs
            .iter()
            .zip(&snap.values)
            .map(|(d, v)| {
                (
                    d.name.clone(),
                    v.iter().fold(0u64, |a, b| a.wrapping_add(*b)),
                )
            })
            .collect()
    }

    /// The value named `name` in `snap` (histograms: the sum of buckets).
    pub fn get(&self, snap: &Snapshot, name: &str) -> Option<u64> {
        let i = self.descs.iter().position(|d| d.name == name)?;
        snap.values
            .get(i)
            .map(|v| v.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
    }
}

/// The values of every descriptor, in descriptor order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub values: Vec<Vec<u64>>,
}

impl crate::VmFd {
    /// `RVMX_GET_VM_STATS_FD`: the VM's statistics, its vCPUs' summed.
    pub fn stats_fd(&self) -> io::Result<File> {
        stats_fd(self, sys::RVMX_GET_VM_STATS_FD)
    }
}

impl crate::VcpuFd {
    /// `RVMX_GET_VCPU_STATS_FD`: this vCPU's statistics.
    pub fn stats_fd(&self) -> io::Result<File> {
        stats_fd(self, sys::RVMX_GET_VCPU_STATS_FD)
    }
}

fn stats_fd(fd: &impl std::os::fd::AsRawFd, cmd: u32) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    let fd = crate::vm::ioctl_with(fd, cmd, std::ptr::null_mut::<u8>())?;
    // SAFETY: the kernel just returned this new fd to us.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Builds a stats file's bytes, for tests of code that reads them: `descs`
/// of (name, flags, values), KVM's layout with `name_size`.
#[doc(hidden)]
pub fn build_image(id: &str, name_size: usize, descs: &[(&str, u32, Vec<u64>)]) -> Vec<u8> {
    let header = std::mem::size_of::<sys::rvmx_stats_header>();
    let desc_size = std::mem::size_of::<sys::rvmx_stats_desc>();
    let id_offset = header;
    let desc_offset = id_offset + name_size;
    let data_offset = desc_offset + descs.len() * (desc_size + name_size);
    let values: usize = descs.iter().map(|d| d.2.len()).sum();
    let mut out = vec![0u8; data_offset + 8 * values];
    let put = |out: &mut Vec<u8>, at: usize, b: &[u8]| out[at..at + b.len()].copy_from_slice(b);
    for (i, v) in [
        0,
        name_size,
        descs.len(),
        id_offset,
        desc_offset,
        data_offset,
    ]
    .iter()
    .enumerate()
    {
        put(&mut out, i * 4, &(*v as u32).to_ne_bytes());
    }
    put(&mut out, id_offset, id.as_bytes());
    let mut offset = 0usize;
    for (i, (name, flags, vals)) in descs.iter().enumerate() {
        let at = desc_offset + i * (desc_size + name_size);
        put(&mut out, at, &flags.to_ne_bytes());
        let exponent: i16 = if flags & sys::RVMX_STATS_UNIT_MASK == sys::RVMX_STATS_UNIT_SECONDS {
            -9
        } else {
            0
        };
        put(&mut out, at + 4, &exponent.to_ne_bytes());
        put(&mut out, at + 6, &(vals.len() as u16).to_ne_bytes());
        put(&mut out, at + 8, &(offset as u32).to_ne_bytes());
        put(&mut out, at + desc_size, name.as_bytes());
        for (j, v) in vals.iter().enumerate() {
            put(&mut out, data_offset + offset + 8 * j, &v.to_ne_bytes());
        }
        offset += 8 * vals.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUM: u32 = sys::RVMX_STATS_TYPE_CUMULATIVE;
    const NS: u32 = sys::RVMX_STATS_TYPE_CUMULATIVE | sys::RVMX_STATS_UNIT_SECONDS;

    #[test]
    fn decodes_descriptors_and_values() {
        let img = build_image(
            "rvmx-7/vcpu-0",
            48,
            &[
                ("exits", CUM, vec![10]),
                ("vcpus", sys::RVMX_STATS_TYPE_INSTANT, vec![2]),
                ("halt_ns", NS, vec![1500]),
                ("hist", sys::RVMX_STATS_TYPE_LOG_HIST, vec![1, 2, 3]),
            ],
        );
        let s = Stats::new(img).unwrap();
        assert_eq!(s.id, "rvmx-7/vcpu-0");
        assert_eq!(s.descs.len(), 4);
        assert_eq!(s.descs[1].kind, Kind::Instant);
        assert_eq!(s.descs[2].unit, Unit::Seconds);
        assert_eq!(s.descs[2].exponent, -9);
        assert_eq!(s.descs[2].unit_suffix(), "ns");
        assert_eq!(s.descs[3].kind, Kind::LogHist);
        assert_eq!(s.descs[3].size, 3);
        let snap = s.read().unwrap();
        assert_eq!(
            snap.values,
            vec![vec![10], vec![2], vec![1500], vec![1, 2, 3]]
        );
        assert_eq!(s.get(&snap, "exits"), Some(10));
        assert_eq!(s.get(&snap, "hist"), Some(6));
        assert_eq!(s.get(&snap, "nothing"), None);
        let sc = s.scalars(&snap);
        assert_eq!(sc[0], ("exits".to_string(), 10));
        assert_eq!(sc[3], ("hist".to_string(), 6));
    }

    #[test]
    fn other_name_sizes_and_blocks_out_of_order() {
        // KVM's blocks need not be adjacent nor in order: move the data
        // block before the descriptors by rewriting the offsets.
        let img = build_image("kvm-1", 16, &[("a", CUM, vec![1]), ("b", CUM, vec![2])]);
        let s = Stats::new(img.clone()).unwrap();
        assert_eq!(s.descs[1].name, "b");
        // Swap: data (16 bytes) right after the id, descriptors after it.
        let (id_off, name) = (24usize, 16usize);
        let desc_len = 2 * (16 + name);
        let data = img[id_off + name + desc_len..].to_vec();
        let descs = img[id_off + name..id_off + name + desc_len].to_vec();
        let mut moved = img[..id_off + name].to_vec();
        moved.extend_from_slice(&data);
        moved.extend_from_slice(&descs);
        let data_offset = (id_off + name) as u32;
        let desc_offset = data_offset + 16;
        moved[16..20].copy_from_slice(&desc_offset.to_ne_bytes());
        moved[20..24].copy_from_slice(&data_offset.to_ne_bytes());
        let s = Stats::new(moved).unwrap();
        let snap = s.read().unwrap();
        assert_eq!(s.get(&snap, "a"), Some(1));
        assert_eq!(s.get(&snap, "b"), Some(2));
    }

    #[test]
    fn truncated_or_nonsense_files_are_errors() {
        let img = build_image("x", 48, &[("a", CUM, vec![1])]);
        let err = |b: Vec<u8>| Stats::new(b).unwrap_err().kind();
        assert_eq!(err(img[..10].to_vec()), io::ErrorKind::InvalidData);
        assert_eq!(err(img[..100].to_vec()), io::ErrorKind::InvalidData);
        let s = Stats::new(img[..img.len() - 4].to_vec()).unwrap();
        assert_eq!(s.read().unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut bad = img.clone();
        bad[4..8].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(err(bad), io::ErrorKind::InvalidData);
        let mut bad = img.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(err(bad), io::ErrorKind::InvalidData);
        let mut bad = img;
        bad[24 + 48 + 8..24 + 48 + 12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(err(bad), io::ErrorKind::InvalidData);
    }
}
