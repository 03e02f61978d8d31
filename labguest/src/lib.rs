//! Small test guests for the selftests and the benchmark: page-aligned
//! guest memory, identity-mapped page tables, and flat segments for 32-bit
//! protected and 64-bit long mode, as `rvmx_sregs` (which is also KVM's
//! `kvm_sregs` layout); a GDT and an IDT with one stub per vector for
//! long-mode guests that take interrupts; and (in `asm`) the macros that
//! assemble guest code into the binary, with the x2APIC snippets both use.

mod asm;
pub use asm::blob;

use std::io;

use uapi::sys::{rvmx_segment, rvmx_sregs};

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

/// Where `identity_map` puts its three tables (PML4, PDPT, PD).
pub const PAGE_TABLES: u64 = 0x10000;

/// Writes page tables at `PAGE_TABLES` into `mem` (guest memory from
/// guest-physical 0) that identity-map the first 1 GiB with 2 MiB pages.
pub fn identity_map(mem: &mut [u8]) {
    let (pml4, pdpt, pd) = (PAGE_TABLES, PAGE_TABLES + 0x1000, PAGE_TABLES + 0x2000);
    let mut put = |at: u64, value: u64| {
        let at = at as usize;
        if let Some(slot) = mem.get_mut(at..at + 8) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    };
    put(pml4, pdpt | 3);
    put(pdpt, pd | 3);
    for i in 0..512u64 {
        put(pd + i * 8, (i << 21) | 0x83);
    }
}

/// A flat 4 GiB code segment (selector 0x8); `long` for 64-bit code.
pub fn code_segment(long: bool) -> rvmx_segment {
    rvmx_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Flat segments and control registers for 32-bit protected mode without
/// paging.
pub fn protected_mode(mut s: rvmx_sregs) -> rvmx_sregs {
    let data = rvmx_segment {
        selector: 0x10,
        type_: 0x3,
        db: 1,
        ..code_segment(false)
    };
    s.cs = code_segment(false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.cr0 = 0x31; // PE, ET, NE
    s
}

/// Flat segments, paging on with `identity_map`'s tables, and EFER.LME for
/// 64-bit mode.
pub fn long_mode(s: rvmx_sregs) -> rvmx_sregs {
    let mut s = protected_mode(s);
    s.cs = code_segment(true);
    s.tr = rvmx_segment {
        selector: 0x18,
        type_: 0xb,
        s: 0,
        db: 0,
        g: 0,
        limit: 0x67,
        ..code_segment(false)
    };
    s.cr3 = PAGE_TABLES;
    s.cr4 = 1 << 5; // PAE
    s.cr0 = 0x8000_0031; // PG, NE, ET, PE
    s.efer = (1 << 8) | (1 << 10); // LME, LMA (KVM insists on both)
    s
}

/// Where `write_idt` puts its GDT (null, 64-bit code at 0x8, data at 0x10).
pub const GDT: u64 = 0x2000;
/// The quadword the interrupt stubs jump through: the guest stores its
/// handler's address here (`set_handler!`).
pub const HANDLER_PTR: u64 = 0x2f00;
/// The IDT: 256 64-bit interrupt gates.
pub const IDT: u64 = 0x3000;
/// One 16-byte stub per vector: `push rax; push rcx; push rdx; mov eax,
/// vector; jmp [HANDLER_PTR]`.
pub const STUBS: u64 = 0x4000;
const GDT_ENTRIES: [u64; 4] = [0, 0x0020_9a00_0000_0000, 0x00cf_9200_0000_ffff, 0];

/// Writes into `mem` (guest memory from guest-physical 0) a GDT at `GDT`
/// and an IDT at `IDT` whose gate for each vector goes to its stub at
/// `STUBS + 16 * vector`. The stub saves RAX, RCX and RDX, puts the vector
/// in EAX and jumps to the handler whose address the guest stored at
/// `HANDLER_PTR`. So the handler finds, from RSP up: RDX, RCX, RAX, [the
/// error code,] RIP, CS, RFLAGS, RSP, SS; it ends with `iret64!()` (`pop
/// rdx; pop rcx; pop rax; iretq`). Load them with `idt_sregs`.
pub fn write_idt(mem: &mut [u8]) {
    let mut put = |at: u64, data: &[u8]| {
        let at = at as usize;
        if let Some(slot) = mem.get_mut(at..at + data.len()) {
            slot.copy_from_slice(data);
        }
    };
    for (i, d) in GDT_ENTRIES.iter().enumerate() {
        put(GDT + 8 * i as u64, &d.to_le_bytes());
    }
    for v in 0..256u64 {
        let stub = STUBS + v * 16;
        let mut bytes = vec![0x50, 0x51, 0x52, 0xb8, v as u8, 0, 0, 0, 0xff, 0x24, 0x25];
        bytes.extend_from_slice(&(HANDLER_PTR as u32).to_le_bytes());
        bytes.push(0x90);
        put(stub, &bytes);
        let gate_lo = (stub & 0xffff)
            | (0x8 << 16)
            | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
            | (((stub >> 16) & 0xffff) << 48);
        put(IDT + v * 16, &gate_lo.to_le_bytes());
        put(IDT + v * 16 + 8, &(stub >> 32).to_le_bytes());
    }
}

/// `s` with GDTR and IDTR pointing at `write_idt`'s tables.
pub fn idt_sregs(mut s: rvmx_sregs) -> rvmx_sregs {
    (s.gdt.base, s.gdt.limit) = (GDT, (GDT_ENTRIES.len() * 8 - 1) as u16);
    (s.idt.base, s.idt.limit) = (IDT, 256 * 16 - 1);
    s
}
pub mod host;
