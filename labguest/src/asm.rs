//! Guest code assembled into the binary that runs it (`guest!`, `code!`),
//! and the assembly snippets the long-mode interrupt guests share: x2APIC
//! on, EOI, the end of a `write_idt` handler, a 64-bit RDTSC, the handler
//! address. The selftests and the benchmark both build their guests from
//! these.

/// Assembles a guest blob into the calling binary: `$name` labels a header
/// (the length, then padding) followed by the code, in its own section so
/// that `.balign` inside it is relative to the code's start. Labels must be
/// unique in the whole binary: each blob prefixes its own with its name.
/// `<name>_s` is the first byte of the code, for label offsets in 16- and
/// 32-bit code (64-bit code uses RIP-relative addresses). Also declares
/// `$name` as an extern static in the calling module, for `code!`.
#[macro_export]
macro_rules! guest {
    ($name:ident, $($asm:expr),* $(,)?) => {
        ::core::arch::global_asm!(
            ::core::concat!(".pushsection .rodata.rvmx_guest.", ::core::stringify!($name), ",\"a\",@progbits"),
            ".balign 16",
            ::core::concat!(".globl ", ::core::stringify!($name)),
            ::core::concat!(".hidden ", ::core::stringify!($name)),
            ::core::concat!(::core::stringify!($name), ":"),
            ::core::concat!(".quad ", ::core::stringify!($name), "_e - ", ::core::stringify!($name), "_s, 0"),
            ::core::concat!(::core::stringify!($name), "_s:"),
            $($asm,)*
            ::core::concat!(::core::stringify!($name), "_e:"),
            ".code64",
            ".popsection",
        );
        extern "C" {
            static $name: u64;
        }
    };
}

/// The bytes of a `guest!` blob, as `&'static [u8]`.
#[macro_export]
macro_rules! code {
    ($name:ident) => {
        // SAFETY: `$name` is a header `guest!` assembled: the length, 8
        // bytes of padding, then that many bytes of code, all read-only.
        unsafe { $crate::blob(::core::ptr::addr_of!($name)) }
    };
}

/// The code of the `guest!` blob whose header is at `header`.
///
/// # Safety
/// `header` must be the header of a `guest!` blob.
pub unsafe fn blob(header: *const u64) -> &'static [u8] {
    std::slice::from_raw_parts(header.add(2).cast::<u8>(), *header as usize)
}

/// IA32_APIC_BASE |= EN | EXTD (x2APIC mode), then SVR = 0x1ff (software
/// enabled, spurious vector 0xff). Clobbers RAX, RCX, RDX.
#[macro_export]
macro_rules! x2apic_on {
    () => {
        "mov ecx, 0x1b
        rdmsr
        or eax, 0xc00
        wrmsr
        mov ecx, 0x80f
        mov eax, 0x1ff
        xor edx, edx
        wrmsr"
    };
}

/// x2APIC EOI (clobbers RAX, RCX, RDX).
#[macro_export]
macro_rules! eoi {
    () => {
        "mov ecx, 0x80b
        xor eax, eax
        xor edx, edx
        wrmsr"
    };
}

/// The end of a handler entered through a `write_idt` stub.
#[macro_export]
macro_rules! iret64 {
    () => {
        "pop rdx
        pop rcx
        pop rax
        iretq"
    };
}

/// RAX = the full TSC (clobbers RDX).
#[macro_export]
macro_rules! rdtsc64 {
    () => {
        "rdtsc
        shl rdx, 32
        or rax, rdx"
    };
}

/// Stores the address of `$label` where the stubs jump through
/// (`HANDLER_PTR`). Clobbers RAX.
#[macro_export]
macro_rules! set_handler {
    ($label:ident) => {
        ::core::concat!(
            "lea rax, [rip + ",
            ::core::stringify!($label),
            "]\nmov qword ptr [0x2f00], rax"
        )
    };
}

const _: () = assert!(crate::HANDLER_PTR == 0x2f00, "set_handler! hard-codes it");
