package securityfs

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/imashard/imashard/internal/vmtest"
	"github.com/imashard/imashard/pkg/pcr"
)

func TestMain(m *testing.M) {
	if vmtest.InGuest() {
		vmtest.GuestMain(m)
	}
	os.Exit(m.Run())
}

func TestParseListName(t *testing.T) {
	cases := []struct {
		name string
		want List
		ok   bool
	}{
		{"binary_runtime_measurements", List{Format: Binary, Alg: pcr.SHA1, KernelHashed: true, Legacy: true}, true},
		{"ascii_runtime_measurements_sha256", List{Format: ASCII, Alg: pcr.SHA256, KernelHashed: true}, true},
		{"binary_runtime_measurements_sha384_staged", List{Format: Binary, Alg: pcr.SHA384, KernelHashed: true, Staged: true}, true},
		{"binary_runtime_measurements_staged", List{Format: Binary, Alg: pcr.SHA1, KernelHashed: true, Legacy: true, Staged: true}, true},
		{"binary_runtime_measurements_sm3", List{Format: Binary, Alg: pcr.SM3_256, KernelHashed: true}, true},
		{"binary_runtime_measurements_tpm_alg_12", List{Format: Binary, Alg: pcr.Alg(0x12)}, true},
		{"binary_runtime_measurements_tpm_alg_zz", List{}, false},
		{"binary_runtime_measurements_md5", List{}, false},
		{"runtime_measurements_count", List{}, false},
		{"binary_runtime_measurementsX", List{}, false},
	}
	for _, c := range cases {
		got, ok := ParseListName(c.name)
		if ok != c.ok {
			t.Errorf("ParseListName(%q) ok = %v, want %v", c.name, ok, c.ok)
			continue
		}
		if !ok {
			continue
		}
		c.want.Name = c.name
		if got != c.want {
			t.Errorf("ParseListName(%q) = %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestMapErrno(t *testing.T) {
	cases := []struct {
		errno syscall.Errno
		req   request
		write bool
		want  error
	}{
		{syscall.EBUSY, 0, true, ErrBusy},
		{syscall.EPERM, 0, true, ErrPermission},
		{syscall.EACCES, 0, true, ErrPermission},
		{syscall.EACCES, requestStage, true, ErrSuspended},
		{syscall.ESTALE, requestTrim, true, ErrSuspended},
		{syscall.ESTALE, requestDelete, true, ErrSuspended},
		{syscall.ENOENT, requestTrim, true, ErrTooFewEntries},
		{syscall.ENOENT, requestStage, true, ErrNothingToStage},
		{syscall.ENOENT, requestDelete, true, ErrNothingStaged},
		{syscall.EEXIST, requestStage, true, ErrAlreadyStaged},
		{syscall.EINVAL, requestTrim, true, ErrHashTableFlush},
	}
	for _, c := range cases {
		err := mapErrno(&os.PathError{Op: "write", Path: "x", Err: c.errno}, c.req, c.write)
		if !errors.Is(err, c.want) {
			t.Errorf("mapErrno(%v, %d) = %v, want %v", c.errno, c.req, err, c.want)
		}
		if !errors.Is(err, c.errno) {
			t.Errorf("mapErrno(%v, %d) = %v, lost the errno", c.errno, c.req, err)
		}
	}
}

func TestSentinelsNameKernelRequirements(t *testing.T) {
	if !errors.Is(ErrStagingNotSupported, ErrNotSupported) {
		t.Error("ErrStagingNotSupported does not wrap ErrNotSupported")
	}
	for _, want := range []string{"Linux 7.2", "CONFIG_IMA_STAGING"} {
		if !strings.Contains(ErrStagingNotSupported.Error(), want) {
			t.Errorf("ErrStagingNotSupported = %q, missing %q", ErrStagingNotSupported, want)
		}
	}
}

func TestOpenWithoutIMA(t *testing.T) {
	_, err := Open(t.TempDir())
	if !errors.Is(err, ErrIMANotEnabled) {
		t.Fatalf("Open(empty dir) = %v, want ErrIMANotEnabled", err)
	}
}

func TestCheckStagingMissing(t *testing.T) {
	dir := t.TempDir()
	ima := dir + "/integrity/ima"
	if err := os.MkdirAll(ima, 0o755); err != nil {
		t.Fatal(err)
	}
	// A directory shaped like a Linux 6.10 securityfs: lists, no _staged twins.
	for _, name := range []string{"runtime_measurements_count", "binary_runtime_measurements", "binary_runtime_measurements_sha256"} {
		if err := os.WriteFile(ima+"/"+name, []byte("3\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.CheckStaging(); !errors.Is(err, ErrStagingNotSupported) {
		t.Fatalf("CheckStaging = %v, want ErrStagingNotSupported", err)
	}
	if _, err := fs.OpenWriter(pcr.SHA1, false); !errors.Is(err, ErrStagingNotSupported) {
		t.Fatalf("OpenWriter = %v, want ErrStagingNotSupported", err)
	}
	n, err := fs.Count()
	if err != nil || n != 3 {
		t.Fatalf("Count = %d, %v, want 3", n, err)
	}
	p, err := fs.ListPath(pcr.SHA256, false)
	if err != nil || p != ima+"/binary_runtime_measurements_sha256" {
		t.Fatalf("ListPath(sha256) = %q, %v", p, err)
	}
	if _, err := fs.ListPath(pcr.SHA384, false); !errors.Is(err, ErrNoSuchList) {
		t.Fatalf("ListPath(sha384) = %v, want ErrNoSuchList", err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\\`); got != `/a b\\` {
		t.Fatalf("unescapeMountinfo = %q", got)
	}
}

func TestCheckCapSysAdmin(t *testing.T) {
	cases := []struct {
		name   string
		status string
		want   error // nil, or the sentinel the error must wrap
		fails  bool
	}{
		{"root", "Name:\tx\nCapEff:\t000001ffffffffff\n", nil, false},
		{"only sys_admin", "CapEff:\t0000000000200000\n", nil, false},
		{"nobody", "CapEff:\t0000000000000000\n", ErrPermission, true},
		{"all but sys_admin", "CapEff:\t000001ffffdfffff\n", ErrPermission, true},
		{"no line", "Name:\tx\n", nil, true},
		{"not hex", "CapEff:\tzz\n", nil, true},
	}
	for _, c := range cases {
		err := checkCapSysAdmin(strings.NewReader(c.status), "status")
		if (err != nil) != c.fails {
			t.Errorf("%s: checkCapSysAdmin = %v, want failure %v", c.name, err, c.fails)
			continue
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: checkCapSysAdmin = %v, want %v", c.name, err, c.want)
		}
		if c.want != nil && !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
			t.Errorf("%s: error %q does not name CAP_SYS_ADMIN", c.name, err)
		}
	}
}
