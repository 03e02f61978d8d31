# Shared helpers for the rvmx scripts. Sourced, not run.

RVMX_CACHE=${RVMX_CACHE:-$HOME/.cache/rvmx}
BINDGEN=$RVMX_CACHE/bindgen-0.72.1/bin/bindgen

# Bochs is built by scripts/setup from Debian's source package, with the
# patches in scripts/bochs/ (docs/testing.md says why each is there), and
# cached under a name keyed by the version, the configure flags and the
# patches: a changed or added patch builds a new one. BOCHS=<binary> in the
# environment runs another build instead.
BOCHS_SRC_VERSION=3.0+dfsg-1
BOCHS_CONFIGURE=(--with-nogui --disable-plugins --enable-x86-64 --enable-vmx=2
	--enable-smp --enable-cpu-level=6 --enable-all-optimizations --enable-avx
	--enable-evex --enable-pci --enable-a20-pin --enable-fpu --enable-repeat-speedups
	--enable-handlers-chaining --enable-trace-linking --enable-debugger=no)
BOCHS_PATCHES=("$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"/bochs/*.patch)
BOCHS_KEY=$({
	echo "$BOCHS_SRC_VERSION ${BOCHS_CONFIGURE[*]}"
	cat "${BOCHS_PATCHES[@]}"
} | sha256sum | cut -c1-12)
BOCHS_DIR=$RVMX_CACHE/bochs-$BOCHS_SRC_VERSION-$BOCHS_KEY
BOCHS=${BOCHS:-$BOCHS_DIR/bin/bochs}

# Debian 12's own kernel, unmodified: a second guest for vmmctl's lab tests
# (scripts/setup fetches it from Debian's archive and caches it here).
DEBIAN_KERNEL=$RVMX_CACHE/debian-kernel/vmlinuz

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
