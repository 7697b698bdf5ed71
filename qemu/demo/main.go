// Command demo runs the kexec demo in QEMU: three boots joined by
// `imashard kexec`, where each later boot verifies the carried shards and
// its live log with `imashard boot`. Then the host verifies the shards
// offline with `imashard verify`. It pins the AK that `imashard ak export`
// derives from the same swtpm state after QEMU has exited. The command
// prints a short report and exits 0 only when every verification passed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/imashard/imashard/pkg/swtpm"
	"github.com/imashard/imashard/qemu/scenario"
	"github.com/imashard/imashard/qemu/vm"
)

func main() {
	kernel := flag.String("kernel", os.Getenv("IMASHARD_KERNEL"), "kernel `file` (bzImage); default $IMASHARD_KERNEL")
	initramfs := flag.String("initramfs", os.Getenv("IMASHARD_INITRAMFS"), "u-root initramfs `file` with imashard; default $IMASHARD_INITRAMFS")
	bin := flag.String("imashard", "bin/imashard", "host imashard `binary` for ak export and verify")
	work := flag.String("work", "", "`directory` for the swtpm state, console log and shards (default: a new directory under out/)")
	boots := flag.Int("boots", 3, "number of boots")
	flag.Parse()

	if err := run(*kernel, *initramfs, *bin, *work, *boots); err != nil {
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

type bootReport struct {
	Result  string   `json:"result"`
	OK      bool     `json:"ok"`
	Error   string   `json:"error"`
	Carried []string `json:"carried_shards"`
}

func run(kernel, initramfs, bin, work string, boots int) error {
	if kernel == "" || initramfs == "" {
		return fmt.Errorf("set -kernel and -initramfs (make demo does)")
	}
	if work == "" {
		work = filepath.Join("out", "demo-"+time.Now().UTC().Format("20060102-150405"))
	}
	state := filepath.Join(work, "tpm")
	for _, d := range []string{state, filepath.Join(work, "shards")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	kernelData, err := os.ReadFile(kernel)
	if err != nil {
		return err
	}
	initramfsData, err := os.ReadFile(initramfs)
	if err != nil {
		return err
	}

	chain := scenario.Chain{Boots: boots}
	fmt.Printf("demo: booting %s in QEMU (TCG) with swtpm; %d boots joined by imashard kexec\n", filepath.Base(kernel), boots)
	res, err := vm.Run(context.Background(), vm.Config{
		Kernel: kernel, Initrd: initramfs,
		Overlay:  scenario.Overlay(kernelData, initramfsData, chain.Script()),
		StateDir: state, WorkDir: work,
		Timeout: time.Duration(boots) * 2 * time.Minute,
	})
	if err != nil {
		return err
	}
	fmt.Printf("demo: guest finished in %v; console in %s\n", res.Duration.Round(time.Second), res.ConsolePath)

	out, err := scenario.Parse(res.Console)
	if err != nil {
		return err
	}
	failed := 0
	for _, b := range out.Boots {
		var r bootReport
		if err := json.Unmarshal(b.Report, &r); err != nil {
			return fmt.Errorf("boot %d: report is not JSON: %w", b.Number, err)
		}
		mark := "ok"
		if !r.OK || b.Status != 0 {
			mark, failed = "FAILED", failed+1
		}
		fmt.Printf("  boot %d: imashard boot: %-9s carried shards: %d  %s %s\n", b.Number, r.Result, len(r.Carried), mark, r.Error)
	}
	if len(out.Boots) != boots {
		return fmt.Errorf("guest ran %d boots, want %d", len(out.Boots), boots)
	}
	if out.KexecFailed != 0 {
		return fmt.Errorf("imashard kexec failed in %d boots; see %s", out.KexecFailed, res.ConsolePath)
	}

	var names []string
	for name, data := range out.Shards {
		names = append(names, name)
		if err := os.WriteFile(filepath.Join(work, "shards", name), data, 0o644); err != nil {
			return err
		}
	}
	sort.Strings(names)
	fmt.Printf("demo: the last boot printed %d shards: %s\n", len(names), strings.Join(names, " "))

	if err := exportAK(bin, state, filepath.Join(work, "ak")); err != nil {
		return err
	}
	verify := exec.Command(bin, "verify", "--ak", filepath.Join(work, "ak", "ak.pem"), filepath.Join(work, "shards"))
	verify.Stdout, verify.Stderr = os.Stdout, os.Stderr
	fmt.Printf("demo: %s\n", strings.Join(verify.Args, " "))
	verifyErr := verify.Run()

	switch {
	case verifyErr != nil:
		return fmt.Errorf("host verification: %w", verifyErr)
	case failed > 0:
		return fmt.Errorf("%d boots failed verification in the guest", failed)
	}
	fmt.Println("demo: PASSED: every boot verified its carried shards and live log, and the host verified the chain offline")
	return nil
}

// exportAK starts swtpm on the guest's state directory and runs
// `imashard ak export` against it.
func exportAK(bin, state, out string) error {
	inst, err := swtpm.Start(state)
	if err != nil {
		return fmt.Errorf("start swtpm on the guest's TPM state: %w", err)
	}
	defer func() {
		if err := inst.Stop(); err != nil {
			slog.Warn("stopping swtpm failed", "pid", inst.PID, "err", err)
		}
	}()
	cmd := exec.Command(bin, "ak", "export", "--tpm", inst.Spec(), "--out", out)
	cmd.Stderr = os.Stderr
	fmt.Printf("demo: %s\n", strings.Join(cmd.Args, " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("imashard ak export: %w", err)
	}
	return nil
}
