//! The single-threaded fuzzer: a world of /dev/rvmx fds, VMs, memory
//! slots and vCPUs, changed by one random operation at a time. Every call
//! is counted; where docs/api.md says exactly what must happen (a reserved
//! field set, a size out of range, a bad pointer), the result is checked
//! and a mismatch is a problem. The sequence depends only on the seed.

use std::os::fd::RawFd;
use std::time::Duration;

use uapi::sys;

use crate::guest;
use crate::rng::Rng;
use crate::stats::{self, errno_name, problem};
use crate::sys::{ioc, ioctl, nr_of, ty_of, Map, ThreadTimer, DIR_NONE, DIR_R, DIR_RW, DIR_W};

pub const DEV_CMDS: &[u32] = &[
    sys::RVMX_GET_API_VERSION,
    sys::RVMX_GET_VMX_CAPS,
    sys::RVMX_CREATE_VM,
    sys::RVMX_GET_VCPU_MMAP_SIZE,
    sys::RVMX_GET_SUPPORTED_CPUID,
];
pub const VM_CMDS: &[u32] = &[
    sys::RVMX_SET_USER_MEMORY_REGION,
    sys::RVMX_CREATE_VCPU,
    sys::RVMX_SET_USER_MSR_EXITS,
    sys::RVMX_SIGNAL_MSI,
];
pub const VCPU_CMDS: &[u32] = &[
    sys::RVMX_RUN,
    sys::RVMX_GET_REGS,
    sys::RVMX_SET_REGS,
    sys::RVMX_GET_SREGS,
    sys::RVMX_SET_SREGS,
    sys::RVMX_SET_CPUID,
    sys::RVMX_GET_MSRS,
    sys::RVMX_SET_MSRS,
    sys::RVMX_GET_LAPIC,
    sys::RVMX_SET_LAPIC,
    sys::RVMX_GET_VCPU_EVENTS,
    sys::RVMX_SET_VCPU_EVENTS,
    sys::RVMX_GET_MP_STATE,
    sys::RVMX_SET_MP_STATE,
];

/// Which operation of which seed is running, for problem reports.
pub struct Where {
    pub seed: u64,
    pub op: u64,
}

impl Where {
    pub fn tag(&self) -> String {
        format!("seed {} op {}", self.seed, self.op)
    }
}

/// A call's result against what the API promises.
pub fn expect(at: &Where, what: &str, r: Result<i32, i32>, allowed: &[i32], ok_allowed: bool) {
    match r {
        Ok(_) if ok_allowed => {}
        Ok(v) => problem(format!(
            "{}: {what}: succeeded ({v}), want {}",
            at.tag(),
            names(allowed)
        )),
        Err(e) if allowed.contains(&e) => {}
        Err(e) => problem(format!(
            "{}: {what}: {}, want {}{}",
            at.tag(),
            errno_name(e),
            if ok_allowed { "success or " } else { "" },
            names(allowed)
        )),
    }
}

fn names(errs: &[i32]) -> String {
    errs.iter()
        .map(|&e| errno_name(e))
        .collect::<Vec<_>>()
        .join("/")
}

/// Pages for ioctl arguments: two writable pages and an inaccessible one
/// after them, so an argument can run off its mapping.
pub struct Scratch {
    map: Map,
}

impl Scratch {
    pub fn new() -> Self {
        let map = Map::new(3 * 4096, libc::PROT_READ | libc::PROT_WRITE).expect("mmap scratch");
        // SAFETY: the third page of our own mapping.
        unsafe { libc::mprotect((map.ptr + 2 * 4096) as *mut _, 4096, libc::PROT_NONE) };
        Self { map }
    }

    pub fn buf(&mut self) -> &mut [u8] {
        &mut self.map.bytes().expect("scratch is mapped")[..2 * 4096]
    }

    pub fn addr(&self) -> usize {
        self.map.ptr
    }

    /// An address whose `len` bytes end `over` bytes inside the guard page.
    pub fn straddling(&self, len: usize, over: usize) -> usize {
        self.map.ptr + 2 * 4096 + over.min(len) - len
    }

    pub fn write<T: Copy>(&mut self, v: &T) -> usize {
        let n = std::mem::size_of::<T>();
        // SAFETY: T is a plain ABI struct; we copy its bytes.
        let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), n) };
        self.buf()[..n].copy_from_slice(bytes);
        self.addr()
    }

    pub fn read<T: Copy>(&mut self) -> T {
        // SAFETY: the scratch holds at least size_of::<T>() bytes and T is
        // a plain ABI struct (any bytes are a valid value).
        unsafe { std::ptr::read_unaligned(self.addr() as *const T) }
    }
}

/// Addresses that are never ours: rvmx must answer EFAULT.
pub const BAD_POINTERS: &[usize] = &[
    0,
    8,
    0xffff_8000_0000_0000,
    0xffff_ffff_ffff_f000,
    0x0000_7fff_ffff_f000,
    0xdead_0000_0000,
];

pub struct Slot {
    pub id: u32,
}

pub struct Vcpu {
    pub fd: RawFd,
    pub run: Option<(usize, usize)>,
    pub id: u32,
}

impl Vcpu {
    pub fn run_area(&self) -> Option<*mut sys::rvmx_run> {
        self.run.map(|(p, _)| p as *mut sys::rvmx_run)
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        if let Some((p, len)) = self.run.take() {
            // SAFETY: the run-area mapping made for this vCPU.
            unsafe { libc::munmap(p as *mut _, len) };
        }
        if self.fd >= 0 {
            crate::sys::close(self.fd);
        }
    }
}

pub struct Vm {
    pub fd: RawFd,
    pub mem: Vec<Map>,
    pub slots: Vec<Slot>,
    pub vcpus: Vec<Vcpu>,
    pub used_ids: Vec<u32>,
    pub mmap_size: usize,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.vcpus.clear();
        if self.fd >= 0 {
            crate::sys::close(self.fd);
        }
    }
}

