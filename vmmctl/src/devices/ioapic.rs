//! The I/O APIC, for hypervisors that emulate only the local APICs (rvmx,
//! like KVM's split irqchip). Device lines drive its 24 input pins; each
//! pin's redirection entry turns an assertion into a message-signalled
//! interrupt, sent through an [`MsiSink`]; the guest's EOI of a
//! level-triggered vector comes back through [`Ioapic::eoi`] (the local
//! APIC's broadcast EOI, reported by the hypervisor) or the EOI register.
//!
//! It reports version 0x20, which has the EOI register at +0x40: Linux
//! uses that register for version 0x20 and later, and for older versions
//! clears remote IRR by switching the pin to edge and back, which this
//! model honours as well.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::hypervisor::MsiSink;

/// The MMIO window, where the MADT and the MP table say it is.
pub const BASE: u64 = crate::boot::layout::IOAPIC as u64;
pub const SIZE: u64 = 0x1000;
pub const PINS: usize = 24;

// Direct registers: offsets in the window.
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOEOI: u64 = 0x40;

// Indirect registers: what IOREGSEL selects.
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
/// Entry n: low dword at 0x10 + 2n, high dword at 0x11 + 2n.
const REG_REDIRECTION: u8 = 0x10;

/// Version 0x20; bits 23:16 hold the number of the last redirection entry.
const VERSION: u32 = 0x20 | ((PINS as u32 - 1) << 16);
const ID_SHIFT: u32 = 24;

// A redirection entry.
const VECTOR: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DEST_LOGICAL: u64 = 1 << 11;
/// Read-only: a level-triggered interrupt was accepted and not yet EOI'd.
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL_TRIGGERED: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u32 = 56;
/// What a guest can write: vector, delivery and destination mode,
/// polarity, trigger mode, mask and destination. Delivery status (bit 12)
/// and remote IRR are read-only and the rest is reserved; delivery status
/// reads 0 because an interrupt is sent the moment it is due.
const WRITABLE: u64 = 0xff00_0000_0001_afff;

// Delivery modes vmmctl can send as MSIs. SMI, INIT and ExtINT (there is
// no 8259 to answer the INTA cycle) are not delivered.
const MODE_FIXED: u64 = 0;
const MODE_LOWEST_PRIORITY: u64 = 1;
const MODE_NMI: u64 = 4;

// The MSI that a redirection entry becomes.
const MSI_ADDRESS: u64 = 0xfee0_0000;
const MSI_DEST_SHIFT: u32 = 12;
const MSI_DEST_LOGICAL: u64 = 1 << 2;
const MSI_LEVEL_ASSERT: u32 = 1 << 14;
const MSI_LEVEL_TRIGGERED: u32 = 1 << 15;

fn delivery_mode(entry: u64) -> u64 {
    (entry >> DELIVERY_MODE_SHIFT) & 7
}

/// Level-triggered in effect: an NMI has no EOI, so an NMI pin is always
/// handled as edge-triggered, whatever its trigger-mode bit says.
fn level_triggered(entry: u64) -> bool {
    entry & LEVEL_TRIGGERED != 0 && delivery_mode(entry) != MODE_NMI
}

/// The MSI (address, data) for `entry`, or None for a delivery mode that
/// cannot be sent.
fn msi(entry: u64) -> Option<(u64, u32)> {
    let mode = delivery_mode(entry);
    if !matches!(mode, MODE_FIXED | MODE_LOWEST_PRIORITY | MODE_NMI) {
        return None;
    }
    let mut address = MSI_ADDRESS | ((entry >> DEST_SHIFT) << MSI_DEST_SHIFT);
    if entry & DEST_LOGICAL != 0 {
        address |= MSI_DEST_LOGICAL;
    }
    let mut data = (entry & VECTOR) as u32 | (mode as u32) << DELIVERY_MODE_SHIFT;
    if level_triggered(entry) {
        data |= MSI_LEVEL_TRIGGERED | MSI_LEVEL_ASSERT;
    }
    Some((address, data))
}

