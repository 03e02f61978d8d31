/*
 * A multiboot (v1) test kernel for vmmctl's lab tests: checks the boot
 * loader magic and the information structure, prints the command line and
 * the first module's text on COM1, and ends the VM through QEMU's
 * isa-debug-exit port (0xf4): code 0x21 when every check passed (vmmctl
 * exits with (0x21 << 1) | 1 = 67), 0x01 otherwise (exit status 3).
 */
	.set MAGIC, 0x1badb002
	.set FLAGS, 0x3			/* page-aligned modules, memory info */
	.set COM1, 0x3f8
	.set DEBUG_EXIT, 0xf4

	.section .multiboot, "a"
	.align 4
	.long MAGIC, FLAGS, -(MAGIC + FLAGS)

	.text
	.code32
	.globl _start
_start:
	mov	$stack_top, %esp
	mov	%ebx, %esi		/* multiboot information */
	cmp	$0x2badb002, %eax
	jne	fail
	mov	$msg_magic, %edx
	call	puts

	testl	$(1 << 6), (%esi)	/* memory map present and not empty */
	jz	fail
	cmpl	$0, 44(%esi)
	je	fail
	testl	$(1 << 0), (%esi)	/* mem_lower/mem_upper */
	jz	fail
	cmpl	$1024, 8(%esi)		/* at least 1 MiB above 1 MiB */
	jb	fail
	mov	$msg_mmap, %edx
	call	puts

	testl	$(1 << 2), (%esi)	/* command line */
	jz	fail
	mov	$msg_cmdline, %edx
	call	puts
	mov	16(%esi), %edx
	call	puts
	mov	$msg_nl, %edx
	call	puts

	testl	$(1 << 3), (%esi)	/* modules: print the first one's text */
	jz	done
	cmpl	$0, 20(%esi)
	je	done
	mov	24(%esi), %edi
	mov	$msg_module, %edx
	call	puts
	mov	(%edi), %ebx		/* mod_start */
	mov	4(%edi), %ecx		/* mod_end */
1:	cmp	%ecx, %ebx
	jae	2f
	movb	(%ebx), %al
	cmpb	$'\n', %al
	je	2f
	call	putc
	inc	%ebx
	jmp	1b
2:	mov	$msg_nl, %edx
	call	puts

done:
	mov	$msg_ok, %edx
	call	puts
	mov	$0x21, %al
	out	%al, $DEBUG_EXIT
	jmp	halt

fail:
	mov	$msg_fail, %edx
	call	puts
	mov	$0x01, %al
	out	%al, $DEBUG_EXIT
halt:	cli
	hlt
	jmp	halt

/* puts: print the NUL-terminated string at %edx. */
puts:	movb	(%edx), %al
	test	%al, %al
	jz	1f
	call	putc
	inc	%edx
	jmp	puts
1:	ret

/* putc: print %al once the transmitter holds nothing. */
putc:	push	%edx
	mov	%al, %ah
	mov	$(COM1 + 5), %dx
1:	in	%dx, %al
	test	$0x20, %al
	jz	1b
	mov	$COM1, %dx
	mov	%ah, %al
	out	%al, %dx
	pop	%edx
	ret

	.section .rodata
msg_magic:	.asciz "multiboot: magic ok\r\n"
msg_mmap:	.asciz "multiboot: memory map ok\r\n"
msg_cmdline:	.asciz "multiboot: cmdline="
msg_module:	.asciz "multiboot: module="
msg_ok:		.asciz "multiboot: all checks passed\r\n"
msg_fail:	.asciz "multiboot: FAIL\r\n"
msg_nl:		.asciz "\r\n"

	.bss
	.align 16
	.space 4096
stack_top:
