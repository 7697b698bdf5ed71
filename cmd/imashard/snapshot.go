package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/tpm"
	"github.com/imashard/imashard/pkg/trim"
)

// logFlags are the flags of every command that reads an IMA list.
type logFlags struct {
	path      *string
	digestAlg *string
	size      *int
	order     *string
}

func addLogFlags(fs *flag.FlagSet) *logFlags {
	return &logFlags{
		path:      fs.String("log", "", "IMA binary measurement list `file` (default: the live securityfs list "+shard.DefaultLogPath+")"),
		digestAlg: fs.String("log-alg", "", "template digest `algorithm` of the list (default: from the file name; sha1 for binary_runtime_measurements)"),
		size:      fs.Int("log-digest-size", 0, "template digest field size in `bytes`, for binary_runtime_measurements_tpm_alg_<hex> lists (default: the algorithm's size)"),
		order:     fs.String("byte-order", "auto", "byte order of the list's integers: auto, little or big"),
	}
}

func (l *logFlags) options() (string, imalog.Options, error) {
	path := *l.path
	if path == "" {
		path = shard.DefaultLogPath
	}
	var opts imalog.Options
	if info, ok := imalog.InfoFromFileName(path); ok {
		if info.ASCII {
			return "", opts, fmt.Errorf("%w: --log %s is an ASCII list; shards keep the binary list byte-exact, so pass binary_runtime_measurements", errUsage, path)
		}
		opts = info.Options
	}
	if *l.digestAlg != "" {
		alg, err := pcr.ParseAlg(*l.digestAlg)
		if err != nil {
			return "", opts, fmt.Errorf("%w: --log-alg: %v", errUsage, err)
		}
		opts.DigestAlg = alg
	}
	if *l.size < 0 {
		return "", opts, fmt.Errorf("%w: --log-digest-size %d is negative", errUsage, *l.size)
	}
	if *l.size > 0 {
		opts.DigestSize = *l.size
	}
	order, err := imalog.ParseByteOrder(*l.order)
	if err != nil {
		return "", opts, fmt.Errorf("%w: --byte-order: %v", errUsage, err)
	}
	opts.ByteOrder = order
	return path, opts, nil
}

// tpmAKFlags select the TPM and the AK inside it.
type tpmAKFlags struct {
	tpm    *string
	alg    *string
	handle *string
}

func addTPMAKFlags(fs *flag.FlagSet) *tpmAKFlags {
	return &tpmAKFlags{
		tpm:    fs.String("tpm", "", tpmFlagHelp+" (default /dev/tpmrm0)"),
		alg:    fs.String("ak-alg", "ecc", "AK algorithm when the AK is derived: ecc (NIST P-256) or rsa (RSA-2048)"),
		handle: fs.String("ak-handle", "", "persistent AK `handle` such as 0x81010002 (default: derive the AK from the endorsement hierarchy)"),
	}
}

// open opens the TPM and loads the AK. The caller closes both with the
// returned function.
func (a *tpmAKFlags) open() (*tpm.TPM, *tpm.AK, func(), error) {
	if *a.alg != "ecc" && *a.alg != "rsa" {
		return nil, nil, nil, fmt.Errorf("%w: --ak-alg %q: use ecc or rsa", errUsage, *a.alg)
	}
	var handle uint64
	if *a.handle != "" {
		h, err := strconv.ParseUint(*a.handle, 0, 32)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: --ak-handle %q is not a 32-bit number", errUsage, *a.handle)
		}
		handle = h
	}

	t, err := tpm.Open(*a.tpm)
	if err != nil {
		return nil, nil, nil, err
	}
	ak, err := t.LoadAK(tpm.AKOptions{Alg: *a.alg, Handle: uint32(handle)})
	if err != nil {
		t.Close()
		return nil, nil, nil, fmt.Errorf("load AK: %w", err)
	}
	closeFn := func() {
		if err := t.FlushAK(ak); err != nil {
			slog.Warn("flush AK", "err", err)
		}
		if err := t.Close(); err != nil {
			slog.Warn("close TPM", "err", err)
		}
	}
	return t, ak, closeFn, nil
}

