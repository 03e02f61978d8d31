//! Random guest state and code: processor-state templates (real,
//! protected, long mode) mutated field by field, and short code built
//! from instructions a hostile guest would use, plus random bytes.

use uapi::sys::{rvmx_regs, rvmx_segment, rvmx_sregs};

use crate::rng::Rng;

/// Where generated code goes in the first slot.
pub const CODE: u64 = 0x1000;
/// Guest memory of a fuzzed VM's first slot.
pub const MEM: usize = 0x10_0000;

/// Instructions (64-bit encodings; in other modes they decode as other
/// instructions, which is as good).
const SNIPPETS: &[&[u8]] = &[
    &[0xe6, 0x80],                            // out 0x80, al
    &[0xe4, 0x80],                            // in al, 0x80
    &[0xed],                                  // in eax, dx
    &[0xef],                                  // out dx, eax
    &[0x8b, 0x04, 0x25, 0, 0, 0, 0x40],       // mov eax, [0x40000000] (no slot: MMIO)
    &[0x89, 0x04, 0x25, 0, 0x10, 0xc0, 0xfe], // mov [0xfec01000], eax
    &[0x8b, 0x04, 0x25, 0x30, 0, 0xe0, 0xfe], // mov eax, [0xfee00030] (xAPIC version)
    &[0x0f, 0xa2],                            // cpuid
    &[0x0f, 0x31],                            // rdtsc
    &[0x0f, 0x32],                            // rdmsr
    &[0x0f, 0x30],                            // wrmsr
    &[0x0f, 0x01, 0xc1],                      // vmcall
    &[0xf4],                                  // hlt
    &[0xfb],                                  // sti
    &[0xfa],                                  // cli
    &[0xcc],                                  // int3
    &[0x0f, 0x0b],                            // ud2
    &[0x0f, 0x01, 0xd1],                      // xsetbv
    &[0x0f, 0x01, 0xd0],                      // xgetbv
    &[0x0f, 0x22, 0xc0],                      // mov cr0, rax
    &[0x0f, 0x22, 0xe0],                      // mov cr4, rax
    &[0x0f, 0x22, 0xd8],                      // mov cr3, rax
    &[0x44, 0x0f, 0x22, 0xc0],                // mov cr8, rax
    &[0x0f, 0x23, 0xf8],                      // mov dr7, rax
    &[0x0f, 0x21, 0xe0],                      // mov rax, dr4
    &[0x0f, 0x09],                            // wbinvd
    &[0x0f, 0x08],                            // invd
    &[0x0f, 0x33],                            // rdpmc
    &[0xf3, 0x0f, 0xc7, 0x30],                // vmxon [rax]
    &[0x66, 0x0f, 0xc7, 0x30],                // vmclear [rax]
    &[0x0f, 0xc7, 0x30],                      // vmptrld [rax]
    &[0x0f, 0x78, 0xc1],                      // vmread rcx, rax
    &[0x0f, 0x79, 0xc1],                      // vmwrite rax, rcx
    &[0x0f, 0x01, 0xc2],                      // vmlaunch
    &[0x0f, 0x01, 0xc3],                      // vmresume
    &[0x0f, 0x01, 0xc4],                      // vmxoff
    &[0x66, 0x0f, 0x38, 0x80, 0x00],          // invept rax, [rax]
    &[0x66, 0x0f, 0x38, 0x81, 0x00],          // invvpid rax, [rax]
    &[0x0f, 0x01, 0xd4],                      // vmfunc
    &[0x0f, 0x37],                            // getsec
    &[0x0f, 0x01, 0xcf],                      // encls
    &[0x0f, 0x01, 0xc8],                      // monitor
    &[0x0f, 0x01, 0xc9],                      // mwait
    &[0x0f, 0xc7, 0xf0],                      // rdrand eax
    &[0x0f, 0xc7, 0xf8],                      // rdseed eax
    &[0x48, 0x0f, 0xc7, 0x28],                // xsaves [rax]
    &[0x48, 0x0f, 0xc7, 0x18],                // xrstors [rax]
    &[0x0f, 0x01, 0x18],                      // lidt [rax]
    &[0x0f, 0x01, 0x10],                      // lgdt [rax]
    &[0x8e, 0xd0],                            // mov ss, eax
    &[0x9c, 0x9d],                            // pushf; popf
    &[0x48, 0xcf],                            // iretq
    &[0x0f, 0x05],                            // syscall
    &[0x0f, 0x34],                            // sysenter
    &[0xcd, 0x80],                            // int 0x80
    &[0xf3, 0x6e],                            // rep outsb
    &[0xf3, 0x6c],                            // rep insb
    &[0xf3, 0x90],                            // pause
    &[0x0f, 0x06],                            // clts
    &[0x0f, 0x01, 0xf0],                      // lmsw ax
    &[0x0f, 0x00, 0xd8],                      // ltr ax
    &[0xeb, 0xfe],                            // jmp $ (the timer ends it)
    &[0x31, 0xc0],                            // xor eax, eax
];

