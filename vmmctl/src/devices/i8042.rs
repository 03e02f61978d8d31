//! The PS/2 controller, for its one job in a VM: Linux reboots by sending
//! it the pulse-reset command (0xfe to port 0x64). vm-superio's model
//! answers the rest (reads as 0: no data, input buffer empty).

use std::sync::Arc;

use vm_superio::Trigger;

use crate::control::{Control, Outcome};

pub const DATA_PORT: u16 = 0x60;
pub const COMMAND_PORT: u16 = 0x64;

/// A reset request ends the VM as a reboot.
pub struct ResetTrigger(pub Arc<Control>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.finish(Outcome::Reboot);
        Ok(())
    }
}

pub type I8042 = vm_superio::I8042Device<ResetTrigger>;
