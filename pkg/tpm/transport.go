package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"
)

// DefaultDevice is the kernel's TPM device with the in-kernel resource
// manager, which flushes a client's transient objects when it closes the file.
const DefaultDevice = "/dev/tpmrm0"

// maxResponseSize bounds a response read from a device or socket. The Linux
// TPM driver's buffer is 4096 bytes, and the larger bound leaves room for
// simulators with bigger buffers.
const maxResponseSize = 64 << 10

// ioTimeout bounds one command on a socket. RSA-2048 primary key generation
// is the slowest command imashard sends: 0.1 s on swtpm, and by estimate up
// to tens of seconds on a slow hardware TPM.
const ioTimeout = 2 * time.Minute

// rawTPM sends one marshaled command and returns the marshaled response.
type rawTPM interface {
	transport.TPM
	io.Closer
}

// ErrInvalidSpec marks a TPM spec that names no transport or has a malformed
// address, which is a mistake in the command line rather than a TPM failure.
var ErrInvalidSpec = errors.New("invalid TPM spec")

// openTransport parses spec and connects. It reports whether the transport
// has a resource manager in front of the TPM.
func openTransport(spec string) (rawTPM, bool, error) {
	if spec == "" {
		spec = DefaultDevice
	}

	switch {
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		if path == "" {
			return nil, false, fmt.Errorf("%w %q: missing socket path after unix:", ErrInvalidSpec, spec)
		}
		s := &streamTPM{network: "unix", addr: path}
		return s, false, s.connect()

	case strings.HasPrefix(spec, "tcp:"):
		addr := strings.TrimPrefix(spec, "tcp:")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, false, fmt.Errorf("%w %q: expected tcp:HOST:PORT: %v", ErrInvalidSpec, spec, err)
		}
		s := &streamTPM{network: "tcp", addr: addr}
		return s, false, s.connect()

	case strings.HasPrefix(spec, "mssim:"):
		return openMSSim(spec)

	case strings.HasPrefix(spec, "/"):
		return openDevice(spec)
	}
	return nil, false, fmt.Errorf("%w %q: use /dev/tpmrm0, /dev/tpm0, unix:PATH, tcp:HOST:PORT or mssim:HOST:PORT", ErrInvalidSpec, spec)
}

// deviceTPM is a Linux TPM character device. The driver executes the command
// during write and returns the whole response in one read.
type deviceTPM struct {
	f   *os.File
	buf []byte
}

func openDevice(path string) (rawTPM, bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("%w: %s does not exist: the kernel has no TPM driver loaded (modprobe tpm_tis or tpm_crb), the machine has no TPM, or the kernel lacks CONFIG_TCG_TPM (/dev/tpmrm0 needs Linux 4.12 or later)", ErrNoDevice, path)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %v", ErrNoDevice, path, err)
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return nil, false, fmt.Errorf("%w: %s is not a device (mode %s): pass a TPM character device such as /dev/tpmrm0, or unix:PATH for a socket", ErrNoDevice, path, fi.Mode())
	}

	// The file must stay in blocking mode. os.OpenFile registers a character
	// device with Go's poller and sets O_NONBLOCK. The driver then queues the
	// command, and a read before it finishes returns 0 bytes. Under QEMU TCG
	// that showed as an EOF, then EBUSY on the next write. In blocking mode
	// the driver runs the command during write.
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrPermission) {
		return nil, false, fmt.Errorf("%w: %s: permission denied: run as root or as a member of the tss group", ErrNoDevice, path)
	}
	if err != nil {
		// EBUSY: /dev/tpm0 allows one open file at a time, and the kernel's
		// resource manager or tpm2-abrmd may hold it.
		return nil, false, fmt.Errorf("%w: opening %s: %v (if it is busy, use /dev/tpmrm0 or stop tpm2-abrmd)", ErrNoDevice, path, err)
	}

	f := os.NewFile(uintptr(fd), path)

	hasResourceManager := strings.HasPrefix(fi.Name(), "tpmrm")
	return &deviceTPM{f: f, buf: make([]byte, maxResponseSize)}, hasResourceManager, nil
}

func (d *deviceTPM) Send(cmd []byte) ([]byte, error) {
	if _, err := d.f.Write(cmd); err != nil {
		return nil, fmt.Errorf("writing command to %s: %w", d.f.Name(), err)
	}
	n, err := d.f.Read(d.buf)
	if err != nil {
		// An empty read means the driver failed the command, for example on
		// a timeout, and the TPM may or may not have run it.
		return nil, fmt.Errorf("reading response from %s: %w (the kernel TPM driver returned no response; see dmesg)", d.f.Name(), err)
	}
	return append([]byte(nil), d.buf[:n]...), nil
}

func (d *deviceTPM) Close() error { return d.f.Close() }

// streamTPM speaks the raw TPM 2.0 command stream over one connection, as
// swtpm's --server type=unixio and type=tcp do: a command goes out as is and
// the response is framed by the responseSize field of its header.
type streamTPM struct {
	network, addr string

	mu   sync.Mutex
	conn net.Conn
}

