// SPDX-License-Identifier: GPL-2.0

//! The statistics rvmx keeps: one table per object (vCPU, VM) that names
//! each counter, with its unit and kind, and the layout of the binary
//! statistics file (KVM's `KVM_GET_STATS_FD` format) built from it. The
//! counters' storage (`super`) and the file's descriptors both come from
//! these tables, so they cannot drift apart.
//!
//! Pure logic: also compiled into the host unit tests.

/// How a value changes (the descriptor's type bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only grows: a count of events, or time spent.
    Cumulative,
    /// Goes up and down: a current amount.
    Instant,
}

/// What a value counts (the descriptor's unit bits and exponent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Events.
    None,
    /// Nanoseconds (seconds, base 10, exponent -9).
    Nanoseconds,
}

/// One counter: its name in the stats file, kind and unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) unit: Unit,
}

impl Desc {
    const fn events(name: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Cumulative,
            unit: Unit::None,
        }
    }

    /// The descriptor's `flags` and `exponent` (`RVMX_STATS_*` values,
    /// which are KVM's).
    pub(crate) fn flags_exponent(&self) -> (u32, i16) {
        let kind = match self.kind {
            Kind::Cumulative => TYPE_CUMULATIVE,
            Kind::Instant => TYPE_INSTANT,
        };
        match self.unit {
            Unit::None => (kind | UNIT_NONE | BASE_POW10, 0),
            Unit::Nanoseconds => (kind | UNIT_SECONDS | BASE_POW10, -9),
        }
    }
}

// The flag values of `uapi/rvmx.h` (KVM's); the kernel side checks that
// they agree with the generated bindings.
pub(crate) const TYPE_CUMULATIVE: u32 = 0;
pub(crate) const TYPE_INSTANT: u32 = 1;
pub(crate) const UNIT_NONE: u32 = 0;
pub(crate) const UNIT_SECONDS: u32 = 2 << 4;
pub(crate) const BASE_POW10: u32 = 0;

