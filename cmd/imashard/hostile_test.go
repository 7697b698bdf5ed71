package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/shard"
)

// TestOversizedInputFilesRejected passes a 2 MiB file where a key, quote or
// PCR file belongs, in place of /dev/zero. Every command must stop at a size
// bound with an error naming the file instead of reading until memory runs
// out.
func TestOversizedInputFilesRejected(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(dir, "chain")
	quoteDir := filepath.Join(dir, "quote")
	for _, d := range []string{chain, quoteDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{quoteMessageFile, quoteSignatureFile} {
		if err := os.WriteFile(filepath.Join(quoteDir, name), []byte{0}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bigQuoteDir := filepath.Join(dir, "bigquote")
	if err := os.Mkdir(bigQuoteDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(big, filepath.Join(bigQuoteDir, quoteMessageFile)); err != nil {
		t.Fatal(err)
	}

	akPEM := filepath.Join(dir, "ak.pem")
	pemText := "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEO9Pu6H6+anSOiGCRkmX1Bvgvu1FU\n6yNB1RVQ+Gt7shyAXApPVywYHBVK1R3nXU6o/PG9J/2K2nRfrDWDuKz98g==\n-----END PUBLIC KEY-----\n"
	if err := os.WriteFile(akPEM, []byte(pemText), 0o644); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "binary_runtime_measurements")
	if err := os.WriteFile(list, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	cases := map[string][]string{
		"verify ak":            {"verify", "--ak", big, chain},
		"verify trusted":       {"verify", "--ak", akPEM, "--trusted-start", big, chain},
		"quote verify ak":      {"quote", "verify", "--ak", big, "--nonce", "", quoteDir},
		"quote verify pcrs":    {"quote", "verify", "--ak", akPEM, "--nonce", "", "--pcrs", big, quoteDir},
		"log replay pcrs":      {"log", "replay", "--pcrs", "sha1," + big, list},
		"log replay from":      {"log", "replay", "--from", "sha1," + big, list},
		"quote verify message": {"quote", "verify", "--ak", akPEM, "--nonce", "", bigQuoteDir},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := runCLI(t, args...)
			if err == nil {
				t.Fatal("command succeeded on a 2 MiB input file")
			}
			if errors.Is(err, errUsage) {
				t.Errorf("error %q is a usage error, want exit status 1", err)
			}
			if !strings.Contains(err.Error(), "larger than") || !strings.Contains(err.Error(), "big") {
				t.Errorf("error %q does not report the oversized file %s", err, big)
			}
		})
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "binary_runtime_measurements")
	if err := os.WriteFile(list, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not an IMA list at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"help", []string{"log", "show", "--help"}, 0},
		{"unknown flag", []string{"pcrs", "--bogus"}, 2},
		{"missing required flag", []string{"verify", dir}, 2},
		{"malformed tcp spec", []string{"pcrs", "--tpm", "tcp:no-port"}, 2},
		{"unknown spec", []string{"pcrs", "--tpm", "tpm0"}, 2},
		{"unix spec without path", []string{"pcrs", "--tpm", "unix:"}, 2},
		{"unreachable socket", []string{"pcrs", "--tpm", "unix:" + filepath.Join(dir, "none.sock")}, 1},
		{"missing list", []string{"log", "show", filepath.Join(dir, "none")}, 1},
		{"digest size out of range", []string{"log", "show", "--digest-size", "65", list}, 2},
		{"malformed list", []string{"log", "show", "--format", "binary", junk}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := runCLI(t, c.args...)
			if got := exitCode(err); got != c.want {
				t.Errorf("imashard %v: exit status %d (err %v), want %d", c.args, got, err, c.want)
			}
		})
	}
}

