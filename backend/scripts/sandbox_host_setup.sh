#!/usr/bin/env bash
# One-time host setup for the python_q sandbox (CI, dev machines where you are root, images).
#
#   sudo backend/scripts/sandbox_host_setup.sh            # from the repo root
#
# - installs bubblewrap (the bwrap backend), libseccomp2 (its seccomp filter) and acl (tests
#   share the local object store between root and the unprivileged worker user by a default ACL);
# - creates the unprivileged user the python_q worker runs as (default: corral), because the
#   bwrap backend refuses to run as root;
# - makes the project's Python interpreter reachable by that user (traverse-only on its
#   parent directories, e.g. /root when pyenv lives there);
# - checks that unprivileged user namespaces work (bwrap needs them).
# The sandbox venv itself is made by `uv run python -m corral.tasks.sandbox.prepare venv`
# (tests do this on their own when it is missing).
set -euo pipefail

SANDBOX_USER="${SANDBOX_USER:-corral}"
BACKEND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (it installs packages and creates a user)" >&2
  exit 1
fi

need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v setfacl >/dev/null || need+=(acl)
command -v setpriv >/dev/null || need+=(util-linux)
# libseccomp builds the sandbox's seccomp filter (loaded through ctypes, no Python package).
ldconfig -p | grep -q 'libseccomp\.so\.2' || need+=(libseccomp2)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if ! id "$SANDBOX_USER" >/dev/null 2>&1; then
  useradd --system --create-home --home-dir "/var/lib/$SANDBOX_USER" \
    --shell /usr/sbin/nologin "$SANDBOX_USER"
fi

# The venv's interpreter (and uv's / pyenv's base interpreter) must be executable by the user.
python="$(readlink -f "$BACKEND_DIR/.venv/bin/python" 2>/dev/null || command -v python3)"
dir="$(dirname "$python")"
while [ "$dir" != "/" ]; do
  chmod o+x "$dir"
  dir="$(dirname "$dir")"
done
chmod -R o+rX "$BACKEND_DIR" 2>/dev/null || true

if ! setpriv --reuid="$SANDBOX_USER" --regid="$SANDBOX_USER" --init-groups \
    bwrap --unshare-all --ro-bind /usr /usr --symlink usr/lib64 /lib64 --symlink usr/lib /lib \
    -- /usr/bin/true; then
  echo "unprivileged user namespaces do not work here: use TASKS_SANDBOX__BACKEND=wasm" >&2
  exit 2
fi
# Per-run cgroup limits (see docs/sandbox.md): on cgroup v1 hosts, a `corral` group in each of
# the memory, pids, cpu and cpuacct hierarchies owned by the worker's user
# (TASKS_SANDBOX__CGROUP__PARENT, default `/corral`). cgroupfs is not persistent: run this
# again at boot (or from the unit's ExecStartPre=+). On cgroup v2 hosts use systemd's
# Delegate=yes (or a container's own cgroup).
cgroups="rlimits only"
for ctrl in memory pids cpu cpuacct; do
  dir="/sys/fs/cgroup/$ctrl"
  if [ -d "$dir" ] && grep ' - cgroup ' /proc/self/mountinfo | awk '{print $NF}' | grep -qw "$ctrl"; then
    mkdir -p "$dir/corral" && chown -R "$SANDBOX_USER:$SANDBOX_USER" "$dir/corral" \
      && cgroups="cgroup v1 delegated"
  fi
done
echo "sandbox host ready: user $SANDBOX_USER, $(bwrap --version), $cgroups"
