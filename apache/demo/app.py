#!/usr/bin/python3
"""The mod_rsession demo: a CGI application with no session code of its own.

It reads the session from the environment mod_rsession provides
(RSESSION_ID, RSESSION_DIR, RSESSION_NEW, RSESSION_DATA) and changes it only
through the X-RSession response header. Uploaded files go to the session's
private scratch directory, which mod_rsession removes with the session.
"""
import email.parser
import email.policy
import html
import os
import sys
import urllib.parse

SESSION_ID = os.environ.get("RSESSION_ID", "")
SCRATCH = os.environ.get("RSESSION_DIR", "")
IS_NEW = os.environ.get("RSESSION_NEW") == "1"
DATA = dict(urllib.parse.parse_qsl(os.environ.get("RSESSION_DATA", ""), keep_blank_values=True))
PATH = os.environ.get("PATH_INFO", "/") or "/"
METHOD = os.environ.get("REQUEST_METHOD", "GET")
MAX_UPLOAD = 1024 * 1024
QUERY = dict(urllib.parse.parse_qsl(os.environ.get("QUERY_STRING", ""), keep_blank_values=True))
# The demo's one password; a real sign-in page asks a user database.
DEMO_PASSWORD = "demo"


def respond(body, status="200 OK", updates=(), location=None):
    out = sys.stdout.buffer
    out.write(("Status: %s\r\n" % status).encode())
    out.write(b"Content-Type: text/html; charset=utf-8\r\n")
    for command in updates:
        out.write(("X-RSession: %s\r\n" % command).encode())
    if location:
        out.write(("Location: %s\r\n" % location).encode())
    out.write(b"\r\n")
    out.write(body.encode())


def redirect(updates=(), to="/"):
    respond("", "303 See Other", updates, location=to)


def local_target(value):
    """Where to go back after signing in: a local path only (mod_rsession
    puts nothing else in `return`; this checks again, as one should)."""
    if value.startswith("/") and not value.startswith(("//", "/\\")) and not any(
            c in value for c in "\\\r\n"):
        return value
    return "/"


def enc(value):
    return urllib.parse.quote(value, safe="")


