/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * rvmx userspace ABI: ioctls on /dev/rvmx.
 *
 * This header is the single source of truth. The kernel module and the `uapi`
 * Rust crate are generated from it by bindgen (scripts/gen-uapi); both sides
 * assert the sizes and offsets below. docs/api.md documents every ioctl.
 */
#ifndef _UAPI_RVMX_H
#define _UAPI_RVMX_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* Bumped on every incompatible change; RVMX_GET_API_VERSION returns it. */
#define RVMX_API_VERSION 2

/* rvmx's own ioctl magic (KVM uses 0xAE). */
#define RVMXIO 0xAF

/* struct rvmx_vmx_caps.flags */
/* rvmx's own VMXON and VMXOFF succeeded on every online CPU during this call. */
#define RVMX_CAP_VMX_USABLE		(1u << 0)
/*
 * Some CPU has CR4.VMXE set but is not in VMX operation (VMPTRST faults):
 * rvmx can run there neither with its own VMXON nor inside another
 * hypervisor, and VM work gets EBUSY. (A hypervisor in VMX root operation,
 * such as kvm_intel, gives RVMX_CAP_VMX_SHARED instead; rvmx before that
 * flag reported kvm_intel as BUSY.)
 */
#define RVMX_CAP_VMX_BUSY		(1u << 1)
/* The processor supports the controls rvmx relies on. */
#define RVMX_CAP_EPT			(1u << 2)
#define RVMX_CAP_VPID			(1u << 3)
#define RVMX_CAP_UNRESTRICTED_GUEST	(1u << 4)
/* IA32_VMX_BASIC[55]: the TRUE_* control MSRs were read. */
#define RVMX_CAP_TRUE_CONTROLS		(1u << 5)
/* The host delivers events with FRED (affects NMI hand-off). */
#define RVMX_CAP_HOST_FRED		(1u << 6)
/* VMs use the processor's APIC virtualization (the CPU has it and the module
 * parameter apicv is 1). */
#define RVMX_CAP_APICV			(1u << 7)
/*
 * Another hypervisor (e.g. kvm_intel) holds VMX root operation on some CPU,
 * and rvmx runs its VMs inside it there (VMPTRST/VMPTRLD, no VMXON): VM work
 * works. cpus_shared and shared_cpu_mask tell which CPUs; the others run in
 * rvmx's own VMX operation.
 */
#define RVMX_CAP_VMX_SHARED		(1u << 8)

/*
 * VMX capabilities of the host, as the processor reports them.
 *
 * Each control word holds the raw capability MSR: bits 31:0 are the
 * allowed-0 settings (a 1 there means the control must be 1), bits 63:32 the
 * allowed-1 settings (a 0 there means the control must be 0).
 */
struct rvmx_vmx_caps {
	__u32 flags;		/* RVMX_CAP_* */
	__u32 vmcs_revision;	/* IA32_VMX_BASIC[30:0] */
	__u32 vmcs_size;	/* IA32_VMX_BASIC[44:32], bytes */
	__u32 cpus_probed;	/* online CPUs on which VMXON was tried */
	__u64 basic;		/* IA32_VMX_BASIC */
	__u64 pinbased_ctls;	/* (TRUE_)PINBASED_CTLS */
	__u64 procbased_ctls;	/* (TRUE_)PROCBASED_CTLS */
	__u64 procbased_ctls2;	/* PROCBASED_CTLS2, 0 if absent */
	__u64 exit_ctls;	/* (TRUE_)EXIT_CTLS */
	__u64 entry_ctls;	/* (TRUE_)ENTRY_CTLS */
	__u64 misc;		/* IA32_VMX_MISC */
	__u64 ept_vpid_cap;	/* IA32_VMX_EPT_VPID_CAP, 0 if absent */
	__u64 cr0_fixed0;
	__u64 cr0_fixed1;
	__u64 cr4_fixed0;
	__u64 cr4_fixed1;
	__u32 cpus_shared;	/* of cpus_probed, those in another hypervisor's VMX root */
	__u32 padding;		/* zero */
	__u64 shared_cpu_mask;	/* bit n: CPU n (n < 64) is one of cpus_shared */
	__u64 reserved[6];	/* zero */
};


/* ---- VMs ---------------------------------------------------------------- */

/* Limits a VM lives within. */
#define RVMX_MAX_MEM_SLOTS	32
#define RVMX_MAX_VCPUS		8
/* Guest-physical addresses rvmx maps: 4-level EPT, 48 bits. */
#define RVMX_MAX_GPA		(1ull << 48)

