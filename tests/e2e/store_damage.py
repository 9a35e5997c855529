"""Damage to a served store, made the way an unlucky disk or operator makes
it, for the e2e tests of lmapd's store-fault handling: bytes overwritten in
place (with the file's size and modification time kept, so that only a read
can notice), and a leaf node of LMDB's "maps" tree pointed at a page past
the end of the file (LMDB then fails the lookup with MDB_PAGE_NOTFOUND and
marks the read transaction failed).

LMDB's on-disk layout, as far as this needs it (lmdb.h / mdb.c, 0.9):
a page starts with a 16-byte header (u64 pgno, u16 pad, u16 flags, u16
lower, u16 upper) followed by u16 node offsets; pages 0 and 1 are meta
pages (the one with the larger txnid is current) holding two MDB_db records
(48 bytes each: u32 pad, u16 flags, u16 depth, 4 x u64 counts, u64 root)
for the free list and the main database; named databases are nodes of the
main database whose data is their MDB_db. A node is u16 lo, u16 hi, u16
flags, u16 key size, the key, then the data; in a branch page lo/hi/flags
hold the child's page number; in a leaf node with F_BIGDATA (1) the data is
the u64 number of its first overflow page."""
import os
import struct

P_BRANCH, P_LEAF, P_META = 0x01, 0x02, 0x08
F_BIGDATA = 0x01
PSIZE = 4096


def _page(data, n):
    return data[n * PSIZE:(n + 1) * PSIZE]


def _nodes(page):
    lower = struct.unpack_from("<H", page, 12)[0]
    return [struct.unpack_from("<H", page, 16 + 2 * i)[0] for i in range((lower - 16) // 2)]


def _meta(data):
    best = None
    for n in (0, 1):
        p = _page(data, n)
        magic, = struct.unpack_from("<I", p, 16)
        assert magic == 0xBEEFC0DE, "not an LMDB file"
        main_root, = struct.unpack_from("<Q", p, 16 + 24 + 48 + 40)
        txnid, = struct.unpack_from("<Q", p, 16 + 24 + 96 + 8)
        if best is None or txnid > best[0]:
            best = (txnid, main_root)
    return best[1]


def _named_root(data, root, name):
    page = _page(data, root)
    for off in _nodes(page):
        ksize, = struct.unpack_from("<H", page, off + 6)
        if page[off + 8:off + 8 + ksize] == name:
            root_pg, = struct.unpack_from("<Q", page, off + 8 + ksize + 40)
            return root_pg
    raise SystemExit("no database %r" % name)


def leaf_overflow_nodes(path):
    """[(file offset of the node's overflow page number, key)] for every
    leaf node of the "maps" database, in key order."""
    data = open(path, "rb").read()
    out = []

    def walk(pg):
        page = _page(data, pg)
        flags, = struct.unpack_from("<H", page, 10)
        for off in _nodes(page):
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, off)
            key = page[off + 8:off + 8 + ksize]
            if flags & P_BRANCH:
                walk(lo | hi << 16 | nflags << 32)
            elif flags & P_LEAF and nflags & F_BIGDATA:
                out.append((pg * PSIZE + off + 8 + ksize, key.decode()))

    walk(_named_root(data, _meta(data), b"maps"))
    return out


def overwrite_in_place(path, offset, data):
    """Writes `data` at `offset` into the file and puts its modification
    time back, so that its size and times say nothing happened."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def point_past_end(path, index=None):
    """Points one chunk's leaf node at a page far past the end of the file;
    returns the chunk's key (its first id)."""
    nodes = leaf_overflow_nodes(path)
    off, key = nodes[len(nodes) // 2 if index is None else index]
    overwrite_in_place(path, off, struct.pack("<Q", 0x7fffffff))
    return key
