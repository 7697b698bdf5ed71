package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/shard"
)

func runVerify(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", "verify --ak PEM DIR [--live [--tpm SPEC] [--log FILE]] [--trusted-start FILE] [--json]", stderr)
	akPath := fs.String("ak", "", "pinned AK public key: a PEM `file` (PUBLIC KEY) or a TPM2B_PUBLIC file such as ak.pub from imashard ak export; required")
	live := fs.Bool("live", false, "also quote the TPM over a random nonce and replay the live log from the chain's end")
	trusted := fs.String("trusted-start", "", "PCR values `file` the first shard may start from instead of the TPM reset state (sysfs, evmctl or tpm2_pcrread format)")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	lf := addLogFlags(fs)
	af := addTPMAKFlags(fs)
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if *akPath == "" {
		return fmt.Errorf("%w: --ak is required", errUsage)
	}
	if len(positional) != 1 {
		return fmt.Errorf("%w: want exactly one chain directory, got %d arguments", errUsage, len(positional))
	}

	key, err := readAKPublic(*akPath)
	if err != nil {
		return err
	}
	opts := shard.VerifyOptions{Dir: positional[0], AKPublic: key}
	if *trusted != "" {
		if opts.TrustedStart, err = pcr.ReadValuesFile(*trusted); err != nil {
			return fmt.Errorf("--trusted-start: %w", err)
		}
	}
	if *live {
		logPath, logOpts, err := lf.options()
		if err != nil {
			return err
		}
		t, ak, closeTPM, err := af.open()
		if err != nil {
			return err
		}
		defer closeTPM()
		list, err := openLiveList(opts.Dir, logPath, logOpts)
		if err != nil {
			return err
		}
		opts.Live = &shard.LiveOptions{TPM: t, AK: ak, LogPath: logPath, LogOptions: logOpts,
			LiveFirstIndex: list.first, OpenLog: list.open}
	}

	report, verr := shard.Verify(context.Background(), opts)
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	} else {
		printReport(stdout, report)
	}
	if verr != nil {
		return fmt.Errorf("%w: %w", errVerifyFailed, verr)
	}
	return nil
}

func printReport(w io.Writer, r *shard.Report) {
	for _, s := range r.Shards {
		status := "ok"
		if !s.OK {
			status = "FAILED"
		}
		fmt.Fprintf(w, "%s: shard %d, entries %d+%d, tail %d: %s\n", s.File, s.Sequence, s.FirstIndex, s.Entries, s.TailEntries, status)
		for _, c := range s.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s %-8s %s\n", mark, c.Name, c.Detail)
		}
	}
	if r.Final != nil {
		fmt.Fprintf(w, "verified state: next entry %d\n", r.Final.NextIndex)
		printState(w, r.Final)
	}
	if r.Live != nil {
		for _, c := range r.Live.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  live %s %-8s %s\n", mark, c.Name, c.Detail)
		}
		if r.Live.OK {
			fmt.Fprintf(w, "live: %d entries attested, %d pending\n", r.Live.Attested, r.Live.Pending)
		}
	}
	if r.OK {
		fmt.Fprintln(w, "OK")
	} else {
		fmt.Fprintf(w, "FAILED: %s\n", r.Error)
	}
}

func printState(w io.Writer, s *shard.State) {
	banks := make([]string, 0, len(s.Values))
	for bank := range s.Values {
		banks = append(banks, bank)
	}
	sort.Strings(banks)
	for _, bank := range banks {
		indexes := make([]string, 0, len(s.Values[bank]))
		for index := range s.Values[bank] {
			indexes = append(indexes, index)
		}
		sort.Slice(indexes, func(i, j int) bool {
			return len(indexes[i]) < len(indexes[j]) || len(indexes[i]) == len(indexes[j]) && indexes[i] < indexes[j]
		})
		for _, index := range indexes {
			fmt.Fprintf(w, "  %s PCR %s: %s\n", bank, index, strings.ToLower(s.Values[bank][index]))
		}
	}
}
