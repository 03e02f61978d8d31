//! Interrupts: the in-kernel local APIC (xAPIC page and x2APIC MSRs), its
//! timer in three modes, event injection and the interrupt window, HLT in
//! the kernel, MSIs from the VMM, IPIs, INIT/SIPI and NMIs between vCPUs on
//! two threads; and two isolation holes of issue 8 (CR8, XSETBV).
//!
//! The guests are assembled into this binary (`guest!`, below) and copied
//! into guest memory. Long-mode guests use `TestVm::long_mode_idt`: each
//! vector's stub puts the vector in EAX and jumps to the test's handler,
//! which reports it with `out 0x11, al`. Guests report through OUT to
//! ports 0x10-0x1f and end with the DONE port; the host side collects the
//! exits (`trace`) and compares them with what the test expects (`check`).
//!
//! Timing is measured by the guest with RDTSC, in guest TSC cycles (under
//! Bochs the TSC advances once per emulated instruction), and checked
//! against the tolerances stated with each test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use uapi::{sys, VcpuFd, VmFd};

use crate::guest::{TestVm, CODE, DONE_PORT};
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::vm::{catch_sigusr1, expect_eintr, expect_err, set_cpu};
use crate::{ensure, Ctx};
use labguest::{code, eoi, guest, iret64, rdtsc64, set_handler, x2apic_on};

pub const TESTS: &[Test] = &[
    Test {
        name: "cr8_never_reaches_the_host",
        run: cr8_never_reaches_the_host,
    },
    Test {
        name: "xsetbv_partial_avx512_is_gp",
        run: xsetbv_partial_avx512_is_gp,
    },
    Test {
        name: "rdpmc_wbinvd_and_dr4_dr5",
        run: rdpmc_wbinvd_and_dr4_dr5,
    },
    Test {
        name: "interrupt_state_save_and_restore",
        run: interrupt_state_save_and_restore,
    },
    Test {
        name: "msi_injects_fixed_interrupt",
        run: msi_injects_fixed_interrupt,
    },
    Test {
        name: "tpr_blocks_lower_priority_classes",
        run: tpr_blocks_lower_priority_classes,
    },
    Test {
        name: "isr_nesting_and_eoi_order",
        run: isr_nesting_and_eoi_order,
    },
    Test {
        name: "interrupt_window",
        run: interrupt_window,
    },
    Test {
        name: "self_ipi",
        run: self_ipi,
    },
    Test {
        name: "lapic_timer_one_shot",
        run: lapic_timer_one_shot,
    },
    Test {
        name: "lapic_timer_periodic",
        run: lapic_timer_periodic,
    },
    Test {
        name: "lapic_timer_tsc_deadline",
        run: lapic_timer_tsc_deadline,
    },
    Test {
        name: "masked_lvt_never_fires",
        run: masked_lvt_never_fires,
    },
    Test {
        name: "hlt_wakes_on_timer",
        run: hlt_wakes_on_timer,
    },
    Test {
        name: "hlt_wakes_on_msi_from_another_thread",
        run: hlt_wakes_on_msi_from_another_thread,
    },
    Test {
        name: "halted_vcpu_signal_is_eintr",
        run: halted_vcpu_signal_is_eintr,
    },
    Test {
        name: "init_sipi_starts_an_ap",
        run: init_sipi_starts_an_ap,
    },
    Test {
        name: "ipi_between_vcpus",
        run: ipi_between_vcpus,
    },
    Test {
        name: "nmi_by_ipi",
        run: nmi_by_ipi,
    },
    Test {
        name: "signal_msi_validates_input",
        run: signal_msi_validates_input,
    },
    Test {
        name: "level_triggered_eoi_exits",
        run: level_triggered_eoi_exits,
    },
    Test {
        name: "xapic_mmio_interrupts_and_level_eoi",
        run: xapic_mmio_interrupts_and_level_eoi,
    },
    Test {
        name: "msi_to_a_software_disabled_lapic_is_dropped",
        run: msi_to_a_software_disabled_lapic_is_dropped,
    },
    Test {
        name: "interrupt_whose_delivery_faulted_is_reinjected",
        run: interrupt_whose_delivery_faulted_is_reinjected,
    },
];

// ---- Guest code -----------------------------------------------------------

/// Guest-physical address of a stack with no memory behind it until the
/// VMM adds a slot there (`interrupt_whose_delivery_faulted_is_reinjected`).
const HOLE: u64 = 0x40_0000;

// The guest-assembly macros (`guest!`, `code!`, `x2apic_on!`, `eoi!`,
// `iret64!`, `rdtsc64!`, `set_handler!`) live in labguest, shared with the
// benchmark.

// Writes 15 to CR8 (the highest TPR class), reports what CR8 reads back,
// then spins with IF=0.
guest!(
    G_CR8,
    "mov eax, 15",
    "mov cr8, rax",
    "mov rbx, cr8",
    "mov eax, ebx",
    "out 0x10, eax",
    "G_CR8_spin:",
    "jmp G_CR8_spin",
);

// XSETBV of invalid XCR0 values: each raises #GP, whose handler reports the
// vector, error code and faulting bytes and skips the instruction; XGETBV
// afterwards reads the old value. Then the complete AVX-512 set 0xe7.
guest!(
    G_XS,
    set_handler!(G_XS_h),
    "xor r15d, r15d",
    "xor ecx, ecx",
    "xor edx, edx",
    "mov eax, 7",
    "xsetbv",
    "xgetbv",
    "out 0x10, eax",
    "mov eax, 0x27", // opmask without the ZMM state: oopsed the host once
    "xsetbv",
    "xgetbv",
    "out 0x10, eax",
    "mov eax, 0x67", // opmask and ZMM_Hi256 without Hi16_ZMM
    "xsetbv",
    "xgetbv",
    "out 0x10, eax",
    "mov eax, 0xe3", // AVX-512 without AVX
    "xsetbv",
    "xgetbv",
    "out 0x10, eax",
    "mov eax, 5", // AVX without SSE
    "xsetbv",
    "xgetbv",
    "out 0x10, eax",
    "mov ecx, 1", // XCR1 is not writable
    "mov eax, 7",
    "xsetbv",
    "xor ecx, ecx",
    "xgetbv",
    "out 0x10, eax",
    "mov eax, 0xe7", // x87, SSE, AVX and all of AVX-512: valid
    "xsetbv",
    "xgetbv",
    "out 0x10, eax",
    "mov eax, r15d",
    "out 0x12, eax",
    "out 0xf4, al",
    "G_XS_h:",
    "out 0x11, al",
    "mov rax, [rsp + 24]",
    "out 0x13, eax",
    "mov rax, [rsp + 32]",
    "mov eax, [rax]",
    "and eax, 0xffffff",
    "out 0x14, eax",
    "inc r15d",
    "add qword ptr [rsp + 32], 3",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
);

// RDPMC raises #GP (no counters: the host's must not show); WBINVD exits
// and does nothing; DR4/DR5 alias DR6/DR7, until CR4.DE makes them #UD.
// The handler reports the vector and skips the faulting instruction.
guest!(
    G_PRIV,
    set_handler!(G_PRIV_h),
    "xor ecx, ecx",
    "rdpmc",
    "wbinvd",
    "mov eax, 0xff0",
    "mov dr6, rax",
    "mov rbx, dr4",
    "mov eax, ebx",
    "out 0x10, eax",
    "mov eax, 0x401",
    "mov dr5, rax",
    "mov rbx, dr7",
    "mov eax, ebx",
    "out 0x10, eax",
    "mov rax, cr4",
    "or eax, 8",
    "mov cr4, rax",
    "mov rbx, dr4",
    "out 0xf4, al",
    "G_PRIV_h:",
    "out 0x11, al",
    "cmp al, 13",
    "jne G_PRIV_ud",
    "add qword ptr [rsp + 32], 2", // rdpmc: 0f 33
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
    "G_PRIV_ud:",
    "add qword ptr [rsp + 24], 3", // mov rbx, dr4: 0f 21 e3
    iret64!(),
);

// With its stack moved to HOLE + 0x1000 (no memory there yet), the guest
// takes the MSI the VMM sends at its OUT 0x10: delivery faults pushing the
// frame. Once memory is there, the interrupt comes, on that stack. Then the
// same with a #GP (error code 0x1230: a selector past the GDT's limit) and
// its stack at HOLE + 0x3000. The handler reports the stack's page, and the
// #GP's error code.
guest!(
    G_HOLE,
    set_handler!(G_HOLE_h),
    x2apic_on!(),
    "mov rbx, rsp",
    "mov rsp, 0x401000",
    "sti",
    "out 0x10, al",
    "cli",
    "mov rsp, rbx",
    "out 0x12, al",
    "mov rsp, 0x403000",
    "mov eax, 0x1230",
    "mov ds, eax", // 8e d8 (LLVM puts a 66 prefix on the ax form)
    "mov rsp, rbx",
    "out 0x15, al",
    "out 0xf4, al",
    "G_HOLE_h:",
    "out 0x11, al",
    "cmp al, 13",
    "je G_HOLE_gp",
    "mov rax, rsp",
    "shr rax, 12",
    "out 0x13, eax",
    eoi!(),
    iret64!(),
    "G_HOLE_gp:",
    "mov rax, rsp",
    "shr rax, 12",
    "out 0x13, eax",
    "mov rax, [rsp + 24]",
    "out 0x14, eax",
    "add qword ptr [rsp + 32], 2", // mov ds, eax
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
);

