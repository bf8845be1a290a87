# Example customization of vmsynth's test guest (run in the guest by /bin/sh):
# "install and start an app" the way a real one would touch disk and memory.
set -e
# Start a second app instance on port 8001: its 8 MiB working set becomes new
# guest memory (the same pattern the base's app holds, so the builder finds
# most of it in the base and ships references, not bytes).
setsid /bin/offload-app --port 8001 --ws-mb 8 > /tmp/app2.log 2>&1 < /dev/null &
# "Install" software on the disk at 40 MiB: real executables and kernel
# modules (~3 MiB), as a package install writes them, not random bytes.
cat /bin/offload-app /bin/busybox $(find /lib/modules -name '*.ko' | sort) |
  dd of=/dev/vda bs=1M seek=40 conv=fsync 2>/dev/null
# Write 4 MiB of scratch at 48 MiB and discard it again, as a filesystem
# trims deleted temporary files: those blocks must not weigh in the overlay.
dd if=/dev/urandom of=/dev/vda bs=1M seek=48 count=4 conv=fsync 2>/dev/null
blkdiscard -o $((48 << 20)) -l $((4 << 20)) /dev/vda
sleep 1
wget -q -O - http://127.0.0.1:8001/health
echo
echo "customized"
