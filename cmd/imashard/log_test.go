package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
)

const testdata = "../../pkg/imalog/testdata/"

func runCmd(t *testing.T, stdin []byte, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(args, bytes.NewReader(stdin), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestLogShowASCIIMatchesKernel(t *testing.T) {
	// The ASCII list the kernel wrote, read as ASCII and printed again.
	file := testdata + "rustkeylime__agent_test-data_ima_ascii_runtime_measurements.txt"
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, err := runCmd(t, nil, "log", "show", file)
	if err != nil {
		t.Fatalf("%v: %s", err, stderr)
	}
	if out != string(want) {
		t.Error("log show output differs from the ASCII list")
	}
}

func TestLogShowBinaryFromStdin(t *testing.T) {
	data, err := os.ReadFile(testdata + "tpm2tss__sml-ima-sha1.bin")
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, err := runCmd(t, data, "log", "show", "-")
	if err == nil || !strings.Contains(err.Error(), "offset 916") {
		t.Errorf("truncated tail: err = %v, stderr %q", err, stderr)
	}

	out, stderr, err := runCmd(t, data, "log", "show", "--allow-truncated", "-")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "\n"); n != 12 {
		t.Errorf("%d lines, want 12", n)
	}
	if !strings.Contains(stderr, "1 bytes") {
		t.Errorf("pending bytes not reported: %q", stderr)
	}
	if !strings.HasPrefix(out, "10 ") || !strings.Contains(out, " ima ") {
		t.Errorf("output: %.200s", out)
	}
}

func TestLogShowJSON(t *testing.T) {
	out, _, err := runCmd(t, nil, "log", "show", "--json", testdata+"ibmtss__utils_imatest.log.bin")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 17 {
		t.Fatalf("%d JSON lines, want 17", len(lines))
	}
	var evm struct {
		TemplateName   string `json:"template_name"`
		TemplateHashOK *bool  `json:"template_hash_ok"`
		Fields         []struct {
			ID      string   `json:"id"`
			Name    *string  `json:"name"`
			Uint    *uint64  `json:"uint"`
			Lengths []uint32 `json:"lengths"`
		} `json:"fields"`
	}
	found := false
	for _, line := range lines {
		if !strings.Contains(line, `"template_name":"evm-sig"`) {
			continue
		}
		found = true
		if err := json.Unmarshal([]byte(line), &evm); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatal("no evm-sig entry")
	}
	if evm.TemplateHashOK == nil || !*evm.TemplateHashOK {
		t.Error("template hash not reported as verified")
	}
	if len(evm.Fields) != 9 || evm.Fields[3].Name == nil || *evm.Fields[3].Name != "security.selinux|security.ima" {
		t.Errorf("fields = %+v", evm.Fields)
	}
	if evm.Fields[8].Uint == nil || *evm.Fields[8].Uint != 0o100644 {
		t.Errorf("imode = %v", evm.Fields[8].Uint)
	}
}

func TestLogShowEscapesNames(t *testing.T) {
	// An ima-ng entry named "/a b\n\xff.so".
	entry := "0a000000a00d3c5ad13ebb2ff76dcc5fd5a4d079ae5376fd06000000696d612d6e673a000000" +
		"280000007368613235363a00e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550a0000002f6120620aff2e736f00"
	data := mustDecodeHex(t, entry)
	out, _, err := runCmd(t, data, "log", "show", "--format", "binary", "-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, ` /a b\x0a\xff.so`+"\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("escaped output = %q", out)
	}
	out, _, _ = runCmd(t, data, "log", "show", "--raw-names", "--format", "binary", "-")
	if !strings.HasSuffix(out, " /a b\n\xff.so\n") {
		t.Errorf("raw output = %q", out)
	}
}

func TestLogReplayMatchesKVT(t *testing.T) {
	kvt := testdata + "ibmtss__utils_imakvtpcr10.txt"
	for _, bank := range []string{"sha1", "sha256", "sha384", "sha512"} {
		out, stderr, err := runCmd(t, nil, "log", "replay", testdata+"ibmtss__utils_"+bank+".log.bin", "--bank", bank, "--pcrs", kvt, "--json")
		if err != nil {
			t.Fatalf("%s: %v\n%s", bank, err, stderr)
		}
		var report replayReport
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			t.Fatal(err)
		}
		if !report.Matched || report.MatchedEntries != 362 || report.Entries != 362 || len(report.Rules) != 4 {
			t.Errorf("%s: report = %+v", bank, report)
		}
	}
}

