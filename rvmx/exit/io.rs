// SPDX-License-Identifier: GPL-2.0

//! Port I/O exits: IN and OUT go to user space with their data in the run
//! area, as KVM's KVM_EXIT_IO.

use crate::{
    uapi,
    vcpu::{regs::RAX, Guest, Pending, RunArea, Vcpu},
    vmx::current::CurrentVmcs,
};

use super::{internal_error, reason::IoAccess, skip_instruction, Action};

pub(super) fn handle(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest, io: IoAccess) -> Action {
    if io.string || io.rep {
        return internal_error(vcpu, vmcs, uapi::RVMX_INTERNAL_ERROR_EMULATION, 30);
    }
    let size = usize::from(io.size);
    let direction = if io.is_in {
        g.pending = Pending::PortIn { size: io.size };
        uapi::RVMX_EXIT_IO_IN
    } else {
        vcpu.run.write_data(&g.regs.gpr[RAX].to_le_bytes()[..size]);
        uapi::RVMX_EXIT_IO_OUT
    };
    skip_instruction(vmcs);
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_IO,
        uapi::rvmx_exit_io {
            direction: direction as u8,
            size: io.size,
            port: io.port,
            count: 1,
            data_offset: RunArea::data_offset(),
        },
    );
    Action::User
}

/// Puts the `size` bytes the VMM left for an IN into RAX: a 32-bit IN
/// zero-extends into RAX, 8- and 16-bit ones keep the other bits.
pub(super) fn complete_in(vcpu: &Vcpu, g: &mut Guest, size: u8) {
    let mut bytes = [0u8; 8];
    let size = usize::from(size.min(4));
    vcpu.run.read_data(&mut bytes[..size]);
    let value = u64::from_le_bytes(bytes);
    let rax = &mut g.regs.gpr[RAX];
    *rax = match size {
        4 => value,
        n => (*rax & !((1u64 << (8 * n)) - 1)) | value,
    };
}