// Takes what the state restored at its OUT 0x10 holds: a pending exception
// at once, then, past the STI shadow, the interrupt a restored IRR requests.
guest!(
    G_RST,
    set_handler!(G_RST_h),
    "out 0x10, al",
    "sti",
    "nop",
    "out 0x12, al",
    "out 0xf4, al",
    "G_RST_h:",
    "out 0x11, al",
    iret64!(),
);

// An MSI arrives during the exit at port 0x10; IF=1, so it must be taken
// before the next instruction. The handler reports ISR before and after EOI.
guest!(
    G_MSI,
    set_handler!(G_MSI_h),
    x2apic_on!(),
    "sti",
    "out 0x10, al",
    "out 0x12, al",
    "out 0xf4, al",
    "G_MSI_h:",
    "out 0x11, al",
    "mov ecx, 0x812",
    "rdmsr",
    "out 0x13, eax",
    eoi!(),
    "mov ecx, 0x812",
    "rdmsr",
    "out 0x14, eax",
    iret64!(),
);

// TPR class 5 (through CR8) while 0x45, 0x55 and 0x61 are posted; then TPR
// 0x40 through the x2APIC TPR MSR (CR8 reads 4), then CR8 = 0.
guest!(
    G_TPR,
    set_handler!(G_TPR_h),
    x2apic_on!(),
    "mov eax, 5",
    "mov cr8, rax",
    "sti",
    "out 0x10, al",
    "out 0x12, al",
    "mov ecx, 0x808",
    "mov eax, 0x40",
    "xor edx, edx",
    "wrmsr",
    "mov rax, cr8",
    "out 0x13, al",
    "xor eax, eax",
    "mov cr8, rax",
    "out 0x14, al",
    "out 0xf4, al",
    "G_TPR_h:",
    "out 0x11, al",
    eoi!(),
    iret64!(),
);

// 0x41's handler re-enables interrupts while 0x81 and 0x42 are pending:
// 0x81 (a higher class) nests, 0x42 (0x41's class) waits for 0x41's EOI.
guest!(
    G_NEST,
    set_handler!(G_NEST_h),
    x2apic_on!(),
    "sti",
    "out 0x10, al",
    "out 0x1e, al",
    "out 0xf4, al",
    "G_NEST_h:",
    "push rbx",
    "mov ebx, eax",
    "out 0x11, al",
    "cmp bl, 0x41",
    "jne G_NEST_other",
    "out 0x13, al",
    "sti",
    "nop",
    "out 0x14, al",
    eoi!(),
    "out 0x15, al",
    "jmp G_NEST_ret",
    "G_NEST_other:",
    "cmp bl, 0x81",
    "jne G_NEST_eoi",
    "mov ecx, 0x812",
    "rdmsr",
    "out 0x16, eax",
    "mov ecx, 0x814",
    "rdmsr",
    "out 0x17, eax",
    "mov ecx, 0x80a",
    "rdmsr",
    "out 0x18, eax",
    eoi!(),
    "mov ecx, 0x814",
    "rdmsr",
    "out 0x19, eax",
    "mov ecx, 0x812",
    "rdmsr",
    "out 0x1a, eax",
    "jmp G_NEST_ret",
    "G_NEST_eoi:",
    eoi!(),
    "G_NEST_ret:",
    "pop rbx",
    iret64!(),
);

// An MSI posted while IF=0: nothing arrives during a loop; after STI the
// shadow instruction (inc ebx) runs first, then the interrupt.
guest!(
    G_WIN,
    set_handler!(G_WIN_h),
    x2apic_on!(),
    "cli",
    "out 0x10, al",
    "mov ecx, 1000",
    "G_WIN_spin:",
    "loop G_WIN_spin",
    "out 0x12, al",
    "xor ebx, ebx",
    "sti",
    "inc ebx",
    "out 0x13, al",
    "out 0xf4, al",
    "G_WIN_h:",
    "out 0x11, al",
    "mov eax, ebx",
    "out 0x15, eax",
    eoi!(),
    iret64!(),
);

// Self-IPIs: the x2APIC SELF IPI MSR; the ICR with the self shorthand; the
// ICR with all-including-self; all-excluding-self (nobody else here).
guest!(
    G_SELF,
    set_handler!(G_SELF_h),
    x2apic_on!(),
    "sti",
    "mov ecx, 0x83f",
    "mov eax, 0x61",
    "xor edx, edx",
    "wrmsr",
    "out 0x12, al",
    "mov ecx, 0x830",
    "mov eax, 0x40062",
    "xor edx, edx",
    "wrmsr",
    "out 0x12, al",
    "mov ecx, 0x830",
    "mov eax, 0x80063",
    "xor edx, edx",
    "wrmsr",
    "out 0x12, al",
    "mov ecx, 0x830",
    "mov eax, 0xc0064",
    "xor edx, edx",
    "wrmsr",
    "out 0x12, al",
    "out 0xf4, al",
    "G_SELF_h:",
    "out 0x11, al",
    eoi!(),
    iret64!(),
);

// The LAPIC timer, parameterized by registers the host sets: R8 = LVT
// timer, R9 = divide configuration, R10 = initial count, R11 = TSC-deadline
// delta from the start (0: use the count), R12 = cycles to wait (0: HLT
// once instead). Results in memory at TIMER_DATA (see `TimerRun`).
guest!(
    G_TM,
    set_handler!(G_TM_h),
    x2apic_on!(),
    "mov ecx, 0x83e",
    "mov eax, r9d",
    "xor edx, edx",
    "wrmsr",
    "mov ecx, 0x832",
    "mov eax, r8d",
    "wrmsr",
    "sti",
    rdtsc64!(),
    "mov r13, rax",
    "mov [0x8000], rax",
    "test r11, r11",
    "jz G_TM_count",
    "add rax, r11",
    "mov [0x8008], rax",
    "mov rdx, rax",
    "shr rdx, 32",
    "mov ecx, 0x6e0",
    "wrmsr",
    "jmp G_TM_wait",
    "G_TM_count:",
    "mov ecx, 0x838",
    "mov eax, r10d",
    "xor edx, edx",
    "wrmsr",
    // The timer was armed between the first stamp and this one (the host
    // may run other work in between): the wait counts from here.
    rdtsc64!(),
    "mov r13, rax",
    "mov [0x8038], rax",
    "G_TM_wait:",
    "test r12, r12",
    "jnz G_TM_spin",
    "hlt",
    rdtsc64!(),
    "mov [0x8010], rax",
    "jmp G_TM_end",
    "G_TM_spin:",
    rdtsc64!(),
    "sub rax, r13",
    "cmp rax, r12",
    "jb G_TM_spin",
    "G_TM_end:",
    "cli",
    "mov ecx, 0x839",
    "rdmsr",
    "mov [0x8018], eax",
    "mov ecx, 0x6e0",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov [0x8020], rax",
    "out 0xf4, al",
    "G_TM_h:",
    "push rbx",
    "mov [0x8028], eax",
    rdtsc64!(),
    "mov rbx, [0x8030]",
    "cmp rbx, 64",
    "jae G_TM_full",
    "mov [0x8040 + rbx * 8], rax",
    "G_TM_full:",
    "inc rbx",
    "mov [0x8030], rbx",
    eoi!(),
    "pop rbx",
    iret64!(),
);

// HLT with IF=1 after reporting ready; another thread's MSI wakes it.
guest!(
    G_HM,
    set_handler!(G_HM_h),
    x2apic_on!(),
    "sti",
    "out 0x10, al",
    "hlt",
    "out 0x12, al",
    "out 0xf4, al",
    "G_HM_h:",
    "out 0x11, al",
    eoi!(),
    iret64!(),
);

// HLT with IF=0: only an NMI ends it (the handler does not EOI).
guest!(
    G_HS,
    set_handler!(G_HS_h),
    x2apic_on!(),
    "cli",
    "out 0x10, al",
    "hlt",
    "out 0x12, al",
    "out 0xf4, al",
    "G_HS_h:",
    "out 0x11, al",
    iret64!(),
);

// The BSP, in 32-bit protected mode without paging, through the xAPIC
// page at 0xfee00000: reads version, ID and SVR, then INIT and SIPI
// (vector AP_VECTOR) to APIC 1 through the ICR.
guest!(
    G_BSP1,
    ".code32",
    "mov ebx, 0xfee00000",
    "mov eax, [ebx + 0x30]",
    "out 0x10, eax",
    "mov eax, [ebx + 0x20]",
    "out 0x10, eax",
    "mov dword ptr [ebx + 0xf0], 0x1ff",
    "mov eax, [ebx + 0xf0]",
    "out 0x10, eax",
    "out 0x11, al",
    "mov dword ptr [ebx + 0x310], 0x01000000",
    "mov dword ptr [ebx + 0x300], 0x00004500",
    "mov dword ptr [ebx + 0x300], 0x00008500",
    "mov dword ptr [ebx + 0x300], 0x0000460a",
    "mov eax, [ebx + 0x300]",
    "out 0x10, eax",
    "out 0xf4, al",
);

// The AP after the SIPI, in real mode: reports CS, IP (relative to where
// the code starts), IA32_APIC_BASE and CR0.
guest!(
    G_AP1,
    ".code16",
    "mov ax, cs",
    "out 0x10, ax",
    "call G_AP1_next",
    "G_AP1_next:",
    "pop ax",
    ".set G_AP1_ip, G_AP1_next - G_AP1_s",
    "mov bx, offset G_AP1_ip",
    "sub ax, bx",
    "out 0x10, ax",
    "mov ecx, 0x1b",
    "rdmsr",
    "out 0x10, eax",
    "mov eax, cr0",
    "out 0x10, eax",
    "out 0xf4, al",
);

