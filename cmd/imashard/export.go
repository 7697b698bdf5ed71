package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"

	"github.com/imashard/imashard/pkg/shard"
)

func runExport(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("export", "export --tpm2-tools OUTDIR SHARD [--json]", stderr)
	outDir := fs.String("tpm2-tools", "", "output `directory` for the quote, AK PEM, PCR files and entries; created if missing, and the export fails rather than replace a file in it; required")
	jsonOut := fs.Bool("json", false, "print the written file names as JSON")
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if *outDir == "" {
		return fmt.Errorf("%w: --tpm2-tools OUTDIR is required", errUsage)
	}
	if len(positional) != 1 {
		return fmt.Errorf("%w: want exactly one shard file, got %d arguments", errUsage, len(positional))
	}

	ex, err := shard.ExportTPM2Tools(positional[0], *outDir)
	if err != nil {
		return err
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ex)
	}

	fmt.Fprintf(stdout, "tpm2_checkquote -u %s -m %s -s %s -f %s -g sha256 -q %s\n", ex.AKPEM, ex.Message, ex.Signature, ex.PCRs, ex.QualificationHex)
	for bank, path := range ex.EvmctlPCRs {
		fmt.Fprintf(stdout, "evmctl ima_measurement --pcrs %s,%s %s\n", bank, path, ex.Measurements)
	}
	fmt.Fprintf(stdout, "# evmctl replays from zero, so its check holds for the first shard of a chain (%s)\n", filepath.Base(shard.FileName(0)))
	return nil
}
