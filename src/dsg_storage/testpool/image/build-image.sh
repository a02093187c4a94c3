#!/usr/bin/env bash
# Build the guest image that brings real ZFS to a machine without it:
# Debian (trixie) + OpenZFS built by DKMS + python3-pyzfs, booted by testpool/vm.py.
#
# usage: build-image.sh OUT_DIR CACHE_DIR
#   OUT_DIR   created atomically at the end: vmlinuz, initrd.img, rootfs.ext4, manifest.txt
#   CACHE_DIR kept between builds: downloaded .debs and built zfs modules, so that a
#             rebuild skips the network and the 3-minute DKMS compile.
# Needs root (debootstrap, chroot, mkfs.ext4 -d). Prints one "stage NAME: Ns" line per stage.
set -euo pipefail

out=$(realpath -m "$1")
cache=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)
suite=${DSG_VM_SUITE:-trixie}
mirror=${DSG_VM_MIRROR:-}
if [ -z "$mirror" ]; then
    # Use the mirror this host already uses: it is the one known to be reachable.
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

[ "$(id -u)" = 0 ] || { echo "build-image.sh: building the VM image needs root (debootstrap, chroot)" >&2; exit 2; }
for tool in debootstrap mkfs.ext4 chroot; do
    command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is missing: apt-get install debootstrap e2fsprogs" >&2; exit 2; }
done

mkdir -p "$cache/debs" "$cache/modules" "$(dirname "$out")"
work=$(mktemp -d "$out.build.XXXXXX")
root=$work/root
mounts=()

cleanup() {
    # Unmount in reverse order even when the build failed: a bind mount left behind
    # would make the rm below delete the host's /dev or package cache.
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # so that the EXIT trap unmounts on a timeout too

mount_into() { # TYPE SOURCE TARGET [OPTIONS]
    mkdir -p "$3"
    if [ "$1" = bind ]; then mount --bind "$2" "$3"; else mount -t "$1" "$2" "$3"; fi
    mounts+=("$3")
}

stage_start=$SECONDS
stage() { echo "stage $1: $((SECONDS - stage_start))s"; stage_start=$SECONDS; }
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
apt_install() { in_root apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "$@"; }

# --- debootstrap -----------------------------------------------------------------------
debootstrap --variant=minbase --components=main,contrib --cache-dir="$cache/debs" \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
stage debootstrap

mount_into proc proc "$root/proc"
mount_into sysfs sys "$root/sys"
mount_into bind /dev "$root/dev"
mount_into bind "$cache/debs" "$root/var/cache/apt/archives"
# Never start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# Keep downloaded packages: the archive directory is the host's cache.
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$root/etc/apt/apt.conf.d/10keep"
# A small initramfs that can mount the virtio root disk; zfs loads later from the root fs.
mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$root/etc/initramfs-tools/conf.d/dsg-storage.conf"
mkdir -p "$root/etc/initramfs-tools"
printf '%s\n' virtio_pci virtio_blk ext4 9p 9pnet_virtio >"$root/etc/initramfs-tools/modules"

in_root apt-get update -q >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
mapfile -t packages < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/image-packages.txt")
apt_install "${packages[@]}" >>"$work/apt.log" 2>&1 || { tail -n 40 "$work/apt.log" >&2; exit 1; }
stage packages

# --- zfs kernel modules ----------------------------------------------------------------
kver=$(ls "$root/lib/modules" | sort -V | tail -n 1)
zfsver=$(in_root dpkg-query -W -f='${Version}' zfsutils-linux)
modcache="$cache/modules/$kver-$zfsver"
moddir="$root/lib/modules/$kver/updates/dkms"
if ! ls "$modcache"/zfs.ko* >/dev/null 2>&1; then
    apt_install zfs-dkms "linux-headers-$kver" >>"$work/apt.log" 2>&1 \
        || { tail -n 40 "$work/apt.log" >&2; exit 1; }
    if ! ls "$moddir"/zfs.ko* >/dev/null 2>&1; then
        # The postinst builds for the running (host) kernel only on some dkms versions.
        in_root dkms autoinstall -k "$kver" >>"$work/apt.log" 2>&1 \
            || { tail -n 40 "$work/apt.log" >&2; exit 1; }
    fi
    ls "$moddir"/zfs.ko* >/dev/null 2>&1 || { echo "build-image.sh: DKMS built no zfs module for $kver" >&2; exit 1; }
    rm -rf "$modcache.tmp" && mkdir -p "$modcache.tmp"
    cp "$moddir"/*.ko* "$modcache.tmp/"
    mv "$modcache.tmp" "$modcache"
    # The compiler and headers are only needed to build: drop them (~400 MB).
    in_root apt-get purge -y -q zfs-dkms dkms "linux-headers-$kver" >>"$work/apt.log" 2>&1
    in_root apt-get autoremove --purge -y -q >>"$work/apt.log" 2>&1
    stage zfs-dkms
fi
mkdir -p "$moddir"
cp "$modcache"/*.ko* "$moddir/"
in_root depmod -a "$kver"
in_root zgenhostid -f >/dev/null
# The ZFS event daemon, unpacked rather than installed: its package depends on zfs-dkms,
# which is purged above once the module is built.
in_root sh -c 'cd /var/cache/apt/archives && { ls zfs-zed_*.deb >/dev/null 2>&1 || apt-get download -q zfs-zed; } && dpkg-deb -x "$(ls zfs-zed_*.deb | tail -n 1)" /' >>"$work/apt.log" 2>&1 \
    || { tail -n 20 "$work/apt.log" >&2; exit 1; }
[ -x "$root/usr/sbin/zed" ] || { echo "build-image.sh: zed is missing from the image" >&2; exit 1; }
stage modules

# --- boot files and root filesystem ----------------------------------------------------
in_root update-initramfs -u -k "$kver" >>"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; exit 1; }
install -m 755 "$here/guest-init.sh" "$root/sbin/dsg-init"
pyver=$(in_root python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
pyzfsver=$(in_root dpkg-query -W -f='${Version}' python3-pyzfs)

mkdir -p "$work/out"
cp "$root/boot/vmlinuz-$kver" "$work/out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/out/initrd.img"

for m in "$root/var/cache/apt/archives" "$root/dev" "$root/sys" "$root/proc"; do umount -l "$m"; done
mounts=()
rm -rf "$root"/var/cache/apt/archives/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/boot/* \
    "$root"/var/log/* "$root/usr/sbin/policy-rc.d"
mkfs.ext4 -q -F -O ^has_journal -L dsg-root -d "$root" "$work/out/rootfs.ext4" 4G
stage rootfs

cat >"$work/out/manifest.txt" <<EOF
suite=$suite
kernel=$kver
zfs=$zfsver
pyzfs=$pyzfsver
python=$pyver
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
rm -rf "$out"
mv "$work/out" "$out"
echo "image ready: $out (kernel $kver, zfs $zfsver, python $pyver)"
