#!/bin/sh
# Runs inside the cgroup v2 guest as PID 1, on the host's root (read-only
# over 9p): enables every controller, runs the test binaries listed in
# SCRATCH/plan and leaves each one's output and exit status in SCRATCH,
# then powers the guest off. See tests/vm/run.sh.
scratch=$1
kernel_tree=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 VASSAL_EXPECT_CGROUP=v2 RUST_BACKTRACE=1
# This kernel has project quotas: launcher_disk fails without them.
export VASSAL_EXPECT_PROJECT_QUOTA=1
cd /

echo "vm: booted in $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
ip link set lo up
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || echo "vm: cannot enable $c"
done
echo "vm: cgroup2 controllers enabled: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
# The host's /lib/modules has no modules of this kernel: load them, and let
# the kernel load them on demand (nftables, veth, ...), from the unpacked
# package.
echo "$kernel_tree" >/run/vassal-vm-kernel
echo "$(dirname "$0")/modprobe" >/proc/sys/kernel/modprobe
modprobe -d "$kernel_tree" tun || echo "vm: cannot load module tun"
# launcher_disk: loop devices (their /dev nodes appear with the module) and
# ext4's quota format.
for m in loop ext4 quota_v2; do
    modprobe -d "$kernel_tree" $m || echo "vm: cannot load module $m"
done

# plan: one "name path [filter]" line per test binary.
while read -r name bin filter; do
    [ -n "$name" ] || continue
    start=$(cut -d' ' -f1 /proc/uptime)
    # --test-threads: the guest has 2 cores, under TCG.
    "$bin" --test-threads=2 $filter >"$scratch/$name.log" 2>&1
    echo $? >"$scratch/$name.status"
    end=$(cut -d' ' -f1 /proc/uptime)
    echo "vm: $name exited $(cat "$scratch/$name.status") in $(echo "$start $end" | awk '{printf "%.1f", $2 - $1}') s"
done <"$scratch/plan"
echo "vm: done at $(cut -d' ' -f1 /proc/uptime) s"
sync
echo o >/proc/sysrq-trigger
sleep 60 2>/dev/null