/* struct rvmx_userspace_memory_region.flags */
/* Guest writes to the slot exit to userspace as MMIO writes. */
#define RVMX_MEM_READONLY	(1u << 1)

/*
 * Maps guest-physical [guest_phys_addr, +memory_size) to the caller's memory
 * at userspace_addr. memory_size 0 deletes the slot. Same layout as KVM's
 * struct kvm_userspace_memory_region.
 */
struct rvmx_userspace_memory_region {
	__u32 slot;
	__u32 flags;
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr;
};

/* ---- vCPU state: layouts as KVM's kvm_regs/kvm_segment/kvm_sregs --------- */

struct rvmx_regs {
	__u64 rax, rbx, rcx, rdx;
	__u64 rsi, rdi, rsp, rbp;
	__u64 r8, r9, r10, r11;
	__u64 r12, r13, r14, r15;
	__u64 rip, rflags;
};

struct rvmx_segment {
	__u64 base;
	__u32 limit;
	__u16 selector;
	__u8 type;
	__u8 present, dpl, db, s, l, g, avl;
	__u8 unusable;
	__u8 padding;
};

struct rvmx_dtable {
	__u64 base;
	__u16 limit;
	__u16 padding[3];
};

struct rvmx_sregs {
	struct rvmx_segment cs, ds, es, fs, gs, ss;
	struct rvmx_segment tr, ldt;
	struct rvmx_dtable gdt, idt;
	__u64 cr0, cr2, cr3, cr4, cr8;
	__u64 efer;
	__u64 apic_base;
	__u64 interrupt_bitmap[4];	/* zero: rvmx does not queue interrupts here */
};

/* ---- CPUID --------------------------------------------------------------- */

#define RVMX_MAX_CPUID_ENTRIES	256

/* struct rvmx_cpuid_entry.flags: the entry applies only to sub-leaf `index`. */
#define RVMX_CPUID_FLAG_SIGNIFICANT_INDEX	(1u << 0)

/* As KVM's struct kvm_cpuid_entry2. */
struct rvmx_cpuid_entry {
	__u32 function;
	__u32 index;
	__u32 flags;
	__u32 eax;
	__u32 ebx;
	__u32 ecx;
	__u32 edx;
	__u32 padding[3];
};

/* As KVM's struct kvm_cpuid2: nent entries follow the header. */
struct rvmx_cpuid {
	__u32 nent;
	__u32 padding;
	struct rvmx_cpuid_entry entries[];
};

/* ---- MSRs ---------------------------------------------------------------- */

#define RVMX_MAX_MSR_ENTRIES	256

/* As KVM's struct kvm_msr_entry. */
struct rvmx_msr_entry {
	__u32 index;
	__u32 reserved;
	__u64 data;
};

/* As KVM's struct kvm_msrs: nmsrs entries follow the header. */
struct rvmx_msrs {
	__u32 nmsrs;
	__u32 pad;
	struct rvmx_msr_entry entries[];
};

/* ---- Interrupt state, to save and restore a vCPU -------------------------- */

/* The local APIC's registers as the xAPIC page lays them out: 32-bit
 * values at 16-byte offsets (KVM's struct kvm_lapic_state). The ID is in
 * bits 31:24 in both modes; 0x310 holds the ICR's upper word (the x2APIC
 * destination in x2APIC mode); 0x390 is the timer's current count. */
#define RVMX_APIC_REG_SIZE	0x400
struct rvmx_lapic_state {
	char regs[RVMX_APIC_REG_SIZE];
};

/* Events that an entry would deliver, and what blocks them: KVM's struct
 * kvm_vcpu_events. rvmx has no SMM and no exception payloads: those fields,
 * flags and reserved are zero. */
struct rvmx_vcpu_events {
	struct {
		__u8 injected;		/* delivery interrupted: delivered again */
		__u8 nr;
		__u8 has_error_code;
		__u8 pending;		/* raised, not yet delivered */
		__u32 error_code;
	} exception;
	struct {
		__u8 injected;		/* an external interrupt interrupted in delivery */
		__u8 nr;
		__u8 soft;		/* zero */
		__u8 shadow;		/* RVMX_INTERRUPT_SHADOW_* */
	} interrupt;
	struct {
		__u8 injected;
		__u8 pending;
		__u8 masked;		/* blocked until the guest's IRET */
		__u8 pad;
	} nmi;
	__u32 sipi_vector;
	__u32 flags;			/* zero */
	struct {
		__u8 smm;
		__u8 pending;
		__u8 smm_inside_nmi;
		__u8 latched_init;
	} smi;				/* zero */
	struct {
		__u8 pending;
	} triple_fault;			/* zero */
	__u8 reserved[26];
	__u8 exception_has_payload;	/* zero */
	__u64 exception_payload;	/* zero */
};