pub struct World {
    pub rng: Rng,
    pub at: Where,
    pub devs: Vec<RawFd>,
    pub vms: Vec<Vm>,
    pub scratch: Scratch,
    pub timer: ThreadTimer,
    /// Inaccessible and read-only memory, for slots that must fail or
    /// be read-only.
    pub none: Map,
    pub ro: Map,
}

const MAX_VMS: usize = 3;

impl Drop for World {
    fn drop(&mut self) {
        self.vms.clear();
        for &d in &self.devs {
            crate::sys::close(d);
        }
    }
}

pub fn open_dev() -> Option<RawFd> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/rvmx".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    stats::record(
        "open /dev/rvmx",
        if fd < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(fd)
        },
    );
    (fd >= 0).then_some(fd)
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            at: Where { seed, op: 0 },
            devs: Vec::new(),
            vms: Vec::new(),
            scratch: Scratch::new(),
            timer: ThreadTimer::new().expect("timer_create"),
            none: Map::new(0x10000, libc::PROT_NONE).expect("mmap"),
            ro: Map::new(0x10000, libc::PROT_READ).expect("mmap"),
        }
    }

    fn dev(&mut self) -> Option<RawFd> {
        if self.devs.is_empty() || self.rng.one_in(50) {
            if self.devs.len() >= 3 {
                let i = self.rng.below(self.devs.len() as u64) as usize;
                crate::sys::close(self.devs.swap_remove(i));
            }
            let fd = open_dev()?;
            self.devs.push(fd);
        }
        Some(self.devs[self.rng.below(self.devs.len() as u64) as usize])
    }

    /// One random operation.
    pub fn step(&mut self) {
        self.at.op += 1;
        let Some(dev) = self.dev() else { return };
        if self.vms.is_empty() {
            self.create_vm(dev, true);
            return;
        }
        match self.rng.below(100) {
            0..=7 => self.dev_ioctl(dev),
            8..=10 => self.create_vm(dev, false),
            11..=12 => self.drop_vm(),
            13..=24 => self.memory_region(),
            25..=29 => self.create_vcpu(),
            30..=31 => self.user_msr_exits(),
            32..=36 => self.signal_msi(),
            37..=39 => self.random_cmd(dev),
            40..=41 => self.bad_mmap(),
            42..=43 => self.drop_vcpu(),
            _ => self.vcpu_op(),
        }
    }

    pub fn create_vm(&mut self, dev: RawFd, fresh: bool) {
        let arg = if !fresh && self.rng.one_in(8) {
            self.rng.interesting() as usize
        } else {
            0
        };
        let r = ioctl("CREATE_VM", dev, sys::RVMX_CREATE_VM, arg);
        if arg != 0 {
            expect(
                &self.at,
                "CREATE_VM with a machine type",
                r,
                &[libc::EINVAL],
                false,
            );
            if let Ok(fd) = r {
                crate::sys::close(fd);
            }
            return;
        }
        expect(
            &self.at,
            "CREATE_VM",
            r,
            &[libc::ENOMEM, libc::EMFILE],
            true,
        );
        let Ok(fd) = r else { return };
        let size = ioctl("GET_VCPU_MMAP_SIZE", dev, sys::RVMX_GET_VCPU_MMAP_SIZE, 0);
        if size != Ok(4096) {
            problem(format!(
                "{}: GET_VCPU_MMAP_SIZE {size:?}, want 4096",
                self.at.tag()
            ));
        }
        if self.vms.len() >= MAX_VMS {
            let i = self.rng.below(self.vms.len() as u64) as usize;
            self.vms.swap_remove(i);
        }
        let mut vm = Vm {
            fd,
            mem: Vec::new(),
            slots: Vec::new(),
            vcpus: Vec::new(),
            used_ids: Vec::new(),
            mmap_size: 4096,
        };
        // Guest memory at 0 with code, page tables and a vCPU, so that runs
        // get somewhere.
        if let Some(mut m) = Map::new(guest::MEM, libc::PROT_READ | libc::PROT_WRITE) {
            let code = guest::code(&mut self.rng, 64);
            if let Some(b) = m.bytes() {
                labguest::identity_map(b);
                b[guest::CODE as usize..guest::CODE as usize + code.len()].copy_from_slice(&code);
            }
            let region = sys::rvmx_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: guest::MEM as u64,
                userspace_addr: m.ptr as u64,
            };
            let a = self.scratch.write(&region);
            let r = ioctl(
                "SET_USER_MEMORY_REGION",
                fd,
                sys::RVMX_SET_USER_MEMORY_REGION,
                a,
            );
            expect(&self.at, "the first slot", r, &[libc::ENOMEM], true);
            if r.is_ok() {
                vm.slots.push(Slot { id: 0 });
            }
            vm.mem.push(m);
        }
        self.vms.push(vm);
        let i = self.vms.len() - 1;
        self.create_vcpu_in(i, 0);
    }

    fn drop_vm(&mut self) {
        let i = self.rng.below(self.vms.len() as u64) as usize;
        if self.rng.one_in(2) {
            // Only the VM fd: the vCPUs keep the VM alive.
            let vm = &mut self.vms[i];
            if vm.fd >= 0 {
                crate::sys::close(vm.fd);
                vm.fd = -1;
            }
        } else {
            self.vms.swap_remove(i);
        }
    }

    fn vm(&mut self) -> usize {
        self.rng.below(self.vms.len() as u64) as usize
    }

    fn dev_ioctl(&mut self, dev: RawFd) {
        match self.rng.below(5) {
            0 => {
                let arg = if self.rng.one_in(3) {
                    self.rng.interesting() as usize
                } else {
                    0
                };
                let r = ioctl("GET_API_VERSION", dev, sys::RVMX_GET_API_VERSION, arg);
                if arg == 0 {
                    if r != Ok(sys::RVMX_API_VERSION as i32) {
                        problem(format!("{}: GET_API_VERSION {r:?}", self.at.tag()));
                    }
                } else {
                    expect(
                        &self.at,
                        "GET_API_VERSION with an argument",
                        r,
                        &[libc::EINVAL],
                        false,
                    );
                }
            }
            1 => {
                let (arg, bad) = self.pointer(std::mem::size_of::<sys::rvmx_vmx_caps>());
                let r = ioctl("GET_VMX_CAPS", dev, sys::RVMX_GET_VMX_CAPS, arg);
                self.expect_ptr("GET_VMX_CAPS", r, bad, &[]);
            }
            2 => {
                let arg = if self.rng.one_in(3) {
                    self.rng.interesting() as usize
                } else {
                    0
                };
                let r = ioctl("GET_VCPU_MMAP_SIZE", dev, sys::RVMX_GET_VCPU_MMAP_SIZE, arg);
                if arg != 0 {
                    expect(
                        &self.at,
                        "GET_VCPU_MMAP_SIZE with an argument",
                        r,
                        &[libc::EINVAL],
                        false,
                    );
                }
            }
            3 => {
                // nent from 0 to beyond the maximum; the buffer is two pages
                // (the most that fit: 8 + 40 * 204), so a large nent that
                // rvmx believes runs into the guard page.
                let nent = self
                    .rng
                    .pick(&[0u32, 1, 5, 50, 100, 204, 256, 300, u32::MAX]);
                let hdr = [nent, if self.rng.one_in(10) { 1 } else { 0 }];
                let a = self.scratch.write(&hdr);
                let r = ioctl("GET_SUPPORTED_CPUID", dev, sys::RVMX_GET_SUPPORTED_CPUID, a);
                expect(
                    &self.at,
                    "GET_SUPPORTED_CPUID",
                    r,
                    &[libc::E2BIG, libc::EFAULT, libc::EINVAL, libc::ENOMEM],
                    true,
                );
                if r.is_ok() {
                    let back: [u32; 2] = self.scratch.read();
                    if back[0] > nent.min(256) {
                        problem(format!(
                            "{}: GET_SUPPORTED_CPUID wrote {} entries into room for {nent}",
                            self.at.tag(),
                            back[0]
                        ));
                    }
                }
            }
            _ => {
                let r = ioctl(
                    "GET_SUPPORTED_CPUID",
                    dev,
                    sys::RVMX_GET_SUPPORTED_CPUID,
                    self.rng.pick(BAD_POINTERS),
                );
                expect(
                    &self.at,
                    "GET_SUPPORTED_CPUID at a bad pointer",
                    r,
                    &[libc::EFAULT],
                    false,
                );
            }
        }
    }

    /// An argument pointer for a `len`-byte struct: the scratch (true if
    /// it must fault: an unmapped address or one running off the page).
    fn pointer(&mut self, len: usize) -> (usize, bool) {
        match self.rng.below(6) {
            0 => (self.rng.pick(BAD_POINTERS), true),
            1 => (
                self.scratch
                    .straddling(len, 1 + self.rng.below(len as u64) as usize),
                true,
            ),
            _ => (self.scratch.addr() + 8 * self.rng.below(16) as usize, false),
        }
    }

    fn expect_ptr(&self, what: &str, r: Result<i32, i32>, bad: bool, allowed: &[i32]) {
        if bad {
            // A struct that runs off its mapping may still be refused for
            // its content first (read from the part that is mapped).
            let mut ok: Vec<i32> = vec![libc::EFAULT];
            ok.extend_from_slice(allowed);
            expect(&self.at, &format!("{what} at a bad pointer"), r, &ok, false);
        } else {
            expect(&self.at, what, r, allowed, true);
        }
    }

    fn memory_region(&mut self) {
        let vi = self.vm();
        if self.vms[vi].fd < 0 {
            return;
        }
        let fd = self.vms[vi].fd;
        // Backing memory: ours (RW), read-only, inaccessible, or nonsense.
        if self.vms[vi].mem.len() < 4 && self.rng.one_in(3) {
            let size = self.rng.pick(&[0x1000usize, 0x10000, 0x20_0000]);
            if let Some(m) = Map::new(size, libc::PROT_READ | libc::PROT_WRITE) {
                self.vms[vi].mem.push(m);
            }
        }
        let mut region = sys::rvmx_userspace_memory_region {
            slot: self.rng.below(34) as u32,
            flags: if self.rng.one_in(4) {
                sys::RVMX_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: self.rng.pick(&[
                0u64,
                0x10_0000,
                0x20_0000,
                0x4000_0000,
                0xfee0_0000,
                0xfec0_0000,
                0xffff_f000,
                0x1_0000_0000,
                (1 << 48) - 0x1000,
            ]),
            memory_size: self.rng.pick(&[0u64, 0x1000, 0x10000, 0x20_0000]),
            userspace_addr: 0,
        };
        let mut strict = None; // the errno the API promises
        let n = self.vms[vi].mem.len() as u64;
        match self.rng.below(10) {
            0 => {
                region.userspace_addr = self.none.ptr as u64;
                region.memory_size = 0x10000;
            }
            1 => {
                region.userspace_addr = self.ro.ptr as u64;
                region.memory_size = 0x10000;
            }
            2 => region.userspace_addr = self.rng.interesting(),
            _ if n > 0 => {
                let m = &self.vms[vi].mem[self.rng.below(n) as usize];
                region.userspace_addr = m.ptr as u64;
                region.memory_size = region.memory_size.min(m.len as u64);
            }
            _ => {}
        }
        // Break one rule on purpose, sometimes.
        match self.rng.below(12) {
            0 if region.memory_size != 0 => {
                region.guest_phys_addr |= 1 + self.rng.below(0xfff);
                strict = Some(libc::EINVAL);
            }
            1 if region.memory_size != 0 => {
                region.memory_size += 1 + self.rng.below(0xfff);
                strict = Some(libc::EINVAL);
            }
            2 if region.memory_size != 0 => {
                region.userspace_addr |= 1 + self.rng.below(0xfff);
                strict = Some(libc::EINVAL);
            }
            3 => {
                region.flags |= 1 << (2 + self.rng.below(30));
                strict = Some(libc::EINVAL);
            }
            4 => {
                region.slot = 32 + self.rng.below(u32::MAX as u64 - 32) as u32;
                strict = Some(libc::EINVAL);
            }
            5 => {
                region.memory_size = self.rng.interesting() & !0xfff;
                region.guest_phys_addr = self.rng.interesting() & !0xfff;
            }
            _ => {}
        }
        // A deletion of a slot that does not exist.
        if region.memory_size == 0
            && strict.is_none()
            && !self.vms[vi].slots.iter().any(|s| s.id == region.slot)
        {
            strict = Some(libc::EINVAL);
        }
        let a = self.scratch.write(&region);
        let r = ioctl(
            "SET_USER_MEMORY_REGION",
            fd,
            sys::RVMX_SET_USER_MEMORY_REGION,
            a,
        );
        match strict {
            Some(e) => expect(
                &self.at,
                &format!("SET_USER_MEMORY_REGION {region:?}"),
                r,
                &[e],
                false,
            ),
            None => expect(
                &self.at,
                "SET_USER_MEMORY_REGION",
                r,
                &[libc::EINVAL, libc::EEXIST, libc::EFAULT, libc::ENOMEM],
                true,
            ),
        }
        if r.is_ok() {
            let slots = &mut self.vms[vi].slots;
            slots.retain(|s| s.id != region.slot);
            if region.memory_size != 0 {
                slots.push(Slot { id: region.slot });
            }
        }
        // Sometimes unmap backing memory under a live slot (it is pinned).
        if self.rng.one_in(20) && n > 1 {
            let i = 1 + self.rng.below(n - 1) as usize;
            self.vms[vi].mem[i].unmap();
        }
    }

    fn create_vcpu(&mut self) {
        let vi = self.vm();
        let id = if self.rng.one_in(6) {
            self.rng.interesting() as u32
        } else {
            self.rng.below(9) as u32
        };
        self.create_vcpu_in(vi, id);
    }

    fn create_vcpu_in(&mut self, vi: usize, id: u32) {
        let vm = &mut self.vms[vi];
        if vm.fd < 0 {
            return;
        }
        let r = ioctl("CREATE_VCPU", vm.fd, sys::RVMX_CREATE_VCPU, id as usize);
        if id >= sys::RVMX_MAX_VCPUS {
            expect(
                &self.at,
                &format!("CREATE_VCPU {id}"),
                r,
                &[libc::EINVAL],
                false,
            );
        } else if vm.vcpus.iter().any(|v| v.id == id) {
            expect(
                &self.at,
                &format!("CREATE_VCPU {id} again"),
                r,
                &[libc::EEXIST],
                false,
            );
        } else if vm.used_ids.contains(&id) {
            // Closed before: its id may or may not be free yet.
            expect(
                &self.at,
                "CREATE_VCPU of a closed id",
                r,
                &[libc::EEXIST, libc::ENOSPC, libc::ENOMEM],
                true,
            );
        } else {
            expect(
                &self.at,
                "CREATE_VCPU",
                r,
                &[libc::ENOSPC, libc::ENOMEM, libc::EMFILE],
                true,
            );
        }
        let Ok(fd) = r else { return };
        // SAFETY: a shared mapping of the new vCPU fd at offset 0.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                vm.mmap_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let run = if p == libc::MAP_FAILED {
            problem(format!(
                "{}: mmap of a vCPU's run area failed: {}",
                self.at.tag(),
                std::io::Error::last_os_error()
            ));
            None
        } else {
            Some((p as usize, vm.mmap_size))
        };
        vm.used_ids.push(id);
        vm.vcpus.push(Vcpu { fd, run, id });
    }

    fn drop_vcpu(&mut self) {
        let vi = self.vm();
        let vm = &mut self.vms[vi];
        if vm.vcpus.is_empty() {
            return;
        }
        let i = self.rng.below(vm.vcpus.len() as u64) as usize;
        if self.rng.one_in(2) {
            // Keep the run area mapped after the fd closes: the mapping
            // holds the file.
            let v = &mut vm.vcpus[i];
            if v.fd >= 0 {
                crate::sys::close(v.fd);
                v.fd = -1;
            }
        } else {
            vm.vcpus.swap_remove(i);
        }
    }

    fn bad_mmap(&mut self) {
        let vi = self.vm();
        let Some(v) = self.vms[vi].vcpus.iter().find(|v| v.fd >= 0) else {
            return;
        };
        let fd = v.fd;
        let (len, off) = match self.rng.below(3) {
            0 => (8192, 0),
            1 => (4096, 4096),
            _ => (
                4096 * (1 + self.rng.below(4) as usize),
                4096 * (1 + self.rng.below(4) as i64),
            ),
        };
        // SAFETY: a new shared mapping of the vCPU fd, unmapped at once if
        // it was (wrongly) made.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            stats::record("mmap run area (bad size/offset)", Err(e));
            expect(
                &self.at,
                "mmap of the run area with another size or offset",
                Err(e),
                &[libc::EINVAL, libc::ENOMEM],
                false,
            );
        } else {
            stats::record("mmap run area (bad size/offset)", Ok(0));
            problem(format!(
                "{}: mmap of a vCPU fd with size {len} offset {off} succeeded",
                self.at.tag()
            ));
            // SAFETY: the mapping just made.
            unsafe { libc::munmap(p, len) };
        }
    }

    fn user_msr_exits(&mut self) {
        let vi = self.vm();
        let fd = self.vms[vi].fd;
        if fd < 0 {
            return;
        }
        let arg = match self.rng.below(3) {
            0 => 0,
            1 => sys::RVMX_MSR_EXIT_REASON_UNKNOWN as usize,
            _ => self.rng.interesting() as usize,
        };
        let r = ioctl("SET_USER_MSR_EXITS", fd, sys::RVMX_SET_USER_MSR_EXITS, arg);
        if arg == 0 || arg == sys::RVMX_MSR_EXIT_REASON_UNKNOWN as usize {
            expect(&self.at, "SET_USER_MSR_EXITS", r, &[], true);
        } else {
            expect(
                &self.at,
                &format!("SET_USER_MSR_EXITS {arg:#x}"),
                r,
                &[libc::EINVAL],
                false,
            );
        }
    }

    fn signal_msi(&mut self) {
        let vi = self.vm();
        let fd = self.vms[vi].fd;
        if fd < 0 {
            return;
        }
        let mut msi = sys::rvmx_msi {
            address_lo: 0xfee0_0000
                | ((self.rng.below(4) as u32) << 12)
                | ((self.rng.below(2) as u32) << 2),
            address_hi: 0,
            data: (self.rng.below(256) as u32)
                | (self.rng.pick(&[0u32, 0, 0, 1, 4, 5, 6, 2, 7]) << 8)
                | ((self.rng.below(2) as u32) << 15),
            flags: 0,
            pad: [0; 16],
        };
        let mut strict = false;
        match self.rng.below(8) {
            0 => {
                msi.flags = 1 << self.rng.below(32);
                strict = true;
            }
            1 => {
                msi.pad[self.rng.below(16) as usize] = 1 + self.rng.below(255) as u8;
                strict = true;
            }
            2 => {
                msi.address_lo = self.rng.next() as u32;
                strict = msi.address_lo & 0xfff0_0000 != 0xfee0_0000;
            }
            3 => {
                msi.data = (msi.data & !0x700) | (3 << 8);
                strict = true;
            }
            4 => msi.address_hi = self.rng.next() as u32,
            _ => {}
        }
        if self.rng.one_in(10) {
            let r = ioctl(
                "SIGNAL_MSI",
                fd,
                sys::RVMX_SIGNAL_MSI,
                self.rng.pick(BAD_POINTERS),
            );
            expect(
                &self.at,
                "SIGNAL_MSI at a bad pointer",
                r,
                &[libc::EFAULT],
                false,
            );
            return;
        }
        let a = self.scratch.write(&msi);
        let r = ioctl("SIGNAL_MSI", fd, sys::RVMX_SIGNAL_MSI, a);
        if strict {
            expect(
                &self.at,
                &format!("SIGNAL_MSI {msi:?}"),
                r,
                &[libc::EINVAL],
                false,
            );
        } else {
            expect(&self.at, "SIGNAL_MSI", r, &[], true);
            if let Ok(n) = r {
                if n as usize > sys::RVMX_MAX_VCPUS as usize {
                    problem(format!(
                        "{}: SIGNAL_MSI accepted by {n} local APICs",
                        self.at.tag()
                    ));
                }
            }
        }
    }

    /// A command number near rvmx's, with any direction and size, on any
    /// kind of fd: ENOTTY for a number that fd does not know, EINVAL for a
    /// known one with another direction or size.
    fn random_cmd(&mut self, dev: RawFd) {
        let (fd, known, kind): (RawFd, &[u32], &str) = match self.rng.below(3) {
            0 => (dev, DEV_CMDS, "dev"),
            1 => {
                let vi = self.vm();
                (self.vms[vi].fd, VM_CMDS, "vm")
            }
            _ => {
                let vi = self.vm();
                match self.vms[vi].vcpus.iter().find(|v| v.fd >= 0) {
                    Some(v) => (v.fd, VCPU_CMDS, "vcpu"),
                    None => return,
                }
            }
        };
        if fd < 0 {
            return;
        }
        let any = self.rng.below(256) as u32;
        let ty = if self.rng.one_in(8) {
            self.rng.pick(&[0xaeu32, 0, 0xff, any])
        } else {
            sys::RVMXIO
        };
        let nr = self.rng.below(0x40) as u32;
        let dir = self.rng.pick(&[DIR_NONE, DIR_R, DIR_W, DIR_RW]);
        let any = self.rng.below(0x3fff) as u32;
        let size = self.rng.pick(&[0u32, 4, 8, 16, 144, 312, 1024, any]);
        let cmd = ioc(dir, ty, nr, size);
        if known.contains(&cmd) {
            return; // a real command, fuzzed elsewhere with its own struct
        }
        let name_known = known.iter().any(|&k| nr_of(k) == nr && ty_of(k) == ty);
        let want = if name_known {
            libc::EINVAL
        } else {
            libc::ENOTTY
        };
        // The argument is the scratch: nothing may be written to it.
        self.scratch.buf().fill(0xa5);
        let r = ioctl("unknown or malformed cmd", fd, cmd, self.scratch.addr());
        expect(
            &self.at,
            &format!("cmd {cmd:#x} on a {kind} fd"),
            r,
            &[want],
            false,
        );
        if self.scratch.buf().iter().any(|&b| b != 0xa5) {
            problem(format!(
                "{}: refused cmd {cmd:#x} wrote to its argument",
                self.at.tag()
            ));
        }
    }

    fn vcpu_op(&mut self) {
        let vi = self.vm();
        let n = self.vms[vi].vcpus.len();
        if n == 0 {
            let id = self.rng.below(2) as u32;
            return self.create_vcpu_in(vi, id);
        }
        let ci = self.rng.below(n as u64) as usize;
        let fd = self.vms[vi].vcpus[ci].fd;
        if fd < 0 {
            return;
        }
        match self.rng.below(24) {
            0..=7 => self.run(vi, ci),
            8 => self.regs(fd),
            9..=10 => self.sregs(fd),
            11 => self.cpuid(fd),
            12..=13 => self.msrs(fd),
            14 => self.lapic(fd),
            15 => self.events(fd),
            16 => self.mp_state(fd),
            17 => self.new_code(vi),
            18 => {
                // A state ioctl at a bad pointer.
                let cmd = self.rng.pick(&VCPU_CMDS[1..]);
                let r = ioctl(
                    "vCPU state at a bad pointer",
                    fd,
                    cmd,
                    self.rng.pick(BAD_POINTERS),
                );
                expect(
                    &self.at,
                    &format!("cmd {cmd:#x} at a bad pointer"),
                    r,
                    &[libc::EFAULT],
                    false,
                );
            }
            _ => self.reset_state(fd),
        }
    }

    /// New code at CODE in the first slot's memory, if still ours.
    fn new_code(&mut self, vi: usize) {
        let code = guest::code(&mut self.rng, 64);
        if let Some(b) = self.vms[vi].mem.first_mut().and_then(|m| m.bytes()) {
            b[guest::CODE as usize..guest::CODE as usize + code.len()].copy_from_slice(&code);
        }
    }

    /// A valid mode template (sometimes mutated) and registers for CODE.
    fn reset_state(&mut self, fd: RawFd) {
        let a = self.scratch.addr();
        if ioctl("GET_SREGS", fd, sys::RVMX_GET_SREGS, a).is_err() {
            return;
        }
        let s: sys::rvmx_sregs = self.scratch.read();
        let (mut s, _) = guest::template(&mut self.rng, s);
        let mutated = self.rng.one_in(3);
        if mutated {
            guest::mutate_sregs(&mut self.rng, &mut s);
        }
        let a = self.scratch.write(&s);
        let r = ioctl("SET_SREGS", fd, sys::RVMX_SET_SREGS, a);
        if mutated {
            expect(&self.at, "SET_SREGS (mutated)", r, &[libc::EINVAL], true);
        } else {
            expect(&self.at, "SET_SREGS (template)", r, &[], true);
        }
        let regs = guest::regs(&mut self.rng);
        let a = self.scratch.write(&regs);
        let r = ioctl("SET_REGS", fd, sys::RVMX_SET_REGS, a);
        expect(&self.at, "SET_REGS", r, &[], true);
    }

    fn regs(&mut self, fd: RawFd) {
        let (a, bad) = self.pointer(std::mem::size_of::<sys::rvmx_regs>());
        if self.rng.one_in(2) {
            let r = ioctl("GET_REGS", fd, sys::RVMX_GET_REGS, a);
            self.expect_ptr("GET_REGS", r, bad, &[]);
        } else {
            if !bad {
                let regs = guest::regs(&mut self.rng);
                let off = a - self.scratch.addr();
                let b = self.scratch.buf();
                // SAFETY: plain struct bytes into our scratch.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (&regs as *const sys::rvmx_regs).cast::<u8>(),
                        std::mem::size_of::<sys::rvmx_regs>(),
                    )
                };
                b[off..off + bytes.len()].copy_from_slice(bytes);
            }
            let r = ioctl("SET_REGS", fd, sys::RVMX_SET_REGS, a);
            self.expect_ptr("SET_REGS", r, bad, &[]);
        }
    }

    fn sregs(&mut self, fd: RawFd) {
        let a = self.scratch.addr();
        let r = ioctl("GET_SREGS", fd, sys::RVMX_GET_SREGS, a);
        expect(&self.at, "GET_SREGS", r, &[], true);
        if r.is_err() {
            return;
        }
        let mut s: sys::rvmx_sregs = self.scratch.read();
        guest::mutate_sregs(&mut self.rng, &mut s);
        let strict = s.interrupt_bitmap.iter().any(|&w| w != 0) || s.cr8 > 15;
        let a = self.scratch.write(&s);
        let r = ioctl("SET_SREGS", fd, sys::RVMX_SET_SREGS, a);
        if strict {
            expect(
                &self.at,
                "SET_SREGS with interrupt_bitmap or CR8 > 15",
                r,
                &[libc::EINVAL],
                false,
            );
        } else {
            expect(&self.at, "SET_SREGS", r, &[libc::EINVAL], true);
        }
    }

    fn cpuid(&mut self, fd: RawFd) {
        let nent = self.rng.pick(&[0u32, 1, 3, 20, 204, 257, 1000, u32::MAX]);
        let room = nent.min(204) as usize; // what fits in the scratch
        let mut strict = None;
        {
            let rng = &mut self.rng;
            let buf = self.scratch.buf();
            buf[..8].copy_from_slice(&[nent.to_le_bytes(), 0u32.to_le_bytes()].concat());
            for i in 0..room {
                let e = &mut buf[8 + 40 * i..8 + 40 * (i + 1)];
                let words = [
                    {
                        let any = rng.next() as u32;
                        rng.pick(&[0u32, 1, 4, 7, 0xb, 0xd, 0x15, 0x4000_0000, 0x8000_0001, any])
                    },
                    rng.below(4) as u32,
                    rng.below(2) as u32,
                    rng.next() as u32,
                    rng.next() as u32,
                    rng.next() as u32,
                    rng.next() as u32,
                    0,
                    0,
                    0,
                ];
                for (j, w) in words.iter().enumerate() {
                    e[4 * j..4 * j + 4].copy_from_slice(&w.to_le_bytes());
                }
            }
        }
        if nent > 256 {
            strict = Some(libc::E2BIG);
        } else if room > 0 && self.rng.one_in(4) {
            let i = self.rng.below(room as u64) as usize;
            let field = self.rng.pick(&[2usize, 7, 8, 9]); // flags or padding
            let v = if field == 2 {
                2u32 << self.rng.below(30)
            } else {
                1 + self.rng.below(100) as u32
            };
            let off = 8 + 40 * i + 4 * field;
            self.scratch.buf()[off..off + 4].copy_from_slice(&v.to_le_bytes());
            strict = Some(libc::EINVAL);
        }
        let r = ioctl("SET_CPUID", fd, sys::RVMX_SET_CPUID, self.scratch.addr());
        match strict {
            Some(e) => expect(&self.at, &format!("SET_CPUID nent {nent}"), r, &[e], false),
            // 204 < nent <= 256 runs into the guard page.
            None => expect(&self.at, "SET_CPUID", r, &[libc::EFAULT], nent <= 204),
        }
    }

    fn msrs(&mut self, fd: RawFd) {
        const INDICES: &[u32] = &[
            0x10,
            0x1b,
            0x3a,
            0x48,
            0x8b,
            0xfe,
            0x174,
            0x175,
            0x176,
            0x1a0,
            0x1d9,
            0x277,
            0x2ff,
            0x6e0,
            0x802,
            0x808,
            0x80b,
            0x830,
            0x838,
            0xc000_0080,
            0xc000_0081,
            0xc000_0082,
            0xc000_0083,
            0xc000_0084,
            0xc000_0100,
            0xc000_0101,
            0xc000_0102,
            0xc000_0103,
            0x4000_0000,
            0xffff_ffff,
        ];
        let nmsrs = self.rng.pick(&[0u32, 1, 2, 8, 100, 256, 257, u32::MAX]);
        let room = nmsrs.min(256) as usize;
        {
            let rng = &mut self.rng;
            let buf = self.scratch.buf();
            buf[..8].copy_from_slice(&[nmsrs.to_le_bytes(), 0u32.to_le_bytes()].concat());
            for i in 0..room {
                let idx = if rng.one_in(5) {
                    rng.next() as u32
                } else {
                    rng.pick(INDICES)
                };
                let e = &mut buf[8 + 16 * i..8 + 16 * (i + 1)];
                e[..4].copy_from_slice(&idx.to_le_bytes());
                e[4..8].copy_from_slice(&[0; 4]);
                e[8..].copy_from_slice(&rng.interesting().to_le_bytes());
            }
        }
        let set = self.rng.one_in(2);
        let (what, cmd) = if set {
            ("SET_MSRS", sys::RVMX_SET_MSRS)
        } else {
            ("GET_MSRS", sys::RVMX_GET_MSRS)
        };
        let r = ioctl(what, fd, cmd, self.scratch.addr());
        if nmsrs > 256 {
            expect(
                &self.at,
                &format!("{what} nmsrs {nmsrs}"),
                r,
                &[libc::E2BIG],
                false,
            );
        } else {
            expect(&self.at, what, r, &[], true);
            if let Ok(n) = r {
                if n as u32 > nmsrs {
                    problem(format!(
                        "{}: {what} processed {n} of {nmsrs}",
                        self.at.tag()
                    ));
                }
            }
        }
    }

    fn lapic(&mut self, fd: RawFd) {
        let a = self.scratch.addr();
        let r = ioctl("GET_LAPIC", fd, sys::RVMX_GET_LAPIC, a);
        expect(&self.at, "GET_LAPIC", r, &[], true);
        if self.rng.one_in(3) {
            let len = 0x400;
            let (rng, buf) = (&mut self.rng, self.scratch.map.bytes().expect("scratch"));
            rng.fill(&mut buf[..len]);
        } else {
            for _ in 0..1 + self.rng.below(4) {
                let off = 16 * self.rng.below(64) as usize;
                let v = self.rng.interesting() as u32;
                self.scratch.buf()[off..off + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        let r = ioctl("SET_LAPIC", fd, sys::RVMX_SET_LAPIC, a);
        expect(&self.at, "SET_LAPIC", r, &[libc::EINVAL], true);
    }

    fn events(&mut self, fd: RawFd) {
        let a = self.scratch.addr();
        let r = ioctl("GET_VCPU_EVENTS", fd, sys::RVMX_GET_VCPU_EVENTS, a);
        expect(&self.at, "GET_VCPU_EVENTS", r, &[], true);
        let mut e: sys::rvmx_vcpu_events = self.scratch.read();
        let mut strict = false;
        match self.rng.below(10) {
            0 => e.exception.pending = 1,
            1 => {
                e.exception.pending = 1;
                e.exception.nr = self.rng.below(40) as u8;
                e.exception.has_error_code = self.rng.below(2) as u8;
                e.exception.error_code = self.rng.next() as u32;
                strict = e.exception.nr > 31;
            }
            2 => {
                e.interrupt.injected = 1;
                e.interrupt.nr = self.rng.next() as u8;
            }
            3 => {
                e.nmi.pending = self.rng.below(2) as u8;
                e.nmi.masked = self.rng.below(2) as u8;
                e.nmi.injected = self.rng.below(2) as u8;
            }
            4 => {
                e.interrupt.shadow = self.rng.below(4) as u8;
                strict = e.interrupt.shadow == 3;
            }
            5 => {
                e.flags = 1 << self.rng.below(32);
                strict = true;
            }
            6 => {
                e.reserved[self.rng.below(26) as usize] = 1;
                strict = true;
            }
            7 => {
                e.smi.smm = 1;
                strict = true;
            }
            8 => {
                e.sipi_vector = self.rng.interesting() as u32;
                strict = e.sipi_vector > 255;
            }
            _ => {
                e.triple_fault.pending = 1;
                strict = true;
            }
        }
        let a = self.scratch.write(&e);
        let r = ioctl("SET_VCPU_EVENTS", fd, sys::RVMX_SET_VCPU_EVENTS, a);
        if strict {
            expect(
                &self.at,
                "SET_VCPU_EVENTS (reserved/out of range)",
                r,
                &[libc::EINVAL],
                false,
            );
        } else {
            expect(&self.at, "SET_VCPU_EVENTS", r, &[libc::EINVAL], true);
        }
    }

    fn mp_state(&mut self, fd: RawFd) {
        let a = self.scratch.addr();
        if self.rng.one_in(2) {
            let r = ioctl("GET_MP_STATE", fd, sys::RVMX_GET_MP_STATE, a);
            expect(&self.at, "GET_MP_STATE", r, &[], true);
            let s: u32 = self.scratch.read();
            if r.is_ok() && ![0, 2, 3].contains(&s) {
                problem(format!("{}: GET_MP_STATE {s}", self.at.tag()));
            }
            return;
        }
        let s = self.rng.pick(&[0u32, 2, 3, 1, 4, 5, 7, u32::MAX]);
        let a = self.scratch.write(&s);
        let r = ioctl("SET_MP_STATE", fd, sys::RVMX_SET_MP_STATE, a);
        if [0, 2, 3].contains(&s) {
            expect(&self.at, "SET_MP_STATE", r, &[], true);
        } else {
            expect(
                &self.at,
                &format!("SET_MP_STATE {s}"),
                r,
                &[libc::EINVAL],
                false,
            );
        }
    }

    /// RUN a few times, answering the exits as a VMM would.
    fn run(&mut self, vi: usize, ci: usize) {
        let v = &self.vms[vi].vcpus[ci];
        let (fd, Some(run)) = (v.fd, v.run_area()) else {
            return;
        };
        let req = self.rng.one_in(30);
        let imm = self.rng.one_in(15);
        // SAFETY: the run area is mapped while the Vcpu lives.
        unsafe {
            (*run).request_interrupt_window = u8::from(req);
            (*run).immediate_exit = u8::from(imm);
        }
        for _ in 0..1 + self.rng.below(6) {
            let r = crate::sys::run(fd, &self.timer, Duration::from_millis(2));
            if req {
                expect(
                    &self.at,
                    "RUN with request_interrupt_window",
                    r,
                    &[libc::EINVAL],
                    false,
                );
            } else if imm {
                expect(
                    &self.at,
                    "RUN with immediate_exit",
                    r,
                    &[libc::EINTR],
                    false,
                );
            } else {
                expect(
                    &self.at,
                    "RUN",
                    r,
                    &[libc::EINTR, libc::EBUSY, libc::ENOMEM, libc::EFAULT],
                    true,
                );
            }
            // SAFETY: as above.
            let ok = unsafe { check_exit(&self.at, run, r, &mut self.rng) };
            if !ok || r.is_err() {
                break;
            }
        }
        // SAFETY: as above.
        unsafe {
            (*run).request_interrupt_window = 0;
            (*run).immediate_exit = 0;
        }
    }
}

/// Checks the exit RUN reported and answers it (IN data, MMIO read data,
/// hypercall result); false when the vCPU cannot go on as it is.
///
/// # Safety
/// `run` must be a mapped run area.
pub unsafe fn check_exit(
    at: &Where,
    run: *mut sys::rvmx_run,
    r: Result<i32, i32>,
    rng: &mut Rng,
) -> bool {
    let reason = (*run).exit_reason;
    if let Err(e) = r {
        if e == libc::EINTR && reason != sys::RVMX_EXIT_INTR {
            problem(format!(
                "{}: RUN EINTR with exit_reason {reason}, want RVMX_EXIT_INTR",
                at.tag()
            ));
        }
        return false;
    }
    let name = match reason {
        sys::RVMX_EXIT_IO => "IO",
        sys::RVMX_EXIT_HYPERCALL => "HYPERCALL",
        sys::RVMX_EXIT_MMIO => "MMIO",
        sys::RVMX_EXIT_SHUTDOWN => "SHUTDOWN",
        sys::RVMX_EXIT_FAIL_ENTRY => "FAIL_ENTRY",
        sys::RVMX_EXIT_INTERNAL_ERROR => "INTERNAL_ERROR",
        sys::RVMX_EXIT_X86_RDMSR => "X86_RDMSR",
        sys::RVMX_EXIT_X86_WRMSR => "X86_WRMSR",
        sys::RVMX_EXIT_IOAPIC_EOI => "IOAPIC_EOI",
        other => {
            problem(format!(
                "{}: RUN returned 0 with exit_reason {other}",
                at.tag()
            ));
            return false;
        }
    };
    stats::event("exit reasons", name.into());
    let u = &mut (*run).__bindgen_anon_1;
    match reason {
        sys::RVMX_EXIT_IO => {
            let io = u.io;
            let bytes = u64::from(io.size) * u64::from(io.count);
            if ![1, 2, 4].contains(&io.size)
                || io.count == 0
                || io.data_offset < 256
                || io.data_offset + bytes > 4096
                || io.direction > 1
            {
                problem(format!("{}: malformed I/O exit {io:?}", at.tag()));
                return false;
            }
            if io.direction == sys::RVMX_EXIT_IO_IN as u8 {
                let p = (run as *mut u8).add(io.data_offset as usize);
                for i in 0..bytes as usize {
                    *p.add(i) = rng.next() as u8;
                }
            }
            io.port != 0xf4
        }
        sys::RVMX_EXIT_MMIO => {
            let m = u.mmio;
            if ![1, 2, 4, 8].contains(&m.len) || m.is_write > 1 {
                problem(format!("{}: malformed MMIO exit {m:?}", at.tag()));
                return false;
            }
            if m.is_write == 0 {
                u.mmio.data = rng.next().to_le_bytes();
            }
            true
        }
        sys::RVMX_EXIT_HYPERCALL => {
            u.hypercall.ret = rng.next();
            true
        }
        sys::RVMX_EXIT_X86_RDMSR | sys::RVMX_EXIT_X86_WRMSR => {
            u.msr.error = rng.below(2) as u8;
            u.msr.data = rng.next();
            true
        }
        sys::RVMX_EXIT_IOAPIC_EOI => true,
        _ => false,
    }
}
