package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	"github.com/imashard/imashard/pkg/handoff"
	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/replay"
	"github.com/imashard/imashard/pkg/tpm"
)

// Outcomes of imashard boot, in the "result" field of its JSON report.
const (
	bootVerified       = "verified"        // carried chain and live log verified
	bootFailed         = "failed"          // carried chain or live log did not verify
	bootColdBoot       = "cold-boot"       // no shards, live log replays from the TPM reset state
	bootHistoryMissing = "history-missing" // no shards, live log does not replay from zero
)

type bootReport struct {
	Result string `json:"result"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	// ErrorKind names the chain rule that failed, such as "replay-mismatch"
	// or "bad-signature"; empty when verification passed.
	ErrorKind string         `json:"error_kind,omitempty"`
	Carried   []string       `json:"carried_shards"`
	From      string         `json:"from"`
	Dir       string         `json:"dir"`
	Verify    any            `json:"verify,omitempty"`
	Replay    *coldBootCheck `json:"replay_from_zero,omitempty"`
}

type coldBootCheck struct {
	Entries int64                        `json:"entries"`
	Matched bool                         `json:"matched"`
	PCRs    map[string]map[string]string `json:"pcrs"` // bank -> PCR index -> hex value read before the log
}

func hexValues(v pcr.Values) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, alg := range v.Banks() {
		bank := map[string]string{}
		for _, index := range v.Indexes(alg) {
			value, _ := v.Get(alg, index)
			bank[strconv.Itoa(index)] = hex.EncodeToString(value)
		}
		out[alg.String()] = bank
	}
	return out
}

func runBoot(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("boot", "boot [flags]", stderr)
	from := fs.String("from", "/"+handoff.ShardDir, "`directory` where the previous kernel left the carried shards")
	dir := fs.String("dir", "/run/imashard", "chain `directory` that keeps the shards for the next snapshot and for export")
	akf := addTPMAKFlags(fs)
	logf := addLogFlags(fs)
	jsonOut := fs.Bool("json", false, "print the full report as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	logPath, logOpts, err := logf.options()
	if err != nil {
		return err
	}

	rep := &bootReport{From: *from, Dir: *dir}
	err = boot(context.Background(), rep, *from, *dir, akf, logPath, logOpts)
	if err != nil {
		rep.OK = false
		rep.Error = err.Error()
		if rep.Result == "" {
			rep.Result = bootFailed
		}
		slog.Error("imashard boot failed; every carried shard is kept", "from", *from, "dir", *dir, "err", err)
	}

	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if encErr := enc.Encode(rep); encErr != nil && err == nil {
			err = encErr
		}
	} else {
		printBootSummary(stdout, rep)
	}
	if err == nil && !rep.OK {
		err = fmt.Errorf("boot check result %s: the live log cannot be attested", rep.Result)
	}
	return err
}

func boot(ctx context.Context, rep *bootReport, from, dir string, akf *tpmAKFlags, logPath string, logOpts imalog.Options) error {
	carried, err := handoff.Keep(from, dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		carried = nil
	case err != nil:
		return err
	}
	rep.Carried = carried

	return verifyWithTPM(ctx, rep, carried, dir, akf, logPath, logOpts)
}

func verifyWithTPM(ctx context.Context, rep *bootReport, carried []string, dir string, akf *tpmAKFlags, logPath string, logOpts imalog.Options) error {
	t, ak, closeTPM, err := akf.open()
	if err != nil {
		return err
	}
	defer closeTPM()

	if len(carried) == 0 {
		return checkColdBoot(rep, t, logPath, logOpts)
	}

	return verifyCarried(ctx, rep, t, ak, dir, logPath, logOpts)
}

// checkColdBoot replays the live log from all-zero PCRs and compares every
// prefix with PCR 10 read before the log: the log may grow after the read,
// so a prefix, not the whole log, must match.
func checkColdBoot(rep *bootReport, t *tpm.TPM, logPath string, logOpts imalog.Options) error {
	banks, err := t.Banks()
	if err != nil {
		return err
	}
	target, err := t.ReadPCRs(banks, []int{10})
	if err != nil {
		return err
	}
	f, err := os.Open(logPath)
	if err != nil {
		return fmt.Errorf("open IMA log: %w", err)
	}
	defer f.Close()

	rp, err := replay.New(nil, banks)
	if err != nil {
		return err
	}
	check := &coldBootCheck{PCRs: hexValues(target)}
	rep.Replay = check
	prefix, err := replay.FindPrefix(imalog.NewReader(f, withTruncated(logOpts)), rp, target)
	switch {
	case err == nil:
		check.Matched, check.Entries = true, prefix.Entries
	case errors.Is(err, replay.ErrNoPrefixMatch):
		check.Entries = rp.Entries()
		slog.Warn("live log does not replay from the TPM reset state", "log", logPath, "entries", check.Entries, "err", err)
	default:
		return fmt.Errorf("replay IMA log %s from the TPM reset state: %w", logPath, err)
	}

	if check.Matched {
		rep.Result, rep.OK = bootColdBoot, true
	} else {
		rep.Result, rep.OK = bootHistoryMissing, false
	}
	return nil
}

func printBootSummary(w io.Writer, rep *bootReport) {
	switch rep.Result {
	case bootVerified:
		fmt.Fprintf(w, "imashard boot: verified %d carried shards and the live log; shards kept in %s\n", len(rep.Carried), rep.Dir)
	case bootColdBoot:
		fmt.Fprintf(w, "imashard boot: no carried shards; the live log (%d entries) replays from the TPM reset state: cold boot\n", rep.Replay.Entries)
	case bootHistoryMissing:
		fmt.Fprintf(w, "imashard boot: HISTORY MISSING: no carried shards and the live log (%d entries) does not replay from the TPM reset state to PCR 10; entries from before this boot were lost (a kexec without imashard?)\n", rep.Replay.Entries)
	default:
		fmt.Fprintf(w, "imashard boot: VERIFICATION FAILED: %s\nimashard boot: every shard is kept in %s and %s\n", rep.Error, rep.Dir, rep.From)
	}
}

// withTruncated allows a partial last entry, which a live list that grows
// while it is read can end with.
func withTruncated(opts imalog.Options) imalog.Options {
	opts.AllowTruncated = true
	return opts
}
