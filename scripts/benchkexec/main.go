// Command benchkexec measures `imashard kexec --dry-run` on a large IMA log
// against swtpm, next to the floor of reading the same log with cat and
// quoting once with tpm2_quote.
//
// It writes an ima-ng log of -entries entries and starts swtpm on a
// loopback TCP port, which tpm2-tools reach through the swtpm TCTI. It
// extends PCR 10 of every bank with each entry's template hash, so log and
// TPM agree. Then it times the steps and prints them as a Markdown table.
package main

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/imashard/imashard/pkg/imalog"
	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/swtpm"
	"github.com/imashard/imashard/pkg/tpm"
)

func main() {
	entries := flag.Int("entries", 100000, "number of log `entries` to generate")
	port := flag.Int("port", 23321, "loopback TCP `port` for swtpm's command server (port+1 is its control channel)")
	bin := flag.String("imashard", "bin/imashard", "imashard `binary` to measure")
	kernel := flag.String("kernel", "", "kernel `file` to pass to the dry run (any file works; it is only read)")
	initrd := flag.String("initrd", "", "initrd `file` to pass to the dry run")
	work := flag.String("work", "", "work `directory` (default: a new temporary directory)")
	flag.Parse()
	if err := run(*entries, *port, *bin, *kernel, *initrd, *work); err != nil {
		fmt.Fprintf(os.Stderr, "benchkexec: %v\n", err)
		os.Exit(1)
	}
}

func run(n, port int, bin, kernel, initrd, work string) error {
	if kernel == "" || initrd == "" {
		return fmt.Errorf("-kernel and -initrd are required")
	}
	if work == "" {
		dir, err := os.MkdirTemp("", "benchkexec-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		work = dir
	}
	state := filepath.Join(work, "tpm")
	chain := filepath.Join(work, "chain")
	for _, d := range []string{state, chain} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}

	inst, err := swtpm.StartTCP(state, port)
	if err != nil {
		return err
	}
	defer inst.Stop()

	logPath := filepath.Join(work, "binary_runtime_measurements")
	start := time.Now()
	if err := writeLogAndExtend(logPath, n, inst.Spec()); err != nil {
		return err
	}
	info, _ := os.Stat(logPath)
	fmt.Fprintf(os.Stderr, "benchkexec: wrote and extended %d entries (%d bytes) in %v\n", n, info.Size(), time.Since(start).Round(time.Millisecond))

	out := filepath.Join(work, "next-initrd")
	start = time.Now()
	cmd := exec.Command(bin, "kexec", "--dry-run", "--json",
		"--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0",
		"--output-initrd", out, "--dir", chain, "--log", logPath, "--tpm", inst.Spec())
	cmd.Stderr = os.Stderr
	steps, err := cmd.Output()
	total := time.Since(start)
	if err != nil {
		return fmt.Errorf("imashard kexec --dry-run: %w", err)
	}
	outInfo, _ := os.Stat(out)

	catTime, err := timeCommand("cat", logPath)
	if err != nil {
		return err
	}
	quoteTime, err := timeQuote(port, work)
	if err != nil {
		return err
	}

	fmt.Printf("| step | time |\n| --- | --- |\n")
	fmt.Printf("| imashard kexec --dry-run, whole process | %v |\n", total.Round(time.Millisecond))
	var report struct {
		Steps []struct {
			Name     string        `json:"name"`
			Duration time.Duration `json:"duration_ns"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(steps, &report); err != nil {
		return fmt.Errorf("parse the dry run's step times: %w", err)
	}
	for _, st := range report.Steps {
		fmt.Printf("| dry run step: %s | %v |\n", st.Name, st.Duration.Round(time.Millisecond))
	}
	fmt.Printf("| floor: cat of the log | %v |\n", catTime.Round(time.Millisecond))
	fmt.Printf("| floor: one tpm2_quote (sha256:10) | %v |\n", quoteTime.Round(time.Millisecond))
	fmt.Printf("\nlog: %d entries, %d bytes; next initrd: %d bytes; %s/%s, %d CPUs\n",
		n, info.Size(), outInfo.Size(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	return nil
}

// writeLogAndExtend writes n ima-ng entries for made-up files and extends
// each entry's template hash into PCR 10 of every allocated bank.
func writeLogAndExtend(path string, n int, spec string) error {
	t, err := tpm.Open(spec)
	if err != nil {
		return err
	}
	defer t.Close()
	banks, err := t.Banks()
	if err != nil {
		return err
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := imalog.NewWriter(f, imalog.LittleEndian)

	for i := 0; i < n; i++ {
		name := fmt.Sprintf("/usr/lib/bench/file-%07d", i)
		fileDigest := sha256.Sum256([]byte(name))
		data := imaNGData(fileDigest[:], name)
		digest := sha1.Sum(data)
		e := &imalog.Entry{Index: int64(i), PCR: 10, TemplateDigest: digest[:], TemplateName: "ima-ng", TemplateData: data}
		if err := w.Write(e); err != nil {
			return err
		}

		digests := map[pcr.Alg][]byte{}
		for _, alg := range banks {
			h, err := e.TemplateHash(alg)
			if err != nil {
				return fmt.Errorf("entry %d: %w", i, err)
			}
			digests[alg] = h
		}
		if err := t.ExtendPCR(10, digests); err != nil {
			return fmt.Errorf("extend entry %d: %w", i, err)
		}
	}
	slog.Debug("log written", "entries", n, "banks", banks)
	return nil
}

// imaNGData encodes the ima-ng template fields d-ng ("sha256:" NUL digest)
// and n-ng (name NUL), each preceded by its little-endian length.
func imaNGData(fileDigest []byte, name string) []byte {
	dng := append([]byte("sha256:\x00"), fileDigest...)
	nng := append([]byte(name), 0)
	var b []byte
	for _, field := range [][]byte{dng, nng} {
		l := len(field)
		b = append(b, byte(l), byte(l>>8), byte(l>>16), byte(l>>24))
		b = append(b, field...)
	}
	return b
}

func timeCommand(name string, args ...string) (time.Duration, error) {
	cmd := exec.Command(name, args...)
	// A nil Stdout sends the output to /dev/null, as `cat FILE >/dev/null`.
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return time.Since(start), nil
}

// timeQuote creates an AK with tpm2-tools (not timed) and times one
// tpm2_quote over PCR 10 of the sha256 bank.
func timeQuote(port int, work string) (time.Duration, error) {
	env := append(os.Environ(), fmt.Sprintf("TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=%d", port))
	run := func(args ...string) error {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	// A restricted signing primary made persistent, so that tpm2_quote
	// needs no saved context from an earlier connection.
	if err := run("tpm2_createprimary", "-C", "e", "-G", "ecc256:ecdsa-sha256:null", "-c", "ak.ctx",
		"-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"); err != nil {
		return 0, err
	}
	if err := run("tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", "0x81010010"); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := run("tpm2_quote", "-c", "0x81010010", "-l", "sha256:10", "-q", "abcdef", "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256"); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
