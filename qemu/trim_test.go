package qemu_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/qemu/vm"
)

// customKernelEnv names the bzImage of the custom Linux 7.2 kernel with
// CONFIG_IMA_STAGING and CONFIG_IMA_KEXEC (`make kernel KERNEL=custom`).
const customKernelEnv = "IMASHARD_CUSTOM_KERNEL"

func needCustomGuest(t *testing.T) guest {
	t.Helper()
	return loadGuest(t, customKernelEnv, "trim scenario")
}

type snapshotOutput struct {
	Sequence   uint64 `json:"sequence"`
	FirstIndex int64  `json:"first_index"`
	Entries    int64  `json:"entries"`
	Trim       *struct {
		Deleted      int64 `json:"deleted"`
		Carried      int64 `json:"carried"`
		CarryDropped int64 `json:"carry_dropped"`
		LiveStart    int64 `json:"live_start"`
		KernelCount  int64 `json:"kernel_entries"`
	} `json:"trim"`
}

// measureFunc defines the shell function the trim scenarios measure with:
// `measure DIR N` writes and reads the files f$((i+1)) to f$N in DIR and
// leaves i at N, so each read adds one entry to the IMA list.
const measureFunc = `
measure() { while [ $i -lt $2 ]; do i=$((i+1)); echo $i > $1/f$i; cat $1/f$i > /dev/null; done; }
`

