#!/usr/bin/python3
"""End-to-end: GET /v1/maps/{id} with Accept: image/svg+xml answers the
drawing `lmap render` writes for the same map and box, byte for byte
(without a box, xyxy and relabel boxes, G = 1 and 3, flip), as
image/svg+xml that parses as SVG with a <title>; a bad box is a 400 and an
unknown id a 404 with the JSON error envelope; the JSON and .npy forms of
the route are unchanged. Loopback only; the daemon is stopped by its PID."""
import json
import os
import subprocess
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

from e2e_common import LMAP, TMP, check, start_daemon, stop_daemon, summary

SVG = "image/svg+xml"


def get(port, path, accept):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "render.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "50", "--level", "1", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True,
                         check=True).stdout.split()
    out = os.path.join(TMP, "render.svg")
    p, port, _ = start_daemon(store)
    try:
        cases = [("", []),
                 ("?box=0.1,0.2,0.7,0.9", ["--box", "0.1,0.2,0.7,0.9"]),
                 ("?box=0.05,0.3,0.6,0.5&box_format=relabel&output_size=3",
                  ["--box", "0.05,0.3,0.6,0.5", "--box-format", "relabel", "-G", "3"]),
                 ("?box=0,0,1,1&output_size=2&flip=true",
                  ["--box", "0,0,1,1", "-G", "2", "--flip"])]
        for id_ in (ids[0], ids[-1]):
            for query, args in cases:
                status, ctype, body = get(port, "/v1/maps/%s%s" % (id_, query), SVG)
                subprocess.run([LMAP, "render", store, id_, "-o", out, *args], check=True)
                check(status == 200 and ctype == SVG and body == open(out, "rb").read(),
                      "%s%s: lmapd's SVG is lmap render's (%s %s)" % (id_, query, status, ctype))
                root = ET.fromstring(body)
                check(root.tag.endswith("svg") and id_ in root[0].text,
                      "%s%s: an SVG with a <title> naming the id" % (id_, query))
        status, ctype, body = get(port, "/v1/maps/%s?box=0.9,0,0.1,1" % ids[0], SVG)
        check(status == 400 and json.loads(body)["error"]["code"] == "bad_box",
              "a bad box: 400 bad_box (%s)" % body[:100])
        status, ctype, body = get(port, "/v1/maps/%s?output_size=0" % ids[0], SVG)
        check(status == 400 and json.loads(body)["error"]["field"] == "output_size",
              "a bad output_size: 400 naming it")
        status, ctype, body = get(port, "/v1/maps/n99999999_1", SVG)
        check(status == 404 and json.loads(body)["error"]["code"] == "not_found",
              "an unknown id: 404")
        status, ctype, body = get(port, "/v1/maps/%s" % ids[0], "application/json")
        check(status == 200 and ctype.startswith("application/json") and
              json.loads(body)["id"] == ids[0], "the JSON form is unchanged")
        status, ctype, body = get(port, "/v1/maps/%s" % ids[0], "application/x-npy")
        check(status == 200 and body[:6] == b"\x93NUMPY", "the .npy form is unchanged")
    finally:
        check(stop_daemon(p) == 0, "lmapd stops cleanly")
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