// The BSP in long mode with x2APIC: INIT and SIPI to APIC 1, then (after
// the host says the AP halted) the IPI whose ICR value the host put in R8.
guest!(
    G_BSP2,
    x2apic_on!(),
    "mov ecx, 0x830",
    "mov edx, 1",
    "mov eax, 0x4500",
    "wrmsr",
    "mov eax, 0x460a",
    "wrmsr",
    "out 0x10, al",
    "mov ecx, 0x830",
    "mov edx, 1",
    "mov eax, r8d",
    "wrmsr",
    "out 0xf4, al",
);

// The AP in real mode: x2APIC on, handlers for vector 0x40 and the NMI in
// the IVT; reports ready, then HLT with IF=1 (AP_MODE byte 0) or IF=0 (1).
guest!(
    G_AP2,
    ".code16",
    "xor ax, ax",
    "mov ds, ax",
    "mov ss, ax",
    "mov sp, 0x9000",
    ".set G_AP2_h40_off, G_AP2_h40 - G_AP2_s",
    ".set G_AP2_nmi_off, G_AP2_nmi - G_AP2_s",
    "mov ax, offset G_AP2_h40_off",
    "mov [0x100], ax",
    "mov [0x102], cs",
    "mov ax, offset G_AP2_nmi_off",
    "mov [0x8], ax",
    "mov [0xa], cs",
    x2apic_on!(),
    "out 0x10, al",
    "cmp byte ptr [0x8f00], 0",
    "jne G_AP2_noif",
    "sti",
    "jmp G_AP2_halt",
    "G_AP2_noif:",
    "cli",
    "G_AP2_halt:",
    "hlt",
    "out 0x12, al",
    "out 0xf4, al",
    "G_AP2_h40:",
    "push eax",
    "push ecx",
    "push edx",
    "mov al, 0x40",
    "out 0x11, al",
    "mov ecx, 0x80b",
    "xor eax, eax",
    "xor edx, edx",
    "wrmsr",
    "pop edx",
    "pop ecx",
    "pop eax",
    "iret",
    "G_AP2_nmi:",
    "push ax",
    "mov al, 2",
    "out 0x11, al",
    "pop ax",
    "iret",
);

// x2APIC on (LDR = cluster 0, bit 0), report, then take what the host sent.
guest!(
    G_MV,
    set_handler!(G_MV_h),
    x2apic_on!(),
    "out 0x10, al",
    "sti",
    "nop",
    "out 0x12, al",
    "out 0xf4, al",
    "G_MV_h:",
    "out 0x11, al",
    eoi!(),
    iret64!(),
);

// A level-triggered and an edge-triggered MSI: the handler reports TMR
// and EOIs; only the level one's EOI exits to the VMM.
guest!(
    G_LV,
    set_handler!(G_LV_h),
    x2apic_on!(),
    "sti",
    "out 0x10, al",
    "out 0x12, al",
    "out 0x13, al",
    "out 0xf4, al",
    "G_LV_h:",
    "push rbx",
    "mov ebx, eax",
    "out 0x11, al",
    "mov ecx, 0x81a",
    "rdmsr",
    "out 0x14, eax",
    eoi!(),
    "mov eax, ebx",
    "out 0x15, al",
    "pop rbx",
    iret64!(),
);

// 32-bit protected mode without paging, the xAPIC page at 0xfee00000:
// interrupt gates for 0x50-0x5f to one handler, which reports ISR and TMR
// (word 2) through the page and EOIs by writing its EOI register.
guest!(
    G_X32,
    ".code32",
    ".set G_X32_haddr, G_X32_h - G_X32_s + 0x1000",
    ".set G_X32_after_eoi_addr, G_X32_after_eoi - G_X32_s + 0x1000",
    "mov eax, offset G_X32_after_eoi_addr",
    "out 0x16, eax",
    "mov ebx, 0xfee00000",
    "mov eax, offset G_X32_haddr",
    "mov edx, eax",
    "shr edx, 16",
    "mov ecx, 0x3000 + 8 * 0x50",
    "G_X32_gate:",
    "mov word ptr [ecx], ax",
    "mov word ptr [ecx + 2], 8",
    "mov word ptr [ecx + 4], 0x8e00",
    "mov word ptr [ecx + 6], dx",
    "add ecx, 8",
    "cmp ecx, 0x3000 + 8 * 0x60",
    "jb G_X32_gate",
    "mov dword ptr [ebx + 0xf0], 0x1ff",
    "sti",
    "out 0x10, al",
    "out 0x12, al",
    "out 0x13, al",
    "out 0xf4, al",
    "G_X32_h:",
    "push eax",
    "mov eax, [ebx + 0x120]",
    "out 0x11, eax",
    "mov eax, [ebx + 0x1a0]",
    "out 0x14, eax",
    "mov dword ptr [ebx + 0xb0], 0",
    "G_X32_after_eoi:",
    "mov eax, [ebx + 0x120]",
    "out 0x15, eax",
    "pop eax",
    "iretd",
);

// An MSI while the APIC is still software-disabled (SVR 0xff), then the
// APIC enabled and interrupts on: nothing may arrive.
guest!(
    G_DIS,
    set_handler!(G_DIS_h),
    "out 0x10, al",
    x2apic_on!(),
    "sti",
    "nop",
    "out 0x12, al",
    "out 0xf4, al",
    "G_DIS_h:",
    "out 0x11, al",
    eoi!(),
    iret64!(),
);

/// Guest memory of the tests here: 2 MiB from guest-physical 0.
const MEM: usize = 0x20_0000;
/// The SIPI vector of the SMP tests: the AP starts at 0xa000 (CS 0xa00).
const AP_VECTOR: u8 = 0x0a;
const AP_CODE: usize = (AP_VECTOR as usize) << 12;
/// G_AP2's mode byte: 0 halts with IF=1, 1 with IF=0.
const AP_MODE: usize = 0x8f00;
/// Where G_TM leaves its results.
const TIMER_DATA: usize = 0x8000;

/// The first x2APIC-format MSI address: physical destination 0.
const MSI_ADDR: u64 = 0xfee0_0000;

/// How long (lab time) a guest may take before the watchdog interrupts
/// its RUN and the test fails.
const WATCHDOG: Duration = Duration::from_secs(30);

// ---- Exits as a trace --------------------------------------------------------

/// What the guest did, as the VMM saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    /// OUT to `port` (not DONE) with its data (1, 2 or 4 bytes).
    Out(u16, u32),
    /// RVMX_EXIT_IOAPIC_EOI with the vector.
    Eoi(u8),
    /// The guest's DONE.
    Done,
}

/// What a test expects of one exit.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// An OUT to this port, with this data if given.
    Out(u16, Option<u32>),
    Eoi(u8),
    Done,
}

/// An OUT to `port`, any data.
fn mark(port: u16) -> Want {
    Want::Out(port, None)
}

/// An OUT to `port` with `value`.
fn val(port: u16, value: u32) -> Want {
    Want::Out(port, Some(value))
}

/// A handler's report of `vector`.
fn vector(v: u8) -> Want {
    val(0x11, u32::from(v))
}

fn matches(got: &Ev, want: &Want) -> bool {
    match (got, want) {
        (Ev::Out(p, v), Want::Out(wp, wv)) => p == wp && wv.is_none_or(|w| w == *v),
        (Ev::Eoi(v), Want::Eoi(w)) => v == w,
        (Ev::Done, Want::Done) => true,
        _ => false,
    }
}

