#!/bin/sh
# PID 1 of the dsg-storage test VM. Deliberately tiny and stable (it is baked into the
# image): it mounts the kernel filesystems and the control share, runs /ctl/main.sh
# (written by testpool/vm.py on every run), records its exit code and powers off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo 1 >/proc/sys/kernel/sysrq
mkdir -p /ctl
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ctl /ctl; then
    /bin/sh /ctl/main.sh </dev/null
    echo "$?" >/ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc
else
    echo "dsg-init: cannot mount the control share" >&2
fi
sync
echo o >/proc/sysrq-trigger
sleep 60