// Rounds of measurements, each followed by `snapshot --trim`, keep the
// kernel's list short, and `verify --live` still verifies the whole history
// from the first shard through the trimmed live list.
func TestTrimRoundsVerifyLive(t *testing.T) {
	g := needCustomGuest(t)
	const rounds, perRound = 3, 40
	script := measureFunc + fmt.Sprintf(`
mkdir -p /run/imashard /ak
imashard ak export --out /ak > /dev/null
round=0
while [ $round -lt %d ]; do
	round=$((round+1))
	mkdir -p /w$round
	i=0
	measure /w$round %d
	echo "@@imashard-begin snapshot"
	imashard snapshot --dir /run/imashard --trim --json
	echo "@@imashard-end snapshot"
done
echo "@@imashard-begin verify"
imashard verify --live --ak /ak/ak.pem --json /run/imashard
echo "@@imashard-end verify"
echo "@@imashard-begin count"
cat /sys/kernel/security/integrity/ima/runtime_measurements_count
echo "@@imashard-end count"
`, rounds, perRound)
	res := runGuest(t, g, t.TempDir(), g.overlay(script), 4*time.Minute)

	snaps := vm.Sections(res.Console, "snapshot")
	if len(snaps) != rounds {
		t.Logf("console tail:\n%s", tail(res.Console, 80))
		t.Fatalf("%d snapshot sections, want %d", len(snaps), rounds)
	}
	nextFirst := int64(0)
	for i, s := range snaps {
		var out snapshotOutput
		if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &out); err != nil {
			t.Fatalf("round %d: snapshot output is not JSON: %v\n%s", i+1, err, s)
		}
		if out.Sequence != uint64(i) || out.FirstIndex != nextFirst {
			t.Errorf("round %d: shard %d from history index %d, want shard %d from %d", i+1, out.Sequence, out.FirstIndex, i, nextFirst)
		}
		if out.Entries < perRound {
			t.Errorf("round %d: shard has %d entries, want at least the %d measured files", i+1, out.Entries, perRound)
		}
		if out.Trim == nil || out.Trim.Deleted < out.Entries || out.Trim.LiveStart != out.FirstIndex+out.Entries {
			t.Errorf("round %d: trim %+v, want the shard's %d entries deleted and the live list starting at %d", i+1, out.Trim, out.Entries, out.FirstIndex+out.Entries)
		}
		if out.Trim != nil && out.Trim.KernelCount > 20 {
			t.Errorf("round %d: the kernel still has %d entries after the trim", i+1, out.Trim.KernelCount)
		}
		nextFirst = out.FirstIndex + out.Entries
	}

	verify := vm.Sections(res.Console, "verify")
	if len(verify) != 1 {
		t.Fatalf("%d verify sections, want 1", len(verify))
	}
	var report struct {
		OK   bool `json:"ok"`
		Live *struct {
			OK bool `json:"ok"`
		} `json:"live"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(verify[0])), &report); err != nil {
		t.Fatalf("verify output is not JSON: %v\n%s", err, verify[0])
	}
	if !report.OK || report.Live == nil || !report.Live.OK {
		t.Errorf("verify --live after %d trims: %s", rounds, verify[0])
	}

	counts := vm.Sections(res.Console, "count")
	if len(counts) == 1 {
		if n, err := strconv.Atoi(strings.TrimSpace(counts[0])); err != nil || n > 30 {
			t.Errorf("kernel entry count at the end = %q, want a short list", counts[0])
		}
	}
}

// trimKexecScript measures, snapshots with --trim, and kexecs with the
// given system call in boot 1. Boot 2 (after `imashard boot` in init)
// measures, snapshots with --trim again and runs verify --live over the
// whole chain from the first shard. With stage set, boot 1 stages the whole
// list right before the kexec and leaves it staged, without a final
// snapshot, so the next kernel receives the staged entries ahead of the
// current ones.
func trimKexecScript(syscall string, stage bool) string {
	kexec := "imashard kexec --syscall " + syscall + " --kernel /carry/vmlinuz --initrd /carry/initramfs.cpio --carry /carry --carry /scenario.sh"
	if stage {
		// dd writes "A\n" in one write(2), as the kernel requires.
		kexec = `echo "@@imashard-begin staged"
	echo A | dd of=/sys/kernel/security/integrity/ima/binary_runtime_measurements_staged bs=2 count=1 conv=notrunc status=none
	echo $?
	cat /sys/kernel/security/integrity/ima/binary_runtime_measurements_staged | wc -c
	echo "@@imashard-end staged"
	` + kexec + " --skip-snapshot --force"
	}
	return measureFunc + `
boot=1
if [ -e /carry/boot ]; then boot=$(cat /carry/boot); fi
echo "@@imashard-begin boot"
echo $boot
echo "@@imashard-end boot"
mkdir -p /w$boot /ak /run/imashard
imashard ak export --out /ak > /dev/null
i=0
measure /w$boot 30
echo "@@imashard-begin snapshot"
imashard snapshot --dir /run/imashard --trim --json
echo "@@imashard-end snapshot"
measure /w$boot 40
if [ $boot -lt 2 ]; then
	echo 2 > /carry/boot
	` + kexec + `
	echo "@@imashard-begin kexec-failed"
	echo $?
	echo "@@imashard-end kexec-failed"
else
` + verifyAndPrintChain + `
fi
`
}

// verifyAndPrintChain runs verify --live on /run/imashard and prints the
// report, every shard file and the AK for verifyTrimChainOnHost.
const verifyAndPrintChain = `
echo "@@imashard-begin verify"
imashard verify --live --ak /ak/ak.pem --json /run/imashard
echo "@@imashard-end verify"
for f in /run/imashard/shard-*; do
	echo "@@imashard-begin shardfile"
	echo $f
	base64 $f
	echo "@@imashard-end shardfile"
done
echo "@@imashard-begin akpem"
cat /ak/ak.pem
echo "@@imashard-end akpem"
`

// verifyTrimChainOnHost writes the shards that the guest printed to a directory and
// verifies the chain there with the AK public key the guest exported.
func verifyTrimChainOnHost(t *testing.T, console string) *shard.Report {
	t.Helper()
	dir := t.TempDir()
	files := vm.Sections(console, "shardfile")
	if len(files) == 0 {
		t.Fatal("guest printed no shard files")
	}
	for _, f := range files {
		name, body, _ := strings.Cut(strings.TrimSpace(f), "\n")
		data, err := vm.DecodeBase64(body)
		if err != nil {
			t.Fatalf("shard %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(strings.TrimSpace(name))), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pems := vm.Sections(console, "akpem")
	if len(pems) != 1 {
		t.Fatalf("%d AK sections, want 1", len(pems))
	}
	block, _ := pem.Decode([]byte(strings.TrimSpace(pems[0]) + "\n"))
	if block == nil {
		t.Fatalf("AK section is not PEM: %q", pems[0])
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("parse AK public key: %v", err)
	}
	report, err := shard.Verify(context.Background(), shard.VerifyOptions{Dir: dir, AKPublic: key})
	if err != nil {
		t.Fatalf("verify the chain on the host: %v", err)
	}
	return report
}

// Trim, kexec, trim again in the new kernel, then verify everything from
// the first shard. With kexec_file_load the custom kernel carries its list
// over, and with kexec_load it starts an empty one. Entries left staged at
// kexec arrive ahead of the current list.
func TestTrimKexecTrimVerify(t *testing.T) {
	g := needCustomGuest(t)
	cases := []struct {
		name    string
		syscall string
		stage   bool
	}{
		{"file", "file", false},
		{"load", "load", false},
		{"staged-at-kexec", "file", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := runGuest(t, g, t.TempDir(), g.overlay(trimKexecScript(c.syscall, c.stage)), 5*time.Minute)

			boots := vm.Sections(res.Console, "boot")
			if len(boots) != 2 {
				t.Logf("console tail:\n%s", tail(res.Console, 80))
				t.Fatalf("boot sections = %q, want two boots", boots)
			}
			if f := vm.Sections(res.Console, "kexec-failed"); len(f) != 0 {
				t.Fatalf("imashard kexec returned in boot 1: %q", f)
			}
			if c.stage {
				staged := vm.Sections(res.Console, "staged")
				fields := []string{}
				if len(staged) == 1 {
					fields = strings.Fields(staged[0])
				}
				if len(fields) != 2 || fields[0] != "0" {
					t.Fatalf("staging before kexec: %q, want status 0 and the staged list's size", staged)
				}
				if size, err := strconv.Atoi(fields[1]); err != nil || size == 0 {
					t.Errorf("staged list before kexec has %q bytes, want entries", fields[1])
				}
			}

			reports := vm.Sections(res.Console, "boot-report")
			if len(reports) != 2 {
				t.Fatalf("%d boot reports, want 2", len(reports))
			}
			var second struct {
				Result string `json:"result"`
				OK     bool   `json:"ok"`
				Error  string `json:"error"`
			}
			if err := json.Unmarshal([]byte(strings.TrimSpace(reports[1])), &second); err != nil {
				t.Fatalf("boot 2 report: %v\n%s", err, reports[1])
			}
			if !second.OK || second.Result != "verified" {
				t.Errorf("boot 2: imashard boot result %q ok %v error %q, want verified", second.Result, second.OK, second.Error)
			}

			snaps := vm.Sections(res.Console, "snapshot")
			if len(snaps) != 2 {
				t.Fatalf("%d snapshot sections, want 2", len(snaps))
			}
			for i, s := range snaps {
				var out snapshotOutput
				if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &out); err != nil {
					t.Fatalf("boot %d: snapshot output is not JSON: %v\n%s", i+1, err, s)
				}
				if out.Trim == nil || out.Trim.Deleted < out.Entries || out.Trim.LiveStart != out.FirstIndex+out.Entries {
					t.Errorf("boot %d: snapshot %+v trim %+v, want its entries trimmed", i+1, out, out.Trim)
				}
			}

			report, text := decodeVerify(t, res.Console)
			if !report.OK || report.Live == nil || !report.Live.OK {
				t.Errorf("verify --live in boot 2: %s", text)
			}
			if len(report.Shards) < 2 || report.Shards[0].FirstIndex != 0 {
				t.Errorf("verify covered shards %+v, want the chain from history index 0", report.Shards)
			}

			host := verifyTrimChainOnHost(t, res.Console)
			if !host.OK || len(host.Shards) != len(report.Shards) {
				t.Errorf("host verification: ok %v with %d shards, the guest verified %d", host.OK, len(host.Shards), len(report.Shards))
			}
		})
	}
}

// Staged trims with entries the shards do not cover: each round measures
// files, takes a plain snapshot, measures more files, and runs `snapshot
// --trim --trim-mode staged`. Its first trim stages the whole list, so
// the entries measured after the plain snapshot are staged although no
// shard holds them. They must be deleted from the kernel, kept in a carry
// file, and start the shard that the same command writes next.
func TestTrimStagedCarryNextShard(t *testing.T) {
	g := needCustomGuest(t)
	const rounds, perRound, between = 3, 20, 5
	script := measureFunc + fmt.Sprintf(`
mkdir -p /run/imashard /ak
imashard ak export --out /ak > /dev/null
round=0
while [ $round -lt %d ]; do
	round=$((round+1))
	mkdir -p /w$round
	i=0
	measure /w$round %d
	echo "@@imashard-begin plain"
	imashard snapshot --dir /run/imashard --json
	echo "@@imashard-end plain"
	measure /w$round %d
	echo "@@imashard-begin snapshot"
	imashard snapshot --dir /run/imashard --trim --trim-mode staged --json
	echo "@@imashard-end snapshot"
	echo "@@imashard-begin files"
	ls /run/imashard
	echo "@@imashard-end files"
done
`+verifyAndPrintChain, rounds, perRound, perRound+between)
	res := runGuest(t, g, t.TempDir(), g.overlay(script), 4*time.Minute)

	plains := vm.Sections(res.Console, "plain")
	snaps := vm.Sections(res.Console, "snapshot")
	files := vm.Sections(res.Console, "files")
	if len(plains) != rounds || len(snaps) != rounds || len(files) != rounds {
		t.Logf("console tail:\n%s", tail(res.Console, 80))
		t.Fatalf("%d plain, %d trim and %d file list sections, want %d each", len(plains), len(snaps), len(files), rounds)
	}
	type trimmed struct {
		snapshotOutput
		Before *struct {
			Deleted   int64 `json:"deleted"`
			Carried   int64 `json:"carried"`
			LiveStart int64 `json:"live_start"`
		} `json:"trim_before_snapshot"`
	}
	for i := range snaps {
		var plain snapshotOutput
		var out trimmed
		if err := json.Unmarshal([]byte(strings.TrimSpace(plains[i])), &plain); err != nil {
			t.Fatalf("round %d: plain snapshot output is not JSON: %v\n%s", i+1, err, plains[i])
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(snaps[i])), &out); err != nil {
			t.Fatalf("round %d: snapshot --trim output is not JSON: %v\n%s", i+1, err, snaps[i])
		}
		plainEnd := plain.FirstIndex + plain.Entries
		b := out.Before
		if b == nil || b.Carried < between || b.LiveStart != plainEnd || b.Deleted < plain.Entries+b.Carried {
			t.Errorf("round %d: trim before the snapshot %+v, want the %d entries after the plain shard's end %d carried and deleted with the shard's %d", i+1, b, between, plainEnd, plain.Entries)
			continue
		}
		if out.FirstIndex != plainEnd || out.Entries < b.Carried {
			t.Errorf("round %d: shard from history index %d with %d entries, want it to start at %d with the %d carried entries", i+1, out.FirstIndex, out.Entries, plainEnd, b.Carried)
		}
		tr := out.Trim
		if tr == nil || tr.CarryDropped != b.Carried || tr.LiveStart != out.FirstIndex+out.Entries {
			t.Errorf("round %d: trim after the snapshot %+v, want the %d carried entries dropped and the live list at %d", i+1, tr, b.Carried, out.FirstIndex+out.Entries)
		}
		if tr != nil && tr.KernelCount > 10 {
			t.Errorf("round %d: the kernel still has %d entries after the staged trim", i+1, tr.KernelCount)
		}
		if carry := fmt.Sprintf("carry-%d.bin", plainEnd); strings.Contains(files[i], carry) {
			t.Errorf("round %d: %s is still there although the new shard holds its entries:\n%s", i+1, carry, files[i])
		}
	}

	report, text := decodeVerify(t, res.Console)
	if !report.OK || report.Live == nil || !report.Live.OK || len(report.Shards) != 2*rounds {
		t.Errorf("verify --live after staged trims with carried entries: %s", text)
	}
	host := verifyTrimChainOnHost(t, res.Console)
	if !host.OK || len(host.Shards) != 2*rounds {
		t.Errorf("host verification: ok %v with %d shards, want %d", host.OK, len(host.Shards), 2*rounds)
	}
}

