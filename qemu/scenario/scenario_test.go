package scenario

import (
	"encoding/base64"
	"strings"
	"testing"
)

const console = "[    1.0] kernel line\r\n" +
	"@@imashard-begin boot-report\r\n{\"result\": \"cold-boot\"}\r\n@@imashard-end boot-report\r\n" +
	"@@imashard-begin boot-status\r\n0\r\n@@imashard-end boot-status\r\n" +
	"@@imashard-begin boot\r\n1\r\n@@imashard-end boot\r\n" +
	"@@imashard-begin boot-report\r\n{\"result\": \"verified\"}\r\n@@imashard-end boot-report\r\n" +
	"@@imashard-begin boot-status\r\n0\r\n@@imashard-end boot-status\r\n" +
	"@@imashard-begin boot\r\n2\r\n@@imashard-end boot\r\n" +
	"@@imashard-begin shard\r\n/run/imashard/shard-0000000000.ims\r\n"

func TestParseReadsBootsAndShards(t *testing.T) {
	data := []byte("shard bytes that wrap over more than one base64 line of output")
	enc := base64.StdEncoding.EncodeToString(data)
	c := console + enc[:40] + "\r\n" + enc[40:] + "\r\n@@imashard-end shard\r\n"

	res, err := Parse(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Boots) != 2 || res.Boots[0].Number != 1 || res.Boots[1].Number != 2 {
		t.Fatalf("boots = %+v, want boots 1 and 2", res.Boots)
	}
	if !strings.Contains(string(res.Boots[1].Report), "verified") {
		t.Errorf("boot 2 report = %s", res.Boots[1].Report)
	}
	if got := string(res.Shards["shard-0000000000.ims"]); got != string(data) {
		t.Errorf("shard = %q, want %q", got, data)
	}
}

func TestParseRejectsUnfinishedBoot(t *testing.T) {
	// The last boot printed its number but no report.
	c := console + "@@imashard-end shard\r\n@@imashard-begin boot\r\n3\r\n@@imashard-end boot\r\n"
	if _, err := Parse(c); err == nil {
		t.Errorf("Parse accepted a boot without a report")
	}
}

func TestParseRejectsBadBase64(t *testing.T) {
	if _, err := Parse(console + "not*base64\r\n@@imashard-end shard\r\n"); err == nil {
		t.Errorf("Parse accepted a shard that is not base64")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(console + "AAAA\r\n@@imashard-end shard\r\n")
	f.Add("@@imashard-begin boot\n@@imashard-end boot\n")
	f.Fuzz(func(t *testing.T, c string) {
		res, err := Parse(c)
		if err == nil && len(res.Boots) > 0 && res.Boots[0].Report == nil {
			t.Fatalf("boot without a report accepted")
		}
	})
}
