// SPDX-License-Identifier: GPL-2.0

//! The VMX capability MSRs of a CPU and what they allow (SDM Vol. 3, Appendix A).
//!
//! Pure logic: MSRs are read through a caller-supplied function, so the host
//! unit tests can feed it any processor's values.

use super::msr::*;

/// Primary processor-based control: activate the secondary controls.
pub(crate) const PROC_ACTIVATE_SECONDARY: u32 = 1 << 31;
/// Secondary processor-based controls rvmx looks for.
pub(crate) const PROC2_ENABLE_EPT: u32 = 1 << 1;
pub(crate) const PROC2_ENABLE_VPID: u32 = 1 << 5;
pub(crate) const PROC2_UNRESTRICTED_GUEST: u32 = 1 << 7;

/// The controls of APIC virtualization (SDM Vol. 3, Chapter 30): rvmx uses
/// them all together, or none (`VmxCaps::has_apicv`).
pub(crate) const PROC_USE_TPR_SHADOW: u32 = 1 << 21;
pub(crate) const PROC_USE_MSR_BITMAPS: u32 = 1 << 28;
pub(crate) const PROC2_VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
pub(crate) const PROC2_VIRTUALIZE_X2APIC_MODE: u32 = 1 << 4;
pub(crate) const PROC2_APIC_REGISTER_VIRTUALIZATION: u32 = 1 << 8;
pub(crate) const PROC2_VIRTUAL_INTERRUPT_DELIVERY: u32 = 1 << 9;
const PROC2_APICV: u32 = PROC2_VIRTUALIZE_APIC_ACCESSES
    | PROC2_VIRTUALIZE_X2APIC_MODE
    | PROC2_APIC_REGISTER_VIRTUALIZATION
    | PROC2_VIRTUAL_INTERRUPT_DELIVERY;

/// IA32_VMX_EPT_VPID_CAP: INVEPT single-context (bit 25), INVVPID
/// single-context (bit 41).
const EPT_INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
const VPID_INVVPID_SINGLE_CONTEXT: u64 = 1 << 41;

/// IA32_VMX_BASIC[55]: the TRUE_* control MSRs exist and report the
/// default-1 controls that may be cleared.
const BASIC_TRUE_CONTROLS: u64 = 1 << 55;

/// The raw VMX capability MSRs of one CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VmxCaps {
    pub(crate) basic: u64,
    pub(crate) pinbased: u64,
    pub(crate) procbased: u64,
    /// Zero when the CPU has no secondary controls.
    pub(crate) procbased2: u64,
    pub(crate) exit: u64,
    pub(crate) entry: u64,
    pub(crate) misc: u64,
    /// Zero when the CPU has neither EPT nor VPID.
    pub(crate) ept_vpid: u64,
    pub(crate) cr0_fixed0: u64,
    pub(crate) cr0_fixed1: u64,
    pub(crate) cr4_fixed0: u64,
    pub(crate) cr4_fixed1: u64,
}

/// The allowed-1 half of a control capability: a 0 bit there must stay 0.
const fn allowed1(ctl: u64) -> u32 {
    (ctl >> 32) as u32
}

