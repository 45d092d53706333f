#!/usr/bin/env bash
# plain_user.sh USER COMMAND: run COMMAND (a bash command line) as the plain user USER,
# with a clean environment, in a private mount namespace where the system's MPI does
# not exist. Needs root (unshare, mount, dpkg); the user must exist.
#
# "Does not exist": /usr and /etc are overlaid, in this namespace only, with whiteouts
# for every file of the Debian packages that provide mpicc, mpirun and libmpi, or name
# Open MPI (openmpi-bin, libopenmpi-dev, libopenmpi3, ...), their openmpi folders, and the
# links update-alternatives made for them. `command -v mpicc` finds nothing, no mpi.h
# is on the compiler's path and the dynamic linker finds no system libmpi. The machine
# itself is unchanged.
set -euo pipefail
user=$1 cmd=$2
home=$(getent passwd "$user" | cut -d: -f6)
[[ -n $home ]] || { echo "plain_user.sh: no user $user" >&2; exit 2; }

packages=$({ for f in /usr/bin/mpicc /usr/bin/mpirun /usr/lib/*/libmpi.so.*; do
               [[ -e $f ]] && dpkg -S "$(readlink -f "$f")" 2>/dev/null | cut -d: -f1
             done; dpkg-query -W -f '${Package}\n' | grep -i openmpi; } | sort -u | paste -sd' ' -)

# The namespace's scratch tmpfs is mounted here; the empty folder is removed at the end.
scratch=$(mktemp -d /dev/shm/plain-user.XXXXXX)
trap 'rmdir "$scratch" 2>/dev/null || true' EXIT
unshare --mount --propagation private -- python3 - "$user" "$home" "$scratch" "$cmd" $packages <<'PY'
import glob, os, pwd, stat, subprocess, sys

user, home, scratch, cmd, *packages = sys.argv[1:]
hide = set()
for pkg in packages:
    out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout
    for f in out.splitlines():
        if f.startswith(("/usr/", "/etc/")) and (os.path.islink(f) or os.path.isfile(f)
                                      or (os.path.isdir(f) and "openmpi" in os.path.basename(f))):
            hide.add(f)
alternatives = {f for f in glob.glob("/etc/alternatives/*")
                if os.path.islink(f) and "openmpi" in os.readlink(f)}
hide |= alternatives
for top in ("/usr/bin", "/usr/lib", "/usr/include"):
    for root, dirs, files in os.walk(top):
        for name in files + dirs:
            f = os.path.join(root, name)
            if os.path.islink(f) and os.readlink(f) in alternatives:
                hide.add(f)
        dirs[:] = [d for d in dirs if root.count("/") < 3]  # two levels deep is enough

subprocess.run(["mount", "-t", "tmpfs", "plain-user", scratch], check=True)
hidden_dirs = sorted(f for f in hide if os.path.isdir(f) and not os.path.islink(f))
for f in sorted(hide):
    if any(f != d and f.startswith(d + "/") for d in hidden_dirs):
        continue  # under a hidden folder already
    up = scratch + "/up" + f
    os.makedirs(os.path.dirname(up), exist_ok=True)
    os.mknod(up, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # an overlay whiteout
for top in ("/usr", "/etc"):
    os.makedirs(scratch + "/up" + top, exist_ok=True)
    os.makedirs(scratch + "/work" + top, exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "plain-user", "-o",
                    f"lowerdir={top},upperdir={scratch}/up{top},workdir={scratch}/work{top}", top],
                   check=True)
# Kept from the caller: how this site reaches the package index (pip's settings,
# certificates, proxies), nothing else.
network = [f"{k}={v}" for k, v in os.environ.items()
           if k.startswith("PIP_") or k in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
           or k.lower() in ("http_proxy", "https_proxy", "no_proxy")]
pw = pwd.getpwnam(user)
os.execvp("setpriv", ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                      "env", "-i", f"HOME={home}", f"USER={user}", f"LOGNAME={user}", "LANG=C.UTF-8",
                      "PATH=/usr/local/bin:/usr/bin:/bin", *network,
                      "bash", "-c", f'cd "$HOME" && {cmd}'])
PY
