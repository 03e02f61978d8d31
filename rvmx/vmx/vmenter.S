/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The VM-entry trampoline: load the guest's general-purpose registers and
 * CR2, VMLAUNCH or VMRESUME, and on the VM exit store them back and return.
 *
 * This is assembly, not Rust, because the VM exit lands at rvmx_vmexit with
 * the stack pointer from the VMCS: objtool must be told (UNWIND_HINT_*) and
 * indirect-branch tracking must accept the landing (ENDBR), which only the
 * kernel's assembler macros express.
 *
 * unsigned int rvmx_vmenter(struct GuestRegs *regs, unsigned int launched)
 *   returns 0 after a VM exit, 1 if VMLAUNCH/VMRESUME (or the VMWRITE of
 *   HOST_RSP) failed; VM_INSTRUCTION_ERROR then says why.
 *
 * struct GuestRegs (rvmx/vcpu/regs.rs) holds the 16 GPRs in encoding order
 * (RSP unused: it lives in the VMCS) followed by CR2.
 */
#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/nospec-branch.h>

#define HOST_RSP	0x6c14

#define R_RAX	0
#define R_RCX	8
#define R_RDX	16
#define R_RBX	24
#define R_RBP	40
#define R_RSI	48
#define R_RDI	56
#define R_R8	64
#define R_R9	72
#define R_R10	80
#define R_R11	88
#define R_R12	96
#define R_R13	104
#define R_R14	112
#define R_R15	120
#define R_CR2	128

.section .noinstr.text, "ax"

SYM_FUNC_START(rvmx_vmenter)
	push %rbp
	mov %rsp, %rbp
	push %r15
	push %r14
	push %r13
	push %r12
	push %rbx
	/* @regs, found again at the top of the stack after the exit. */
	push %rdi

	/* The VM exit lands with this stack pointer. */
	mov $HOST_RSP, %eax
	vmwrite %rsp, %rax
	jbe .Lfail

	/* MOV to CR2 leaves the arithmetic flags undefined: do it first. */
	mov R_CR2(%rdi), %rax
	mov %rax, %cr2

	/* The loads below keep the flags of this test. */
	test %esi, %esi

	mov R_RAX(%rdi), %rax
	mov R_RCX(%rdi), %rcx
	mov R_RDX(%rdi), %rdx
	mov R_RBX(%rdi), %rbx
	mov R_RBP(%rdi), %rbp
	mov R_RSI(%rdi), %rsi
	mov R_R8(%rdi), %r8
	mov R_R9(%rdi), %r9
	mov R_R10(%rdi), %r10
	mov R_R11(%rdi), %r11
	mov R_R12(%rdi), %r12
	mov R_R13(%rdi), %r13
	mov R_R14(%rdi), %r14
	mov R_R15(%rdi), %r15
	mov R_RDI(%rdi), %rdi

	/* A successful entry continues at rvmx_vmexit, on the next exit. */
	UNWIND_HINT_SAVE
	jnz .Lresume
	vmlaunch
	jmp .Lfail
.Lresume:
	vmresume
	jmp .Lfail

SYM_INNER_LABEL(rvmx_vmexit, SYM_L_GLOBAL)
	UNWIND_HINT_RESTORE
	ENDBR

	push %rdi
	mov 8(%rsp), %rdi
	mov %rax, R_RAX(%rdi)
	mov %rcx, R_RCX(%rdi)
	mov %rdx, R_RDX(%rdi)
	mov %rbx, R_RBX(%rdi)
	mov %rbp, R_RBP(%rdi)
	mov %rsi, R_RSI(%rdi)
	mov %r8, R_R8(%rdi)
	mov %r9, R_R9(%rdi)
	mov %r10, R_R10(%rdi)
	mov %r11, R_R11(%rdi)
	mov %r12, R_R12(%rdi)
	mov %r13, R_R13(%rdi)
	mov %r14, R_R14(%rdi)
	mov %r15, R_R15(%rdi)
	popq R_RDI(%rdi)
	mov %cr2, %rax
	mov %rax, R_CR2(%rdi)

	/* Guest-controlled return predictions must not steer the host. */
	FILL_RETURN_BUFFER %rax, RSB_CLEAR_LOOPS, X86_FEATURE_RSB_VMEXIT

	/* Leave no guest values in caller-saved registers. */
	xor %ecx, %ecx
	xor %edx, %edx
	xor %esi, %esi
	xor %r8d, %r8d
	xor %r9d, %r9d
	xor %r10d, %r10d
	xor %r11d, %r11d
	xor %eax, %eax
	jmp .Lout

.Lfail:
	mov $1, %eax
.Lout:
	pop %rdi
	pop %rbx
	pop %r12
	pop %r13
	pop %r14
	pop %r15
	pop %rbp
	RET
SYM_FUNC_END(rvmx_vmenter)
