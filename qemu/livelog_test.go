package qemu_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/qemu/vm"
)

// liveLogScript replays the kernel's own measurement list in the guest
// against the TPM's PCR 10, read once from sysfs in every bank and once
// through /dev/tpmrm0, and replays the sha256 list with --bank sha256.
const liveLogScript = `
pcrs=""
for bank in /sys/class/tpm/tpm0/pcr-*; do pcrs="$pcrs --pcrs $bank/10"; done

echo "@@imashard-begin replay-sysfs"
imashard log replay --json $pcrs
echo "@@imashard-end replay-sysfs"
echo "@@imashard-begin replay-sysfs-status"
echo $?
echo "@@imashard-end replay-sysfs-status"

echo "@@imashard-begin replay-sha256"
imashard log replay --json --bank sha256 $pcrs
echo "@@imashard-end replay-sha256"

echo "@@imashard-begin replay-tpm"
imashard log replay --json --tpm /dev/tpmrm0
echo "@@imashard-end replay-tpm"

echo "@@imashard-begin ima-files"
ls /sys/kernel/security/ima/
echo "@@imashard-end ima-files"
`

type replayReport struct {
	List    string            `json:"list"`
	Entries int64             `json:"entries"`
	Matched bool              `json:"matched"`
	Rules   map[string]string `json:"rules"`
}

func decodeReplay(t *testing.T, console, section string) replayReport {
	t.Helper()
	sections := vm.Sections(console, section)
	if len(sections) != 1 {
		t.Fatalf("guest printed %d %q sections, want 1", len(sections), section)
	}
	var r replayReport
	if err := json.Unmarshal([]byte(sections[0]), &r); err != nil {
		t.Fatalf("%s: decode report: %v\n%s", section, err, sections[0])
	}
	return r
}

// The kernel's own list replays to the TPM's PCR 10 in every bank, with the
// PCRs read from sysfs or from the TPM, and from the SHA-1 or sha256 list.
func TestLiveLogReplaysToTPM(t *testing.T) {
	g := needGuest(t)
	res := runGuest(t, g, t.TempDir(), g.overlay(liveLogScript), 3*time.Minute)

	sysfs := decodeReplay(t, res.Console, "replay-sysfs")
	if !sysfs.Matched {
		t.Errorf("replay against sysfs PCRs: no prefix of %d entries matched", sysfs.Entries)
	}
	if st := strings.TrimSpace(vm.Sections(res.Console, "replay-sysfs-status")[0]); st != "0" {
		t.Errorf("replay against sysfs PCRs exited %s, want 0", st)
	}
	if len(sysfs.Rules) < 2 {
		t.Errorf("replay matched %d banks, want every bank the TPM allocates (at least sha1 and sha256)", len(sysfs.Rules))
	}
	if sysfs.Rules["sha1"] != "per-bank" {
		t.Errorf("sha1 bank rule %q, want per-bank", sysfs.Rules["sha1"])
	}

	files := vm.Sections(res.Console, "ima-files")[0]
	perBank := strings.Contains(files, "binary_runtime_measurements_sha256")
	sha256 := decodeReplay(t, res.Console, "replay-sha256")
	if !sha256.Matched {
		t.Errorf("replay with --bank sha256 did not match")
	}
	if perBank {
		// Linux 6.10 and later write one list per bank.
		if want := "/sys/kernel/security/ima/binary_runtime_measurements_sha256"; sha256.List != want {
			t.Errorf("--bank sha256 read %s, want %s", sha256.List, want)
		}
	} else {
		// Debian's 6.1 kernel lacks the per-bank lists and, lacking a
		// built-in SHA-512, extends sha384 and sha512 with the padded SHA-1
		// template digest while sha256 gets its own hash.
		if sha256.Rules["sha256"] != "per-bank" {
			t.Errorf("sha256 bank rule %q, want per-bank", sha256.Rules["sha256"])
		}
		for _, bank := range []string{"sha384", "sha512"} {
			if rule, ok := sysfs.Rules[bank]; ok && rule != "padded-sha1" {
				t.Errorf("%s bank rule %q on a kernel without per-bank lists, want padded-sha1", bank, rule)
			}
		}
	}

	tpmReplay := decodeReplay(t, res.Console, "replay-tpm")
	if !tpmReplay.Matched {
		t.Errorf("replay against PCRs read through /dev/tpmrm0 did not match")
	}
}
