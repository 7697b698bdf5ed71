# imashard build, test and demo targets. Run `make help` for the list.

GO ?= go
BIN := bin/imashard
GOFLAGS_BUILD := -trimpath -ldflags='-s -w -buildid='
# Seconds each fuzz target runs during `make test`.
FUZZTIME ?= 10s

# Debian suite of the stock kernel for QEMU runs: bookworm, trixie or sid.
KERNEL_SUITE ?= bookworm
INITRAMFS := bin/initramfs.cpio
KERNEL_PATH_FILE := bin/kernel-$(KERNEL_SUITE).path

.PHONY: help deps build test unit fuzz vet clean kernel initramfs qemu-test qemu-test-sid demo bench-kexec bench-replay bench-verify

help:
	@echo "make build   static, stripped bin/imashard (CGO_ENABLED=0)"
	@echo "make test    every test: unit, swtpm, short fuzz runs, QEMU scenarios"
	@echo "make demo    QEMU + swtpm: snapshot, kexec twice, verify, report"
	@echo "make deps    install the Debian packages the tests need (as root)"
	@echo "make kernel  download Debian's kernel (KERNEL_SUITE=bookworm|trixie|sid) into ~/.cache/imashard"
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

test: deps vet build unit fuzz qemu-test qemu-test-sid

# The path of the extracted image goes to a file so that later targets
# find it without resolving the version again.
kernel:
	@mkdir -p bin
	KERNEL_SUITE=$(KERNEL_SUITE) ./scripts/fetch-kernel.sh > $(KERNEL_PATH_FILE).tmp
	mv $(KERNEL_PATH_FILE).tmp $(KERNEL_PATH_FILE)
	@echo "kernel: $$(cat $(KERNEL_PATH_FILE)) version $$(cat $$(dirname $$(cat $(KERNEL_PATH_FILE)))/version)"

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

bench-replay:
	./scripts/bench-replay.sh

clean:
	rm -rf bin

# Verify time and peak memory on chains of 10,000 and 100,000 entries; not
# part of `make test`. Pass other sizes with BENCH_SIZES="1000000".
BENCH_SIZES ?= 10000 100000
bench-verify:
	./scripts/bench-verify.sh $(BENCH_SIZES)