/* struct rvmx_vcpu_events.interrupt.shadow */
#define RVMX_INTERRUPT_SHADOW_STI	(1u << 0)
#define RVMX_INTERRUPT_SHADOW_MOV_SS	(1u << 1)

/* struct rvmx_mp_state.mp_state, with KVM's numbers */
#define RVMX_MP_STATE_RUNNABLE		0
#define RVMX_MP_STATE_INIT_RECEIVED	2
#define RVMX_MP_STATE_HALTED		3
struct rvmx_mp_state {
	__u32 mp_state;
};

/* ---- The run area: mmap'd from the vCPU fd ------------------------------- */

/* struct rvmx_run.exit_reason (numbers as KVM's KVM_EXIT_*) */
#define RVMX_EXIT_UNKNOWN		0
#define RVMX_EXIT_IO			2
#define RVMX_EXIT_HYPERCALL		3
#define RVMX_EXIT_HLT			5
#define RVMX_EXIT_MMIO			6
#define RVMX_EXIT_SHUTDOWN		8
#define RVMX_EXIT_FAIL_ENTRY		9
#define RVMX_EXIT_INTR			10
#define RVMX_EXIT_INTERNAL_ERROR	17
#define RVMX_EXIT_X86_RDMSR		29
#define RVMX_EXIT_X86_WRMSR		30
#define RVMX_EXIT_IOAPIC_EOI		26

#define RVMX_EXIT_IO_IN		0
#define RVMX_EXIT_IO_OUT	1

/* struct rvmx_run.internal.suberror: KVM's KVM_INTERNAL_ERROR_* numbers */
/* An instruction rvmx could not emulate; data[0] is the guest RIP. */
#define RVMX_INTERNAL_ERROR_EMULATION		1
/* An exit during the delivery of an event that rvmx cannot finish (an
 * interrupt or exception whose delivery touched MMIO); data[0] is the
 * IDT-vectoring information. */
#define RVMX_INTERNAL_ERROR_DELIVERY_EV		3
/* An exit reason rvmx does not handle; data[0] is the VMX basic exit reason. */
#define RVMX_INTERNAL_ERROR_UNHANDLED_EXIT	4

/* Bytes of the run area's data section (PIO data), at RVMX_RUN_DATA_OFFSET. */
#define RVMX_RUN_DATA_OFFSET	2048
#define RVMX_RUN_DATA_SIZE	2048

struct rvmx_exit_hw {
	__u64 hardware_exit_reason;
};

struct rvmx_exit_fail_entry {
	__u64 hardware_entry_failure_reason;
	__u32 cpu;
};

struct rvmx_exit_io {
	__u8 direction;
	__u8 size;
	__u16 port;
	__u32 count;
	__u64 data_offset;
};

struct rvmx_exit_mmio {
	__u64 phys_addr;
	__u8 data[8];
	__u32 len;
	__u8 is_write;
};

/* struct rvmx_exit_hypercall.flags */
/* The guest was in 64-bit mode (as KVM_EXIT_HYPERCALL_LONG_MODE). */
#define RVMX_EXIT_HYPERCALL_LONG_MODE	(1u << 0)
/* The guest was not at CPL 0: its kernel did not make the call. */
#define RVMX_EXIT_HYPERCALL_USER	(1u << 1)

struct rvmx_exit_hypercall {
	__u64 nr;
	__u64 args[6];
	__u64 ret;
	__u64 flags;	/* RVMX_EXIT_HYPERCALL_* */
};

/* RVMX_EXIT_X86_RDMSR/WRMSR: set error to 1 to raise #GP in the guest;
 * for RDMSR put the value in data. */
struct rvmx_exit_msr {
	__u8 error;
	__u8 pad[7];
	__u32 reason;	/* RVMX_MSR_EXIT_REASON_UNKNOWN */
	__u32 index;
	__u64 data;
};

/* struct rvmx_exit_msr.reason: an MSR rvmx does not virtualize. */
#define RVMX_MSR_EXIT_REASON_UNKNOWN	(1u << 1)

/* RVMX_EXIT_IOAPIC_EOI: the guest ended a level-triggered interrupt (its
 * MSI had the level trigger bit); the VMM's I/O APIC clears remote IRR and
 * re-delivers the line if it is still asserted. */