// The errors a trim meets on the real kernel, through the CLI: another
// process holding a list open for writing, readers holding one open, and
// a loaded kexec image. Each must fail with a clear error after a bounded
// wait, leave no partial trim, and let the chain verify afterwards.
func TestTrimErrors(t *testing.T) {
	g := needCustomGuest(t)
	const ima = "/sys/kernel/security/integrity/ima"
	script := measureFunc + `
mkdir -p /run/imashard /ak /w
imashard ak export --out /ak > /dev/null
i=0
measure /w 10
imashard snapshot --dir /run/imashard --trim > /dev/null

run() {
	name=$1
	shift
	echo "@@imashard-begin $name"
	"$@" 2>&1
	echo "exit status $?"
	ls /run/imashard
	cat /run/imashard/live-state.json
	echo "@@imashard-end $name"
}

# sleep holds the list open for as long as it runs.
sleep 8 >> ` + ima + `/binary_runtime_measurements_staged &
sleep 1
run writer imashard snapshot --dir /run/imashard --trim
wait

sleep 8 < ` + ima + `/binary_runtime_measurements &
sleep 8 < ` + ima + `/binary_runtime_measurements_sha256 &
sleep 1
run readers imashard snapshot --dir /run/imashard --trim
wait

run after-busy imashard snapshot --dir /run/imashard --trim

kexec -l /carry/vmlinuz -i /carry/initramfs.cpio --reuse-cmdline
echo "@@imashard-begin kexec-loaded"
cat /sys/kernel/kexec_loaded
echo "@@imashard-end kexec-loaded"
run kexec imashard snapshot --dir /run/imashard --trim

echo "@@imashard-begin verify"
imashard verify --live --ak /ak/ak.pem --json /run/imashard
echo "@@imashard-end verify"
`
	res := runGuest(t, g, t.TempDir(), g.overlay(script), 4*time.Minute)

	section := func(name string) string {
		s := vm.Sections(res.Console, name)
		if len(s) != 1 {
			t.Logf("console tail:\n%s", tail(res.Console, 80))
			t.Fatalf("%d %s sections, want 1", len(s), name)
		}
		return s[0]
	}
	afterBusy := section("after-busy")
	if !strings.Contains(afterBusy, "exit status 0") {
		t.Fatalf("snapshot --trim once the lists were free failed:\n%s", afterBusy)
	}
	for _, c := range []struct{ name, want string }{
		{"writer", "EBUSY"},
		{"readers", "EBUSY"},
		{"kexec", "a kexec image is loaded"},
	} {
		out := section(c.name)
		if strings.Contains(out, "exit status 0") {
			t.Errorf("%s: snapshot --trim succeeded, want an error:\n%s", c.name, out)
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%s: output does not name %q:\n%s", c.name, c.want, out)
		}
	}
	// A failed trim leaves the directory as it was: the writer case stops
	// before the snapshot, and so do the readers and kexec cases, whose
	// first trim (of what earlier shards hold) already fails.
	if got := shardList(section("writer")); got != shardList(section("readers")) {
		t.Errorf("shards after the readers case %q, want those after the writer case %q", shardList(section("readers")), got)
	}
	if got, want := shardList(section("kexec")), shardList(afterBusy); got != want {
		t.Errorf("shards after the kexec case %q, want %q", got, want)
	}
	if got, want := stateJSON(section("readers")), stateJSON(section("writer")); got == "" || got != want {
		t.Errorf("trim state after the readers case:\n%s\nwant the one after the writer case:\n%s", got, want)
	}
	if got, want := stateJSON(section("kexec")), stateJSON(afterBusy); got == "" || got != want {
		t.Errorf("trim state after the kexec case:\n%s\nwant the one before it:\n%s", got, want)
	}
	if loaded := strings.TrimSpace(section("kexec-loaded")); loaded != "1" {
		t.Errorf("/sys/kernel/kexec_loaded = %q after kexec -l, want 1", loaded)
	}

	var report struct {
		OK   bool `json:"ok"`
		Live *struct {
			OK bool `json:"ok"`
		} `json:"live"`
	}
	v := section("verify")
	if err := json.Unmarshal([]byte(strings.TrimSpace(v)), &report); err != nil {
		t.Fatalf("verify output is not JSON: %v\n%s", err, v)
	}
	if !report.OK || report.Live == nil || !report.Live.OK {
		t.Errorf("verify --live after the failed trims: %s", v)
	}
}

