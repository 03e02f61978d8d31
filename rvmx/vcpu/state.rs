// SPDX-License-Identifier: GPL-2.0

//! `RVMX_GET/SET_REGS` and `RVMX_GET/SET_SREGS`: the ABI's register structs
//! to and from the VMCS and the software-held registers.

use kernel::prelude::*;

use crate::{
    uapi::{rvmx_dtable, rvmx_regs, rvmx_segment, rvmx_sregs},
    vmx::{
        current::CurrentVmcs,
        segment::Attributes,
        vmcs::{Field32, Field64, FieldNat, Seg},
    },
};

use super::{cr, regs::*, Guest, Vcpu};

pub(super) fn get_regs(vmcs: &CurrentVmcs<'_>, g: &Guest) -> rvmx_regs {
    let r = &g.regs.gpr;
    rvmx_regs {
        rax: r[RAX],
        rbx: r[RBX],
        rcx: r[RCX],
        rdx: r[RDX],
        rsi: r[RSI],
        rdi: r[RDI],
        rsp: vmcs.read(FieldNat::GuestRsp),
        rbp: r[RBP],
        r8: r[8],
        r9: r[9],
        r10: r[10],
        r11: r[11],
        r12: r[12],
        r13: r[13],
        r14: r[14],
        r15: r[15],
        rip: vmcs.read(FieldNat::GuestRip),
        rflags: vmcs.read(FieldNat::GuestRflags),
    }
}

/// RFLAGS bit 1 is always 1; bits 63:22, 15, 5 and 3 are reserved (0).
fn fix_rflags(rflags: u64) -> u64 {
    (rflags & 0x003f_7fd7) | 0x2
}

pub(super) fn set_regs(vmcs: &CurrentVmcs<'_>, g: &mut Guest, v: &rvmx_regs) {
    let r = &mut g.regs.gpr;
    r[RAX] = v.rax;
    r[RBX] = v.rbx;
    r[RCX] = v.rcx;
    r[RDX] = v.rdx;
    r[RSI] = v.rsi;
    r[RDI] = v.rdi;
    r[RBP] = v.rbp;
    for (dst, src) in r[8..]
        .iter_mut()
        .zip([v.r8, v.r9, v.r10, v.r11, v.r12, v.r13, v.r14, v.r15])
    {
        *dst = src;
    }
    vmcs.write(FieldNat::GuestRsp, v.rsp);
    vmcs.write(FieldNat::GuestRip, v.rip);
    vmcs.write(FieldNat::GuestRflags, fix_rflags(v.rflags));
    // New registers replace whatever an exit left to complete.
    g.pending = super::Pending::None;
    g.rip_advance = 0;
    g.exception = None;
}

fn get_segment(vmcs: &CurrentVmcs<'_>, seg: Seg) -> rvmx_segment {
    let a = Attributes::from_access_rights(vmcs.read(seg.access_rights()));
    rvmx_segment {
        base: vmcs.read(seg.base()),
        limit: vmcs.read(seg.limit()),
        selector: vmcs.read(seg.selector()),
        type_: a.ty,
        present: a.present,
        dpl: a.dpl,
        db: a.db,
        s: a.s,
        l: a.l,
        g: a.g,
        avl: a.avl,
        unusable: a.unusable,
        padding: 0,
    }
}

fn set_segment(vmcs: &CurrentVmcs<'_>, seg: Seg, v: &rvmx_segment) {
    let a = Attributes {
        ty: v.type_,
        s: v.s,
        dpl: v.dpl,
        present: v.present,
        avl: v.avl,
        l: v.l,
        db: v.db,
        g: v.g,
        // As KVM: a segment that is not present cannot be used.
        unusable: u8::from(v.unusable != 0 || v.present == 0),
    };
    vmcs.write(seg.selector(), v.selector);
    vmcs.write(seg.base(), v.base);
    vmcs.write(seg.limit(), v.limit);
    vmcs.write(seg.access_rights(), a.to_access_rights());
}

