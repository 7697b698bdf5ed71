package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
	"github.com/imashard/imashard/pkg/tpm"
)

// startTPM starts a swtpm for one test and extends sha256 PCR 10 once, so
// outputs hold a value a wrong implementation would not produce.
func startTPM(t *testing.T) (spec string, pcr10 []byte) {
	t.Helper()
	if err := swtpm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	inst, err := swtpm.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })

	tp, err := tpm.Open(inst.Spec())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	digest := bytes.Repeat([]byte{0x10}, 32)
	if err := tp.ExtendPCR(10, map[pcr.Alg][]byte{pcr.SHA256: digest}); err != nil {
		t.Fatal(err)
	}
	h, _ := pcr.SHA256.New()
	h.Write(pcr.Zero(pcr.SHA256))
	h.Write(digest)
	return inst.Spec(), h.Sum(nil)
}

func runCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(args, strings.NewReader(""), &stdout, &stderr)
	return stdout.String() + stderr.String(), err
}

func TestPcrsCommandFormats(t *testing.T) {
	spec, pcr10 := startTPM(t)

	out, err := runCommand(t, "pcrs", "--tpm", spec, "--bank", "sha256", "--pcr", "10", "--format", "evmctl")
	if err != nil {
		t.Fatal(err)
	}
	if want := "PCR-10: " + hex.EncodeToString(pcr10) + "\n"; out != want {
		t.Errorf("evmctl output %q, want %q", out, want)
	}

	out, err = runCommand(t, "pcrs", "--tpm", spec, "--pcr", "8-10")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "sha256:\n") || !strings.Contains(out, "  10: 0x"+strings.ToUpper(hex.EncodeToString(pcr10))+"\n") {
		t.Errorf("yaml output lacks sha256 PCR 10 = %x:\n%s", pcr10, out)
	}

	out, err = runCommand(t, "pcrs", "--tpm", spec, "--bank", "sha256", "--pcr", "10", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	values, err := tpm.ParsePCRsJSON([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := values.Get(pcr.SHA256, 10); !bytes.Equal(got, pcr10) {
		t.Errorf("json sha256 PCR 10 = %x, want %x", got, pcr10)
	}
}

func TestPcrsCommandUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"pcrs", "--pcr", "24"},
		{"pcrs", "--pcr", "5-2"},
		{"pcrs", "--format", "xml"},
		{"pcrs", "extra"},
	} {
		if _, err := runCommand(t, args...); !errors.Is(err, errUsage) {
			t.Errorf("%v: err = %v, want a usage error", args, err)
		}
	}
}

func TestQuoteCommandRoundTrip(t *testing.T) {
	spec, _ := startTPM(t)
	dir := filepath.Join(t.TempDir(), "q")

	if _, err := runCommand(t, "quote", "--tpm", spec, "--nonce", "c0ffee", "--pcr", "0-12", "--out", dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"quote.msg", "quote.sig", "quote.pcrs", "ak.pem", "quote.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("quote did not write %s: %v", name, err)
		}
	}

	out, err := runCommand(t, "quote", "verify", "--ak", filepath.Join(dir, "ak.pem"), "--nonce", "c0ffee", "--json", dir)
	if err != nil {
		t.Fatalf("quote verify: %v\n%s", err, out)
	}
	var info quoteInfoJSON
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if !info.OK || info.ExtraData != "c0ffee" || len(info.Selection["sha256"]) != 13 {
		t.Errorf("verify output %+v", info)
	}

	_, err = runCommand(t, "quote", "verify", "--ak", filepath.Join(dir, "ak.pem"), "--nonce", "c0ffef", dir)
	if !errors.Is(err, tpm.ErrNonceMismatch) {
		t.Errorf("wrong nonce: err = %v, want ErrNonceMismatch", err)
	}

	// A second quote into the same directory must not replace the first.
	before, _ := os.ReadFile(filepath.Join(dir, "quote.msg"))
	if _, err := runCommand(t, "quote", "--tpm", spec, "--nonce", "01", "--pcr", "10", "--out", dir); err == nil {
		t.Error("quote into a directory with a quote: no error")
	}
	after, _ := os.ReadFile(filepath.Join(dir, "quote.msg"))
	if !bytes.Equal(before, after) {
		t.Error("the second quote replaced quote.msg")
	}
}

func TestAkExportCommand(t *testing.T) {
	spec, _ := startTPM(t)
	dir := t.TempDir()

	out, err := runCommand(t, "ak", "export", "--tpm", spec, "--out", dir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var export akExportJSON
	if err := json.Unmarshal([]byte(out), &export); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	public, err := os.ReadFile(filepath.Join(dir, "ak.pub"))
	if err != nil {
		t.Fatal(err)
	}
	_, name, err := tpm.ParseAKPublic(public)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(name) != export.AK.Name {
		t.Errorf("ak.pub has name %x, JSON says %s", name, export.AK.Name)
	}
	if len(export.EK) != 2 {
		t.Errorf("%d EKs exported, want rsa and ecc", len(export.EK))
	}
	if _, err := os.Stat(filepath.Join(dir, "ek-rsa.pem")); err != nil {
		t.Error(err)
	}
}

// TestPcrsOutputParsesInPcrPackage checks that log replay's PCR file
// parsers read what `imashard pcrs` writes.
func TestPcrsOutputParsesInPcrPackage(t *testing.T) {
	spec, pcr10 := startTPM(t)

	out, err := runCommand(t, "pcrs", "--tpm", spec, "--pcr", "0-23")
	if err != nil {
		t.Fatal(err)
	}
	yamlValues, err := pcr.ParseTPM2PCRRead(strings.NewReader(out))
	if err != nil {
		t.Fatalf("ParseTPM2PCRRead of pcrs output: %v", err)
	}
	if got, _ := yamlValues.Get(pcr.SHA256, 10); !bytes.Equal(got, pcr10) {
		t.Errorf("yaml sha256 PCR 10 = %x, want %x", got, pcr10)
	}
	if n := len(yamlValues.Indexes(pcr.SHA256)); n != 24 {
		t.Errorf("yaml has %d sha256 PCRs, want 24", n)
	}

	out, err = runCommand(t, "pcrs", "--tpm", spec, "--bank", "sha256", "--pcr", "10,16", "--format", "evmctl")
	if err != nil {
		t.Fatal(err)
	}
	evmValues, err := pcr.ParseEvmctl(strings.NewReader(out), pcr.SHA256)
	if err != nil {
		t.Fatalf("ParseEvmctl of pcrs output: %v", err)
	}
	if got, _ := evmValues.Get(pcr.SHA256, 10); !bytes.Equal(got, pcr10) {
		t.Errorf("evmctl sha256 PCR 10 = %x, want %x", got, pcr10)
	}
}

func TestTPMCommandsHelp(t *testing.T) {
	cases := []struct {
		args []string
		flag string // one flag the help must explain
	}{
		{[]string{"pcrs", "--help"}, "-pcr"},
		{[]string{"ak", "export", "--help"}, "-out"},
		{[]string{"quote", "--help"}, "-nonce"},
		{[]string{"quote", "verify", "--help"}, "-pcrs"},
	}
	for _, c := range cases {
		out, err := runCommand(t, c.args...)
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%v: err = %v, want flag.ErrHelp", c.args, err)
		}
		if !strings.Contains(out, "usage: imashard") {
			t.Errorf("%v: help output lacks the usage line:\n%s", c.args, out)
		}
		if !strings.Contains(out, c.flag) {
			t.Errorf("%v: help output does not explain %s:\n%s", c.args, c.flag, out)
		}
	}
}