impl VmxCaps {
    /// Reads the capability MSRs of a CPU that reports VMX in CPUID.
    ///
    /// Only MSRs that exist on that CPU are read: the secondary controls only
    /// when the primary controls may activate them, EPT/VPID capabilities only
    /// when EPT or VPID may be enabled, the TRUE_* MSRs only when
    /// IA32_VMX_BASIC says they exist. Reading any other would fault.
    pub(crate) fn read(rdmsr: impl Fn(u32) -> u64) -> Self {
        let basic = rdmsr(IA32_VMX_BASIC);
        let ctl = |plain, true_msr| {
            if basic & BASIC_TRUE_CONTROLS != 0 {
                rdmsr(true_msr)
            } else {
                rdmsr(plain)
            }
        };
        let procbased = ctl(IA32_VMX_PROCBASED_CTLS, IA32_VMX_TRUE_PROCBASED_CTLS);
        let procbased2 = if allowed1(procbased) & PROC_ACTIVATE_SECONDARY != 0 {
            rdmsr(IA32_VMX_PROCBASED_CTLS2)
        } else {
            0
        };
        let ept_vpid = if allowed1(procbased2) & (PROC2_ENABLE_EPT | PROC2_ENABLE_VPID) != 0 {
            rdmsr(IA32_VMX_EPT_VPID_CAP)
        } else {
            0
        };
        Self {
            basic,
            pinbased: ctl(IA32_VMX_PINBASED_CTLS, IA32_VMX_TRUE_PINBASED_CTLS),
            procbased,
            procbased2,
            exit: ctl(IA32_VMX_EXIT_CTLS, IA32_VMX_TRUE_EXIT_CTLS),
            entry: ctl(IA32_VMX_ENTRY_CTLS, IA32_VMX_TRUE_ENTRY_CTLS),
            misc: rdmsr(IA32_VMX_MISC),
            ept_vpid,
            cr0_fixed0: rdmsr(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(IA32_VMX_CR4_FIXED1),
        }
    }

    /// The revision identifier that VMXON and VMCS regions must start with.
    pub(crate) fn vmcs_revision(&self) -> u32 {
        (self.basic & 0x7fff_ffff) as u32
    }

    /// Bytes the processor needs for a VMXON or VMCS region (at most 4096).
    pub(crate) fn vmcs_size(&self) -> u32 {
        ((self.basic >> 32) & 0x1fff) as u32
    }

    pub(crate) fn has_true_controls(&self) -> bool {
        self.basic & BASIC_TRUE_CONTROLS != 0
    }

    fn may_set_secondary(&self, bit: u32) -> bool {
        allowed1(self.procbased) & PROC_ACTIVATE_SECONDARY != 0
            && allowed1(self.procbased2) & bit != 0
    }

    pub(crate) fn has_ept(&self) -> bool {
        self.may_set_secondary(PROC2_ENABLE_EPT)
    }

    pub(crate) fn has_vpid(&self) -> bool {
        self.may_set_secondary(PROC2_ENABLE_VPID)
    }

    pub(crate) fn has_unrestricted_guest(&self) -> bool {
        self.may_set_secondary(PROC2_UNRESTRICTED_GUEST)
    }

    /// TPR shadow, MSR bitmaps, xAPIC and x2APIC virtualization,
    /// APIC-register virtualization and virtual-interrupt delivery.
    pub(crate) fn has_apicv(&self) -> bool {
        let proc = PROC_USE_TPR_SHADOW | PROC_USE_MSR_BITMAPS | PROC_ACTIVATE_SECONDARY;
        allowed1(self.procbased) & proc == proc
            && allowed1(self.procbased2) & PROC2_APICV == PROC2_APICV
    }

    /// Whether `cr0` satisfies the VMX fixed-bit constraints on CR0.
    pub(crate) fn cr0_allowed(&self, cr0: u64) -> bool {
        fixed_bits_ok(cr0, self.cr0_fixed0, self.cr0_fixed1)
    }

    /// Whether `cr4` satisfies the VMX fixed-bit constraints on CR4.
    pub(crate) fn cr4_allowed(&self, cr4: u64) -> bool {
        fixed_bits_ok(cr4, self.cr4_fixed0, self.cr4_fixed1)
    }

    /// The first feature rvmx needs that this CPU lacks, if any.
    pub(crate) fn missing_requirement(&self) -> Option<&'static str> {
        if self.vmcs_size() == 0 || self.vmcs_size() > 4096 {
            Some("a VMCS region of at most 4 KiB (IA32_VMX_BASIC)")
        } else if !self.has_ept() {
            Some("EPT (extended page tables)")
        } else if !self.has_unrestricted_guest() {
            Some("unrestricted guest")
        } else if self.ept_vpid & EPT_INVEPT_SINGLE_CONTEXT == 0 {
            Some("single-context INVEPT")
        } else if self.has_vpid() && self.ept_vpid & VPID_INVVPID_SINGLE_CONTEXT == 0 {
            Some("single-context INVVPID")
        } else {
            None
        }
    }
}

