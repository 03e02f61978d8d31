// SPDX-License-Identifier: GPL-2.0

//! A vCPU: its VMCS, registers and run area, the ioctls of a vCPU fd, and
//! the run loop.
//!
//! The run loop enters the guest inside a VMX window (see `vmx::root`):
//! interrupts off, VMXON (or VMPTRST inside another hypervisor's VMX
//! operation), VMPTRLD, host state, guest MSRs and FPU, then
//! VMLAUNCH/VMRESUME until an exit that needs the host (an interrupt, user
//! space, a reschedule); then VMCLEAR, VMXOFF (or VMPTRLD of the other
//! hypervisor's VMCS) and interrupts on. Exits rvmx
//! handles in the kernel (CPUID, CR and MSR accesses, ...) resume without
//! leaving the window. Since the VMCS is cleared at every window exit, the
//! vCPU thread may run the next window on any CPU.

pub(crate) mod apicv;
mod cpuid;
mod cr;
pub(crate) mod entry;
mod fpu;
mod halt;
mod host;
mod irq_state;
pub(crate) mod mailbox;
mod msrs;
pub(crate) mod regs;
mod reset;
mod run_area;
mod state;

use kernel::{
    cpu, current,
    mm::virt::VmaNew,
    new_mutex,
    prelude::*,
    sync::{aref::ARef, atomic::Acquire, Arc, ArcBorrow, Mutex},
    task::Task,
};

use crate::{
    anon_file::AnonFile,
    exit::{
        self,
        mmio::{self, Emulated},
        Action,
    },
    ioctl,
    irq::{self, IrqsOff},
    lapic::Lapic,
    phys::PageBuf,
    stats::{self, VcpuStats, M, V},
    uapi,
    vm::Vm,
    vmx::{
        current::CurrentVmcs,
        instr,
        root::{RootError, RootWindow},
        vmcs::Field32Ro,
    },
};

pub(crate) use cpuid::get_supported as get_supported_cpuid;
pub(crate) use cr::{guest_cr0, guest_cr4, write_cr0, write_cr4, write_efer, EFER_LMA};
pub(crate) use host::SWITCHED_MSRS;
pub(crate) use run_area::{RunArea, DATA_SIZE as RUN_DATA_SIZE};
pub(crate) use state::EFER_VALID;

use entry::Event;
use fpu::{GuestFpu, KernelFpu};
use host::SavedHost;
use mailbox::Mailbox;
use regs::{rvmx_vmenter, GuestRegs};

pub(crate) const RUN_AREA_SIZE: usize = run_area::SIZE;

const VCPU_IOCTLS: [u32; 15] = [
    uapi::RVMX_GET_VCPU_STATS_FD,
    uapi::RVMX_GET_MSRS,
    uapi::RVMX_SET_MSRS,
    uapi::RVMX_SET_CPUID,
    uapi::RVMX_RUN,
    uapi::RVMX_GET_REGS,
    uapi::RVMX_SET_REGS,
    uapi::RVMX_GET_SREGS,
    uapi::RVMX_SET_SREGS,
    uapi::RVMX_GET_LAPIC,
    uapi::RVMX_SET_LAPIC,
    uapi::RVMX_GET_VCPU_EVENTS,
    uapi::RVMX_SET_VCPU_EVENTS,
    uapi::RVMX_GET_MP_STATE,
    uapi::RVMX_SET_MP_STATE,
];

/// What a completed exit left for the next `RVMX_RUN` to finish.
#[derive(Clone, Copy, Default)]
pub(crate) enum Pending {
    #[default]
    None,
    /// IN: the VMM put `size` bytes at the data offset; they go to RAX.
    PortIn { size: u8 },
    /// INS: the VMM put `count` elements at the data offset; they go to
    /// guest memory.
    PortInString {
        io: crate::exit::io::StringIo,
        count: u64,
    },
    /// MMIO read: the VMM put `size` bytes in `mmio.data`; they go to
    /// `dest` as the instruction says.
    MmioRead {
        size: u8,
        dest: crate::exit::decode::Reg,
        dest_bytes: u8,
    },
    /// VMCALL: the VMM's `hypercall.ret` goes to RAX.
    Hypercall,
    /// RDMSR/WRMSR of an MSR rvmx does not virtualize, handled by the VMM.
    UserMsr { write: bool, insn_len: u64 },
}