fn show(evs: &[Ev]) -> String {
    evs.iter()
        .map(|e| match e {
            Ev::Out(p, v) => format!("out {p:#x}={v:#x}"),
            Ev::Eoi(v) => format!("eoi {v:#x}"),
            Ev::Done => "done".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_want(want: &[Want]) -> String {
    want.iter()
        .map(|w| match w {
            Want::Out(p, Some(v)) => format!("out {p:#x}={v:#x}"),
            Want::Out(p, None) => format!("out {p:#x}"),
            Want::Eoi(v) => format!("eoi {v:#x}"),
            Want::Done => "done".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The exits `got` are exactly `want`, in order.
fn check(what: &str, got: &[Ev], want: &[Want]) -> TestResult {
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| matches(g, w));
    ensure!(
        ok,
        "{what}: the guest did\n  {}\nwant\n  {}",
        show(got),
        show_want(want)
    );
    Ok(())
}

/// Runs the vCPU to its next exit, which must be an OUT, the DONE or an
/// EOI exit.
fn next_ev(vcpu: &mut VcpuFd) -> Result<Ev, Outcome> {
    if let Err(e) = vcpu.run() {
        let why = if e.raw_os_error() == Some(libc::EINTR) {
            " (the watchdog: the guest did not finish in time)"
        } else {
            ""
        };
        return Err(Outcome::Fail(format!("RVMX_RUN: {e}{why}")));
    }
    let reason = vcpu.run_area().exit_reason;
    match reason {
        sys::RVMX_EXIT_IO => {
            // SAFETY: the exit reason says the union holds `io`.
            let io = unsafe { vcpu.run_area().__bindgen_anon_1.io };
            ensure!(
                io.direction == sys::RVMX_EXIT_IO_OUT as u8 && io.count == 1,
                "unexpected I/O exit {io:?}"
            );
            if io.port == DONE_PORT {
                return Ok(Ev::Done);
            }
            let mut bytes = [0u8; 4];
            let n = usize::from(io.size).min(4);
            let data = vcpu
                .run_data(io.data_offset, n)
                .ok_or_else(|| Outcome::Fail(format!("I/O data outside the run area: {io:?}")))?;
            bytes[..n].copy_from_slice(data);
            Ok(Ev::Out(io.port, u32::from_le_bytes(bytes)))
        }
        sys::RVMX_EXIT_IOAPIC_EOI => Ok(Ev::Eoi(vcpu.eoi_vector().unwrap_or(0))),
        other => {
            let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
            let detail = match vcpu.internal_error() {
                Some((sub, data)) => format!(" (internal error {sub}, data {data:x?})"),
                None => String::new(),
            };
            Err(Outcome::Fail(format!(
                "exit {other}{detail} at rip {rip:#x}, want an OUT or the DONE"
            )))
        }
    }
}

/// The next exit, under the watchdog (a hung guest fails the test).
fn next_ev_watched(vcpu: &mut VcpuFd) -> Result<Ev, Outcome> {
    let _w = Watchdog::start(WATCHDOG);
    next_ev(vcpu)
}

/// Runs the vCPU until the guest's DONE, calling `on` after each exit (the
/// VMM's chance to act, e.g. send an MSI), under a watchdog.
fn trace(vcpu: &mut VcpuFd, mut on: impl FnMut(Ev) -> TestResult) -> Result<Vec<Ev>, Outcome> {
    let _watchdog = Watchdog::start(WATCHDOG);
    let mut evs = Vec::new();
    loop {
        let ev = next_ev(vcpu).map_err(|e| match e {
            Outcome::Fail(why) => Outcome::Fail(format!("{why}\nafter: {}", show(&evs))),
            skip => skip,
        })?;
        evs.push(ev);
        on(ev)?;
        if ev == Ev::Done {
            return Ok(evs);
        }
        ensure!(evs.len() < 100, "no DONE after 100 exits: {}", show(&evs));
    }
}

/// Sends SIGUSR1 to the thread that started it if it is not dropped within
/// the time given: a guest that hangs ends its RUN with EINTR.
struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(limit: Duration) -> Self {
        catch_sigusr1();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let (cancel, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                // SAFETY: the watched thread joins this one before it ends
                // (in `drop`), so it is alive.
                unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
            }
        });
        Self {
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// Lets the calling thread run on every CPU again.
fn allow_all_cpus() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..online_cpus() {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins the calling thread to `cpu` if the machine has it.
fn pin(cpu: usize) -> TestResult {
    if cpu < online_cpus() {
        set_cpu(cpu).ctx("sched_setaffinity")?;
    }
    Ok(())
}

fn msi(vm: &VmFd, address: u64, data: u32) -> Result<u32, Outcome> {
    vm.signal_msi(address, data).ctx("RVMX_SIGNAL_MSI")
}

/// Sends `data` to APIC 0 and expects one LAPIC to accept it.
fn msi_to_0(vm: &VmFd, data: u32) -> TestResult {
    let n = msi(vm, MSI_ADDR, data)?;
    ensure!(
        n == 1,
        "MSI {data:#x} to APIC 0 accepted by {n} LAPICs, want 1"
    );
    Ok(())
}

// ---- Issue 8: CR8 and XSETBV -----------------------------------------------

fn cr8_never_reaches_the_host(_: &Ctx) -> TestResult {
    catch_sigusr1();
    let mut t = TestVm::long_mode(MEM, code!(G_CR8))?;
    let ev = next_ev_watched(&mut t.vcpu)?;
    ensure!(
        ev == Ev::Out(0x10, 15),
        "the guest read CR8 back as {ev:?}, want 15"
    );
    // The guest now spins with CR8 = 15. This thread and the one that
    // signals it share CPU 0: the signal arrives only if that CPU still
    // takes its timer interrupt and reschedules (with the host's TPR at 15
    // it takes no interrupt at all: the host hangs).
    pin(0)?;
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let kicker = std::thread::spawn(move || {
        let _ = set_cpu(0);
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: the target joins this thread before it returns.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
    });
    let started = Instant::now();
    let result = t.vcpu.run();
    let spun = started.elapsed();
    let _ = kicker.join();
    allow_all_cpus();
    expect_eintr(&mut t, result, "RUN of the guest spinning with CR8 = 15")?;
    ensure!(
        spun >= Duration::from_millis(100),
        "RUN returned after {spun:?}, before the signal"
    );
    let sregs = t.vcpu.sregs().ctx("GET_SREGS")?;
    ensure!(sregs.cr8 == 15, "GET_SREGS cr8 {}, want 15", sregs.cr8);
    let run_cr8 = t.vcpu.run_area().cr8;
    ensure!(run_cr8 == 15, "run area cr8 {run_cr8}, want 15");
    let rip = t.vcpu.regs().ctx("GET_REGS")?.rip as usize;
    ensure!(
        t.mem.bytes().get(rip..rip + 2) == Some(&[0xeb, 0xfe][..]),
        "RIP {rip:#x} is not the guest's spin loop"
    );
    Ok(())
}

/// XGETBV in this (host) process: the host's XCR0.
fn host_xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV of XCR0 is allowed at CPL 3 where the OS set
    // CR4.OSXSAVE, which the caller checked (the `xsave` flag).
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn xsetbv_partial_avx512_is_gp(_: &Ctx) -> TestResult {
    let info = std::fs::read_to_string("/proc/cpuinfo").ctx("/proc/cpuinfo")?;
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    if !flags.contains(&"avx512f") || !flags.contains(&"xsave") {
        return Err(Outcome::Skip("the host has no AVX-512 (avx512f)".into()));
    }
    let host = host_xcr0();
    let mut t = TestVm::long_mode_idt(MEM, code!(G_XS))?;
    let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
    s.cr4 |= (1 << 9) | (1 << 18); // OSFXSR, OSXSAVE
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    let evs = trace(&mut t.vcpu, |_| Ok(()))?;
    // #GP(0) at the XSETBV (0f 01 d1), and XCR0 is still 7 after it.
    let gp = [
        vector(13),
        val(0x13, 0),
        val(0x14, 0x00d1_010f),
        val(0x10, 7),
    ];
    let mut want = vec![val(0x10, 7)];
    for _ in 0..5 {
        want.extend_from_slice(&gp);
    }
    let full = host & 0xe7 == 0xe7;
    if full {
        want.push(val(0x10, 0xe7));
    } else {
        want.extend_from_slice(&gp);
    }
    want.push(val(0x12, if full { 5 } else { 6 }));
    want.push(Want::Done);
    check(
        &format!("XSETBV 0x27, 0x67, 0xe3, 5, XCR1, then 0xe7 (host XCR0 {host:#x})"),
        &evs,
        &want,
    )
}

fn rdpmc_wbinvd_and_dr4_dr5(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_PRIV))?;
    let evs = trace(&mut t.vcpu, |_| Ok(()))?;
    check(
        "RDPMC, WBINVD, DR4 and DR5 without and with CR4.DE",
        &evs,
        &[
            vector(13),
            val(0x10, 0xff0),
            val(0x10, 0x401),
            vector(6),
            Want::Done,
        ],
    )
}

/// The 32-bit register at `offset` of a saved local APIC.
fn apic_reg(s: &sys::rvmx_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| s.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_apic_reg(s: &mut sys::rvmx_lapic_state, offset: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().into_iter().enumerate() {
        s.regs[offset + i] = byte as _;
    }
}

fn interrupt_state_save_and_restore(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_RST))?;
    let fresh = t.vcpu.vcpu_events().ctx("RVMX_GET_VCPU_EVENTS")?;
    ensure!(
        fresh.exception.pending == 0 && fresh.nmi.pending == 0 && fresh.interrupt.shadow == 0,
        "a fresh vCPU has events pending"
    );
    let mut apic = t.vcpu.lapic().ctx("RVMX_GET_LAPIC")?;
    let (id, version, svr) = (
        apic_reg(&apic, 0x20),
        apic_reg(&apic, 0x30),
        apic_reg(&apic, 0xf0),
    );
    ensure!(
        (id, version, svr) == (0, 0x50014, 0xff),
        "fresh APIC: ID {id:#x}, version {version:#x}, SVR {svr:#x}"
    );
    // Restored once the guest's handler is in place (its OUT 0x10): the
    // APIC software-enabled with vector 0x40 requested (IRR word 2, bit 0),
    // and a #UD pending.
    set_apic_reg(&mut apic, 0xf0, 0x1ff);
    set_apic_reg(&mut apic, 0x220, 1);
    let mut ev = fresh;
    ev.exception.pending = 1;
    ev.exception.nr = 6;

    let mut other = apic;
    set_apic_reg(&mut other, 0x20, 1 << 24);
    expect_err(
        t.vcpu.set_lapic(&other),
        libc::EINVAL,
        "SET_LAPIC with another APIC ID",
    )?;
    let mut bad = ev;
    bad.flags = 1;
    expect_err(
        t.vcpu.set_vcpu_events(&bad),
        libc::EINVAL,
        "SET_VCPU_EVENTS with flags",
    )?;
    let mut bad = ev;
    bad.interrupt.shadow = 3;
    expect_err(
        t.vcpu.set_vcpu_events(&bad),
        libc::EINVAL,
        "both interrupt shadows",
    )?;
    let mut bad = ev;
    bad.exception.nr = 40;
    expect_err(
        t.vcpu.set_vcpu_events(&bad),
        libc::EINVAL,
        "exception vector 40",
    )?;

    let mp = t.vcpu.mp_state().ctx("RVMX_GET_MP_STATE")?;
    ensure!(
        mp == sys::RVMX_MP_STATE_RUNNABLE,
        "vCPU 0 mp_state {mp}, want RUNNABLE"
    );
    expect_err(t.vcpu.set_mp_state(7), libc::EINVAL, "mp_state 7")?;
    let ap = t.vm.create_vcpu(1).ctx("RVMX_CREATE_VCPU 1")?;
    let mp = ap.mp_state().ctx("RVMX_GET_MP_STATE")?;
    ensure!(
        mp == sys::RVMX_MP_STATE_INIT_RECEIVED,
        "vCPU 1 mp_state {mp}, want INIT_RECEIVED (waiting for SIPI)"
    );

    let evs = trace_with_vcpu(&mut t.vcpu, |vcpu, e| {
        if !is_out(e, 0x10) {
            return Ok(());
        }
        vcpu.set_lapic(&apic).ctx("RVMX_SET_LAPIC")?;
        let back = vcpu.lapic().ctx("RVMX_GET_LAPIC")?;
        ensure!(
            apic_reg(&back, 0xf0) == 0x1ff && apic_reg(&back, 0x220) == 1,
            "SVR {:#x}, IRR[2] {:#x} after SET_LAPIC",
            apic_reg(&back, 0xf0),
            apic_reg(&back, 0x220)
        );
        vcpu.set_vcpu_events(&ev).ctx("RVMX_SET_VCPU_EVENTS")?;
        let back = vcpu.vcpu_events().ctx("RVMX_GET_VCPU_EVENTS")?;
        ensure!(
            back.exception.pending == 1 && back.exception.nr == 6,
            "the pending #UD did not read back"
        );
        Ok(())
    })?;
    check(
        "the restored #UD, then the restored IRR's 0x40 after STI",
        &evs,
        &[
            Want::Out(0x10, None),
            vector(6),
            vector(0x40),
            Want::Out(0x12, None),
            Want::Done,
        ],
    )
}

// ---- Fixed interrupts from the VMM, TPR, ISR ---------------------------------

fn msi_injects_fixed_interrupt(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_MSI))?;
    let vm = &t.vm;
    let evs = trace(&mut t.vcpu, |ev| {
        if is_out(ev, 0x10) {
            msi_to_0(vm, 0x41)?;
        }
        Ok(())
    })?;
    check(
        "MSI 0x41 sent at the exit to port 0x10 (IF=1)",
        &evs,
        &[
            mark(0x10),
            vector(0x41),
            val(0x13, 1 << 1), // ISR: 0x41 in service
            val(0x14, 0),      // and no longer after EOI
            mark(0x12),
            Want::Done,
        ],
    )?;
    let run = t.vcpu.run_area();
    ensure!(
        run.if_flag == 1 && run.ready_for_interrupt_injection == 1,
        "run area at the DONE (IF=1): if_flag {}, ready_for_interrupt_injection {}",
        run.if_flag,
        run.ready_for_interrupt_injection
    );
    ensure!(
        run.apic_base == 0xfee0_0d00,
        "run area apic_base {:#x}, want 0xfee00d00 (x2APIC, enabled, BSP)",
        run.apic_base
    );
    Ok(())
}

fn interrupt_whose_delivery_faulted_is_reinjected(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_HOLE))?;
    let _watchdog = Watchdog::start(WATCHDOG);
    let ev = next_ev(&mut t.vcpu)?;
    ensure!(is_out(ev, 0x10), "first exit {ev:?}, want the OUT 0x10");
    msi_to_0(&t.vm, 0x41)?;
    // Valid, external interrupt 0x41; then valid, hardware exception 13
    // with an error code.
    let first = delivery_fault(&mut t, 0x8000_0041, HOLE)?;
    let evs = (0..3)
        .map(|_| next_ev(&mut t.vcpu))
        .collect::<Result<Vec<_>, _>>()?;
    check(
        "after memory was added at the interrupt's stack",
        &evs,
        &[
            vector(0x41),
            val(0x13, (HOLE >> 12) as u32), // the handler ran on that stack
            mark(0x12),
        ],
    )?;
    let second = delivery_fault(&mut t, 0x8000_0b0d, HOLE + 0x2000)?;
    let evs = trace(&mut t.vcpu, |_| Ok(()))?;
    check(
        "after memory was added at the #GP's stack",
        &evs,
        &[
            vector(13),
            val(0x13, ((HOLE + 0x2000) >> 12) as u32),
            val(0x14, 0x1230), // the error code, delivered again
            mark(0x15),
            Want::Done,
        ],
    )?;
    drop(t);
    drop((first, second));
    Ok(())
}

