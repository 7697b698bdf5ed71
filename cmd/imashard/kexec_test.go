package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imashard/imashard/pkg/handoff"
	"github.com/imashard/imashard/pkg/shard"
	"github.com/u-root/u-root/pkg/cpio"
)

// appendedFiles returns the regular files of the archive that imashard
// kexec appended after base.
func appendedFiles(t *testing.T, initrd, base []byte) map[string][]byte {
	t.Helper()
	if !bytes.HasPrefix(initrd, base) {
		t.Fatalf("next initrd does not start with the given initrd")
	}
	start := (len(base) + 3) / 4 * 4
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(initrd[start:])))
	if err != nil {
		t.Fatalf("read appended archive at offset %d: %v", start, err)
	}
	files := map[string][]byte{}
	for _, r := range recs {
		if r.Mode&cpio.S_IFMT != cpio.S_IFREG {
			continue
		}
		data, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			t.Fatal(err)
		}
		files[r.Name] = data
	}
	return files
}

// minimalBzImage returns the smallest image whose setup header imashard's
// kexec_load loader accepts (offsets from Linux's
// Documentation/arch/x86/boot.rst): one setup sector, boot protocol 2.15,
// a 64-bit entry point, relocatable, 2 MiB alignment.
func minimalBzImage() []byte {
	le := binary.LittleEndian
	img := make([]byte, 3*512)
	img[0x1f1] = 1                      // setup_sects
	le.PutUint16(img[0x1fe:], 0xaa55)   // boot_flag
	img[0x201] = 0x6a                   // the jump: the header ends at 0x26c
	copy(img[0x202:], "HdrS")           // header
	le.PutUint16(img[0x206:], 0x020f)   // version
	img[0x211] = 1                      // loadflags: LOADED_HIGH
	le.PutUint32(img[0x230:], 0x200000) // kernel_alignment
	img[0x234] = 1                      // relocatable_kernel
	le.PutUint16(img[0x236:], 1)        // xloadflags: XLF_KERNEL_64
	return img
}

func TestKexecDryRunCarriesChain(t *testing.T) {
	inst := startSWTPM(t)

	work := t.TempDir()
	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	logPath := filepath.Join(work, "binary_runtime_measurements")
	dir := filepath.Join(work, "chain")
	kernel := filepath.Join(work, "vmlinuz")
	base := []byte("base initrd, 27 bytes long.")
	initrdPath := filepath.Join(work, "initrd")
	note := filepath.Join(work, "carry", "note")
	os.MkdirAll(filepath.Dir(note), 0o755)
	os.WriteFile(kernel, minimalBzImage(), 0o644)
	os.WriteFile(initrdPath, base, 0o644)
	os.WriteFile(note, []byte("carried"), 0o644)

	for i, cut := range [][2]int{{0, 50}, {50, 120}} {
		measureInto(t, inst.Spec(), src, logPath, cut[0], cut[1])
		out := filepath.Join(work, "next-initrd")
		os.Remove(out)
		stdout, err := runCLI(t, "kexec", "--dry-run", "--json", "--kernel", kernel, "--initrd", initrdPath,
			"--cmdline", "console=ttyS0", "--carry", filepath.Dir(note), "--output-initrd", out,
			"--dir", dir, "--log", logPath, "--tpm", inst.Spec())
		if err != nil {
			t.Fatalf("dry run %d: %v", i, err)
		}

		var res struct {
			Covered int64 `json:"covered_entries"`
			Steps   []struct {
				Name     string `json:"name"`
				Duration int64  `json:"duration_ns"`
			} `json:"steps"`
		}
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("dry run %d output %q: %v", i, stdout, err)
		}
		if res.Covered != int64(cut[1]) {
			t.Errorf("dry run %d covers %d entries, want the whole log of %d", i, res.Covered, cut[1])
		}
		if len(res.Steps) != 4 || !strings.HasPrefix(res.Steps[1].Name, "snapshot: TPM") ||
			!strings.HasPrefix(res.Steps[2].Name, "snapshot: read log") || res.Steps[3].Name != "build initrd" {
			t.Errorf("dry run %d steps = %+v, want reading, the snapshot's TPM part and log part, and build initrd", i, res.Steps)
		}
		if len(res.Steps) == 4 && res.Steps[1].Duration <= 0 {
			t.Errorf("dry run %d: TPM time %v, want a positive duration", i, res.Steps[1].Duration)
		}

		initrd, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		files := appendedFiles(t, initrd, base)
		if got := string(files[strings.TrimPrefix(note, "/")]); got != "carried" {
			t.Errorf("dry run %d: carried note = %q, want carried", i, got)
		}
		for seq := 0; seq <= i; seq++ {
			name := shard.FileName(uint64(seq))
			want, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatalf("dry run %d: %v", i, err)
			}
			if got := files[handoff.ShardDir+"/"+name]; !bytes.Equal(got, want) {
				t.Errorf("dry run %d: carried %s differs from the chain directory's (%d and %d bytes)", i, name, len(got), len(want))
			}
		}
		if _, ok := files[handoff.ShardDir+"/lock"]; ok {
			t.Errorf("dry run %d carried the snapshot lock file", i)
		}
		if n := len(files); n != i+2 {
			t.Errorf("dry run %d: archive has %d files, want %d shards and the note", i, n, i+1)
		}
	}
}

func TestKexecFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"kexec"},
		{"kexec", "--kernel", "k"},
		{"kexec", "--kernel", "k", "--initrd", "i", "--dry-run"},
		{"kexec", "--kernel", "k", "--initrd", "i", "--output-initrd", "o"},
		{"kexec", "--kernel", "k", "--initrd", "i", "--skip-snapshot"},
		{"kexec", "--kernel", "k", "--initrd", "i", "--syscall", "kexec_load"},
	} {
		if _, err := runCLI(t, args...); !errors.Is(err, errUsage) {
			t.Errorf("imashard %v: err = %v, want a usage error", args, err)
		}
	}
}

func TestBootWithoutShardsChecksReplay(t *testing.T) {
	inst := startSWTPM(t)

	work := t.TempDir()
	src := filepath.Join("..", "..", "pkg", "shard", "testdata", "sha1.log.bin")
	logPath := filepath.Join(work, "binary_runtime_measurements")
	measureInto(t, inst.Spec(), src, logPath, 0, 30)

	args := []string{"boot", "--json", "--from", filepath.Join(work, "none"), "--dir", filepath.Join(work, "chain"), "--log", logPath, "--tpm", inst.Spec()}
	stdout, err := runCLI(t, args...)
	if err != nil {
		t.Fatalf("boot with a log that replays from zero: %v", err)
	}
	var rep bootReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("boot output %q: %v", stdout, err)
	}
	if rep.Result != bootColdBoot || !rep.OK || rep.Replay == nil || rep.Replay.Entries != 30 {
		t.Errorf("report = %+v, want cold-boot after 30 entries", rep)
	}

	// An empty log against the same non-zero PCR 10, as after a kexec that
	// dropped the log: the history no longer replays from the reset state.
	other := filepath.Join(work, "other")
	os.WriteFile(other, nil, 0o644)
	stdout, err = runCLI(t, "boot", "--json", "--from", filepath.Join(work, "none"), "--dir", filepath.Join(work, "chain"), "--log", other, "--tpm", inst.Spec())
	if err == nil {
		t.Fatalf("boot with an empty log and a non-zero PCR 10 succeeded")
	}
	rep = bootReport{}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("boot output %q: %v", stdout, err)
	}
	if rep.Result != bootHistoryMissing || rep.OK {
		t.Errorf("report = %+v, want history-missing", rep)
	}
}

func TestKexecDryRunRejectsNonBzImage(t *testing.T) {
	work := t.TempDir()
	kernel := filepath.Join(work, "config-6.1")
	initrd := filepath.Join(work, "initrd")
	count := filepath.Join(work, "count")
	out := filepath.Join(work, "next-initrd")
	os.WriteFile(kernel, []byte("CONFIG_64BIT=y\n"), 0o644)
	os.WriteFile(initrd, []byte("initrd"), 0o644)
	os.WriteFile(count, []byte("1\n"), 0o644)

	_, err := runCLI(t, "kexec", "--dry-run", "--output-initrd", out, "--kernel", kernel, "--initrd", initrd,
		"--cmdline", "console=ttyS0", "--skip-snapshot", "--force", "--dir", work, "--count", count)
	if !errors.Is(err, handoff.ErrUnsupportedKernel) {
		t.Errorf("dry run with a text file as kernel: err = %v, want %v", err, handoff.ErrUnsupportedKernel)
	}
	if err != nil && !strings.Contains(err.Error(), kernel) {
		t.Errorf("error %q does not name the kernel file", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dry run wrote %s for a kernel kexec_load cannot start: %v", out, err)
	}
}
