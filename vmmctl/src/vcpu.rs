//! vCPU threads: each runs its vCPU, hands its exits to the devices, and
//! stops when the run has an outcome. A vCPU blocked in the guest is
//! kicked out with a signal whose handler sets the hypervisor's
//! immediate-exit byte, so a kick that lands just before the next entry
//! is not lost; the kick is repeated until the thread has ended.

use std::cell::Cell;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::control::{Control, Outcome};
use crate::devices::Devices;
use crate::hypervisor::{Backend, InternalError, Vcpu, VmExit};
use crate::stats::ExitStats;

thread_local! {
    /// This thread's vCPU immediate-exit byte, null when no vCPU runs here.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: set by this thread's run loop to its own vCPU's byte
            // and cleared before that vCPU is dropped.
            unsafe { p.write_volatile(1) };
        }
    });
}

fn kick_signal() -> c_int {
    SIGRTMIN()
}

/// Installs the kick handler (once per process, before vCPUs start).
pub fn install_kick_handler() -> Result<()> {
    register_signal_handler(kick_signal(), on_kick).context("installing the vCPU kick handler")
}

/// One vCPU thread's identity: which vCPU, run by which hypervisor
/// (named in its error messages).
#[derive(Clone, Copy)]
pub struct VcpuId {
    pub id: u8,
    pub hypervisor: Backend,
}

/// Starts the vCPU on its own thread; the thread returns its statistics.
pub fn spawn(
    who: VcpuId,
    vcpu: Box<dyn Vcpu>,
    devices: Arc<Devices>,
    control: Arc<Control>,
) -> Result<JoinHandle<ExitStats>> {
    thread::Builder::new()
        .name(format!("vcpu{}", who.id))
        .spawn(move || run_loop(who, vcpu, &devices, &control))
        .with_context(|| format!("cannot start the thread of vCPU {}", who.id))
}

fn run_loop(
    who: VcpuId,
    mut vcpu: Box<dyn Vcpu>,
    devices: &Devices,
    control: &Control,
) -> ExitStats {
    let mut stats = ExitStats::default();
    IMMEDIATE_EXIT.with(|p| p.set(vcpu.immediate_exit().as_ptr()));
    while !control.stopping() {
        match vcpu.run() {
            Ok(exit) => {
                stats.exit(exit.name());
                if let Some(outcome) = handle(who, exit, devices, &mut stats) {
                    devices.finish(outcome);
                }
            }
            Err(e) => devices.finish(Outcome::Error(format!("vCPU {}: {e:#}", who.id))),
        }
    }
    IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    stats
}

/// What vmmctl says about an internal error.
fn internal_error(who: VcpuId, e: &InternalError) -> String {
    let VcpuId { id, hypervisor } = who;
    match e {
        InternalError::Emulation {
            rip,
            address,
            bytes,
        } => {
            let mut s = format!("vCPU {id}: {hypervisor} could not emulate ");
            match rip {
                Some(rip) => s += &format!("the instruction at RIP {rip:#x}"),
                None => s += "an instruction",
            }
            if let Some(bytes) = bytes {
                let hex: Vec<_> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                s += &format!(" (bytes {})", hex.join(" "));
            }
            if let Some(address) = address {
                s += &format!(" accessing {address:#x}");
            }
            s
        }
        InternalError::EventDelivery { vectoring, rip } => {
            let mut s = format!("vCPU {id}: {hypervisor} could not deliver an event");
            if let Some(v) = vectoring {
                s += &format!(" (vector {}, type {})", v & 0xff, (v >> 8) & 7);
            }
            if let Some(rip) = rip {
                s += &format!(" at RIP {rip:#x}");
            }
            s + ": its delivery touched memory no slot backs"
        }
        InternalError::UnhandledExit(Some(reason)) => {
            format!("vCPU {id}: {hypervisor} does not handle VMX exit reason {reason}")
        }
        InternalError::UnhandledExit(None) => {
            format!("vCPU {id}: {hypervisor} met an exit it does not handle")
        }
        InternalError::Unknown(Some(suberror)) => {
            format!("vCPU {id}: {hypervisor} reported internal error {suberror}")
        }
        InternalError::Unknown(None) => {
            format!("vCPU {id}: {hypervisor} could not emulate an instruction (internal error)")
        }
    }
}