/// Runs the vCPU into the fault of an event's delivery on a stack in the
/// hole at page `page`: the internal error must name the event (`info`,
/// IDT-vectoring format) and the page. Then puts memory there (returned:
/// it must outlive the VM).
fn delivery_fault(t: &mut TestVm, info: u64, page: u64) -> Result<labguest::GuestMem, Outcome> {
    t.vcpu.run().ctx("RVMX_RUN")?;
    let Some((sub, data)) = t.vcpu.internal_error() else {
        let reason = t.vcpu.run_area().exit_reason;
        return Err(Outcome::Fail(format!(
            "exit {}, want the internal error of a fault in event delivery",
            t.describe_exit(reason)
        )));
    };
    ensure!(
        sub == sys::RVMX_INTERNAL_ERROR_DELIVERY_EV,
        "internal error {sub} ({data:x?}), want DELIVERY_EV"
    );
    ensure!(
        data.first() == Some(&info),
        "vectoring information {data:x?}, want {info:#x}"
    );
    ensure!(
        data.get(3).is_some_and(|&gpa| gpa & !0xfff == page),
        "fault address {data:x?}, want in page {page:#x}"
    );
    let stack = labguest::GuestMem::new(0x1000).ctx("mmap the stack")?;
    let slot = 1 + (page - HOLE) as u32 / 0x2000;
    // SAFETY: `stack` is only the guest's, and the caller keeps it until
    // the VM is gone.
    unsafe {
        t.vm.set_user_memory_region(crate::guest::region(slot, page, 0x1000, stack.addr(), 0))
    }
    .ctx("RVMX_SET_USER_MEMORY_REGION at the hole")?;
    Ok(stack)
}

fn ev_data(ev: Ev) -> u32 {
    match ev {
        Ev::Out(_, v) => v,
        _ => 0,
    }
}

fn is_out(ev: Ev, port: u16) -> bool {
    matches!(ev, Ev::Out(p, _) if p == port)
}

fn tpr_blocks_lower_priority_classes(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_TPR))?;
    let vm = &t.vm;
    let mut cr8_at_12 = None;
    let evs = trace_with_vcpu(&mut t.vcpu, |vcpu, ev| {
        if is_out(ev, 0x10) {
            for v in [0x45, 0x55, 0x61] {
                msi_to_0(vm, v)?;
            }
        }
        if is_out(ev, 0x12) {
            let run_cr8 = vcpu.run_area().cr8;
            cr8_at_12 = Some((run_cr8, vcpu.sregs().ctx("GET_SREGS")?.cr8));
        }
        Ok(())
    })?;
    check(
        "TPR 0x50 with 0x45, 0x55 and 0x61 pending; then TPR 0x40; then 0",
        &evs,
        &[
            mark(0x10),
            vector(0x61), // class 6 > TPR class 5
            mark(0x12),   // 0x55 (equal class) and 0x45 wait
            vector(0x55), // after TPR = 0x40 (the x2APIC TPR MSR)
            val(0x13, 4), // which CR8 reads as 4
            vector(0x45), // after CR8 = 0
            mark(0x14),
            Want::Done,
        ],
    )?;
    ensure!(
        cr8_at_12 == Some((5, 5)),
        "CR8 (run area, GET_SREGS) at TPR 0x50: {cr8_at_12:?}, want (5, 5)"
    );
    Ok(())
}

/// `trace`, with the vCPU passed to `on` too.
fn trace_with_vcpu(
    vcpu: &mut VcpuFd,
    mut on: impl FnMut(&mut VcpuFd, Ev) -> TestResult,
) -> Result<Vec<Ev>, Outcome> {
    let _watchdog = Watchdog::start(WATCHDOG);
    let mut evs = Vec::new();
    loop {
        let ev = next_ev(vcpu).map_err(|e| match e {
            Outcome::Fail(why) => Outcome::Fail(format!("{why}\nafter: {}", show(&evs))),
            skip => skip,
        })?;
        evs.push(ev);
        on(vcpu, ev)?;
        if ev == Ev::Done {
            return Ok(evs);
        }
        ensure!(evs.len() < 100, "no DONE after 100 exits: {}", show(&evs));
    }
}

fn isr_nesting_and_eoi_order(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_NEST))?;
    let vm = &t.vm;
    let evs = trace(&mut t.vcpu, |ev| {
        if is_out(ev, 0x10) {
            msi_to_0(vm, 0x41)?;
        }
        if is_out(ev, 0x13) {
            // In 0x41's handler, IF=0: both wait until its STI.
            msi_to_0(vm, 0x42)?;
            msi_to_0(vm, 0x81)?;
        }
        Ok(())
    })?;
    check(
        "0x41 in service, then 0x42 and 0x81 posted and STI in its handler",
        &evs,
        &[
            mark(0x10),
            vector(0x41),
            mark(0x13),
            vector(0x81),      // a higher class nests at once after the STI shadow
            val(0x16, 1 << 1), // ISR: 0x41 ...
            val(0x17, 1 << 1), // ... and 0x81 in service
            val(0x18, 0x80),   // PPR: 0x81's class
            val(0x19, 0),      // EOI ended 0x81, the highest
            val(0x1a, 1 << 1), // and left 0x41 in service
            mark(0x14),        // 0x42 waits behind 0x41 (same class)
            vector(0x42),      // until 0x41's EOI
            mark(0x15),
            mark(0x1e),
            Want::Done,
        ],
    )
}

