#!/usr/bin/python3
"""End-to-end: the binary body of POST /v1/labels (application/x-lmap-queries,
docs/API.md), written here with Python's struct from the layout in the docs,
not by liblmap:
- it answers byte for byte what the JSON body answers, for JSON and .npy
  answers, G = 1 and 2, flips, relabel boxes, logits, sparse, unknown ids
  (the same 404), a Content-Type with parameters;
- every malformed body is a 400 whose message names the problem (no magic,
  count 0, a count larger than the body, a query cut short, bytes after the
  last query, an empty id, unknown flags, a bad id, NaN and inverted boxes),
  a batch over --max-batch a 413, a bad option in the query string a 400
  naming it; the daemon serves on afterwards.
Loopback only; the daemon is stopped by its PID."""
import json
import math
import os
import struct
import subprocess

from e2e_common import LMAP, TMP, check, post_labels, start_daemon, stop_daemon, summary

BIN = "application/x-lmap-queries"
NPY = "application/x-npy"


def one(id_, box, flip=False, id_len=None, flags=None):
    raw = id_.encode()
    return struct.pack("<BB4d", len(raw) if id_len is None else id_len,
                       (1 if flip else 0) if flags is None else flags, *box) + raw


def binary(queries, count=None):
    return (b"LMQ1" + struct.pack("<I", len(queries) if count is None else count)
            + b"".join(one(*q) for q in queries))


def as_json(queries, options):
    return json.dumps(dict(options, queries=[{"id": i, "box": list(b), "flip": f}
                                             for i, b, f in queries])).encode()


def main():
    os.makedirs(TMP, exist_ok=True)
    store = os.path.join(TMP, "querybin.lmap")
    subprocess.run([LMAP, "synth", "-o", store, "--images", "300", "--level", "1", "--force",
                    "--no-progress"], check=True, capture_output=True)
    ids = subprocess.run([LMAP, "ids", store], capture_output=True, text=True,
                         check=True).stdout.split()
    p, port, _ = start_daemon(store, "--max-batch", "64")
    try:
        queries = [(ids[k * 7], (0.02 * (k % 9), 0.05, 0.93, 0.4 + 0.05 * (k % 10)), k % 3 == 0)
                   for k in range(40)]
        cases = [({}, ""), ({"output_size": 2}, "?output_size=2"),
                 ({"format": "sparse"}, "?format=sparse"),
                 ({"softmax": False, "box_format": "xyxy"}, "?softmax=false&box_format=xyxy"),
                 ({"output_size": 3, "format": "sparse", "softmax": False},
                  "?output_size=3&format=sparse&softmax=false")]
        relabel = [(i, (0.1, 0.2, 0.5, 0.6), f) for i, _, f in queries]
        for opts, query in cases:
            for accept in (None, NPY):
                j = post_labels(port, as_json(queries, opts), "application/json", "", accept)
                b = post_labels(port, binary(queries), BIN, query, accept)
                check(j[0] == 200 and j == b, "binary = JSON for %s, Accept %s (%s / %s)"
                      % (opts, accept, j[:2], b[:2]))
        j = post_labels(port, as_json(relabel, {"box_format": "relabel"}), "application/json", "", NPY)
        b = post_labels(port, binary(relabel), BIN, "?box_format=relabel", NPY)
        check(j[0] == 200 and j == b, "binary = JSON for relabel boxes")
        b = post_labels(port, binary(queries[:3]), BIN + "; charset=binary", "?format=sparse")
        j = post_labels(port, as_json(queries[:3], {"format": "sparse"}), "application/json")
        check(b == j, "a Content-Type with parameters is read as binary queries")
        missing = queries[:2] + [("n99999999_1", (0, 0, 1, 1), False)]
        j = post_labels(port, as_json(missing, {}), "application/json")
        b = post_labels(port, binary(missing), BIN)
        check(j[0] == 404 and j == b, "an unknown id: the same 404 (%s)" % (b[2][:120],))

        good = binary(queries[:2])
        refused = [
            (b"JSON" + good[4:], 400, "does not start with"),
            (binary([], count=0), 400, "count is 0"),
            (binary(queries[:2], count=9), 400, "cannot hold the 9 queries"),
            (good[:-4], 400, "queries[1]: the body ends inside the query"),
            (good + b"\0\0", 400, "2 bytes follow the last of the 2 queries"),
            (b"LMQ1" + struct.pack("<I", 1) + one("abc", (0, 0, 1, 1), id_len=0) + b"x" * 3,
             400, "queries[0]: the id is empty"),
            (binary([("abc", (0, 0, 1, 1), False)])[:8] + one("abc", (0, 0, 1, 1), flags=6),
             400, "unknown flags 0x06"),
            (binary([("a/b", (0, 0, 1, 1), False)]), 400, "queries[0]: id has byte 0x2f"),
            (binary([(ids[0], (0, math.nan, 1, 1), False)]), 400, "queries[0]: box[1] is not"),
            (binary([(ids[0], (0.8, 0, 0.2, 1), False)]), 400, "x0 > x1"),
            (binary([(ids[0], (0, 0, 1, 1), False)] * 65), 413, "65 queries, more than the 64"),
        ]
        for body, status, words in refused:
            s, ctype, text = post_labels(port, body, BIN)
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError):
                message = text[:100]
            check(s == status and ctype == "application/json" and words in message,
                  "refused %d naming '%s' (got %d: %s)" % (status, words, s, message))
        s, _, text = post_labels(port, good, BIN, "?output_size=0")
        check(s == 400 and json.loads(text)["error"].get("field") == "output_size",
              "a bad option in the query string is named (%s)" % text[:120])
        s, _, text = post_labels(port, good, "application/json")
        check(s == 400 and b"invalid JSON" in text, "binary queries sent as JSON: invalid JSON")
        check(post_labels(port, good, BIN)[0] == 200, "the daemon serves on after every refusal")
    finally:
        check(stop_daemon(p) == 0, "lmapd stops cleanly")
    return summary()


if __name__ == "__main__":
    raise SystemExit(main())
