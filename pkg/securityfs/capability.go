package securityfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// capSysAdmin is CAP_SYS_ADMIN's bit number in the capability sets
// (include/uapi/linux/capability.h).
const capSysAdmin = 21

// procStatusPath is the file CheckCapSysAdmin reads the effective set from.
var procStatusPath = "/proc/self/status"

// CheckCapSysAdmin returns nil when the calling process has CAP_SYS_ADMIN
// in its effective set, which the kernel requires to open a measurement
// list for writing, and an error wrapping ErrPermission otherwise. Checking
// first gives a non-root caller that error before any list is read.
func CheckCapSysAdmin() error {
	f, err := os.Open(procStatusPath)
	if err != nil {
		return fmt.Errorf("read capabilities (needs procfs at /proc): %w", err)
	}
	defer f.Close()
	return checkCapSysAdmin(f, procStatusPath)
}

func checkCapSysAdmin(r io.Reader, name string) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		set, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
		if err != nil {
			return fmt.Errorf("read capabilities: invalid CapEff %q in %s: %w", value, name, err)
		}
		if set&(1<<capSysAdmin) == 0 {
			return fmt.Errorf("%w: this process (uid %d) lacks CAP_SYS_ADMIN in its effective capability set (CapEff %s)", ErrPermission, os.Getuid(), strings.TrimSpace(value))
		}
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read capabilities from %s: %w", name, err)
	}
	return fmt.Errorf("read capabilities: %s has no CapEff line", name)
}
