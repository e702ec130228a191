#!/bin/bash
# Starts the demo in the foreground: http://127.0.0.1:PORT/ (Ctrl-C stops it).
set -euo pipefail
port=${1:-8080}
here=$(cd "$(dirname "$0")/.." && pwd)
root=${RSESSION_DEMO_ROOT:-/tmp/rsession-demo}
module=${RSESSION_MODULE:-$here/target/release/mod_rsession.so}

mkdir -p "$root"/{logs,run,app,htdocs/private}
# Children run as www-data: the app must be reachable by them.
chmod 755 "$root" "$root/app" "$root/htdocs" "$root/htdocs/private"
install -m 755 "$here/apache/demo/app.py" "$root/app/app.py"
install -m 755 "$here/apache/demo/backend.py" "$root/app/backend.py"
install -m 644 "$here/apache/demo/private/index.html" "$root/htdocs/private/index.html"
# What the proxy tells the backend, so no browser can pass for it.
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
sed -e "s|@ROOT@|$root|g" -e "s|@PORT@|$port|g" -e "s|@MODULE@|$module|g" \
    -e "s|@PROXY_SECRET@|$secret|g" \
    "$here/apache/demo.conf" > "$root/httpd.conf"
apache2 -t -f "$root/httpd.conf"
echo
echo "  mod_rsession demo: http://127.0.0.1:$port/   (Ctrl-C stops it)"
echo "  sign in with any name and the password: demo"
echo "  logs: $root/logs/   sessions: $root/sessions/   scratch: $root/scratch/"
echo
exec apache2 -f "$root/httpd.conf" -DFOREGROUND
