# Runs as /bin/uinit under u-root's init, which has mounted proc, sysfs,
# devtmpfs and securityfs. Verifies the carried shards with `imashard boot`,
# then runs the scenario script that the harness or the previous boot
# placed at /scenario.sh, then powers off.
echo "imashard-init: start"

if [ -e /sys/kernel/security/ima/runtime_measurements_count ]; then
	echo "imashard-init: IMA entries: $(cat /sys/kernel/security/ima/runtime_measurements_count)"
else
	echo "imashard-init: no IMA files under /sys/kernel/security"
fi

if [ -e /scenario.sh ]; then
	echo "imashard-init: running /scenario.sh"
	gosh /scenario.sh
	echo "imashard-init: /scenario.sh exited with $?"
fi

echo "imashard-init: powering off"
sync
shutdown halt
