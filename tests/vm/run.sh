#!/usr/bin/env bash
# Runs the launcher's cgroup tests on a real cgroup v2 host: Debian's kernel
# booted in a qemu guest under TCG with cgroup_no_v1=all, so only cgroup2 is
# mounted, every controller enabled. The guest sees this machine's root
# read-only over 9p, under an overlay whose writes stay in the guest's memory
# (so the test binaries built here run there at the same paths), and writes
# each test binary's output and exit status to a scratch share. Fails when
# any test failed in the guest, or the guest did not finish.
#
#   tests/vm/run.sh                 # the cgroup tests (as root)
#   tests/vm/run.sh memory          # only tests whose name contains "memory"
#
# Environment: VASSAL_VM_TESTS (test files of tests/tests, default below),
# VASSAL_VM_CACHE (where the kernel package is unpacked, default target/vm),
# VASSAL_VM_TIMEOUT (seconds, default 1200). Needs qemu-system-x86 and busybox-static
# (tests/run-all.sh installs them); the kernel is downloaded with
# `apt-get download` and unpacked, never installed on this host.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
filter=${1:-}
# Not launcher_network: its tests have real-time windows (traffic within
# 2 s, events within 5 s) that an emulated CPU on a busy host misses.
tests=(${VASSAL_VM_TESTS:-launcher_limits launcher_isolation hostile_launcher_mounts launcher_disk launcher_accounting})
cache=${VASSAL_VM_CACHE:-$repo/target/vm}
timeout_s=${VASSAL_VM_TIMEOUT:-1200}

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/vm/run.sh: the guest's tests run as root, and so does qemu's 9p passthrough" >&2
    exit 1
fi
for tool in qemu-system-x86_64 busybox modinfo depmod; do
    command -v "$tool" >/dev/null || { echo "tests/vm/run.sh: $tool is missing (apt-get install qemu-system-x86 busybox-static kmod)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "tests/vm/run.sh: /bin/busybox (busybox-static) is missing" >&2; exit 1; }

# Debian's kernel, the flavour linux-image-amd64 names (the cloud flavour
# has no 9p), unpacked into the cache.
mkdir -p "$cache"
package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$package" ]; then
    apt-get update -qq
    package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
kdir=$cache/$package
if [ ! -e "$kdir/.unpacked" ]; then
    rm -rf "$kdir" "$cache"/download && mkdir -p "$cache/download"
    # A stale package list may name a version the mirror no longer has.
    (cd "$cache/download" && { apt-get download -qq "$package" 2>/dev/null ||
        { apt-get update -qq && apt-get download -qq "$package"; }; })
    dpkg -x "$cache"/download/"$package"_*.deb "$kdir"
    rm -rf "$cache/download"
    version=$(ls "$kdir/lib/modules")
    depmod -b "$kdir" "$version"
    touch "$kdir/.unpacked"
fi
version=$(ls "$kdir/lib/modules")
modules=$kdir/lib/modules/$version

# The initramfs: static busybox, /init, and the modules for virtio-pci, 9p
# and overlay in dependency order. Built anew each run: it takes well under a second.
initrd=$cache/initramfs-$version.cpio
{
    staging=$(mktemp -d)
    mkdir -p "$staging"/{bin,modules}
    cp /bin/busybox "$staging/bin/busybox"
    cp tests/vm/init "$staging/init"
    order=()
    add() {
        local m=$1 f d
        for d in "${order[@]}"; do [ "$d" = "$m" ] && return 0; done
        f=$(find "$modules/kernel" -name "$m.ko" | head -n1)
        [ -n "$f" ] || { grep -q "/$m.ko\$" "$modules/modules.builtin" && return 0; echo "module $m not found" >&2; exit 1; }
        for d in $(modinfo -F depends "$f" | tr ',' ' '); do add "$d"; done
        cp "$f" "$staging/modules/"
        order+=("$m")
    }
    for m in virtio_pci 9pnet_virtio 9p overlay; do add "$m"; done
    printf '%s\n' "${order[@]}" >"$staging/modules/order"
    echo "$kdir" >"$staging/modules/tree"
    echo "$repo" >"$staging/modules/repo"
    (cd "$staging" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$staging"
}

# The test binaries, built here in the same profile as the launcher.
cargo build --workspace --bins
scratch=$(mktemp -d "$cache/run-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for t in "${tests[@]}"; do
    bin=$(cargo test -p vassal-tests --test "$t" --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4)
    [ -x "$bin" ] || { echo "tests/vm/run.sh: no test binary for $t" >&2; exit 1; }
    echo "$t $bin $filter" >>"$scratch/plan"
done

echo "vm: booting $package (TCG, 2 cores, 2 GiB, cgroup_no_v1=all)"
start=$(date +%s.%N)
set +e
timeout "$timeout_s" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp 2 -m 2G \
    -nodefaults -no-reboot -display none -serial stdio \
    -kernel "$kdir/boot/vmlinuz-$version" -initrd "$initrd" \
    -append "console=ttyS0 quiet loglevel=3 cgroup_no_v1=all panic=-1 rdinit=/init vassal.scratch=$scratch" \
    -fsdev local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=scratch,path="$scratch",security_model=passthrough,multidevs=remap \
    -device virtio-9p-pci,fsdev=scratch,mount_tag=scratch \
    </dev/null
qemu=$?
set -e
elapsed=$(echo "$start $(date +%s.%N)" | awk '{printf "%.0f", $2 - $1}')
[ "$qemu" -eq 0 ] || echo "vm: qemu exited $qemu after $elapsed s (124: timed out)"

passed=0 failed=0 broken=()
for t in "${tests[@]}"; do
    log=$scratch/$t.log
    if [ ! -e "$scratch/$t.status" ]; then
        broken+=("$t (did not finish)")
        [ -e "$log" ] && cat "$log"
        continue
    fi
    status=$(cat "$scratch/$t.status")
    p=$(awk '/^test result:/ {for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) s += $i} END {print s + 0}' "$log")
    f=$(awk '/^test result:/ {for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) s += $i} END {print s + 0}' "$log")
    passed=$((passed + p)) failed=$((failed + f))
    if [ "$status" -ne 0 ]; then
        cat "$log"
        [ "$f" -gt 0 ] || broken+=("$t (exit $status)")
    else
        grep -E '^test .* \.\.\. |^test result:' "$log" | sed "s/^/vm $t: /"
    fi
done
echo "vm: guest ran ${elapsed} s in all"
for b in "${broken[@]}"; do echo "vm: broken: $b"; done
echo "cgroup-v2: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#broken[@]} -eq 0 ] && [ "$qemu" -eq 0 ]