pub(super) fn get_sregs(vmcs: &CurrentVmcs<'_>, g: &Guest) -> rvmx_sregs {
    let seg = |s| get_segment(vmcs, s);
    let dt = |base, limit: u32| rvmx_dtable {
        base,
        limit: limit as u16,
        padding: [0; 3],
    };
    rvmx_sregs {
        cs: seg(Seg::Cs),
        ds: seg(Seg::Ds),
        es: seg(Seg::Es),
        fs: seg(Seg::Fs),
        gs: seg(Seg::Gs),
        ss: seg(Seg::Ss),
        tr: seg(Seg::Tr),
        ldt: seg(Seg::Ldtr),
        gdt: dt(
            vmcs.read(FieldNat::GuestGdtrBase),
            vmcs.read(Field32::GuestGdtrLimit),
        ),
        idt: dt(
            vmcs.read(FieldNat::GuestIdtrBase),
            vmcs.read(Field32::GuestIdtrLimit),
        ),
        cr0: cr::guest_cr0(vmcs),
        cr2: g.regs.cr2,
        cr3: vmcs.read(FieldNat::GuestCr3),
        cr4: cr::guest_cr4(vmcs),
        cr8: u64::from(g.lapic.tpr() >> 4),
        efer: vmcs.read(Field64::GuestIa32Efer),
        apic_base: g.lapic.base(),
        interrupt_bitmap: [0; 4],
    }
}

/// EFER bits a guest may set: SCE, LME, LMA (derived), NXE.
pub(crate) const EFER_VALID: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);

pub(super) fn set_sregs(
    vcpu: &Vcpu,
    vmcs: &CurrentVmcs<'_>,
    g: &mut Guest,
    v: &rvmx_sregs,
) -> Result {
    if v.efer & !EFER_VALID != 0 || v.interrupt_bitmap.iter().any(|&w| w != 0) {
        return Err(EINVAL);
    }
    // CR0 and CR4 as a MOV would check them (reserved bits, PG without PE,
    // CR4 bits the processor cannot set), and CR8's 4 bits.
    let caps = &vcpu.vm.host.caps;
    if v.cr0 >> 32 != 0 || (v.cr0 & (1 << 31) != 0 && v.cr0 & 1 == 0) {
        return Err(EINVAL);
    }
    if v.cr4 & !caps.cr4_fixed1 != 0 || v.cr4 & caps.cr4_fixed0 != 0 || v.cr8 > 0xf {
        return Err(EINVAL);
    }
    // IA32_APIC_BASE as a WRMSR would take it; checked on a copy, so a
    // refused one changes nothing.
    let mut lapic = g.lapic.clone();
    if v.apic_base != lapic.base() {
        lapic.set_base(v.apic_base).map_err(|_| EINVAL)?;
    }
    for (seg, value) in [
        (Seg::Cs, &v.cs),
        (Seg::Ds, &v.ds),
        (Seg::Es, &v.es),
        (Seg::Fs, &v.fs),
        (Seg::Gs, &v.gs),
        (Seg::Ss, &v.ss),
        (Seg::Tr, &v.tr),
        (Seg::Ldtr, &v.ldt),
    ] {
        set_segment(vmcs, seg, value);
    }
    vmcs.write(FieldNat::GuestGdtrBase, v.gdt.base);
    vmcs.write(Field32::GuestGdtrLimit, u32::from(v.gdt.limit));
    vmcs.write(FieldNat::GuestIdtrBase, v.idt.base);
    vmcs.write(Field32::GuestIdtrLimit, u32::from(v.idt.limit));
    cr::set_cr0(vcpu, vmcs, v.cr0);
    cr::set_cr4(vcpu, vmcs, v.cr4);
    vmcs.write(FieldNat::GuestCr3, v.cr3);
    cr::set_efer(vcpu, vmcs, v.efer, v.cr0);
    g.regs.cr2 = v.cr2;
    lapic.set_tpr((v.cr8 as u32) << 4);
    g.lapic = lapic;
    vcpu.mailbox().publish_target(&g.lapic.target());
    Ok(())
}
