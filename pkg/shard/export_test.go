package shard

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

func TestExportChecksWithTPM2ToolsAndEvmctl(t *testing.T) {
	for _, tool := range []string{"tpm2_checkquote", "evmctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs tpm2-tools and ima-evm-utils): %v", tool, err)
		}
	}
	env := newTestEnv(t)
	entries := readTestEntries(t, "sha1.log.bin")[:40]
	env.measure(entries...)
	res, err := env.snapshot(false)
	if err != nil {
		t.Fatal(err)
	}

	exportDir := t.TempDir()
	if d := os.Getenv("IMASHARD_TEST_EXPORT_DIR"); d != "" {
		exportDir = d
	}
	ex, err := ExportTPM2Tools(res.Path, exportDir)
	if err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command("tpm2_checkquote", "-u", ex.AKPEM, "-m", ex.Message, "-s", ex.Signature,
		"-f", ex.PCRs, "-g", "sha256", "-q", ex.QualificationHex).CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_checkquote rejected the exported quote: %v\n%s", err, out)
	}

	// A different qualification must make tpm2_checkquote fail, or the
	// check above proves nothing about the header binding.
	wrong := strings.Repeat("00", 32)
	if out, err := exec.Command("tpm2_checkquote", "-u", ex.AKPEM, "-m", ex.Message, "-s", ex.Signature,
		"-f", ex.PCRs, "-g", "sha256", "-q", wrong).CombinedOutput(); err == nil {
		t.Errorf("tpm2_checkquote accepted a wrong qualification:\n%s", out)
	}

	// evmctl 1.4 takes at most two --pcrs files, so each bank gets a run.
	if len(ex.EvmctlPCRs) != 2 {
		t.Errorf("evmctl PCR files for %d banks, want sha1 and sha256", len(ex.EvmctlPCRs))
	}
	for bank, path := range ex.EvmctlPCRs {
		out, err := exec.Command("evmctl", "ima_measurement", "--pcrs", bank+","+path, ex.Measurements).CombinedOutput()
		if err != nil {
			t.Errorf("evmctl ima_measurement --pcrs %s,%s: %v\n%s", bank, path, err, out)
		}
	}

	// A PCR file that does not match the entries must make evmctl fail.
	wrongPCRs := filepath.Join(t.TempDir(), "wrong.txt")
	wrong10 := pcr.Values{}
	wrong10.Set(pcr.SHA1, 10, bytes.Repeat([]byte{0x11}, 20))
	if err := writeEvmctlFile(wrongPCRs, wrong10, pcr.SHA1); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("evmctl", "ima_measurement", "--pcrs", "sha1,"+wrongPCRs, ex.Measurements).CombinedOutput(); err == nil {
		t.Errorf("evmctl accepted PCR values the entries do not reach:\n%s", out)
	}
}

func TestExportKeepsExistingFiles(t *testing.T) {
	env := newTestEnv(t)
	env.measure(readTestEntries(t, "sha1.log.bin")[:5]...)
	res, err := env.snapshot(false)
	if err != nil {
		t.Fatal(err)
	}

	exportDir := t.TempDir()
	unrelated := []byte("an unrelated file the user keeps here\n")
	existing := filepath.Join(exportDir, "quote.msg")
	if err := os.WriteFile(existing, unrelated, 0o644); err != nil {
		t.Fatal(err)
	}

	_, err = ExportTPM2Tools(res.Path, exportDir)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("export over %s: err = %v, want fs.ErrExist", existing, err)
	}
	if got, _ := os.ReadFile(existing); !bytes.Equal(got, unrelated) {
		t.Errorf("%s was replaced: %q", existing, got)
	}
	if names, _ := os.ReadDir(exportDir); len(names) != 1 {
		t.Errorf("the failed export left %d files in %s, want only the existing one", len(names), exportDir)
	}

	// A second export of a complete export directory fails the same way.
	fresh := t.TempDir()
	if _, err := ExportTPM2Tools(res.Path, fresh); err != nil {
		t.Fatal(err)
	}
	if _, err := ExportTPM2Tools(res.Path, fresh); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second export into %s: err = %v, want fs.ErrExist", fresh, err)
	}
}