fn interrupt_window(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_WIN))?;
    let mut at_ready = None;
    let mut at_13 = None;
    let vm = &t.vm;
    let evs = trace_with_vcpu(&mut t.vcpu, |vcpu, ev| {
        let run = vcpu.run_area();
        let state = (run.if_flag, run.ready_for_interrupt_injection);
        if is_out(ev, 0x10) {
            at_ready = Some(state);
            msi_to_0(vm, 0x51)?;
        }
        if is_out(ev, 0x13) {
            at_13 = Some(state);
        }
        Ok(())
    })?;
    check(
        "MSI 0x51 posted with IF=0, then a loop, STI and INC EBX",
        &evs,
        &[
            mark(0x10),
            mark(0x12),   // nothing during the loop with IF=0
            vector(0x51), // after STI ...
            val(0x15, 1), // ... and after the instruction in its shadow
            mark(0x13),
            Want::Done,
        ],
    )?;
    ensure!(
        at_ready == Some((0, 0)),
        "run area (if_flag, ready_for_interrupt_injection) with IF=0: {at_ready:?}, want (0, 0)"
    );
    ensure!(
        at_13 == Some((1, 1)),
        "run area (if_flag, ready_for_interrupt_injection) with IF=1: {at_13:?}, want (1, 1)"
    );
    Ok(())
}

fn self_ipi(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_SELF))?;
    let evs = trace(&mut t.vcpu, |_| Ok(()))?;
    check(
        "SELF IPI MSR 0x61; ICR self 0x62; ICR all-including-self 0x63; all-excluding-self 0x64",
        &evs,
        &[
            vector(0x61),
            mark(0x12),
            vector(0x62),
            mark(0x12),
            vector(0x63),
            mark(0x12),
            mark(0x12), // 0x64 went to nobody
            Want::Done,
        ],
    )
}

// ---- The LAPIC timer ---------------------------------------------------------

/// How late a timer interrupt may be: guest TSC cycles from the expiry to
/// the handler's first RDTSC, with the guest spinning (the expiry exits on
/// the VMX-preemption timer and the next entry injects).
const TIMER_LATE: u64 = 25_000;
/// The same for a halted vCPU, which the kernel wakes from a host hrtimer
/// (the timer interrupt, a wake-up and a new VMX window come first).
const HLT_LATE: u64 = 100_000;

/// Divide configuration 0b0011: divide by 16.
const DIV16: u64 = 3;
const LVT_PERIODIC: u64 = 1 << 17;
const LVT_TSC_DEADLINE: u64 = 2 << 17;
const LVT_MASKED: u64 = 1 << 16;

/// What G_TM left in memory.
#[derive(Debug)]
struct TimerRun {
    start: u64,
    /// Cycles from `start` by which the counting timer was surely armed
    /// (0 for TSC-deadline mode, whose deadline is absolute).
    armed: u64,
    deadline: u64,
    woke: u64,
    current: u32,
    tsc_deadline_msr: u64,
    vector: u32,
    /// Handler entries, in TSC.
    stamps: Vec<u64>,
}

impl TimerRun {
    /// Handler entries relative to the start.
    fn rel(&self) -> Vec<u64> {
        self.stamps
            .iter()
            .map(|s| s.wrapping_sub(self.start))
            .collect()
    }
}

fn timer_guest(
    lvt: u64,
    dcr: u64,
    count: u64,
    deadline: u64,
    wait: u64,
) -> Result<TimerRun, Outcome> {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_TM))?;
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    (r.r8, r.r9, r.r10, r.r11, r.r12) = (lvt, dcr, count, deadline, wait);
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    let evs = trace(&mut t.vcpu, |_| Ok(()))?;
    check("the timer guest (no exits to the VMM)", &evs, &[Want::Done])?;
    let m = &mut t.mem;
    let n = m.read_u64(TIMER_DATA + 0x30) as usize;
    Ok(TimerRun {
        start: m.read_u64(TIMER_DATA),
        armed: match m.read_u64(TIMER_DATA + 0x38) {
            0 => 0,
            after => after.wrapping_sub(m.read_u64(TIMER_DATA)),
        },
        deadline: m.read_u64(TIMER_DATA + 8),
        woke: m.read_u64(TIMER_DATA + 0x10),
        current: m.read_u64(TIMER_DATA + 0x18) as u32,
        tsc_deadline_msr: m.read_u64(TIMER_DATA + 0x20),
        vector: m.read_u64(TIMER_DATA + 0x28) as u32,
        stamps: (0..n.min(64))
            .map(|i| m.read_u64(TIMER_DATA + 0x40 + 8 * i))
            .collect(),
    })
}

fn lapic_timer_one_shot(_: &Ctx) -> TestResult {
    // 25,000 counts at divide 16: 400,000 TSC cycles. Waits 4 periods.
    let period = 25_000 * 16;
    let r = timer_guest(0xe0, DIV16, 25_000, 0, 4 * period)?;
    let rel = r.rel();
    println!("# lapic_timer_one_shot: fired at {rel:?} cycles, period {period}");
    ensure!(
        rel.len() == 1 && r.vector == 0xe0,
        "one-shot timer: {} interrupts (vector {:#x}) in 4 periods, want 1 of 0xe0",
        rel.len(),
        r.vector
    );
    let late = r.armed + TIMER_LATE;
    ensure!(
        (period..=period + late).contains(&rel[0]),
        "one-shot timer fired {} cycles after it was armed, want {period}..={} (armed within {} cycles)",
        rel[0],
        period + late,
        r.armed
    );
    ensure!(
        r.current == 0,
        "current count {} after expiry, want 0",
        r.current
    );
    Ok(())
}

fn lapic_timer_periodic(_: &Ctx) -> TestResult {
    // 12,500 counts at divide 16: 200,000 cycles; waits 5.5 periods.
    let period = 12_500 * 16;
    let r = timer_guest(0xe1 | LVT_PERIODIC, DIV16, 12_500, 0, 11 * period / 2)?;
    let rel = r.rel();
    println!("# lapic_timer_periodic: fired at {rel:?} cycles, period {period}");
    ensure!(
        (5..=6).contains(&rel.len()) && r.vector == 0xe1,
        "periodic timer: {} interrupts (vector {:#x}) in 5.5 periods, want 5 of 0xe1",
        rel.len(),
        r.vector
    );
    // The n-th interrupt comes n periods after arming, each within
    // TIMER_LATE: the timer keeps its phase and stays periodic.
    let late = r.armed + TIMER_LATE;
    for (i, at) in rel.iter().take(5).enumerate() {
        let due = (i as u64 + 1) * period;
        ensure!(
            (due..=due + late).contains(at),
            "periodic interrupt {} at {at} cycles, want {due}..={} (armed within {} cycles; all: {rel:?})",
            i + 1,
            due + late,
            r.armed
        );
    }
    ensure!(
        r.current > 0 && r.current <= 12_500,
        "current count {} while periodic, want 1..=12500",
        r.current
    );
    Ok(())
}

fn lapic_timer_tsc_deadline(_: &Ctx) -> TestResult {
    let delta = 500_000;
    let r = timer_guest(0xe2 | LVT_TSC_DEADLINE, DIV16, 0, delta, 3 * delta)?;
    let late: Vec<i128> = r
        .stamps
        .iter()
        .map(|s| i128::from(*s) - i128::from(r.deadline))
        .collect();
    println!("# lapic_timer_tsc_deadline: fired {late:?} cycles after the deadline");
    ensure!(
        r.deadline == r.start + delta,
        "deadline {:#x}, start {:#x}",
        r.deadline,
        r.start
    );
    ensure!(
        late.len() == 1 && r.vector == 0xe2,
        "TSC-deadline timer: {} interrupts (vector {:#x}), want 1 of 0xe2",
        late.len(),
        r.vector
    );
    ensure!(
        (0..=i128::from(TIMER_LATE)).contains(&late[0]),
        "fired {} cycles after the deadline, want 0..={TIMER_LATE}",
        late[0]
    );
    ensure!(
        r.tsc_deadline_msr == 0,
        "IA32_TSC_DEADLINE reads {:#x} after it fired, want 0",
        r.tsc_deadline_msr
    );
    Ok(())
}

fn masked_lvt_never_fires(_: &Ctx) -> TestResult {
    // 6,250 counts at divide 16: 100,000 cycles; each run waits 5 periods.
    let period = 6_250 * 16;
    let wait = 5 * period;
    for (what, lvt, deadline) in [
        ("one-shot", 0xe3 | LVT_MASKED, 0),
        ("periodic", 0xe3 | LVT_MASKED | LVT_PERIODIC, 0),
        ("TSC-deadline", 0xe3 | LVT_MASKED | LVT_TSC_DEADLINE, period),
    ] {
        let r = timer_guest(lvt, DIV16, 6_250, deadline, wait)?;
        ensure!(
            r.stamps.is_empty(),
            "masked {what} timer fired {} times",
            r.stamps.len()
        );
        if lvt & LVT_PERIODIC == 0 && deadline == 0 {
            // It counted down all the same.
            ensure!(
                r.current == 0,
                "masked one-shot timer: current count {} after 5 periods, want 0",
                r.current
            );
        }
    }
    // The same timer unmasked fires: the runs above could have seen it.
    let r = timer_guest(0xe3, DIV16, 6_250, 0, wait)?;
    ensure!(
        r.stamps.len() == 1,
        "the same timer unmasked fired {} times, want 1",
        r.stamps.len()
    );
    Ok(())
}

