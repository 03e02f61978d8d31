// SPDX-License-Identifier: GPL-2.0

//! The VM-execution, VM-exit and VM-entry controls rvmx programs, derived
//! from the capability MSRs (SDM Vol. 3, Chapter 25 and Appendix A.3-A.5).
//!
//! Each control word is built from the bits rvmx requires (VM creation
//! fails with the missing bits named if the CPU cannot set them), the bits
//! it uses when the CPU offers them, and the bits the CPU forces to 1.
//! Pure logic: also compiled into the host unit tests.

use super::caps::{
    VmxCaps, PROC2_APIC_REGISTER_VIRTUALIZATION, PROC2_ENABLE_EPT, PROC2_ENABLE_VPID,
    PROC2_UNRESTRICTED_GUEST, PROC2_VIRTUALIZE_APIC_ACCESSES, PROC2_VIRTUALIZE_X2APIC_MODE,
    PROC2_VIRTUAL_INTERRUPT_DELIVERY, PROC_ACTIVATE_SECONDARY, PROC_USE_MSR_BITMAPS,
    PROC_USE_TPR_SHADOW,
};

pub(crate) const PIN_EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
pub(crate) const PIN_NMI_EXITING: u32 = 1 << 3;
pub(crate) const PIN_VIRTUAL_NMIS: u32 = 1 << 5;
pub(crate) const PIN_PREEMPTION_TIMER: u32 = 1 << 6;

pub(crate) const PROC_INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
pub(crate) const PROC_USE_TSC_OFFSETTING: u32 = 1 << 3;

pub(crate) const PROC_HLT_EXITING: u32 = 1 << 7;
pub(crate) const PROC_MWAIT_EXITING: u32 = 1 << 10;
pub(crate) const PROC_RDPMC_EXITING: u32 = 1 << 11;
pub(crate) const PROC_CR3_LOAD_EXITING: u32 = 1 << 15;
pub(crate) const PROC_CR3_STORE_EXITING: u32 = 1 << 16;
pub(crate) const PROC_CR8_LOAD_EXITING: u32 = 1 << 19;
pub(crate) const PROC_CR8_STORE_EXITING: u32 = 1 << 20;
pub(crate) const PROC_NMI_WINDOW_EXITING: u32 = 1 << 22;
pub(crate) const PROC_MOV_DR_EXITING: u32 = 1 << 23;
pub(crate) const PROC_UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
pub(crate) const PROC_MONITOR_EXITING: u32 = 1 << 29;

pub(crate) const PROC2_ENABLE_RDTSCP: u32 = 1 << 3;
pub(crate) const PROC2_WBINVD_EXITING: u32 = 1 << 6;
pub(crate) const PROC2_ENABLE_INVPCID: u32 = 1 << 12;

pub(crate) const EXIT_HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
pub(crate) const EXIT_SAVE_PAT: u32 = 1 << 18;
pub(crate) const EXIT_LOAD_PAT: u32 = 1 << 19;
pub(crate) const EXIT_SAVE_EFER: u32 = 1 << 20;
pub(crate) const EXIT_LOAD_EFER: u32 = 1 << 21;

pub(crate) const ENTRY_IA32E_MODE_GUEST: u32 = 1 << 9;
pub(crate) const ENTRY_LOAD_PAT: u32 = 1 << 14;
pub(crate) const ENTRY_LOAD_EFER: u32 = 1 << 15;

/// Controls rvmx must be able to clear: with EPT, CR3 accesses need not
/// exit; the window exits are turned on only while an event waits.
const PROC_MUST_CLEAR: u32 = PROC_CR3_LOAD_EXITING
    | PROC_CR3_STORE_EXITING
    | PROC_INTERRUPT_WINDOW_EXITING
    | PROC_NMI_WINDOW_EXITING;

/// Which control word could not be set as rvmx needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unsupported {
    pub(crate) word: &'static str,
    /// Bits rvmx needs set that the CPU cannot set, or needs clear that it
    /// cannot clear.
    pub(crate) bits: u32,
}

/// Builds one control word from its capability MSR (allowed-0 settings in
/// bits 31:0, allowed-1 settings in bits 63:32).
pub(crate) fn adjust(
    word: &'static str,
    cap: u64,
    required: u32,
    optional: u32,
    must_clear: u32,
) -> Result<u32, Unsupported> {
    let (must_be_1, may_be_1) = (cap as u32, (cap >> 32) as u32);
    let missing = required & !may_be_1;
    if missing != 0 {
        return Err(Unsupported {
            word,
            bits: missing,
        });
    }
    let stuck = must_clear & must_be_1;
    if stuck != 0 {
        return Err(Unsupported { word, bits: stuck });
    }
    Ok((required | (optional & may_be_1) | must_be_1) & !must_clear)
}

