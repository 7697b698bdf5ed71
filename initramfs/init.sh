# Runs as /bin/uinit under u-root's init, which has mounted proc, sysfs,
# devtmpfs and securityfs. Verifies the carried shards with `imashard boot`,
# then runs the scenario script that the harness or the previous boot
# placed at /scenario.sh, then powers off.
echo "imashard-init: start"

# The chain directory lives on tmpfs, which IMA's tcb policy does not
# measure, like /run on a distribution. On the ramfs root every file that
# root reads would add an entry, including the shards themselves.
mkdir -p /run
mount -t tmpfs tmpfs /run

if [ -e /sys/kernel/security/ima/runtime_measurements_count ]; then
	echo "imashard-init: IMA entries: $(cat /sys/kernel/security/ima/runtime_measurements_count)"
else
	echo "imashard-init: no IMA files under /sys/kernel/security"
fi

imashard boot --json > /run/boot-report.json
status=$?
echo "@@imashard-begin boot-report"
cat /run/boot-report.json
echo "@@imashard-end boot-report"
echo "@@imashard-begin boot-status"
echo $status
echo "@@imashard-end boot-status"

if [ -e /scenario.sh ]; then
	echo "imashard-init: running /scenario.sh"
	gosh /scenario.sh
	echo "imashard-init: /scenario.sh exited with $?"
fi

echo "imashard-init: powering off"
sync
shutdown halt
