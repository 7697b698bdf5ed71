// Package securityfs finds the Linux IMA measurement lists in securityfs,
// reads their counters, and deletes entries from them on kernels built with
// CONFIG_IMA_STAGING (Linux 7.2 and later).
//
// All measurement files of one kernel share one lock: a file open for
// writing excludes every other open of any measurement file, and any open
// for reading excludes writers. The kernel reports a conflict as EBUSY, which
// this package retries a bounded number of times before returning ErrBusy.
package securityfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imashard/imashard/pkg/pcr"
)

// DefaultMountPoint is the usual securityfs mount point, where Open mounts securityfs when it finds none.
const DefaultMountPoint = "/sys/kernel/security"

// Retry bounds how often an operation is retried while the kernel reports
// the measurement lists busy (EBUSY). The delay doubles after each attempt.
type Retry struct {
	Attempts int           // total attempts, at least 1
	Delay    time.Duration // delay before the second attempt
	MaxDelay time.Duration // upper bound of the doubled delay
}

// DefaultRetry waits about 3 s in total before giving up on a busy list.
var DefaultRetry = Retry{Attempts: 8, Delay: 25 * time.Millisecond, MaxDelay: time.Second}

// FS is one mounted securityfs with the IMA directory in it.
type FS struct {
	Root   string // securityfs mount point
	IMADir string // Root/integrity/ima
	Retry  Retry

	stagingProbed bool
	stagingErr    error
}

// Open returns the securityfs mounted at root. An empty root means the
// mount point listed in /proc/self/mountinfo, or DefaultMountPoint, where
// Open mounts securityfs when nothing is mounted yet (this needs
// CAP_SYS_ADMIN). It fails with ErrIMANotEnabled when the kernel has no IMA
// measurement lists.
func Open(root string) (*FS, error) {
	if root == "" {
		found, err := FindMount()
		switch {
		case err == nil:
			root = found
		case errors.Is(err, ErrNotMounted):
			slog.Info("securityfs is not mounted, mounting it", "path", DefaultMountPoint)
			if err := Mount(DefaultMountPoint); err != nil {
				return nil, err
			}
			root = DefaultMountPoint
		default:
			return nil, err
		}
	}

	imaDir := filepath.Join(root, "integrity", "ima")
	if _, err := os.Stat(filepath.Join(imaDir, "runtime_measurements_count")); err != nil {
		// Kernels before 4.x put the directory directly under the root.
		legacy := filepath.Join(root, "ima")
		if _, err2 := os.Stat(filepath.Join(legacy, "runtime_measurements_count")); err2 != nil {
			return nil, fmt.Errorf("%w: %s has no runtime_measurements_count: %v", ErrIMANotEnabled, imaDir, err)
		}
		imaDir = legacy
	}
	return &FS{Root: root, IMADir: imaDir, Retry: DefaultRetry}, nil
}

// FindMount returns the mount point of the first securityfs in
// /proc/self/mountinfo, or ErrNotMounted.
func FindMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find securityfs: %w (is /proc mounted?)", err)
	}
	defer f.Close()

	mount, err := parseMountinfo(f)
	if err != nil {
		return "", fmt.Errorf("find securityfs: read /proc/self/mountinfo: %w", err)
	}
	if mount == "" {
		return "", ErrNotMounted
	}
	return mount, nil
}

// parseMountinfo returns the mount point of the first securityfs in a
// mountinfo file, or "" when there is none.
func parseMountinfo(r io.Reader) (string, error) {
	scanner := bufio.NewScanner(r)
	for scanner.Scan() {
		// Fields: id parent major:minor root mountpoint options... - fstype source superoptions
		fields := strings.Fields(scanner.Text())
		sep := -1
		for i, field := range fields {
			if field == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[sep+1] == "securityfs" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	return "", scanner.Err()
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) that the
// kernel writes into mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mount mounts securityfs at target, creating the directory if needed.
func Mount(target string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount securityfs: %w", err)
	}
	if err := syscall.Mount("securityfs", target, "securityfs", 0, ""); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("mount securityfs at %s: %w (%w)", target, err, ErrPermission)
		}
		if errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("mount securityfs at %s: %w: %w", target, err, ErrIMANotEnabled)
		}
		return fmt.Errorf("mount securityfs at %s: %w", target, err)
	}
	return nil
}

// Format is the encoding of a measurement list file.
type Format int

const (
	Binary Format = iota + 1 // binary_runtime_measurements*
	ASCII                    // ascii_runtime_measurements*
)

func (f Format) String() string {
	switch f {
	case Binary:
		return "binary"
	case ASCII:
		return "ascii"
	}
	return "unknown"
}

