#!/usr/bin/env bash
# Runs a command as root in a QEMU virtual machine whose kernel has cgroup v2
# only (no v1 hierarchy is ever mounted, so every controller is v2's), over
# this host's file system shared read-only through 9p. Writable scratch is
# a tmpfs at /run, with TMPDIR=/run/tmp (the host's /tmp stays visible, as
# the caller's files may be there).
# The tests use it to run the cgroup v2 code path on hosts that have v1.
# Software emulation (TCG): slow to boot, but it needs no KVM.
#
# Usage: scripts/cgroup-v2-vm.sh COMMAND [ARG...]
# Prints the VM's console; exits with COMMAND's status (99 if the VM did
# not report one). Needs Debian's qemu-system-x86, linux-image-amd64 (its
# kernel has 9p as modules) and busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."

kver=$(find /lib/modules -mindepth 1 -maxdepth 1 -name '*-amd64' ! -name '*cloud*' -printf '%f\n' | sort -V | tail -1)
kernel=/boot/vmlinuz-$kver
if [ -z "$kver" ] || [ ! -r "$kernel" ]; then
    echo "cgroup-v2-vm: no Debian amd64 kernel in /boot and /lib/modules (apt-get install linux-image-amd64)" >&2
    exit 98
fi
for need in qemu-system-x86_64 busybox; do
    command -v "$need" >/dev/null || { echo "cgroup-v2-vm: $need is missing" >&2; exit 98; }
done

if ldd "$(command -v busybox)" >/dev/null 2>&1; then
    echo "cgroup-v2-vm: busybox is dynamically linked; the VM's initramfs needs busybox-static" >&2
    exit 98
fi

work="$PWD/target/vm"
mkdir -p "$work"
initrd="$work/initrd-$kver.cpio.gz"
if [ ! -s "$initrd" ]; then
    root=$(mktemp -d "$work/initrd.XXXXXX")
    mkdir -p "$root/bin" "$root/mods"
    cp "$(command -v busybox)" "$root/bin/busybox"
    # The modules 9p over virtio-pci needs, in load order.
    modprobe -a -S "$kver" --show-depends virtio_pci 9pnet_virtio 9p | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' > "$root/mods/order"
    while read -r ko; do cp "$ko" "$root/mods/"; done < "$root/mods/order"
    cat > "$root/init" <<'INIT'
#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /newroot
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
while read -r ko; do $bb insmod "/mods/${ko##*/}" || echo "agentrt-vm: insmod $ko failed"; done < /mods/order
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /newroot
run=$($bb sed -n 's/.*agentrt\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
n=/newroot
$bb mount -t proc proc $n/proc
$bb mount -t sysfs sys $n/sys
$bb mount -t devtmpfs dev $n/dev
$bb mkdir -p $n/dev/shm $n/dev/pts
$bb mount -t tmpfs shm $n/dev/shm
$bb mount -t cgroup2 cgroup2 $n/sys/fs/cgroup
$bb mount -t tmpfs run $n/run
# Not chroot: a process in a chroot may not make user namespaces.
exec $bb switch_root $n /bin/busybox sh -c "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run TMPDIR=/run/tmp; mkdir -p /run/tmp; modprobe loop; modprobe ext4; . $run; echo \"agentrt-vm: exit \$?\"; /bin/busybox poweroff -f"
INIT
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.partial"
    mv "$initrd.partial" "$initrd"
    rm -rf "$root"
fi

run=$(mktemp "$work/run.XXXXXX")
trap 'rm -f "$run"' EXIT
{
    printf 'cd %q\n' "$PWD"
    # The caller's AGENTRT_* and RUST_* variables go along.
    env | grep -E '^(AGENTRT|RUST)_' | while IFS='=' read -r k v; do printf 'export %s=%q\n' "$k" "$v"; done
    printf '%q ' "$@"
    printf '\n'
} > "$run"

out="$work/console.$$"
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 2048 -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 agentrt.run=$run" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" | tee "$out"
code=$(sed -n 's/.*agentrt-vm: exit \([0-9]*\).*/\1/p' "$out" | tail -1)
rm -f "$out"
exit "${code:-99}"
