package tpm

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
)

// tpm2Tools runs a tpm2-tools command against tcti in dir and fails the
// test with its output when it fails.
func tpm2Tools(t *testing.T, tcti, dir string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if tcti != "" {
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+tcti)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func requireTPM2Tools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tpm2_checkquote"); err != nil {
		t.Skip("skipping: tpm2-tools is not installed (apt-get install tpm2-tools)")
	}
}

// swtpmTCTI returns the tpm2-tss TCTI string for a swtpm unix socket. The
// swtpm TCTI (tpm2-tss 3.2) expects the control socket at PATH.ctrl, so a
// symlink points there.
func swtpmTCTI(t *testing.T, inst *swtpm.Instance) string {
	t.Helper()
	ctrl := inst.Socket + ".ctrl"
	if err := os.Symlink(filepath.Join(inst.StateDir, "ctrl.sock"), ctrl); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	return "swtpm:path=" + inst.Socket
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func pemOf(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func TestInteropCheckquoteAcceptsOurQuote(t *testing.T) {
	requireTPM2Tools(t)
	_, tp := startSwtpm(t, "")
	banks, err := tp.Banks()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.ExtendPCR(10, map[pcr.Alg][]byte{pcr.SHA256: bytes.Repeat([]byte{9}, 32), pcr.SHA1: bytes.Repeat([]byte{9}, 20)}); err != nil {
		t.Fatal(err)
	}

	for _, alg := range []string{"ecc", "rsa"} {
		t.Run(alg, func(t *testing.T) {
			dir := t.TempDir()
			ak, err := tp.LoadAK(AKOptions{Alg: alg})
			if err != nil {
				t.Fatal(err)
			}
			defer tp.FlushAK(ak)

			nonce := []byte{0xde, 0xad, 0xbe, 0xef, 0x01}
			indexes := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 23}
			q, values, err := tp.QuoteWithValues(ak, nonce, banks, indexes)
			if err != nil {
				t.Fatal(err)
			}
			var pcrFile bytes.Buffer
			if err := WriteTPM2ToolsPCRs(&pcrFile, banks, indexes, values); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "quote.msg"), q.Attest)
			writeFile(t, filepath.Join(dir, "quote.sig"), q.Signature)
			writeFile(t, filepath.Join(dir, "quote.pcrs"), pcrFile.Bytes())
			writeFile(t, filepath.Join(dir, "ak.pem"), pemOf(t, ak.PublicKey))

			args := []string{"-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs", "-g", "sha256", "-q", hex.EncodeToString(nonce)}
			// tpm2_checkquote works offline, so it needs no TCTI.
			tpm2Tools(t, "", dir, "tpm2_checkquote", args...)

			// tpm2_checkquote must reject a PCR file that does not match, or
			// the check above proves nothing.
			v, _ := values.Get(banks[0], 10)
			v[0] ^= 1
			pcrFile.Reset()
			if err := WriteTPM2ToolsPCRs(&pcrFile, banks, indexes, values); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "wrong.pcrs"), pcrFile.Bytes())
			args[7] = "wrong.pcrs"
			cmd := exec.Command("tpm2_checkquote", args...)
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Errorf("tpm2_checkquote accepted a wrong PCR 10 value:\n%s", out)
			}
		})
	}
}