/// The control words of every VMCS rvmx builds on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Controls {
    pub(crate) pin: u32,
    pub(crate) proc: u32,
    pub(crate) proc2: u32,
    pub(crate) exit: u32,
    /// Without `ENTRY_IA32E_MODE_GUEST`, which follows the guest's EFER.LMA.
    pub(crate) entry: u32,
    /// APIC virtualization (`vcpu::apicv`): CR8 and TPR through the TPR
    /// shadow, APIC reads from the virtual-APIC page, writes as trap-like
    /// exits, interrupts delivered and EOIs taken by the processor. Which
    /// page or MSRs the guest's accesses come through (xAPIC or x2APIC) is
    /// set per vCPU, as its APIC's mode changes. Without it, CR8 accesses
    /// exit and every APIC access is emulated.
    pub(crate) apicv: bool,
}

impl Controls {
    /// `apicv`: use APIC virtualization if the CPU has all of it.
    pub(crate) fn new(caps: &VmxCaps, apicv: bool) -> Result<Self, Unsupported> {
        let vpid = if caps.has_vpid() {
            PROC2_ENABLE_VPID
        } else {
            0
        };
        let apicv = apicv && caps.has_apicv();
        // CR8 is the guest's TPR, which must never reach the host's: the
        // TPR shadow keeps it in the virtual-APIC page, or CR8 exits.
        let (proc_apic, proc2_apic) = if apicv {
            (
                PROC_USE_TPR_SHADOW,
                PROC2_APIC_REGISTER_VIRTUALIZATION | PROC2_VIRTUAL_INTERRUPT_DELIVERY,
            )
        } else {
            (PROC_CR8_LOAD_EXITING | PROC_CR8_STORE_EXITING, 0)
        };
        Ok(Self {
            // The preemption timer is the local APIC timer while in guest
            // mode, and bounds each stay there.
            pin: adjust(
                "pin-based",
                caps.pinbased,
                PIN_EXTERNAL_INTERRUPT_EXITING | PIN_NMI_EXITING | PIN_PREEMPTION_TIMER,
                PIN_VIRTUAL_NMIS,
                0,
            )?,
            proc: adjust(
                "processor-based",
                caps.procbased,
                // RDPMC would read the host's counters.
                PROC_HLT_EXITING
                    | PROC_RDPMC_EXITING
                    | PROC_USE_TSC_OFFSETTING
                    | proc_apic
                    | PROC_UNCONDITIONAL_IO_EXITING
                    | PROC_MOV_DR_EXITING
                    | PROC_MWAIT_EXITING
                    | PROC_MONITOR_EXITING
                    | PROC_ACTIVATE_SECONDARY,
                0,
                PROC_MUST_CLEAR,
            )?,
            // No "enable XSAVES/XRSTORS": they would reach supervisor state
            // with the host's IA32_XSS (the guest gets #UD; CPUID hides
            // them). WBINVD would flush every cache of the host: it exits
            // where the CPU can make it.
            proc2: adjust(
                "secondary processor-based",
                caps.procbased2,
                PROC2_ENABLE_EPT | PROC2_UNRESTRICTED_GUEST | proc2_apic,
                vpid | PROC2_ENABLE_RDTSCP | PROC2_ENABLE_INVPCID | PROC2_WBINVD_EXITING,
                0,
            )?,
            exit: adjust(
                "VM-exit",
                caps.exit,
                EXIT_HOST_ADDRESS_SPACE_SIZE | EXIT_SAVE_EFER | EXIT_LOAD_EFER,
                EXIT_SAVE_PAT | EXIT_LOAD_PAT,
                0,
            )?,
            entry: adjust(
                "VM-entry",
                caps.entry,
                ENTRY_LOAD_EFER,
                ENTRY_LOAD_PAT,
                ENTRY_IA32E_MODE_GUEST,
            )?,
            apicv,
        })
    }

    /// Whether NMI blocking is virtual, so NMI-window exiting exists.
    pub(crate) fn uses_virtual_nmis(&self) -> bool {
        self.pin & PIN_VIRTUAL_NMIS != 0
    }

    pub(crate) fn uses_vpid(&self) -> bool {
        self.proc2 & PROC2_ENABLE_VPID != 0
    }
}

/// Which of a vCPU's APIC accesses the processor virtualizes, with APIC
/// virtualization: it follows the APIC's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApicVirtualization {
    /// Through the xAPIC page at the default base.
    Xapic,
    /// Through the x2APIC MSRs (the VM's MSR bitmap passes them).
    X2apic,
    /// None: the APIC is disabled or its page moved; every access exits.
    Off,
}

