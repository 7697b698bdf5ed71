package qemu_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/imashard/imashard/qemu/scenario"
)

// bootReport is the part of `imashard boot --json` that the scenarios check.
type bootReport struct {
	Result  string   `json:"result"`
	OK      bool     `json:"ok"`
	Error   string   `json:"error"`
	Kind    string   `json:"error_kind"`
	Carried []string `json:"carried_shards"`
	Replay  *struct {
		Entries int64 `json:"entries"`
		Matched bool  `json:"matched"`
	} `json:"replay_from_zero"`
}

func runChain(t *testing.T, g guest, c scenario.Chain, stateDir string) *scenario.Result {
	t.Helper()
	res := runGuest(t, g, stateDir, scenario.Overlay(g.kernelData, g.initramfsData, c.Script()), time.Duration(c.Boots)*2*time.Minute)
	out, err := scenario.Parse(res.Console)
	if err != nil {
		t.Logf("console tail:\n%s", tail(res.Console, 80))
		t.Fatalf("parse console: %v", err)
	}
	if len(out.Boots) != c.Boots {
		t.Logf("console tail:\n%s", tail(res.Console, 80))
		t.Fatalf("guest ran %d boots, want %d", len(out.Boots), c.Boots)
	}
	for i, b := range out.Boots {
		if b.Number != i+1 {
			t.Errorf("boot %d printed boot number %d", i+1, b.Number)
		}
	}
	return out
}

func decodeReport(t *testing.T, b scenario.Boot) bootReport {
	t.Helper()
	var r bootReport
	if err := json.Unmarshal(b.Report, &r); err != nil {
		t.Fatalf("boot %d: report is not JSON: %v\n%s", b.Number, err, b.Report)
	}
	return r
}

// A kexec without imashard loses the log while PCR 10 keeps its value: the
// first boot replays from zero (cold boot), the second cannot.
func TestPlainKexecReportsMissingHistory(t *testing.T) {
	g := needGuest(t)
	out := runChain(t, g, scenario.Chain{Boots: 2, PlainKexec: true}, t.TempDir())

	first := decodeReport(t, out.Boots[0])
	if first.Result != "cold-boot" || !first.OK || out.Boots[0].Status != 0 {
		t.Errorf("boot 1: result %q ok %v status %d, want cold-boot true 0 (error %q)", first.Result, first.OK, out.Boots[0].Status, first.Error)
	}
	if first.Replay == nil || !first.Replay.Matched || first.Replay.Entries < 1 {
		t.Errorf("boot 1: replay from zero = %+v, want a match after at least boot_aggregate", first.Replay)
	}

	second := decodeReport(t, out.Boots[1])
	if second.Result != "history-missing" || second.OK || out.Boots[1].Status == 0 {
		t.Errorf("boot 2: result %q ok %v status %d, want history-missing false non-zero (error %q)", second.Result, second.OK, out.Boots[1].Status, second.Error)
	}
	if len(second.Carried) != 0 {
		t.Errorf("boot 2: carried shards %v after a plain kexec", second.Carried)
	}
	if out.KexecFailed != 0 {
		t.Errorf("kexec returned in %d boots", out.KexecFailed)
	}
}