fn hlt_wakes_on_timer(_: &Ctx) -> TestResult {
    // HLT right after arming a one-shot of 400,000 cycles: RUN must not
    // return (no HLT exit) until the guest's DONE, after the interrupt.
    let period = 25_000 * 16;
    let r = timer_guest(0xe4, DIV16, 25_000, 0, 0)?;
    let rel = r.rel();
    println!(
        "# hlt_wakes_on_timer: fired at {rel:?}, HLT ended at {} cycles, period {period}",
        r.woke.wrapping_sub(r.start)
    );
    ensure!(
        rel.len() == 1 && r.vector == 0xe4,
        "{} timer interrupts while halted, want 1",
        rel.len()
    );
    ensure!(
        (period..=period + HLT_LATE).contains(&rel[0]),
        "the halted vCPU took the timer {} cycles after arming, want {period}..={}",
        rel[0],
        period + HLT_LATE
    );
    ensure!(
        r.woke >= r.stamps[0],
        "HLT ended at {:#x}, before the interrupt at {:#x}",
        r.woke,
        r.stamps[0]
    );
    Ok(())
}

// ---- HLT in the kernel -------------------------------------------------------

fn hlt_wakes_on_msi_from_another_thread(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_HM))?;
    let ready = next_ev_watched(&mut t.vcpu)?;
    ensure!(
        is_out(ready, 0x10),
        "first exit {ready:?}, want the ready OUT"
    );
    let sent = AtomicBool::new(false);
    let (vm, vcpu) = (&t.vm, &mut t.vcpu);
    let (evs, slept) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            sent.store(true, Ordering::SeqCst);
            vm.signal_msi(MSI_ADDR, 0x44)
        });
        let started = Instant::now();
        let evs = trace(vcpu, |ev| {
            ensure!(
                ev != Ev::Out(0x11, 0x44) || sent.load(Ordering::SeqCst),
                "the handler ran before the MSI was sent"
            );
            Ok(())
        });
        let slept = started.elapsed();
        let accepted = sender.join();
        (
            evs.and_then(|e| match accepted {
                Ok(Ok(1)) => Ok(e),
                other => Err(Outcome::Fail(format!(
                    "the MSI from the other thread: {other:?}"
                ))),
            }),
            slept,
        )
    });
    let evs = evs?;
    check(
        "HLT with IF=1, MSI 0x44 from another thread 200 ms later",
        &evs,
        &[vector(0x44), mark(0x12), Want::Done],
    )?;
    ensure!(
        slept >= Duration::from_millis(200),
        "RUN returned after {slept:?}, before the MSI was sent"
    );
    Ok(())
}

fn halted_vcpu_signal_is_eintr(_: &Ctx) -> TestResult {
    catch_sigusr1();
    let mut t = TestVm::long_mode_idt(MEM, code!(G_HS))?;
    let ready = next_ev_watched(&mut t.vcpu)?;
    ensure!(
        is_out(ready, 0x10),
        "first exit {ready:?}, want the ready OUT"
    );
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let kill = move || {
        // SAFETY: the target thread joins this scope's threads first.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
    };
    // HLT with IF=0: a fixed interrupt 100 ms in does not wake it; the
    // signal at 300 ms ends RUN with EINTR.
    let vm = &t.vm;
    let (result, took, accepted) = std::thread::scope(|s| {
        let kicker = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let n = vm.signal_msi(MSI_ADDR, 0x44);
            std::thread::sleep(Duration::from_millis(200));
            kill();
            n
        });
        let started = Instant::now();
        let result = t.vcpu.run();
        let took = started.elapsed();
        (result, took, kicker.join())
    });
    ensure!(
        matches!(accepted, Ok(Ok(1))),
        "MSI 0x44 to the halted vCPU: {accepted:?}, want 1 accepted"
    );
    expect_eintr(
        &mut t,
        result,
        "RUN of a vCPU halted with IF=0, then a signal",
    )?;
    ensure!(
        took >= Duration::from_millis(300),
        "RUN returned after {took:?}: the fixed interrupt woke HLT with IF=0"
    );
    let rip = t.vcpu.regs().ctx("GET_REGS")?.rip as usize;
    ensure!(
        rip > 0 && t.mem.bytes().get(rip - 1) == Some(&0xf4),
        "RIP {rip:#x} after EINTR is not just past the HLT"
    );
    // immediate_exit: EINTR at once, and the vCPU stays halted.
    t.vcpu.run_area().immediate_exit = 1;
    let result = t.vcpu.run();
    t.vcpu.run_area().immediate_exit = 0;
    expect_eintr(&mut t, result, "RUN of the halted vCPU with immediate_exit")?;
    let kicker = crate::vm::signal_later(me as libc::pthread_t, 100);
    let result = t.vcpu.run();
    let _ = kicker.join();
    expect_eintr(&mut t, result, "RUN again: still halted, then a signal")?;
    // An NMI (an MSI with delivery mode 4) ends the halt.
    let vm = &t.vm;
    let evs = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            vm.signal_msi(MSI_ADDR, 4 << 8)
        });
        let evs = trace(&mut t.vcpu, |_| Ok(()));
        match sender.join() {
            Ok(Ok(1)) => evs,
            other => Err(Outcome::Fail(format!(
                "the NMI MSI: {other:?}, want 1 accepted"
            ))),
        }
    })?;
    check(
        "an NMI MSI to the vCPU halted with IF=0",
        &evs,
        &[vector(2), mark(0x12), Want::Done],
    )
}

// ---- Two vCPUs -----------------------------------------------------------------

