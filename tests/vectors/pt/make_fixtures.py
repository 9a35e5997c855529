#!/usr/bin/python3
"""Writes the .pt fixtures that tests/unit/test_ptfile.c reads.

Run with Debian's interpreter (torch 1.13): /usr/bin/python3 make_fixtures.py
Every file is written next to this script. The output is deterministic: the
values come from a seeded generator, torch's zip writer stores no
timestamps, and the one nondeterministic thing torch writes (the legacy
format's storage key, which is a memory address) is replaced by a fixed key.

Good fixtures are real torch.save() output in both serialization formats,
dtypes float32/float16/bfloat16/float64, with contiguous, permuted,
storage-offset and stride-0 layouts. Each `<name>.pt` has `<name>.f32`: the
tensor's values as raw little-endian float32 in [2, K, H, W] order, which is
what the parser must produce (every supported dtype converts to float32
exactly, float64 fixtures hold float32-representable values).

Hostile fixtures (prefix `bad_`) are either real torch.save() output of a
tensor the parser must refuse (wrong shape, NaN score, int64 dtype, ...) or
hand-made files (truncations, a pickle calling os.system, ...). The unit test
holds the expected error code and message fragment for each.

Every good fixture is checked here against torch.load, and every hostile one
that torch itself would load is checked to really contain the defect.
"""
import io
import os
import pickle
import struct
import sys
import tempfile
import warnings
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY_KEY = "140000000000000"  # fixed stand-in for torch's address key
written = []


def out_path(name):
    return os.path.join(HERE, name)


def write_bytes(name, data):
    with open(out_path(name), "wb") as f:
        f.write(data)
    written.append(name)


def fix_legacy_key(data):
    """Replaces the legacy format's storage key (str(storage._cdata), an
    address) by LEGACY_KEY. It appears as a BINUNICODE in the object pickle
    and in the key-list pickle; nothing else in the format holds offsets, so
    a length change is harmless."""
    keys = set()
    i = 0
    # The key-list pickle is `\x80\x02]q\x00X<len><key>q\x01a.`; find it
    # through the object pickle's persistent id: 'storage', type, key.
    marker = b"X\x07\x00\x00\x00storage"
    while True:
        i = data.find(marker, i)
        if i < 0:
            break
        j = data.find(b"X", i + len(marker))
        n = struct.unpack_from("<I", data, j + 1)[0]
        keys.add(data[j + 5:j + 5 + n])
        i = j
    assert len(keys) == 1, keys
    key = keys.pop()
    old = b"X" + struct.pack("<I", len(key)) + key
    new = b"X" + struct.pack("<I", len(LEGACY_KEY)) + LEGACY_KEY.encode()
    assert data.count(old) == 2, data.count(old)
    return data.replace(old, new)


def torch_bytes(obj, legacy, stem="fixture"):
    """torch.save(obj) to a real file named <stem>.pt (the zip archive's
    folder is the file's stem) and returns the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, stem + ".pt")
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        with open(path, "rb") as f:
            data = f.read()
    if legacy:
        data = fix_legacy_key(data)
    return data


def load_bytes(data):
    return torch.load(io.BytesIO(data))


def values(k, h, w, seed):
    """A [2, K, H, W] float32 map: scores are logits (a few NaN-free reals
    of both signs, some exactly zero), classes distinct per cell in 0..999."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(k, h, w, generator=g) * 4.0
    scores[0, 0, 0] = 0.0
    scores = torch.sort(scores, dim=0, descending=True).values
    classes = torch.stack([torch.randperm(1000, generator=g)[:k]
                           for _ in range(h * w)], dim=1).reshape(k, h, w)
    return torch.stack([scores, classes.float()])