func TestKexecRejectsDeviceImages(t *testing.T) {
	if _, err := os.Stat(os.DevNull); err != nil {
		t.Skipf("%s missing: %v", os.DevNull, err)
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "image")
	if err := os.WriteFile(image, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}

	// /dev/null is a safe device in place of /dev/zero, which has no end.
	for _, flagName := range []string{"--kernel", "--initrd"} {
		args := []string{"kexec", "--dry-run", "--output-initrd", filepath.Join(dir, "out"),
			"--kernel", image, "--initrd", image, "--dir", dir, "--log", filepath.Join(dir, "none"),
			"--tpm", "unix:" + filepath.Join(dir, "none.sock")}
		for i := range args {
			if args[i] == flagName {
				args[i+1] = os.DevNull
			}
		}
		_, err := runCLI(t, args...)
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("kexec %s %s: err = %v, want a not-a-regular-file error", flagName, os.DevNull, err)
		}
	}
}

func TestAKUnknownSubcommand(t *testing.T) {
	_, err := runCLI(t, "ak", "exprot")
	if !errors.Is(err, errUsage) {
		t.Fatalf("ak exprot: err = %v, want a usage error", err)
	}
	if !strings.Contains(err.Error(), `"exprot"`) {
		t.Errorf("error %q does not name the unknown subcommand", err)
	}
}

func TestBootFailureNamesFromDirectory(t *testing.T) {
	inst := startSWTPM(t)

	work := t.TempDir()
	from := filepath.Join(work, "carried")
	if err := os.Mkdir(from, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(from, "shard-0000000000.ims"), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(work, "binary_runtime_measurements")
	if err := os.WriteFile(logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	stdout, err := runCLI(t, "boot", "--from", from, "--dir", filepath.Join(work, "chain"), "--log", logPath, "--tpm", inst.Spec())
	if err == nil {
		t.Fatal("boot accepted a garbage shard")
	}
	if !strings.Contains(stdout, "VERIFICATION FAILED") {
		t.Errorf("summary %q does not report the failure", stdout)
	}
	if !strings.Contains(stdout, from) {
		t.Errorf("summary %q does not name the --from directory %s", stdout, from)
	}
}

func TestVerifyAcceptsTPM2BPublicAK(t *testing.T) {
	inst := startSWTPM(t)

	work := t.TempDir()
	enroll := filepath.Join(work, "enroll")
	if _, err := runCLI(t, "ak", "export", "--out", enroll, "--tpm", inst.Spec()); err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(work, "chain")
	if err := os.Mkdir(chain, 0o755); err != nil {
		t.Fatal(err)
	}

	// An empty chain fails verification, but only after the key was read.
	for _, name := range []string{"ak.pem", "ak.pub"} {
		_, err := runCLI(t, "verify", "--ak", filepath.Join(enroll, name), chain)
		if err == nil {
			t.Fatalf("verify --ak %s of an empty chain succeeded", name)
		}
		if !errors.Is(err, shard.ErrMissingShard) {
			t.Errorf("verify --ak %s: err = %v, want shard.ErrMissingShard after reading the key", name, err)
		}
	}
}

func TestVerifyNamesWrongPEMType(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ak"}}
	cert, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	chain := filepath.Join(work, "chain")
	if err := os.Mkdir(chain, 0o755); err != nil {
		t.Fatal(err)
	}
	blocks := []*pem.Block{
		{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&key.PublicKey)},
		{Type: "PRIVATE KEY", Bytes: pkcs8},
		{Type: "CERTIFICATE", Bytes: cert},
	}
	for _, block := range blocks {
		path := filepath.Join(work, "ak.pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := runCLI(t, "verify", "--ak", path, chain)
		if err == nil {
			t.Fatalf("verify --ak with a %s block succeeded", block.Type)
		}
		if !strings.Contains(err.Error(), `"`+block.Type+`"`) {
			t.Errorf("%s block: error %q does not name the block type", block.Type, err)
		}
		if !strings.Contains(err.Error(), "openssl") {
			t.Errorf("%s block: error %q gives no command that extracts the public key", block.Type, err)
		}
	}
}
