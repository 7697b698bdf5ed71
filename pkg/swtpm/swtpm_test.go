package swtpm

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestStartStop(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	dir := t.TempDir()
	inst, err := Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Stop() })

	if inst.Socket != filepath.Join(dir, "tpm.sock") || inst.Spec() != "unix:"+inst.Socket {
		t.Errorf("socket %q, spec %q", inst.Socket, inst.Spec())
	}
	conn, err := net.Dial("unix", inst.Socket)
	if err != nil {
		t.Fatalf("socket does not accept connections after Start: %v", err)
	}
	conn.Close()
	if err := syscall.Kill(inst.PID, 0); err != nil {
		t.Fatalf("swtpm pid %d is not running: %v", inst.PID, err)
	}

	if err := inst.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(inst.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("swtpm pid %d still exists after Stop (kill 0: %v)", inst.PID, err)
	}
	if err := inst.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	// A restart on the same state directory replaces the stale sockets.
	again, err := Start(dir)
	if err != nil {
		t.Fatalf("restart on the same state: %v", err)
	}
	if err := again.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestStartReportsFailure(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	// swtpm locks its state directory, so a second instance on the same
	// directory exits at once. Its sockets go elsewhere, so it fails on
	// the lock and not on the first instance's sockets.
	dir := t.TempDir()
	first, err := Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Stop() })

	if _, err := Start(dir); err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Errorf("Start on a served state directory: err = %v, want one naming the served socket", err)
	}

	second := &Instance{StateDir: dir, Socket: filepath.Join(t.TempDir(), "tpm.sock")}
	err = second.start([]string{"socket", "--tpm2", "--tpmstate", "dir=" + dir,
		"--server", "type=unixio,path=" + second.Socket, "--flags", "startup-clear"},
		func() error { return dial("unix", second.Socket) })
	if err == nil {
		second.Stop()
		t.Fatal("second Start on a locked state directory: no error")
	}
	t.Logf("second Start: %v", err)
}