// shardList returns the shard file names in a section's ls output.
func shardList(section string) string {
	var names []string
	for _, f := range strings.Fields(section) {
		if strings.HasPrefix(f, "shard-") {
			names = append(names, f)
		}
	}
	return strings.Join(names, " ")
}

// stateJSON returns the live-state.json text that a section prints last.
func stateJSON(section string) string {
	_, after, ok := strings.Cut(section, "exit status")
	if !ok {
		return ""
	}
	i := strings.Index(after, "{")
	if i < 0 {
		return ""
	}
	return strings.TrimSpace(after[i:])
}

// verifyReport is the part of `verify --json` output the scenarios check.
type verifyReport struct {
	OK     bool `json:"ok"`
	Shards []struct {
		FirstIndex int64 `json:"first_index"`
	} `json:"shards"`
	Live *struct {
		OK bool `json:"ok"`
	} `json:"live"`
}

// decodeVerify returns the report in the console's one verify section,
// and the section's text for messages.
func decodeVerify(t *testing.T, console string) (verifyReport, string) {
	t.Helper()
	var report verifyReport
	verify := vm.Sections(console, "verify")
	if len(verify) != 1 {
		t.Fatalf("%d verify sections, want 1", len(verify))
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(verify[0])), &report); err != nil {
		t.Fatalf("verify output is not JSON: %v\n%s", err, verify[0])
	}
	return report, verify[0]
}

