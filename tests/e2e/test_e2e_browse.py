#!/usr/bin/python3
"""End-to-end: what the store browser stands on.

- GET /v1/ids pages through the store's ids exactly as `lmap ids` lists
  them (every page size from 1 to past the end, chained by `next`), and
  for prefixes and `after` values (ids of the store and between them,
  across chunk boundaries) gives what a bytewise sort and filter in Python
  gives; bad arguments are 400s naming the argument; behind the token.
- GET / and /ui/... serve the page and its files (content types, a
  content security policy, nosniff, no-cache) without the token, HEAD too;
  an unknown /ui/ file is a 404; with --no-ui (and LMAPD_UI=0) the page is
  a 404 naming the flag while the API still answers.
- The page asks only for its own files: every src/href in it is local.
Loopback only; every daemon is stopped by its PID."""
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary


def request(port, path, token=None, method="GET"):
    headers = {"Authorization": "Bearer " + token} if token else {}
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def ids_page(port, token, **args):
    status, _, body = request(port, "/v1/ids?" + urllib.parse.urlencode(args), token)
    return status, json.loads(body)


def expected(ids, prefix="", after=None, limit=100):
    """The page by definition: bytewise order, after `after`, starting with
    `prefix`; `next` is the last id given when more follow."""
    match = [i for i in ids if i.startswith(prefix.encode()) and (after is None or i > after.encode())]
    page = [i.decode() for i in match[:limit]]
    return {"ids": page, "next": page[-1] if len(match) > limit else None}


def check_ids(port, token, ids):
    # Every page size, chained by `next`, lists the whole store in order.
    for limit in (1, 7, 100, 333, 1000):
        got, after, pages = [], None, 0
        while True:
            args = {"limit": limit, **({"after": after} if after else {})}
            status, page = ids_page(port, token, **args)
            if status != 200:
                break
            got += page["ids"]
            pages += 1
            after = page["next"]
            if after is None or pages > len(ids):
                break
        check(got == [i.decode() for i in ids],
              "limit %d: %d pages chained by next list lmap ids' %d ids (%d)"
              % (limit, pages, len(ids), len(got)))
    status, page = ids_page(port, token)
    check(status == 200 and page == expected(ids), "no arguments: the first 100")

    # Prefixes and `after` values: of the store's ids, between them, below
    # and above all of them.
    sample = ids[:: max(1, len(ids) // 40)] + [ids[-1]]
    prefixes = {""}
    for i in sample:
        s = i.decode()
        for n in (1, 3, 5, 9, 10, len(s) - 1, len(s)):
            prefixes.add(s[:n])
    prefixes |= {"zz", "0", "n0", "n99"}
    afters = [None, "0", "zzzz"]
    for i in sample:
        s = i.decode()
        afters += [s, s[:-1], s + "0", s[:9]]
    bad = []
    for prefix in sorted(prefixes):
        for limit in (3, 50):
            status, page = ids_page(port, token, prefix=prefix, limit=limit)
            if status != 200 or page != expected(ids, prefix, None, limit):
                bad.append((prefix, None, limit))
    for after in afters:
        for prefix in ("", after[:5] if after else "n"):
            status, page = ids_page(port, token, prefix=prefix, limit=20, **({"after": after} if after else {}))
            if status != 200 or page != expected(ids, prefix, after, 20):
                bad.append((prefix, after, 20))
    check(not bad, "%d prefixes and %d after values give the pages a sort and filter give (%s)"
          % (len(prefixes), len(afters), bad[:3]))

    for args, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "x"}, "limit"),
                        ({"prefix": "a/b"}, "prefix"), ({"after": ""}, "after"),
                        ({"after": "x" * 256}, "after"), ({"prefix": "\u00e9"}, "prefix")):
        status, page = ids_page(port, token, **args)
        check(status == 400 and page["error"]["field"] == field and field in page["error"]["message"],
              "%r: 400 naming %s (%s %s)" % (args, field, status, page))


def check_ui(port, token):
    status, headers, page = request(port, "/")
    check(status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
          and b"<title>lmap store browser</title>" in page,
          "GET / without the token: the page (%s %s)" % (status, headers["Content-Type"]))
    policy = headers.get("Content-Security-Policy", "")
    check("default-src 'none'" in policy and "script-src 'self'" in policy
          and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy,
          "a content security policy: own files only, no framing (%s)" % policy)
    check(headers.get("X-Content-Type-Options") == "nosniff" and headers.get("Cache-Control") == "no-cache",
          "nosniff and no-cache")
    refs = re.findall(rb'(?:src|href)="([^"]*)"', page)
    check(refs and all(r.startswith(b"/ui/") for r in refs), "the page loads only its own files: %s" % refs)
    for path, ctype in (("/ui/app.js", "text/javascript; charset=utf-8"),
                        ("/ui/app.css", "text/css; charset=utf-8"), ("/ui/icon.svg", "image/svg+xml")):
        status, headers, body = request(port, path)
        check(status == 200 and headers["Content-Type"] == ctype and body
              and body == open(os.path.join(UI_DIR, os.path.basename(path)), "rb").read(),
              "%s: the file from server/daemon/ui, as %s" % (path, ctype))
    status, headers, body = request(port, "/", method="HEAD")
    check(status == 200 and int(headers["Content-Length"]) == len(page) and body == b"", "HEAD /")
    status, _, body = request(port, "/ui/nothing.js")
    check(status == 404 and json.loads(body)["error"]["code"] == "not_found", "an unknown /ui/ file: 404")
    status, _, body = request(port, "/", method="POST")
    check(status == 405, "POST /: 405")
    status, _, _ = request(port, "/v1/ids")
    check(status == 401, "GET /v1/ids without the token: 401")


UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server", "daemon", "ui")


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "browse.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "3000", "--level", "1", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, check=True).stdout.split()
    check(ids == sorted(ids), "lmap ids lists %d ids in bytewise order" % len(ids))
    token = "browse-token"
    tf = os.path.join(TMP, "browse-token")
    open(tf, "w").write(token + "\n")

    p, port, _ = start_daemon(store, "--token-file", tf)
    try:
        check_ids(port, token, ids)
        check_ui(port, token)
    finally:
        check(stop_daemon(p) == 0, "exit 0")

    # --resident: the same pages (the ids come from the store's directory).
    p, port, _ = start_daemon(store, "--resident")
    try:
        status, page = ids_page(port, None, limit=1000, after=ids[10].decode())
        check(status == 200 and page == expected(ids, "", ids[10].decode(), 1000), "--resident: the same pages")
    finally:
        check(stop_daemon(p) == 0, "exit 0 (resident)")

    for how, extra, env in (("--no-ui", ["--no-ui"], None), ("LMAPD_UI=0", [], {"LMAPD_UI": "0"})):
        p, port, _ = start_daemon(store, *extra, env=env)
        try:
            status, _, body = request(port, "/")
            err = json.loads(body)["error"]
            check(status == 404 and "--no-ui" in err["message"], "%s: / is a 404 naming the flag (%s)" % (how, err))
            status, _, _ = request(port, "/ui/app.js")
            check(status == 404, "%s: /ui/app.js is a 404" % how)
            status, _ = ids_page(port, None)
            check(status == 200, "%s: the API still answers" % how)
        finally:
            check(stop_daemon(p) == 0, "exit 0 (%s)" % how)
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