def layout(x, kind):
    """Returns a tensor equal to x (shape [2,K,H,W]) with the given memory
    layout, sharing nothing with x."""
    _, k, h, w = x.shape
    if kind == "contig":
        return x.clone().contiguous()
    if kind == "transpose":   # H and W swapped in memory
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if kind == "planelast":   # [K,H,W,2] in memory, plane innermost
        return x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    if kind == "cellmajor":   # [H,W,K,2] in memory (lmap's own order)
        return x.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    if kind == "slice":       # window of a bigger tensor: offset and gaps
        big = torch.full((3, k + 1, h + 1, w + 2), 7.0, dtype=x.dtype)
        big[1:, 1:, :h, 2:] = x
        return big[1:, 1:, :h, 2:]
    if kind == "offset":      # contiguous view at a storage offset
        flat = torch.full((x.numel() + 13,), -3.0, dtype=x.dtype)
        flat[13:] = x.reshape(-1)
        return flat[13:].view(2, k, h, w)
    if kind == "stride0":     # the same K entries broadcast over columns
        col = x[:, :, :, :1].clone()
        return col.expand(2, k, h, w)
    raise ValueError(kind)


DTYPES = {"f32": torch.float32, "f16": torch.float16,
          "bf16": torch.bfloat16, "f64": torch.float64}

# (format, dtype, layout, K, H, W): every format x dtype x layout kind at
# least once, the three shapes spread over them.
GOOD = [
    ("zip", "f32", "contig", 5, 15, 15),
    ("zip", "f32", "transpose", 5, 18, 18),
    ("zip", "f32", "slice", 3, 7, 11),
    ("zip", "f32", "stride0", 3, 7, 11),
    ("zip", "f16", "contig", 5, 18, 18),
    ("zip", "f16", "planelast", 3, 7, 11),
    ("zip", "f16", "offset", 5, 15, 15),
    ("zip", "bf16", "contig", 3, 7, 11),
    ("zip", "bf16", "cellmajor", 5, 15, 15),
    ("zip", "bf16", "slice", 3, 7, 11),
    ("zip", "f64", "transpose", 3, 7, 11),
    ("legacy", "f32", "contig", 3, 7, 11),
    ("legacy", "f32", "planelast", 5, 15, 15),
    ("legacy", "f32", "offset", 3, 7, 11),
    ("legacy", "f16", "contig", 5, 15, 15),
    ("legacy", "f16", "transpose", 5, 18, 18),
    ("legacy", "f16", "slice", 3, 7, 11),
    ("legacy", "bf16", "contig", 3, 7, 11),
    ("legacy", "bf16", "cellmajor", 3, 7, 11),
    ("legacy", "bf16", "offset", 3, 7, 11),
    ("legacy", "f64", "contig", 3, 7, 11),
]


def good_fixtures():
    for i, (fmt, dt, kind, k, h, w) in enumerate(GOOD):
        x = values(k, h, w, seed=100 + i).to(DTYPES[dt])
        t = layout(x, kind)
        assert t.shape == (2, k, h, w)
        assert t.is_contiguous() == (kind in ("contig", "offset"))
        name = f"{fmt}_{dt}_{kind}_{k}x{h}x{w}"
        data = torch_bytes(t, fmt == "legacy", stem=name)
        back = load_bytes(data)
        assert back.dtype == DTYPES[dt] and back.stride() == t.stride()
        assert torch.equal(back, t)
        expect = t.float().contiguous().numpy().astype("<f4")
        assert np.array_equal(expect, t.double().numpy())  # exact in f32
        write_bytes(name + ".pt", data)
        write_bytes(name + ".f32", expect.tobytes())

    # The zip folder is the file's stem: torch.save to a buffer gives
    # "archive", a non-ASCII file name gives a UTF-8 folder name.
    x = values(3, 7, 11, seed=7)
    buf = io.BytesIO()
    torch.save(x, buf)
    assert zipfile.ZipFile(io.BytesIO(buf.getvalue())).namelist()[0] == \
        "archive/data.pkl"
    write_bytes("zip_f32_buffer_3x7x11.pt", buf.getvalue())
    write_bytes("zip_f32_buffer_3x7x11.f32", x.numpy().astype("<f4").tobytes())
    # The same entries deflated (torch writes them stored; libarchive and
    # torch.load read both).
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in src.infolist():
            info = zipfile.ZipInfo(i.filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, src.read(i))
    assert torch.equal(load_bytes(out.getvalue()), x)
    write_bytes("zip_f32_deflated_3x7x11.pt", out.getvalue())
    write_bytes("zip_f32_deflated_3x7x11.f32",
                x.numpy().astype("<f4").tobytes())
    data = torch_bytes(x, False, stem="\u00f1\u00e9t\u00e1")
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()[0] == \
        "\u00f1\u00e9t\u00e1/data.pkl"
    write_bytes("zip_f32_utf8name_3x7x11.pt", data)
    write_bytes("zip_f32_utf8name_3x7x11.f32",
                x.numpy().astype("<f4").tobytes())


