package qemu_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/pkg/swtpm"
	"github.com/imashard/imashard/pkg/tpm"
	"github.com/imashard/imashard/qemu/scenario"
	"github.com/imashard/imashard/qemu/vm"
)

// verifyOnHost writes the shards the guest printed to a directory and
// verifies them offline, pinning the AK that a new swtpm on the guest's
// state directory derives after QEMU has exited.
func verifyOnHost(t *testing.T, stateDir string, shards map[string][]byte) *shard.Report {
	t.Helper()
	dir := t.TempDir()
	for name, data := range shards {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	inst, err := swtpm.Start(stateDir)
	if err != nil {
		t.Fatalf("start swtpm on the guest's state: %v", err)
	}
	defer inst.Stop()
	tp, err := tpm.Open(inst.Spec())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	ak, err := tp.LoadAK(tpm.AKOptions{})
	if err != nil {
		t.Fatalf("derive AK on the host: %v", err)
	}
	defer tp.FlushAK(ak)

	rep, err := shard.Verify(context.Background(), shard.VerifyOptions{Dir: dir, AKPublic: ak.PublicKey})
	if err != nil {
		t.Fatalf("host verification of %d shards: %v", len(shards), err)
	}
	return rep
}

// The demo runs three boots joined by `imashard kexec`. Boot 2 verifies one
// carried shard and boot 3 two, each with its live log. Then the host
// verifies the two shards offline with the AK it derives itself.
func TestDemoThreeBoots(t *testing.T) {
	g := needGuest(t)
	state := t.TempDir()
	out := runChain(t, g, scenario.Chain{Boots: 3}, state)

	for i, b := range out.Boots {
		r := decodeReport(t, b)
		want := "verified"
		if i == 0 {
			want = "cold-boot"
		}
		if r.Result != want || !r.OK || b.Status != 0 {
			t.Errorf("boot %d: result %q ok %v status %d, want %s true 0 (error %q)", b.Number, r.Result, r.OK, b.Status, want, r.Error)
		}
		if len(r.Carried) != i {
			t.Errorf("boot %d: carried %d shards %v, want %d", b.Number, len(r.Carried), r.Carried, i)
		}
	}
	if out.KexecFailed != 0 {
		t.Errorf("imashard kexec returned in %d boots", out.KexecFailed)
	}
	if len(out.Shards) != 2 {
		t.Fatalf("boot 3 printed %d shards, want 2", len(out.Shards))
	}

	rep := verifyOnHost(t, state, out.Shards)
	if !rep.OK || len(rep.Shards) != 2 {
		t.Errorf("host report ok %v with %d shards, want true and 2", rep.OK, len(rep.Shards))
	}
	for i, s := range rep.Shards {
		if s.Sequence != uint64(i) && s.Sequence != uint64(i+1) {
			t.Errorf("shard %d has sequence %d", i, s.Sequence)
		}
		if s.Entries < 1 {
			t.Errorf("shard %s has %d entries, want the workload's entries", s.File, s.Entries)
		}
	}
}

// One changed byte in the carried shard must fail boot 2 with a chain rule
// error, and the shard must still be kept as evidence.
func TestTamperedShardFailsBoot(t *testing.T) {
	g := needGuest(t)
	out := runChain(t, g, scenario.Chain{Boots: 2, Tamper: true}, t.TempDir())

	r := decodeReport(t, out.Boots[1])
	if r.Result != "failed" || r.OK || out.Boots[1].Status == 0 {
		t.Errorf("boot 2: result %q ok %v status %d, want failed false non-zero", r.Result, r.OK, out.Boots[1].Status)
	}
	switch r.Kind {
	case "header-mismatch", "replay-mismatch", "bad-signature", "malformed", "truncated", "wrong-ak":
		t.Logf("boot 2 rejected the tampered shard: %s: %s", r.Kind, r.Error)
	default:
		t.Errorf("boot 2: error kind %q (%s), want a tamper error", r.Kind, r.Error)
	}
	if len(r.Carried) != 1 {
		t.Errorf("boot 2: carried %v, want the one tampered shard kept", r.Carried)
	}
}

// kexec_file_load under the default tcb policy adds no entries, so the chain
// verifies as with kexec_load.
func TestSyscallFileChainVerifies(t *testing.T) {
	g := needGuest(t)
	out := runChain(t, g, scenario.Chain{Boots: 2, KexecArgs: "--syscall file"}, t.TempDir())
	r := decodeReport(t, out.Boots[1])
	if r.Result != "verified" || !r.OK || out.Boots[1].Status != 0 {
		t.Errorf("boot 2: result %q ok %v status %d, want verified (error %q)", r.Result, r.OK, out.Boots[1].Status, r.Error)
	}
}

// movingLogError matches the refusals of imashard kexec and of the shard
// snapshot when measurements keep arriving.
var movingLogError = regexp.MustCompile(`imashard: .*(kept growing|kept moving|kept changing).*`)

// A loop that keeps adding entries during the snapshot and the kexec: the
// next boot verifies, or imashard refuses to kexec. A boot 2 that fails
// verification would be a silently broken chain.
func TestBackgroundEntriesNeverBreakChain(t *testing.T) {
	g := needGuest(t)
	c := scenario.Chain{Boots: 2, Background: true}
	res := runGuest(t, g, t.TempDir(), scenario.Overlay(g.kernelData, g.initramfsData, c.Script()), 6*time.Minute)
	out, err := scenario.Parse(res.Console)
	if err != nil {
		t.Fatalf("parse console: %v", err)
	}

	switch {
	case len(out.Boots) == 1 && out.KexecFailed == 1:
		// Either the snapshot could not quote a still state, or entries
		// arrived between the snapshot and the kexec on every attempt.
		line := movingLogError.FindString(res.Console)
		if line == "" {
			t.Errorf("imashard kexec returned without an error about the moving log; console tail:\n%s", tail(res.Console, 40))
		}
		if st := strings.TrimSpace(vm.Sections(res.Console, "kexec-failed")[0]); st == "0" {
			t.Errorf("imashard kexec returned with status 0")
		}
		t.Logf("imashard rejected the kexec while entries kept arriving: %s", line)
	case len(out.Boots) == 2:
		r := decodeReport(t, out.Boots[1])
		if r.Result != "verified" || !r.OK {
			t.Errorf("boot 2 after kexec under load: result %q (%s): the chain broke", r.Result, r.Error)
		}
		t.Logf("boot 2 verified although entries kept arriving in boot 1")
	default:
		t.Errorf("%d boots and %d failed kexecs; want 2 boots, or 1 boot with a refused kexec", len(out.Boots), out.KexecFailed)
	}
}

// A policy rule that measures the kexec_file_load command line adds a
// kexec-cmdline entry at the first load, after the snapshot. imashard kexec
// must notice it before rebooting and snapshot again. IMA skips an entry
// whose template digest it already has, so the second load of the same
// command line adds nothing, and the chain that boot 2 receives verifies.
func TestKexecFileMeasuringPolicyResnapshots(t *testing.T) {
	g := needGuest(t)
	c := scenario.Chain{Boots: 2, KexecArgs: "--syscall file", PolicyRules: []string{"measure func=KEXEC_CMDLINE"}}
	res := runGuest(t, g, t.TempDir(), scenario.Overlay(g.kernelData, g.initramfsData, c.Script()), 4*time.Minute)
	out, err := scenario.Parse(res.Console)
	if err != nil {
		t.Fatalf("parse console: %v", err)
	}
	if !strings.Contains(res.Console, "IMA entries arrived after the final snapshot; snapshotting again") {
		t.Errorf("imashard kexec did not notice the entry that kexec_file_load added")
	}
	if len(out.Boots) != 2 {
		t.Fatalf("%d boots, want 2", len(out.Boots))
	}
	r := decodeReport(t, out.Boots[1])
	if r.Result != "verified" || !r.OK {
		t.Errorf("boot 2: result %q ok %v (error %q), want verified", r.Result, r.OK, r.Error)
	}
}
