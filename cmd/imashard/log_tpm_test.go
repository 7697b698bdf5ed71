package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/tpm"
)

// extendLikeKernel extends the TPM's PCRs with the first n entries of a
// list, per bank for sha1 and sha256 and with the padded SHA-1 digest for
// sha384, as Debian's 6.1 kernel does when it lacks the sha384 hash.
func extendLikeKernel(t *testing.T, spec, list string, n int) {
	t.Helper()
	tp, err := tpm.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()

	data, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	r := imalog.NewReader(bytes.NewReader(data), imalog.Options{})
	for i := 0; i < n; i++ {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("list has %d entries, fewer than %d", i, n)
		}
		if err != nil {
			t.Fatal(err)
		}
		digests := map[pcr.Alg][]byte{}
		for _, alg := range []pcr.Alg{pcr.SHA1, pcr.SHA256} {
			if digests[alg], err = e.TemplateHash(alg); err != nil {
				t.Fatal(err)
			}
		}
		padded := make([]byte, pcr.SHA384.Size())
		copy(padded, digests[pcr.SHA1])
		digests[pcr.SHA384] = padded
		if err := tp.ExtendPCR(int(e.PCR), digests); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLogReplayAgainstSwtpm(t *testing.T) {
	inst := startSWTPM(t)

	// The TPM has seen 300 of the 362 entries: the list is ahead of it.
	list := testdata + "ibmtss__utils_sha1.log.bin"
	extendLikeKernel(t, inst.Spec(), list, 300)

	out, stderr, err := runCmd(t, nil, "log", "replay", "--tpm", inst.Spec(), "--banks", "sha1,sha256,sha384", "--json", list)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var report replayReport
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatal(err)
	}
	if !report.Matched || report.MatchedEntries != 300 || report.Entries != 362 {
		t.Errorf("matched %v after %d of %d entries, want 300 of 362", report.Matched, report.MatchedEntries, report.Entries)
	}
	want := map[string]string{"sha1": "per-bank", "sha256": "per-bank", "sha384": "padded-sha1"}
	for bank, rule := range want {
		if report.Rules[bank] != rule {
			t.Errorf("%s rule = %q, want %q", bank, report.Rules[bank], rule)
		}
	}

	// A list the TPM never saw does not match.
	_, _, err = runCmd(t, nil, "log", "replay", "--tpm", inst.Spec(), "--banks", "sha1", "--allow-truncated", testdata+"tpm2tss__sml-ima-ng-sha1.bin")
	if !errors.Is(err, errCheckFailed) {
		t.Errorf("unrelated list: err = %v, want a failed check", err)
	}
}
