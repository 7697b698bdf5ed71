package securityfs

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrNotSupported reports a kernel feature that this kernel lacks. The
// wrapping error names the minimum kernel version and config option.
var ErrNotSupported = errors.New("not supported by the running kernel")

var (
	// ErrIMANotEnabled reports a kernel without IMA measurement lists.
	ErrIMANotEnabled = fmt.Errorf("%w: IMA measurement lists not found in securityfs; they need a kernel built with CONFIG_IMA=y and CONFIG_SECURITYFS=y", ErrNotSupported)

	// ErrStagingNotSupported reports a kernel that cannot delete entries
	// from its measurement list.
	ErrStagingNotSupported = fmt.Errorf("%w: deleting IMA measurement list entries needs Linux 7.2 or later built with CONFIG_IMA_STAGING=y", ErrNotSupported)
)

var (
	// ErrNotMounted reports that no securityfs is mounted.
	ErrNotMounted = errors.New("securityfs is not mounted")

	// ErrNoSuchList reports a bank for which the kernel has no list file.
	ErrNoSuchList = errors.New("no measurement list for this bank")

	// ErrPermission reports a missing CAP_SYS_ADMIN (EPERM on open for
	// writing, or a process without it in its effective set) or a non-root
	// process (EACCES: the kernel creates the lists with mode 0440 or 0660,
	// owned by root).
	ErrPermission = errors.New("permission denied: changing the IMA measurement list needs CAP_SYS_ADMIN and reading it needs root (run as root)")

	// ErrBusy reports that another process kept a measurement list open
	// through every retry (EBUSY). Writers exclude all other opens.
	ErrBusy = errors.New("IMA measurement lists are open in another process (EBUSY): a writer excludes every other open, and readers exclude writers; retry once the other process (an attestation agent or another trim) has closed them")

	// ErrSuspended reports that a kexec has begun: the kernel has suspended
	// measurement and no longer lets the list change (ESTALE or EACCES).
	ErrSuspended = errors.New("IMA measurement is suspended because a kexec has begun; the list can no longer be staged or trimmed")

	// ErrTooFewEntries reports a trim of more entries than the current list
	// has (ENOENT on the measurement file). Nothing was deleted.
	ErrTooFewEntries = errors.New("the current measurement list has fewer entries than requested")

	// ErrAlreadyStaged reports a stage request while entries are still
	// staged (EEXIST). Delete or carry the staged entries first.
	ErrAlreadyStaged = errors.New("entries are already staged; read and delete them first")

	// ErrNothingToStage reports a stage request on an empty current list
	// (ENOENT on a _staged file's "A" request).
	ErrNothingToStage = errors.New("the current measurement list is empty; nothing to stage")

	// ErrNothingStaged reports a delete request with no staged entries
	// (ENOENT on a _staged file's "D" request).
	ErrNothingStaged = errors.New("no entries are staged; nothing to delete")

	// ErrHashTableFlush reports a kernel booted with ima_flush_htable,
	// which rejects trimming a number of entries (EINVAL). Use staging.
	ErrHashTableFlush = errors.New("the kernel rejects trimming N entries (booted with ima_flush_htable?); use staged trimming")
)

// request names the write requests the kernel accepts, for error mapping.
type request int

const (
	requestTrim request = iota + 1
	requestStage
	requestDelete
)

// mapErrno turns the errno of a measurement list open or write into the
// package's sentinel errors, following the kernel's ima_fs.c and
// ima_queue.c in Linux 7.2.
func mapErrno(err error, req request, write bool) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case syscall.EBUSY:
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case syscall.EPERM:
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case syscall.ESTALE:
		return fmt.Errorf("%w: %w", ErrSuspended, err)
	case syscall.EACCES:
		// Staging after kexec suspended measurement returns EACCES. On open,
		// EACCES means file permissions.
		if write && req == requestStage {
			return fmt.Errorf("%w: %w", ErrSuspended, err)
		}
		return fmt.Errorf("%w: %w", ErrPermission, err)
	case syscall.EEXIST:
		if req == requestStage {
			return fmt.Errorf("%w: %w", ErrAlreadyStaged, err)
		}
	case syscall.ENOENT:
		switch req {
		case requestTrim:
			return fmt.Errorf("%w: %w", ErrTooFewEntries, err)
		case requestStage:
			return fmt.Errorf("%w: %w", ErrNothingToStage, err)
		case requestDelete:
			return fmt.Errorf("%w: %w", ErrNothingStaged, err)
		}
	case syscall.EINVAL:
		if req == requestTrim {
			return fmt.Errorf("%w: %w", ErrHashTableFlush, err)
		}
	}
	return err
}