pub struct Ioapic {
    regs: Mutex<Regs>,
    sink: Arc<dyn MsiSink>,
}

struct Regs {
    /// 8 bits wide (bits 31:24), as Linux reads it, so that IDs above 15,
    /// which the MADT gives it in VMs with 16 or more vCPUs, read back.
    id: u8,
    select: u8,
    entries: [u64; PINS],
    /// Which input lines are asserted (bit n = pin n). Sources report the
    /// logical state, as KVM's do: the polarity bit tells the guest how the
    /// line is wired, and an idle active-low line (the SCI) is not asserted.
    asserted: u32,
}

impl Ioapic {
    /// An I/O APIC with ID `id`, as after reset: every pin masked.
    pub fn new(id: u8, sink: Arc<dyn MsiSink>) -> Self {
        Self {
            regs: Mutex::new(Regs {
                id,
                select: 0,
                entries: [MASKED; PINS],
                asserted: 0,
            }),
            sink,
        }
    }

    /// A poisoned lock means a vCPU thread panicked while it held it; the
    /// registers are still whole words, good enough to finish the run.
    fn regs(&self) -> MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asserts (`high`) or deasserts input `pin`. An edge-triggered pin
    /// interrupts when it becomes asserted; a level-triggered one while it
    /// is asserted, once per EOI.
    pub fn set_level(&self, pin: usize, high: bool) -> io::Result<()> {
        if pin >= PINS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the I/O APIC has no pin {pin}"),
            ));
        }
        let mut regs = self.regs();
        let was = regs.asserted(pin);
        if high {
            regs.asserted |= 1 << pin;
        } else {
            regs.asserted &= !(1 << pin);
        }
        let now = regs.asserted(pin);
        if now && (level_triggered(regs.entries[pin]) || !was) {
            regs.service(pin, &*self.sink)?;
        }
        Ok(())
    }

    /// One pulse on `pin` (high, then low): what an edge-triggered ISA
    /// device such as the 8250 gives for each interrupt.
    pub fn pulse(&self, pin: usize) -> io::Result<()> {
        self.set_level(pin, true)?;
        self.set_level(pin, false)
    }

    /// The guest ended `vector`: level-triggered pins that delivered it
    /// drop remote IRR and interrupt again if they are still asserted.
    pub fn eoi(&self, vector: u8) -> io::Result<()> {
        self.regs().eoi(vector, &*self.sink)
    }

    /// A load from `offset` in the MMIO window. Bytes outside the three
    /// registers read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let regs = self.regs();
        for (o, b) in (offset..).zip(data.iter_mut()) {
            let value = match o & !3 {
                IOREGSEL => u32::from(regs.select),
                IOWIN => regs.read_indirect(),
                _ => 0,
            };
            *b = (value >> (8 * (o & 3))) as u8;
        }
    }

    /// A store to `offset` in the MMIO window. Linux writes whole dwords;
    /// a narrower write changes only its own bytes of the register.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut regs = self.regs();
        let (mut o, mut rest) = (offset, data);
        while !rest.is_empty() {
            let shift = (o & 3) as usize;
            let n = (4 - shift).min(rest.len());
            let merge = |old: u32| {
                let mut b = old.to_le_bytes();
                b[shift..shift + n].copy_from_slice(&rest[..n]);
                u32::from_le_bytes(b)
            };
            match o & !3 {
                IOREGSEL => regs.select = merge(u32::from(regs.select)) as u8,
                IOWIN => {
                    let value = merge(regs.read_indirect());
                    regs.write_indirect(value, &*self.sink)?;
                }
                IOEOI => regs.eoi(merge(0) as u8, &*self.sink)?,
                _ => {}
            }
            o += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }
}

