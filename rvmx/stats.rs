// SPDX-License-Identifier: GPL-2.0

//! Per-vCPU and per-VM statistics, and their binary stats files
//! (`RVMX_GET_VCPU_STATS_FD`, `RVMX_GET_VM_STATS_FD`: KVM's
//! `KVM_GET_STATS_FD` format). The counters are named in one table
//! (`table.rs`); the run loop's hooks are one-line calls here.
//!
//! Cost: a vCPU's counters are written only by its own thread, as a
//! relaxed load and a relaxed store (a plain `mov` pair on x86, no locked
//! instruction), so they never bounce a cache line between CPUs while the
//! vCPU runs. Readers (a stats file, on any thread) load them relaxed: a
//! value may be a moment old, never torn. The one counter another thread
//! writes, `ipi_received`, is added atomically by the senders, who already
//! post to the mailbox with atomic operations. A VM's file sums its vCPUs'
//! counters when it is read.

pub(crate) mod table;

use kernel::{
    bindings, current,
    ffi::{c_int, c_void},
    prelude::*,
    str::CString,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow,
    },
    uaccess::UserSliceWriter,
};

use crate::{anon_file::AnonFile, exit::Action, uapi, vcpu::entry::EventKind};

use table::{Layout, VCPU_VALUES, VM_VALUES};
pub(crate) use table::{Vcpu as V, Vm as M};

// The table's flag values are the ABI's.
const _: () = {
    assert!(table::TYPE_CUMULATIVE == uapi::RVMX_STATS_TYPE_CUMULATIVE);
    assert!(table::TYPE_INSTANT == uapi::RVMX_STATS_TYPE_INSTANT);
    assert!(table::UNIT_SECONDS == uapi::RVMX_STATS_UNIT_SECONDS);
    assert!(table::NAME_SIZE == uapi::RVMX_STATS_NAME_SIZE as usize);
    assert!(table::HEADER_SIZE == size_of::<uapi::rvmx_stats_header>());
    assert!(table::DESC_SIZE == size_of::<uapi::rvmx_stats_desc>());
};

/// One vCPU's counters: `table::VCPU`, then one per exit reason.
pub(crate) struct VcpuStats {
    values: [Atomic<u64>; VCPU_VALUES],
}

impl VcpuStats {
    fn new() -> Result<Arc<Self>> {
        Ok(Arc::new(
            Self {
                values: [const { Atomic::new(0) }; VCPU_VALUES],
            },
            GFP_KERNEL_ACCOUNT,
        )?)
    }

