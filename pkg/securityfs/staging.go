package securityfs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/imashard/imashard/pkg/pcr"
)

// CheckStaging returns nil when the kernel can delete measurement list
// entries, and ErrStagingNotSupported otherwise. The kernel creates a
// _staged twin of every list exactly when built with CONFIG_IMA_STAGING, so
// the probe looks for one. The result is cached for the life of f.
func (f *FS) CheckStaging() error {
	if f.stagingProbed {
		return f.stagingErr
	}
	lists, err := f.Lists()
	if err != nil {
		return err
	}
	f.stagingErr = fmt.Errorf("%w (%s has no *_staged files)", ErrStagingNotSupported, f.IMADir)
	for _, l := range lists {
		if l.Staged {
			f.stagingErr = nil
			break
		}
	}
	f.stagingProbed = true
	return f.stagingErr
}

// Writer is a measurement list opened for reading and writing. While it is
// open the kernel lets no other process open any measurement list, so what
// Writer reads is exactly what a following Trim, Stage or Delete acts on:
// the list can only grow at its end in between.
type Writer struct {
	file   *os.File
	staged bool
}

// OpenWriter opens the binary list of a bank (or its _staged twin) for
// reading and writing, retrying while another process has a list open.
// Every bank's file shows the same entries, so the bank only chooses the
// digest field of what Writer reads. Close the Writer promptly: it blocks
// every other reader of the measurement lists, attestation agents included.
func (f *FS) OpenWriter(alg pcr.Alg, staged bool) (*Writer, error) {
	if err := f.CheckStaging(); err != nil {
		return nil, err
	}
	path, err := f.ListPath(alg, staged)
	if err != nil {
		return nil, err
	}

	var file *os.File
	err = retryBusy(f.Retry, "open "+path+" for writing", func() error {
		var err error
		file, err = os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return mapErrno(err, 0, true)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Writer{file: file, staged: staged}, nil
}

// retryBusy runs op until it succeeds, fails with an error other than
// ErrBusy, or runs out of attempts.
func retryBusy(retry Retry, what string, op func() error) error {
	if retry.Attempts < 1 {
		retry.Attempts = 1
	}
	delay := retry.Delay
	var err error
	for attempt := 1; attempt <= retry.Attempts; attempt++ {
		err = op()
		if err == nil || !errors.Is(err, ErrBusy) {
			return err
		}
		if attempt == retry.Attempts {
			break
		}
		slog.Info("IMA measurement list busy, retrying", "op", what, "attempt", attempt, "delay", delay, "err", err)
		time.Sleep(delay)
		delay *= 2
		if retry.MaxDelay > 0 && delay > retry.MaxDelay {
			delay = retry.MaxDelay
		}
	}
	return fmt.Errorf("%s: gave up after %d attempts: %w", what, retry.Attempts, err)
}

// OpenReader opens a measurement list for reading, retrying while another
// process holds a list open for writing (EBUSY). It fails with ErrBusy
// once retry runs out and with ErrPermission when the file's mode keeps
// the caller out (the kernel creates the lists for root only).
func OpenReader(path string, retry Retry) (*os.File, error) {
	var file *os.File
	err := retryBusy(retry, "open "+path, func() error {
		var err error
		file, err = os.Open(path)
		if err != nil {
			return mapErrno(err, 0, false)
		}
		return nil
	})
	return file, err
}

// Name returns the path of the open list.
func (w *Writer) Name() string { return w.file.Name() }

// Read reads the list from the current position. The kernel produces the
// list on the fly, so the end of what Read returns is the list's length at
// that moment.
func (w *Writer) Read(p []byte) (int, error) {
	return w.file.Read(p)
}

// Rewind moves the read position back to the first entry.
func (w *Writer) Rewind() error {
	if _, err := w.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind %s: %w", w.file.Name(), err)
	}
	return nil
}

// Trim deletes the first n entries of the current list. The kernel deletes
// all n or none: it fails with ErrTooFewEntries when the list is shorter,
// and with ErrSuspended once a kexec has begun.
func (w *Writer) Trim(n int64) error {
	if w.staged {
		return fmt.Errorf("trim %d entries: %s is a _staged file, which accepts only A and D; open the unstaged list", n, w.file.Name())
	}
	if n < 1 {
		return fmt.Errorf("trim %d entries: the kernel deletes at least 1 entry", n)
	}
	return w.request(strconv.FormatInt(n, 10), requestTrim)
}

// Stage moves the whole current list to the staged list. It fails with
// ErrAlreadyStaged while entries are staged, ErrNothingToStage when the
// current list is empty, and ErrSuspended once a kexec has begun.
func (w *Writer) Stage() error {
	if !w.staged {
		return fmt.Errorf("stage: %s is not a _staged file", w.file.Name())
	}
	return w.request("A", requestStage)
}

// Delete deletes every staged entry. It fails with ErrNothingStaged when
// nothing is staged and ErrSuspended once a kexec has begun.
func (w *Writer) Delete() error {
	if !w.staged {
		return fmt.Errorf("delete staged entries: %s is not a _staged file", w.file.Name())
	}
	return w.request("D", requestDelete)
}

func (w *Writer) request(req string, kind request) error {
	// The kernel takes one request per write call, newline included.
	if _, err := w.file.Write([]byte(req + "\n")); err != nil {
		return fmt.Errorf("write %q to %s: %w", req, w.file.Name(), mapErrno(err, kind, true))
	}
	return nil
}

// Close releases the list, letting other processes open it again.
func (w *Writer) Close() error {
	return w.file.Close()
}

// Trim deletes the first n entries of the current list without reading
// it. Callers that must check what they delete use OpenWriter instead.
func (f *FS) Trim(n int64) error {
	w, err := f.OpenWriter(pcr.SHA1, false)
	if err != nil {
		return fmt.Errorf("trim %d entries: %w", n, err)
	}
	defer w.Close()
	return w.Trim(n)
}

// ReadStaged returns the staged list of a bank in binary form. It holds
// the read side of the lock only while reading.
func (f *FS) ReadStaged(alg pcr.Alg) ([]byte, error) {
	path, err := f.ListPath(alg, true)
	if err != nil {
		return nil, err
	}
	file, err := OpenReader(path, f.Retry)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}
