//! The VM's devices and the bus that routes port I/O and MMIO to them.
//! The local APICs live in the hypervisor, and with KVM also the PIC, I/O
//! APIC and PIT; with rvmx the I/O APIC is vmmctl's (`ioapic`), and there
//! is no PIC: its ports read as all-ones like any port nobody answers.
//! Neither hypervisor has the CMOS clock, so it is vmmctl's (`rtc`) on both.

mod acpi_pm;
pub mod debug_exit;
pub mod i8042;
pub mod ioapic;
pub mod irq;
mod panic_watch;
pub mod rtc;
pub mod serial;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::control::{Control, Outcome};
use acpi_pm::AcpiPm;
use i8042::{ResetTrigger, I8042};
use ioapic::Ioapic;
use rtc::{Rtc, SystemClock};
use serial::Serial;

/// The POST-code port: Linux writes to it as an I/O delay; nothing answers.
const POST_PORT: u16 = 0x80;

pub struct Devices {
    serial: Mutex<Serial>,
    i8042: Mutex<I8042>,
    pm: Mutex<AcpiPm>,
    rtc: Mutex<Rtc>,
    /// vmmctl's I/O APIC, where the hypervisor has none.
    ioapic: Option<Arc<Ioapic>>,
    control: Arc<Control>,
}