// Two `snapshot --trim --trim-mode staged` at once, in several rounds,
// while files are measured. The second retries until it succeeds, so it
// starts again as soon as the first releases the chain lock, while the
// first trims after its snapshot. Runs may fail, but none may lose an
// entry: the carry file the state names must exist, and verify --live
// must replay the whole history to the TPM.
//
// NOTE: No trim carried entries in the runs seen so far, so this does not
// reach a trim that removes another's carry file. TestGuestTrimConcurrentStaged
// in pkg/trim forces that interleaving.
func TestTrimConcurrentSnapshots(t *testing.T) {
	g := needCustomGuest(t)
	const rounds, perRound = 5, 20
	script := measureFunc + fmt.Sprintf(`
mkdir -p /run/imashard /ak
imashard ak export --out /ak > /dev/null
round=0
while [ $round -lt %[1]d ]; do
	round=$((round+1))
	mkdir -p /w$round
	i=0
	measure /w$round %[2]d
	imashard snapshot --dir /run/imashard --trim --trim-mode staged --json > /w$round/a.out 2>&1 &
	measure /w$round $((%[2]d + round*4))
	n=0
	while [ $n -lt 200 ]; do
		n=$((n+1))
		if imashard snapshot --dir /run/imashard --trim --trim-mode staged --json > /w$round/b.out 2>&1; then n=1000; fi
	done &
	measure /w$round $((%[2]d * 4))
	wait
	echo "@@imashard-begin outputs"
	cat /w$round/a.out /w$round/b.out
	echo "@@imashard-end outputs"
	echo "@@imashard-begin state"
	ls /run/imashard
	cat /run/imashard/live-state.json
	echo "@@imashard-end state"
done
`+verifyAndPrintChain, rounds, perRound)
	res := runGuest(t, g, t.TempDir(), g.overlay(script), 4*time.Minute)

	outputs := vm.Sections(res.Console, "outputs")
	states := vm.Sections(res.Console, "state")
	if len(outputs) != rounds || len(states) != rounds {
		t.Logf("console tail:\n%s", tail(res.Console, 80))
		t.Fatalf("%d output and %d state sections, want %d each", len(outputs), len(states), rounds)
	}
	for i, s := range states {
		t.Logf("round %d: snapshot outputs:\n%s", i+1, outputs[i])
		var st struct {
			CarryFile string `json:"carry_file"`
		}
		brace := strings.Index(s, "{")
		if brace < 0 {
			t.Fatalf("round %d: no live-state.json after snapshot --trim:\n%s", i+1, s)
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(s[brace:])), &st); err != nil {
			t.Fatalf("round %d: live-state.json is not JSON: %v\n%s", i+1, err, s)
		}
		if st.CarryFile != "" && !strings.Contains(s, st.CarryFile+"\n") {
			t.Errorf("round %d: live-state.json names %s, which is not in the chain directory:\n%s", i+1, st.CarryFile, s)
		}
	}

	report, text := decodeVerify(t, res.Console)
	if !report.OK || report.Live == nil || !report.Live.OK {
		t.Errorf("verify --live after concurrent staged trims: %s", text)
	}
	host := verifyTrimChainOnHost(t, res.Console)
	if !host.OK || len(host.Shards) != len(report.Shards) {
		t.Errorf("host verification: ok %v with %d shards, want %d", host.OK, len(host.Shards), len(report.Shards))
	}
}
