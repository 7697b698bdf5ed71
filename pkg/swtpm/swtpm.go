// Package swtpm starts and stops a real swtpm TPM 2.0 emulator process, so
// tests and tools can run against a TPM without hardware.
package swtpm

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// startTimeout bounds the wait for swtpm to accept connections. swtpm
// usually listens within 100 ms, but it creates its state (EK, seeds) on the
// first start, which takes longer on a loaded machine.
const startTimeout = 15 * time.Second

// Available returns nil when the swtpm binary is on PATH.
func Available() error {
	if _, err := exec.LookPath("swtpm"); err != nil {
		return fmt.Errorf("swtpm not found on PATH: install it (Debian: apt-get install swtpm swtpm-tools): %w", err)
	}
	return nil
}

// Instance is a running swtpm process.
type Instance struct {
	StateDir string // directory that holds the TPM state (tpm2-00.permall)
	Socket   string // unix socket for TPM commands
	PID      int

	// TCPAddr is HOST:PORT of the TPM command server when the instance was
	// started with StartTCP, and empty otherwise.
	TCPAddr string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// Start runs `swtpm socket --tpm2` with its state in stateDir, the command
// server on the unix socket stateDir/tpm.sock and the control channel on
// stateDir/ctrl.sock, and returns once the command socket accepts a
// connection. The TPM is started with TPM2_Startup(TPM_SU_CLEAR). Restarting
// on the same stateDir keeps the persistent state (seeds, NV, persistent
// handles) but resets PCRs.
func Start(stateDir string) (*Instance, error) {
	socket := filepath.Join(stateDir, "tpm.sock")
	ctrl := filepath.Join(stateDir, "ctrl.sock")

	if dial("unix", socket) == nil {
		return nil, fmt.Errorf("another process already serves %s: stop it or use another state directory", socket)
	}
	// A stale socket from a killed instance would make swtpm fail to bind.
	for _, path := range []string{socket, ctrl} {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}

	args := []string{"socket", "--tpm2",
		"--tpmstate", "dir=" + stateDir,
		"--server", "type=unixio,path=" + socket,
		"--ctrl", "type=unixio,path=" + ctrl,
		"--flags", "startup-clear",
	}
	inst := &Instance{StateDir: stateDir, Socket: socket}
	if err := inst.start(args, func() error { return dial("unix", socket) }); err != nil {
		return nil, err
	}
	return inst, nil
}

// StartTCP runs swtpm with its command server on 127.0.0.1:port and its
// control channel on 127.0.0.1:port+1, for clients that only reach a TPM
// over TCP (tpm2-tss's swtpm TCTI with host= and port=). The command server
// speaks the raw TPM 2.0 command stream, not the Microsoft simulator protocol.
func StartTCP(stateDir string, port int) (*Instance, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{"socket", "--tpm2",
		"--tpmstate", "dir=" + stateDir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear",
	}
	inst := &Instance{StateDir: stateDir, TCPAddr: addr}
	if err := inst.start(args, func() error { return dial("tcp", addr) }); err != nil {
		return nil, err
	}
	return inst, nil
}

func (i *Instance) start(args []string, ready func() error) error {
	if err := Available(); err != nil {
		return err
	}
	if err := os.MkdirAll(i.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating swtpm state directory: %w", err)
	}

	logPath := filepath.Join(i.StateDir, "swtpm.log")
	args = append(args, "--log", "file="+logPath+",level=1")
	i.cmd = exec.Command("swtpm", args...)
	if err := i.cmd.Start(); err != nil {
		return fmt.Errorf("starting swtpm: %w", err)
	}
	i.PID = i.cmd.Process.Pid
	i.exited = make(chan struct{})
	go func() {
		i.waitErr = i.cmd.Wait()
		close(i.exited)
	}()
	slog.Debug("swtpm started", "pid", i.PID, "state", i.StateDir)

	deadline := time.Now().Add(startTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}

		select {
		case <-i.exited:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("swtpm (pid %d) exited before accepting connections: %v; log %s: %s", i.PID, i.waitErr, logPath, log)
		default:
		}
		if time.Now().After(deadline) {
			stopErr := i.Stop()
			return errors.Join(fmt.Errorf("swtpm (pid %d) did not accept connections within %v: %w", i.PID, startTimeout, err), stopErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dial(network, addr string) error {
	conn, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Spec returns the tpm.Open argument that reaches this instance.
func (i *Instance) Spec() string {
	if i.TCPAddr != "" {
		return "tcp:" + i.TCPAddr
	}
	return "unix:" + i.Socket
}

// Stop sends SIGTERM to the process by PID and waits for it to exit, then
// SIGKILL if it has not exited after 5 seconds. swtpm saves its volatile
// state on SIGTERM. Stop may be called more than once.
func (i *Instance) Stop() error {
	if i.cmd == nil || i.cmd.Process == nil {
		return nil
	}

	select {
	case <-i.exited:
		return nil
	default:
	}

	if err := i.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping swtpm pid %d: %w", i.PID, err)
	}
	select {
	case <-i.exited:
		return nil
	case <-time.After(5 * time.Second):
	}

	slog.Warn("swtpm ignored SIGTERM, killing it", "pid", i.PID)
	if err := i.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing swtpm pid %d: %w", i.PID, err)
	}
	<-i.exited
	return nil
}

// Manufacture runs swtpm_setup on an empty stateDir the way a TPM vendor
// provisions a TPM: it creates the RSA and ECC EKs with certificates in NV
// (RSA at 0x01c00002) and allocates the PCR banks in banks (such as
// "sha1,sha256"). The certificates are signed by a throwaway local CA kept
// in stateDir/ca, so the system's /var/lib/swtpm-localca stays untouched.
func Manufacture(stateDir, banks string) error {
	if _, err := exec.LookPath("swtpm_setup"); err != nil {
		return fmt.Errorf("swtpm_setup not found on PATH: install it (Debian: apt-get install swtpm-tools): %w", err)
	}
	caDir := filepath.Join(stateDir, "ca")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return err
	}

	localCAConf := filepath.Join(caDir, "swtpm-localca.conf")
	err := os.WriteFile(localCAConf, []byte(fmt.Sprintf(
		"statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir)), 0o600)
	if err != nil {
		return err
	}
	localCAOptions := filepath.Join(caDir, "swtpm-localca.options")
	if err := os.WriteFile(localCAOptions, []byte("--platform-manufacturer imashard\n--platform-version 1\n--platform-model test\n"), 0o600); err != nil {
		return err
	}
	setupConf := filepath.Join(caDir, "swtpm_setup.conf")
	err = os.WriteFile(setupConf, []byte(fmt.Sprintf(
		"create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = %s\n", localCAConf, localCAOptions, banks)), 0o600)
	if err != nil {
		return err
	}

	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir, "--config", setupConf,
		"--create-ek-cert", "--pcr-banks", banks, "--overwrite")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup on %s failed: %w\n%s", stateDir, err, out)
	}
	return nil
}