/// A short random program at most `max` bytes long, ending with OUT to
/// port 0xf4.
pub fn code(rng: &mut Rng, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let n = 1 + rng.below(12);
    for _ in 0..n {
        match rng.below(8) {
            0 => {
                // mov rax/rcx/rdx, imm64: operands for what follows
                out.push(0x48);
                out.push(rng.pick(&[0xb8u8, 0xb9, 0xba]));
                out.extend_from_slice(&rng.interesting().to_le_bytes());
            }
            1 => {
                let mut b = vec![0u8; 1 + rng.below(6) as usize];
                rng.fill(&mut b);
                out.extend_from_slice(&b);
            }
            _ => out.extend_from_slice(rng.pick(SNIPPETS)),
        }
    }
    out.truncate(max.saturating_sub(2));
    out.extend_from_slice(&[0xe6, 0xf4]);
    out
}

/// One of three valid starting states (labguest's), from `s`.
pub fn template(rng: &mut Rng, s: rvmx_sregs) -> (rvmx_sregs, &'static str) {
    match rng.below(3) {
        0 => {
            let mut s = s;
            s.cs.selector = 0;
            s.cs.base = 0;
            (s, "real")
        }
        1 => (labguest::protected_mode(s), "protected"),
        _ => {
            let mut s = labguest::long_mode(s);
            s.cs = labguest::code_segment(true);
            (s, "long")
        }
    }
}

fn mutate_segment(rng: &mut Rng, seg: &mut rvmx_segment) {
    match rng.below(11) {
        0 => seg.base = rng.interesting(),
        1 => seg.limit = rng.interesting() as u32,
        2 => seg.selector = rng.next() as u16,
        3 => seg.type_ = rng.below(16) as u8,
        4 => seg.present = rng.below(3) as u8,
        5 => seg.dpl = rng.below(5) as u8,
        6 => seg.db = rng.below(3) as u8,
        7 => seg.s = rng.below(3) as u8,
        8 => seg.l = rng.below(3) as u8,
        9 => seg.g = rng.below(3) as u8,
        _ => seg.unusable = rng.below(3) as u8,
    }
}

/// `s` with a few fields changed to interesting values.
pub fn mutate_sregs(rng: &mut Rng, s: &mut rvmx_sregs) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(16) {
            0 => mutate_segment(rng, &mut s.cs),
            1 => mutate_segment(rng, &mut s.ss),
            2 => mutate_segment(rng, &mut s.ds),
            3 => mutate_segment(rng, &mut s.tr),
            4 => mutate_segment(rng, &mut s.ldt),
            5 => mutate_segment(rng, &mut s.fs),
            6 => s.cr0 ^= 1 << rng.below(64),
            7 => s.cr4 ^= 1 << rng.below(64),
            8 => s.efer ^= 1 << rng.below(64),
            9 => s.cr3 = rng.interesting(),
            10 => s.cr8 = rng.below(20),
            11 => {
                let any = rng.next();
                s.apic_base = rng.pick(&[0xfee0_0900u64, 0xfee0_0d00, 0, 0xfee0_0800, any]);
            }
            12 => s.gdt.limit = rng.next() as u16,
            13 => s.idt.base = rng.interesting(),
            14 => s.interrupt_bitmap[rng.below(4) as usize] = 1 << rng.below(64),
            _ => s.cr2 = rng.interesting(),
        }
    }
}

/// Registers for code at `CODE`: mostly sensible, sometimes not.
pub fn regs(rng: &mut Rng) -> rvmx_regs {
    // SAFETY: all-zero is a valid rvmx_regs.
    let mut r: rvmx_regs = unsafe { std::mem::zeroed() };
    r.rip = if rng.one_in(8) {
        rng.interesting()
    } else {
        CODE
    };
    r.rsp = MEM as u64 - 0x100;
    r.rflags = if rng.one_in(6) {
        rng.interesting()
    } else {
        2 | (rng.below(2) << 9)
    };
    r.rax = rng.interesting();
    r.rcx = rng.interesting();
    r.rdx = rng.below(0x1_0000);
    r.rsi = rng.below(MEM as u64);
    r.rdi = rng.below(MEM as u64);
    r
}