func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.conn == nil {
		if err := s.dial(); err != nil {
			return nil, err
		}
	}

	rsp, err := s.exchange(cmd)
	if err != nil {
		// The stream may hold half a response, so the next command needs a
		// new connection.
		s.conn.Close()
		s.conn = nil
		return nil, fmt.Errorf("TPM at %s:%s: %w", s.network, s.addr, err)
	}
	return rsp, nil
}

// connect dials at Open, so a wrong path fails there and not at the first
// command.
func (s *streamTPM) connect() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dial()
}

func (s *streamTPM) dial() error {
	// swtpm accepts one connection at a time with a short listen backlog, so
	// a unix socket returns EAGAIN right after the previous client closed.
	var conn net.Conn
	var err error
	backoff := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		conn, err = net.DialTimeout(s.network, s.addr, 10*time.Second)
		if err == nil || !errors.Is(err, syscall.EAGAIN) || attempt == 10 {
			break
		}
		slog.Debug("TPM socket busy, retrying connect", "addr", s.addr, "attempt", attempt)
		time.Sleep(backoff)
		backoff *= 2
	}
	if err != nil {
		return fmt.Errorf("%w: connecting to the TPM at %s:%s: %v (is swtpm running with --server on this address?)", ErrNoDevice, s.network, s.addr, err)
	}
	s.conn = conn
	return nil
}

func (s *streamTPM) exchange(cmd []byte) ([]byte, error) {
	if err := s.conn.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending command: %w", err)
	}

	header := make([]byte, 10)
	if _, err := io.ReadFull(s.conn, header); err != nil {
		return nil, fmt.Errorf("reading response header: %w", err)
	}
	size := binary.BigEndian.Uint32(header[2:6])
	if size < 10 || size > maxResponseSize {
		return nil, fmt.Errorf("response header announces %d bytes, outside 10..%d", size, maxResponseSize)
	}
	rsp := make([]byte, size)
	copy(rsp, header)
	if _, err := io.ReadFull(s.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("reading %d-byte response: %w", size, err)
	}
	return rsp, nil
}

func (s *streamTPM) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}

// openMSSim connects to a TPM simulator that speaks the Microsoft reference
// simulator's TCP protocol: commands on PORT, platform commands on PORT+1.
// It does not power the simulator on, so a freshly started simulator needs
// its platform set up (power on, NV on, TPM2_Startup) by its launcher.
func openMSSim(spec string) (rawTPM, bool, error) {
	addr := strings.TrimPrefix(spec, "mssim:")
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, false, fmt.Errorf("%w %q: expected mssim:HOST:PORT: %v", ErrInvalidSpec, spec, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65534 {
		return nil, false, fmt.Errorf("%w %q: port %q must be a number from 1 to 65534", ErrInvalidSpec, spec, portText)
	}

	// TODO: the mssim transport has not been run against a Microsoft or IBM
	// simulator; swtpm, the emulator the tests use, does not speak it.
	sim, err := tcp.Open(tcp.Config{
		CommandAddress:  net.JoinHostPort(host, portText),
		PlatformAddress: net.JoinHostPort(host, strconv.Itoa(port+1)),
	})
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %v", ErrNoDevice, spec, err)
	}
	return sim, false, nil
}

// Response codes that ask the caller to send the same command again.
const (
	rcYielded = 0x908 // TPM_RC_YIELDED
	rcTesting = 0x90A // TPM_RC_TESTING
	rcRetry   = 0x922 // TPM_RC_RETRY
)

// retryTPM resends commands that the TPM rejected with TPM_RC_RETRY,
// TPM_RC_YIELDED or TPM_RC_TESTING, with exponential backoff, and keeps the
// last response so callers can take byte-exact fields from it.
//
// TODO: no test drives the resend path, because swtpm cannot be made to
// return these codes.
type retryTPM struct {
	raw          rawTPM
	maxAttempts  int
	firstBackoff time.Duration
	lastResponse []byte

	// afterSend, when set, runs after each command with its command code.
	// Tests use it to extend a PCR between the commands of one read.
	afterSend func(commandCode uint32)
}

func (r *retryTPM) Send(cmd []byte) ([]byte, error) {
	backoff := r.firstBackoff
	for attempt := 1; ; attempt++ {
		rsp, err := r.raw.Send(cmd)
		if err != nil {
			return nil, err
		}
		r.lastResponse = rsp
		if r.afterSend != nil && len(cmd) >= 10 {
			hook := r.afterSend
			r.afterSend = nil // the hook's own commands must not run it again
			hook(binary.BigEndian.Uint32(cmd[6:10]))
			r.afterSend = hook
			r.lastResponse = rsp
		}

		rc, ok := responseCode(rsp)
		if !ok || (rc != rcRetry && rc != rcYielded && rc != rcTesting) {
			return rsp, nil
		}
		if attempt >= r.maxAttempts {
			slog.Warn("TPM still busy, giving up", "rc", fmt.Sprintf("%#x", rc), "attempts", attempt)
			return rsp, nil
		}

		slog.Info("TPM busy, retrying command", "rc", fmt.Sprintf("%#x", rc), "attempt", attempt, "backoff", backoff)
		time.Sleep(backoff)
		backoff *= 2
	}
}

func responseCode(rsp []byte) (uint32, bool) {
	if len(rsp) < 10 {
		return 0, false
	}
	return binary.BigEndian.Uint32(rsp[6:10]), true
}
