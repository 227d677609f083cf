#!/usr/bin/env bash
# Captures the golden Boot#### / BootOrder bytes the efi/ tests decode: a
# throwaway QEMU VM under OVMF (TCG is enough) boots Debian's kernel with a
# busybox initramfs carrying efibootmgr, which creates one entry on a GPT disk
# made here with sgdisk; every Boot* variable before and after is hexdumped to
# the serial console and written to testdata/<phase>/<Name>.bin (data only,
# without efivarfs' 4-byte attribute prefix; the attributes go to attrs.txt).
#
# Not run by CI. Needs: qemu-system-x86_64, ovmf, sgdisk, apt-get download,
# dpkg-deb, xxd, and the kernel scripts/fetch-kernel unpacks.
#
# Usage: init/src/efi/testdata/capture.sh [kernel-root]
#   kernel-root defaults to what scripts/fetch-kernel prints as ROOT=.
# CAPTURE_OUT=dir writes the bytes there instead of beside this script.
# IMPRINT_LIVE_TEST=<imprint's lib test binary> also runs, after the dump,
# efi::tests::register_on_a_live_efivarfs against the VM's efivarfs
# (build it with `cargo test -p imprint --lib --no-run`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
root=${1:-$("$repo/scripts/fetch-kernel" | sed -n 's/^ROOT=//p')}
kver=$(basename "$(ls -d "$root"/lib/modules/*)")
out=${CAPTURE_OUT:-$here}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The values the tests check against: the ESP's unique GUID, its first LBA
# and its size in LBAs, the label and the loader path.
PARTUUID=8c3f2d1e-5a4b-4c3d-9e8f-0123456789ab
DISKGUID=1b4e28ba-2fa1-11d2-883f-0016d3cca427
START=2048
SIZE=65536
LABEL="Golden Test"
LOADER='\EFI\golden\grubx64.efi'

# --- the initramfs -----------------------------------------------------------
cd "$work"
mkdir debs rootfs
(cd debs && apt-get download busybox-static efibootmgr libefivar1 libefiboot1 libpopt0 >&2)
for d in debs/*.deb; do dpkg-deb -x "$d" rootfs; done
mkdir -p rootfs/{proc,sys,dev,tmp,lib64,lib/x86_64-linux-gnu,mod}
# glibc and the loader from the host (bookworm, the same release as the debs).
for lib in $(LD_LIBRARY_PATH=rootfs/lib/x86_64-linux-gnu:rootfs/usr/lib/x86_64-linux-gnu \
        ldd rootfs/bin/efibootmgr | awk '$3 ~ /^\/(usr\/)?lib/ && $3 !~ /rootfs/ { print $3 }'); do
    cp -L "$lib" rootfs/lib/x86_64-linux-gnu/
done
cp -L /lib64/ld-linux-x86-64.so.2 rootfs/lib64/
if [[ -n "${IMPRINT_LIVE_TEST:-}" ]]; then
    strip -o rootfs/bin/imprint-test "$IMPRINT_LIVE_TEST"
    for lib in $(ldd "$IMPRINT_LIVE_TEST" | awk '$3 ~ /^\// { print $3 }'); do
        cp -Ln "$lib" rootfs/lib/x86_64-linux-gnu/
    done
fi
# Modules in load order (modules.dep of Debian 6.1: virtio_blk and virtio_pci
# need virtio, which needs virtio_ring; efivarfs needs nothing).
for m in drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko fs/efivarfs/efivarfs.ko; do
    src="$root/lib/modules/$kver/kernel/$m"
    [[ -f "$src" ]] || src="$src.xz"
    cp "$src" rootfs/mod/
done
cat > rootfs/init <<INIT
#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk efivarfs; do
    insmod /mod/\$m.ko* || echo "insmod \$m failed"
done
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
i=0; while [ ! -b /dev/vda ] && [ \$i -lt 50 ]; do sleep 0.2; i=\$((i+1)); done
dump() {
    for f in /sys/firmware/efi/efivars/Boot*-8be4df61-93ca-11d2-aa0d-00e098032b8c; do
        echo "VAR \$1 \$(basename \$f) \$(hexdump -v -e '1/1 "%02x"' \$f)"
    done
}
dump before
efibootmgr -v
efibootmgr -c -d /dev/vda -p 1 -L "$LABEL" -l '$LOADER'
efibootmgr -v
dump after
if [ -x /bin/imprint-test ]; then
    IMPRINT_TEST_EFIVARS=/sys/firmware/efi/efivars /bin/imprint-test --ignored --exact \
        efi::tests::register_on_a_live_efivarfs --nocapture --test-threads=1 && echo LIVE-TEST-PASSED
    efibootmgr -v
fi
echo CAPTURE-DONE
poweroff -f
INIT
chmod +x rootfs/init
# The host may lack cpio; the busybox just unpacked has one.
(cd rootfs && find . | LC_ALL=C sort | ./bin/busybox cpio -o -H newc) | gzip -1 > initrd.gz

# --- the disk ----------------------------------------------------------------
truncate -s 64M disk.img
sgdisk -U "$DISKGUID" -n "1:$START:+$SIZE" -t 1:ef00 -u "1:$PARTUUID" -c 1:ESP disk.img >&2

# --- the VM ------------------------------------------------------------------
cp /usr/share/OVMF/OVMF_VARS_4M.fd vars.fd
# First boot: no -kernel, so OVMF's boot manager walks the devices and
# writes its own entries (the disk, PXEv4/v6 and HTTP on the NIC, the
# shell) into vars.fd; with -kernel it boots the kernel before that. Nothing
# here boots, so the firmware ends in its shell; stop it once the entries
# are written.
timeout 120 qemu-system-x86_64 -machine q35 -m 1024 -nographic -no-reboot \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file=vars.fd \
    -drive if=virtio,format=raw,file=disk.img \
    -netdev user,id=n -device virtio-net-pci,netdev=n,mac=52:54:00:12:34:56 \
    > firmware.log 2>&1 < /dev/null || true
# Second boot: the kernel, efibootmgr and the dump.
timeout 900 qemu-system-x86_64 -machine q35 -m 1024 -nographic -no-reboot \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file=vars.fd \
    -drive if=virtio,format=raw,file=disk.img \
    -netdev user,id=n -device virtio-net-pci,netdev=n,mac=52:54:00:12:34:56 \
    -kernel "$root/boot/vmlinuz-$kver" -initrd initrd.gz \
    -append "console=ttyS0 panic=-1" | tee serial.log | tr -d '\r' > serial.txt || true
cp serial.txt firmware.log "${TMPDIR:-/tmp}/" 2>/dev/null || true
grep -q CAPTURE-DONE serial.txt || { echo "capture: the VM did not finish; see serial.log" >&2; exit 1; }

# --- the bytes ---------------------------------------------------------------
rm -rf "$out/before" "$out/after"
mkdir -p "$out/before" "$out/after"
grep '^VAR ' serial.txt | while read -r _ phase file hex; do
    name=${file%%-*}
    printf '%s' "${hex:8}" | xxd -r -p > "$out/$phase/$name.bin"
    printf '%s %s\n' "$name" "${hex:0:8}" >> "$out/$phase/attrs.txt"
done
sed -n '/^Boot/p' serial.txt > "$out/efibootmgr-v.txt"
echo "capture: wrote $(ls "$out"/before "$out"/after | grep -c bin) variables" >&2
