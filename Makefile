# rvmx top-level targets. See README.md.
#
#   make setup   install what the lab needs (Debian 12, as root; idempotent)
#   make         build rvmx.ko and the userspace binaries into build/
#   make check   host unit tests + the selftests inside the lab VM
#   make demo    boot the lab, load rvmx, boot Linux on it with 2 vCPUs and use its shell
#   make bench   rvmx vs KVM exit costs; guest boot time and vmmctl memory per backend
#   make fuzz    the ioctl fuzzer in the lab: [CALLS=N] [SEED=S] [RACE=K]
#
# KDIR=<tree> builds rvmx.ko against another Rust-enabled 7.x kernel tree
# (default: the lab's test kernel, built and cached by scripts/build-kernel);
# KBUILD_ARGS then says how that tree was built, e.g. KBUILD_ARGS=LLVM=1.
# DISTRO=debian-7.3 builds build/debian-7.3/rvmx.ko for Debian 13's own
# 7.3.4+deb13-amd64 kernel instead (scripts/build-distro; needs root).
#
#   make check-debian   the same rvmx.ko and the lab suites on Debian 13's
#                       unmodified kernel (scripts/check --kernel debian)
export KDIR KBUILD_ARGS DISTRO

CARGO ?= /usr/bin/cargo
RUSTC ?= /usr/bin/rustc
# Static binaries, so the lab's initramfs needs no libc.
TARGET := x86_64-unknown-linux-gnu
CARGO_STATIC := RUSTC=$(RUSTC) RUSTFLAGS="-C target-feature=+crt-static" \
	$(CARGO) build --release --locked --target $(TARGET)

.PHONY: all setup module userspace guest check check-debian demo bench fuzz clean

all: module userspace guest

setup:
	@scripts/setup

uapi/src/bindings.rs: uapi/rvmx.h scripts/gen-uapi
	scripts/gen-uapi

module: setup uapi/src/bindings.rs
	@scripts/build-module

userspace: setup
	@echo "==> vmmctl, rvmx-selftests, rvmx-fuzz, rvmx-bench, guest-init (static)"
	@$(CARGO_STATIC) -p vmmctl -p rvmx-selftests -p rvmx-fuzz -p rvmx-bench -p guest-init
	@mkdir -p build/bin && cp $(addprefix target/$(TARGET)/release/,vmmctl rvmx-selftests rvmx-fuzz rvmx-bench) build/bin/

# What vmmctl's lab tests boot: an initramfs around guest-init, and a
# multiboot kernel assembled from guest/multiboot/.
guest: userspace
	@scripts/build-guest

check: all
	@scripts/check

check-debian: all
	@scripts/check --kernel debian

demo: all
	@scripts/lab run --cpus 2 --add build/guest/initramfs.cpio.gz:/guest/test-initramfs.cpio.gz \
		--add scripts/lab.d/demo:/usr/bin/rvmx-demo -- rvmx-demo

# Exit and interrupt costs: one Bochs CPU, as the reference figures in
# docs/design.md; rvmx (as loaded by default, every APIC access emulated;
# then with apicv=1, the processor's APIC virtualization) and kvm_intel
# cannot hold VMX at once, so they take turns (kvm_intel with enable_apicv=0: Bochs' posted-interrupt bug,
# see docs/testing.md). Then the two-vCPU IPI rows on two Bochs CPUs, where the vCPU
# threads run in parallel. Then vmmctl's boot time and memory per backend
# (scripts/bench). A row that fails shows as FAILED in the table and fails
# the target.
BENCH_RUN = modprobe rvmx && { rvmx-bench run rvmx $(1) >/tmp/rvmx; r=$$?; } && rmmod rvmx && \
	modprobe rvmx apicv=1 && { rvmx-bench run rvmx $(1) >/tmp/rvmx-apicv; e=$$?; } && rmmod rvmx && \
	modprobe kvm_intel enable_apicv=0 && { rvmx-bench run kvm $(1) >/tmp/kvm; k=$$?; } && \
	rvmx-bench table rvmx=/tmp/rvmx rvmx-apicv=/tmp/rvmx-apicv kvm=/tmp/kvm && [ $$r$$e$$k = 000 ]

bench: all
	@scripts/lab run --cpus 1 --quiet --log build/lab/bench-1cpu.log -- '$(call BENCH_RUN,1vcpu)'
	@scripts/lab run --cpus 2 --quiet --log build/lab/bench-2cpus.log -- '$(call BENCH_RUN,2vcpus)'
	@scripts/bench

# The ioctl fuzzer in the lab (2 CPUs, so a vCPU runs on one while the
# other changes its VM): CALLS ioctls from SEED, then the host checks
# (kernel log, module refcount, rmmod). A failing seed replays with
# SEED=<it> (the races' timing does not replay; RACE=0 leaves them out).
CALLS ?= 100000
SEED ?= 1
RACE ?= 200
FUZZ_TIMEOUT ?= 3600
fuzz: all
	@scripts/lab run --cpus 2 --quiet --timeout $(FUZZ_TIMEOUT) --log build/lab/fuzz.log -- \
		'rvmx-fuzz --calls $(CALLS) --seed $(SEED) --race-every $(RACE)'

clean:
	rm -rf build target rvmx.ko rvmx.mod* rvmx.o rvmx/*.o rvmx/.*.cmd .*.cmd modules.order Module.symvers
