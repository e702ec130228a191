#!/bin/bash
# make deb-test: installs the package built by `make deb` on this machine,
# enables the module, serves a session from the system's own module set on
# a private port (its own PidFile, ErrorLog and DefaultRuntimeDir; the
# system's apache2 service is never started), then purges the package and
# checks that nothing of it is left. The system Apache's configuration is
# left as it was found.
set -euo pipefail
deb=$(realpath "$1")
pkg=libapache2-mod-rsession
[ "$(id -u)" -eq 0 ] || { echo "deb-test: run as root"; exit 1; }
if dpkg-query -W -f='${Status}' $pkg 2>/dev/null | grep -q "ok installed"; then
    echo "deb-test: $pkg is already installed here; not touching it"; exit 1
fi
work=$(mktemp -d /tmp/rsession-deb-test.XXXXXX)
chmod 755 "$work"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if dpkg-query -W -f='${Status}' $pkg 2>/dev/null | grep -q installed; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $pkg >/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "deb-test: FAIL: $*"; [ -f "$work/error.log" ] && tail -20 "$work/error.log"; exit 1; }

# Service starts refused while installing, as tools/apt-install.sh does.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
    trap 'rm -f "$policy"; cleanup' EXIT
fi

enabled_before=$(ls -l /etc/apache2/mods-enabled)
echo "== install $deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log"; fail "apt-get install"; }
dpkg -L $pkg >"$work/files"
[ ! -e /etc/apache2/mods-enabled/rsession.load ] || fail "installing enabled the module"
a2enmod -q rsession
[ -L /etc/apache2/mods-enabled/rsession.load ] || fail "a2enmod rsession"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/run" "$work/htdocs"
cat >"$work/httpd.conf" <<CONF
ServerRoot /etc/apache2
ServerName localhost
Listen 127.0.0.1:$port
User www-data
Group www-data
PidFile $work/httpd.pid
ErrorLog $work/error.log
DefaultRuntimeDir $work/run
LogLevel warn rsession:debug
DocumentRoot $work/htdocs
Include /etc/apache2/mods-enabled/*.load
Include /etc/apache2/mods-enabled/*.conf
<Location /session>
    RSession On
    RSessionCreate Always
    SetHandler rsession-status
</Location>
CONF
echo "== apache2 on 127.0.0.1:$port"
apache2 -t -f "$work/httpd.conf" || fail "apache2 -t"
apache2 -f "$work/httpd.conf" -k start
for _ in $(seq 100); do [ -s "$work/httpd.pid" ] && break; sleep 0.1; done
pid=$(cat "$work/httpd.pid") || fail "apache2 did not start"
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

headers=$(curl -s -D - -o "$work/body" "http://127.0.0.1:$port/session")
echo "$headers" | grep -qi '^Set-Cookie: sid=' || fail "no session cookie: $headers"
grep -q '^store: file:/var/lib/apache2/rsession' "$work/body" || fail "store: $(cat "$work/body")"
[ -n "$(find /var/lib/apache2/rsession -type f -name '????????????????????????????????')" ] \
    || fail "no record in /var/lib/apache2/rsession"
if [ -e /etc/apache2/mods-enabled/status.load ]; then
    curl -s "http://127.0.0.1:$port/server-status?auto" | grep -q '^rsession_created: 1' \
        || fail "no rsession_ lines in /server-status?auto"
fi
echo "   session served, record stored"

kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null || fail "apache2 did not stop"
pid=""

echo "== purge"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $pkg >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log"; fail "apt-get purge"; }
left=""
while read -r f; do
    { [ -f "$f" ] || [ -L "$f" ]; } && left="$left $f"
done <"$work/files"
for f in /etc/apache2/mods-enabled/rsession.load /etc/apache2/mods-enabled/rsession.conf \
         /var/lib/apache2/rsession /var/lib/apache2/rsession-scratch \
         /var/lib/apache2/module/enabled_by_admin/rsession /var/lib/apache2/module/enabled_by_maint/rsession \
         /usr/share/doc/$pkg; do
    [ -e "$f" ] || [ -L "$f" ] && left="$left $f"
done
[ -z "$left" ] || fail "left behind:$left"
[ "$(ls -l /etc/apache2/mods-enabled)" = "$enabled_before" ] || fail "mods-enabled differs from before"
echo "deb-test: OK (installed, enabled, served a session, purged without a trace)"
