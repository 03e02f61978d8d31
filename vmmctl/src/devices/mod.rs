//! The VM's port-I/O devices and the bus that routes accesses to them.
//! The PIC, IOAPIC, local APICs and PIT live in the hypervisor.

mod acpi_pm;
pub mod debug_exit;
pub mod i8042;
mod panic_watch;
pub mod serial;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::control::{Control, Outcome};
use acpi_pm::AcpiPm;
use i8042::{ResetTrigger, I8042};
use serial::Serial;

/// The POST-code port: Linux writes to it as an I/O delay; nothing answers.
const POST_PORT: u16 = 0x80;

pub struct Devices {
    serial: Mutex<Serial>,
    i8042: Mutex<I8042>,
    pm: Mutex<AcpiPm>,
    control: Arc<Control>,
}

/// A poisoned lock means a device panicked on another vCPU thread; the
/// device state is still consistent enough to finish the run.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Devices {
    pub fn new(serial: Serial, control: Arc<Control>) -> Self {
        Self {
            serial: Mutex::new(serial),
            i8042: Mutex::new(I8042::new(ResetTrigger(control.clone()))),
            pm: Mutex::new(AcpiPm::default()),
            control,
        }
    }

    /// An `in`: fills `data` and returns true if a device answered.
    pub fn pio_in(&self, port: u16, data: &mut [u8]) -> bool {
        let value = match port {
            serial::BASE..=0x3ff => lock(&self.serial).read((port - serial::BASE) as u8),
            i8042::DATA_PORT | i8042::COMMAND_PORT => {
                lock(&self.i8042).read((port - i8042::DATA_PORT) as u8)
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
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::eventfd::EventFd;

    /// Console output captured for assertions.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn devices() -> (Devices, Arc<Control>, Capture, EventFd) {
        let control = Arc::new(Control::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let cap = Capture::default();
        let out = serial::ConsoleOut::new(Box::new(cap.clone()), control.clone());
        let s = Serial::new(serial::IrqTrigger(irq.try_clone().unwrap()), out);
        (Devices::new(s, control.clone()), control, cap, irq)
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
    fn unknown_ports_are_not_claimed() {
        let (d, _, _, _) = devices();
        let mut data = [0u8; 2];
        assert!(!d.pio_in(0x510, &mut data));
        assert!(!d.pio_out(0xcf8, &[0, 0, 0, 0x80]));
    }
}
