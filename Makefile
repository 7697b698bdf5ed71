# imashard build, test and demo targets. Run `make help` for the list.

GO ?= go
BIN := bin/imashard
GOFLAGS_BUILD := -trimpath -ldflags='-s -w -buildid='
# Budget of each fuzz target during `make test`, as a -fuzztime value. A
# count of executions (Nx) rather than a duration, because Go 1.26's fuzz
# coordinator can fail a duration-bounded run with "context deadline
# exceeded" and no crashing input (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 50000x

# Debian suite of the stock kernel for QEMU runs: bookworm, trixie or sid.
KERNEL_SUITE ?= bookworm
INITRAMFS := bin/initramfs.cpio

# KERNEL=custom makes `kernel` and the QEMU scenarios use Linux 7.2 built
# with CONFIG_IMA_KEXEC and CONFIG_IMA_STAGING from Debian sid's
# linux-source package (scripts/build-custom-kernel.sh). The bzImage is
# cached under $${XDG_CACHE_HOME:-$$HOME/.cache}/imashard/kernels/.
KERNEL ?= stock
CUSTOM_KERNEL := bin/kernels/custom/bzImage
ifeq ($(KERNEL),custom)
KERNEL_PATH_FILE := bin/kernel-custom.path
else
KERNEL_PATH_FILE := bin/kernel-$(KERNEL_SUITE).path
endif

.PHONY: help deps build test unit fuzz vet clean kernel initramfs qemu-test custom-kernel test-custom qemu-test-sid demo bench-kexec bench-replay bench-verify

help:
	@echo "make build   static, stripped bin/imashard (CGO_ENABLED=0)"
	@echo "make test    every test: unit, swtpm, short fuzz runs, QEMU scenarios"
	@echo "make demo    QEMU + swtpm: snapshot, kexec twice, verify, report"
	@echo "make deps    install the Debian packages the tests need (as root)"
	@echo "make kernel  download Debian's kernel (KERNEL_SUITE=bookworm|trixie|sid) into ~/.cache/imashard"
	@echo "make kernel KERNEL=custom  build or reuse the Linux 7.2 kernel with IMA_KEXEC and IMA_STAGING"
	@echo "make initramfs  u-root initramfs with imashard at $(INITRAMFS)"
	@echo "make bench-replay  imashard log replay against evmctl on 1,000,000 entries"

deps:
	./scripts/install-deps.sh
	$(GO) mod download

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/imashard

vet:
	$(GO) vet ./...

unit: deps
	$(GO) test ./...

fuzz:
	./scripts/fuzz-all.sh $(FUZZTIME)

test: deps vet build unit fuzz qemu-test qemu-test-sid test-custom

# The path of the extracted image goes to a file so that later targets
# find it without resolving the version again.
kernel:
	@mkdir -p bin
ifeq ($(KERNEL),custom)
	./scripts/build-custom-kernel.sh $(CUSTOM_KERNEL) > $(KERNEL_PATH_FILE).tmp
	mv $(KERNEL_PATH_FILE).tmp $(KERNEL_PATH_FILE)
	@echo "kernel: $$(cat $(KERNEL_PATH_FILE))"
else
	KERNEL_SUITE=$(KERNEL_SUITE) ./scripts/fetch-kernel.sh > $(KERNEL_PATH_FILE).tmp
	mv $(KERNEL_PATH_FILE).tmp $(KERNEL_PATH_FILE)
	@echo "kernel: $$(cat $(KERNEL_PATH_FILE)) version $$(cat $$(dirname $$(cat $(KERNEL_PATH_FILE)))/version)"
endif

custom-kernel:
	./scripts/build-custom-kernel.sh $(CUSTOM_KERNEL)

initramfs:
	./scripts/build-initramfs.sh $(INITRAMFS)

# QEMU scenarios; the Go tests skip when these variables are missing.
qemu-test: kernel initramfs
	IMASHARD_KERNEL=$$(cat $(KERNEL_PATH_FILE)) IMASHARD_INITRAMFS=$(CURDIR)/$(INITRAMFS) \
		$(GO) test -count=1 -timeout 40m -v ./qemu/...

# The demo's three boots again on Debian sid's kernel (7.2 at the time of
# writing), which has the per-bank measurement lists that 6.1 lacks.
qemu-test-sid: initramfs
	$(MAKE) kernel KERNEL_SUITE=sid
	IMASHARD_KERNEL=$$(cat bin/kernel-sid.path) IMASHARD_INITRAMFS=$(CURDIR)/$(INITRAMFS) \
		$(GO) test -count=1 -timeout 20m -v -run 'TestDemoThreeBoots|TestLiveLogReplaysToTPM' ./qemu/

demo: deps kernel build initramfs
	IMASHARD_KERNEL=$$(cat $(KERNEL_PATH_FILE)) IMASHARD_INITRAMFS=$(CURDIR)/$(INITRAMFS) \
		$(GO) run ./qemu/demo -imashard $(BIN)

bench-kexec:
	./scripts/bench-kexec.sh

# Tests that need the custom kernel: package tests with the test binary as
# /init (pkg/securityfs, pkg/trim) and the trim scenarios of the harness.
test-custom: custom-kernel initramfs
	IMASHARD_CUSTOM_KERNEL=$(CURDIR)/$(CUSTOM_KERNEL) $(GO) test -count=1 ./pkg/securityfs/... ./pkg/trim/...
	IMASHARD_CUSTOM_KERNEL=$(CURDIR)/$(CUSTOM_KERNEL) IMASHARD_INITRAMFS=$(CURDIR)/$(INITRAMFS) \
		$(GO) test -count=1 -timeout 20m -v -run 'TestTrim' ./qemu/

bench-replay:
	./scripts/bench-replay.sh

clean:
	rm -rf bin

# Verify time and peak memory on chains of 10,000 and 100,000 entries; not
# part of `make test`. Pass other sizes with BENCH_SIZES="1000000".
BENCH_SIZES ?= 10000 100000
bench-verify:
	./scripts/bench-verify.sh $(BENCH_SIZES)
