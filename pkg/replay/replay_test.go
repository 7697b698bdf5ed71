package replay

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
)

// The corpus lists live in the imalog package's testdata.
const corpusDir = "../imalog/testdata"

var allBanks = []pcr.Alg{pcr.SHA1, pcr.SHA256, pcr.SHA384, pcr.SHA512}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openList(t testing.TB, name string, opts imalog.Options) EntryReader {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(corpusDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(name, ".txt") {
		return imalog.NewASCIIReader(bytes.NewReader(data), opts)
	}
	return imalog.NewReader(bytes.NewReader(data), opts)
}

func replayAll(t testing.TB, entries EntryReader, r *Replayer) {
	t.Helper()
	for {
		e, err := entries.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Extend(e); err != nil {
			t.Fatal(err)
		}
	}
}

func newReplayer(t testing.TB, start pcr.Values, banks ...pcr.Alg) *Replayer {
	t.Helper()
	r, err := New(start, banks)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func hexOf(v pcr.Values, alg pcr.Alg, index int) string {
	value, _ := v.Get(alg, index)
	return hex.EncodeToString(value)
}

// Final PCR 10 values of corpus lists under both rules, computed by an
// independent implementation.
var corpusReplays = []struct {
	file                        string
	entries, violations         int64
	sha1, sha256PerBank, padded string
}{
	{"tpm2tss__sml-ima-sha1.bin", 12, 0, "062a05a9d18d1a51775ff8162bf6964b8dd23eb4", "239ba8e6f20ecfec961d771036c68f02dbeb771678b64c18cba81363e8e7139a", "fe965aa7a38d566f153dbefe5841c37c4494d93f0716e53b3617343d801fd349"},
	{"tpm2tss__sml-ima-sha1-invalidated.bin", 1, 1, "bac37b84f007d0238af95af707cac8d61254870e", "bba91ca85dc914b2ec3efb9e16e7267bf9193b14350d20fba8a8b406730ae30a", "c7f7a2d90bcd6bd873119c8deff0b1c8eec6623bcd3a8182aa4cb1db65002115"},
	{"tpm2tss__sml-ima-ng-sha1.bin", 6, 0, "ef2a20de2a84a4780f92ab11d5c4934c709dff00", "700a1bb47bc2bc005f2d8e23d80e2a1e301733c1d29023c52d1d7d149719eb64", "f4059058172c2d1d279b7ce206ce9373249786f9a9dc59a2af279e0eaed14a26"},
	{"tpm2tss__sml-ima-sig-sha256.bin", 9, 0, "b44019405884709ca410b0c30b48159d3a556622", "a7e76625386d3dc6248552e44a3b2b1bebb6f2ff3acc9bd220821ad22f7a9d6a", "9795c7da414424d16efd3821f51d88fd39d64ec382ce36a28ca650a3e9f69c18"},
	{"tpm2tss__sml-ima-sig-sha256-invalidated.bin", 2, 1, "a0e7bc9af0a2b54147b0d595d058f15c6cc44a6d", "338c5ec5cba3d64a886cc6f369f10e5209bf8f49db078635723bb1ed8091b2ba", "f2f46aea1e58bbde2ddbb455c76051da641c69453fad9103a1fd1f42bac3b90b"},
	{"ibmtss__utils_imatest.log.bin", 17, 1, "0ff68e1da514770e85581bffe693809776302a63", "af02ae09413721fddb71250ae26383de73cc78d5df37fbebadacedeaeacddb18", "5809f571b68f86f351ddd7abdc535f73f92fd63553efea48e3ce96252084979b"},
}

func TestReplayCorpusBinary(t *testing.T) {
	for _, tc := range corpusReplays {
		t.Run(tc.file, func(t *testing.T) {
			r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
			replayAll(t, openList(t, tc.file, imalog.Options{AllowTruncated: true}), r)
			perBank, padded := r.Candidates()
			if got := hexOf(perBank, pcr.SHA1, 10); got != tc.sha1 {
				t.Errorf("sha1 = %s, want %s", got, tc.sha1)
			}
			if got := hexOf(perBank, pcr.SHA256, 10); got != tc.sha256PerBank {
				t.Errorf("sha256 per-bank = %s, want %s", got, tc.sha256PerBank)
			}
			if got := hexOf(padded, pcr.SHA256, 10); got != tc.padded {
				t.Errorf("sha256 padded = %s, want %s", got, tc.padded)
			}
			if r.Entries() != tc.entries || r.Violations() != tc.violations {
				t.Errorf("entries %d violations %d, want %d %d", r.Entries(), r.Violations(), tc.entries, tc.violations)
			}
			if n, errs := r.Mismatches(); n != 0 {
				t.Errorf("%d template hash mismatches: %v", n, errs)
			}
		})
	}
}

func TestReplayCorpusASCII(t *testing.T) {
	cases := []struct{ file, sha1 string }{
		{"rustkeylime__agent_test-data_ima_ascii_runtime_measurements.txt", "82231c67a69da98dc5b3aa10f6343d33109225fc"},
		{"hpeperf__data_ima_log.txt", "f90a1289d55fdf21a5ae9fab203bf098f772f7f1"},
		// The zero boot_aggregate is a violation: extending zeros would give 2a0c4060...
		{"keylime__create-runtime-policy_ima-log-sha1.txt", "62e5bdf4783228f7deec959f0a89a4739af79ac5"},
		// A zero file digest with a real template hash is not a violation.
		{"keylimetests__policy-commands_ima_log.txt", "a0c2c61ff0cb01b8c45a418ebae1e1d47d2ad887"},
	}
	for _, tc := range cases {
		r := newReplayer(t, nil, pcr.SHA1)
		replayAll(t, openList(t, tc.file, imalog.Options{}), r)
		if got := hexOf(r.Values(nil), pcr.SHA1, 10); got != tc.sha1 {
			t.Errorf("%s: sha1 = %s, want %s", tc.file, got, tc.sha1)
		}
	}
}

// readKVT parses the ibmtss expected-PCR file: four "PCR 10: xx xx ..."
// lines for sha1, sha256, sha384 and sha512.
func readKVT(t *testing.T) pcr.Values {
	data, err := os.ReadFile(filepath.Join(corpusDir, "ibmtss__utils_imakvtpcr10.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := pcr.Values{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		_, value, _ := strings.Cut(line, ":")
		b := mustHex(t, value)
		for _, alg := range allBanks {
			if alg.Size() == len(b) {
				want.Set(alg, 10, b)
			}
		}
	}
	if len(want) != 4 {
		t.Fatalf("expected values for %d banks, want 4", len(want))
	}
	return want
}

func TestReplayPerBankListsMatchKVT(t *testing.T) {
	want := readKVT(t)
	for _, alg := range allBanks {
		file := "ibmtss__utils_" + alg.String() + ".log.bin"
		t.Run(file, func(t *testing.T) {
			r := newReplayer(t, nil, allBanks...)
			replayAll(t, openList(t, file, imalog.Options{DigestAlg: alg}), r)
			rules, ok := r.Match(want)
			if !ok {
				perBank, _ := r.Candidates()
				t.Fatalf("no match: %v", perBank.Diff(want))
			}
			for _, bank := range allBanks {
				if rules[bank] != RulePerBank {
					t.Errorf("%s rule = %v, want per-bank", bank, rules[bank])
				}
			}
			if r.Entries() != 362 {
				t.Errorf("%d entries, want 362", r.Entries())
			}
			if n, _ := r.Mismatches(); n != 0 {
				t.Errorf("%d mismatches", n)
			}
		})
	}
}

// b1Hex is the minimal ima-ng entry from a little-endian kernel.
const b1Hex = "0a000000 da451298750d9fe6b3509ddde65c11a99212e60a 06000000 696d612d6e67 33000000" +
	"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 03000000 2f6100"

// pcr11Hex is an entry for "/b" that a pcr= policy rule sent to PCR 11.
const pcr11Hex = "0b000000 721ccd605cd7192db9f4f4afd49042e6f414ce0b 06000000 696d612d6e67 33000000" +
	"28000000 7368613235363a00 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 03000000 2f6200"

func binaryReader(t testing.TB, hexEntries ...string) EntryReader {
	var data []byte
	for _, h := range hexEntries {
		data = append(data, mustHex(t, h)...)
	}
	return imalog.NewReader(bytes.NewReader(data), imalog.Options{})
}

func TestReplayBothRules(t *testing.T) {
	r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	replayAll(t, binaryReader(t, b1Hex), r)
	perBank, padded := r.Candidates()
	if got := hexOf(perBank, pcr.SHA1, 10); got != "c1391de1c25078bd6a1b50ff41f979b06704a161" {
		t.Errorf("sha1 = %s", got)
	}
	if got := hexOf(perBank, pcr.SHA256, 10); got != "f4033781e023471c58a4e5a82550c702c02f9d5fa00346bfa18f409c9cf6fbd5" {
		t.Errorf("sha256 per-bank = %s", got)
	}
	if got := hexOf(padded, pcr.SHA256, 10); got != "46f41227fec6684f72916ddf18992f81abcb59c58c98e71b7eaaad527641abe4" {
		t.Errorf("sha256 padded = %s", got)
	}
	rules := map[pcr.Alg]Rule{pcr.SHA256: RulePaddedSHA1}
	if got := hexOf(r.Values(rules), pcr.SHA256, 10); got != "46f41227fec6684f72916ddf18992f81abcb59c58c98e71b7eaaad527641abe4" {
		t.Errorf("Values with padded rule = %s", got)
	}
}

func TestReplayOwnPCRIndex(t *testing.T) {
	r := newReplayer(t, nil, pcr.SHA1)
	replayAll(t, binaryReader(t, b1Hex, pcr11Hex), r)
	v := r.Values(nil)
	if got := hexOf(v, pcr.SHA1, 10); got != "c1391de1c25078bd6a1b50ff41f979b06704a161" {
		t.Errorf("PCR 10 = %s; a PCR 11 entry must not change it", got)
	}
	if got := hexOf(v, pcr.SHA1, 11); got != "0bfa9a8ebc0830aca39dfbffaa4491048dcca2de" {
		t.Errorf("PCR 11 = %s", got)
	}
}

func TestReplayMixedRulesPerBank(t *testing.T) {
	// Debian's 6.1 kernel hashes sha1 and sha256 per bank but pads SHA-1 for
	// sha384 and sha512: one target mixes both rules.
	r := newReplayer(t, nil, allBanks...)
	replayAll(t, openList(t, "ibmtss__utils_imatest.log.bin", imalog.Options{}), r)
	perBank, padded := r.Candidates()
	target := pcr.Values{}
	for _, alg := range []pcr.Alg{pcr.SHA1, pcr.SHA256} {
		v, _ := perBank.Get(alg, 10)
		target.Set(alg, 10, v)
	}
	for _, alg := range []pcr.Alg{pcr.SHA384, pcr.SHA512} {
		v, _ := padded.Get(alg, 10)
		target.Set(alg, 10, v)
	}
	rules, ok := r.Match(target)
	if !ok {
		t.Fatal("mixed target did not match")
	}
	want := map[pcr.Alg]Rule{pcr.SHA1: RulePerBank, pcr.SHA256: RulePerBank, pcr.SHA384: RulePaddedSHA1, pcr.SHA512: RulePaddedSHA1}
	for alg, rule := range want {
		if rules[alg] != rule {
			t.Errorf("%s rule = %v, want %v", alg, rules[alg], rule)
		}
	}

	// One flipped bit in one bank must break the match.
	bad := target.Clone()
	bad[pcr.SHA384][10][0] ^= 1
	if _, ok := r.Match(bad); ok {
		t.Error("a flipped bit still matched")
	}
}

func TestReplayFromStartState(t *testing.T) {
	// Incremental verification: replaying the tail from the state after n
	// entries gives the same result as a full replay.
	full := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	replayAll(t, openList(t, "ibmtss__utils_sha1.log.bin", imalog.Options{}), full)

	head := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	entries := openList(t, "ibmtss__utils_sha1.log.bin", imalog.Options{})
	for range 100 {
		e, err := entries.Next()
		if err != nil {
			t.Fatal(err)
		}
		if err := head.Extend(e); err != nil {
			t.Fatal(err)
		}
	}
	tail := newReplayer(t, head.Values(nil), nil...)
	replayAll(t, entries, tail)
	if err := tail.Values(nil).Diff(full.Values(nil)); err != nil {
		t.Errorf("tail from state differs from full replay: %v", err)
	}
	if tail.Entries() != 262 {
		t.Errorf("tail entries = %d", tail.Entries())
	}

	// A wrong start state gives different values.
	wrongStart := head.Values(nil)
	wrongStart[pcr.SHA1][10][5] ^= 0x80
	wrong := newReplayer(t, wrongStart, nil...)
	replayAll(t, openList(t, "ibmtss__utils_sha1.log.bin", imalog.Options{}), wrong)
	if wrong.Values(nil).Equal(full.Values(nil)) {
		t.Error("wrong start state replayed to the right values")
	}
}

func TestReplayRejectsSM3AndBadStart(t *testing.T) {
	if _, err := New(nil, []pcr.Alg{pcr.SM3_256}); !errors.Is(err, pcr.ErrUnsupportedAlg) {
		t.Errorf("sm3_256: %v", err)
	}
	start := pcr.Values{}
	start.Set(pcr.SHA256, 10, make([]byte, 20))
	if _, err := New(start, nil); err == nil {
		t.Error("a 20-byte sha256 start value was accepted")
	}
	if _, err := New(nil, nil); err == nil {
		t.Error("no banks accepted")
	}
}

func TestReplayCountsMismatches(t *testing.T) {
	corrupt := mustHex(t, b1Hex)
	corrupt[len(corrupt)-2] = 'x'
	data := append(mustHex(t, b1Hex), corrupt...)
	r := newReplayer(t, nil, pcr.SHA1, pcr.SHA256)
	replayAll(t, imalog.NewReader(bytes.NewReader(data), imalog.Options{}), r)
	n, errs := r.Mismatches()
	if n != 1 || len(errs) != 1 {
		t.Fatalf("%d mismatches, want 1", n)
	}
	var entryErr *imalog.EntryError
	if !errors.As(errs[0], &entryErr) || entryErr.Index != 1 || entryErr.Offset != 89 || !errors.Is(errs[0], imalog.ErrTemplateHash) {
		t.Errorf("mismatch error = %v, want entry 1 at offset 89", errs[0])
	}
}

func TestReplayClone(t *testing.T) {
	r := newReplayer(t, nil, pcr.SHA1)
	replayAll(t, binaryReader(t, b1Hex), r)
	c := r.Clone()
	replayAll(t, binaryReader(t, b1Hex), c)
	if r.Entries() != 1 || c.Entries() != 2 {
		t.Fatalf("entries %d %d", r.Entries(), c.Entries())
	}
	if got := hexOf(r.Values(nil), pcr.SHA1, 10); got != "c1391de1c25078bd6a1b50ff41f979b06704a161" {
		t.Errorf("extending the clone changed the original: %s", got)
	}
}