// List is one measurement list file.
type List struct {
	Name   string
	Path   string
	Format Format
	// Alg is the PCR bank whose template digests the file shows. The legacy
	// names without a suffix are the SHA-1 lists.
	Alg pcr.Alg
	// KernelHashed is false for _tpm_alg_<hex> files, which the kernel writes
	// for banks whose algorithm it cannot compute: their digest field then
	// holds the SHA-1 digest zero-padded to the bank's size.
	KernelHashed bool
	Legacy       bool // the unsuffixed symlink to the SHA-1 list
	Staged       bool // the _staged twin (CONFIG_IMA_STAGING)
}

// kernelAlgNames maps the kernel's hash_algo_name values to TPM algorithms.
var kernelAlgNames = map[string]pcr.Alg{
	"sha1":   pcr.SHA1,
	"sha256": pcr.SHA256,
	"sha384": pcr.SHA384,
	"sha512": pcr.SHA512,
	"sm3":    pcr.SM3_256,
}

// ParseListName decodes a measurement list file name. It reports false for
// names that are not measurement lists.
func ParseListName(name string) (List, bool) {
	l := List{Name: name, KernelHashed: true}
	rest := name
	switch {
	case strings.HasPrefix(rest, "binary_runtime_measurements"):
		l.Format = Binary
		rest = strings.TrimPrefix(rest, "binary_runtime_measurements")
	case strings.HasPrefix(rest, "ascii_runtime_measurements"):
		l.Format = ASCII
		rest = strings.TrimPrefix(rest, "ascii_runtime_measurements")
	default:
		return List{}, false
	}
	if strings.HasSuffix(rest, "_staged") {
		l.Staged = true
		rest = strings.TrimSuffix(rest, "_staged")
	}

	switch {
	case rest == "":
		l.Legacy = true
		l.Alg = pcr.SHA1
	case strings.HasPrefix(rest, "_tpm_alg_"):
		id, err := strconv.ParseUint(strings.TrimPrefix(rest, "_tpm_alg_"), 16, 16)
		if err != nil {
			return List{}, false
		}
		l.Alg = pcr.Alg(id)
		l.KernelHashed = false
	case strings.HasPrefix(rest, "_"):
		alg, ok := kernelAlgNames[strings.TrimPrefix(rest, "_")]
		if !ok {
			return List{}, false
		}
		l.Alg = alg
	default:
		return List{}, false
	}
	return l, true
}

// Lists returns every measurement list file in the IMA directory, sorted by
// name.
func (f *FS) Lists() ([]List, error) {
	dirents, err := os.ReadDir(f.IMADir)
	if err != nil {
		return nil, fmt.Errorf("list IMA measurement lists: %w", err)
	}
	var lists []List
	for _, d := range dirents {
		l, ok := ParseListName(d.Name())
		if !ok {
			continue
		}
		l.Path = filepath.Join(f.IMADir, d.Name())
		lists = append(lists, l)
	}
	sort.Slice(lists, func(i, j int) bool { return lists[i].Name < lists[j].Name })
	return lists, nil
}

// ListPath returns the path of the binary list for a bank, or of its _staged
// twin. SHA-1 uses the legacy name, which every IMA kernel has. It fails
// with ErrNoSuchList when the kernel has no list for the bank, and with
// ErrStagingNotSupported for a staged list on a kernel without staging.
func (f *FS) ListPath(alg pcr.Alg, staged bool) (string, error) {
	if staged {
		if err := f.CheckStaging(); err != nil {
			return "", err
		}
	}

	var candidates []string
	suffix := ""
	if staged {
		suffix = "_staged"
	}
	if alg == pcr.SHA1 {
		candidates = append(candidates, "binary_runtime_measurements"+suffix)
	}
	for name, a := range kernelAlgNames {
		if a == alg {
			candidates = append(candidates, "binary_runtime_measurements_"+name+suffix)
		}
	}
	candidates = append(candidates, fmt.Sprintf("binary_runtime_measurements_tpm_alg_%x%s", uint16(alg), suffix))

	for _, name := range candidates {
		p := filepath.Join(f.IMADir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no binary list for bank %s in %s (this kernel has per-bank lists since Linux 6.10; use sha1 on older kernels)", ErrNoSuchList, alg, f.IMADir)
}

// Count returns runtime_measurements_count: the number of entries in the
// current list. Staged entries are not counted.
func (f *FS) Count() (int64, error) {
	return f.readCounter("runtime_measurements_count")
}

// Violations returns the number of violations the kernel has recorded
// since boot. Trimming the list does not lower it.
func (f *FS) Violations() (int64, error) {
	return f.readCounter("violations")
}

func (f *FS) readCounter(name string) (int64, error) {
	p := filepath.Join(f.IMADir, name)
	data, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return 0, fmt.Errorf("read %s: %w (%w)", p, err, ErrPermission)
		}
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: invalid counter %q: %w", p, data, err)
	}
	return v, nil
}
