// Package tpm reads PCRs, derives an attestation key (AK) and makes quotes
// with a TPM 2.0 through go-tpm's tpm2 API, and verifies quotes without a
// TPM. It needs no TPM software stack, no resource manager daemon and no
// persistent storage, so it runs in a bare initramfs.
package tpm

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// Errors from talking to a TPM. Verification errors are in verify.go.
var (
	// ErrNoDevice reports a TPM device or socket that cannot be opened.
	ErrNoDevice = errors.New("TPM not reachable")
	// ErrBankNotAllocated reports a PCR bank the TPM has not allocated.
	ErrBankNotAllocated = errors.New("PCR bank not allocated")
	// ErrInvalidPCR reports a PCR index outside the TPM's PCR range.
	ErrInvalidPCR = errors.New("invalid PCR index")
	// ErrNonceTooLarge reports qualifying data longer than the TPM accepts.
	ErrNonceTooLarge = errors.New("nonce too large")
	// ErrNotAK reports a key that cannot sign quotes.
	ErrNotAK = errors.New("key is not a restricted signing key")
)

// TPM is an open connection to one TPM. It is not safe for concurrent use.
type TPM struct {
	spec string
	tpm  *retryTPM

	// flushAll is set when no resource manager sits between imashard and
	// the TPM, so every transient object must be flushed explicitly.
	flushAll bool
	// loaded contains the transient handles of AKs not yet flushed.
	loaded map[tpm2.TPMHandle]bool
}

// Open connects to a TPM. spec is "" or "/dev/tpmrm0" for the kernel's
// resource manager, "/dev/tpm0" for the raw device, "unix:PATH" for a swtpm
// unix socket, "tcp:HOST:PORT" for the raw command stream over TCP (swtpm
// --server type=tcp), or "mssim:HOST:PORT" for the Microsoft simulator's
// protocol. swtpm serves one connection at a time, so on a socket other
// clients wait until Close.
func Open(spec string) (*TPM, error) {
	raw, hasResourceManager, err := openTransport(spec)
	if err != nil {
		return nil, err
	}
	if spec == "" {
		spec = DefaultDevice
	}

	t := &TPM{
		spec:     spec,
		tpm:      &retryTPM{raw: raw, maxAttempts: 8, firstBackoff: 20 * time.Millisecond},
		flushAll: !hasResourceManager,
		loaded:   make(map[tpm2.TPMHandle]bool),
	}
	return t, nil
}

// Close closes the connection. Without a resource manager (/dev/tpm0, swtpm
// sockets) it first flushes the AKs the caller did not flush, because the
// TPM would keep them loaded and run out of object slots.
func (t *TPM) Close() error {
	var errs []error
	if t.flushAll {
		for handle := range t.loaded {
			slog.Warn("flushing an AK left loaded at Close", "handle", fmt.Sprintf("%#08x", uint32(handle)))
			errs = append(errs, t.flush(handle))
		}
	}
	clear(t.loaded)
	errs = append(errs, t.tpm.raw.Close())
	return errors.Join(errs...)
}

// Spec returns the spec the TPM was opened with.
func (t *TPM) Spec() string { return t.spec }

// explain wraps a TPM error with what failed and, for the errors a user can
// act on, what to do. It keeps the go-tpm error in the chain for errors.Is.
func explain(op string, err error) error {
	if err == nil {
		return nil
	}

	var hint string
	switch {
	case errors.Is(err, tpm2.TPMRCLockout):
		hint = "the TPM is in dictionary-attack lockout: wait for the lockout to expire or clear it with the lockout authorization (tpm2_dictionarylockout --clear-lockout)"
	case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
		hint = "authorization failed: imashard uses the empty authorization value, so the endorsement hierarchy or the key has a password set"
	case errors.Is(err, tpm2.TPMRCObjectMemory), errors.Is(err, tpm2.TPMRCSessionMemory):
		hint = "the TPM is out of object or session slots: another program left transient objects loaded (tpm2_flushcontext -t) or use /dev/tpmrm0"
	case errors.Is(err, tpm2.TPMRCInitialize):
		hint = "the TPM has not been started: firmware must send TPM2_Startup (tpm2_startup -c for a simulator)"
	case errors.Is(err, tpm2.TPMRCFailure):
		hint = "the TPM is in failure mode: it needs a reset or a firmware update"
	case errors.Is(err, tpm2.TPMRCRetry), errors.Is(err, tpm2.TPMRCYielded), errors.Is(err, tpm2.TPMRCTesting):
		hint = "the TPM stayed busy after several retries: try again later"
	}
	if hint != "" {
		return fmt.Errorf("%s: %w: %s", op, err, hint)
	}
	return fmt.Errorf("%s: %w", op, err)
}
