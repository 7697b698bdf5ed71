package shard

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// dirLock is the lock that allows one snapshot at a time per chain
// directory. It combines flock(2), which the kernel releases when the holder
// dies, with the holder's PID in the file, so a waiting user can see who holds
// it and a lock left by a dead process is recognised and logged.
type dirLock struct {
	f *os.File
}

func lockDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}

	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := readLockPID(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s held by PID %d: wait for that snapshot to finish", ErrLocked, path, holder)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}

	// The flock is ours, so a PID still in the file belongs to a holder that
	// ended without removing it.
	if pid := readLockPID(f); pid > 0 {
		if pid != os.Getpid() && processRunning(pid) {
			slog.Warn("taking over lock whose file names a running process that does not hold it", "path", path, "pid", pid)
		} else {
			slog.Warn("taking over stale lock of a process that is no longer running", "path", path, "pid", pid)
		}
	}

	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write lock file: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write lock file: %w", err)
	}
	return &dirLock{f: f}, nil
}

func readLockPID(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(string(bytes.TrimSpace(buf[:n])))
	if err != nil {
		return 0
	}
	return pid
}

func processRunning(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// unlock empties the PID before releasing, so the next holder finds a clean
// lock file.
func (l *dirLock) unlock() error {
	if err := l.f.Truncate(0); err != nil {
		slog.Warn("clear lock file", "path", l.f.Name(), "err", err)
	}
	return l.f.Close()
}

// ChainLock is a chain directory's lock taken by a caller that runs more
// than the snapshot under it, such as the trims around a snapshot, so that
// no other snapshot starts in between.
type ChainLock struct {
	l   *dirLock
	dir string
}

// LockChain takes the lock of the chain directory dir. It fails with an
// error wrapping ErrLocked, naming the holder's PID, when another process
// holds it.
func LockChain(dir string) (*ChainLock, error) {
	l, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	return &ChainLock{l: l, dir: dir}, nil
}

// Unlock releases the lock.
func (c *ChainLock) Unlock() error { return c.l.unlock() }
