// SPDX-License-Identifier: GPL-2.0

//! A local APIC (SDM Vol. 3, Chapter 11): its registers, in xAPIC (MMIO)
//! and x2APIC (MSR) form, interrupt acceptance and priorities, EOI, and
//! the timer (`timer`). Messages to other APICs and their destinations are
//! `delivery`'s. Each vCPU owns one, reached only from its own thread;
//! other threads post to it through the vCPU's mailbox. Pure logic: also
//! compiled into the host unit tests.

pub(crate) mod delivery;
pub(crate) mod timer;

use delivery::{Message, Target};
use timer::{Mode, Timer};

/// The default physical address of the xAPIC page.
pub(crate) const DEFAULT_BASE: u64 = 0xfee0_0000;

/// IA32_APIC_BASE bits.
pub(crate) const BASE_BSP: u64 = 1 << 8;
pub(crate) const BASE_EXTD: u64 = 1 << 10;
pub(crate) const BASE_ENABLE: u64 = 1 << 11;
/// The address bits rvmx's guests may use (36-bit physical addresses).
const BASE_ADDR_MASK: u64 = 0xf_ffff_f000;

/// Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16).
mod reg {
    pub(super) const ID: u32 = 0x20;
    pub(super) const VERSION: u32 = 0x30;
    pub(super) const TPR: u32 = 0x80;
    pub(super) const APR: u32 = 0x90;
    pub(super) const PPR: u32 = 0xa0;
    pub(super) const EOI: u32 = 0xb0;
    pub(super) const LDR: u32 = 0xd0;
    pub(super) const DFR: u32 = 0xe0;
    pub(super) const SVR: u32 = 0xf0;
    pub(super) const ISR: u32 = 0x100;
    pub(super) const TMR: u32 = 0x180;
    pub(super) const IRR: u32 = 0x200;
    pub(super) const ESR: u32 = 0x280;
    pub(super) const ICR_LO: u32 = 0x300;
    pub(super) const ICR_HI: u32 = 0x310;
    pub(super) const LVT_TIMER: u32 = 0x320;
    pub(super) const LVT_ERROR: u32 = 0x370;
    pub(super) const TIMER_INITIAL: u32 = 0x380;
    pub(super) const TIMER_CURRENT: u32 = 0x390;
    pub(super) const TIMER_DIVIDE: u32 = 0x3e0;
    pub(super) const SELF_IPI: u32 = 0x3f0;
}

/// Bytes of the saved register image (`save`, `restore`).
pub(crate) const STATE_SIZE: usize = 0x400;

/// Version 0x14 (integrated APIC), 6 LVT entries (max LVT index 5), no
/// EOI-broadcast suppression.
const VERSION: u32 = 0x0005_0014;
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// The six LVT registers, 0x320 (timer) to 0x370 (error); CMCI is absent.
const LVT_COUNT: usize = 6;
/// Writable bits of each LVT, in register order: timer (vector, mask,
/// mode), thermal, performance (vector, delivery mode, mask), LINT0 and
/// LINT1 (also polarity, trigger mode), error (vector, mask).
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x0007_00ff,
    0x0001_07ff,
    0x0001_07ff,
    0x0001_a7ff,
    0x0001_a7ff,
    0x0001_00ff,
];

/// Vectors 0-15 are reserved: one in an IRR is an illegal vector (ESR).
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;

/// What a register write asks of the vCPU beyond the register itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// Send this message (an ICR write).
    Send(Message),
    /// A level-triggered interrupt ended: tell the VMM's I/O APIC.
    LevelEoi(u8),
}

/// Why a register access faults (#GP in x2APIC mode; ignored in xAPIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

/// 256 bits, one per vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Vectors(pub(crate) [u32; 8]);