def read_form():
    length = int(os.environ.get("CONTENT_LENGTH") or 0)
    if length > MAX_UPLOAD + 4096:
        return None
    body = sys.stdin.buffer.read(length)
    ctype = os.environ.get("CONTENT_TYPE", "")
    if ctype.startswith("multipart/form-data"):
        head = ("Content-Type: %s\r\nMIME-Version: 1.0\r\n\r\n" % ctype).encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        form = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            form[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        return form
    return {k: (None, v.encode()) for k, v in urllib.parse.parse_qsl(body.decode("utf-8", "replace"))}


def safe_name(name):
    base = os.path.basename(name or "upload.txt").strip().replace("\x00", "")
    cleaned = "".join(c for c in base if c.isalnum() or c in "._- ")[:80].strip(" .")
    return cleaned or "upload.txt"


def analyse(text):
    lines = text.splitlines()
    words = text.split()
    longest = max(words, key=len) if words else ""
    return "lines: %d\nwords: %d\ncharacters: %d\nlongest word: %s\n" % (len(lines), len(words), len(text), longest)


def handle_post():
    form = read_form()
    if form is None:
        return respond(page("That file is larger than 1 MiB."), "413 Payload Too Large")
    action = PATH.strip("/")
    if action == "login":
        user = form.get("user", (None, b""))[1].decode("utf-8", "replace").strip()[:40]
        password = form.get("password", (None, b""))[1].decode("utf-8", "replace")
        back = local_target(form.get("return", (None, b"/"))[1].decode("utf-8", "replace"))
        if not user or password != DEMO_PASSWORD:
            return respond(page("Wrong name or password (the demo password is \"demo\").", back),
                           "401 Unauthorized")
        # A new id at sign-in defeats session fixation; data and files move along.
        return redirect(["set user=" + enc(user), "regenerate"], to=back)
    if action == "logout":
        return redirect(["invalidate"])
    if action == "logout-all":
        # Every session of this user ends, in every browser and on every
        # server sharing the store.
        return redirect(["invalidate-user"])
    if action == "upload":
        filename, content = form.get("file", (None, b""))
        if not content:
            return redirect()
        name = safe_name(filename)
        text = content.decode("utf-8", "replace")
        with open(os.path.join(SCRATCH, name), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(SCRATCH, name + ".stats"), "w", encoding="utf-8") as f:
            f.write(analyse(text))
        uploads = int(DATA.get("uploads", "0")) + 1
        return redirect(["set uploads=%d&last_upload=%s" % (uploads, enc(name))])
    return redirect()


STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #f4f1ea; color: #222; }
header { background: #3b2f5c; color: #fff; padding: 1.2rem 2rem; }
header h1 { margin: 0; font-size: 1.4rem; } header p { margin: .2rem 0 0; opacity: .8; }
main { max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; display: grid; gap: 1rem;
       grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); }
section { background: #fff; border-radius: 10px; padding: 1rem 1.3rem; box-shadow: 0 1px 3px #0002; }
h2 { font-size: 1.05rem; margin-top: 0; color: #3b2f5c; }
code, pre { font-family: ui-monospace, monospace; font-size: .85rem; background: #f0edf6; border-radius: 4px; padding: .1rem .3rem; word-break: break-all; }
pre { padding: .6rem; white-space: pre-wrap; }
.big { font-size: 2.2rem; font-weight: 700; color: #3b2f5c; }
.tag { display: inline-block; background: #e3f4e6; color: #1d6b2c; border-radius: 999px; padding: 0 .6rem; font-size: .8rem; }
.tag.new { background: #fff1d6; color: #8a5a00; }
button { background: #3b2f5c; color: #fff; border: 0; border-radius: 6px; padding: .45rem .9rem; cursor: pointer; }
input[type=text] { padding: .4rem; border: 1px solid #bbb; border-radius: 6px; }
ul { padding-left: 1.1rem; } footer { text-align: center; color: #777; font-size: .85rem; margin: 2rem; }
"""


def files_section():
    try:
        names = sorted(os.listdir(SCRATCH)) if SCRATCH else []
    except OSError:
        names = []
    uploads = [n for n in names if not n.endswith(".stats")]
    items = []
    for name in uploads:
        size = os.path.getsize(os.path.join(SCRATCH, name))
        stats = ""
        stats_path = os.path.join(SCRATCH, name + ".stats")
        if os.path.exists(stats_path):
            with open(stats_path, encoding="utf-8") as f:
                stats = "<pre class='stats'>%s</pre>" % html.escape(f.read())
        items.append("<li><code>%s</code> (%d bytes)%s</li>" % (html.escape(name), size, stats))
    listing = "<ul id='files'>%s</ul>" % "".join(items) if items else "<p id='files'>No files yet.</p>"
    return """<section><h2>Your scratch directory</h2>
<p><code id="scratch">%s</code></p>%s
<form method="post" action="/upload" enctype="multipart/form-data">
<input type="file" name="file" accept=".txt,text/plain" required> <button>Upload &amp; analyse</button></form>
<p><small>Private to this session (mode 0700) and removed with it.</small></p></section>""" % (html.escape(SCRATCH), listing)


def page(notice="", back="/", counted=False):
    """The page; `counted`: this request counts as a view, and the data
    card shows the session as this request leaves it."""
    shown = dict(DATA)
    visits = int(DATA.get("visits", "0")) + (1 if counted else 0)
    if counted:
        shown["visits"] = str(visits)
    user = DATA.get("user")
    who = ("<p>Signed in as <strong id='user'>%s</strong></p>"
           "<p><a id='private' href='/private/'>Members only</a> (static files) &middot; "
           "<a href='/private/app/'>a proxied app</a>: Apache itself checks the session there.</p>"
           "<form method='post' action='/logout'><button id='logout'>Log out</button></form>"
           "<form method='post' action='/logout-all'><button id='logout-all'>Log out everywhere</button></form>"
           % html.escape(user)
           if user else
           "<p id='user-none'>Not signed in.</p><form method='post' action='/login'>"
           "<input type='hidden' name='return' value='%s'>"
           "<input type='text' name='user' placeholder='your name' required> "
           "<input type='password' name='password' placeholder='password (demo)' required> "
           "<button id='login'>Sign in</button></form>"
           "<p><small>Signing in gives you a new session id (same data, same files). "
           "<a href='/private/'>Members only</a> needs it.</small></p>" % html.escape(back, quote=True))
    tag = "<span class='tag new'>new session</span>" if IS_NEW else "<span class='tag'>resumed</span>"
    data_rows = "".join("<li><code>%s</code> = <code>%s</code></li>" % (html.escape(k), html.escape(v))
                        for k, v in sorted(shown.items())) or "<li>(empty)</li>"
    return """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>mod_rsession demo</title>
<style>%s</style></head><body>
<header><h1>mod_rsession demo</h1><p>Server-side sessions for Apache httpd, served to a plain CGI script.</p></header>
<main>
%s
<section><h2>Your session %s</h2><p>Id <code id="sid">%s</code></p>
<p>This page has been viewed</p><p class="big" id="visits">%d</p><p>times in this session.</p></section>
<section><h2>Account</h2>%s</section>
%s
<section><h2>Session data</h2><ul id="data">%s</ul>
<p><small>Kept server-side; the cookie holds only a signed id.</small></p></section>
</main>
<footer>mod_rsession &middot; <a href="/rsession-status">server status</a></footer>
</body></html>""" % (STYLE, "<section><p>%s</p></section>" % html.escape(notice) if notice else "",
                     tag, html.escape(SESSION_ID), visits, who, files_section(), data_rows)


def main():
    if not SESSION_ID:
        return respond("<p>mod_rsession is not active here (RSession Off?).</p>", "500 Internal Server Error")
    if METHOD == "POST":
        return handle_post()
    if PATH.strip("/") == "login":
        # Where AuthType RSession sends visitors without a user.
        back = local_target(QUERY.get("return", "/"))
        return respond(page("Please sign in to see %s." % back, back))
    if PATH == "/favicon.ico":
        # Browsers ask for it on their own: not a page view.
        return respond("", "404 Not Found")
    visits = int(DATA.get("visits", "0")) + 1
    respond(page(counted=True), updates=["set visits=%d" % visits])


main()
