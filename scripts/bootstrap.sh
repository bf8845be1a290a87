#!/usr/bin/env bash
# vmsynth bootstrap: everything `npm run demo`, `npm test` and .ci/run need, installed
# idempotently on Debian 12 as root. Fast when all is already there (no apt, no npm).
#   1. Debian packages (QEMU, libvirt, FUSE, busybox, a C toolchain for the test guest
#      and for native npm modules);
#   2. host device permissions udev would set (this machine may run no udev);
#   3. libvirtd and virtlogd running (started by hand where there is no systemd);
#   4. npm dependencies (`npm ci` when package-lock.json changed), tap built for its plugins;
#   5. the native addon in native/ (node-gyp, when a source is newer than the addon);
#   6. the TypeScript build (when a source is newer than the last build);
#   7. the vmsynth command on the PATH: /usr/local/bin/vmsynth, a link to this checkout.
# Everything it prints goes to stderr, so a command's stdout stays machine-readable.
set -euo pipefail
exec 3>&1 1>&2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { printf 'bootstrap: %s\n' "$*"; }
# A daemon must hold none of our file descriptors: one holding the pipe our
# caller reads (npm run bootstrap | tail) would keep that caller waiting.
# Daemons log to syslog.
start_daemon() {
  (
    for fd in /proc/self/fd/*; do
      n=${fd##*/}
      [ "$n" -gt 2 ] && eval "exec $n>&-"
    done
    exec "$@"
  ) </dev/null >/dev/null 2>&1
}

if [ "$(id -u)" -ne 0 ]; then
  say "vmsynth manages VMs through qemu:///system and mounts FUSE filesystems: run as root."
  exit 1
fi

# 1. Debian packages.
packages=(
  qemu-system-x86 qemu-utils
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  libfuse2 fuse3 busybox-static xdelta3 xz-utils
  gcc g++ make libc6-dev python3 pkg-config
  ca-certificates procps iproute2
  openssl systemd systemd-container
  debootstrap e2fsprogs apt-utils dpkg-dev
  espeak-ng sox imagemagick fonts-dejavu-core
  chromium
)
# One dpkg-query for all of them (a query per package took over a second).
installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null | awk '$2 == "installed" { print $1 }' || true)
missing=()
for p in "${packages[@]}"; do
  grep -qxF "$p" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. /dev/kvm as Debian's udev rule (60-qemu-system-common) would leave it: group kvm, 0660.
#    Without it libvirt sees KVM "enabled when probing but not available now" and re-probes
#    QEMU's capabilities on every domain start (about 60 s each on these machines).
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
  say "setting /dev/kvm to root:kvm 0660 (what udev does on a stock Debian host)"
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
if [ ! -c /dev/fuse ]; then
  modprobe fuse 2>/dev/null || say "warning: /dev/fuse is missing; resume over FUSE will fail with VMS_NO_FUSE"
fi

# 3. libvirt daemons.
if [ -d /run/systemd/system ]; then
  systemctl is-active --quiet virtlogd || systemctl start virtlogd
  systemctl is-active --quiet libvirtd || systemctl start libvirtd
else
  pgrep -x virtlogd >/dev/null || { say "starting virtlogd"; start_daemon virtlogd -d; }
  pgrep -x libvirtd >/dev/null || { say "starting libvirtd"; start_daemon libvirtd -d; }
fi
for _ in $(seq 1 100); do
  [ -S /var/run/libvirt/libvirt-sock ] && break
  sleep 0.1
done
[ -S /var/run/libvirt/libvirt-sock ] || { say "libvirtd did not come up (no /var/run/libvirt/libvirt-sock)"; exit 1; }

# 4. npm dependencies.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -d node_modules ] || [ "$(cat node_modules/.vmsynth-lock 2>/dev/null || true)" != "$lock_sum" ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > node_modules/.vmsynth-lock
fi
# tap's Test class is built for the plugins package.json configures. tap rebuilds it on
# its own when they differ, but the run that notices still starts its test processes with
# the old plugins' loaders: build it here, before any run.
if [ ! -f node_modules/.vmsynth-tap-built ] || [ package.json -nt node_modules/.vmsynth-tap-built ]; then
  say "tap build (the configured plugins)"
  node_modules/.bin/tap build >/dev/null
  touch node_modules/.vmsynth-tap-built
fi

# 5. Native addon (native/sd_notify.c: systemd notifications; lib/core/sd-notify.ts loads it).
#    Built with node-gyp (node_modules/ has one; npm bundles another) against the headers
#    of the running node (npm's nodedir, else <node prefix>/include/node): no download.
addon=native/build/Release/sd_notify.node
if [ ! -f "$addon" ] || [ -n "$(find native -path native/build -prune -o -type f -newer "$addon" -print -quit)" ]; then
  say "building the native addon (node-gyp)"
  gyp=node_modules/node-gyp/bin/node-gyp.js
  [ -f "$gyp" ] || gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
  [ -f "$gyp" ] || { say "cannot find node-gyp (npm bundles it at $gyp)"; exit 1; }
  nodedir="${npm_config_nodedir:-$(npm config get nodedir 2>/dev/null || true)}"
  [ -n "$nodedir" ] && [ "$nodedir" != undefined ] && [ "$nodedir" != null ] || nodedir="$(node -p 'require("node:path").resolve(process.execPath, "../..")')"
  gyp_args=(rebuild --directory=native --loglevel=error)
  [ -f "$nodedir/include/node/node_api.h" ] && gyp_args+=("--nodedir=$nodedir")
  if ! out=$(node "$gyp" "${gyp_args[@]}" 2>&1); then
    printf '%s\n' "$out"
    say "building native/ failed (node-gyp ${gyp_args[*]})"
    exit 1
  fi
  touch "$addon"
fi

# 6. TypeScript build.
if [ ! -f dist/.build-stamp ] || [ -n "$(find lib bench test tsconfig.json package.json -newer dist/.build-stamp -print -quit)" ]; then
  say "building (tsc)"
  node_modules/.bin/tsc -p .
  touch dist/.build-stamp
fi

# 7. The command on the PATH, as `npm install -g --prefix=/usr/local .` would link it (without
#    npm's global install): /usr/local/bin/vmsynth -> this checkout's entry point. A vmsynth
#    there that is not a link (an installed copy) is left alone.
entry="$root/dist/lib/cli/entry.cjs"
[ -x "$entry" ] || chmod 0755 "$entry"
bin=/usr/local/bin/vmsynth
if [ -L "$bin" ] || [ ! -e "$bin" ]; then
  if [ "$(readlink -f "$bin" 2>/dev/null || true)" != "$(readlink -f "$entry")" ]; then
    say "linking $bin -> $entry"
    mkdir -p /usr/local/bin
    ln -sfn "$entry" "$bin"
  fi
fi