impl ApicVirtualization {
    /// The processor-based controls (primary, secondary) for this mode.
    /// Without the MSR bitmap every RDMSR/WRMSR exits, as an x2APIC MSR
    /// access must while the APIC is not in x2APIC mode.
    pub(crate) fn controls(self, proc: u32, proc2: u32) -> (u32, u32) {
        let mode2 = PROC2_VIRTUALIZE_APIC_ACCESSES | PROC2_VIRTUALIZE_X2APIC_MODE;
        let (proc, proc2) = (proc & !PROC_USE_MSR_BITMAPS, proc2 & !mode2);
        match self {
            Self::Xapic => (proc, proc2 | PROC2_VIRTUALIZE_APIC_ACCESSES),
            Self::X2apic => (
                proc | PROC_USE_MSR_BITMAPS,
                proc2 | PROC2_VIRTUALIZE_X2APIC_MODE,
            ),
            Self::Off => (proc, proc2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjust_sets_required_optional_and_forced_bits() {
        // must-be-1 = 0x16, may-be-1 = 0xff
        let cap = 0x0000_00ff_0000_0016;
        assert_eq!(adjust("w", cap, 0x1, 0x100 | 0x8, 0), Ok(0x1 | 0x8 | 0x16));
    }

    #[test]
    fn adjust_names_missing_required_bits() {
        let cap = 0x0000_00ff_0000_0000;
        assert_eq!(
            adjust("w", cap, 0x300, 0, 0),
            Err(Unsupported {
                word: "w",
                bits: 0x300
            })
        );
    }

    #[test]
    fn adjust_refuses_bits_it_cannot_clear() {
        let cap = 0x0000_ffff_0000_8000;
        assert_eq!(
            adjust("w", cap, 0, 0, 0x8000),
            Err(Unsupported {
                word: "w",
                bits: 0x8000
            })
        );
        assert_eq!(adjust("w", 0x0000_ffff_0000_0000, 0, 0x8000, 0x8000), Ok(0));
    }

    #[test]
    fn bochs_skylake_x_controls() {
        let caps = VmxCaps {
            basic: 0x00d8_1000_0000_002b,
            pinbased: 0x0000_00ff_0000_0016,
            procbased: 0xfff9_fffe_0400_6172,
            procbased2: 0x0257_7fff_0000_0000,
            exit: 0x407f_ffff_0003_6dfb,
            entry: 0x0000_ffff_0000_11fb,
            ..VmxCaps::default()
        };
        let c = Controls::new(&caps, false).expect("Bochs offers everything rvmx needs");
        assert_eq!(
            c.pin & (PIN_EXTERNAL_INTERRUPT_EXITING | PIN_NMI_EXITING),
            0x9
        );
        assert_ne!(c.pin & PIN_PREEMPTION_TIMER, 0);
        assert!(c.uses_virtual_nmis());
        assert_eq!(
            c.proc & (PROC_CR8_LOAD_EXITING | PROC_CR8_STORE_EXITING),
            PROC_CR8_LOAD_EXITING | PROC_CR8_STORE_EXITING,
            "CR8 would reach the host's TPR"
        );
        assert_eq!(c.proc & PROC_INTERRUPT_WINDOW_EXITING, 0);
        assert_ne!(c.proc & PROC_RDPMC_EXITING, 0);
        assert_ne!(c.proc2 & PROC2_WBINVD_EXITING, 0);
        assert_eq!(c.proc2 & (1 << 20), 0, "XSAVES enabled with the host's XSS");
        assert_eq!(c.proc & PROC_MUST_CLEAR, 0);
        assert_ne!(c.proc & PROC_ACTIVATE_SECONDARY, 0);
        assert!(c.uses_vpid());
        assert_eq!(c.entry & ENTRY_IA32E_MODE_GUEST, 0);
        assert_ne!(c.exit & EXIT_LOAD_EFER, 0);
        assert!(!c.apicv);

        let v = Controls::new(&caps, true).expect("Bochs has APIC virtualization");
        assert!(v.apicv);
        assert_eq!(
            v.proc & (PROC_CR8_LOAD_EXITING | PROC_CR8_STORE_EXITING | PROC_USE_TPR_SHADOW),
            PROC_USE_TPR_SHADOW,
            "CR8 through the TPR shadow"
        );
        let both = PROC2_APIC_REGISTER_VIRTUALIZATION | PROC2_VIRTUAL_INTERRUPT_DELIVERY;
        assert_eq!(v.proc2 & both, both);
        // A CPU without virtual-interrupt delivery: none of it.
        let older = VmxCaps {
            procbased2: caps.procbased2 & !(u64::from(PROC2_VIRTUAL_INTERRUPT_DELIVERY) << 32),
            ..caps
        };
        assert_eq!(Controls::new(&older, true), Controls::new(&older, false));
    }

    #[test]
    fn apic_access_controls_follow_the_mode() {
        let (p, p2) = ApicVirtualization::X2apic.controls(0x10, 0x2);
        assert_eq!(p, 0x10 | PROC_USE_MSR_BITMAPS);
        assert_eq!(p2, 0x2 | PROC2_VIRTUALIZE_X2APIC_MODE);
        let (p, p2) = ApicVirtualization::Xapic.controls(p, p2);
        assert_eq!((p, p2), (0x10, 0x2 | PROC2_VIRTUALIZE_APIC_ACCESSES));
        assert_eq!(ApicVirtualization::Off.controls(p, p2), (0x10, 0x2));
    }
}