struct rvmx_exit_eoi {
	__u8 vector;
};

struct rvmx_exit_internal {
	__u32 suberror;
	__u32 ndata;
	__u64 data[16];
};

struct rvmx_run {
	/* in */
	__u8 request_interrupt_window;	/* must be 0: the local APICs are rvmx's */
	__u8 immediate_exit;
	__u8 padding1[6];

	/* out */
	__u32 exit_reason;
	__u8 ready_for_interrupt_injection;
	__u8 if_flag;
	__u16 flags;

	__u64 cr8;
	__u64 apic_base;

	union {
		/* RVMX_EXIT_UNKNOWN */
		struct rvmx_exit_hw hw;
		/* RVMX_EXIT_FAIL_ENTRY */
		struct rvmx_exit_fail_entry fail_entry;
		/* RVMX_EXIT_IO: data at data_offset from the start of the run area */
		struct rvmx_exit_io io;
		/* RVMX_EXIT_MMIO: for reads, fill data before the next RVMX_RUN */
		struct rvmx_exit_mmio mmio;
		/* RVMX_EXIT_HYPERCALL: VMCALL with nr = RAX, args = RBX, RCX, RDX, RSI,
		 * RDI, R8; ret is written back to RAX on the next RVMX_RUN */
		struct rvmx_exit_hypercall hypercall;
		/* RVMX_EXIT_INTERNAL_ERROR */
		struct rvmx_exit_internal internal;
		/* RVMX_EXIT_X86_RDMSR, RVMX_EXIT_X86_WRMSR */
		struct rvmx_exit_msr msr;
		/* RVMX_EXIT_IOAPIC_EOI */
		struct rvmx_exit_eoi eoi;
		char padding[256];
	};
};

/* ---- binary statistics (RVMX_GET_VM/VCPU_STATS_FD), KVM's layout ------- */

/*
 * The file RVMX_GET_VM_STATS_FD and RVMX_GET_VCPU_STATS_FD return holds,
 * at the offsets its header gives (each a multiple of 8): the header, an
 * id string of name_size bytes, num_desc descriptors (each followed by a
 * name of name_size bytes), and the data: u64 values at data_offset +
 * desc.offset. Only the data changes; read it again with pread. Same
 * layout and flag values as KVM's struct kvm_stats_header and
 * kvm_stats_desc (KVM_GET_STATS_FD). docs/api.md lists the counters.
 */
#define RVMX_STATS_NAME_SIZE		48

struct rvmx_stats_header {
	__u32 flags;		/* zero */
	__u32 name_size;	/* RVMX_STATS_NAME_SIZE */
	__u32 num_desc;
	__u32 id_offset;
	__u32 desc_offset;
	__u32 data_offset;
};

#define RVMX_STATS_TYPE_SHIFT		0
#define RVMX_STATS_TYPE_MASK		(0xF << RVMX_STATS_TYPE_SHIFT)
#define RVMX_STATS_TYPE_CUMULATIVE	(0x0 << RVMX_STATS_TYPE_SHIFT)
#define RVMX_STATS_TYPE_INSTANT		(0x1 << RVMX_STATS_TYPE_SHIFT)
#define RVMX_STATS_TYPE_PEAK		(0x2 << RVMX_STATS_TYPE_SHIFT)
#define RVMX_STATS_TYPE_LINEAR_HIST	(0x3 << RVMX_STATS_TYPE_SHIFT)
#define RVMX_STATS_TYPE_LOG_HIST	(0x4 << RVMX_STATS_TYPE_SHIFT)

#define RVMX_STATS_UNIT_SHIFT		4
#define RVMX_STATS_UNIT_MASK		(0xF << RVMX_STATS_UNIT_SHIFT)
#define RVMX_STATS_UNIT_NONE		(0x0 << RVMX_STATS_UNIT_SHIFT)
#define RVMX_STATS_UNIT_BYTES		(0x1 << RVMX_STATS_UNIT_SHIFT)
#define RVMX_STATS_UNIT_SECONDS		(0x2 << RVMX_STATS_UNIT_SHIFT)
#define RVMX_STATS_UNIT_CYCLES		(0x3 << RVMX_STATS_UNIT_SHIFT)
#define RVMX_STATS_UNIT_BOOLEAN		(0x4 << RVMX_STATS_UNIT_SHIFT)

#define RVMX_STATS_BASE_SHIFT		8
#define RVMX_STATS_BASE_MASK		(0xF << RVMX_STATS_BASE_SHIFT)
#define RVMX_STATS_BASE_POW10		(0x0 << RVMX_STATS_BASE_SHIFT)
#define RVMX_STATS_BASE_POW2		(0x1 << RVMX_STATS_BASE_SHIFT)