/// Whether the vCPU runs, as KVM's `mp_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MpState {
    Runnable,
    /// After HLT, until an event wakes it.
    Halted,
    /// An application processor after INIT (or creation), until a SIPI.
    WaitForSipi,
}

/// An exit for user space that the pre-entry step reports once the
/// instruction that caused it is complete.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UserExit {
    /// `RVMX_EXIT_IOAPIC_EOI` of this vector.
    IoapicEoi(u8),
}

/// Everything about the guest that is not in the VMCS.
pub(crate) struct Guest {
    pub(crate) regs: GuestRegs,
    /// Values of `SWITCHED_MSRS`.
    pub(crate) msrs: [u64; SWITCHED_MSRS.len()],
    /// DR0-DR3, DR6 and DR7: MOV DR exits, and rvmx keeps the guest's
    /// debug registers here, away from the host's.
    pub(crate) dr: [u64; 8],
    pub(crate) fpu: GuestFpu,
    pub(crate) cpuid: cpuid::CpuidTable,
    pub(crate) lapic: Lapic,
    /// The virtual-APIC page, where the VM uses APIC virtualization.
    pub(crate) vapic: Option<apicv::VirtualApicPage>,
    pub(crate) mp: MpState,
    /// RFLAGS.IF at the HLT that halted the vCPU: what may wake it.
    pub(crate) halted_with_if: bool,
    /// The exit user space handles, to finish at the next `RVMX_RUN`.
    pub(crate) pending: Pending,
    /// An exit for user space the next pre-entry step reports.
    pub(crate) user_exit: Option<UserExit>,
    /// Bytes RIP moves on at the next entry, past an emulated instruction.
    pub(crate) rip_advance: u64,
    /// An exception an exit handler raised, for the next entry.
    pub(crate) exception: Option<Event>,
    /// The event an exit interrupted in delivery, delivered again first.
    pub(crate) reinject: Option<Event>,
    /// An NMI posted and not yet injected.
    pub(crate) nmi_pending: bool,
    /// INIT arrived: the VMCS returns to its reset state at the next entry.
    pub(crate) reset_pending: bool,
    /// A SIPI's vector, where the next entry starts.
    pub(crate) sipi: Option<u8>,
    /// The processor-based controls as the VMCS has them (window exits,
    /// MSR bitmap), and the secondary ones (APIC access virtualization).
    pub(crate) proc: u32,
    pub(crate) proc2: u32,
    /// Guest TSC = host TSC + this (wrapping): the VM's, so its vCPUs agree.
    pub(crate) tsc_offset: u64,
    pub(crate) mtrr_def_type: u64,
}

impl Guest {
    /// The guest's TSC now.
    pub(crate) fn tsc(&self) -> u64 {
        instr::rdtsc().wrapping_add(self.tsc_offset)
    }

    /// Raises exception `e` at the next entry (instead of moving RIP on).
    pub(crate) fn raise(&mut self, e: Event) {
        self.exception = Some(e);
    }

    /// INIT: the processor waits for a SIPI with its state reset (the local
    /// APIC keeps its id and base).
    pub(crate) fn init(&mut self) {
        self.lapic.init();
        self.mp = MpState::WaitForSipi;
        self.reset_pending = true;
        self.pending = Pending::None;
        self.user_exit = None;
        self.rip_advance = 0;
        self.exception = None;
        self.reinject = None;
        self.nmi_pending = false;
        self.sipi = None;
        self.regs = GuestRegs::default();
        self.regs.gpr[regs::RDX] = 0x600;
    }
}

