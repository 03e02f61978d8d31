// SPDX-License-Identifier: GPL-2.0

//! Port I/O exits: IN, OUT, INS and OUTS (with REP) go to user space with
//! their data in the run area, as KVM's KVM_EXIT_IO.
//!
//! String forms move up to `RVMX_RUN_DATA_SIZE` bytes per exit: OUTS copies
//! guest memory into the data area before the exit; INS copies the data area
//! into guest memory when the next `RVMX_RUN` completes it. A REP with more
//! left leaves RIP on the instruction, which exits again for the rest. The
//! copies read guest memory, so string I/O is finished outside the window.

use crate::{
    uapi,
    vcpu::{
        regs::{RAX, RCX, RDI, RSI},
        Guest, Pending, RunArea, Vcpu, RUN_DATA_SIZE,
    },
    vmx::{
        current::CurrentVmcs,
        vmcs::{Field32Ro, FieldNat, FieldNatRo},
    },
};

use super::{
    guest_mem, guest_paging, mmio::Emulated, pagewalk::Paging, reason::IoAccess, skip_instruction,
    Action,
};

const RFLAGS_DF: u64 = 1 << 10;

pub(super) fn handle(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest, io: IoAccess) -> Action {
    if io.string {
        // VM-exit instruction information bits 9:7: the address size.
        let addr_bytes = match (vmcs.read(Field32Ro::ExitInstructionInfo) >> 7) & 7 {
            0 => 2,
            1 => 4,
            _ => 8,
        };
        return Action::StringIo(StringIo {
            io,
            la: vmcs.read(FieldNatRo::GuestLinearAddress),
            addr_bytes,
            backwards: vmcs.read(FieldNat::GuestRflags) & RFLAGS_DF != 0,
            insn_len: u64::from(vmcs.read(Field32Ro::ExitInstructionLength)),
            paging: guest_paging(vmcs),
        });
    }
    let size = usize::from(io.size);
    let direction = if io.is_in {
        g.pending = Pending::PortIn { size: io.size };
        uapi::RVMX_EXIT_IO_IN
    } else {
        vcpu.run
            .write_data(0, &g.regs.gpr[RAX].to_le_bytes()[..size]);
        uapi::RVMX_EXIT_IO_OUT
    };
    skip_instruction(vmcs);
    set_exit(vcpu, io, direction, 1);
    Action::User
}

fn set_exit(vcpu: &Vcpu, io: IoAccess, direction: u32, count: u32) {
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_IO,
        uapi::rvmx_exit_io {
            direction: direction as u8,
            size: io.size,
            port: io.port,
            count,
            data_offset: RunArea::data_offset(),
        },
    );
}

/// Puts the `size` bytes the VMM left for an IN into RAX: a 32-bit IN
/// zero-extends into RAX, 8- and 16-bit ones keep the other bits.
pub(crate) fn complete_in(vcpu: &Vcpu, g: &mut Guest, size: u8) {
    let mut bytes = [0u8; 8];
    let size = usize::from(size.min(4));
    vcpu.run.read_data(0, &mut bytes[..size]);
    let value = u64::from_le_bytes(bytes);
    let rax = &mut g.regs.gpr[RAX];
    *rax = match size {
        4 => value,
        n => (*rax & !((1u64 << (8 * n)) - 1)) | value,
    };
}

/// An INS or OUTS, captured at the exit.
#[derive(Clone, Copy)]
pub(crate) struct StringIo {
    io: IoAccess,
    /// Guest-linear address of the first element.
    la: u64,
    /// Address size: 2, 4 or 8 bytes (RSI/RDI/RCX are used at that width).
    addr_bytes: u8,
    /// RFLAGS.DF: addresses go down.
    backwards: bool,
    insn_len: u64,
    paging: Paging,
}

/// Bytes moved between guest memory and the data area per step, so that
/// the buffer stays small on the kernel stack.
const CHUNK: usize = 256;

impl StringIo {
    /// Calls `f(guest-linear address, data-area offset, buffer)` for the
    /// `count` elements, CHUNK bytes at a time, in execution order. With DF
    /// set the elements run downwards from `la`, so each chunk's memory
    /// lies below the previous one's.
    fn for_each_chunk(&self, count: u64, mut f: impl FnMut(u64, usize, &mut [u8])) {
        let size = u64::from(self.io.size);
        let total = (count * size) as usize;
        let mut buf = [0u8; CHUNK];
        let mut at = 0;
        while at < total {
            let n = (total - at).min(CHUNK);
            let la = if self.backwards {
                self.la.wrapping_sub((at + n) as u64 - size)
            } else {
                self.la.wrapping_add(at as u64)
            };
            f(la, at, &mut buf[..n]);
            at += n;
        }
    }