/// Runs the AP (vCPU 1) on a thread pinned to CPU 1 and the BSP on this
/// thread pinned to CPU 0, each until its DONE; `bsp` is called after each
/// BSP exit, `ap` after each AP exit.
fn run_two(
    t: &mut TestVm,
    mut ap_vcpu: VcpuFd,
    mut bsp: impl FnMut(Ev) -> TestResult,
    ap: impl FnMut(Ev) -> TestResult + Send,
) -> Result<(Vec<Ev>, Vec<Ev>), Outcome> {
    pin(0)?;
    let result = std::thread::scope(|s| {
        let ap_thread = s.spawn(move || {
            pin(1)?;
            trace(&mut ap_vcpu, ap)
        });
        let bsp_evs = trace(&mut t.vcpu, &mut bsp);
        let ap_evs = ap_thread
            .join()
            .unwrap_or_else(|_| Err(Outcome::Fail("the AP thread panicked".into())));
        (bsp_evs, ap_evs)
    });
    allow_all_cpus();
    match result {
        (Ok(b), Ok(a)) => Ok((b, a)),
        (Err(Outcome::Fail(b)), Ok(a)) => {
            Err(Outcome::Fail(format!("BSP: {b}\nAP did: {}", show(&a))))
        }
        (Ok(b), Err(Outcome::Fail(a))) => {
            Err(Outcome::Fail(format!("AP: {a}\nBSP did: {}", show(&b))))
        }
        (Err(b), Err(a)) => Err(Outcome::Fail(format!("BSP: {}\nAP: {}", why(b), why(a)))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn why(o: Outcome) -> String {
    match o {
        Outcome::Fail(s) | Outcome::Skip(s) => s,
    }
}

fn init_sipi_starts_an_ap(_: &Ctx) -> TestResult {
    // The BSP in 32-bit protected mode without paging, so that it reaches
    // the xAPIC page at 0xfee00000 flat.
    let mut t = TestVm::new(MEM)?;
    t.mem.write(CODE as usize, code!(G_BSP1));
    t.mem.write(AP_CODE, code!(G_AP1));
    let s = labguest::protected_mode(t.vcpu.sregs().ctx("GET_SREGS")?);
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    (r.rip, r.rsp, r.rflags) = (CODE, 0x8000, 2);
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    let ap = t.vm.create_vcpu(1).ctx("RVMX_CREATE_VCPU 1")?;
    let sending = AtomicBool::new(false);
    let mut ap_early = false;
    let (bsp, ap_evs) = run_two(
        &mut t,
        ap,
        |ev| {
            if is_out(ev, 0x11) {
                sending.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
        |_| {
            if !sending.load(Ordering::SeqCst) {
                ap_early = true;
            }
            Ok(())
        },
    )?;
    check(
        "BSP (xAPIC MMIO): version, ID, SVR, INIT, SIPI, ICR",
        &bsp,
        &[
            val(0x10, 0x0005_0014),
            val(0x10, 0),
            val(0x10, 0x1ff),
            mark(0x11),
            val(0x10, 0x460a), // delivery status (bit 12) idle
            Want::Done,
        ],
    )?;
    ensure!(!ap_early, "the AP ran before the BSP sent INIT and SIPI");
    let want_cs = u32::from(AP_VECTOR) << 8;
    check(
        "AP after SIPI 0x0a",
        &ap_evs,
        &[
            val(0x10, want_cs),     // CS = vector << 8 (base vector << 12)
            val(0x10, 0),           // IP started at 0
            val(0x10, 0xfee0_0800), // APIC base: enabled, not the BSP
            mark(0x10),
            Want::Done,
        ],
    )?;
    let cr0 = ev_data(ap_evs[3]);
    ensure!(
        cr0 & 0x8000_0001 == 0,
        "the AP's CR0 {cr0:#x}: not in real mode"
    );
    Ok(())
}

/// BSP (long mode, x2APIC) starts the AP (G_AP2); once the AP reported
/// ready and halted, the BSP sends the IPI with ICR low word `icr`.
fn ipi_to_halted_ap(icr: u32, ap_mode: u8, want_vector: u8) -> TestResult {
    let mut t = TestVm::long_mode(MEM, code!(G_BSP2))?;
    t.mem.write(AP_CODE, code!(G_AP2));
    t.mem.write(AP_MODE, &[ap_mode]);
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    r.r8 = u64::from(icr);
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    let ap = t.vm.create_vcpu(1).ctx("RVMX_CREATE_VCPU 1")?;
    let (ready_tx, ready_rx) = mpsc::channel::<Instant>();
    let sent = AtomicBool::new(false);
    let mut woke_after = None;
    let mut ap_ready_at = None;
    let (bsp, ap_evs) = run_two(
        &mut t,
        ap,
        |ev| {
            if is_out(ev, 0x10) {
                // Wait until the AP reported ready, then let it halt.
                let at = ready_rx
                    .recv_timeout(WATCHDOG)
                    .map_err(|_| Outcome::Fail("the AP never reported ready".into()))?;
                std::thread::sleep(Duration::from_millis(200));
                ap_ready_at = Some(at);
                sent.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
        |ev| {
            if is_out(ev, 0x10) {
                let _ = ready_tx.send(Instant::now());
            }
            if is_out(ev, 0x11) {
                woke_after = Some(sent.load(Ordering::SeqCst));
            }
            Ok(())
        },
    )?;
    check("BSP", &bsp, &[mark(0x10), Want::Done])?;
    check(
        "AP",
        &ap_evs,
        &[mark(0x10), vector(want_vector), mark(0x12), Want::Done],
    )?;
    ensure!(
        woke_after == Some(true),
        "the AP's handler ran before the BSP sent the IPI"
    );
    ensure!(ap_ready_at.is_some(), "no ready time");
    Ok(())
}

fn ipi_between_vcpus(_: &Ctx) -> TestResult {
    // Fixed, vector 0x40, to APIC 1, which sleeps in HLT with IF=1.
    ipi_to_halted_ap(0x40, 0, 0x40)
}

fn nmi_by_ipi(_: &Ctx) -> TestResult {
    // Delivery mode NMI (4) to APIC 1, halted with IF=0: only an NMI wakes
    // it, and its handler is vector 2 of its IVT.
    ipi_to_halted_ap(0x400, 1, 2)
}

// ---- RVMX_SIGNAL_MSI ------------------------------------------------------------

fn signal_msi_validates_input(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_MV))?;
    let ready = next_ev_watched(&mut t.vcpu)?;
    ensure!(
        is_out(ready, 0x10),
        "first exit {ready:?}, want the ready OUT"
    );
    let raw = |m: &sys::rvmx_msi| {
        let mut m = *m;
        crate::ioctl::raw(
            &t.vm,
            sys::RVMX_SIGNAL_MSI,
            std::ptr::addr_of_mut!(m) as usize,
        )
        .map_err(std::io::Error::from_raw_os_error)
    };
    let good = sys::rvmx_msi {
        address_lo: MSI_ADDR as u32,
        address_hi: 0,
        data: 0x49,
        flags: 0,
        pad: [0; 16],
    };
    expect_err(
        raw(&sys::rvmx_msi { flags: 1, ..good }),
        libc::EINVAL,
        "MSI with flags 1",
    )?;
    let mut pad = [0; 16];
    pad[15] = 1;
    expect_err(
        raw(&sys::rvmx_msi { pad, ..good }),
        libc::EINVAL,
        "MSI with non-zero padding",
    )?;
    expect_err(
        raw(&sys::rvmx_msi {
            address_lo: 0xfed0_0000,
            ..good
        }),
        libc::EINVAL,
        "MSI to 0xfed00000",
    )?;
    expect_err(
        raw(&sys::rvmx_msi {
            data: 0x349,
            ..good
        }),
        libc::EINVAL,
        "MSI with reserved delivery mode 3",
    )?;
    expect_err(
        crate::ioctl::raw(&t.vm, sys::RVMX_SIGNAL_MSI, 0)
            .map_err(std::io::Error::from_raw_os_error),
        libc::EFAULT,
        "MSI from a NULL pointer",
    )?;
    // No LAPIC matches: 0 accepted, not an error.
    for (what, address) in [
        ("physical destination 5", MSI_ADDR | (5 << 12)),
        (
            "logical destination 2 (LDR is 1)",
            MSI_ADDR | (2 << 12) | (1 << 2),
        ),
    ] {
        let n = msi(&t.vm, address, 0x4a)?;
        ensure!(n == 0, "MSI to {what}: {n} accepted, want 0");
    }
    for (what, address, v) in [
        ("physical destination 0", MSI_ADDR, 0x46u32),
        (
            "logical destination 1",
            MSI_ADDR | (1 << 12) | (1 << 2),
            0x47,
        ),
        ("broadcast 0xff", MSI_ADDR | (0xff << 12), 0x48),
    ] {
        let n = msi(&t.vm, address, v)?;
        ensure!(n == 1, "MSI to {what}: {n} accepted, want 1");
    }
    let evs = trace(&mut t.vcpu, |_| Ok(()))?;
    // Only the three accepted arrive, highest vector first; none of the
    // refused ones (0x49, 0x4a).
    check(
        "after the refused and accepted MSIs",
        &evs,
        &[
            vector(0x48),
            vector(0x47),
            vector(0x46),
            mark(0x12),
            Want::Done,
        ],
    )
}

fn level_triggered_eoi_exits(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_LV))?;
    let vm = &t.vm;
    let evs = trace(&mut t.vcpu, |ev| {
        if is_out(ev, 0x10) {
            msi_to_0(vm, 0x55 | (1 << 15))?; // level-triggered
        }
        if is_out(ev, 0x12) {
            msi_to_0(vm, 0x56)?; // edge-triggered
        }
        Ok(())
    })?;
    check(
        "a level-triggered MSI 0x55, then an edge-triggered 0x56",
        &evs,
        &[
            mark(0x10),
            vector(0x55),
            val(0x14, 1 << 21), // TMR: 0x55 level-triggered
            Want::Eoi(0x55),    // its EOI exits to the VMM
            val(0x15, 0x55),    // and the guest goes on after the WRMSR
            mark(0x12),
            vector(0x56),
            val(0x14, 1 << 21), // 0x56 edge: its TMR bit clear (0x55 keeps its own)
            val(0x15, 0x56),    // no EOI exit
            mark(0x13),
            Want::Done,
        ],
    )
}

fn xapic_mmio_interrupts_and_level_eoi(_: &Ctx) -> TestResult {
    // 32-bit protected mode without paging: the xAPIC page is reachable
    // flat. A GDT (code 0x8, data 0x10) and an IDT the guest fills.
    let mut t = TestVm::new(MEM)?;
    t.mem.write(CODE as usize, code!(G_X32));
    for (i, d) in [0u64, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff]
        .iter()
        .enumerate()
    {
        t.mem.write_u64(0x2000 + 8 * i, *d);
    }
    let mut s = labguest::protected_mode(t.vcpu.sregs().ctx("GET_SREGS")?);
    (s.gdt.base, s.gdt.limit) = (0x2000, 0x17);
    (s.idt.base, s.idt.limit) = (0x3000, 256 * 8 - 1);
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    (r.rip, r.rsp, r.rflags) = (CODE, 0x8000, 2);
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    let vm = &t.vm;
    let mut after_eoi = 0u64;
    let mut rip_at_eoi = None;
    let evs = trace_with_vcpu(&mut t.vcpu, |vcpu, ev| {
        match ev {
            Ev::Out(0x16, addr) => after_eoi = u64::from(addr),
            Ev::Out(0x10, _) => msi_to_0(vm, 0x55 | (1 << 15))?,
            Ev::Out(0x12, _) => msi_to_0(vm, 0x56)?,
            Ev::Eoi(_) => rip_at_eoi = Some(vcpu.regs().ctx("GET_REGS")?.rip),
            _ => {}
        }
        Ok(())
    })?;
    check(
        "xAPIC mode: a level-triggered MSI 0x55, then an edge-triggered 0x56",
        &evs,
        &[
            mark(0x16),
            mark(0x10),
            val(0x11, 1 << 21), // ISR (through the page): 0x55 in service
            val(0x14, 1 << 21), // TMR: level-triggered
            Want::Eoi(0x55),    // the EOI write to the page exits to the VMM
            val(0x15, 0),       // ISR after the EOI
            mark(0x12),
            val(0x11, 1 << 22), // 0x56 in service
            val(0x14, 1 << 21), // 0x56 edge-triggered
            val(0x15, 0),       // EOI, no exit
            mark(0x13),
            Want::Done,
        ],
    )?;
    // The EOI is complete when its exit reaches the VMM (as the WRMSR EOI
    // of x2APIC mode is): RIP is past the MMIO write, so a VMM that saves
    // and restores the registers there does not end a second interrupt.
    ensure!(
        rip_at_eoi == Some(after_eoi),
        "RIP at the EOI exit {rip_at_eoi:x?}, want {after_eoi:#x} (past the EOI write)"
    );
    Ok(())
}

fn msi_to_a_software_disabled_lapic_is_dropped(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_DIS))?;
    let vm = &t.vm;
    let mut accepted = None;
    let evs = trace(&mut t.vcpu, |ev| {
        if is_out(ev, 0x10) {
            accepted = Some(msi(vm, MSI_ADDR, 0x4b)?);
        }
        Ok(())
    })?;
    check(
        "MSI 0x4b to the software-disabled APIC, then SVR enabled and STI",
        &evs,
        &[mark(0x10), mark(0x12), Want::Done],
    )?;
    // A software-disabled local APIC does not accept fixed interrupts
    // (rvmx drops them, as above): the count says so (KVM also returns 0).
    ensure!(
        accepted == Some(0),
        "RVMX_SIGNAL_MSI to the software-disabled APIC returned {accepted:?} accepted, want 0"
    );
    Ok(())
}
