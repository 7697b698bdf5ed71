# imashard build, test and demo targets. Run `make help` for the list.

GO ?= go
BIN := bin/imashard
GOFLAGS_BUILD := -trimpath -ldflags='-s -w -buildid='
# Seconds each fuzz target runs during `make test`.
FUZZTIME ?= 10s

.PHONY: help deps build test unit fuzz vet clean kernel custom-kernel test-custom

# KERNEL selects the kernel the QEMU scenarios boot. KERNEL=custom builds
# Linux 7.2 with CONFIG_IMA_KEXEC and CONFIG_IMA_STAGING from Debian sid's
# linux-source package (scripts/build-custom-kernel.sh); the bzImage is
# cached under $${XDG_CACHE_HOME:-$$HOME/.cache}/imashard/kernels/.

CUSTOM_KERNEL := bin/kernels/custom/bzImage

help:
	@echo "make build   static, stripped bin/imashard (CGO_ENABLED=0)"
	@echo "make test    every test: unit, swtpm, short fuzz runs, QEMU scenarios"
	@echo "make demo    QEMU + swtpm: snapshot, kexec twice, verify, report"
	@echo "make deps    install the Debian packages the tests need (as root)"
	@echo "make kernel KERNEL=custom   build or reuse the custom Linux 7.2 test kernel"

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

ifeq ($(KERNEL),custom)
kernel: custom-kernel
endif

custom-kernel:
	./scripts/build-custom-kernel.sh $(CUSTOM_KERNEL)

# Package tests that boot the custom kernel under QEMU.
test-custom: custom-kernel
	IMASHARD_CUSTOM_KERNEL=$(CURDIR)/$(CUSTOM_KERNEL) $(GO) test -count=1 ./pkg/securityfs/... ./pkg/trim/...

test: deps vet build unit fuzz test-custom

clean:
	rm -rf bin