struct State {
    vmcs: KBox<PageBuf>,
    initialized: bool,
    /// The CPU of the last window, and the VM's EPT generation then.
    last_cpu: Option<u32>,
    ept_generation: u64,
    guest: Guest,
}

#[pin_data(PinnedDrop)]
pub(crate) struct Vcpu {
    pub(crate) vm: Arc<Vm>,
    pub(crate) id: u32,
    pub(crate) vpid: u16,
    /// The physical address of the virtual-APIC page (`Guest::vapic`).
    pub(crate) vapic_phys: Option<u64>,
    pub(crate) run: RunArea,
    /// Counters (`stats`): written by the thread in `RVMX_RUN`, read anywhere.
    pub(crate) stats: Arc<VcpuStats>,
    /// Serializes the vCPU's ioctls (a RUN holds it while in the guest).
    #[pin]
    state: Mutex<State>,
}

/// How a window ended.
enum Left {
    /// For the host (interrupt, NMI): enter again.
    Again,
    /// The exit is in the run area for user space.
    ToUser,
    /// An MMIO access to emulate, with interrupts on.
    Mmio(mmio::Fault),
    /// An INS/OUTS to emulate, with interrupts on.
    StringIo(exit::io::StringIo),
}

impl Vcpu {
    pub(crate) fn create(vm: Arc<Vm>, id: u32) -> Result<Arc<Self>> {
        let stats = vm.stats.vcpu(id).ok_or(EINVAL)?.clone();
        let vpid = if vm.controls.uses_vpid() {
            vm.host.vpids.alloc().ok_or(ENOSPC)?
        } else {
            0
        };
        let fpu = GuestFpu::new();
        let vmcs = PageBuf::vmx_region(vm.host.caps.vmcs_revision());
        let run = RunArea::new();
        let vapic = vm
            .apic_pages
            .as_ref()
            .map(|_| apicv::VirtualApicPage::new())
            .transpose();
        let (fpu, vmcs, run, vapic) = match (fpu, vmcs, run, vapic) {
            (Ok(f), Ok(v), Ok(r), Ok(a)) => (f, v, r, a),
            (f, v, r, a) => {
                vm.host.vpids.free(vpid);
                return Err(f
                    .err()
                    .or(v.err())
                    .or(r.err())
                    .or(a.err())
                    .unwrap_or(ENOMEM));
            }
        };
        let vapic_phys = vapic.as_ref().map(|p| p.phys());
        let mut regs = GuestRegs::default();
        // EDX after reset: the processor signature (family 6).
        regs.gpr[regs::RDX] = 0x600;
        let guest = Guest {
            regs,
            msrs: [0; SWITCHED_MSRS.len()],
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            fpu,
            cpuid: cpuid::CpuidTable::new(),
            lapic: Lapic::new(id),
            vapic,
            // vCPU 0 is the bootstrap processor; the others wait for SIPI.
            mp: if id == 0 {
                MpState::Runnable
            } else {
                MpState::WaitForSipi
            },
            halted_with_if: false,
            pending: Pending::None,
            user_exit: None,
            rip_advance: 0,
            exception: None,
            reinject: None,
            nmi_pending: false,
            reset_pending: false,
            sipi: None,
            proc: vm.controls.proc,
            proc2: vm.controls.proc2,
            tsc_offset: vm.tsc_offset,
            mtrr_def_type: 0,
        };
        let state = State {
            vmcs,
            initialized: false,
            last_cpu: None,
            ept_generation: 0,
            guest,
        };
        // If the allocation fails, `PinnedDrop` never runs: free the VPID here.
        let host = vm.host.clone();
        Arc::pin_init(
            try_pin_init!(Self { vm, id, vpid, vapic_phys, run, stats, state <- new_mutex!(state) }),
            GFP_KERNEL_ACCOUNT,
        )
        .inspect(|v| v.vm.stats.add(M::Vcpus, 1))
        .inspect_err(|_| host.vpids.free(vpid))
    }