/* Followed by its name, name_size bytes, NUL-terminated. */
struct rvmx_stats_desc {
	__u32 flags;		/* type | unit | base */
	__s16 exponent;		/* unit scale: 10^exponent or 2^exponent */
	__u16 size;		/* number of u64 values */
	__u32 offset;		/* of the first value, from data_offset */
	__u32 bucket_size;	/* linear histograms only */
};

/* ---- ioctls --------------------------------------------------------------- */

/* ioctls on the /dev/rvmx fd */
#define RVMX_GET_API_VERSION	_IO(RVMXIO, 0x00)
#define RVMX_GET_VMX_CAPS	_IOR(RVMXIO, 0x01, struct rvmx_vmx_caps)
#define RVMX_CREATE_VM		_IO(RVMXIO, 0x02)
#define RVMX_GET_VCPU_MMAP_SIZE	_IO(RVMXIO, 0x03)
#define RVMX_GET_SUPPORTED_CPUID _IOWR(RVMXIO, 0x04, struct rvmx_cpuid)

/* ioctls on a VM fd */
#define RVMX_SET_USER_MEMORY_REGION _IOW(RVMXIO, 0x10, struct rvmx_userspace_memory_region)
#define RVMX_CREATE_VCPU	_IO(RVMXIO, 0x11)
/* Argument: RVMX_MSR_EXIT_REASON_UNKNOWN to send RDMSR/WRMSR of MSRs rvmx
 * does not virtualize to user space instead of raising #GP; 0 to stop. */
#define RVMX_SET_USER_MSR_EXITS	_IO(RVMXIO, 0x12)

/*
 * Delivers a message-signalled interrupt as the system bus would: address
 * 0xFEExxxxx with the destination in bits 19:12 (and 63:40 of address_hi
 * for x2APIC ids), destination mode bit 2; data with the vector in bits
 * 7:0, delivery mode 10:8, trigger mode bit 15. Same layout as KVM's
 * struct kvm_msi. Returns the number of local APICs that accepted it.
 */
struct rvmx_msi {
	__u32 address_lo;
	__u32 address_hi;
	__u32 data;
	__u32 flags;	/* zero */
	__u8 pad[16];	/* zero */
};
#define RVMX_SIGNAL_MSI		_IOW(RVMXIO, 0x13, struct rvmx_msi)
/* Argument: 0. Returns a read-only statistics fd (sums over the vCPUs). */
#define RVMX_GET_VM_STATS_FD	_IO(RVMXIO, 0x14)

/* ioctls on a vCPU fd */
#define RVMX_RUN		_IO(RVMXIO, 0x20)
#define RVMX_GET_REGS		_IOR(RVMXIO, 0x21, struct rvmx_regs)
#define RVMX_SET_REGS		_IOW(RVMXIO, 0x22, struct rvmx_regs)
#define RVMX_GET_SREGS		_IOR(RVMXIO, 0x23, struct rvmx_sregs)
#define RVMX_SET_SREGS		_IOW(RVMXIO, 0x24, struct rvmx_sregs)
#define RVMX_SET_CPUID		_IOW(RVMXIO, 0x25, struct rvmx_cpuid)
#define RVMX_GET_MSRS		_IOWR(RVMXIO, 0x26, struct rvmx_msrs)
#define RVMX_SET_MSRS		_IOW(RVMXIO, 0x27, struct rvmx_msrs)
#define RVMX_GET_LAPIC		_IOR(RVMXIO, 0x28, struct rvmx_lapic_state)
#define RVMX_SET_LAPIC		_IOW(RVMXIO, 0x29, struct rvmx_lapic_state)
#define RVMX_GET_VCPU_EVENTS	_IOR(RVMXIO, 0x2a, struct rvmx_vcpu_events)
#define RVMX_SET_VCPU_EVENTS	_IOW(RVMXIO, 0x2b, struct rvmx_vcpu_events)
#define RVMX_GET_MP_STATE	_IOR(RVMXIO, 0x2c, struct rvmx_mp_state)
#define RVMX_SET_MP_STATE	_IOW(RVMXIO, 0x2d, struct rvmx_mp_state)
/* Argument: 0. Returns a read-only statistics fd of this vCPU. */
#define RVMX_GET_VCPU_STATS_FD	_IO(RVMXIO, 0x2e)

#endif /* _UAPI_RVMX_H */
