//! COM1: vm-superio's 16550A at 0x3f8 on IRQ 4, its output on vmmctl's
//! stdout (and watched for a guest panic), its input from the console.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::control::{Control, Outcome};
use crate::devices::panic_watch::PanicWatch;

pub const BASE: u16 = 0x3f8;
pub const IRQ: u32 = 4;

/// Raises the UART's interrupt line: the hypervisor turns each eventfd
/// write into an edge on the IRQ.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

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

pub type Serial = vm_superio::Serial<IrqTrigger, NoEvents, ConsoleOut>;