    /// Runs `f` with this vCPU's VMCS current on this CPU, in a window.
    /// Used by the state ioctls, outside RUN.
    fn with_vmcs<R>(
        &self,
        st: &mut State,
        f: impl FnOnce(&Self, &CurrentVmcs<'_>, &mut Guest) -> R,
    ) -> Result<R> {
        let _irqs = IrqsOff::new();
        let window = self.open_window()?;
        let vmcs = self.load_vmcs(&window, &mut st.vmcs, &mut st.initialized)?;
        Ok(f(self, &vmcs, &mut st.guest))
    }

    /// Makes the VMCS current in `window`, programming it the first time
    /// (after a VMCLEAR, which the SDM requires before a region's first
    /// VMPTRLD: it puts the region in the clear launch state).
    fn load_vmcs<'w>(
        &self,
        window: &'w RootWindow,
        region: &'w mut PageBuf,
        initialized: &mut bool,
    ) -> Result<CurrentVmcs<'w>> {
        if !*initialized {
            CurrentVmcs::clear(window, region).map_err(|_| EIO)?;
        }
        let vmcs = CurrentVmcs::load(window, region).map_err(|_| EIO)?;
        if !*initialized {
            reset::program(self, &vmcs);
            *initialized = true;
        }
        Ok(vmcs)
    }

    /// Opens the VMX window on this CPU. Interrupts must be off (the
    /// callers hold an `IrqsOff` that outlives the window).
    fn open_window(&self) -> Result<RootWindow> {
        let cpu = cpu::CpuId::current().as_u32() as usize;
        let region = self.vm.host.region(cpu).ok_or(ENODEV)?;
        // SAFETY: interrupts are off (caller) until after the window is
        // dropped, and `region` is this CPU's, used by no other window: a
        // window only exists with interrupts off, so none can be open on
        // this CPU while we are.
        unsafe { RootWindow::open(&self.vm.host.caps, region) }.map_err(|e: RootError| e.errno())
    }

    /// This vCPU's mailbox, where other threads post events to it.
    pub(crate) fn mailbox(&self) -> &Mailbox {
        self.vm.mailbox(self.id)
    }

    fn run(&self) -> Result<isize> {
        if self.run.request_interrupt_window() {
            return Err(EINVAL);
        }
        let mut st = self.state.lock();
        let task: ARef<Task> = (&**current!()).into();
        self.mailbox().set_task(Some(task));
        let result = self.run_locked(&mut st);
        self.stats.run_returns(&result, self.run.exit_reason());
        self.mailbox().set_task(None);
        result
    }

    fn run_locked(&self, st: &mut State) -> Result<isize> {
        entry::complete_user_exit(self, &mut st.guest);
        loop {
            if self.run.immediate_exit() || current!().signal_pending() {
                self.run.set_exit(uapi::RVMX_EXIT_INTR, ());
                return Err(EINTR);
            }
            irq::cond_resched();
            if st.guest.mp != MpState::Runnable {
                let interrupts = st.guest.halted_with_if;
                // Interrupted: the check above returns to user space.
                let _ = halt::timed_wait(self, &mut st.guest, interrupts);
                continue;
            }
            match self.enter(st)? {
                Left::Again => continue,
                Left::ToUser => return Ok(0),
                Left::Mmio(fault) => match mmio::emulate(self, &mut st.guest, &fault) {
                    Emulated::Retry => continue,
                    Emulated::ToUser => return Ok(0),
                },
                Left::StringIo(io) => match exit::io::emulate_string(self, &mut st.guest, &io) {
                    Emulated::Retry => continue,
                    Emulated::ToUser => return Ok(0),
                },
            }
        }
    }

    /// One VMX window: enter the guest and stay until an exit needs the
    /// host or user space.
    fn enter(&self, st: &mut State) -> Result<Left> {
        let _fpu = KernelFpu::begin();
        let irqs = IrqsOff::new();
        let window = self.open_window()?;
        self.stats.inc(V::VmxWindows);
        let vmcs = self.load_vmcs(&window, &mut st.vmcs, &mut st.initialized)?;
        let guest = &mut st.guest;
        let host = SavedHost::save_and_program(&vmcs);

        // Cached translations to flush: another CPU ran this vCPU since (its
        // VPID-tagged entries here may be stale), or guest memory shrank.
        let cpu = cpu::CpuId::current().as_u32();
        self.mailbox().window_opens(cpu);
        let generation = self.vm.ept_generation.load(Acquire);
        // Inside another hypervisor's VMX operation the window flushes this
        // guest's tags at both ends (`RootWindow::isolate_guest`); the next
        // own window then flushes too (`last_cpu` None).
        if window.isolate_guest(self.vm.eptp, self.vpid) {
            st.last_cpu = None;
            st.ept_generation = generation;
        } else if st.last_cpu != Some(cpu) || st.ept_generation != generation {
            // SAFETY: in VMX root operation (the window); rvmx requires
            // single-context INVEPT and INVVPID support (checked at load).
            unsafe {
                instr::invept_single(self.vm.eptp);
                if self.vpid != 0 {
                    instr::invvpid_single(self.vpid);
                }
            }
            st.last_cpu = Some(cpu);
            st.ept_generation = generation;
        }

        host.load_guest_msrs(&guest.msrs);
        let host_xcr0 = guest.fpu.load();
        // The window ends by this TSC, so the host sees its interrupts,
        // signals and reschedules in time (see docs/design.md).
        let window_end = instr::rdtsc().saturating_add(self.vm.host.window_tsc);
        let mut launched = 0;
        let mut nmi = false;
        let left = loop {
            match entry::prepare(self, &vmcs, guest, window_end) {
                entry::Prepared::Enter => {}
                entry::Prepared::NotRunnable => break Left::Again,
                entry::Prepared::ToUser => break Left::ToUser,
            }
            // SAFETY: the VMCS is current and complete (`reset::program`,
            // host state above), interrupts are off, and `regs` is the
            // layout vmenter.S expects.
            let failed = unsafe { rvmx_vmenter(&mut guest.regs, launched) };
            if failed != 0 {
                let error = vmcs.read(Field32Ro::InstructionError);
                exit::report_entry_failure(self, u64::from(error) | (1 << 63), cpu);
                break Left::ToUser;
            }
            launched = 1;
            self.stats
                .add(V::IrqVirtualDeliveries, u64::from(apicv::sync(guest)));
            match self
                .stats
                .action(exit::handle(self, &vmcs, guest, window_end))
            {
                Action::Resume => continue,
                Action::Host => break Left::Again,
                Action::Nmi => {
                    nmi = true;
                    break Left::Again;
                }
                Action::User => break Left::ToUser,
                Action::Mmio(fault) => break Left::Mmio(fault),
                Action::StringIo(io) => break Left::StringIo(io),
            }
        };
        entry::report(self, &vmcs, guest);
        guest.fpu.save(host_xcr0);
        host.restore(&mut guest.msrs);
        drop(vmcs);
        drop(window);
        self.mailbox().window_closes();
        if nmi {
            // Hand the NMI the guest was interrupted by to the host's
            // handler, through the IDT (rvmx refuses FRED hosts).
            // SAFETY: vector 2 is the host's NMI handler, which runs on its
            // own stack; interrupts are still off as for a real NMI.
            unsafe { core::arch::asm!("int 2") };
        }
        drop(irqs);
        Ok(left)
    }

    fn get_regs(&self, arg: usize) -> Result<isize> {
        let mut st = self.state.lock();
        let regs = self.with_vmcs(&mut st, |_, vmcs, guest| state::get_regs(vmcs, guest))?;
        ioctl::write_arg(arg, &regs)?;
        Ok(0)
    }

    fn set_regs(&self, arg: usize) -> Result<isize> {
        let regs: uapi::rvmx_regs = ioctl::read_arg(arg)?;
        let mut st = self.state.lock();
        self.with_vmcs(&mut st, |_, vmcs, guest| {
            state::set_regs(vmcs, guest, &regs)
        })?;
        Ok(0)
    }

    fn get_sregs(&self, arg: usize) -> Result<isize> {
        let mut st = self.state.lock();
        let sregs = self.with_vmcs(&mut st, |_, vmcs, guest| state::get_sregs(vmcs, guest))?;
        ioctl::write_arg(arg, &sregs)?;
        Ok(0)
    }

    fn set_sregs(&self, arg: usize) -> Result<isize> {
        let sregs: uapi::rvmx_sregs = ioctl::read_arg(arg)?;
        let mut st = self.state.lock();
        self.with_vmcs(&mut st, |vcpu, vmcs, guest| {
            state::set_sregs(vcpu, vmcs, guest, &sregs)
        })??;
        Ok(0)
    }
}

