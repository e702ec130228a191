#!/bin/bash
# Installs the Debian packages named as arguments that are not installed yet
# (a machine that has them all runs no apt-get at all).
#
# Packages are installed without their recommendations and with a
# policy-rc.d that refuses every service start, so a package that ships a
# daemon (redis-server, php8.2-fpm) installs it but starts none: the tests
# start their own, on private ports and sockets. The policy file is removed
# again afterwards; one that was already there is left alone.
#
# OPTIONAL=1: a failure to install is reported, not fatal.
set -euo pipefail
missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root (or: sudo apt-get install --no-install-recommends ${missing[*]})"
    exit 1
fi
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# mod_rsession tools/apt-install.sh: no service starts while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
status=0
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } || status=$?
if [ "$status" -ne 0 ]; then
    if [ "${OPTIONAL:-0}" = 1 ]; then
        echo "note: could not install ${missing[*]}; the tests that need them say they were skipped"
        exit 0
    fi
    exit "$status"
fi