    /// Adds `delta` to the index register `reg` at the address size.
    fn bump(&self, g: &mut Guest, reg: usize, delta: i64) {
        let mask = match self.addr_bytes {
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        let v = g.regs.gpr[reg];
        let new = v.wrapping_add(delta as u64) & mask;
        // 32-bit address size writes the whole register (zero-extending);
        // 16-bit only its low word.
        g.regs.gpr[reg] = if self.addr_bytes == 2 {
            (v & !mask) | new
        } else {
            new
        };
    }

    /// Moves the index register and RCX past `count` elements, and RIP past
    /// the instruction once no repetitions remain.
    fn advance(&self, g: &mut Guest, index: usize, count: u64) {
        let step = i64::from(self.io.size) * count as i64;
        self.bump(g, index, if self.backwards { -step } else { step });
        if self.io.rep {
            self.bump(g, RCX, -(count as i64));
        }
        if !self.io.rep || self.remaining(g) == 0 {
            g.rip_advance = self.insn_len;
        }
    }

    fn remaining(&self, g: &Guest) -> u64 {
        if !self.io.rep {
            return 1;
        }
        let rcx = g.regs.gpr[RCX];
        match self.addr_bytes {
            2 => rcx & 0xffff,
            4 => rcx & 0xffff_ffff,
            _ => rcx,
        }
    }
}

/// Emulates an INS or OUTS out of the window.
pub(crate) fn emulate_string(vcpu: &Vcpu, g: &mut Guest, s: &StringIo) -> Emulated {
    let size = u64::from(s.io.size);
    let count = s.remaining(g).min(RUN_DATA_SIZE as u64 / size);
    if count == 0 {
        // REP with RCX = 0 does nothing.
        g.rip_advance = s.insn_len;
        return Emulated::Retry;
    }
    if s.io.is_in {
        g.pending = Pending::PortInString { io: *s, count };
        set_exit(vcpu, s.io, uapi::RVMX_EXIT_IO_IN, count as u32);
        return Emulated::ToUser;
    }
    let mut ok = true;
    s.for_each_chunk(count, |la, at, buf| {
        ok = ok && guest_mem::read_linear(vcpu, &s.paging, la, buf) == buf.len();
        if s.backwards {
            reverse_elements(buf, usize::from(s.io.size));
        }
        vcpu.run.write_data(at, buf);
    });
    if !ok {
        return string_failed(vcpu, s);
    }
    s.advance(g, RSI, count);
    set_exit(vcpu, s.io, uapi::RVMX_EXIT_IO_OUT, count as u32);
    Emulated::ToUser
}

/// Finishes an INS: the VMM's data goes to guest memory.
pub(crate) fn complete_in_string(vcpu: &Vcpu, g: &mut Guest, s: &StringIo, count: u64) {
    s.for_each_chunk(count, |la, at, buf| {
        vcpu.run.read_data(at, buf);
        if s.backwards {
            reverse_elements(buf, usize::from(s.io.size));
        }
        // A destination that is not writable guest memory drops the data,
        // as a write to a read-only slot would.
        let _ = guest_mem::write_linear(vcpu, &s.paging, la, buf);
    });
    s.advance(g, RDI, count);
}

/// Element order in the data area is execution order; in memory, with DF
/// set, it is reversed.
fn reverse_elements(buf: &mut [u8], size: usize) {
    // Reversing all bytes reverses the elements and each one's bytes; the
    // second pass puts each element's bytes back in order.
    buf.reverse();
    for element in buf.chunks_mut(size.max(1)) {
        element.reverse();
    }
}

fn string_failed(vcpu: &Vcpu, s: &StringIo) -> Emulated {
    let mut data = [0u64; 16];
    data[0] = s.la;
    data[1] = u64::from(s.io.port);
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_INTERNAL_ERROR,
        uapi::rvmx_exit_internal {
            suberror: uapi::RVMX_INTERNAL_ERROR_EMULATION,
            ndata: 2,
            data,
        },
    );
    Emulated::ToUser
}