#[pinned_drop]
impl PinnedDrop for Vcpu {
    fn drop(self: Pin<&mut Self>) {
        self.vm.host.vpids.free(self.vpid);
        self.vm.stats.sub(M::Vcpus, 1);
        self.mailbox().set_present(false);
        self.vm.release_vcpu_id(self.id);
    }
}

#[vtable]
impl AnonFile for Vcpu {
    const NAME: &'static CStr = c"rvmx-vcpu";

    fn ioctl(this: ArcBorrow<'_, Self>, cmd: u32, arg: usize) -> Result<isize> {
        this.vm.check_owner()?;
        match cmd {
            uapi::RVMX_RUN if arg != 0 => Err(EINVAL),
            uapi::RVMX_RUN => this.run(),
            uapi::RVMX_GET_REGS => this.get_regs(arg),
            uapi::RVMX_SET_REGS => this.set_regs(arg),
            uapi::RVMX_GET_SREGS => this.get_sregs(arg),
            uapi::RVMX_SET_SREGS => this.set_sregs(arg),
            uapi::RVMX_GET_MSRS => this.get_msrs(arg),
            uapi::RVMX_SET_MSRS => this.set_msrs(arg),
            uapi::RVMX_SET_CPUID => this.state.lock().guest.cpuid.set(arg).map(|()| 0),
            uapi::RVMX_GET_LAPIC => this.get_lapic(arg),
            uapi::RVMX_SET_LAPIC => this.set_lapic(arg),
            uapi::RVMX_GET_VCPU_EVENTS => this.get_vcpu_events(arg),
            uapi::RVMX_SET_VCPU_EVENTS => this.set_vcpu_events(arg),
            uapi::RVMX_GET_MP_STATE => this.get_mp_state(arg),
            uapi::RVMX_SET_MP_STATE => this.set_mp_state(arg),
            uapi::RVMX_GET_VCPU_STATS_FD => stats::vcpu_fd(&this.stats, this.id, arg),
            _ => Err(ioctl::unknown(cmd, &VCPU_IOCTLS)),
        }
    }

    /// Maps the run area: one page at offset 0, shared.
    fn mmap(this: ArcBorrow<'_, Self>, vma: &VmaNew) -> Result {
        this.vm.check_owner()?;
        // SAFETY: the VMA is being set up by this mmap call, so reading its
        // page offset does not race with a change of it.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        if vma.end() - vma.start() != RUN_AREA_SIZE || pgoff != 0 {
            return Err(EINVAL);
        }
        vma.try_clear_mayexec()?;
        vma.set_dontcopy();
        vma.set_dontexpand();
        vma.set_mixedmap()
            .vm_insert_page(vma.start(), this.run.page())
    }
}
