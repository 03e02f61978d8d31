//! The timed guest loops: 64-bit code that runs one exit-causing
//! instruction N times between two RDTSCs and reports the difference with an
//! 8-byte MMIO write to `RESULT`.

use uapi::sys;

use crate::hv::{Hypervisor, Vm};

const MEM: usize = 0x20_0000;
const CODE: u64 = 0x1000;
/// Unmapped guest-physical addresses: the MMIO loop's target and the result.
const MMIO: u64 = 0x1000_0000;
const RESULT: u64 = 0x1000_1000;
const PIO_PORT: u16 = 0x10;
/// The port the guest writes to when it is done (HLT would sleep on rvmx).
const DONE_PORT: u16 = 0xf4;

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Cpuid,
    Vmcall,
    Pio,
    Mmio,
}

impl Op {
    pub const fn describe(self) -> &'static str {
        match self {
            Op::Cpuid => "CPUID (in-kernel exit)",
            Op::Vmcall => "VMCALL (rvmx: user, kvm: kernel)",
            Op::Pio => "OUT to user space",
            Op::Mmio => "MMIO write to user space",
        }
    }

    fn instruction(self) -> &'static [u8] {
        match self {
            Op::Cpuid => &[0x31, 0xc0, 0x0f, 0xa2], // xor eax, eax; cpuid
            Op::Vmcall => &[0x31, 0xc0, 0x0f, 0x01, 0xc1], // xor eax, eax; vmcall
            Op::Pio => &[0xe6, PIO_PORT as u8],     // out 0x10, al
            Op::Mmio => &[0x89, 0x03],              // mov [rbx], eax
        }
    }
}

fn code(op: Op, n: u64) -> Vec<u8> {
    let mut c = Vec::new();
    // mov r8, n; mov rbx, MMIO
    c.extend_from_slice(&[0x49, 0xb8]);
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[0x48, 0xbb]);
    c.extend_from_slice(&MMIO.to_le_bytes());
    // rdtsc; shl rdx, 32; or rax, rdx; mov r9, rax
    c.extend_from_slice(&[
        0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x49, 0x89, 0xc1,
    ]);
    let body = op.instruction();
    c.extend_from_slice(body);
    // dec r8; jnz body
    c.extend_from_slice(&[0x49, 0xff, 0xc8, 0x75, (-(body.len() as i8 + 5)) as u8]);
    // rdtsc; shl rdx, 32; or rax, rdx; sub rax, r9; mov rbx, RESULT; mov [rbx], rax;
    // out DONE_PORT, al
    c.extend_from_slice(&[
        0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x4c, 0x29, 0xc8, 0x48, 0xbb,
    ]);
    c.extend_from_slice(&RESULT.to_le_bytes());
    c.extend_from_slice(&[0x48, 0x89, 0x03, 0xe6, DONE_PORT as u8]);
    c
}

/// Runs `op` `n` times in a fresh VM and returns the guest's cycle count.
pub fn measure(hv: Hypervisor, op: Op, n: u64) -> Result<u64, String> {
    let mut mem = labguest::GuestMem::new(MEM).map_err(|e| format!("guest memory: {e}"))?;
    mem.write(CODE as usize, &code(op, n));
    labguest::identity_map(mem.bytes());
    // SAFETY: `mem` outlives `vm` (declared before it, dropped after).
    // No in-kernel irqchip on KVM here: these loops take no interrupts.
    let vm = unsafe { Vm::new(hv, mem.addr() as *mut u8, MEM, false)? };
    let mut vcpu = vm.vcpu(0)?;
    vcpu.set_sregs(labguest::long_mode(vcpu.sregs()?))?;
    // SAFETY: all-zero is a valid `rvmx_regs`.
    let mut regs: sys::rvmx_regs = unsafe { std::mem::zeroed() };
    (regs.rip, regs.rsp, regs.rflags) = (CODE, MEM as u64, 2);
    vcpu.set_regs(regs)?;
    let mut result = None;
    loop {
        let run = vcpu.run()?;
        // SAFETY (union reads): the exit reason says which member is valid.
        match run.exit_reason {
            sys::RVMX_EXIT_IO if unsafe { run.__bindgen_anon_1.io.port } == PIO_PORT => {}
            sys::RVMX_EXIT_HYPERCALL => {}
            sys::RVMX_EXIT_MMIO => {
                let m = unsafe { run.__bindgen_anon_1.mmio };
                if m.phys_addr == RESULT {
                    result = Some(u64::from_le_bytes(m.data));
                }
            }
            sys::RVMX_EXIT_IO if unsafe { run.__bindgen_anon_1.io.port } == DONE_PORT => break,
            other => return Err(format!("{op:?} on {hv:?}: unexpected exit {other}")),
        }
    }
    result.ok_or(format!("{op:?} on {hv:?}: the guest reported no result"))
}
