package handoff

import (
	"bufio"
	"io"
	"strings"
)

// KexecMeasureRules returns the "measure" rules of an IMA policy (as read
// from /sys/kernel/security/ima/policy) that make kexec_file_load add log
// entries: func=KEXEC_KERNEL_CHECK measures the kernel image,
// func=KEXEC_INITRAMFS_CHECK the initrd and func=KEXEC_CMDLINE the command
// line. kexec_load opens no file and is never measured by these hooks.
func KexecMeasureRules(policy io.Reader) ([]string, error) {
	var rules []string
	sc := bufio.NewScanner(policy)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "measure" {
			continue
		}
		for _, f := range fields[1:] {
			switch f {
			case "func=KEXEC_KERNEL_CHECK", "func=KEXEC_INITRAMFS_CHECK", "func=KEXEC_CMDLINE":
				rules = append(rules, line)
			}
		}
	}
	return rules, sc.Err()
}
