//! Interrupt lines as devices see them, whichever side emulates the I/O
//! APIC: a device holds an [`IrqLine`] and pulses it, and the line reaches
//! the hypervisor's I/O APIC through an irqfd, or a pin of vmmctl's own
//! I/O APIC, which sends an MSI.

use std::io;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::ioapic::{self, Ioapic};
use crate::hypervisor::{Irqchip, Vm};

/// The VM's interrupt routing: vmmctl's I/O APIC where the hypervisor has
/// none.
pub struct Interrupts {
    ioapic: Option<Arc<Ioapic>>,
}

impl Interrupts {
    /// For `vm`, whose I/O APIC (if vmmctl must provide it) gets `ioapic_id`,
    /// the ID the firmware tables give it.
    pub fn new(vm: &dyn Vm, ioapic_id: u8) -> Self {
        let ioapic = match vm.irqchip() {
            Irqchip::Full => None,
            Irqchip::Split(sink) => Some(Arc::new(Ioapic::new(ioapic_id, sink))),
        };
        Self { ioapic }
    }

    /// vmmctl's I/O APIC, if it has one: its MMIO and EOIs go there.
    pub fn ioapic(&self) -> Option<Arc<Ioapic>> {
        self.ioapic.clone()
    }

    /// The line wired to `gsi` (an I/O APIC pin; ISA IRQs map one to one).
    pub fn line(&self, vm: &dyn Vm, gsi: u32) -> Result<IrqLine> {
        match &self.ioapic {
            None => {
                let event = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                    .context("eventfd for an interrupt line")?;
                vm.connect_irq(&event, gsi)?;
                Ok(IrqLine::Irqfd(event))
            }
            Some(ioapic) => {
                let pin = usize::try_from(gsi)?;
                ensure!(
                    pin < ioapic::PINS,
                    "GSI {gsi} is beyond the I/O APIC's {} pins",
                    ioapic::PINS
                );
                Ok(IrqLine::Ioapic {
                    ioapic: ioapic.clone(),
                    pin,
                })
            }
        }
    }
}

/// One edge-triggered interrupt line.
pub enum IrqLine {
    /// The hypervisor's I/O APIC: each eventfd write is an edge on the GSI.
    Irqfd(EventFd),
    /// A pin of vmmctl's I/O APIC.
    Ioapic { ioapic: Arc<Ioapic>, pin: usize },
}

impl Trigger for IrqLine {
    type E = io::Error;

    /// One interrupt: a pulse on the line.
    fn trigger(&self) -> io::Result<()> {
        match self {
            IrqLine::Irqfd(event) => event.write(1),
            IrqLine::Ioapic { ioapic, pin } => ioapic.pulse(*pin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{MsiSink, Vcpu};
    use std::sync::Mutex;
    use vm_memory::GuestMemoryMmap;

    /// A VM whose only behaviour is its interrupt routing: a split irqchip
    /// when it has a sink.
    struct FakeVm {
        sink: Option<Arc<Sent>>,
        connected: Mutex<Vec<u32>>,
    }

    impl FakeVm {
        fn new(sink: Option<Arc<Sent>>) -> Self {
            Self {
                sink,
                connected: Mutex::new(vec![]),
            }
        }
    }

    impl Vm for FakeVm {
        fn set_memory(&mut self, _: Arc<GuestMemoryMmap>) -> Result<()> {
            Ok(())
        }
        fn irqchip(&self) -> Irqchip {
            match &self.sink {
                None => Irqchip::Full,
                Some(s) => Irqchip::Split(s.clone()),
            }
        }
        fn connect_irq(&self, _: &EventFd, gsi: u32) -> Result<()> {
            self.connected.lock().unwrap().push(gsi);
            Ok(())
        }
        fn create_vcpu(&self, _: u8) -> Result<Box<dyn Vcpu>> {
            anyhow::bail!("no vCPUs")
        }
        fn stats_fd(&self) -> Result<std::fs::File> {
            anyhow::bail!("no statistics")
        }
        fn stats_include_vcpus(&self) -> bool {
            true
        }
    }

    /// The data words of the MSIs sent.
    #[derive(Default)]
    struct Sent(Mutex<Vec<u32>>);
    impl MsiSink for Sent {
        fn signal_msi(&self, _: u64, data: u32) -> io::Result<u32> {
            self.0.lock().unwrap().push(data);
            Ok(1)
        }
    }

    #[test]
    fn full_irqchip_lines_are_irqfds_of_the_gsi() {
        let vm = FakeVm::new(None);
        let irqs = Interrupts::new(&vm, 1);
        assert!(irqs.ioapic().is_none());
        let line = irqs.line(&vm, 4).unwrap();
        assert_eq!(*vm.connected.lock().unwrap(), [4]);
        line.trigger().unwrap();
        let IrqLine::Irqfd(event) = line else {
            panic!("not an irqfd")
        };
        assert_eq!(event.read().unwrap(), 1, "one edge");
    }

    #[test]
    fn split_irqchip_lines_are_pins_of_vmmctls_ioapic() {
        let sent = Arc::new(Sent::default());
        let vm = FakeVm::new(Some(sent.clone()));
        let irqs = Interrupts::new(&vm, 1);
        let ioapic = irqs.ioapic().expect("vmmctl's I/O APIC");
        let line = irqs.line(&vm, 4).unwrap();
        assert!(vm.connected.lock().unwrap().is_empty(), "no irqfd");
        assert!(irqs.line(&vm, 24).is_err(), "24 pins");
        // Unmask pin 4 (redirection entry 0x18: vector 0x24, edge).
        ioapic.write(0, &[0x18]).unwrap();
        ioapic.write(0x10, &0x24u32.to_le_bytes()).unwrap();
        line.trigger().unwrap();
        assert_eq!(*sent.0.lock().unwrap(), [0x24]);
    }
}