func TestInteropWeVerifyTPM2Quote(t *testing.T) {
	requireTPM2Tools(t)
	inst, tp := startSwtpm(t, "")
	tcti := swtpmTCTI(t, inst)
	dir := t.TempDir()

	// swtpm serves one connection at a time, so tpm2-tools waits while
	// imashard holds the socket.
	tp.Close()

	// Without a resource manager, every tpm2-tools command leaves its
	// transient objects loaded, so each is followed by a flush.
	tpm2Tools(t, tcti, dir, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
	tpm2Tools(t, tcti, dir, "tpm2_flushcontext", "-t")
	tpm2Tools(t, tcti, dir, "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u", "ak.pub", "-n", "ak.name", "-r", "ak.priv")
	tpm2Tools(t, tcti, dir, "tpm2_flushcontext", "-t")
	tpm2Tools(t, tcti, dir, "tpm2_flushcontext", "-s")
	tpm2Tools(t, tcti, dir, "tpm2_quote", "-c", "ak.ctx", "-l", "sha256:0,10,16+sha1:10", "-q", "aabbccdd",
		"-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256")
	tpm2Tools(t, tcti, dir, "tpm2_flushcontext", "-t")

	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	key, name, err := ParseAKPublic(read("ak.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(name, read("ak.name")) {
		t.Errorf("AK name %x, tpm2_createak wrote %x", name, read("ak.name"))
	}
	values, banks, err := ParseTPM2ToolsPCRs(read("quote.pcrs"))
	if err != nil {
		t.Fatal(err)
	}
	if len(banks) != 2 || banks[0] != pcr.SHA256 || banks[1] != pcr.SHA1 {
		t.Errorf("banks in tpm2_quote's PCR file = %v, want [sha256 sha1]", banks)
	}

	q := &Quote{Attest: read("quote.msg"), Signature: read("quote.sig")}
	nonce := []byte{0xaa, 0xbb, 0xcc, 0xdd}
	info, err := VerifyQuote(key, q, nonce, values)
	if err != nil {
		t.Fatalf("VerifyQuote of tpm2_quote's quote: %v", err)
	}
	if len(info.Selection[pcr.SHA256]) != 3 || len(info.Selection[pcr.SHA1]) != 1 {
		t.Errorf("selection = %v, want sha256 [0 10 16] and sha1 [10]", info.Selection)
	}

	// The same PCR values must match what imashard reads from the TPM.
	tp, err = Open(inst.Spec())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	ours, err := tp.ReadPCRs([]pcr.Alg{pcr.SHA256}, []int{0, 10, 16})
	if err != nil {
		t.Fatal(err)
	}
	for _, index := range []int{0, 10, 16} {
		a, _ := ours.Get(pcr.SHA256, index)
		b, _ := values.Get(pcr.SHA256, index)
		if !bytes.Equal(a, b) {
			t.Errorf("sha256 PCR %d: we read %x, tpm2_quote wrote %x", index, a, b)
		}
	}

	if _, err := VerifyQuote(key, q, []byte{0xaa}, values); err == nil {
		t.Error("tpm2_quote's quote verified with a wrong nonce")
	}
}

// TestInteropTCP reaches one swtpm over TCP with both tpm2-tools (swtpm
// TCTI with host and port) and imashard's tcp: transport.
func TestInteropTCP(t *testing.T) {
	requireTPM2Tools(t)
	if err := swtpm.Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	port := freeLoopbackPortPair(t)
	inst, err := swtpm.StartTCP(t.TempDir(), port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })

	tp, err := Open(inst.Spec())
	if err != nil {
		t.Fatal(err)
	}
	digest := bytes.Repeat([]byte{0x42}, 32)
	if err := tp.ExtendPCR(16, map[pcr.Alg][]byte{pcr.SHA256: digest}); err != nil {
		t.Fatal(err)
	}
	// swtpm serves one connection at a time.
	tp.Close()

	dir := t.TempDir()
	tcti := "swtpm:host=127.0.0.1,port=" + itoa(port)
	tpm2Tools(t, tcti, dir, "tpm2_pcrread", "sha256:16", "-o", "pcr16.bin")
	got, err := os.ReadFile(filepath.Join(dir, "pcr16.bin"))
	if err != nil {
		t.Fatal(err)
	}
	want := extended(t, pcr.SHA256, pcr.Zero(pcr.SHA256), digest)
	if !bytes.Equal(got, want) {
		t.Errorf("tpm2_pcrread over TCP sees PCR 16 = %x, want %x", got, want)
	}
}

// freeLoopbackPortPair finds a port P where P and P+1 are free on
// 127.0.0.1. Another process may still take them before swtpm binds.
func freeLoopbackPortPair(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+itoa(port+1))
		l.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("no free pair of loopback ports")
	return 0
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestInteropAKTemplateMatchesCreatePrimary checks the tpm2_createprimary
// command lines in docs/attestation-key.md derive the same AK as LoadAK.
func TestInteropAKTemplateMatchesCreatePrimary(t *testing.T) {
	requireTPM2Tools(t)
	inst, tp := startSwtpm(t, "")
	tcti := swtpmTCTI(t, inst)

	names := make(map[string][]byte)
	for _, alg := range []string{"ecc", "rsa"} {
		ak, err := tp.LoadAK(AKOptions{Alg: alg})
		if err != nil {
			t.Fatal(err)
		}
		names[alg] = ak.Name
		if err := tp.FlushAK(ak); err != nil {
			t.Fatal(err)
		}
	}
	tp.Close()

	dir := t.TempDir()
	attrs := "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign"
	for alg, keyAlg := range map[string]string{"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"} {
		tpm2Tools(t, tcti, dir, "tpm2_createprimary", "-C", "e", "-G", keyAlg, "-g", "sha256", "-a", attrs, "-c", alg+".ctx")
		tpm2Tools(t, tcti, dir, "tpm2_readpublic", "-c", alg+".ctx", "-n", alg+".name")
		tpm2Tools(t, tcti, dir, "tpm2_flushcontext", "-t")

		name, err := os.ReadFile(filepath.Join(dir, alg+".name"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(name, names[alg]) {
			t.Errorf("%s: tpm2_createprimary derived name %x, LoadAK %x", alg, name, names[alg])
		}
	}
}
