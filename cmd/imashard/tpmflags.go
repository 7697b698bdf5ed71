package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/imashard/imashard/pkg/pcr"
	"github.com/imashard/imashard/pkg/tpm"
)

const tpmFlagHelp = "TPM to use: /dev/tpmrm0 (kernel resource manager), /dev/tpm0 (raw device), unix:PATH (swtpm socket), tcp:HOST:PORT (raw TPM commands over TCP, as swtpm --server type=tcp serves) or mssim:HOST:PORT (Microsoft simulator protocol)"

// addTPMFlag registers --tpm on fs.
func addTPMFlag(fs *flag.FlagSet) *string {
	return fs.String("tpm", tpm.DefaultDevice, tpmFlagHelp)
}

// parsePCRList parses "10", "0,1,10" and ranges such as "0-7,10" into
// sorted, distinct PCR indexes from 0 to 23.
func parsePCRList(s string) ([]int, error) {
	var indexes []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		low, high, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(low)
		last := first
		if err == nil && isRange {
			last, err = strconv.Atoi(high)
		}
		if err != nil || first < 0 || last > 23 || first > last {
			return nil, fmt.Errorf("%w: PCR list %q: %q is not a PCR index or range from 0 to 23", errUsage, s, part)
		}
		for i := first; i <= last; i++ {
			indexes = append(indexes, i)
		}
	}
	if len(indexes) == 0 {
		return nil, fmt.Errorf("%w: PCR list %q is empty", errUsage, s)
	}
	slices.Sort(indexes)
	return slices.Compact(indexes), nil
}

// selectBanks parses --bank, or returns every allocated bank when it is empty.
func selectBanks(t *tpm.TPM, list string) ([]pcr.Alg, error) {
	if list == "" {
		return t.Banks()
	}
	banks, err := pcr.ParseAlgList(list)
	if err != nil {
		return nil, fmt.Errorf("%w: --bank: %v", errUsage, err)
	}
	return banks, nil
}

func parseNonce(s string) ([]byte, error) {
	nonce, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil {
		return nil, fmt.Errorf("%w: --nonce %q is not hex: %v", errUsage, s, err)
	}
	return nonce, nil
}

// writeNewFile writes data to dir/name through a temporary file and a
// rename, and refuses to replace an existing file, so an interrupted or
// repeated run never destroys earlier output.
func writeNewFile(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists: remove it or choose another --out directory", path)
	}

	tmp, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return err
	}
	// The files are public keys, quotes and PCR values, readable by all.
	err = tmp.Chmod(0o644)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path) // fails with EEXIST instead of replacing
	}
	removeErr := os.Remove(tmp.Name())
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if removeErr != nil && !errors.Is(removeErr, os.ErrNotExist) {
		return fmt.Errorf("removing temporary file %s: %w", tmp.Name(), removeErr)
	}
	return nil
}