func runSnapshot(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot", "snapshot --dir DIR [--log FILE] [--tpm SPEC] [--ak-alg ecc|rsa] [--ak-handle H] [--bank LIST] [--tail] [--trim [--trim-mode count|staged]] [--json]", stderr)
	dir := fs.String("dir", "", "chain `directory` the new shard is written to; created if missing; required")
	lf := addLogFlags(fs)
	af := addTPMAKFlags(fs)
	banks := fs.String("bank", "", "comma-separated PCR `banks` to record and quote (default: every allocated bank)")
	tail := fs.Bool("tail", false, "also record entries past the quoted state, as the final snapshot before kexec does")
	trimFlag := fs.Bool("trim", false, "after the shard is written and the chain verifies, delete from the kernel's list the entries the shards hold (needs Linux 7.2 with CONFIG_IMA_STAGING and CAP_SYS_ADMIN)")
	trimMode := fs.String("trim-mode", "count", "how --trim deletes: count (write the entry count to the list) or staged (stage the list, compare, delete)")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	if *tail && *trimFlag {
		return fmt.Errorf("%w: --tail and --trim together: the tail is anchored only by the next shard's quote, so trim after the next snapshot instead", errUsage)
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}
	logPath, logOpts, err := lf.options()
	if err != nil {
		return err
	}
	var bankList []pcr.Alg
	if *banks != "" {
		if bankList, err = pcr.ParseAlgList(*banks); err != nil {
			return fmt.Errorf("%w: --bank: %v", errUsage, err)
		}
	}

	var trimOpts trim.Options
	var trimmed *trimResult
	var trimmedBefore *trimBeforeResult
	if *trimFlag {
		if trimOpts, err = trimOptions(*dir, logPath, logOpts, *trimMode); err != nil {
			return err
		}
	}

	// The first snapshot on a machine creates the chain directory, as
	// kexec's final snapshot does.
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("create chain directory: %w", err)
	}

	// One lock over the whole command: the trims before and after the
	// snapshot and the placement of the live list read and write the
	// state the snapshot builds on, so no other run may start in between.
	lock, err := shard.LockChain(*dir)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if err := lock.Unlock(); err != nil {
			slog.Warn("release the chain lock", "dir", *dir, "err", err)
		}
	}()

	t, ak, closeTPM, err := af.open()
	if err != nil {
		return err
	}
	defer closeTPM()

	if *trimFlag {
		// Resolve an interrupted trim (with the TPM's PCRs when the list
		// alone cannot tell) and delete what earlier shards hold, so the
		// snapshot reads a list whose start the state file records.
		trimOpts.ReadPCRs = t.ReadPCRs
		tr, err := trimCovered(trimOpts)
		if err != nil {
			return err
		}
		if tr.Deleted > 0 || tr.Carried > 0 || tr.CarryUsed > 0 || tr.Recovered {
			trimmedBefore = &trimBeforeResult{Deleted: tr.Deleted, Carried: tr.Carried, CarryDropped: tr.CarryUsed,
				Recovered: tr.Recovered, LiveStart: tr.LiveStart}
		}
	}
	list, err := openLiveList(*dir, logPath, logOpts)
	if err != nil {
		return err
	}

	ctx := context.Background()
	res, err := shard.Snapshot(ctx, shard.SnapshotOptions{
		Dir: *dir, LogPath: logPath, LogOptions: logOpts, TPM: t, AK: ak, Banks: bankList, Tail: *tail,
		LiveFirstIndex: list.first, OpenLog: list.open, Lock: lock,
	})
	if err != nil {
		return err
	}

	if *trimFlag {
		if err := verifyOwnQuote(ctx, *dir, ak.PublicKey); err != nil {
			return err
		}
		tr, err := trimCovered(trimOpts)
		if err != nil {
			return fmt.Errorf("shard %s written, trim failed: %w", res.Path, err)
		}
		count, err := trimOpts.FS.Count()
		if err != nil {
			return err
		}
		trimmed = &trimResult{Deleted: tr.Deleted, Carried: tr.Carried, CarryDropped: tr.CarryUsed,
			Recovered: tr.Recovered, LiveStart: tr.LiveStart, KernelCount: count}
	}

	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		out := map[string]any{
			"path": res.Path, "sequence": res.Sequence, "first_index": res.FirstIndex,
			"entries": res.Entries, "tail_entries": res.TailEntries,
		}
		if trimmed != nil {
			out["trim"] = trimmed
		}
		if trimmedBefore != nil {
			out["trim_before_snapshot"] = trimmedBefore
		}
		return enc.Encode(out)
	}
	if res.Entries == 0 {
		fmt.Fprintf(stdout, "%s: shard %d, no new entries since history index %d, tail %d\n",
			res.Path, res.Sequence, res.FirstIndex, res.TailEntries)
	} else {
		fmt.Fprintf(stdout, "%s: shard %d, entries %d to %d (%d), tail %d\n",
			res.Path, res.Sequence, res.FirstIndex, res.FirstIndex+res.Entries-1, res.Entries, res.TailEntries)
	}
	if trimmed != nil {
		fmt.Fprintf(stdout, "trimmed %d entries; the kernel's list now starts at history index %d and has %d entries\n",
			trimmed.Deleted, trimmed.LiveStart, trimmed.KernelCount)
		if trimmed.Carried > 0 {
			fmt.Fprintf(stdout, "kept %d staged entries that no shard holds yet in %s; the next snapshot starts with them\n",
				trimmed.Carried, *dir)
		}
	}
	return nil
}

// errVerifyFailed makes verify exit 1 after printing its report.
var errVerifyFailed = errors.New("verification failed")