/// Serves one exit; returns the outcome if it ends the run.
fn handle(
    who: VcpuId,
    exit: VmExit<'_>,
    devices: &Devices,
    stats: &mut ExitStats,
) -> Option<Outcome> {
    let id = who.id;
    match exit {
        VmExit::IoIn { port, data } => {
            if !devices.pio_in(port, data) {
                // What an ISA bus with nothing at the port returns.
                data.fill(0xff);
                stats.unhandled('r', port);
            }
            None
        }
        VmExit::IoOut { port, data } => {
            if !devices.pio_out(port, data) {
                stats.unhandled('w', port);
            }
            None
        }
        VmExit::MmioRead { addr, data } => {
            if !devices.mmio_read(addr, data) {
                // Nothing decodes the address: the bus floats high.
                data.fill(0xff);
            }
            None
        }
        VmExit::MmioWrite { addr, data } => match devices.mmio_write(addr, data) {
            Ok(_) => None,
            Err(e) => Some(Outcome::Error(format!(
                "vCPU {id}: the I/O APIC could not send an interrupt: {e}"
            ))),
        },
        VmExit::IoapicEoi(vector) => match devices.ioapic_eoi(vector) {
            Ok(()) => None,
            Err(e) => Some(Outcome::Error(format!(
                "vCPU {id}: the I/O APIC could not re-send vector {vector:#x}: {e}"
            ))),
        },
        VmExit::Interrupted => None,
        VmExit::Shutdown => Some(Outcome::TripleFault),
        VmExit::Halt => Some(Outcome::Error(format!(
            "vCPU {id} halted with no interrupt controller to wake it"
        ))),
        VmExit::FailEntry(reason) => Some(Outcome::Error(format!(
            "vCPU {id}: VM entry failed, hardware error {reason:#x}{}",
            if reason == 7 {
                " (invalid VMX control field; under Bochs, load kvm_intel with enable_apicv=0)"
            } else {
                ""
            }
        ))),
        VmExit::InternalError(e) => Some(Outcome::Error(internal_error(who, &e))),
        VmExit::Other(name) => Some(Outcome::Error(format!(
            "vCPU {id}: unexpected exit '{name}'"
        ))),
    }
}

/// Kicks every vCPU thread until all have ended; returns their merged
/// statistics.
pub fn stop_all(handles: Vec<JoinHandle<ExitStats>>) -> ExitStats {
    while handles.iter().any(|h| !h.is_finished()) {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            // ESRCH if it ended meanwhile: nothing to kick.
            let _ = h.kill(kick_signal());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let mut total = ExitStats::default();
    for h in handles {
        // A vCPU thread that panicked has no statistics to give.
        if let Ok(s) = h.join() {
            total.merge(&s);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::tests::devices;

    const RVMX: VcpuId = VcpuId {
        id: 1,
        hypervisor: Backend::Rvmx,
    };

    #[test]
    fn no_pic_means_its_ports_read_all_ones() {
        // Linux writes 0xfb to the master's mask and reads it back; 0xff
        // makes it say "Using NULL legacy PIC".
        let (d, ..) = devices();
        let mut stats = ExitStats::default();
        for port in [0x20, 0x21, 0xa0, 0xa1] {
            let mut data = [0u8];
            let exit = VmExit::IoIn {
                port,
                data: &mut data,
            };
            assert_eq!(handle(RVMX, exit, &d, &mut stats), None);
            assert_eq!(data, [0xff], "port {port:#x}");
        }
        let mut mmio = [0u8; 4];
        let exit = VmExit::MmioRead {
            addr: 0xfed0_0000,
            data: &mut mmio,
        };
        assert_eq!(handle(RVMX, exit, &d, &mut stats), None);
        assert_eq!(mmio, [0xff; 4], "unclaimed MMIO floats high");
    }

    #[test]
    fn internal_errors_say_what_the_hypervisor_knows() {
        let e = InternalError::Emulation {
            rip: Some(0xffff_ffff_8100_1234),
            address: Some(0xfed0_0000),
            bytes: Some([0x0f, 0x01, 0xd9, 0, 0, 0, 0, 0x90]),
        };
        assert_eq!(
            internal_error(RVMX, &e),
            "vCPU 1: rvmx could not emulate the instruction at RIP 0xffffffff81001234 \
             (bytes 0f 01 d9 00 00 00 00 90) accessing 0xfed00000"
        );
        let bare = InternalError::Emulation {
            rip: None,
            address: None,
            bytes: None,
        };
        assert_eq!(
            internal_error(RVMX, &bare),
            "vCPU 1: rvmx could not emulate an instruction"
        );
        let kvm = VcpuId {
            id: 0,
            hypervisor: Backend::Kvm,
        };
        assert_eq!(
            internal_error(kvm, &InternalError::Unknown(None)),
            "vCPU 0: kvm could not emulate an instruction (internal error)"
        );
        assert_eq!(
            internal_error(RVMX, &InternalError::UnhandledExit(Some(48))),
            "vCPU 1: rvmx does not handle VMX exit reason 48"
        );
    }

    #[test]
    fn halt_keeps_its_message_and_eoi_without_ioapic_is_harmless() {
        let (d, ..) = devices();
        let mut stats = ExitStats::default();
        assert_eq!(
            handle(RVMX, VmExit::Halt, &d, &mut stats),
            Some(Outcome::Error(
                "vCPU 1 halted with no interrupt controller to wake it".into()
            ))
        );
        assert_eq!(handle(RVMX, VmExit::IoapicEoi(0x30), &d, &mut stats), None);
    }
}