impl Vectors {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn test(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8)
            .rev()
            .find(|&i| self.0[i] != 0)
            .map(|i| (i as u32 * 32 + 31 - self.0[i].leading_zeros()) as u8)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lapic {
    base: u64,
    id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: Vectors,
    irr: Vectors,
    tmr: Vectors,
    /// ESR as the guest reads it, and the errors since its last write.
    esr: u32,
    esr_pending: u32,
    icr: u64,
    lvt: [u32; LVT_COUNT],
    timer: Timer,
    /// A register changed since `take_changed`: APIC virtualization
    /// mirrors the registers into the virtual-APIC page again.
    changed: bool,
}

impl Lapic {
    /// A local APIC after power-on: enabled in xAPIC mode at the default
    /// base, software-disabled, every LVT masked. vCPU 0 is the BSP.
    pub(crate) fn new(id: u32) -> Self {
        let bsp = if id == 0 { BASE_BSP } else { 0 };
        Self {
            base: DEFAULT_BASE | BASE_ENABLE | bsp,
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: Vectors::default(),
            irr: Vectors::default(),
            tmr: Vectors::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer: Timer::default(),
            changed: true,
        }
    }

    /// INIT: everything but the APIC ID and IA32_APIC_BASE returns to its
    /// power-on value (SDM Vol. 3, 11.4.7.3).
    pub(crate) fn init(&mut self) {
        let base = self.base;
        *self = Self::new(self.id);
        self.base = base;
    }

    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Hardware-enabled (IA32_APIC_BASE) and software-enabled (SVR).
    fn enabled(&self) -> bool {
        self.base & BASE_ENABLE != 0 && self.svr & SVR_ENABLE != 0
    }

    pub(crate) fn x2apic(&self) -> bool {
        self.base & (BASE_ENABLE | BASE_EXTD) == BASE_ENABLE | BASE_EXTD
    }

    /// The guest-physical page of the xAPIC registers, when in xAPIC mode.
    pub(crate) fn mmio_page(&self) -> Option<u64> {
        (self.base & (BASE_ENABLE | BASE_EXTD) == BASE_ENABLE).then_some(self.base & BASE_ADDR_MASK)
    }

    /// A write of IA32_APIC_BASE, with the transitions hardware allows
    /// (SDM Vol. 3, 11.12.5): x2APIC only from enabled xAPIC, out of x2APIC
    /// only by disabling. Disabling resets the APIC's state.
    pub(crate) fn set_base(&mut self, value: u64) -> Result<(), Invalid> {
        let reserved = !(BASE_ADDR_MASK | BASE_ENABLE | BASE_EXTD | BASE_BSP);
        let (old, new) = (
            self.base & (BASE_ENABLE | BASE_EXTD),
            value & (BASE_ENABLE | BASE_EXTD),
        );
        let allowed = match (old, new) {
            _ if value & reserved != 0 || new == BASE_EXTD => false,
            // x2APIC back to xAPIC without going through disabled.
            (o, n) if o == BASE_ENABLE | BASE_EXTD && n == BASE_ENABLE => false,
            // Disabled to x2APIC directly.
            (0, n) if n == BASE_ENABLE | BASE_EXTD => false,
            _ => true,
        };
        if !allowed {
            return Err(Invalid);
        }
        self.changed = true;
        // The BSP flag is the processor's, not the guest's.
        self.base = (value & !BASE_BSP) | (self.base & BASE_BSP);
        if new == 0 {
            self.init();
            self.base = value & !BASE_BSP & !BASE_EXTD | (self.base & BASE_BSP);
        }
        if new == BASE_ENABLE | BASE_EXTD {
            // The x2APIC LDR is derived from the id (cluster, member bit).
            self.ldr = ((self.id >> 4) << 16) | (1 << (self.id & 0xf));
        }
        Ok(())
    }

    /// What destination matching needs, for the vCPU's mailbox.
    pub(crate) fn target(&self) -> Target {
        Target {
            id: self.id,
            ldr: self.ldr,
            flat: self.dfr >> 28 == 0xf,
            x2apic: self.x2apic(),
            enabled: self.enabled(),
        }
    }

    fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        if self.tpr & 0xf0 >= isrv & 0xf0 {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    pub(crate) fn tpr(&self) -> u32 {
        self.tpr
    }

    /// CR8 and TPR writes.
    pub(crate) fn set_tpr(&mut self, tpr: u32) {
        self.tpr = tpr & 0xff;
        self.changed = true;
    }

    /// A fixed interrupt arrives (from the bus, an IPI or a local source).
    /// A software-disabled APIC drops it, as hardware does.
    pub(crate) fn accept(&mut self, vector: u8, level_triggered: bool) {
        if !self.enabled() {
            return;
        }
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        self.irr.set(vector);
        self.changed = true;
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
    }

    /// Posted interrupts from other threads: fixed vectors, and which of
    /// them are level-triggered.
    pub(crate) fn accept_posted(&mut self, irr: &Vectors, tmr: &Vectors) {
        for v in 16..=255u8 {
            if irr.test(v) {
                self.accept(v, tmr.test(v));
            }
        }
    }

    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[((reg::LVT_ERROR - reg::LVT_TIMER) >> 4) as usize];
        if lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, false);
        }
    }

    /// The interrupt the processor would take next: the highest requested
    /// vector whose priority class is above the processor priority.
    pub(crate) fn deliverable(&self) -> Option<u8> {
        let v = self.irr.highest()?;
        (u32::from(v) & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The processor takes `vector` (its injection): IRR to ISR.
    pub(crate) fn acknowledge(&mut self, vector: u8) {
        self.irr.clear(vector);
        self.isr.set(vector);
        self.changed = true;
    }

    /// EOI: the highest in-service interrupt ends.
    fn eoi(&mut self) -> Effect {
        let Some(v) = self.isr.highest() else {
            return Effect::None;
        };
        self.isr.clear(v);
        if self.tmr.test(v) {
            Effect::LevelEoi(v)
        } else {
            Effect::None
        }
    }

    fn timer_mode(&self) -> Mode {
        Mode::from_lvt(self.lvt[0])
    }

    /// The TSC at which the timer next needs attention.
    pub(crate) fn timer_deadline(&self) -> Option<u64> {
        self.timer.deadline()
    }

    /// Fires the timer if it expired by TSC `now`; true if it did.
    pub(crate) fn timer_expire(&mut self, now: u64) -> bool {
        if !self.timer.expire(self.timer_mode(), now) {
            return false;
        }
        let lvt = self.lvt[0];
        if lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, false);
        }
        true
    }

    pub(crate) fn tsc_deadline(&self) -> u64 {
        self.timer.tsc_deadline(self.timer_mode())
    }

    pub(crate) fn set_tsc_deadline(&mut self, value: u64) {
        self.timer.set_tsc_deadline(self.timer_mode(), value);
    }

    /// Reads the 32-bit register at xAPIC `offset` at TSC `now`.
    pub(crate) fn read(&self, offset: u32, now: u64) -> Result<u32, Invalid> {
        let idx = |base: u32| ((offset - base) >> 4) as usize;
        Ok(match offset {
            reg::ID if self.x2apic() => self.id,
            reg::ID => self.id << 24,
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            // Arbitration priority: TPR here, as KVM reports it; x2APIC
            // mode has no APR (its MSR 0x809 raises #GP).
            reg::APR if !self.x2apic() => self.tpr,
            reg::PPR => self.ppr(),
            reg::LDR => self.ldr,
            reg::DFR if !self.x2apic() => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.0[idx(reg::ISR)],
            0x180..=0x1f0 => self.tmr.0[idx(reg::TMR)],
            0x200..=0x270 => self.irr.0[idx(reg::IRR)],
            reg::ESR => self.esr,
            reg::ICR_LO => self.icr as u32,
            reg::ICR_HI if !self.x2apic() => (self.icr >> 32) as u32,
            0x320..=0x370 => self.lvt[idx(reg::LVT_TIMER)],
            reg::TIMER_INITIAL => self.timer.initial_count(),
            reg::TIMER_CURRENT => self.timer.current_count(self.timer_mode(), now),
            reg::TIMER_DIVIDE => self.timer.divide_config(),
            _ => return Err(Invalid),
        })
    }

    /// Writes the register at xAPIC `offset` (32 bits; the ICR's 64 in
    /// x2APIC mode) at TSC `now`.
    pub(crate) fn write(&mut self, offset: u32, value: u64, now: u64) -> Result<Effect, Invalid> {
        let v = value as u32;
        self.changed = true;
        match offset {
            // The APIC ID is fixed: the VMM's CPUID and MADT say it.
            reg::ID if !self.x2apic() => {}
            reg::TPR => self.set_tpr(v),
            reg::EOI => return Ok(self.eoi()),
            reg::LDR if !self.x2apic() => self.ldr = v & 0xff00_0000,
            reg::DFR if !self.x2apic() => self.dfr = v | 0x0fff_ffff,
            reg::SVR => {
                self.svr = v & 0x1ff;
                if self.svr & SVR_ENABLE == 0 {
                    // Software disable masks every LVT.
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            // Writing the ESR latches the errors since the last write.
            reg::ESR => self.esr = core::mem::take(&mut self.esr_pending),
            reg::ICR_LO => {
                let value = if self.x2apic() {
                    value
                } else {
                    (self.icr & !0xffff_ffff) | u64::from(v)
                };
                // Delivery status (bit 12) always reads idle: sends are
                // instant here.
                self.icr = value & !(1 << 12);
                return Ok(self.send(self.icr));
            }
            reg::ICR_HI if !self.x2apic() => {
                self.icr = (self.icr & 0xffff_ffff) | (u64::from(v & 0xff00_0000) << 32);
            }
            0x320..=0x370 => {
                let i = ((offset - reg::LVT_TIMER) >> 4) as usize;
                let mut v = v & LVT_WRITABLE[i];
                if self.svr & SVR_ENABLE == 0 {
                    v |= LVT_MASKED;
                }
                let old_mode = self.timer_mode();
                self.lvt[i] = v;
                if i == 0 && self.timer_mode() != old_mode {
                    self.timer.mode_changed();
                }
            }
            reg::TIMER_INITIAL => self.timer.set_initial(self.timer_mode(), v, now),
            reg::TIMER_DIVIDE => self.timer.set_divide(v),
            reg::SELF_IPI if self.x2apic() => {
                self.accept(v as u8, false);
            }
            // Read-only registers: ignored in xAPIC mode, #GP in x2APIC.
            _ if !self.x2apic() => {}
            _ => return Err(Invalid),
        }
        Ok(Effect::None)
    }

    /// An ICR write: self-directed fixed IPIs are accepted here, the rest
    /// go to the vCPU to deliver.
    fn send(&mut self, icr: u64) -> Effect {
        let Some(m) = Message::from_icr(icr, self.x2apic()) else {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return Effect::None;
        };
        let fixed = matches!(
            m.mode,
            delivery::DeliveryMode::Fixed | delivery::DeliveryMode::LowestPriority
        );
        if fixed && m.vector < 16 {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return Effect::None;
        }
        if fixed && m.shorthand == delivery::Shorthand::SelfOnly {
            self.accept(m.vector, false);
            return Effect::None;
        }
        Effect::Send(m)
    }

    /// The registers as the xAPIC page lays them out (KVM's
    /// `kvm_lapic_state`): 32-bit values at 16-byte offsets, the ID in bits
    /// 31:24 in both modes, the ICR's destination word at 0x310, the
    /// current count as of TSC `now`.
    pub(crate) fn save(&self, now: u64) -> [u8; STATE_SIZE] {
        let mut img = [0u8; STATE_SIZE];
        // Offsets below 0x400: in range. No slicing, which could panic.
        let mut put = |offset: u32, v: u32| {
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                if let Some(d) = img.get_mut(offset as usize + k) {
                    *d = b;
                }
            }
        };
        for offset in (reg::ID..0x400).step_by(16) {
            if let Ok(v) = self.read(offset, now) {
                put(offset, v);
            }
        }
        put(reg::ID, self.id << 24);
        put(reg::ICR_LO, self.icr as u32);
        put(reg::ICR_HI, (self.icr >> 32) as u32);
        img
    }

    /// Loads registers `save` produced, in the mode IA32_APIC_BASE says now
    /// (restore it first). Sends nothing and fires nothing; the timer goes
    /// on from the saved current count. A different APIC ID is refused.
    pub(crate) fn restore(&mut self, img: &[u8; STATE_SIZE], now: u64) -> Result<(), Invalid> {
        let get = |offset: u32| {
            let at = offset as usize;
            img.get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_le_bytes)
        };
        if get(reg::ID) >> 24 != self.id {
            return Err(Invalid);
        }
        let mut a = self.clone();
        a.tpr = get(reg::TPR) & 0xff;
        if !a.x2apic() {
            a.ldr = get(reg::LDR) & 0xff00_0000;
            a.dfr = get(reg::DFR) | 0x0fff_ffff;
        }
        a.svr = get(reg::SVR) & 0x1ff;
        for i in 0..8 {
            let at = (i as u32) << 4;
            a.isr.0[i] = get(reg::ISR + at);
            a.tmr.0[i] = get(reg::TMR + at);
            a.irr.0[i] = get(reg::IRR + at);
        }
        a.esr = get(reg::ESR);
        a.esr_pending = 0;
        a.icr = (u64::from(get(reg::ICR_HI)) << 32) | u64::from(get(reg::ICR_LO) & !(1 << 12));
        for (i, lvt) in a.lvt.iter_mut().enumerate() {
            *lvt = get(reg::LVT_TIMER + ((i as u32) << 4)) & LVT_WRITABLE[i];
        }
        let mode = a.timer_mode();
        a.timer.restore(
            mode,
            get(reg::TIMER_DIVIDE),
            get(reg::TIMER_INITIAL),
            get(reg::TIMER_CURRENT),
            now,
        );
        a.changed = true;
        *self = a;
        Ok(())
    }

    /// Whether a register changed since the last call.
    pub(crate) fn take_changed(&mut self) -> bool {
        core::mem::take(&mut self.changed)
    }

    /// The registers as the processor's APIC virtualization reads them from
    /// the virtual-APIC page (SDM Vol. 3, 30.4.2, 30.5): each readable
    /// register at its offset in the current mode (the x2APIC ID and LDR in
    /// full, the ICR's high half at 0x310 in both modes). The current count
    /// is left out: the processor never reads it from there (rvmx serves it).
    pub(crate) fn virtual_registers(&self, mut put: impl FnMut(u32, u32)) {
        for offset in (reg::ID..0x400).step_by(16) {
            if offset == reg::TIMER_CURRENT || offset == reg::ICR_HI {
                continue;
            }
            if let Ok(v) = self.read(offset, 0) {
                put(offset, v);
            }
        }
        put(reg::ICR_HI, (self.icr >> 32) as u32);
    }

    /// What virtual-interrupt delivery needs besides the page: the highest
    /// requested vector (RVI) and the highest in service (SVI), 0 for none;
    /// and the level-triggered vectors, whose EOI must exit (TMR).
    pub(crate) fn interrupt_status(&self) -> (u8, u8, &Vectors) {
        (
            self.irr.highest().unwrap_or(0),
            self.isr.highest().unwrap_or(0),
            &self.tmr,
        )
    }

    /// Takes what the processor changed in the virtual-APIC page while the
    /// guest ran: the TPR it wrote, the interrupts it delivered (IRR to ISR)
    /// and the EOIs it did, and the ICR, whose high half a guest writes
    /// without an exit (the low half's write exits, and sends). Not a change
    /// to mirror back.
    pub(crate) fn sync_from_processor(
        &mut self,
        tpr: u32,
        isr: &Vectors,
        irr: &Vectors,
        icr: u64,
    ) -> u32 {
        // Requested vectors the processor took (it clears an IRR bit only
        // to deliver it): the virtual interrupts it delivered since.
        let delivered = self
            .irr
            .0
            .iter()
            .zip(irr.0.iter())
            .map(|(before, after)| (before & !after).count_ones())
            .sum();
        self.tpr = tpr & 0xff;
        self.isr = *isr;
        self.irr = *irr;
        self.icr = icr & !(1 << 12);
        delivered
    }

    /// The x2APIC MSR `msr` (0x800-0x8ff) as a register offset.
    pub(crate) fn x2apic_offset(msr: u32) -> u32 {
        (msr & 0xff) << 4
    }

    /// RDMSR of an x2APIC register: the ICR reads as 64 bits.
    pub(crate) fn read_msr(&self, msr: u32, now: u64) -> Result<u64, Invalid> {
        let offset = Self::x2apic_offset(msr);
        if !self.x2apic() || offset == reg::EOI || offset == reg::SELF_IPI {
            return Err(Invalid);
        }
        if offset == reg::ICR_LO {
            return Ok(self.icr);
        }
        self.read(offset, now).map(u64::from)
    }

    /// WRMSR of an x2APIC register: reserved upper halves must be 0, and
    /// EOI takes only 0 (SDM Vol. 3, 11.12.1.2).
    pub(crate) fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<Effect, Invalid> {
        let offset = Self::x2apic_offset(msr);
        let wide = offset == reg::ICR_LO;
        if !self.x2apic() || (!wide && value >> 32 != 0) || (offset == reg::EOI && value != 0) {
            return Err(Invalid);
        }
        self.write(offset, value, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use delivery::{DeliveryMode, Shorthand};

    fn enabled(id: u32) -> Lapic {
        let mut a = Lapic::new(id);
        a.write(reg::SVR, 0x1ff, 0).unwrap();
        a
    }

    #[test]
    fn resets_as_hardware() {
        let a = Lapic::new(0);
        assert_eq!(a.base(), 0xfee0_0900);
        assert_eq!(Lapic::new(1).base(), 0xfee0_0800);
        assert_eq!(a.read(reg::VERSION, 0), Ok(0x50014));
        assert_eq!(a.read(reg::LVT_TIMER, 0), Ok(LVT_MASKED));
        assert_eq!(Lapic::new(2).read(reg::ID, 0), Ok(2 << 24));
        assert_eq!(a.mmio_page(), Some(DEFAULT_BASE));
    }

    #[test]
    fn disabled_apic_drops_fixed_interrupts() {
        let mut a = Lapic::new(0);
        a.accept(0x40, false);
        assert_eq!(a.deliverable(), None);
        assert!(!a.target().enabled, "senders must see it disabled");
        let mut a = enabled(0);
        assert!(a.target().enabled);
        a.accept(0x40, false);
        assert_eq!(a.deliverable(), Some(0x40));
    }

    #[test]
    fn tpr_blocks_lower_and_equal_classes() {
        let mut a = enabled(0);
        a.set_tpr(0x50);
        a.accept(0x55, false);
        assert_eq!(a.deliverable(), None, "same class as TPR");
        a.accept(0x61, false);
        assert_eq!(a.deliverable(), Some(0x61));
        a.set_tpr(0x70);
        assert_eq!(a.deliverable(), None);
        a.set_tpr(0);
        assert_eq!(a.deliverable(), Some(0x61));
    }

    #[test]
    fn isr_nesting_and_eoi_order() {
        let mut a = enabled(0);
        a.accept(0x41, false);
        a.acknowledge(0x41);
        a.accept(0x42, false);
        assert_eq!(a.deliverable(), None, "same class as in service");
        a.accept(0x81, false);
        assert_eq!(a.deliverable(), Some(0x81));
        a.acknowledge(0x81);
        assert_eq!(a.read(reg::PPR, 0), Ok(0x80));
        // EOI ends the highest in service first.
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(Effect::None));
        assert_eq!(a.read(reg::PPR, 0), Ok(0x40));
        a.write(reg::EOI, 0, 0).unwrap();
        assert_eq!(a.deliverable(), Some(0x42));
    }

    #[test]
    fn level_triggered_eoi_is_reported() {
        let mut a = enabled(0);
        a.accept(0x50, true);
        a.acknowledge(0x50);
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(Effect::LevelEoi(0x50)));
        a.accept(0x50, false);
        a.acknowledge(0x50);
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(Effect::None));
    }

    #[test]
    fn illegal_vectors_set_esr() {
        let mut a = enabled(0);
        a.write(reg::LVT_ERROR, 0xfe, 0).unwrap();
        a.accept(3, false);
        a.write(reg::ESR, 0, 0).unwrap();
        assert_eq!(a.read(reg::ESR, 0), Ok(ESR_RECEIVE_ILLEGAL_VECTOR));
        assert_eq!(a.deliverable(), Some(0xfe), "error LVT fired");
    }

    #[test]
    fn self_ipi_and_ipis_to_others() {
        let mut a = enabled(0);
        // Fixed, self shorthand.
        assert_eq!(a.write(reg::ICR_LO, 0x0004_0031, 0), Ok(Effect::None));
        assert_eq!(a.deliverable(), Some(0x31));
        a.write(reg::ICR_HI, 0x0100_0000, 0).unwrap();
        let Ok(Effect::Send(m)) = a.write(reg::ICR_LO, 0x4032, 0) else {
            panic!("an IPI to APIC 1 is sent");
        };
        assert_eq!((m.dest, m.vector, m.mode), (1, 0x32, DeliveryMode::Fixed));
        assert_eq!(m.shorthand, Shorthand::None);
        assert_eq!(a.read(reg::ICR_LO, 0), Ok(0x4032), "delivery status idle");
    }

    #[test]
    fn x2apic_mode_switch_and_msrs() {
        let mut a = enabled(17);
        assert_eq!(a.set_base(0xfee0_0000 | BASE_EXTD), Err(Invalid));
        a.set_base(0xfee0_0000 | BASE_ENABLE | BASE_EXTD).unwrap();
        assert!(a.x2apic());
        assert_eq!(a.mmio_page(), None);
        assert_eq!(a.read_msr(0x802, 0), Ok(17));
        assert_eq!(a.read_msr(0x80d, 0), Ok((1 << 16) | (1 << 1)));
        assert_eq!(a.write_msr(0x80d, 5, 0), Err(Invalid), "LDR is read-only");
        assert_eq!(a.write_msr(0x80b, 1, 0), Err(Invalid), "EOI takes 0");
        assert_eq!(a.read_msr(0x80e, 0), Err(Invalid), "no DFR");
        assert_eq!(a.read_msr(0x809, 0), Err(Invalid), "no APR");
        a.write_msr(0x83f, 0x44, 0).unwrap();
        assert_eq!(a.deliverable(), Some(0x44));
        let Ok(Effect::Send(m)) = a.write_msr(0x830, (3u64 << 32) | 0x4045, 0) else {
            panic!("x2APIC ICR sends");
        };
        assert_eq!((m.dest, m.x2apic), (3, true));
        // Back to xAPIC only through disabled.
        assert_eq!(a.set_base(0xfee0_0000 | BASE_ENABLE), Err(Invalid));
        a.set_base(0xfee0_0000).unwrap();
        a.set_base(0xfee0_0000 | BASE_ENABLE).unwrap();
        assert_eq!(a.read(reg::SVR, 0), Ok(0xff), "disable reset the APIC");
    }

    #[test]
    fn timer_fires_only_unmasked() {
        let mut a = enabled(0);
        a.write(reg::TIMER_DIVIDE, 0xb, 0).unwrap();
        a.write(reg::LVT_TIMER, u64::from(LVT_MASKED) | 0xef, 0)
            .unwrap();
        a.write(reg::TIMER_INITIAL, 100, 0).unwrap();
        assert!(a.timer_expire(100));
        assert_eq!(a.deliverable(), None, "masked LVT never fires");
        a.write(reg::LVT_TIMER, (1 << 17) | 0xef, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 100, 1000).unwrap();
        assert_eq!(a.read(reg::TIMER_CURRENT, 1040), Ok(60));
        assert!(a.timer_expire(1100));
        assert_eq!(a.deliverable(), Some(0xef));
        assert_eq!(a.timer_deadline(), Some(1200), "periodic re-armed");
    }

    #[test]
    fn save_and_restore_round_trip() {
        let mut a = enabled(3);
        a.write(reg::TPR, 0x20, 0).unwrap();
        a.write(reg::LDR, 0x0400_0000, 0).unwrap();
        a.accept(0x51, true);
        a.acknowledge(0x51);
        a.accept(0x62, false);
        a.write(reg::TIMER_DIVIDE, 0xb, 0).unwrap();
        a.write(reg::LVT_TIMER, (1 << 17) | 0xef, 0).unwrap();
        a.write(reg::TIMER_INITIAL, 1000, 0).unwrap();
        let img = a.save(400);
        let mut b = Lapic::new(3);
        b.restore(&img, 10_000).unwrap();
        assert_eq!(b.read(reg::TPR, 0), Ok(0x20));
        assert_eq!(b.read(reg::LDR, 0), Ok(0x0400_0000));
        assert_eq!(b.read(reg::ISR + 0x20, 0), Ok(1 << 17), "0x51 in service");
        assert_eq!(b.read(reg::TMR + 0x20, 0), Ok(1 << 17), "0x51 level");
        assert_eq!(b.deliverable(), Some(0x62));
        // 600 counts were left at the save: they go on from the restore.
        assert_eq!(b.read(reg::TIMER_CURRENT, 10_100), Ok(500));
        assert_eq!(b.timer_deadline(), Some(10_600));
        assert_eq!(b.save(10_100)[..0x380], a.save(500)[..0x380]);
        assert_eq!(
            Lapic::new(4).restore(&img, 0),
            Err(Invalid),
            "another APIC id"
        );
    }

    #[test]
    fn virtual_registers_follow_the_mode() {
        let mut a = enabled(0x21);
        a.take_changed();
        a.accept(0x51, true);
        assert!(a.take_changed(), "an accepted interrupt is a change");
        assert!(!a.take_changed());
        a.accept(0x62, false);
        a.acknowledge(0x62);
        let regs = |a: &Lapic| {
            let mut r = [None; 64];
            a.virtual_registers(|offset, v| r[(offset >> 4) as usize] = Some(v));
            r
        };
        let r = regs(&a);
        assert_eq!(r[2], Some(0x21 << 24), "xAPIC ID in bits 31:24");
        assert_eq!(r[0x39], None, "no current count");
        assert_eq!(r[0x20 + 0x51 / 32], Some(1 << (0x51 % 32)), "IRR");
        assert_eq!(r[0x18 + 0x51 / 32], Some(1 << (0x51 % 32)), "TMR");
        assert_eq!(r[0x10 + 0x62 / 32], Some(1 << (0x62 % 32)), "ISR");
        assert_eq!(a.interrupt_status().0, 0x51);
        assert_eq!(a.interrupt_status().1, 0x62);
        a.set_base(0xfee0_0000 | BASE_ENABLE | BASE_EXTD).unwrap();
        a.write_msr(0x830, (7u64 << 32) | 0x4045, 0).unwrap();
        let r = regs(&a);
        assert_eq!(r[2], Some(0x21), "x2APIC ID in full");
        assert_eq!(r[0xd], Some((2 << 16) | (1 << 1)), "x2APIC LDR");
        assert_eq!((r[0x30], r[0x31]), (Some(0x4045), Some(7)), "ICR halves");
        assert_eq!(r[0xe], None, "no DFR in x2APIC mode");

        // The processor delivered 0x51 and took the EOI of 0x62.
        a.take_changed();
        let (mut isr, irr) = (Vectors::default(), Vectors::default());
        isr.set(0x51);
        a.sync_from_processor(0x30, &isr, &irr, (9u64 << 32) | 0x4045);
        assert!(!a.take_changed());
        assert_eq!(a.read(reg::PPR, 0), Ok(0x50));
        assert_eq!(a.write(reg::EOI, 0, 0), Ok(Effect::LevelEoi(0x51)));
        assert_eq!(a.read_msr(0x830, 0), Ok((9u64 << 32) | 0x4045));
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut a = enabled(0);
        a.write(reg::LVT_TIMER, (2 << 17) | 0xec, 0).unwrap();
        a.set_tsc_deadline(5000);
        assert_eq!(a.tsc_deadline(), 5000);
        assert!(!a.timer_expire(4999));
        assert!(a.timer_expire(5000));
        assert_eq!(a.deliverable(), Some(0xec));
        assert_eq!(a.tsc_deadline(), 0);
    }
}
