// SPDX-License-Identifier: GPL-2.0

//! MMIO: a guest access to a guest-physical address outside every slot, or
//! a write to a read-only slot, becomes an `RVMX_EXIT_MMIO` for user space,
//! except an access to the vCPU's xAPIC page, which its local APIC serves
//! (with APIC virtualization, only the accesses the processor does not
//! serve itself come here, as APIC-access exits).
//!
//! The EPT violation only gives the address, so rvmx fetches the faulting
//! instruction from guest memory and decodes it (`decode`). Fetching reads
//! user memory and takes the VM's memory lock, neither of which may happen
//! with interrupts off, so the exit captures what it needs from the VMCS
//! (`Fault`) and the rest runs after the window is left.

use crate::{
    uapi,
    vcpu::{self, regs::RSP, Guest, Pending, Vcpu},
    vmx::{
        current::CurrentVmcs,
        segment::Attributes,
        vmcs::{Field64, FieldNat, Seg},
    },
};

use super::{
    decode::{self, CodeMode, MmioInsn, Op, Reg},
    guest_mem, lapic,
    pagewalk::Paging,
};

/// What emulation needs from the VMCS, taken at the exit.
pub(crate) struct Fault {
    gpa: u64,
    write: bool,
    rip: u64,
    rsp: u64,
    cs_base: u64,
    mode: CodeMode,
    paging: Paging,
}

impl Fault {
    /// An access to `gpa`, by the instruction at the guest's RIP.
    pub(super) fn at(vmcs: &CurrentVmcs<'_>, gpa: u64, write: bool) -> Self {
        let cs = Attributes::from_access_rights(vmcs.read(Seg::Cs.access_rights()));
        let efer = vmcs.read(Field64::GuestIa32Efer);
        let mode = if efer & vcpu::EFER_LMA != 0 && cs.l != 0 {
            CodeMode::Bits64
        } else if cs.db != 0 {
            CodeMode::Bits32
        } else {
            CodeMode::Bits16
        };
        Self {
            gpa,
            write,
            rip: vmcs.read(FieldNat::GuestRip),
            rsp: vmcs.read(FieldNat::GuestRsp),
            cs_base: vmcs.read(Seg::Cs.base()),
            mode,
            paging: super::guest_paging(vmcs),
        }
    }
}

/// What the run loop does once emulation ran.
pub(crate) enum Emulated {
    /// The run area holds the MMIO exit (or an emulation failure).
    ToUser,
    /// The address is guest memory after all (a slot was added since the
    /// exit): enter the guest again to retry the access.
    Retry,
}

fn reg_value(g: &Guest, f: &Fault, r: Reg) -> u64 {
    let n = usize::from(r.num & 0xf);
    let value = if n == RSP { f.rsp } else { g.regs.gpr[n] };
    if r.high_byte {
        value >> 8
    } else {
        value
    }
}

