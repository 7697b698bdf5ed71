# imashard build, test and demo targets. Run `make help` for the list.

GO ?= go
BIN := bin/imashard
GOFLAGS_BUILD := -trimpath -ldflags='-s -w -buildid='
# Seconds each fuzz target runs during `make test`.
FUZZTIME ?= 10s

.PHONY: help deps build test unit fuzz vet clean bench-replay qemu-log

help:
	@echo "make build   static, stripped bin/imashard (CGO_ENABLED=0)"
	@echo "make test    every test: unit, swtpm, short fuzz runs, QEMU scenarios"
	@echo "make demo    QEMU + swtpm: snapshot, kexec twice, verify, report"
	@echo "make deps    install the Debian packages the tests need (as root)"
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

test: deps vet build unit fuzz qemu-log

bench-replay:
	./scripts/bench-replay.sh

# Boots Debian's 6.1 and 6.12 kernels with swtpm and replays the live list
# in the guest, one VM at a time.
qemu-log: deps
	KERNEL_SUITE=bookworm ./scripts/qemu-log/run.sh
	KERNEL_SUITE=trixie ./scripts/qemu-log/run.sh

clean:
	rm -rf bin
