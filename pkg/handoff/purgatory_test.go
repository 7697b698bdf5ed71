package handoff

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPurgatoryMatchesSource reassembles purgatory_amd64.S and checks that
// purgatoryCode and the two patch offsets match it. On a mismatch it prints
// the Go literal to paste into purgatory.go.
func TestPurgatoryMatchesSource(t *testing.T) {
	for _, tool := range []string{"as", "objcopy", "nm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not found (apt-get install binutils)", tool)
		}
	}
	dir := t.TempDir()
	obj := filepath.Join(dir, "purgatory.o")
	bin := filepath.Join(dir, "purgatory.bin")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("as", "--64", "-o", obj, "purgatory_amd64.S")
	run("objcopy", "-O", "binary", "-j", ".text", obj, bin)
	code, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(code, purgatoryCode) {
		var lit strings.Builder
		for i, b := range code {
			if i%12 == 0 {
				lit.WriteString("\n\t")
			} else {
				lit.WriteString(" ")
			}
			fmt.Fprintf(&lit, "0x%02x,", b)
		}
		t.Errorf("purgatoryCode differs from the assembled purgatory_amd64.S (%d bytes, want %d); new literal:%s", len(purgatoryCode), len(code), lit.String())
	}

	symbols := map[string]uint64{}
	for _, line := range strings.Split(run("nm", obj), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		if v, err := strconv.ParseUint(f[0], 16, 64); err == nil {
			symbols[f[2]] = v
		}
	}
	for name, want := range map[string]uint64{"boot_params_address": purgatoryBootParamsOffset, "kernel_entry": purgatoryEntryOffset} {
		got, ok := symbols[name]
		if !ok {
			t.Errorf("symbol %s not in the assembled purgatory", name)
			continue
		}
		if got != want {
			t.Errorf("symbol %s at offset %#x, the loader writes it at %#x", name, got, want)
		}
	}
	for _, off := range []int{purgatoryBootParamsOffset, purgatoryEntryOffset} {
		if !bytes.Equal(purgatoryCode[off:off+8], make([]byte, 8)) {
			t.Errorf("purgatoryCode has %x at patch offset %#x, want eight zero bytes", purgatoryCode[off:off+8], off)
		}
	}
}
