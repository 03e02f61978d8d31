//! COM1: vm-superio's 16550A at 0x3f8 on IRQ 4, its output on vmmctl's
//! stdout (and watched for a guest panic), its input from the console.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;

use crate::control::{Control, Outcome};
use crate::devices::irq::IrqLine;
use crate::devices::panic_watch::PanicWatch;

pub const BASE: u16 = 0x3f8;
/// ISA IRQ 4, I/O APIC pin 4: edge-triggered, active high, as the MADT
/// and MP table say by giving ISA IRQs no override.
pub const IRQ: u32 = 4;

/// Where the guest's console output goes.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    watch: PanicWatch,
    control: Arc<Control>,
}

impl ConsoleOut {
    pub fn new(out: Box<dyn Write + Send>, control: Arc<Control>) -> Self {
        Self {
            out,
            watch: PanicWatch::default(),
            control,
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A closed stdout must not stop the guest: its output is lost.
        let _ = self.out.write_all(buf);
        if self.watch.feed(buf) {
            self.control.finish(Outcome::GuestPanic);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// vm-superio triggers the line once per interrupt it raises: a pulse.
pub type Serial = vm_superio::Serial<IrqLine, NoEvents, ConsoleOut>;
