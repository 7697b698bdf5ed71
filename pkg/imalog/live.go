package imalog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/imashard/imashard/pkg/pcr"
)

// ErrNotSupported: the running kernel lacks a feature, such as IMA itself or
// the per-bank lists.
var ErrNotSupported = errors.New("not supported by the running kernel")

// LiveList returns the path and Options of the running kernel's binary list
// for the bank: binary_runtime_measurements_<alg> when the kernel has it
// (Linux 6.10 and later), else the SHA-1 list binary_runtime_measurements,
// whose entries replay into every bank as well. A zero bank means SHA-1. It
// wraps ErrNotSupported when securityfs shows no IMA directory.
func LiveList(bank pcr.Alg) (string, Options, error) {
	return liveList(SecurityfsDir, bank)
}

func liveList(dir string, bank pcr.Alg) (string, Options, error) {
	legacy := filepath.Join(dir, BinaryListName)
	if _, err := os.Stat(legacy); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return "", Options{}, fmt.Errorf("read the IMA measurement list: %w", err)
		}
		if _, err := os.Stat(filepath.Dir(dir)); err != nil {
			return "", Options{}, fmt.Errorf("%w: %s does not exist: mount securityfs there (mount -t securityfs securityfs %s)",
				ErrNotSupported, filepath.Dir(dir), filepath.Dir(dir))
		}
		return "", Options{}, fmt.Errorf("%w: %s does not exist: boot a kernel built with CONFIG_IMA=y (Linux 2.6.30 or later) with an IMA policy such as ima_policy=tcb",
			ErrNotSupported, legacy)
	}
	if bank == 0 || bank == pcr.SHA1 {
		return legacy, Options{DigestAlg: pcr.SHA1}, nil
	}

	name := bank.String()
	if bank == pcr.SM3_256 {
		name = "sm3" // the kernel's hash_algo_name
	}
	perBank := filepath.Join(dir, BinaryListName+"_"+name)
	if _, err := os.Stat(perBank); err == nil {
		return perBank, Options{DigestAlg: bank}, nil
	}
	slog.Info("the kernel has no per-bank list (Linux 6.10 or later has one); reading the SHA-1 list, which replays into every bank",
		"bank", bank.String(), "missing", perBank)
	return legacy, Options{DigestAlg: pcr.SHA1}, nil
}
