# Shared helpers for the rvmx scripts. Sourced, not run.

RVMX_CACHE=${RVMX_CACHE:-$HOME/.cache/rvmx}
BINDGEN=$RVMX_CACHE/bindgen-0.72.1/bin/bindgen
BOCHS=$RVMX_CACHE/bochs-3.0+dfsg-1/bin/bochs

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# The kernel's Rust toolchain is Debian's (rustc-web, cargo-web), never rustup's.
KRUSTC=/usr/bin/rustc
KCARGO=/usr/bin/cargo

# How the test kernel, and every module built against it, is compiled.
# Plain LLVM=1 would pick Debian 12's clang 14, which cannot build it.
KMAKE_FLAGS=(ARCH=x86_64 LLVM=-22 RUSTC="$KRUSTC" HOSTRUSTC="$KRUSTC" BINDGEN="$BINDGEN")