    /// Adds `n` to value `i`. Only the vCPU's thread calls it (see the
    /// module's comment), so a load and a store suffice.
    #[inline(always)]
    fn add_at(&self, i: usize, n: u64) {
        if let Some(v) = self.values.get(i) {
            v.store(v.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    #[inline(always)]
    pub(crate) fn inc(&self, c: V) {
        self.add_at(c as usize, 1);
    }

    #[inline(always)]
    pub(crate) fn add(&self, c: V, n: u64) {
        self.add_at(c as usize, n);
    }

    /// A VM exit with exit-reason field `raw`.
    #[inline(always)]
    pub(crate) fn exit(&self, raw: u32) {
        self.inc(V::Exits);
        let basic = (raw & 0xffff) as usize;
        if basic < table::EXIT_REASONS.len() {
            self.add_at(table::VCPU.len() + basic, 1);
        } else {
            self.inc(V::ExitOther);
        }
    }

    /// Where the run loop goes after an exit; returns `a` unchanged. (An
    /// exit for user space is counted when `RVMX_RUN` returns it.)
    #[inline(always)]
    pub(crate) fn action(&self, a: Action) -> Action {
        match a {
            Action::Resume => self.inc(V::ExitsInWindow),
            Action::Host | Action::Nmi => self.inc(V::ExitsToHost),
            Action::User => {}
            Action::Mmio(_) | Action::StringIo(_) => self.inc(V::ExitsAfterWindow),
        }
        a
    }

    /// An event written for injection (`reinjected`: from IDT-vectoring
    /// information).
    #[inline(always)]
    pub(crate) fn injected(&self, kind: EventKind, reinjected: bool) {
        self.inc(match kind {
            _ if reinjected => V::InjectReinjected,
            EventKind::External => V::IrqInjections,
            EventKind::Nmi => V::NmiInjections,
            EventKind::Exception | EventKind::Software => V::InjectException,
        });
    }

    /// `RVMX_RUN` returns `result`; `exit_reason` is the run area's.
    pub(crate) fn run_returns(&self, result: &Result<isize>, exit_reason: u32) {
        match result {
            Ok(_) => {
                self.inc(V::ExitsToUser);
                self.inc(match exit_reason {
                    uapi::RVMX_EXIT_IO => V::IoExits,
                    uapi::RVMX_EXIT_MMIO => V::MmioExits,
                    uapi::RVMX_EXIT_HYPERCALL => V::UserHypercall,
                    uapi::RVMX_EXIT_X86_RDMSR | uapi::RVMX_EXIT_X86_WRMSR => V::UserMsr,
                    uapi::RVMX_EXIT_IOAPIC_EOI => V::UserIoapicEoi,
                    _ => V::UserOther,
                });
            }
            Err(e) if *e == EINTR => self.inc(V::SignalExits),
            Err(_) => {}
        }
    }

    /// Counted by a sender, on its own thread: atomically.
    fn ipi_received(&self) {
        if let Some(v) = self.values.get(V::IpiReceived as usize) {
            let _ = v.fetch_add(1, Relaxed);
        }
    }

    fn read(&self, i: usize) -> u64 {
        self.values.get(i).map_or(0, |v| v.load(Relaxed))
    }
}

/// A VM's statistics: its own counters and its vCPUs'. Lives as long as
/// the VM or any stats file of it or of one of its vCPUs.
pub(crate) struct VmStats {
    values: [Atomic<u64>; table::VM.len()],
    /// One per vCPU id, made with the VM: a vCPU made again with an id
    /// used before goes on counting, so the VM's sums never go back.
    vcpus: KVec<Arc<VcpuStats>>,
}

impl VmStats {
    pub(crate) fn new() -> Result<Arc<Self>> {
        let mut vcpus = KVec::with_capacity(uapi::RVMX_MAX_VCPUS as usize, GFP_KERNEL)?;
        for _ in 0..uapi::RVMX_MAX_VCPUS {
            vcpus.push(VcpuStats::new()?, GFP_KERNEL)?;
        }
        Ok(Arc::new(
            Self {
                values: [const { Atomic::new(0) }; table::VM.len()],
                vcpus,
            },
            GFP_KERNEL_ACCOUNT,
        )?)
    }

    /// vCPU `id`'s counters (`None` for an id out of range).
    pub(crate) fn vcpu(&self, id: u32) -> Option<&Arc<VcpuStats>> {
        self.vcpus.get(id as usize)
    }

    /// VM-wide events come from any thread (ioctls): atomic adds.
    pub(crate) fn add(&self, c: M, n: u64) {
        if let Some(v) = self.values.get(c as usize) {
            let _ = v.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn sub(&self, c: M, n: u64) {
        if let Some(v) = self.values.get(c as usize) {
            let _ = v.fetch_sub(n, Relaxed);
        }
    }

    /// An interrupt message a vCPU sent was posted to vCPU `id`.
    pub(crate) fn ipi_received(&self, id: u32) {
        if let Some(s) = self.vcpu(id) {
            s.ipi_received();
        }
    }

    /// The VM's data block value `i`: its own counters, then the vCPU sums.
    fn read(&self, i: usize) -> u64 {
        match self.values.get(i) {
            Some(v) => v.load(Relaxed),
            None => {
                let j = i - self.values.len();
                self.vcpus
                    .iter()
                    .fold(0u64, |sum, s| sum.wrapping_add(s.read(j)))
            }
        }
    }
}

/// What a stats file reads its values from.
enum Source {
    Vcpu(Arc<VcpuStats>),
    Vm(Arc<VmStats>),
}

/// An open stats file: its immutable part (header, id, descriptors) made
/// once, and the counters it reads the data from. It holds a reference on
/// the counters only, not on the VM: closing the VM and vCPU fds frees
/// the VM (and its pinned memory) even while a stats file stays open; the
/// file then reads the final values.
pub(crate) struct StatsFile {
    prefix: KVec<u8>,
    layout: Layout,
    source: Source,
}

impl StatsFile {
    fn new(source: Source, id: &CStr) -> Result<Arc<Self>> {
        let layout = Layout::new(match source {
            Source::Vcpu(_) => VCPU_VALUES,
            Source::Vm(_) => VM_VALUES,
        });
        let mut prefix = KVec::new();
        prefix.resize(layout.data_offset, 0, GFP_KERNEL)?;
        let id = id.to_bytes();
        let written = match source {
            Source::Vcpu(_) => table::write_prefix(&mut prefix, &layout, id, table::vcpu_descs()),
            Source::Vm(_) => table::write_prefix(&mut prefix, &layout, id, table::vm_descs()),
        };
        written.ok_or(EINVAL)?;
        Ok(Arc::new(
            Self {
                prefix,
                layout,
                source,
            },
            GFP_KERNEL,
        )?)
    }

    /// The data block as it is now.
    fn data(&self) -> Result<KVec<u8>> {
        let n = self.layout.num_desc;
        let mut out = KVec::with_capacity(n * 8, GFP_KERNEL)?;
        for i in 0..n {
            let v = match &self.source {
                Source::Vcpu(s) => s.read(i),
                Source::Vm(s) => s.read(i),
            };
            out.extend_from_slice(&v.to_ne_bytes(), GFP_KERNEL)?;
        }
        Ok(out)
    }
}

#[vtable]
impl AnonFile for StatsFile {
    const NAME: &'static CStr = c"rvmx-stats";

    fn ioctl(_this: ArcBorrow<'_, Self>, _cmd: u32, _arg: usize) -> Result<isize> {
        Err(ENOTTY)
    }

    fn read(this: ArcBorrow<'_, Self>, out: &mut UserSliceWriter, pos: usize) -> Result<usize> {
        let len = out.len();
        let head = table::copy_overlap(&this.prefix, 0, pos, len, |b| out.write_slice(b))?;
        let data_offset = this.layout.data_offset;
        if pos.saturating_add(len) <= data_offset {
            return Ok(head);
        }
        let data = this.data()?;
        let tail = table::copy_overlap(&data, data_offset, pos, len, |b| out.write_slice(b))?;
        Ok(head + tail)
    }
}

/// The id string: `rvmx-<pid>` as KVM's `kvm-<pid>`, `/vcpu-<n>` after it
/// for a vCPU.
fn id_string(vcpu: Option<u32>) -> Result<CString> {
    let pid = current!().tgid();
    match vcpu {
        Some(n) => CString::try_from_fmt(fmt!("rvmx-{pid}/vcpu-{n}")),
        None => CString::try_from_fmt(fmt!("rvmx-{pid}")),
    }
}

/// `RVMX_GET_VCPU_STATS_FD`: a read-only stats file of vCPU `id`.
pub(crate) fn vcpu_fd(stats: &Arc<VcpuStats>, id: u32, arg: usize) -> Result<isize> {
    if arg != 0 {
        return Err(EINVAL);
    }
    let file = StatsFile::new(Source::Vcpu(stats.clone()), &id_string(Some(id))?)?;
    Ok(install_readonly(file)? as isize)
}

/// `RVMX_GET_VM_STATS_FD`: a read-only stats file of the VM.
pub(crate) fn vm_fd(stats: &Arc<VmStats>, arg: usize) -> Result<isize> {
    if arg != 0 {
        return Err(EINVAL);
    }
    let file = StatsFile::new(Source::Vm(stats.clone()), &id_string(None)?)?;
    Ok(install_readonly(file)? as isize)
}

extern "C" {
    fn anon_inode_getfile_fmode(
        name: *const u8,
        fops: *const c_void,
        priv_: *mut c_void,
        flags: c_int,
        f_mode: bindings::fmode_t,
    ) -> *mut c_void;
}

/// `FMODE_PREAD`: the stats file is read with `pread`, as KVM's.
const FMODE_PREAD: bindings::fmode_t = 1 << 3;

/// Installs `file` as a new read-only fd (`O_RDONLY | O_CLOEXEC`) that
/// allows `pread`.
fn install_readonly(file: Arc<StatsFile>) -> Result<i32> {
    crate::anon_file::install_with(file, |name, fops, data| {
        // SAFETY: no preconditions; the fd is installed or put back below.
        let fd = unsafe { bindings::get_unused_fd_flags(bindings::O_CLOEXEC) };
        let fd = u32::try_from(fd).map_err(|_| Error::from_errno(fd))?;
        // SAFETY: `name` and `fops` are static, `data` is the file's
        // private data, owned by the file if and only if this succeeds.
        let f = unsafe {
            anon_inode_getfile_fmode(name, fops, data, bindings::O_RDONLY as c_int, FMODE_PREAD)
        };
        match kernel::error::from_err_ptr(f) {
            Ok(f) => {
                // SAFETY: `fd` is reserved and unused, `f` a new file whose
                // reference the fd table takes.
                unsafe { bindings::fd_install(fd, f.cast()) };
                Ok(fd as i32)
            }
            Err(e) => {
                // SAFETY: `fd` was reserved above and not installed.
                unsafe { bindings::put_unused_fd(fd) };
                Err(e)
            }
        }
    })
}