impl Regs {
    /// Whether `pin`'s line is asserted.
    fn asserted(&self, pin: usize) -> bool {
        self.asserted & (1 << pin) != 0
    }

    /// Sends `pin`'s interrupt unless it is masked or, level-triggered,
    /// still waits for its EOI. Remote IRR is set only when some local
    /// APIC took the interrupt: one that nobody accepted gets no EOI.
    fn service(&mut self, pin: usize, sink: &dyn MsiSink) -> io::Result<()> {
        let entry = self.entries[pin];
        let level = level_triggered(entry);
        if entry & MASKED != 0 || (level && entry & REMOTE_IRR != 0) {
            return Ok(());
        }
        let Some((address, data)) = msi(entry) else {
            return Ok(());
        };
        let accepted = sink.signal_msi(address, data)?;
        if level && accepted > 0 {
            self.entries[pin] |= REMOTE_IRR;
        }
        Ok(())
    }

    fn eoi(&mut self, vector: u8, sink: &dyn MsiSink) -> io::Result<()> {
        for pin in 0..PINS {
            let entry = self.entries[pin];
            if entry & VECTOR != u64::from(vector) || entry & REMOTE_IRR == 0 {
                continue;
            }
            self.entries[pin] &= !REMOTE_IRR;
            if self.asserted(pin) {
                self.service(pin, sink)?;
            }
        }
        Ok(())
    }

    /// The entry and whether `select` names its high dword.
    fn selected_entry(&self) -> Option<(usize, bool)> {
        let n = usize::from(self.select.checked_sub(REG_REDIRECTION)?);
        (n / 2 < PINS).then_some((n / 2, n % 2 == 1))
    }

