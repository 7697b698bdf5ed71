package securityfs

import (
	"strings"
	"testing"
)

func FuzzParseListName(f *testing.F) {
	for _, seed := range []string{
		"binary_runtime_measurements", "binary_runtime_measurements_sha256_staged",
		"ascii_runtime_measurements_tpm_alg_12", "binary_runtime_measurements_tpm_alg_",
		"violations", "binary_runtime_measurements__staged",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		l, ok := ParseListName(name)
		if !ok {
			return
		}
		if l.Name != name || (l.Format != Binary && l.Format != ASCII) {
			t.Fatalf("ParseListName(%q) = %+v", name, l)
		}
		if l.Staged != strings.HasSuffix(name, "_staged") {
			t.Fatalf("ParseListName(%q) staged = %v", name, l.Staged)
		}
	})
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add("22 26 0:7 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:3 - securityfs securityfs rw\n")
	f.Add("1 0 0:1 / / rw - ramfs none rw\n30 1 0:9 / /mnt/a\\040b rw - securityfs x rw\n")
	f.Add("- securityfs\n1 2 3 4 - securityfs\n")
	f.Fuzz(func(t *testing.T, data string) {
		mount, err := parseMountinfo(strings.NewReader(data))
		if err != nil {
			return
		}
		if mount != "" && !strings.Contains(data, "securityfs") {
			t.Fatalf("found mount %q in input without securityfs", mount)
		}
	})
}

func TestParseMountinfo(t *testing.T) {
	got, err := parseMountinfo(strings.NewReader("1 0 0:1 / / rw - ramfs none rw\n30 1 0:9 / /mnt/a\\040b rw shared:1 - securityfs x rw\n"))
	if err != nil || got != "/mnt/a b" {
		t.Fatalf("parseMountinfo = %q, %v; want /mnt/a b", got, err)
	}
	got, err = parseMountinfo(strings.NewReader("1 0 0:1 / / rw - ramfs none rw\n"))
	if err != nil || got != "" {
		t.Fatalf("parseMountinfo without securityfs = %q, %v", got, err)
	}
}