def torch_like_pickle(storage_type, key, numel, offset, size, stride,
                      legacy=False):
    """The protocol-2 pickle torch writes for one tensor, built by hand so a
    hostile fixture can hold values torch would never write."""
    def binint(v):
        if 0 <= v < 256:
            return b"K" + bytes([v])
        if 0 <= v < 65536:
            return b"M" + struct.pack("<H", v)
        return b"J" + struct.pack("<i", v)

    def uni(s):
        s = s.encode()
        return b"X" + struct.pack("<I", len(s)) + s

    def tup(vals):
        return b"(" + b"".join(binint(v) for v in vals) + b"t"

    pid = (b"(" + uni("storage") + b"ctorch\n" + storage_type.encode() +
           b"\n" + uni(key) + uni("cpu") + binint(numel) +
           (b"N" if legacy else b"") + b"t")
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00((" + pid[1:] +
            b"Q" + binint(offset) + tup(size) + tup(stride) +
            b"\x89ccollections\nOrderedDict\n)Rtq\x01Rq\x02.")


def stored_zip(entries):
    """A stored (uncompressed) zip like torch's, written by Python's zipfile
    with a fixed timestamp so the bytes are deterministic."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, data)
    return buf.getvalue()


def bad_fixtures():
    x = values(3, 7, 11, seed=1)

    def save_bad(name, t, legacy=False, loads=True):
        data = torch_bytes(t, legacy, stem=name)
        if loads:
            assert torch.equal(load_bytes(data), t) or \
                torch.isnan(t).any()
        write_bytes(name + ".pt", data)
        return data

    # Truncations of real files, cut inside the storage data.
    data = torch_bytes(x, False, stem="bad_trunc_zip")
    write_bytes("bad_trunc_zip.pt", data[:len(data) // 2])
    data = torch_bytes(x.half(), True, stem="bad_trunc_legacy")
    write_bytes("bad_trunc_legacy.pt", data[:len(data) - 100])

    # Shapes.
    save_bad("bad_shape_3d", x[0].clone())                   # [3,7,11]
    save_bad("bad_shape_2x5x15", values(5, 15, 15, 1)[:, :, 0].clone())
    save_bad("bad_shape_3planes", torch.cat([x, x[:1]]))     # [3,3,7,11]
    save_bad("bad_shape_k0", x[:, :0].clone())               # [2,0,7,11]

    # Values.
    t = x.clone()
    t[0, 1, 3, 4] = float("nan")
    save_bad("bad_nan_score", t)
    t = x.clone()
    t[0, 2, 6, 2] = float("-inf")
    save_bad("bad_inf_score", t, legacy=True)
    t = x.clone()
    t[1, 0, 0, 0] = 2.5
    save_bad("bad_class_frac", t)
    t = x.clone()
    t[1, 2, 3, 4] = -1.0
    save_bad("bad_class_neg", t.half(), legacy=True)
    t = x.clone()
    t[1, 2, 1, 2] = float(1 << 24)
    save_bad("bad_class_big", t)
    t = x.clone()
    t[1, 1, 1, 1] = float("nan")
    save_bad("bad_class_nan", t)

    # Types and objects that are not one float tensor.
    save_bad("bad_int64", x.long())
    save_bad("bad_dict", {"labels": x}, loads=False)

    # A pickle whose first global is os.system: must be refused, not run.
    evil = b"\x80\x02cos\nsystem\nq\x00X\x0e\x00\x00\x00echo pwned >&2\x85R."
    write_bytes("bad_global_os_system.pt", stored_zip([
        ("bad_global_os_system/data.pkl", evil),
        ("bad_global_os_system/data/0", b"\0" * 16),
        ("bad_global_os_system/version", b"3\n")]))

    # A legacy file whose object pickle uses STACK_GLOBAL (protocol 4).
    legacy = torch_bytes(x, True, stem="unused")
    sysinfo_end = legacy.index(b"u.", legacy.index(b"type_sizes")) + 2
    stack_global = (b"\x80\x02X\x0b\x00\x00\x00collectionsX\x0b\x00\x00\x00"
                    b"OrderedDict\x93)R.")
    write_bytes("bad_opcode_stack_global.pt",
                legacy[:sysinfo_end] + stack_global)

    # A zip whose data.pkl holds a byte that is no pickle opcode at all.
    write_bytes("bad_opcode_unknown.pt", stored_zip([
        ("a/data.pkl", b"\x80\x02\xff."), ("a/version", b"3\n")]))

    # Strides that reach past the end of the storage (torch.load refuses).
    raw = x.numpy().astype("<f4").tobytes()
    pkl = torch_like_pickle("FloatStorage", "0", 462, 0, (2, 3, 7, 11),
                            (231, 77, 11, 2))
    write_bytes("bad_stride_oob.pt", stored_zip([
        ("s/data.pkl", pkl), ("s/data/0", raw), ("s/version", b"3\n")]))
    # The same tensor with an in-bounds layout loads in torch: the crafted
    # pickle is faithful, so the refusal above is for the strides alone.
    ok = stored_zip([
        ("s/data.pkl", torch_like_pickle("FloatStorage", "0", 462, 0,
                                         (2, 3, 7, 11), (231, 77, 11, 1))),
        ("s/data/0", raw), ("s/version", b"3\n")])
    assert torch.equal(load_bytes(ok), x)
    try:
        load_bytes(stored_zip([("s/data.pkl", pkl), ("s/data/0", raw),
                               ("s/version", b"3\n")]))
        raise AssertionError("torch loaded out-of-bounds strides")
    except RuntimeError:
        pass

    # A zip that says its data is big-endian.
    write_bytes("bad_byteorder_big.pt", stored_zip([
        ("b/data.pkl", torch_like_pickle("FloatStorage", "0", 462, 0,
                                         (2, 3, 7, 11), (231, 77, 11, 1))),
        ("b/byteorder", b"big"), ("b/data/0", raw), ("b/version", b"3\n")]))

    # Zips with records missing, repeated, out of order or unsupported.
    good = zipfile.ZipFile(io.BytesIO(torch_bytes(x, False, stem="z")))
    entries = [(i.filename, good.read(i)) for i in good.infolist()]
    assert [n for n, _ in entries] == ["z/data.pkl", "z/data/0", "z/version"]
    write_bytes("bad_zip_no_pkl.pt", stored_zip(entries[1:]))
    write_bytes("bad_zip_no_version.pt", stored_zip(entries[:2]))
    write_bytes("bad_zip_no_data.pt", stored_zip(entries[:1] + entries[2:]))
    write_bytes("bad_zip_version_99.pt",
                stored_zip(entries[:2] + [("z/version", b"99\n")]))
    write_bytes("bad_zip_data_first.pt",
                stored_zip([entries[1], entries[0], entries[2]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate
        write_bytes("bad_zip_dup_pkl.pt",
                    stored_zip(entries[:1] + entries))
    write_bytes("bad_zip_no_folder.pt", stored_zip(
        [("data.pkl", entries[0][1]), ("data/0", entries[1][1]),
         ("version", b"3\n")]))

    write_bytes("bad_text.pt", b"this is a text file, not a tensor\n")
    write_bytes("bad_empty.pt", b"")


def main():
    for name in os.listdir(HERE):
        if name.endswith((".pt", ".f32")):
            os.remove(out_path(name))
    good_fixtures()
    bad_fixtures()
    total = sum(os.path.getsize(out_path(n)) for n in written)
    print(f"wrote {len(written)} files, {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
