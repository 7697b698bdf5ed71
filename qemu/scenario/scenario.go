// Package scenario writes the guest scripts of the multi-boot kexec
// scenarios and reads their results from the serial console. The demo and
// the QEMU tests share it.
package scenario

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/imashard/imashard/pkg/handoff"
	"github.com/imashard/imashard/qemu/vm"
)

// Chain is a run of Boots boots joined by kexec.
type Chain struct {
	Boots int
	// KexecArgs are added to every `imashard kexec` command line.
	KexecArgs string
	// PlainKexec hands over with u-root's kexec command, without imashard
	// and without shards, from boot 1 to boot 2.
	PlainKexec bool
	// Tamper makes boot 1 hand over its shard with the byte in the middle
	// of the file changed.
	Tamper bool
	// PolicyRules are appended to the IMA policy in boot 1 before the
	// workload, one write each.
	PolicyRules []string
	// Background runs a loop in every boot that keeps adding IMA entries
	// (writing and reading new files) during the snapshot and the kexec.
	Background bool
}

// Overlay returns the files a chain needs in the first boot's initramfs:
// the next kernel and the base initramfs below /carry, and the script.
func Overlay(kernel, initramfs []byte, script string) []handoff.File {
	return []handoff.File{
		{Path: "carry/vmlinuz", Data: kernel},
		{Path: "carry/initramfs.cpio", Data: initramfs},
		{Path: "scenario.sh", Data: []byte(script), Mode: 0o755},
	}
}

// Script returns the gosh script that /etc/imashard/init.sh runs in every
// boot after `imashard boot`. The boot number travels in /carry/boot.
func (c Chain) Script() string {
	var b strings.Builder
	b.WriteString(`
boot=1
if [ -e /carry/boot ]; then boot=$(cat /carry/boot); fi
echo "@@imashard-begin boot"
echo $boot
echo "@@imashard-end boot"
mkdir -p /work-$boot
`)
	if c.Background {
		b.WriteString(`
mkdir -p /bg-$boot
# Bounded, because the shell waits for its background jobs before it exits.
(i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo $i > /bg-$boot/f$i; cat /bg-$boot/f$i > /dev/null; done) &
`)
	}
	for _, rule := range c.PolicyRules {
		// One write per rule, newline included: the kernel's policy parser
		// reports a rule written without its newline as one byte longer
		// than the write, which Go's os.File turns into a panic.
		fmt.Fprintf(&b, "if [ $boot = 1 ]; then printf '%%s\\n' %q > /sys/kernel/security/ima/policy; fi\n", rule)
	}
	b.WriteString(`
# Workload: each new file that root reads adds one IMA entry under the tcb
# policy, so the log grows in every boot.
for i in 1 2 3 4 5; do
	echo "boot $boot file $i" > /work-$boot/w$i
	cat /work-$boot/w$i > /dev/null
done
`)
	fmt.Fprintf(&b, "if [ $boot -lt %d ]; then\n", c.Boots)
	b.WriteString("\techo $((boot+1)) > /carry/boot\n")
	kexec := "\timashard kexec --kernel /carry/vmlinuz --initrd /carry/initramfs.cpio --carry /carry --carry /scenario.sh " + c.KexecArgs + "\n"
	switch {
	case c.PlainKexec:
		b.WriteString(`	imashard kexec --kernel /carry/vmlinuz --initrd /carry/initramfs.cpio --carry /carry --carry /scenario.sh --dry-run --output-initrd /run/next.img --skip-snapshot --force
	rm -rf /run/imashard
	kexec --reuse-cmdline -i /run/next.img /carry/vmlinuz
`)
	case c.Tamper:
		// Snapshot without kexec, change one byte of the new shard, then
		// carry the chain directory as it is.
		fmt.Fprintf(&b, `	imashard kexec --kernel /carry/vmlinuz --initrd /carry/initramfs.cpio --dry-run --output-initrd /run/next.img %s
	for f in /run/imashard/*; do
		size=$(wc -c < $f)
		off=$((size / 2))
		old=$(dd if=$f bs=1 skip=$off count=1 status=none)
		new=A
		if [ "$old" = "A" ]; then new=B; fi
		echo -n $new | dd of=$f bs=1 seek=$off conv=notrunc status=none
		echo "@@imashard-begin tampered"
		echo "$f $off"
		echo "@@imashard-end tampered"
	done
`, c.KexecArgs)
		b.WriteString(kexec[:len(kexec)-1] + " --skip-snapshot --force\n")
	default:
		b.WriteString(kexec)
	}
	b.WriteString(`	status=$?
	echo "@@imashard-begin kexec-failed"
	echo $status
	echo "@@imashard-end kexec-failed"
else
	for f in /run/imashard/*; do
		if [ ! -f $f ]; then continue; fi
		echo "@@imashard-begin shard"
		echo $f
		base64 $f
		echo "@@imashard-end shard"
	done
fi
`)
	return b.String()
}

// Boot is the output of one boot.
type Boot struct {
	Number int
	// Report is the JSON report of `imashard boot --json`.
	Report json.RawMessage
	// Status is the exit status of `imashard boot`.
	Status int
}

// Result is the output of a whole chain.
type Result struct {
	Boots []Boot
	// KexecFailed counts boots in which `imashard kexec` returned.
	KexecFailed int
	// Shards maps the base name of each shard the last boot kept to its
	// contents.
	Shards map[string][]byte
}

// Parse reads a chain's results from the console.
func Parse(console string) (*Result, error) {
	res := &Result{Shards: map[string][]byte{}}
	numbers := vm.Sections(console, "boot")
	reports := vm.Sections(console, "boot-report")
	statuses := vm.Sections(console, "boot-status")
	if len(reports) != len(numbers) || len(statuses) != len(numbers) {
		return res, fmt.Errorf("console has %d boots, %d boot reports and %d statuses; a boot did not finish (see the console log)",
			len(numbers), len(reports), len(statuses))
	}
	for i := range numbers {
		n, err := strconv.Atoi(strings.TrimSpace(numbers[i]))
		if err != nil {
			return res, fmt.Errorf("boot %d: invalid boot number %q", i+1, numbers[i])
		}
		st, err := strconv.Atoi(strings.TrimSpace(statuses[i]))
		if err != nil {
			return res, fmt.Errorf("boot %d: invalid status %q", n, statuses[i])
		}
		res.Boots = append(res.Boots, Boot{Number: n, Report: json.RawMessage(reports[i]), Status: st})
	}
	res.KexecFailed = len(vm.Sections(console, "kexec-failed"))
	for _, s := range vm.Sections(console, "shard") {
		name, body, _ := strings.Cut(s, "\n")
		name = strings.TrimSpace(name)
		data, err := vm.DecodeBase64(body)
		if err != nil {
			return res, fmt.Errorf("shard %s: %w", name, err)
		}
		res.Shards[name[strings.LastIndex(name, "/")+1:]] = data
	}
	return res, nil
}