/// Defines an enum of counters and the table describing them, in the same
/// order: a counter's discriminant is its index in the table and in the
/// data block.
macro_rules! counters {
    ($(#[$doc:meta])* enum $e:ident, table $table:ident {
        $($(#[$m:meta])* $v:ident = ($name:literal, $kind:ident, $unit:ident),)*
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub(crate) enum $e {
            $($(#[$m])* $v,)*
        }

        pub(crate) const $table: &[Desc] = &[
            $(Desc { name: $name, kind: Kind::$kind, unit: Unit::$unit },)*
        ];
    };
}

counters! {
    /// A vCPU's counters, written only by the vCPU's own thread (but
    /// `IpiReceived`, which senders count). The per-exit-reason counters
    /// follow them (`EXIT_REASONS`).
    enum Vcpu, table VCPU {
        /// VM exits, of every reason (failed entries included).
        Exits = ("exits", Cumulative, None),
        /// Exits handled in the kernel without leaving the VMX window.
        ExitsInWindow = ("exits_in_window", Cumulative, None),
        /// Exits that ended the window for the host: an interrupt or NMI,
        /// HLT, the window's time was up.
        ExitsToHost = ("exits_to_host", Cumulative, None),
        /// Exits finished after the window (MMIO and string I/O emulation);
        /// each then resumes the guest or goes to user space.
        ExitsAfterWindow = ("exits_after_window", Cumulative, None),
        /// `RVMX_RUN` returned an exit to user space (`io_exits` and the
        /// ones after it say which).
        ExitsToUser = ("exits_to_user", Cumulative, None),
        /// `RVMX_RUN` returned EINTR (a signal or `immediate_exit`).
        SignalExits = ("signal_exits", Cumulative, None),
        /// VMX windows opened (VMXON .. VMXOFF), each costing VMXON,
        /// VMPTRLD, VMLAUNCH, VMCLEAR and VMXOFF.
        VmxWindows = ("vmx_windows", Cumulative, None),
        /// Events injected at VM entry, by kind: an external interrupt from
        /// the local APIC, an NMI, an exception an exit handler raised, and
        /// an event an exit interrupted in its delivery, delivered again.
        IrqInjections = ("irq_injections", Cumulative, None),
        NmiInjections = ("nmi_injections", Cumulative, None),
        InjectException = ("inject_exception", Cumulative, None),
        InjectReinjected = ("inject_reinjected", Cumulative, None),
        /// With APIC virtualization: interrupts rvmx requested that the
        /// processor delivered itself (virtual-interrupt delivery), seen at
        /// the next exit. Self-IPIs the processor both virtualized and
        /// delivered between two exits are not seen.
        IrqVirtualDeliveries = ("irq_virtual_deliveries", Cumulative, None),
        /// HLTs that halted the vCPU (not those an event ended at once).
        Halts = ("halts", Cumulative, None),
        /// Halts ended while the vCPU polled, before it slept.
        HaltSuccessfulPoll = ("halt_successful_poll", Cumulative, None),
        /// Times a halted (or SIPI-waiting) vCPU went to sleep.
        HaltSleeps = ("halt_sleeps", Cumulative, None),
        /// Time spent halted or waiting for SIPI in `RVMX_RUN`, polling
        /// included.
        HaltNs = ("halt_ns", Cumulative, Nanoseconds),
        /// Local APIC timer expiries.
        TimerExpiries = ("timer_expiries", Cumulative, None),
        /// Interrupt messages the guest sent through its ICR (IPIs, INIT,
        /// SIPI); self-IPIs stay in the local APIC and do not count.
        IpiSent = ("ipi_sent", Cumulative, None),
        /// Interrupt messages other vCPUs posted to this one.
        IpiReceived = ("ipi_received", Cumulative, None),
        /// Exits to user space by kind: port I/O, MMIO, VMCALL, RDMSR or
        /// WRMSR, the EOI of a level-triggered interrupt, anything else
        /// (KVM's names where KVM counts the same).
        IoExits = ("io_exits", Cumulative, None),
        MmioExits = ("mmio_exits", Cumulative, None),
        UserHypercall = ("user_hypercall", Cumulative, None),
        UserMsr = ("user_msr", Cumulative, None),
        UserIoapicEoi = ("user_ioapic_eoi", Cumulative, None),
        UserOther = ("user_other", Cumulative, None),
        /// Exits whose basic reason is past `EXIT_REASONS`.
        ExitOther = ("exit_other", Cumulative, None),
    }
}

counters! {
    /// A VM's own counters, for events that belong to no vCPU; its stats
    /// file has these, then every vCPU counter summed over the vCPUs.
    enum Vm, table VM {
        /// `RVMX_SIGNAL_MSI` calls.
        MsiSignalled = ("msi_signalled", Cumulative, None),
        /// Local APICs that accepted those MSIs.
        MsiAccepted = ("msi_accepted", Cumulative, None),
        /// Successful `RVMX_SET_USER_MEMORY_REGION` calls.
        MemoryRegionChanges = ("memory_region_changes", Cumulative, None),
        /// Times removed mappings made rvmx interrupt the CPUs running this
        /// VM's vCPUs (see `docs/design.md`).
        RemoteEptFlushes = ("remote_ept_flushes", Cumulative, None),
        /// vCPUs that exist now.
        Vcpus = ("vcpus", Instant, None),
    }
}

/// One counter per VMX basic exit reason (SDM Vol. 3, Appendix C), indexed
/// by its number; numbers the SDM does not define keep their number.
pub(crate) const EXIT_REASONS: [Desc; 80] = {
    const NAMES: [&str; 80] = [
        "exit_exception_nmi",
        "exit_external_interrupt",
        "exit_triple_fault",
        "exit_init",
        "exit_sipi",
        "exit_io_smi",
        "exit_other_smi",
        "exit_interrupt_window",
        "exit_nmi_window",
        "exit_task_switch",
        "exit_cpuid",
        "exit_getsec",
        "exit_hlt",
        "exit_invd",
        "exit_invlpg",
        "exit_rdpmc",
        "exit_rdtsc",
        "exit_rsm",
        "exit_vmcall",
        "exit_vmclear",
        "exit_vmlaunch",
        "exit_vmptrld",
        "exit_vmptrst",
        "exit_vmread",
        "exit_vmresume",
        "exit_vmwrite",
        "exit_vmxoff",
        "exit_vmxon",
        "exit_cr_access",
        "exit_dr_access",
        "exit_io",
        "exit_rdmsr",
        "exit_wrmsr",
        "exit_invalid_guest_state",
        "exit_msr_load_fail",
        "exit_35",
        "exit_mwait",
        "exit_monitor_trap_flag",
        "exit_38",
        "exit_monitor",
        "exit_pause",
        "exit_machine_check",
        "exit_42",
        "exit_tpr_below_threshold",
        "exit_apic_access",
        "exit_virtualized_eoi",
        "exit_gdtr_idtr",
        "exit_ldtr_tr",
        "exit_ept_violation",
        "exit_ept_misconfig",
        "exit_invept",
        "exit_rdtscp",
        "exit_preemption_timer",
        "exit_invvpid",
        "exit_wbinvd",
        "exit_xsetbv",
        "exit_apic_write",
        "exit_rdrand",
        "exit_invpcid",
        "exit_vmfunc",
        "exit_encls",
        "exit_rdseed",
        "exit_pml_full",
        "exit_xsaves",
        "exit_xrstors",
        "exit_pconfig",
        "exit_spp",
        "exit_umwait",
        "exit_tpause",
        "exit_loadiwkey",
        "exit_enclv",
        "exit_71",
        "exit_enqcmd_pasid",
        "exit_enqcmds_pasid",
        "exit_bus_lock",
        "exit_instruction_timeout",
        "exit_seamcall",
        "exit_tdcall",
        "exit_rdmsrlist",
        "exit_wrmsrlist",
    ];
    let mut d = [Desc::events(""); 80];
    let mut i = 0;
    while i < NAMES.len() {
        d[i] = Desc::events(NAMES[i]);
        i += 1;
    }
    d
};

/// Values in a vCPU's data block: its counters, then one per exit reason.
pub(crate) const VCPU_VALUES: usize = VCPU.len() + EXIT_REASONS.len();
/// Values in a VM's data block: its own, then the vCPU sums.
pub(crate) const VM_VALUES: usize = VM.len() + VCPU_VALUES;

/// The descriptors of a vCPU's stats file, in data order.
pub(crate) fn vcpu_descs() -> impl Iterator<Item = &'static Desc> {
    VCPU.iter().chain(EXIT_REASONS.iter())
}

/// The descriptors of a VM's stats file, in data order.
pub(crate) fn vm_descs() -> impl Iterator<Item = &'static Desc> {
    VM.iter().chain(vcpu_descs())
}

/// `RVMX_STATS_NAME_SIZE`: bytes of the id string and of each name.
pub(crate) const NAME_SIZE: usize = 48;
/// `struct rvmx_stats_header` and `struct rvmx_stats_desc` (without its
/// name).
pub(crate) const HEADER_SIZE: usize = 24;
pub(crate) const DESC_SIZE: usize = 16;

/// Where the blocks of a stats file with `n` one-value descriptors are:
/// header, id string, descriptors, data, adjacent and each 8-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) num_desc: usize,
    pub(crate) id_offset: usize,
    pub(crate) desc_offset: usize,
    pub(crate) data_offset: usize,
    /// The end of the data block: the file's size.
    pub(crate) end: usize,
}

impl Layout {
    pub(crate) const fn new(num_desc: usize) -> Self {
        let id_offset = HEADER_SIZE;
        let desc_offset = id_offset + NAME_SIZE;
        let data_offset = desc_offset + num_desc * (DESC_SIZE + NAME_SIZE);
        Self {
            num_desc,
            id_offset,
            desc_offset,
            data_offset,
            end: data_offset + num_desc * 8,
        }
    }
}

/// Writes `bytes` at `at` in `out`, cut at its end; `None` if `at` is past
/// it. No slice indexing, so no panic path.
fn put(out: &mut [u8], at: usize, bytes: &[u8]) -> Option<()> {
    let dst = out.get_mut(at..)?;
    for (d, s) in dst.iter_mut().zip(bytes) {
        *d = *s;
    }
    Some(())
}

/// Writes the immutable part of a stats file (everything before the data)
/// into `out`, which must be `layout.data_offset` zeroed bytes: the
/// header, `id` (cut to fit with its NUL) and one descriptor per `descs`
/// item, value i at data offset 8 * i. `None` if `out` is too small or a
/// count does not fit the header's fields.
pub(crate) fn write_prefix<'a>(
    out: &mut [u8],
    layout: &Layout,
    id: &[u8],
    descs: impl Iterator<Item = &'a Desc>,
) -> Option<()> {
    if out.len() < layout.data_offset {
        return None;
    }
    let field = |v: usize| u32::try_from(v).ok().map(u32::to_ne_bytes);
    let mut header = [0u8; HEADER_SIZE];
    let fields = [
        field(0)?,
        field(NAME_SIZE)?,
        field(layout.num_desc)?,
        field(layout.id_offset)?,
        field(layout.desc_offset)?,
        field(layout.data_offset)?,
    ];
    for (i, f) in fields.iter().enumerate() {
        put(&mut header, i * 4, f)?;
    }
    put(out, 0, &header)?;
    let id = id.get(..id.len().min(NAME_SIZE - 1)).unwrap_or(&[]);
    put(out, layout.id_offset, id)?;
    let mut n = 0;
    for (i, d) in descs.enumerate() {
        let at = layout.desc_offset + i * (DESC_SIZE + NAME_SIZE);
        let (flags, exponent) = d.flags_exponent();
        put(out, at, &flags.to_ne_bytes())?;
        put(out, at + 4, &exponent.to_ne_bytes())?;
        put(out, at + 6, &1u16.to_ne_bytes())?;
        put(out, at + 8, &field(i * 8)?)?;
        // bucket_size stays 0: no histograms.
        let name = d.name.as_bytes();
        put(
            out,
            at + DESC_SIZE,
            name.get(..name.len().min(NAME_SIZE - 1))?,
        )?;
        n += 1;
    }
    (n == layout.num_desc).then_some(())
}

/// Copies the part of a block starting at file offset `base` that a read
/// of `[pos, pos + len)` covers into `sink`; returns the bytes copied.
pub(crate) fn copy_overlap<E>(
    block: &[u8],
    base: usize,
    pos: usize,
    len: usize,
    sink: impl FnOnce(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    let start = pos.max(base);
    let end = pos
        .saturating_add(len)
        .min(base.saturating_add(block.len()));
    if start >= end {
        return Ok(0);
    }
    match block.get(start - base..end - base) {
        Some(part) => sink(part).map(|()| part.len()),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn names_are_unique_short_and_exit_reasons_indexed_by_number() {
        let names: Vec<&str> = vm_descs().map(|d| d.name).collect();
        assert_eq!(names.len(), VM_VALUES);
        for (i, n) in names.iter().enumerate() {
            assert!(!n.is_empty() && n.len() < NAME_SIZE, "{n}");
            assert!(n
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
            assert!(!names[..i].contains(n), "{n} twice");
        }
        assert_eq!(EXIT_REASONS[10].name, "exit_cpuid");
        assert_eq!(EXIT_REASONS[30].name, "exit_io");
        assert_eq!(EXIT_REASONS[48].name, "exit_ept_violation");
        assert_eq!(EXIT_REASONS[52].name, "exit_preemption_timer");
        assert_eq!(EXIT_REASONS[79].name, "exit_wrmsrlist");
        assert_eq!(VCPU[Vcpu::Exits as usize].name, "exits");
        assert_eq!(VCPU[Vcpu::ExitOther as usize].name, "exit_other");
        assert_eq!(VM[Vm::Vcpus as usize].kind, Kind::Instant);
        assert_eq!(VCPU[Vcpu::HaltNs as usize].unit, Unit::Nanoseconds);
    }

    #[test]
    fn every_counter_is_documented() {
        // docs/api.md names each vCPU and VM counter in its tables (the
        // per-exit-reason ones by their pattern).
        let doc = include_str!("../../docs/api.md");
        for d in VCPU.iter().chain(VM) {
            assert!(
                doc.contains(&format!("`{}`", d.name)),
                "{} is not in docs/api.md",
                d.name
            );
        }
    }

    #[test]
    fn prefix_has_kvm_layout() {
        let layout = Layout::new(VCPU_VALUES);
        assert_eq!(layout.id_offset, 24);
        assert_eq!(layout.desc_offset, 72);
        assert_eq!(layout.data_offset, 72 + 64 * VCPU_VALUES);
        for off in [layout.id_offset, layout.desc_offset, layout.data_offset] {
            assert_eq!(off % 8, 0);
        }
        let mut out = vec![0u8; layout.data_offset];
        write_prefix(&mut out, &layout, b"rvmx-42/vcpu-1", vcpu_descs()).unwrap();
        assert_eq!(u32_at(&out, 0), 0);
        assert_eq!(u32_at(&out, 4), 48);
        assert_eq!(u32_at(&out, 8) as usize, VCPU_VALUES);
        assert_eq!(u32_at(&out, 20) as usize, layout.data_offset);
        assert_eq!(&out[24..39], b"rvmx-42/vcpu-1\0");
        // The halt_ns descriptor: cumulative seconds, 10^-9, one value.
        let i = Vcpu::HaltNs as usize;
        let at = 72 + 64 * i;
        assert_eq!(
            u32_at(&out, at),
            TYPE_CUMULATIVE | UNIT_SECONDS | BASE_POW10
        );
        assert_eq!(i16::from_ne_bytes([out[at + 4], out[at + 5]]), -9);
        assert_eq!(u16::from_ne_bytes([out[at + 6], out[at + 7]]), 1);
        assert_eq!(u32_at(&out, at + 8) as usize, i * 8);
        assert_eq!(&out[at + 16..at + 24], b"halt_ns\0");
        // Too small a buffer, or the wrong number of descriptors: refused.
        assert!(write_prefix(&mut out[..100], &layout, b"x", vcpu_descs()).is_none());
        assert!(write_prefix(&mut out, &layout, b"x", VCPU.iter()).is_none());
    }

    #[test]
    fn long_ids_are_cut_with_their_nul() {
        let layout = Layout::new(VM_VALUES);
        let mut out = vec![0u8; layout.data_offset];
        write_prefix(&mut out, &layout, &[b'a'; 100], vm_descs()).unwrap();
        assert_eq!(out[24 + 46], b'a');
        assert_eq!(out[24 + 47], 0);
    }

    #[test]
    fn reads_copy_only_the_overlap() {
        let block = [1u8, 2, 3, 4];
        let got = |pos, len| {
            let mut v = Vec::new();
            let n = copy_overlap(&block, 10, pos, len, |b| {
                v.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(n, v.len());
            v
        };
        assert_eq!(got(0, 10), Vec::<u8>::new());
        assert_eq!(got(0, 12), vec![1, 2]);
        assert_eq!(got(11, 2), vec![2, 3]);
        assert_eq!(got(12, 100), vec![3, 4]);
        assert_eq!(got(14, 100), Vec::<u8>::new());
        assert_eq!(got(usize::MAX, 5), Vec::<u8>::new());
    }
}
