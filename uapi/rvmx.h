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
#define RVMX_API_VERSION 1

/* rvmx's own ioctl magic (KVM uses 0xAE). */
#define RVMXIO 0xAF

/* struct rvmx_vmx_caps.flags */
/* VMXON and VMXOFF succeeded on every online CPU during this call. */
#define RVMX_CAP_VMX_USABLE		(1u << 0)
/* Another hypervisor (e.g. kvm_intel) holds VMX root on some CPU: VM work gets EBUSY. */
#define RVMX_CAP_VMX_BUSY		(1u << 1)
/* The processor supports the controls rvmx relies on. */
#define RVMX_CAP_EPT			(1u << 2)
#define RVMX_CAP_VPID			(1u << 3)
#define RVMX_CAP_UNRESTRICTED_GUEST	(1u << 4)
/* IA32_VMX_BASIC[55]: the TRUE_* control MSRs were read. */
#define RVMX_CAP_TRUE_CONTROLS		(1u << 5)
/* The host delivers events with FRED (affects NMI hand-off). */
#define RVMX_CAP_HOST_FRED		(1u << 6)

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
	__u64 reserved[8];	/* zero */
};

/* ioctls on the /dev/rvmx fd */
#define RVMX_GET_API_VERSION	_IO(RVMXIO, 0x00)
#define RVMX_GET_VMX_CAPS	_IOR(RVMXIO, 0x01, struct rvmx_vmx_caps)

#endif /* _UAPI_RVMX_H */