func TestLogReplayPrefixAndFailures(t *testing.T) {
	dir := t.TempDir()

	// PCR values after the first 6 entries of a list, as evmctl files.
	out, _, err := runCmd(t, nil, "log", "replay", "--allow-truncated", "--banks", "sha1", "--json", testdata+"tpm2tss__sml-ima-ng-sha1.bin")
	if err != nil {
		t.Fatal(err)
	}
	var report replayReport
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatal(err)
	}
	pcrFile := filepath.Join(dir, "sha1.pcrs")
	os.WriteFile(pcrFile, []byte("PCR-10: "+report.PCRs[0].Value+"\n"), 0o644)
	if report.PCRs[0].Value != "ef2a20de2a84a4780f92ab11d5c4934c709dff00" {
		t.Fatalf("sha1 PCR 10 = %s", report.PCRs[0].Value)
	}

	// The same list with more entries after it: the prefix of 6 matches.
	full, _ := os.ReadFile(testdata + "tpm2tss__sml-ima-ng-sha1.bin")
	longer := append(bytes.Clone(full[:558]), full[:558]...)
	out, _, err = runCmd(t, longer, "log", "replay", "--pcrs", "sha1,"+pcrFile, "-")
	if err != nil {
		t.Fatalf("prefix: %v", err)
	}
	if !strings.Contains(out, "the first 6 entries replay") || !strings.Contains(out, "6 entries follow") {
		t.Errorf("prefix report: %s", out)
	}

	// A list that never reaches the values fails with exit status 1.
	_, _, err = runCmd(t, full[:100], "log", "replay", "--allow-truncated", "--pcrs", "sha1,"+pcrFile, "-")
	if !errors.Is(err, errCheckFailed) || !strings.Contains(err.Error(), "sha1 PCR 10") {
		t.Errorf("no match: err = %v", err)
	}

	// A corrupted template fails the check.
	corrupt := bytes.Clone(full[:558])
	corrupt[50] ^= 0x01 // a byte of the first file digest
	out, _, err = runCmd(t, corrupt, "log", "replay", "--banks", "sha1", "-")
	if !errors.Is(err, errCheckFailed) || !strings.Contains(out, "mismatch: entry") {
		t.Errorf("corrupt: err = %v, out %s", err, out)
	}

	// Starting from the state after the list, an empty list matches it.
	_, _, err = runCmd(t, nil, "log", "replay", "--from", "sha1,"+pcrFile, "--pcrs", "sha1,"+pcrFile, "-")
	if err != nil {
		t.Errorf("empty list from the target state: %v", err)
	}
}

func TestLogUsageErrors(t *testing.T) {
	cases := [][]string{
		{"log"},
		{"log", "frobnicate"},
		{"log", "show", "--byte-order", "middle", "x"},
		{"log", "show", "a", "b"},
		{"log", "replay", "--banks", "md5", "x"},
	}
	for _, args := range cases {
		if _, _, err := runCmd(t, nil, args...); !errors.Is(err, errUsage) {
			t.Errorf("%v: err = %v, want a usage error", args, err)
		}
	}
	if _, _, err := runCmd(t, nil, "log", "replay", "--banks", "sm3_256", "-"); err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Errorf("sm3_256 replay: %v", err)
	}
}

func TestLogReplaySysfsDirectoryUsesPCR10(t *testing.T) {
	list := testdata + "ibmtss__utils_sha1.log.bin"
	out, _, err := runCmd(t, nil, "log", "replay", "--json", list)
	if err != nil {
		t.Fatal(err)
	}
	var report replayReport
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatal(err)
	}

	// A TPM directory as the kernel shows it: firmware values in PCR 0.
	values := pcr.Values{}
	for _, p := range report.PCRs {
		alg, _ := pcr.ParseAlg(p.Bank)
		values.Set(alg, p.PCR, mustDecodeHex(t, p.Value))
		firmware := bytes.Repeat([]byte{0x5a}, alg.Size())
		values.Set(alg, 0, firmware)
	}
	dir := filepath.Join(t.TempDir(), "tpm0")
	if err := pcr.WriteSysfs(dir, values); err != nil {
		t.Fatal(err)
	}

	if _, stderr, err := runCmd(t, nil, "log", "replay", "--pcrs", dir, list); err != nil {
		t.Errorf("PCR 10 from a sysfs directory: %v\n%s", err, stderr)
	}
	if _, _, err := runCmd(t, nil, "log", "replay", "--pcrs", dir, "--pcr", "0,10", list); !errors.Is(err, errCheckFailed) {
		t.Errorf("PCR 0 is not in the IMA list and must not match: %v", err)
	}
	if _, _, err := runCmd(t, nil, "log", "replay", "--pcrs", dir, "--pcr", "11", list); err == nil || !strings.Contains(err.Error(), "no values for PCR 11") {
		t.Errorf("missing PCR 11: %v", err)
	}
}

func TestLogReplayPaddedFromPipe(t *testing.T) {
	list := testdata + "ibmtss__utils_sha256.log.bin"
	out, _, err := runCmd(t, nil, "log", "replay", "--bank", "sha256", "--json", list)
	if err != nil {
		t.Fatal(err)
	}
	var report replayReport
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatal(err)
	}
	var padded string
	for _, p := range report.PCRs {
		if p.Bank == "sha256" {
			padded = p.Padded
		}
	}
	if padded == "" {
		t.Fatalf("no padded sha256 value in %s", out)
	}
	target := filepath.Join(t.TempDir(), "sha256.pcrs")
	if err := os.WriteFile(target, []byte("PCR-10: "+padded+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A FILE that is a pipe, as bash's <(...) passes it: opening its path
	// again reads the same, already drained pipe.
	data, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.Write(data)
		w.Close()
	}()
	path := fmt.Sprintf("/proc/self/fd/%d", r.Fd())
	out, stderr, err := runCmd(t, nil, "log", "replay", "--bank", "sha256", "--pcrs", "sha256,"+target, path)
	if err != nil {
		t.Fatalf("padded target from a pipe: %v\n%s%s", err, out, stderr)
	}
	if !strings.Contains(out, "the first 362 entries replay") {
		t.Errorf("padded target from a pipe: %s", out)
	}
}
