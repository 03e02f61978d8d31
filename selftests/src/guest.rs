//! Test guests: a VM with memory at guest-physical 0, one vCPU, and helpers
//! to put code there and run it in real, protected or long mode.

use std::io;

use uapi::{sys, Rvmx, VcpuFd, VmFd, DEVICE_PATH};

use crate::ktap::{Context, Outcome};

/// Anonymous memory for a guest, unmapped on drop.
pub struct GuestMem {
    ptr: *mut u8,
    len: usize,
}

impl GuestMem {
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn write(&mut self, gpa: usize, data: &[u8]) {
        self.bytes()[gpa..gpa + data.len()].copy_from_slice(data);
    }

    pub fn write_u64(&mut self, gpa: usize, value: u64) {
        self.write(gpa, &value.to_le_bytes());
    }

    pub fn read_u64(&mut self, gpa: usize) -> u64 {
        u64::from_le_bytes(self.bytes()[gpa..gpa + 8].try_into().unwrap_or_default())
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn region(
    slot: u32,
    gpa: u64,
    size: u64,
    uaddr: u64,
    flags: u32,
) -> sys::rvmx_userspace_memory_region {
    sys::rvmx_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uaddr,
    }
}

/// A VM with `mem` at guest-physical 0 (slot 0) and vCPU 0.
pub struct TestVm {
    pub vm: VmFd,
    pub vcpu: VcpuFd,
    pub mem: GuestMem,
}

/// Where test code starts, and where long-mode page tables live.
pub const CODE: u64 = 0x1000;
const PML4: u64 = 0x10000;

impl TestVm {
    pub fn new(mem_size: usize) -> Result<Self, Outcome> {
        let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
        let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
        let mem = GuestMem::new(mem_size).ctx("mmap guest memory")?;
        // SAFETY: `mem` is used for nothing but the guest and lives in the
        // same struct as the VM (and rvmx pins the pages anyway).
        unsafe { vm.set_user_memory_region(region(0, 0, mem_size as u64, mem.addr(), 0)) }
            .ctx("RVMX_SET_USER_MEMORY_REGION")?;
        let vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
        Ok(Self { vm, vcpu, mem })
    }

    /// Real mode, CS:IP = 0:CODE, with `code` there.
    pub fn real_mode(mem_size: usize, code: &[u8]) -> Result<Self, Outcome> {
        let mut t = Self::new(mem_size)?;
        t.mem.write(CODE as usize, code);
        let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
        s.cs.selector = 0;
        s.cs.base = 0;
        t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        r.rip = CODE;
        r.rflags = 2;
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        Ok(t)
    }

    /// 64-bit mode with the first 1 GiB identity-mapped (2 MiB pages),
    /// RIP = CODE, RSP = the top of memory.
    pub fn long_mode(mem_size: usize, code: &[u8]) -> Result<Self, Outcome> {
        let mut t = Self::new(mem_size)?;
        t.mem.write(CODE as usize, code);
        let (pml4, pdpt, pd) = (PML4, PML4 + 0x1000, PML4 + 0x2000);
        t.mem.write_u64(pml4 as usize, pdpt | 3);
        t.mem.write_u64(pdpt as usize, pd | 3);
        for i in 0..512u64 {
            t.mem.write_u64((pd + i * 8) as usize, (i << 21) | 0x83);
        }
        let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
        let code_seg = sys::rvmx_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data_seg = sys::rvmx_segment {
            selector: 0x10,
            type_: 0x3,
            l: 0,
            db: 1,
            ..code_seg
        };
        s.cs = code_seg;
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data_seg, data_seg, data_seg, data_seg, data_seg);
        s.tr = sys::rvmx_segment {
            selector: 0x18,
            type_: 0xb,
            s: 0,
            l: 0,
            g: 0,
            limit: 0x67,
            ..code_seg
        };
        s.cr3 = pml4;
        s.cr4 = 1 << 5; // PAE
        s.cr0 = 0x8000_0031; // PG, NE, ET, PE
        s.efer = 1 << 8; // LME (LMA follows)
        t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        r.rip = CODE;
        r.rsp = mem_size as u64;
        r.rflags = 2;
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        Ok(t)
    }

    /// Runs until an exit; returns its reason.
    pub fn run(&mut self) -> Result<u32, Outcome> {
        self.vcpu.run().ctx("RVMX_RUN")?;
        Ok(self.vcpu.run_area().exit_reason)
    }

    /// Runs and expects `reason`.
    pub fn run_expect(&mut self, reason: u32) -> Result<(), Outcome> {
        let got = self.run()?;
        if got != reason {
            let rip = self.vcpu.regs().map(|r| r.rip).unwrap_or(0);
            let detail = if got == sys::RVMX_EXIT_INTERNAL_ERROR {
                // SAFETY: exit_reason says the union holds `internal`.
                let i = unsafe { self.vcpu.run_area().__bindgen_anon_1.internal };
                format!(" (suberror {}, data {:x?})", i.suberror, &i.data[..4])
            } else if got == sys::RVMX_EXIT_FAIL_ENTRY {
                // SAFETY: exit_reason says the union holds `fail_entry`.
                let f = unsafe { self.vcpu.run_area().__bindgen_anon_1.fail_entry };
                format!(" (hardware reason {:#x})", f.hardware_entry_failure_reason)
            } else {
                String::new()
            };
            return Err(Outcome::Fail(format!(
                "exit {got}{detail} at rip {rip:#x}, want exit {reason}"
            )));
        }
        Ok(())
    }

    pub fn io(&mut self) -> sys::rvmx_exit_io {
        // SAFETY: callers check the exit reason first.
        unsafe { self.vcpu.run_area().__bindgen_anon_1.io }
    }
}