    fn read_indirect(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => u32::from(self.id) << ID_SHIFT,
            REG_VERSION => VERSION,
            _ => match self.selected_entry() {
                Some((pin, true)) => (self.entries[pin] >> 32) as u32,
                Some((pin, false)) => self.entries[pin] as u32,
                None => 0,
            },
        }
    }

    fn write_indirect(&mut self, value: u32, sink: &dyn MsiSink) -> io::Result<()> {
        if self.select == REG_ID {
            self.id = (value >> ID_SHIFT) as u8;
            return Ok(());
        }
        // Version and arbitration ID are read-only.
        let Some((pin, high_dword)) = self.selected_entry() else {
            return Ok(());
        };
        let old = self.entries[pin];
        let (keep, new) = if high_dword {
            (0x0000_0000_ffff_ffff, u64::from(value) << 32)
        } else {
            (0xffff_ffff_0000_0000, u64::from(value))
        };
        let mut entry = (old & keep) | (new & !keep & WRITABLE) | (old & REMOTE_IRR);
        // Switching to edge trigger clears remote IRR: how a guest ends a
        // level interrupt on I/O APICs without the EOI register.
        if entry & LEVEL_TRIGGERED == 0 {
            entry &= !REMOTE_IRR;
        }
        self.entries[pin] = entry;
        // An unmasked level-triggered pin that is asserted interrupts now
        // (e.g. right after unmasking); edges seen while masked are lost.
        if level_triggered(entry) && self.asserted(pin) {
            self.service(pin, sink)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Records the MSIs; answers with `accepted` local APICs.
    struct Sink {
        sent: Mutex<Vec<(u64, u32)>>,
        accepted: AtomicU32,
    }

    impl MsiSink for Sink {
        fn signal_msi(&self, address: u64, data: u32) -> io::Result<u32> {
            self.sent.lock().unwrap().push((address, data));
            Ok(self.accepted.load(Ordering::Relaxed))
        }
    }

    fn ioapic() -> (Ioapic, Arc<Sink>) {
        let sink = Arc::new(Sink {
            sent: Mutex::new(vec![]),
            accepted: AtomicU32::new(1),
        });
        (Ioapic::new(2, sink.clone()), sink)
    }

    fn sent(sink: &Sink) -> Vec<(u64, u32)> {
        std::mem::take(&mut *sink.sent.lock().unwrap())
    }

    fn write_reg(io: &Ioapic, reg: u8, value: u32) {
        io.write(IOREGSEL, &[reg]).unwrap();
        io.write(IOWIN, &value.to_le_bytes()).unwrap();
    }

    fn read_reg(io: &Ioapic, reg: u8) -> u32 {
        io.write(IOREGSEL, &u32::from(reg).to_le_bytes()).unwrap();
        let mut v = [0u8; 4];
        io.read(IOWIN, &mut v);
        u32::from_le_bytes(v)
    }

    /// Programs `pin` as Linux does: destination first, then the low dword.
    fn program(io: &Ioapic, pin: u8, low: u32, dest: u8) {
        write_reg(io, REG_REDIRECTION + 2 * pin + 1, u32::from(dest) << 24);
        write_reg(io, REG_REDIRECTION + 2 * pin, low);
    }

    const EDGE: u32 = 0;
    const LEVEL: u32 = LEVEL_TRIGGERED as u32;
    const MASK: u32 = MASKED as u32;

    fn remote_irr(io: &Ioapic, pin: u8) -> bool {
        read_reg(io, REG_REDIRECTION + 2 * pin) & REMOTE_IRR as u32 != 0
    }

    #[test]
    fn identity_registers_and_reset_state() {
        let (io, _) = ioapic();
        assert_eq!(read_reg(&io, REG_ID), 2 << 24);
        assert_eq!(read_reg(&io, REG_ARBITRATION), 2 << 24);
        assert_eq!(read_reg(&io, REG_VERSION), 0x0017_0020, "24 entries");
        for pin in 0..PINS as u8 {
            assert_eq!(read_reg(&io, REG_REDIRECTION + 2 * pin), MASK);
            assert_eq!(read_reg(&io, REG_REDIRECTION + 2 * pin + 1), 0);
        }
        write_reg(&io, REG_ID, 0x1700_0000);
        assert_eq!(read_reg(&io, REG_ID), 0x1700_0000, "IDs above 15 hold");
        write_reg(&io, REG_VERSION, 0);
        write_reg(&io, REG_ARBITRATION, 0);
        assert_eq!(read_reg(&io, REG_VERSION), VERSION, "version is read-only");
        assert_eq!(read_reg(&io, REG_ARBITRATION), 0x1700_0000);
        // Past the last entry, and between the ID registers and the table.
        assert_eq!(read_reg(&io, REG_REDIRECTION + 2 * PINS as u8), 0);
        assert_eq!(read_reg(&io, 0x03), 0);
    }

    #[test]
    fn redirection_entries_read_back_without_read_only_or_reserved_bits() {
        let (io, _) = ioapic();
        write_reg(&io, 0x10 + 2 * 5, 0xffff_ffff);
        write_reg(&io, 0x10 + 2 * 5 + 1, 0xffff_ffff);
        // Delivery status, remote IRR and bits 31:17 and 55:32 stay 0.
        assert_eq!(read_reg(&io, 0x10 + 2 * 5), 0x0001_afff);
        assert_eq!(read_reg(&io, 0x10 + 2 * 5 + 1), 0xff00_0000);
        // The neighbours are untouched.
        assert_eq!(read_reg(&io, 0x10 + 2 * 4), MASK);
        assert_eq!(read_reg(&io, 0x10 + 2 * 6), MASK);
    }

    #[test]
    fn edge_pin_interrupts_once_per_rising_edge() {
        let (io, sink) = ioapic();
        program(&io, 4, 0x34 | EDGE, 1);
        io.set_level(4, true).unwrap();
        assert_eq!(sent(&sink), [(0xfee0_1000, 0x34)], "fixed, physical APIC 1");
        io.set_level(4, true).unwrap();
        assert_eq!(sent(&sink), [], "still high: no new edge");
        io.set_level(4, false).unwrap();
        assert_eq!(sent(&sink), [], "falling edge");
        io.pulse(4).unwrap();
        io.pulse(4).unwrap();
        assert_eq!(sent(&sink).len(), 2, "one interrupt per pulse");
        assert!(!remote_irr(&io, 4), "edge pins never set remote IRR");
    }

    #[test]
    fn masked_pins_never_deliver_and_lose_their_edges() {
        let (io, sink) = ioapic();
        io.pulse(4).unwrap();
        program(&io, 4, 0x34 | EDGE | MASK, 0);
        io.pulse(4).unwrap();
        io.set_level(4, true).unwrap();
        program(&io, 4, 0x34 | EDGE, 0);
        assert_eq!(sent(&sink), [], "edges while masked are not held");
        program(&io, 6, 0x36 | LEVEL | MASK, 0);
        io.set_level(6, true).unwrap();
        assert_eq!(sent(&sink), []);
        assert!(!remote_irr(&io, 6));
    }

    #[test]
    fn level_pin_asserted_while_masked_interrupts_when_unmasked() {
        let (io, sink) = ioapic();
        program(&io, 9, 0x41 | LEVEL | MASK, 0);
        io.set_level(9, true).unwrap();
        assert_eq!(sent(&sink), []);
        program(&io, 9, 0x41 | LEVEL, 0);
        assert_eq!(sent(&sink), [(0xfee0_0000, 0xc041)], "level, asserted");
        assert!(remote_irr(&io, 9));
    }

    #[test]
    fn level_pin_waits_for_eoi_and_interrupts_again_while_asserted() {
        let (io, sink) = ioapic();
        program(&io, 10, 0x50 | LEVEL, 3);
        io.set_level(10, true).unwrap();
        assert_eq!(sent(&sink), [(0xfee0_3000, 0xc050)]);
        io.set_level(10, true).unwrap();
        assert_eq!(sent(&sink), [], "remote IRR blocks a second delivery");
        io.eoi(0x51).unwrap();
        assert_eq!(sent(&sink), [], "another vector's EOI");
        assert!(remote_irr(&io, 10));
        io.eoi(0x50).unwrap();
        assert_eq!(sent(&sink), [(0xfee0_3000, 0xc050)], "still asserted");
        assert!(remote_irr(&io, 10));
        io.set_level(10, false).unwrap();
        io.eoi(0x50).unwrap();
        assert_eq!(sent(&sink), [], "deasserted: nothing more");
        assert!(!remote_irr(&io, 10));
        io.set_level(10, true).unwrap();
        assert_eq!(sent(&sink).len(), 1, "asserted again");
    }

    #[test]
    fn eoi_register_ends_a_level_interrupt() {
        let (io, sink) = ioapic();
        program(&io, 11, 0x60 | LEVEL, 0);
        io.set_level(11, true).unwrap();
        sent(&sink);
        io.set_level(11, false).unwrap();
        io.write(IOEOI, &0x60u32.to_le_bytes()).unwrap();
        assert!(!remote_irr(&io, 11));
        io.set_level(11, true).unwrap();
        assert_eq!(sent(&sink).len(), 1);
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let (io, sink) = ioapic();
        program(&io, 12, 0x61 | LEVEL, 0);
        io.set_level(12, true).unwrap();
        assert!(remote_irr(&io, 12));
        // Linux's EOI for version 0x11 I/O APICs: mask, edge, then back.
        program(&io, 12, 0x61 | EDGE | MASK, 0);
        assert!(!remote_irr(&io, 12));
        sent(&sink);
        program(&io, 12, 0x61 | LEVEL, 0);
        assert_eq!(sent(&sink).len(), 1, "still asserted: delivered again");
    }

    #[test]
    fn remote_irr_only_when_a_local_apic_accepted() {
        let (io, sink) = ioapic();
        sink.accepted.store(0, Ordering::Relaxed);
        program(&io, 13, 0x62 | LEVEL, 7);
        io.set_level(13, true).unwrap();
        assert_eq!(sent(&sink).len(), 1);
        assert!(!remote_irr(&io, 13), "no EOI will come for it");
    }

    #[test]
    fn polarity_does_not_invert_the_line() {
        // An idle active-low line (the ACPI SCI) is not asserted: sources
        // report the logical state, whatever the polarity bit says.
        let (io, sink) = ioapic();
        // Bit 13: polarity, active low.
        let low = 1 << 13;
        program(&io, 9, 0x70 | LEVEL | low, 0);
        assert_eq!(sent(&sink), [], "an idle active-low pin interrupted");
        io.set_level(9, true).unwrap();
        assert_eq!(sent(&sink).len(), 1, "asserted: one interrupt");
        io.set_level(9, false).unwrap();
        io.eoi(0x70).unwrap();
        assert_eq!(sent(&sink), [], "deasserted before the EOI");
    }

    #[test]
    fn msi_encodes_destination_mode_and_delivery_mode() {
        let (io, sink) = ioapic();
        let logical = DEST_LOGICAL as u32;
        program(&io, 1, 0x31 | (1 << 8) | logical, 0x0f);
        io.pulse(1).unwrap();
        assert_eq!(
            sent(&sink),
            [(0xfee0_f004, 0x0131)],
            "lowest priority, logical"
        );
        // NMI: sent as edge even when the pin says level, so no remote IRR
        // waits for an EOI that never comes.
        program(&io, 2, 0x02 | (4 << 8) | LEVEL, 0);
        io.set_level(2, true).unwrap();
        assert_eq!(sent(&sink), [(0xfee0_0000, 0x0402)]);
        assert!(!remote_irr(&io, 2));
        // SMI, INIT and ExtINT cannot be sent.
        for (pin, mode) in [(3u8, 2u32), (5, 5), (7, 7)] {
            program(&io, pin, 0x30 | (mode << 8), 0);
            io.pulse(usize::from(pin)).unwrap();
        }
        assert_eq!(sent(&sink), []);
    }

    #[test]
    fn mmio_widths_and_unassigned_offsets() {
        let (io, _) = ioapic();
        io.write(IOREGSEL, &[REG_VERSION]).unwrap();
        let mut sel = [0xffu8; 4];
        io.read(IOREGSEL, &mut sel);
        assert_eq!(sel, [REG_VERSION, 0, 0, 0]);
        let mut wide = [0xffu8; 8];
        io.read(IOWIN, &mut wide);
        assert_eq!(
            u64::from_le_bytes(wide),
            u64::from(VERSION),
            "0x14..0x17 are 0"
        );
        let mut byte = [0u8];
        io.read(IOWIN + 2, &mut byte);
        assert_eq!(byte[0], 0x17);
        // A byte write to the top of an entry's high dword sets the
        // destination only.
        io.write(IOREGSEL, &[REG_REDIRECTION + 1]).unwrap();
        io.write(IOWIN + 3, &[0x05]).unwrap();
        assert_eq!(read_reg(&io, REG_REDIRECTION + 1), 0x0500_0000);
        let mut other = [0xffu8; 4];
        io.read(0x20, &mut other);
        assert_eq!(other, [0; 4]);
        io.write(0x800, &[1, 2, 3, 4]).unwrap();
    }

    #[test]
    fn bad_pins_and_failed_deliveries_are_errors() {
        struct Broken;
        impl MsiSink for Broken {
            fn signal_msi(&self, _: u64, _: u32) -> io::Result<u32> {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
        let (io, _) = ioapic();
        assert!(io.set_level(PINS, true).is_err());
        let io = Ioapic::new(0, Arc::new(Broken));
        program(&io, 4, 0x34, 0);
        assert!(io.pulse(4).is_err());
    }
}