/// Bits set in `fixed0` must be 1; bits clear in `fixed1` must be 0.
fn fixed_bits_ok(value: u64, fixed0: u64, fixed1: u64) -> bool {
    value & fixed0 == fixed0 && value & !fixed1 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MSR values rvmx reported (`vmmctl info`) under Bochs 3.0 with
    /// `cpu: model=corei7_skylake_x`.
    fn skylake_x(msr: u32) -> u64 {
        match msr {
            IA32_VMX_BASIC => 0x00d8_1000_0000_002b,
            IA32_VMX_TRUE_PINBASED_CTLS => 0x0000_00ff_0000_0016,
            IA32_VMX_TRUE_PROCBASED_CTLS => 0xfff9_fffe_0400_6172,
            IA32_VMX_PROCBASED_CTLS2 => 0x0257_7fff_0000_0000,
            IA32_VMX_TRUE_EXIT_CTLS => 0x407f_ffff_0003_6dfb,
            IA32_VMX_TRUE_ENTRY_CTLS => 0x0000_ffff_0000_11fb,
            IA32_VMX_MISC => 0x6004_01e0,
            IA32_VMX_EPT_VPID_CAP => 0x0000_0f01_0673_4141,
            IA32_VMX_CR0_FIXED0 => 0x8000_0021,
            IA32_VMX_CR0_FIXED1 => 0xffff_ffff,
            IA32_VMX_CR4_FIXED0 => 0x2000,
            IA32_VMX_CR4_FIXED1 => 0x0037_27ff,
            other => panic!("unexpected MSR read {other:#x}"),
        }
    }

    #[test]
    fn decodes_basic() {
        let caps = VmxCaps::read(skylake_x);
        assert_eq!(caps.vmcs_revision(), 0x2b);
        assert_eq!(caps.vmcs_size(), 4096);
        assert!(caps.has_true_controls());
        assert!(caps.has_ept() && caps.has_vpid() && caps.has_unrestricted_guest());
        assert_eq!(caps.missing_requirement(), None);
    }

    #[test]
    fn reads_plain_controls_without_true_msrs() {
        let caps = VmxCaps::read(|msr| match msr {
            IA32_VMX_BASIC => 0x0000_0400_0000_0001,
            IA32_VMX_TRUE_PINBASED_CTLS..=IA32_VMX_TRUE_ENTRY_CTLS => {
                panic!("read a TRUE_* MSR the CPU does not have")
            }
            IA32_VMX_PROCBASED_CTLS2 | IA32_VMX_EPT_VPID_CAP => {
                panic!("read a secondary-control MSR the CPU does not have")
            }
            IA32_VMX_PINBASED_CTLS => 0x1111,
            _ => 0,
        });
        assert!(!caps.has_true_controls());
        assert_eq!(caps.pinbased, 0x1111);
        assert_eq!(caps.procbased2, 0);
        assert!(!caps.has_ept());
        assert_eq!(
            caps.missing_requirement(),
            Some("EPT (extended page tables)")
        );
    }

    #[test]
    fn secondary_controls_need_the_activate_bit() {
        // PROCBASED_CTLS2 claims EPT, but the primary controls cannot
        // activate the secondary ones: EPT is not usable.
        let caps = VmxCaps {
            procbased2: u64::from(PROC2_ENABLE_EPT) << 32,
            ..VmxCaps::default()
        };
        assert!(!caps.has_ept());
    }

    #[test]
    fn missing_unrestricted_guest_is_named() {
        let caps = VmxCaps {
            ept_vpid: EPT_INVEPT_SINGLE_CONTEXT | VPID_INVVPID_SINGLE_CONTEXT,
            basic: 0x1000 << 32,
            procbased: u64::from(PROC_ACTIVATE_SECONDARY) << 32,
            procbased2: u64::from(PROC2_ENABLE_EPT | PROC2_ENABLE_VPID) << 32,
            ..VmxCaps::default()
        };
        assert_eq!(caps.missing_requirement(), Some("unrestricted guest"));
    }

    #[test]
    fn oversized_vmcs_is_refused() {
        let caps = VmxCaps {
            basic: 0x1001 << 32,
            ..VmxCaps::default()
        };
        assert!(caps.missing_requirement().is_some());
    }

    #[test]
    fn fixed_bits() {
        let caps = VmxCaps::read(skylake_x);
        // PE, NE and PG are fixed to 1 without unrestricted guest.
        assert!(caps.cr0_allowed(0x8005_0033));
        assert!(!caps.cr0_allowed(0x8005_0032));
        // CR4.VMXE (bit 13) is fixed to 1 in VMX operation.
        assert!(caps.cr4_allowed(0x0000_26f0));
        assert!(!caps.cr4_allowed(0x0000_06f0));
        // Bits above what CR4_FIXED1 allows must be 0.
        assert!(!caps.cr4_allowed(0x0040_26f0));
    }
}
