package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/tpm"
)

// verifyCarried verifies the chain in dir and the live log against a fresh
// quote. The AK recreated in this TPM is the pinned key, so a shard signed
// by any other key fails with shard.ErrWrongAK.
func verifyCarried(ctx context.Context, rep *bootReport, t *tpm.TPM, ak *tpm.AK, dir, logPath string, logOpts imalog.Options) error {
	// A kernel with CONFIG_IMA_KEXEC carries the list over, and a trimmed
	// list starts later in the history; openLiveList finds where.
	list, err := openLiveList(dir, logPath, logOpts)
	if err != nil {
		rep.Result = bootFailed
		return fmt.Errorf("place the live log after the carried shards: %w", err)
	}
	r, err := shard.Verify(ctx, shard.VerifyOptions{
		Dir:      dir,
		AKPublic: ak.PublicKey,
		Live: &shard.LiveOptions{TPM: t, AK: ak, LogPath: logPath, LogOptions: logOpts,
			LiveFirstIndex: list.first, OpenLog: list.open},
	})
	if r != nil {
		rep.Verify = r
	}
	if err != nil {
		rep.Result = bootFailed
		rep.ErrorKind = verifyErrorKind(err)
		return fmt.Errorf("verify %d carried shards and the live log: %w", len(rep.Carried), err)
	}
	rep.OK = r != nil && r.OK
	rep.Result = bootVerified
	if !rep.OK {
		rep.Result = bootFailed
	}
	return nil
}

// verifyErrorKinds name the shard verification failures for programs that
// read the JSON report.
var verifyErrorKinds = []struct {
	kind string
	err  error
}{
	{"bad-signature", shard.ErrBadSignature},
	{"wrong-ak", shard.ErrWrongAK},
	{"header-mismatch", shard.ErrHeaderMismatch},
	{"replay-mismatch", shard.ErrReplayMismatch},
	{"gap", shard.ErrGap},
	{"duplicate", shard.ErrDuplicate},
	{"reorder", shard.ErrReorder},
	{"missing-shard", shard.ErrMissingShard},
	{"reset-detected", shard.ErrResetDetected},
	{"truncated", shard.ErrTruncated},
	{"unknown-version", shard.ErrUnknownVersion},
	{"no-prefix-match", shard.ErrNoPrefixMatch},
	{"malformed", shard.ErrMalformed},
}

func verifyErrorKind(err error) string {
	for _, k := range verifyErrorKinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return "other"
}
