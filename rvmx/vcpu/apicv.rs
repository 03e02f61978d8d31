// SPDX-License-Identifier: GPL-2.0

//! APIC virtualization (SDM Vol. 3, Chapter 30), where the VM uses it
//! (`Controls::apicv`).
//!
//! The local APIC model (`lapic`) stays the authority. Whenever one of its
//! registers changed, the next entry mirrors them all into the vCPU's
//! virtual-APIC page, with the highest requested and in-service vectors
//! (RVI, SVI) and the level-triggered vectors as the EOI-exit bitmap. The
//! processor then serves the guest's register reads from the page, keeps
//! its TPR there (CR8 too, through the TPR shadow), delivers the requested
//! interrupts and takes EOIs without an exit, except for a level-triggered
//! vector, whose EOI the VMM's I/O APIC must see. After every exit the TPR,
//! ISR and IRR the processor changed go back into the model (`sync`). Other
//! register writes reach the model as trap-like APIC-write exits, with the
//! value in the page (`write`); reads the processor does not serve (the
//! timer's current count, odd sizes) exit and are emulated.
//!
//! Which accesses are virtualized follows the APIC's mode, per vCPU: in
//! xAPIC mode at the default base, accesses to that page (where the VM's
//! APIC-access page is mapped in the EPT) are APIC accesses; in x2APIC mode
//! the VM's MSR bitmap lets the processor handle reads of the x2APIC
//! registers and writes of TPR, EOI and SELF IPI; disabled, or moved to
//! another base, every access exits and is emulated as without APIC
//! virtualization.

use kernel::prelude::*;

use crate::{
    exit::{self, Action},
    lapic::{self, Effect, Vectors},
    phys::{virt_to_phys, PageBuf},
    vmx::{
        controls::ApicVirtualization,
        current::CurrentVmcs,
        vmcs::{Field16, Field32, Field64},
    },
};

use super::{Guest, Vcpu};

/// Register offsets the mirror and the sync touch.
const TPR: u32 = 0x80;
const ISR: u32 = 0x100;
const IRR: u32 = 0x200;
const ICR_LO: u32 = 0x300;
const ICR_HI: u32 = 0x310;

/// A page the processor reads and writes by physical address while the
/// guest runs. Only the vCPU's thread touches it, outside guest mode, with
/// volatile accesses (the compiler cannot see the processor's writes).
pub(crate) struct VirtualApicPage(KBox<PageBuf>);

impl VirtualApicPage {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self(KBox::init(
            pin_init::init_zeroed(),
            GFP_KERNEL_ACCOUNT,
        )?))
    }

    pub(crate) fn phys(&self) -> u64 {
        virt_to_phys(&*self.0)
    }

    /// The byte index of the register at `offset`: inside the page and
    /// 4-byte aligned, whatever `offset`.
    fn index(offset: u32) -> usize {
        (offset & 0xffc) as usize
    }

    fn read(&self, offset: u32) -> u32 {
        let at = self.0 .0.as_ptr().wrapping_add(Self::index(offset));
        // SAFETY: `at` is an aligned u32 inside the page this owns (the page
        // is 4096-aligned); the processor does not write it now (the guest
        // is not running).
        unsafe { core::ptr::read_volatile(at.cast::<u32>()) }
    }

    fn write(&mut self, offset: u32, value: u32) {
        let at = self.0 .0.as_mut_ptr().wrapping_add(Self::index(offset));
        // SAFETY: as in `read`; `&mut self` excludes any other access by
        // software.
        unsafe { core::ptr::write_volatile(at.cast::<u32>(), value) }
    }

    fn vectors(&self, base: u32) -> Vectors {
        let mut v = Vectors::default();
        for (i, word) in (0u32..).zip(v.0.iter_mut()) {
            *word = self.read(base + i * 16);
        }
        v
    }
}

/// The VM's pages for APIC virtualization, shared by its vCPUs.
pub(crate) struct VmApicPages {
    /// Mapped in the EPT at the default xAPIC base; its contents are never
    /// used (the processor only compares addresses).
    access: KBox<PageBuf>,
    msr_bitmap: KBox<PageBuf>,
}

/// x2APIC registers whose RDMSR the processor serves from the virtual-APIC
/// page (SDM Vol. 3, 30.5): ID, version, TPR, PPR, LDR, SVR, ISR, TMR, IRR,
/// ESR, ICR, the LVTs rvmx has, initial count, divide configuration. Not
/// the current count, which only rvmx knows, nor write-only or absent ones.
const X2APIC_READ_THROUGH: [core::ops::RangeInclusive<u32>; 8] = [
    0x802..=0x803,
    0x808..=0x808,
    0x80a..=0x80a,
    0x80d..=0x80d,
    0x80f..=0x828,
    0x830..=0x830,
    0x832..=0x838,
    0x83e..=0x83e,
];
/// x2APIC registers whose WRMSR the processor virtualizes: TPR, EOI (an
/// exit only for level-triggered vectors) and SELF IPI.
const X2APIC_WRITE_THROUGH: [u32; 3] = [0x808, 0x80b, 0x83f];

