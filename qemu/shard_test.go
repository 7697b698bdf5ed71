package qemu_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/imashard/imashard/pkg/shard"
	"github.com/imashard/imashard/qemu/vm"
)

// TestSnapshotVerifyOnLiveKernel snapshots the kernel's own securityfs list
// twice in one boot, with new measurements in between and during the second
// snapshot, then verifies the chain against a fresh quote. The kernel
// extends swtpm's PCRs itself, so the bank rules and the ordering of append
// and extend are the real ones.
func TestSnapshotVerifyOnLiveKernel(t *testing.T) {
	g := needGuest(t)
	script := `
mkdir -p /run/chain /run/ak /work
imashard ak export --out /run/ak > /dev/null
for i in 1 2 3; do echo "first $i" > /work/a$i; cat /work/a$i > /dev/null; done
echo "@@imashard-begin snap"
imashard snapshot --dir /run/chain --json
echo "@@imashard-end snap"
(i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo $i > /work/bg$i; cat /work/bg$i > /dev/null; done) &
for i in 1 2 3; do echo "second $i" > /work/b$i; cat /work/b$i > /dev/null; done
echo "@@imashard-begin snap"
imashard snapshot --dir /run/chain --tail --json
echo "@@imashard-end snap"
wait
echo "@@imashard-begin verify"
imashard verify --ak /run/ak/ak.pem /run/chain --live --json
echo "@@imashard-end verify"
echo "@@imashard-begin verify-status"
imashard verify --ak /run/ak/ak.pem /run/chain --live > /dev/null
echo $?
echo "@@imashard-end verify-status"
`
	res := runGuest(t, g, t.TempDir(), g.overlay(script), 4*time.Minute)

	snaps := vm.Sections(res.Console, "snap")
	if len(snaps) != 2 {
		t.Fatalf("%d snapshot sections, want 2", len(snaps))
	}
	var first, second struct {
		Sequence    uint64 `json:"sequence"`
		FirstIndex  int64  `json:"first_index"`
		Entries     int64  `json:"entries"`
		TailEntries int64  `json:"tail_entries"`
	}
	if err := json.Unmarshal([]byte(snaps[0]), &first); err != nil {
		t.Fatalf("first snapshot output %q: %v", snaps[0], err)
	}
	if err := json.Unmarshal([]byte(snaps[1]), &second); err != nil {
		t.Fatalf("second snapshot output %q: %v", snaps[1], err)
	}
	if first.FirstIndex != 0 || first.Entries < 4 {
		t.Errorf("first shard starts at %d with %d entries, want 0 and at least boot_aggregate plus 3 files", first.FirstIndex, first.Entries)
	}
	if second.Sequence != 1 || second.FirstIndex != first.FirstIndex+first.Entries+first.TailEntries || second.Entries < 3 {
		t.Errorf("second shard %+v does not continue the first %+v", second, first)
	}

	verify := vm.Sections(res.Console, "verify")
	if len(verify) != 1 {
		t.Fatalf("%d verify sections, want 1", len(verify))
	}
	var report shard.Report
	if err := json.Unmarshal([]byte(verify[0]), &report); err != nil {
		t.Fatalf("verify output %q: %v", verify[0], err)
	}
	if !report.OK || len(report.Shards) != 2 || report.Live == nil || !report.Live.OK {
		t.Errorf("verify report OK=%v shards=%d live=%+v error=%q", report.OK, len(report.Shards), report.Live, report.Error)
	}
	for _, s := range report.Shards {
		if len(s.Rules) == 0 {
			t.Errorf("shard %s has no bank rules", s.File)
		}
	}
	status := vm.Sections(res.Console, "verify-status")
	if len(status) != 1 || strings.TrimSpace(status[0]) != "0" {
		t.Errorf("verify exit status %q, want 0", status)
	}
	if report.Live != nil && len(report.Shards) > 0 {
		t.Logf("shards: %+v then %+v; live entries attested %d, pending %d; rules %v",
			first, second, report.Live.Attested, report.Live.Pending, report.Shards[0].Rules)
	}
}
