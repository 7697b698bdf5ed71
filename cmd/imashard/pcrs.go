package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/imashard/imashard/pkg/tpm"
)

// runPcrs prints PCR values read from the TPM.
func runPcrs(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("pcrs", "pcrs [--bank ALG,...] [--pcr N,...] [--format yaml|evmctl|json] [--tpm SPEC]", stderr)
	tpmSpec := addTPMFlag(fs)
	bankList := fs.String("bank", "", "comma-separated PCR banks to read, such as sha1,sha256 (default: every allocated bank)")
	pcrList := fs.String("pcr", "0-23", "PCR indexes to read: a comma-separated list of indexes and ranges such as 0-7,10")
	format := fs.String("format", tpm.FormatYAML, "output format: yaml (tpm2_pcrread style), evmctl (PCR-NN: hex lines for one bank) or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: pcrs takes no arguments, got %q", errUsage, fs.Args())
	}
	if *format != tpm.FormatYAML && *format != tpm.FormatEvmctl && *format != tpm.FormatJSON {
		return fmt.Errorf("%w: --format %q: use yaml, evmctl or json", errUsage, *format)
	}
	indexes, err := parsePCRList(*pcrList)
	if err != nil {
		return err
	}

	t, err := tpm.Open(*tpmSpec)
	if err != nil {
		return err
	}
	defer t.Close()

	banks, err := selectBanks(t, *bankList)
	if err != nil {
		return err
	}
	if *format == tpm.FormatEvmctl && len(banks) != 1 {
		return fmt.Errorf("%w: the evmctl format stores one bank, and %d are selected (%v): add --bank", errUsage, len(banks), banks)
	}
	slog.Debug("reading PCRs", "tpm", *tpmSpec, "banks", banks, "pcrs", indexes)

	values, err := t.ReadPCRs(banks, indexes)
	if err != nil {
		return err
	}
	return tpm.WritePCRs(stdout, values, *format)
}
