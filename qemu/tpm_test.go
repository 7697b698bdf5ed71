package qemu_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
	"github.com/imashard/imashard/pkg/tpm"
	"github.com/imashard/imashard/qemu/vm"
)

// guestQuote is the part of quote.json this test reads.
type guestQuote struct {
	Attest    string                       `json:"attest"`
	Signature string                       `json:"signature"`
	Nonce     string                       `json:"nonce"`
	Values    map[string]map[string]string `json:"values"`
	AKPublic  string                       `json:"ak_public"`
	AKName    string                       `json:"ak_name"`
}

// TestTPMCommandsOnKernelDevices runs `imashard pcrs` and `imashard quote`
// in a guest on /dev/tpm0, which has no resource manager, and on
// /dev/tpmrm0. Five quotes in a row on /dev/tpm0 need more object slots
// than swtpm has (3 in libtpms), so they pass only when every AK is flushed. The host
// then verifies each quote and derives the same AK from the swtpm state.
func TestTPMCommandsOnKernelDevices(t *testing.T) {
	g := needGuest(t)
	script := `
echo "@@imashard-begin pcrs"
imashard pcrs --tpm /dev/tpm0 --bank sha256 --pcr 0-9 --format evmctl
echo "@@imashard-end pcrs"
for dev in tpm0 tpm0 tpm0 tpm0 tpm0 tpmrm0; do
	n=$(ls /run | wc -l)
	imashard quote --tpm /dev/$dev --nonce 00c0ffee0$n --pcr 0-10 --out /run/q$n
	echo "@@imashard-begin quote"
	cat /run/q$n/quote.json
	echo "@@imashard-end quote"
done
`
	stateDir := t.TempDir()
	res := runGuest(t, g, stateDir, g.overlay(script), 3*time.Minute)

	pcrs := vm.Sections(res.Console, "pcrs")
	if len(pcrs) != 1 {
		t.Fatalf("%d pcrs sections, want 1", len(pcrs))
	}
	bootPCRs, err := pcr.ParseEvmctl(strings.NewReader(pcrs[0]), pcr.SHA256)
	if err != nil {
		t.Fatalf("pcrs output: %v\n%s", err, pcrs[0])
	}
	if n := len(bootPCRs.Indexes(pcr.SHA256)); n != 10 {
		t.Errorf("pcrs printed %d sha256 PCRs, want 10", n)
	}

	quotes := vm.Sections(res.Console, "quote")
	if len(quotes) != 6 {
		t.Fatalf("%d quote sections, want 6 (5 on /dev/tpm0, 1 on /dev/tpmrm0)", len(quotes))
	}
	var akName string
	for i, section := range quotes {
		var q guestQuote
		if err := json.Unmarshal([]byte(section), &q); err != nil {
			t.Fatalf("quote %d: %v\n%s", i, err, section)
		}
		verifyGuestQuote(t, i, q)
		if i == 0 {
			akName = q.AKName
		} else if q.AKName != akName {
			t.Errorf("quote %d: AK name %s, first quote %s", i, q.AKName, akName)
		}

		// PCRs 0 to 9 do not change after boot, so every quote saw the
		// values pcrs printed.
		for index := 0; index < 10; index++ {
			want, _ := bootPCRs.Get(pcr.SHA256, index)
			if got := q.Values["sha256"][strconv.Itoa(index)]; got != hex.EncodeToString(want) {
				t.Errorf("quote %d: sha256 PCR %d = %s, pcrs printed %x", i, index, got, want)
			}
		}
	}

	// The AK depends only on the TPM's endorsement seed, so the host
	// derives the same key from the swtpm state the guest used.
	inst, err := swtpm.Start(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	host, err := tpm.Open(inst.Spec())
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ak, err := host.LoadAK(tpm.AKOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer host.FlushAK(ak)
	if hex.EncodeToString(ak.Name) != akName {
		t.Errorf("host derived AK name %x from the guest's TPM state, guest had %s", ak.Name, akName)
	}
}

func verifyGuestQuote(t *testing.T, i int, q guestQuote) {
	t.Helper()
	decode := func(field, s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("quote %d: %s: %v", i, field, err)
		}
		return b
	}
	key, _, err := tpm.ParseAKPublic(decode("ak_public", q.AKPublic))
	if err != nil {
		t.Fatalf("quote %d: %v", i, err)
	}
	values := make(pcr.Values)
	for bankName, bank := range q.Values {
		alg, err := pcr.ParseAlg(bankName)
		if err != nil {
			t.Fatal(err)
		}
		for indexText, value := range bank {
			index, err := strconv.Atoi(indexText)
			if err != nil {
				t.Fatalf("quote %d: PCR index %q: %v", i, indexText, err)
			}
			values.Set(alg, index, decode("value", value))
		}
	}
	nonce := decode("nonce", q.Nonce)
	quote := &tpm.Quote{Attest: decode("attest", q.Attest), Signature: decode("signature", q.Signature)}
	if _, err := tpm.VerifyQuote(key, quote, nonce, values); err != nil {
		t.Errorf("quote %d: %v", i, err)
	}
	if !bytes.HasPrefix(nonce, []byte{0x00, 0xc0, 0xff, 0xee}) {
		t.Errorf("quote %d: nonce %x lost its prefix", i, nonce)
	}
}