/// A poisoned lock means a device panicked on another vCPU thread; the
/// device state is still consistent enough to finish the run.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Devices {
    pub fn new(serial: Serial, ioapic: Option<Arc<Ioapic>>, control: Arc<Control>) -> Self {
        Self {
            serial: Mutex::new(serial),
            i8042: Mutex::new(I8042::new(ResetTrigger(control.clone()))),
            pm: Mutex::new(AcpiPm::default()),
            rtc: Mutex::new(Rtc::new(SystemClock)),
            ioapic,
            control,
        }
    }

    /// The I/O APIC if `addr` is in its window, with the offset there.
    fn ioapic_at(&self, addr: u64) -> Option<(&Ioapic, u64)> {
        let offset = addr.checked_sub(ioapic::BASE)?;
        let ioapic = self.ioapic.as_deref()?;
        (offset < ioapic::SIZE).then_some((ioapic, offset))
    }

    /// An MMIO load: fills `data` and returns true if a device answered.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((ioapic, offset)) = self.ioapic_at(addr) else {
            return false;
        };
        ioapic.read(offset, data);
        true
    }

    /// An MMIO store: returns whether a device took it, or the error of
    /// the interrupt it made the I/O APIC send.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> io::Result<bool> {
        let Some((ioapic, offset)) = self.ioapic_at(addr) else {
            return Ok(false);
        };
        ioapic.write(offset, data)?;
        Ok(true)
    }

    /// The guest ended level-triggered `vector` (split irqchip only).
    pub fn ioapic_eoi(&self, vector: u8) -> io::Result<()> {
        match &self.ioapic {
            Some(ioapic) => ioapic.eoi(vector),
            None => Ok(()),
        }
    }

    /// An `in`: fills `data` and returns true if a device answered.
    pub fn pio_in(&self, port: u16, data: &mut [u8]) -> bool {
        let value = match port {
            serial::BASE..=0x3ff => lock(&self.serial).read((port - serial::BASE) as u8),
            i8042::DATA_PORT | i8042::COMMAND_PORT => {
                lock(&self.i8042).read((port - i8042::DATA_PORT) as u8)
            }
            rtc::INDEX_PORT | rtc::DATA_PORT => {
                lock(&self.rtc).read((port - rtc::INDEX_PORT) as u8)
            }
            p if acpi_pm::claims(p) => {
                lock(&self.pm).read(port, data);
                return true;
            }
            _ => return false,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
        true
    }

    /// An `out`: returns true if a device took it.
    pub fn pio_out(&self, port: u16, data: &[u8]) -> bool {
        let value = data.first().copied().unwrap_or(0);
        match port {
            serial::BASE..=0x3ff => {
                // A failed interrupt trigger loses one interrupt; the guest's
                // driver polls LSR as well, so output goes on.
                let _ = lock(&self.serial).write((port - serial::BASE) as u8, value);
            }
            i8042::DATA_PORT | i8042::COMMAND_PORT => {
                let Ok(()) = lock(&self.i8042).write((port - i8042::DATA_PORT) as u8, value);
            }
            rtc::INDEX_PORT | rtc::DATA_PORT => {
                lock(&self.rtc).write((port - rtc::INDEX_PORT) as u8, value)
            }
            debug_exit::PORT => self.control.finish(debug_exit::write(data)),
            POST_PORT => {}
            p if acpi_pm::claims(p) => {
                if let Some(outcome) = lock(&self.pm).write(port, data) {
                    self.control.finish(outcome);
                }
            }
            _ => return false,
        }
        true
    }

    /// Console input for the guest: queues what fits in the UART's FIFO and
    /// returns how many bytes it took.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Stops the run with `outcome` (used for exits the bus cannot answer).
    pub fn finish(&self, outcome: Outcome) {
        self.control.finish(outcome);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hypervisor::MsiSink;
    use std::io::Write;
    use vmm_sys_util::eventfd::EventFd;

    /// Console output captured for assertions.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub(crate) fn devices() -> (Devices, Arc<Control>, Capture, EventFd) {
        let control = Arc::new(Control::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let cap = Capture::default();
        let out = serial::ConsoleOut::new(Box::new(cap.clone()), control.clone());
        let s = Serial::new(irq::IrqLine::Irqfd(irq.try_clone().unwrap()), out);
        (Devices::new(s, None, control.clone()), control, cap, irq)
    }

    #[test]
    fn serial_output_reaches_the_console() {
        let (d, _, cap, _) = devices();
        for b in b"hi\n" {
            assert!(d.pio_out(0x3f8, &[*b]));
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn serial_input_is_readable_and_raises_irq4() {
        let (d, _, _, irq) = devices();
        d.pio_out(0x3f9, &[0x01]); // IER: received-data interrupt on
        assert_eq!(d.serial_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1, "IRQ line pulsed");
        let mut lsr = [0u8];
        d.pio_in(0x3fd, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "LSR: data ready");
        let mut rbr = [0u8];
        d.pio_in(0x3f8, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }

    #[test]
    fn i8042_reset_is_a_reboot_and_other_commands_are_not() {
        let (d, control, _, _) = devices();
        d.pio_out(0x64, &[0x20]); // read controller command byte
        assert_eq!(control.outcome(), None);
        d.pio_out(0x64, &[0xfe]);
        assert_eq!(control.outcome(), Some(Outcome::Reboot));
    }

    #[test]
    fn debug_exit_port_ends_the_run_with_the_code() {
        let (d, control, _, _) = devices();
        assert!(d.pio_out(0xf4, &[0x10]));
        assert_eq!(control.outcome(), Some(Outcome::DebugExit(0x10)));
        assert_eq!(control.outcome().unwrap().exit_status(), 0x21);
    }

    #[test]
    fn guest_panic_on_the_console_is_an_outcome() {
        let (d, control, _, _) = devices();
        for b in b"---[ end Kernel panic - not syncing: VFS ]---\n" {
            d.pio_out(0x3f8, &[*b]);
        }
        assert_eq!(control.outcome(), Some(Outcome::GuestPanic));
    }

    #[test]
    fn acpi_s5_is_a_power_off() {
        let (d, control, _, _) = devices();
        assert!(d.pio_out(0x604, &0x3400u16.to_le_bytes()));
        assert_eq!(control.outcome(), Some(Outcome::PowerOff));
    }

    #[test]
    fn cmos_clock_answers_its_two_ports() {
        let (d, _, _, _) = devices();
        let mut v = [0xffu8];
        assert!(d.pio_out(0x70, &[0x8d])); // NMI masked, register D
        assert!(d.pio_in(0x71, &mut v));
        assert_eq!(v[0], 0x80, "VRT");
        d.pio_out(0x70, &[0x0a]);
        d.pio_in(0x71, &mut v);
        assert_eq!(v[0] & 0x80, 0, "no update in progress");
        d.pio_out(0x70, &[0x40]);
        assert!(d.pio_out(0x71, &[0x5a]));
        d.pio_in(0x71, &mut v);
        assert_eq!(v[0], 0x5a, "CMOS RAM");
    }

    #[test]
    fn unknown_ports_are_not_claimed() {
        let (d, _, _, _) = devices();
        let mut data = [0u8; 2];
        assert!(!d.pio_in(0x510, &mut data));
        assert!(!d.pio_out(0xcf8, &[0, 0, 0, 0x80]));
    }

    /// Records the MSIs vmmctl's I/O APIC sends.
    #[derive(Default)]
    struct Msis(Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Msis {
        fn signal_msi(&self, address: u64, data: u32) -> io::Result<u32> {
            self.0.lock().unwrap().push((address, data));
            Ok(1)
        }
    }

    /// Devices as on rvmx: COM1 on pin 4 of vmmctl's I/O APIC.
    fn split_devices() -> (Devices, Arc<Msis>) {
        let control = Arc::new(Control::new().unwrap());
        let msis = Arc::new(Msis::default());
        let ioapic = Arc::new(Ioapic::new(1, msis.clone()));
        let line = irq::IrqLine::Ioapic {
            ioapic: ioapic.clone(),
            pin: serial::IRQ as usize,
        };
        let out = serial::ConsoleOut::new(Box::new(Capture::default()), control.clone());
        let d = Devices::new(Serial::new(line, out), Some(ioapic), control);
        (d, msis)
    }

    const IOREGSEL: u64 = 0xfec0_0000;
    const IOWIN: u64 = 0xfec0_0010;

    #[test]
    fn ioapic_window_is_routed_and_nothing_else() {
        let (d, _) = split_devices();
        assert!(d.mmio_write(IOREGSEL, &1u32.to_le_bytes()).unwrap());
        let mut v = [0u8; 4];
        assert!(d.mmio_read(IOWIN, &mut v));
        assert_eq!(u32::from_le_bytes(v), 0x0017_0020, "version register");
        assert!(!d.mmio_read(0xfec0_1000, &mut v), "past the window");
        assert!(!d.mmio_read(0xfebf_fffc, &mut v), "below it");
        assert!(!d.mmio_write(0xfed0_0000, &[0]).unwrap());
        let (kvm, ..) = devices();
        assert!(!kvm.mmio_read(IOWIN, &mut v), "KVM's I/O APIC is its own");
        kvm.ioapic_eoi(0x24).unwrap();
    }

    #[test]
    fn serial_input_interrupts_through_the_ioapic_and_eoi_reaches_it() {
        let (d, msis) = split_devices();
        // The guest routes pin 4 to vector 0x24 on APIC 0, edge, and
        // enables the received-data interrupt.
        d.mmio_write(IOREGSEL, &0x18u32.to_le_bytes()).unwrap();
        d.mmio_write(IOWIN, &0x24u32.to_le_bytes()).unwrap();
        d.pio_out(0x3f9, &[0x01]);
        assert_eq!(d.serial_input(b"ls\n"), 3);
        let sent = msis.0.lock().unwrap().clone();
        assert!(!sent.is_empty(), "COM1 interrupted");
        assert!(sent.iter().all(|&m| m == (0xfee0_0000, 0x24)), "{sent:x?}");
        // A level-triggered pin waits for its EOI.
        msis.0.lock().unwrap().clear();
        d.mmio_write(IOREGSEL, &0x1au32.to_le_bytes()).unwrap();
        d.mmio_write(IOWIN, &0x8025u32.to_le_bytes()).unwrap();
        let ioapic = d.ioapic.clone().unwrap();
        ioapic.set_level(5, true).unwrap();
        d.ioapic_eoi(0x25).unwrap();
        assert_eq!(msis.0.lock().unwrap().len(), 2, "re-sent after the EOI");
    }
}
