package main

import (
	"errors"
	"io"
	"log/slog"
	"time"
)

// tpmAttempts bounds retryTPM. Under QEMU's TCG on a loaded host the kernel
// TPM driver now and then fails a command and /dev/tpmrm0 returns an empty
// read (io.EOF); the same command succeeds when sent again.
const tpmAttempts = 3

// retryTPM runs fn again when it fails with io.EOF from the TPM device, and
// returns its last error otherwise.
func retryTPM(what string, fn func() error) error {
	var err error
	for attempt := 1; attempt <= tpmAttempts; attempt++ {
		err = fn()
		if err == nil || !errors.Is(err, io.EOF) {
			return err
		}
		slog.Warn("TPM command failed with an empty response; retrying", "step", what, "attempt", attempt, "err", err)
		time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
	}
	return err
}