pub(crate) fn emulate(vcpu: &Vcpu, g: &mut Guest, f: &Fault) -> Emulated {
    if let Some((_, writable)) = vcpu.vm.mem.lock().translate(f.gpa) {
        if !f.write || writable {
            return Emulated::Retry;
        }
    }
    let mut bytes = [0u8; 15];
    let la = f.cs_base.wrapping_add(f.rip);
    let la = if f.mode == CodeMode::Bits64 {
        la
    } else {
        la & 0xffff_ffff
    };
    let n = guest_mem::read_linear(vcpu, &f.paging, la, &mut bytes);
    let insn = match decode::decode(&bytes[..n], f.mode) {
        // Loads into RSP would need the VMCS; no compiler emits them for MMIO.
        Some(MmioInsn {
            op:
                Op::Load {
                    dest:
                        Reg {
                            num: 4,
                            high_byte: false,
                        },
                    ..
                },
            ..
        })
        | None => {
            let mut data = [0u64; 16];
            data[0] = f.rip;
            data[1] = f.gpa;
            data[2] = u64::from_le_bytes([
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
            ]);
            vcpu.run.set_exit(
                uapi::RVMX_EXIT_INTERNAL_ERROR,
                uapi::rvmx_exit_internal {
                    suberror: uapi::RVMX_INTERNAL_ERROR_EMULATION,
                    ndata: 3,
                    data,
                },
            );
            return Emulated::ToUser;
        }
        Some(insn) => insn,
    };
    if let Some(page) = g.lapic.mmio_page().filter(|&p| f.gpa & !0xfff == p) {
        return local_apic(vcpu, g, f, &insn, f.gpa - page);
    }
    let value = match insn.op {
        Op::StoreReg(r) => Some(reg_value(g, f, r)),
        Op::StoreImm(imm) => Some(imm),
        Op::Load { dest, dest_bytes } => {
            g.pending = Pending::MmioRead {
                size: insn.size,
                dest,
                dest_bytes,
            };
            None
        }
    };
    g.rip_advance = u64::from(insn.len);
    let mut data = [0u8; 8];
    for (d, s) in data
        .iter_mut()
        .zip(value.unwrap_or(0).to_le_bytes())
        .take(usize::from(insn.size))
    {
        *d = s;
    }
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_MMIO,
        uapi::rvmx_exit_mmio {
            phys_addr: f.gpa,
            data,
            len: u32::from(insn.size),
            is_write: u8::from(value.is_some()),
        },
    );
    Emulated::ToUser
}

/// An access to the xAPIC page: 32-bit registers at 16-byte offsets. Other
/// sizes and misaligned accesses read 0 and write nothing (the SDM leaves
/// them undefined).
fn local_apic(vcpu: &Vcpu, g: &mut Guest, f: &Fault, insn: &MmioInsn, offset: u64) -> Emulated {
    let aligned = insn.size == 4 && offset & 0xf == 0;
    let offset = offset as u32;
    let now = g.tsc();
    g.rip_advance = u64::from(insn.len);
    let value = match insn.op {
        Op::StoreReg(r) => reg_value(g, f, r),
        Op::StoreImm(imm) => imm,
        Op::Load { dest, dest_bytes } => {
            let value = if aligned {
                g.lapic.read(offset, now).unwrap_or(0)
            } else {
                0
            };
            set_loaded(g, u64::from(value), insn.size, dest, dest_bytes);
            return Emulated::Retry;
        }
    };
    if aligned {
        // xAPIC writes to read-only registers are ignored, never faults.
        if let Ok(effect) = g.lapic.write(offset, value & 0xffff_ffff, now) {
            lapic::apply(vcpu, g, effect);
        }
    }
    Emulated::Retry
}

/// Puts the data user space supplied for an MMIO load into the register.
pub(crate) fn complete_load(vcpu: &Vcpu, g: &mut Guest, size: u8, dest: Reg, dest_bytes: u8) {
    let mmio: uapi::rvmx_exit_mmio = vcpu.run.exit_details();
    let mut bytes = [0u8; 8];
    for (d, s) in bytes.iter_mut().zip(mmio.data).take(usize::from(size)) {
        *d = s;
    }
    set_loaded(g, u64::from_le_bytes(bytes), size, dest, dest_bytes);
}

/// Writes the `size` bytes an MMIO load read into its destination register.
fn set_loaded(g: &mut Guest, value: u64, size: u8, dest: Reg, dest_bytes: u8) {
    let value = if size >= 8 {
        value
    } else {
        value & ((1u64 << (8 * size)) - 1)
    };
    let reg = &mut g.regs.gpr[usize::from(dest.num & 0xf)];
    *reg = match (dest_bytes, dest.high_byte) {
        (_, true) => (*reg & !0xff00) | ((value & 0xff) << 8),
        (1, _) => (*reg & !0xff) | (value & 0xff),
        (2, _) => (*reg & !0xffff) | (value & 0xffff),
        // 32-bit destinations zero-extend; 64-bit ones take it all.
        _ => value,
    };
}