/// MSR bitmap layout: read bitmap for MSRs 0-0x1fff at byte 0, write
/// bitmap for them at byte 2048 (SDM Vol. 3, 25.6.9).
const WRITE_LOW: usize = 2048;

impl VmApicPages {
    pub(crate) fn new() -> Result<Self> {
        let access = KBox::<PageBuf>::init(pin_init::init_zeroed(), GFP_KERNEL_ACCOUNT)?;
        let mut msr_bitmap = KBox::<PageBuf>::init(pin_init::init_zeroed(), GFP_KERNEL_ACCOUNT)?;
        // Every MSR exits, but these.
        msr_bitmap.0.fill(0xff);
        let mut pass = |byte_base: usize, msr: u32| {
            if let Some(b) = msr_bitmap.0.get_mut(byte_base + (msr / 8) as usize) {
                *b &= !(1 << (msr % 8));
            }
        };
        for msr in X2APIC_READ_THROUGH.iter().cloned().flatten() {
            pass(0, msr);
        }
        for msr in X2APIC_WRITE_THROUGH {
            pass(WRITE_LOW, msr);
        }
        Ok(Self { access, msr_bitmap })
    }

    pub(crate) fn access_phys(&self) -> u64 {
        virt_to_phys(&*self.access)
    }
}

/// Writes the VMCS fields of APIC virtualization into a fresh VMCS.
pub(super) fn program(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>) {
    let (Some(pages), Some(vapic)) = (vcpu.vm.apic_pages.as_ref(), vcpu.vapic_phys) else {
        return;
    };
    vmcs.write(Field64::VirtualApicPage, vapic);
    vmcs.write(Field64::ApicAccessPage, pages.access_phys());
    vmcs.write(Field64::MsrBitmap, virt_to_phys(&*pages.msr_bitmap));
    vmcs.write(Field32::TprThreshold, 0);
}

fn access(l: &lapic::Lapic) -> ApicVirtualization {
    if l.x2apic() {
        ApicVirtualization::X2apic
    } else if l.mmio_page() == Some(lapic::DEFAULT_BASE) {
        ApicVirtualization::Xapic
    } else {
        ApicVirtualization::Off
    }
}

const EOI_EXIT_BITMAP: [Field64; 4] = [
    Field64::EoiExitBitmap0,
    Field64::EoiExitBitmap1,
    Field64::EoiExitBitmap2,
    Field64::EoiExitBitmap3,
];

/// Before an entry: mirrors the model into the page if it changed, and
/// sets which accesses the processor virtualizes.
pub(super) fn mirror(vmcs: &CurrentVmcs<'_>, g: &mut Guest) {
    let Some(page) = g.vapic.as_mut() else {
        return;
    };
    if !g.lapic.take_changed() {
        return;
    }
    g.lapic
        .virtual_registers(|offset, value| page.write(offset, value));
    let (rvi, svi, tmr) = g.lapic.interrupt_status();
    vmcs.write(
        Field16::GuestInterruptStatus,
        (u16::from(svi) << 8) | u16::from(rvi),
    );
    for (i, field) in EOI_EXIT_BITMAP.into_iter().enumerate() {
        let (lo, hi) = (tmr.0[2 * i], tmr.0[2 * i + 1]);
        vmcs.write(field, (u64::from(hi) << 32) | u64::from(lo));
    }
    let (proc, proc2) = access(&g.lapic).controls(g.proc, g.proc2);
    if proc != g.proc {
        g.proc = proc;
        vmcs.write(Field32::ProcBasedControls, proc);
    }
    if proc2 != g.proc2 {
        g.proc2 = proc2;
        vmcs.write(Field32::ProcBasedControls2, proc2);
    }
}

/// After an exit: what the processor changed in the page goes to the model.
/// Returns how many of the interrupts the model requested the processor
/// delivered (virtual-interrupt delivery) since the entry.
pub(super) fn sync(g: &mut Guest) -> u32 {
    let Some(page) = g.vapic.as_ref() else {
        return 0;
    };
    let (isr, irr) = (page.vectors(ISR), page.vectors(IRR));
    let icr = (u64::from(page.read(ICR_HI)) << 32) | u64::from(page.read(ICR_LO));
    g.lapic.sync_from_processor(page.read(TPR), &isr, &irr, icr)
}

/// An APIC-write exit: the guest wrote the register at `offset` of the
/// page; the model takes the value (and the mirror then puts the register
/// as the model has it back).
pub(crate) fn write(vcpu: &Vcpu, g: &mut Guest, offset: u32) -> Action {
    let Some(page) = g.vapic.as_ref() else {
        return Action::Resume;
    };
    let value = page.read(offset & 0xff0);
    let now = g.tsc();
    // xAPIC writes never fault; a read-only register keeps its value.
    if let Ok(effect) = g.lapic.write(offset & 0xff0, u64::from(value), now) {
        exit::lapic::apply(vcpu, g, effect);
    }
    Action::Resume
}

/// A virtualized EOI of a vector in the EOI-exit bitmap: the processor
/// ended it in the page already; the VMM's I/O APIC hears of it.
pub(crate) fn level_eoi(vcpu: &Vcpu, g: &mut Guest, vector: u8) -> Action {
    exit::lapic::apply(vcpu, g, Effect::LevelEoi(vector));
    Action::Resume
}
