#!/usr/bin/python3
"""Page damage in a store never crashes the lmap tool.

A store made by the real `lmap synth` (50,000 tiny 2x2 top-1 maps: a maps
tree of several leaf pages under a branch page, chunks on overflow pages)
is damaged in one place at a time: a leaf node pointer set past its page
(which made `lmap verify` and lmapd die of SIGSEGV inside LMDB before page
checksums), a branch node's child page number, a byte of a chunk on its
overflow pages, a byte of either meta page, a byte of the checksum trailer;
and the store is cut to LMDB's pages alone (what an lmap before page
checksums wrote). `lmap verify`, `info`, `ids` and `get` must each exit 1,
never by a signal, with "lmap <cmd>: <path>: <reason>"; for page damage the
reason names the block, its pages and byte offsets, and `lmap verify` lists
every damaged block. Exits 1 on any failure.
"""

import os
import struct
import sys

sys.dont_write_bytecode = True  # keep the source tree clean under ctest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_common as oc  # noqa: E402

PS = 4096
PPB = 16  # pages per checksummed block (STORE_PAGES_PER_BLOCK)


def pages_of(data):
    """LMDB's page layout (64-bit): returns (pages_end, a branch page, the
    last leaf page of the maps tree, the first overflow page)."""
    assert data[-8:] == b"LMAPEND1"
    end = len(data) - struct.unpack("<Q", data[-16:-8])[0]
    branch = leaf = overflow = None
    i = 2
    while i < end // PS:
        pg = data[i * PS:(i + 1) * PS]
        flags = struct.unpack("<H", pg[10:12])[0]
        if flags & 4:
            overflow = overflow or i
            i += struct.unpack("<I", pg[12:16])[0]
            continue
        if flags & 3:
            node = struct.unpack("<H", pg[16:18])[0]
            nflags = struct.unpack("<H", pg[node + 4:node + 6])[0]
            if flags & 1 and branch is None:
                branch = i
            if flags & 2 and nflags & 1 and pg[node + 8:node + 9] == b"n":
                leaf = i
        i += 1
    return end, branch, leaf, overflow


def main():
    env = oc.Env("test_store_pages")
    ck = oc.Checker("test_store_pages")
    good = env.path("tiny.lmap")
    rc, _, err = env.run(["synth", "-o", good, "--images", "50000", "--grid", "2", "--topk", "1",
                          "--level", "1", "--threads", "1"])
    if not ck.check(rc == 0, "synth: exit %d: %s" % (rc, err)):
        ck.finish(env)
    rc, out, _ = env.run(["ids", good])
    ids = out.decode().split()
    ck.check(rc == 0 and len(ids) == 50000, "ids of the good store: exit %d, %d ids" % (rc, len(ids)))
    rc, out, err = env.run(["verify", good])
    ck.check(rc == 0 and b"OK" in out, "verify of the good store: exit %d %r" % (rc, err))

    data = bytearray(open(good, "rb").read())
    end, branch, leaf, overflow = pages_of(bytes(data))
    print("pages: %d, branch page %d, last leaf %d, first overflow %d" % (end // PS, branch, leaf,
                                                                           overflow))

    def commands(p):
        return [["verify", p], ["info", p], ["ids", p],
                ["get", p, ids[-1], "--box", "0,0,1,1"], ["get", p, ids[0], "--box", "0,0,1,1"]]

    def damaged(label, edits, reasons):
        x = bytearray(data)
        for off, val in edits:
            x[off] = val
        p = env.path(label.replace(" ", "_") + ".lmap")
        with open(p, "wb") as f:
            f.write(x)
        for args in commands(p):
            rc, out, err = env.run(args)
            what = "%s: lmap %s" % (label, args[0])
            ok = ck.check(rc == 1, "%s: exit %d (want 1, never a signal); stderr %r" % (what, rc, err[-300:]))
            line = "lmap %s: %s: " % (args[0], p)
            ok = ck.check(line in err, "%s: stderr %r lacks %r" % (what, err[-300:], line)) and ok
            for r in reasons:
                ok = ck.check(r in err, "%s: stderr %r lacks %r" % (what, err[-300:], r)) and ok
            if ok and args[0] == "verify":
                print("ok   %-36s %s" % (label, err.strip().splitlines()[-1][:160]))

    def block_reasons(page):
        b = page // PPB
        return ["page damage: block %d of " % b, "(pages %d.." % (b * PPB),
                "bytes %d.." % (b * PPB * PS), "fails its checksum"]

    ptr = leaf * PS + 16
    damaged("leaf node pointer past its page", [(ptr, 0xF0), (ptr + 1, 0xFF)], block_reasons(leaf))
    node = branch * PS + struct.unpack("<H", data[branch * PS + 18:branch * PS + 20])[0]
    damaged("branch child page number", [(node + 1, data[node + 1] ^ 0x7F)], block_reasons(branch))
    o = overflow * PS + 100
    damaged("overflow page byte", [(o, data[o] ^ 1)], block_reasons(overflow))
    for off in (16, 136, PS + 136):
        damaged("meta page byte %d" % off, [(off, data[off] ^ 4)], block_reasons(off // PS))
    damaged("trailer checksum byte", [(end + 40, data[end + 40] ^ 1)], ["fails its own checksum"])
    damaged("trailer end magic", [(len(data) - 1, data[len(data) - 1] ^ 1)],
            ["not a complete checksum trailer"])

    # Two damaged blocks: verify lists both.
    x = bytearray(data)
    x[ptr] ^= 0x40
    x[branch * PS + 200] ^= 0x40
    p = env.path("two_blocks.lmap")
    with open(p, "wb") as f:
        f.write(x)
    rc, _, err = env.run(["verify", p])
    ck.check(rc == 1 and "(2 damaged blocks in all)" in err and
             ("block %d: pages" % (leaf // PPB)) in err and ("block %d: pages" % (branch // PPB)) in err,
             "two damaged blocks: exit %d, stderr %r" % (rc, err[-600:]))

    # LMDB's pages alone: a store from before page checksums.
    p = env.path("old.lmap")
    with open(p, "wb") as f:
        f.write(data[:end])
    for args in commands(p):
        rc, _, err = env.run(args)
        ck.check(rc == 1 and "has no checksum trailer" in err and p in err,
                 "store without trailer: lmap %s: exit %d, stderr %r" % (args[0], rc, err[-300:]))
    ck.finish(env)


if __name__ == "__main__":
    main()
