/*
 * ptfile: reads one label map written by torch.save() (see ptfile.h).
 *
 * Three layers. The container: a torch zip (opened with libarchive's
 * seekable zip reader, which uses the central directory and checks each
 * entry's CRC-32) or the legacy stream of pickles followed by raw storages.
 * The pickle VM: a machine for the protocol-2 subset torch writes for one
 * tensor, with fixed-size stack, memo and object arenas, an allow-list of
 * globals that are recognised by name and never called, and a refusal by
 * name of every other opcode. The conversion: the tensor's [2, K, H, W]
 * view of its storage, bounds-checked, is gathered into the cell-major
 * labelmap layout while every score and class index is checked.
 *
 * Invariants: every length and index read from the input is checked against
 * the bytes that remain before it is used; strings and storage bytes are
 * borrowed views into the input (or into a copy owned by the parse) that
 * never outlive ptfile_parse; the only allocations are the output arrays
 * (grown within the LABELMAP_MAX_* caps) and, for zip entries libarchive
 * cannot hand back in place (compressed ones), a copy capped in size.
 */
#include "ptfile.h"

#include <archive.h>
#include <archive_entry.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/f16.h"

/* Caps on what a file may make the parser hold. A tensor's pickle is about
 * 170 bytes with 12 objects; these leave room and bound the work. */
#define PT_MAX_PICKLE (1u << 20) /* bytes of data.pkl */
#define PT_MAX_ZIP_ENTRIES 64
#define PT_MAX_SMALL_ENTRY 64 /* version, byteorder */
/* A storage may exceed the tensor's view (a slice), but never the 64 MiB
 * the importer reads per file: only a deflated zip entry could claim more,
 * and inflating it would let a small file allocate without bound. */
#define PT_MAX_STORAGE_BYTES (64ull << 20)
#define PT_MAX_VALS 512
#define PT_MAX_ITEMS 1024
#define PT_MAX_STACK 64
#define PT_MAX_MARKS 32
#define PT_MAX_MEMO 256
#define PT_MAX_NDIM 8
#define PT_MAX_NAME 128 /* one line of a GLOBAL */

/* ------------------------------------------------------------------ */
/* dtypes */

enum { DT_F32, DT_F16, DT_BF16, DT_F64 };

static const struct {
  const char *name;
  const char *storage; /* torch's class name in the pickle */
  unsigned size;
} dtypes[] = {
    [DT_F32] = {"float32", "FloatStorage", 4},
    [DT_F16] = {"float16", "HalfStorage", 2},
    [DT_BF16] = {"bfloat16", "BFloat16Storage", 2},
    [DT_F64] = {"float64", "DoubleStorage", 8},
};

/* torch storage classes that exist but hold a dtype lmap does not read:
 * named in the refusal so the user learns what the file holds. */
static const struct {
  const char *storage, *dtype;
} other_storages[] = {
    {"LongStorage", "int64"},
    {"IntStorage", "int32"},
    {"ShortStorage", "int16"},
    {"CharStorage", "int8"},
    {"ByteStorage", "uint8"},
    {"BoolStorage", "bool"},
    {"ComplexFloatStorage", "complex64"},
    {"ComplexDoubleStorage", "complex128"},
    {"QInt8Storage", "qint8"},
    {"QUInt8Storage", "quint8"},
    {"QInt32Storage", "qint32"},
    {"QUInt4x2Storage", "quint4x2"},
    {"QUInt2x4Storage", "quint2x4"},
};

/* ------------------------------------------------------------------ */
/* pickle opcode names, for refusals that say what was found */

static const char *opname(unsigned op) {
  switch (op) {
  case '(': return "MARK";
  case '.': return "STOP";
  case '0': return "POP";
  case '1': return "POP_MARK";
  case '2': return "DUP";
  case 'F': return "FLOAT";
  case 'I': return "INT";
  case 'J': return "BININT";
  case 'K': return "BININT1";
  case 'L': return "LONG";
  case 'M': return "BININT2";
  case 'N': return "NONE";
  case 'P': return "PERSID";
  case 'Q': return "BINPERSID";
  case 'R': return "REDUCE";
  case 'S': return "STRING";
  case 'T': return "BINSTRING";
  case 'U': return "SHORT_BINSTRING";
  case 'V': return "UNICODE";
  case 'X': return "BINUNICODE";
  case 'a': return "APPEND";
  case 'b': return "BUILD";
  case 'c': return "GLOBAL";
  case 'd': return "DICT";
  case '}': return "EMPTY_DICT";
  case 'e': return "APPENDS";
  case 'g': return "GET";
  case 'h': return "BINGET";
  case 'i': return "INST";
  case 'j': return "LONG_BINGET";
  case 'l': return "LIST";
  case ']': return "EMPTY_LIST";
  case 'o': return "OBJ";
  case 'p': return "PUT";
  case 'q': return "BINPUT";
  case 'r': return "LONG_BINPUT";
  case 's': return "SETITEM";
  case 't': return "TUPLE";
  case ')': return "EMPTY_TUPLE";
  case 'u': return "SETITEMS";
  case 'G': return "BINFLOAT";
  case 0x80: return "PROTO";
  case 0x81: return "NEWOBJ";
  case 0x82: return "EXT1";
  case 0x83: return "EXT2";
  case 0x84: return "EXT4";
  case 0x85: return "TUPLE1";
  case 0x86: return "TUPLE2";
  case 0x87: return "TUPLE3";
  case 0x88: return "NEWTRUE";
  case 0x89: return "NEWFALSE";
  case 0x8a: return "LONG1";
  case 0x8b: return "LONG4";
  case 'B': return "BINBYTES";
  case 'C': return "SHORT_BINBYTES";
  case 0x8c: return "SHORT_BINUNICODE";
  case 0x8d: return "BINUNICODE8";
  case 0x8e: return "BINBYTES8";
  case 0x8f: return "EMPTY_SET";
  case 0x90: return "ADDITEMS";
  case 0x91: return "FROZENSET";
  case 0x92: return "NEWOBJ_EX";
  case 0x93: return "STACK_GLOBAL";
  case 0x94: return "MEMOIZE";
  case 0x95: return "FRAME";
  case 0x96: return "BYTEARRAY8";
  case 0x97: return "NEXT_BUFFER";
  case 0x98: return "READONLY_BUFFER";
  }
  return "not a pickle opcode";
}

/* Copies up to `n` input bytes into `dst` for a message, replacing
 * anything outside printable ASCII by '?' and marking a cut with "...". */
static const char *printable(char *dst, size_t cap, const uint8_t *s,
                             size_t n) {
  size_t i, o = 0;
  for (i = 0; i < n && o + 4 < cap; i++)
    dst[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
  if (i < n)
    for (int j = 0; j < 3 && o + 1 < cap; j++)
      dst[o++] = '.';
  dst[o] = '\0';
  return dst;
}

/* ------------------------------------------------------------------ */
/* the pickle VM */

enum vtype {
  V_NONE,
  V_BOOL,
  V_INT,
  V_BIGINT,
  V_FLOAT,
  V_STR,
  V_TUPLE,
  V_LIST,
  V_DICT,
  V_GLOBAL,
  V_STORAGE,
  V_TENSOR
};

static const char *vtype_name[] = {
    "None",  "bool", "int",  "int",    "float",   "str",
    "tuple", "list", "dict", "global", "storage", "tensor",
};

/* The globals a tensor pickle may name. */
enum {
  G_STORAGE = 0,  /* + DT_*: torch.<X>Storage */
  G_REBUILD = 16, /* torch._utils._rebuild_tensor_v2 */
  G_ODICT,        /* collections.OrderedDict */
};

/* One object. Strings and big ints are views into the pickle bytes; tuple,
 * list and dict items (dicts as key, value pairs) are a run of `n` (2n for
 * dicts) value ids in the items arena starting at `first`. */
typedef struct pval {
  uint8_t type;
  uint8_t aux; /* V_BOOL: the value; V_GLOBAL: G_* */
  uint32_t n;
  union {
    int64_t i;
    double f;
    const uint8_t *s;
    uint32_t first;
  } u;
} pval;

/* The storage named by the (one) persistent id. */
typedef struct pstorage {
  int dtype;
  const uint8_t *key;
  uint32_t keylen;
  int64_t numel;
} pstorage;

/* The arguments of the (one) _rebuild_tensor_v2 call. */
typedef struct ptensor {
  int ndim;
  int64_t offset;
  int64_t size[PT_MAX_NDIM], stride[PT_MAX_NDIM];
} ptensor;

typedef struct vm {
  const uint8_t *base, *p, *end; /* the pickle */
  size_t where_off;              /* offset of `base` in `where`, for messages */
  const char *where;             /* "z/data.pkl", "the file (its ...)" */
  diag *d;
  pval vals[PT_MAX_VALS];
  uint16_t items[PT_MAX_ITEMS];
  uint16_t stack[PT_MAX_STACK];
  uint32_t marks[PT_MAX_MARKS];
  int16_t memo[PT_MAX_MEMO];
  uint32_t nvals, nitems, sp, nmarks;
  /* Results that outlive one pickle run. */
  int have_storage, have_tensor;
  pstorage st;
  ptensor t;
} vm;

static size_t vm_pos(const vm *m, const uint8_t *at) {
  return m->where_off + (size_t)(at - m->base);
}

/* Fails with LMAP_EFORMAT and a message ending in the position. */
#define VM_FAIL(m, at, fmt, ...)                                               \
  diag_set((m)->d, LMAP_EFORMAT, fmt " (at byte %zu of %s)", __VA_ARGS__,      \
           vm_pos((m), (at)), (m)->where)

static int new_val(vm *m, uint8_t type, const uint8_t *at) {
  if (m->nvals >= PT_MAX_VALS)
    return VM_FAIL(m, at, "pickle holds more than %d objects", PT_MAX_VALS);
  pval *v = &m->vals[m->nvals];
  memset(v, 0, sizeof *v);
  v->type = type;
  return (int)m->nvals++;
}

static int push(vm *m, int id, const uint8_t *at) {
  if (id < 0)
    return id;
  if (m->sp >= PT_MAX_STACK)
    return VM_FAIL(m, at, "pickle stack deeper than %d", PT_MAX_STACK);
  m->stack[m->sp++] = (uint16_t)id;
  return 0;
}

static int push_new(vm *m, uint8_t type, const uint8_t *at, pval **out) {
  int id = new_val(m, type, at);
  if (id < 0)
    return id;
  if (out)
    *out = &m->vals[id];
  return push(m, id, at);
}

/* The stack floor: objects below the innermost MARK are not poppable. */
static uint32_t floor_sp(const vm *m) {
  return m->nmarks ? m->marks[m->nmarks - 1] : 0;
}

static int pop(vm *m, const uint8_t *at, unsigned op, int *id) {
  if (m->sp <= floor_sp(m))
    return VM_FAIL(m, at, "pickle opcode %s pops an empty stack", opname(op));
  *id = m->stack[--m->sp];
  return 0;
}

static int pop_mark(vm *m, const uint8_t *at, unsigned op, uint32_t *mark) {
  if (m->nmarks == 0)
    return VM_FAIL(m, at, "pickle opcode %s without a MARK", opname(op));
  *mark = m->marks[--m->nmarks];
  return 0;
}

/* Appends `n` value ids to the item run of container `cid` (which must end
 * the arena, or is first moved to its end). Items of a container only
 * change through this function. */
static int add_items(vm *m, int cid, const uint16_t *ids, uint32_t n,
                     const uint8_t *at) {
  pval *c = &m->vals[cid];
  uint32_t have = c->type == V_DICT ? 2 * c->n : c->n;
  if (c->u.first + have != m->nitems || have == 0) {
    if (m->nitems + have + n > PT_MAX_ITEMS)
      goto full;
    memmove(&m->items[m->nitems], &m->items[c->u.first],
            have * sizeof m->items[0]);
    c->u.first = m->nitems;
    m->nitems += have;
  }
  if (m->nitems + n > PT_MAX_ITEMS)
    goto full;
  memcpy(&m->items[m->nitems], ids, n * sizeof ids[0]);
  m->nitems += n;
  c->n += c->type == V_DICT ? n / 2 : n;
  return 0;
full:
  return VM_FAIL(m, at, "pickle holds more than %d container items",
                 PT_MAX_ITEMS);
}

static const pval *item(const vm *m, const pval *c, uint32_t i) {
  return &m->vals[m->items[c->u.first + i]];
}

static int str_is(const pval *v, const char *s) {
  size_t n = strlen(s);
  return v->type == V_STR && v->n == n && memcmp(v->u.s, s, n) == 0;
}

/* Value of `key` in dict `dv`, or NULL. */
static const pval *dict_get(const vm *m, const pval *dv, const char *key) {
  for (uint32_t i = 0; i < dv->n; i++)
    if (str_is(item(m, dv, 2 * i), key))
      return item(m, dv, 2 * i + 1);
  return NULL;
}

static int need(vm *m, const uint8_t *at, size_t n, unsigned op) {
  if ((size_t)(m->end - m->p) < n)
    return diag_set(m->d, LMAP_EFORMAT,
                    "pickle ends inside opcode 0x%02x (%s) at byte %zu of %s "
                    "(truncated?)",
                    op, opname(op), vm_pos(m, at), m->where);
  return 0;
}

static uint32_t rd_le(const uint8_t *p, unsigned n) {
  uint32_t v = 0;
  for (unsigned i = 0; i < n; i++)
    v |= (uint32_t)p[i] << (8 * i);
  return v;
}

/* Resolves GLOBAL "module\nname\n" against the allow-list. */
static int op_global(vm *m, const uint8_t *at) {
  const uint8_t *line[2];
  size_t len[2];
  for (int i = 0; i < 2; i++) {
    size_t max = (size_t)(m->end - m->p);
    if (max > PT_MAX_NAME)
      max = PT_MAX_NAME;
    const uint8_t *nl = memchr(m->p, '\n', max);
    if (nl == NULL)
      return (size_t)(m->end - m->p) <= PT_MAX_NAME
                 ? need(m, at, (size_t)(m->end - m->p) + 1, 'c')
                 : VM_FAIL(m, at, "pickle GLOBAL name longer than %d bytes",
                           PT_MAX_NAME);
    line[i] = m->p;
    len[i] = (size_t)(nl - m->p);
    m->p = nl + 1;
  }
#define IS(i, lit) (len[i] == sizeof lit - 1 && !memcmp(line[i], lit, len[i]))
  int g = -1;
  if (IS(0, "torch._utils") && IS(1, "_rebuild_tensor_v2")) {
    g = G_REBUILD;
  } else if (IS(0, "collections") && IS(1, "OrderedDict")) {
    g = G_ODICT;
  } else if (IS(0, "torch")) {
    for (int i = 0; i < (int)(sizeof dtypes / sizeof dtypes[0]); i++)
      if (len[1] == strlen(dtypes[i].storage) &&
          !memcmp(line[1], dtypes[i].storage, len[1]))
        g = G_STORAGE + i;
    for (size_t i = 0;
         g < 0 && i < sizeof other_storages / sizeof other_storages[0]; i++)
      if (len[1] == strlen(other_storages[i].storage) &&
          !memcmp(line[1], other_storages[i].storage, len[1]))
        return VM_FAIL(m, at,
                       "tensor dtype %s (torch.%s) is not supported; lmap "
                       "reads float32, float16, bfloat16 and float64",
                       other_storages[i].dtype, other_storages[i].storage);
  }
#undef IS
  if (g < 0) {
    char a[64], b[64];
    return VM_FAIL(m, at, "pickle global '%s.%s' is not allowed",
                   printable(a, sizeof a, line[0], len[0]),
                   printable(b, sizeof b, line[1], len[1]));
  }
  pval *v;
  int rc = push_new(m, V_GLOBAL, at, &v);
  if (rc == 0)
    v->aux = (uint8_t)g;
  return rc;
}

static int is_int(const pval *v) {
  return v->type == V_INT;
}

/* BINPERSID: ('storage', torch.<X>Storage, key, location, numel) as the
 * zip format writes it, or the legacy 6-tuple ending in view_metadata,
 * which torch 1.13 writes as None. The location ('cpu', 'cuda:0') does not
 * change the bytes and is not checked. */
static int op_persid(vm *m, const uint8_t *at) {
  int id = -1, rc = pop(m, at, 'Q', &id);
  if (rc < 0)
    return rc;
  const pval *t = &m->vals[id];
  if (t->type != V_TUPLE || (t->n != 5 && t->n != 6) ||
      !str_is(item(m, t, 0), "storage"))
    return VM_FAIL(m, at,
                   "pickle persistent id is a %s, not a storage "
                   "reference ('storage', type, key, location, numel)",
                   vtype_name[t->type]);
  const pval *ty = item(m, t, 1), *key = item(m, t, 2), *loc = item(m, t, 3),
             *numel = item(m, t, 4);
  if (ty->type != V_GLOBAL || ty->aux >= G_REBUILD)
    return VM_FAIL(m, at, "%s",
                   "pickle storage type is not a torch storage "
                   "class");
  if (key->type != V_STR || loc->type != V_STR || !is_int(numel) ||
      numel->u.i < 0 || numel->u.i >= ((int64_t)1 << 40))
    return VM_FAIL(m, at, "%s",
                   "pickle storage reference has a malformed "
                   "key, location or size");
  if (t->n == 6 && item(m, t, 5)->type != V_NONE)
    return VM_FAIL(m, at, "%s",
                   "storage views (legacy view_metadata) are "
                   "not supported");
  if (m->have_storage)
    return VM_FAIL(m, at, "%s",
                   "pickle references more than one storage "
                   "(expected one tensor)");
  m->have_storage = 1;
  m->st.dtype = ty->aux - G_STORAGE;
  m->st.key = key->u.s;
  m->st.keylen = key->n;
  m->st.numel = numel->u.i;
  return push_new(m, V_STORAGE, at, NULL);
}

/* Reads an int tuple (size or stride) into `dst`. */
static int int_tuple(vm *m, const uint8_t *at, const pval *t, int64_t *dst,
                     int *n, const char *what) {
  if (t->type != V_TUPLE)
    return VM_FAIL(m, at, "tensor %s is a %s, not a tuple", what,
                   vtype_name[t->type]);
  if (t->n > PT_MAX_NDIM)
    return VM_FAIL(m, at, "tensor has %u dimensions (expected 4)", t->n);
  for (uint32_t i = 0; i < t->n; i++) {
    const pval *v = item(m, t, i);
    if (!is_int(v))
      return VM_FAIL(m, at, "tensor %s holds a %s", what, vtype_name[v->type]);
    dst[i] = v->u.i;
  }
  *n = (int)t->n;
  return 0;
}

/* REDUCE: calls one of the allowed globals, each interpreted here rather
 * than executed: OrderedDict() is an empty dict, _rebuild_tensor_v2 records
 * the tensor's view of its storage. */
static int op_reduce(vm *m, const uint8_t *at) {
  int aid = -1, fid = -1, rc;
  if ((rc = pop(m, at, 'R', &aid)) < 0 || (rc = pop(m, at, 'R', &fid)) < 0)
    return rc;
  const pval *f = &m->vals[fid], *args = &m->vals[aid];
  if (f->type != V_GLOBAL)
    return VM_FAIL(m, at, "pickle calls a %s", vtype_name[f->type]);
  if (args->type != V_TUPLE)
    return VM_FAIL(m, at, "pickle call arguments are a %s, not a tuple",
                   vtype_name[args->type]);
  if (f->aux == G_ODICT) {
    if (args->n != 0)
      return VM_FAIL(m, at, "%s", "pickle calls OrderedDict with arguments");
    return push_new(m, V_DICT, at, NULL);
  }
  if (f->aux != G_REBUILD)
    return VM_FAIL(m, at, "pickle calls torch.%s, which is not allowed",
                   dtypes[f->aux - G_STORAGE].storage);

  /* _rebuild_tensor_v2(storage, storage_offset, size, stride,
   *                    requires_grad, backward_hooks[, metadata]) */
  if (args->n != 6 && args->n != 7)
    return VM_FAIL(m, at,
                   "_rebuild_tensor_v2 called with %u arguments "
                   "(expected 6 or 7)",
                   args->n);
  const pval *st = item(m, args, 0), *off = item(m, args, 1),
             *grad = item(m, args, 4), *hooks = item(m, args, 5);
  if (st->type != V_STORAGE)
    return VM_FAIL(m, at, "tensor storage is a %s", vtype_name[st->type]);
  if (!is_int(off) || off->u.i < 0)
    return VM_FAIL(m, at, "%s", "tensor storage offset is not an int >= 0");
  if (grad->type != V_BOOL)
    return VM_FAIL(m, at, "%s", "tensor requires_grad is not a bool");
  if (hooks->type != V_DICT || hooks->n != 0)
    return VM_FAIL(m, at, "%s", "tensor has backward hooks");
  if (args->n == 7) {
    const pval *meta = item(m, args, 6);
    if (meta->type != V_NONE && (meta->type != V_DICT || meta->n != 0))
      return VM_FAIL(m, at, "%s", "tensor carries Python metadata");
  }
  if (m->have_tensor)
    return VM_FAIL(m, at, "%s", "pickle builds more than one tensor");
  int nsize, nstride;
  if ((rc = int_tuple(m, at, item(m, args, 2), m->t.size, &nsize, "size")) <
          0 ||
      (rc = int_tuple(m, at, item(m, args, 3), m->t.stride, &nstride,
                      "stride")) < 0)
    return rc;
  if (nsize != nstride)
    return VM_FAIL(m, at, "tensor has %d sizes but %d strides", nsize, nstride);
  m->t.ndim = nsize;
  m->t.offset = off->u.i;
  m->have_tensor = 1;
  return push_new(m, V_TENSOR, at, NULL);
}

/* Runs the pickle in [p, end) to its STOP. On success *result is the
 * object's value id and *used the bytes consumed. The arenas are reset;
 * the storage and tensor recorded by earlier runs are kept. */
static int vm_run(vm *m, const uint8_t *p, size_t n, size_t where_off,
                  const char *where, int *result, size_t *used) {
  if (n == 0)
    return diag_set(m->d, LMAP_EFORMAT,
                    "pickle expected at byte %zu of %s, found the end "
                    "(truncated?)",
                    where_off, where);
  m->base = m->p = p;
  m->end = p + n;
  m->where = where;
  m->where_off = where_off;
  m->nvals = m->nitems = m->sp = m->nmarks = 0;
  memset(m->memo, 0xff, sizeof m->memo);

  for (;;) {
    const uint8_t *at = m->p;
    int rc = 0, id = -1;
    uint32_t idx, mark = 0;
    pval *v;
    if (m->p >= m->end)
      return diag_set(m->d, LMAP_EFORMAT,
                      "pickle ends without STOP at byte %zu of %s (truncated?)",
                      vm_pos(m, at), where);
    unsigned op = *m->p++;
    switch (op) {
    case 0x80: /* PROTO */
      if ((rc = need(m, at, 1, op)) < 0)
        return rc;
      if (*m->p < 2 || *m->p > 5)
        return VM_FAIL(m, at, "pickle protocol %u is not supported", *m->p);
      m->p++;
      break;
    case 0x95: /* FRAME: a length hint, checked but not needed */
      if ((rc = need(m, at, 8, op)) < 0)
        return rc;
      {
        uint64_t flen = (uint64_t)rd_le(m->p, 4) | (uint64_t)rd_le(m->p + 4, 4)
                                                       << 32;
        m->p += 8;
        if (flen > (uint64_t)(m->end - m->p))
          return need(m, at, (size_t)(m->end - m->p) + 1, op);
      }
      break;
    case 'c': rc = op_global(m, at); break;
    case 'q': /* BINPUT */
    case 'r': /* LONG_BINPUT */
      if ((rc = need(m, at, op == 'q' ? 1 : 4, op)) < 0)
        return rc;
      idx = op == 'q' ? *m->p : rd_le(m->p, 4);
      m->p += op == 'q' ? 1 : 4;
      if (idx >= PT_MAX_MEMO)
        return VM_FAIL(m, at, "pickle memo index %u is over %d", idx,
                       PT_MAX_MEMO - 1);
      if (m->sp <= floor_sp(m))
        return VM_FAIL(m, at, "pickle opcode %s with an empty stack",
                       opname(op));
      m->memo[idx] = (int16_t)m->stack[m->sp - 1];
      break;
    case 'h': /* BINGET */
    case 'j': /* LONG_BINGET */
      if ((rc = need(m, at, op == 'h' ? 1 : 4, op)) < 0)
        return rc;
      idx = op == 'h' ? *m->p : rd_le(m->p, 4);
      m->p += op == 'h' ? 1 : 4;
      if (idx >= PT_MAX_MEMO || m->memo[idx] < 0)
        return VM_FAIL(m, at, "pickle memo index %u is not set", idx);
      rc = push(m, m->memo[idx], at);
      break;
    case '(': /* MARK */
      if (m->nmarks >= PT_MAX_MARKS)
        return VM_FAIL(m, at, "pickle MARKs nested deeper than %d",
                       PT_MAX_MARKS);
      m->marks[m->nmarks++] = m->sp;
      break;
    case ')': /* EMPTY_TUPLE */
      rc = push_new(m, V_TUPLE, at, &v);
      if (rc == 0)
        v->u.first = m->nitems;
      break;
    case 't':    /* TUPLE */
    case 0x85:   /* TUPLE1 */
    case 0x86:   /* TUPLE2 */
    case 0x87: { /* TUPLE3 */
      uint32_t from;
      if (op == 't') {
        if ((rc = pop_mark(m, at, op, &mark)) < 0)
          return rc;
        from = mark;
      } else {
        uint32_t k = op - 0x85 + 1;
        if (m->sp < floor_sp(m) + k)
          return VM_FAIL(m, at, "pickle opcode %s pops an empty stack",
                         opname(op));
        from = m->sp - k;
      }
      uint32_t k = m->sp - from;
      if (m->nitems + k > PT_MAX_ITEMS)
        return VM_FAIL(m, at, "pickle holds more than %d container items",
                       PT_MAX_ITEMS);
      if ((id = new_val(m, V_TUPLE, at)) < 0)
        return id;
      m->vals[id].u.first = m->nitems;
      m->vals[id].n = k;
      memcpy(&m->items[m->nitems], &m->stack[from], k * sizeof m->items[0]);
      m->nitems += k;
      m->sp = from;
      rc = push(m, id, at);
      break;
    }
    case 'J': /* BININT */
    case 'K': /* BININT1 */
    case 'M': /* BININT2 */ {
      unsigned k = op == 'J' ? 4 : op == 'K' ? 1 : 2;
      if ((rc = need(m, at, k, op)) < 0)
        return rc;
      uint32_t u = rd_le(m->p, k);
      m->p += k;
      if ((rc = push_new(m, V_INT, at, &v)) == 0)
        v->u.i = op == 'J' ? (int64_t)(int32_t)u : (int64_t)u;
      break;
    }
    case 0x8a: { /* LONG1: little-endian two's complement of n bytes */
      if ((rc = need(m, at, 1, op)) < 0)
        return rc;
      unsigned k = *m->p;
      if ((rc = need(m, at, 1 + (size_t)k, op)) < 0)
        return rc;
      const uint8_t *b = m->p + 1;
      m->p += 1 + k;
      if (k <= 8) {
        uint64_t u = 0;
        for (unsigned i = 0; i < k; i++)
          u |= (uint64_t)b[i] << (8 * i);
        if (k > 0 && k < 8 && (b[k - 1] & 0x80))
          u |= ~(uint64_t)0 << (8 * k);
        if ((rc = push_new(m, V_INT, at, &v)) == 0)
          memcpy(&v->u.i, &u, sizeof u);
      } else if ((rc = push_new(m, V_BIGINT, at, &v)) == 0) {
        v->u.s = b;
        v->n = k;
      }
      break;
    }
    case 'X': /* BINUNICODE */
    case 'T': /* BINSTRING */
    case 'U': /* SHORT_BINSTRING */ {
      unsigned k = op == 'U' ? 1 : 4;
      if ((rc = need(m, at, k, op)) < 0)
        return rc;
      uint32_t slen = rd_le(m->p, k);
      if (op == 'T' && slen > INT32_MAX)
        return VM_FAIL(m, at, "pickle BINSTRING has negative length %d",
                       (int)(int32_t)slen);
      if ((rc = need(m, at, k + (size_t)slen, op)) < 0)
        return rc;
      if ((rc = push_new(m, V_STR, at, &v)) == 0) {
        v->u.s = m->p + k;
        v->n = slen;
      }
      m->p += k + (size_t)slen;
      break;
    }
    case 'G': { /* BINFLOAT: big-endian IEEE double */
      if ((rc = need(m, at, 8, op)) < 0)
        return rc;
      uint64_t u = 0;
      for (int i = 0; i < 8; i++)
        u = u << 8 | m->p[i];
      m->p += 8;
      if ((rc = push_new(m, V_FLOAT, at, &v)) == 0)
        memcpy(&v->u.f, &u, sizeof u);
      break;
    }
    case 'Q': rc = op_persid(m, at); break;
    case 'R': rc = op_reduce(m, at); break;
    case '}': /* EMPTY_DICT */
    case ']': /* EMPTY_LIST */
      rc = push_new(m, op == '}' ? V_DICT : V_LIST, at, &v);
      if (rc == 0)
        v->u.first = m->nitems;
      break;
    case 's': /* SETITEM */
    case 'a': /* APPEND */ {
      uint16_t kv[2];
      int vid = -1, kid = -1;
      if ((rc = pop(m, at, op, &vid)) < 0 ||
          (op == 's' && (rc = pop(m, at, op, &kid)) < 0))
        return rc;
      if (m->sp <= floor_sp(m))
        return VM_FAIL(m, at, "pickle opcode %s pops an empty stack",
                       opname(op));
      id = m->stack[m->sp - 1];
      if (m->vals[id].type != (op == 's' ? V_DICT : V_LIST))
        return VM_FAIL(m, at, "pickle opcode %s applied to a %s", opname(op),
                       vtype_name[m->vals[id].type]);
      kv[0] = (uint16_t)(op == 's' ? kid : vid);
      kv[1] = (uint16_t)vid;
      rc = add_items(m, id, kv, op == 's' ? 2 : 1, at);
      break;
    }
    case 'u': /* SETITEMS */
    case 'e': /* APPENDS */ {
      if ((rc = pop_mark(m, at, op, &mark)) < 0)
        return rc;
      uint32_t k = m->sp - mark;
      if (mark <= floor_sp(m))
        return VM_FAIL(m, at, "pickle opcode %s has no container", opname(op));
      id = m->stack[mark - 1];
      if (m->vals[id].type != (op == 'u' ? V_DICT : V_LIST))
        return VM_FAIL(m, at, "pickle opcode %s applied to a %s", opname(op),
                       vtype_name[m->vals[id].type]);
      if (op == 'u' && k % 2)
        return VM_FAIL(m, at, "%s", "pickle SETITEMS with an odd item count");
      rc = add_items(m, id, &m->stack[mark], k, at);
      m->sp = mark;
      break;
    }
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
      rc = push_new(m, V_BOOL, at, &v);
      if (rc == 0)
        v->aux = op == 0x88;
      break;
    case 'N': rc = push_new(m, V_NONE, at, NULL); break;
    case 'b': { /* BUILD: only the no-op forms (no state to set) */
      if ((rc = pop(m, at, op, &id)) < 0)
        return rc;
      const pval *state = &m->vals[id];
      if (m->sp <= floor_sp(m))
        return VM_FAIL(m, at, "%s", "pickle opcode BUILD pops an empty stack");
      if (state->type != V_NONE && !(state->type == V_DICT && state->n == 0))
        return VM_FAIL(m, at,
                       "pickle BUILD sets a %s state on a %s, which "
                       "is not supported",
                       vtype_name[state->type],
                       vtype_name[m->vals[m->stack[m->sp - 1]].type]);
      break;
    }
    case '.': /* STOP */
      if (m->nmarks != 0 || m->sp != 1)
        return VM_FAIL(m, at,
                       "pickle stops with %u objects on its stack "
                       "(expected 1)",
                       m->sp);
      *result = m->stack[0];
      *used = (size_t)(m->p - p);
      return 0;
    default:
      return VM_FAIL(m, at, "pickle opcode 0x%02x (%s) is not supported", op,
                     opname(op));
    }
    if (rc < 0)
      return rc;
  }
}

/* ------------------------------------------------------------------ */
/* conversion to the labelmap layout */

static int grow(ptfile_out *out, size_t n, diag *d) {
  if (n <= out->cap)
    return 0;
  float *s = realloc(out->map.scores, n * sizeof *s);
  if (s == NULL)
    return diag_set(d, LMAP_ENOMEM, "cannot allocate %zu label map entries", n);
  out->map.scores = s;
  uint32_t *c = realloc(out->map.classes, n * sizeof *c);
  if (c == NULL)
    return diag_set(d, LMAP_ENOMEM, "cannot allocate %zu label map entries", n);
  out->map.classes = c;
  out->cap = n;
  return 0;
}

static const char *fmt_shape(char *buf, size_t cap, const ptensor *t) {
  size_t o = 0;
  o += (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < t->ndim && o < cap; i++)
    o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "",
                          (long long)t->size[i]);
  if (o < cap)
    snprintf(buf + o, cap - o, "]");
  return buf;
}

/* Element loads, little-endian whatever the host. */
static inline float ld_f32(const uint8_t *p) {
  uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
               (uint32_t)p[3] << 24;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
/* Normal halves (nearly every score) take a branch-free rebias of the
 * exponent; zeros, subnormals, Inf and NaN go through f16_to_f32. Both
 * are exact. This halves the time of a float16 file. */
static inline float ld_f16(const uint8_t *p) {
  uint16_t h = (uint16_t)(p[0] | p[1] << 8);
  uint32_t e = h & 0x7c00u;
  if (e == 0 || e == 0x7c00u)
    return f16_to_f32(h);
  uint32_t bits =
      ((uint32_t)(h & 0x8000u) << 16) |
      (((uint32_t)(h & 0x7fffu) << 13) + ((uint32_t)(127 - 15) << 23));
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}
static inline float ld_bf16(const uint8_t *p) {
  return bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
}
static inline double ld_f64(const uint8_t *p) {
  uint64_t u = 0;
  for (int i = 7; i >= 0; i--)
    u = u << 8 | p[i];
  double f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static double ld_any(int dt, const uint8_t *p) {
  switch (dt) {
  case DT_F32: return ld_f32(p);
  case DT_F16: return ld_f16(p);
  case DT_BF16: return ld_bf16(p);
  default: return ld_f64(p);
  }
}

static const char *fmt_value(char *buf, size_t cap, double v) {
  if (v != v)
    snprintf(buf, cap, "NaN");
  else if (v > DBL_MAX)
    snprintf(buf, cap, "Inf");
  else if (v < -DBL_MAX)
    snprintf(buf, cap, "-Inf");
  else
    snprintf(buf, cap, "%.9g", v);
  return buf;
}

/* The slow path after the fast loop saw a bad value: finds the first bad
 * element in [plane, k, row, col] order and describes it. */
static int report_bad(int dt, const uint8_t *data, const int64_t *stride,
                      int64_t offset, uint32_t k, uint32_t h, uint32_t w,
                      diag *d) {
  char val[40];
  for (int p = 0; p < 2; p++)
    for (uint32_t kk = 0; kk < k; kk++)
      for (uint32_t r = 0; r < h; r++)
        for (uint32_t q = 0; q < w; q++) {
          int64_t i = offset + p * stride[0] + (int64_t)kk * stride[1] +
                      (int64_t)r * stride[2] + (int64_t)q * stride[3];
          double v = ld_any(dt, data + (size_t)i * dtypes[dt].size);
          if (p == 0) {
            if (v != v || v > DBL_MAX || v < -DBL_MAX)
              return diag_set(d, LMAP_ERANGE, "score at [0,%u,%u,%u] is %s", kk,
                              r, q, fmt_value(val, sizeof val, v));
            if (v > FLT_MAX || v < -FLT_MAX)
              return diag_set(d, LMAP_ERANGE,
                              "score %s at [0,%u,%u,%u] does not fit in "
                              "float32",
                              fmt_value(val, sizeof val, v), kk, r, q);
            continue;
          }
          const char *why = NULL;
          if (v != v || v > DBL_MAX || v < -DBL_MAX)
            why = "is not finite";
          else if (v != floor(v))
            why = "is not an integer";
          else if (v < 0)
            why = "is negative";
          else if (v >= (double)LABELMAP_MAX_CLASSES)
            why = "is not below 16777216 (LABELMAP_MAX_CLASSES)";
          if (why)
            return diag_set(d, LMAP_ERANGE, "class index %s at [1,%u,%u,%u] %s",
                            fmt_value(val, sizeof val, v), kk, r, q, why);
        }
  return diag_set(d, LMAP_EINTERNAL, "%s", "bad value not found on rescan");
}

/* Gathers plane 0 into scores and plane 1 into classes, cell-major. The
 * checks are branch-light and only flag; report_bad names the culprit. */
#define GATHER(T, LOAD)                                                        \
  for (uint32_t r = 0; r < h; r++)                                             \
    for (uint32_t q = 0; q < w; q++) {                                         \
      const uint8_t *cell =                                                    \
          data + ((size_t)offset + (size_t)r * s2 + (size_t)q * s3) * es;      \
      float *so = scores + ((size_t)r * w + q) * k;                            \
      uint32_t *co = classes + ((size_t)r * w + q) * k;                        \
      for (uint32_t kk = 0; kk < k; kk++) {                                    \
        T s = LOAD(cell + (size_t)kk * s1 * es);                               \
        T c = LOAD(cell + ((size_t)kk * s1 + s0) * es);                        \
        bad |= !(s >= (T)-FLT_MAX && s <= (T)FLT_MAX);                         \
        uint32_t ci = 0;                                                       \
        if (c >= (T)0 && c < (T)LABELMAP_MAX_CLASSES) {                        \
          ci = (uint32_t)c;                                                    \
          bad |= (T)ci != c;                                                   \
        } else {                                                               \
          bad = 1;                                                             \
        }                                                                      \
        so[kk] = (float)s;                                                     \
        co[kk] = ci;                                                           \
      }                                                                        \
    }

/* Checks the tensor's shape and that its view lies inside the storage of
 * `numel` elements at `data`, then converts it into `out`. */
static int convert(const ptensor *t, int dt, const uint8_t *data, int64_t numel,
                   ptfile_out *out, diag *d) {
  char shape[128];
  if (t->ndim != 4 || t->size[0] != 2)
    return diag_set(d, LMAP_EFORMAT,
                    "tensor has shape %s (expected [2, K, H, W])",
                    fmt_shape(shape, sizeof shape, t));
  if (t->size[1] < 1 || t->size[1] > LABELMAP_MAX_K || t->size[2] < 1 ||
      t->size[2] > LABELMAP_MAX_SIDE || t->size[3] < 1 ||
      t->size[3] > LABELMAP_MAX_SIDE)
    return diag_set(d, LMAP_EFORMAT,
                    "tensor has shape %s (expected [2, K, H, W] with "
                    "1 <= K <= %u and 1 <= H, W <= %u)",
                    fmt_shape(shape, sizeof shape, t), LABELMAP_MAX_K,
                    LABELMAP_MAX_SIDE);
  uint32_t k = (uint32_t)t->size[1], h = (uint32_t)t->size[2],
           w = (uint32_t)t->size[3];
  size_t n = (size_t)k * h * w;
  if (n > LABELMAP_MAX_ENTRIES)
    return diag_set(d, LMAP_EFORMAT,
                    "tensor has shape %s: K*H*W = %zu is over %u entries",
                    fmt_shape(shape, sizeof shape, t), n, LABELMAP_MAX_ENTRIES);

  /* The last element addressed is offset + sum((size_i - 1) * stride_i).
   * numel < 2^40 and sizes <= 1024, and a stride over numel is out of
   * bounds at once, so no sum below can overflow. */
  int64_t last = t->offset;
  for (int i = 0; i < 4 && last < numel; i++) {
    if (t->stride[i] < 0)
      return diag_set(d, LMAP_EFORMAT, "tensor stride %lld is negative",
                      (long long)t->stride[i]);
    if (t->size[i] > 1)
      last = t->stride[i] >= numel ? numel
                                   : last + (t->size[i] - 1) * t->stride[i];
  }
  if (last >= numel)
    return diag_set(d, LMAP_EFORMAT,
                    "tensor of shape %s with strides [%lld,%lld,%lld,%lld] "
                    "and offset %lld reaches past its storage of %lld "
                    "elements",
                    fmt_shape(shape, sizeof shape, t), (long long)t->stride[0],
                    (long long)t->stride[1], (long long)t->stride[2],
                    (long long)t->stride[3], (long long)t->offset,
                    (long long)numel);

  int rc = grow(out, n, d);
  if (rc < 0)
    return rc;
  /* Strides of size-1 dimensions never address anything: zero them so the
   * gather does not multiply by values that were only bounds-checked. */
  size_t s0 = (size_t)t->stride[0], s1 = k > 1 ? (size_t)t->stride[1] : 0,
         s2 = h > 1 ? (size_t)t->stride[2] : 0,
         s3 = w > 1 ? (size_t)t->stride[3] : 0;
  size_t es = dtypes[dt].size, offset = (size_t)t->offset;
  float *scores = out->map.scores;
  uint32_t *classes = out->map.classes;
  int bad = 0;
  switch (dt) {
  case DT_F32: GATHER(float, ld_f32) break;
  case DT_F16: GATHER(float, ld_f16) break;
  case DT_BF16: GATHER(float, ld_bf16) break;
  default: GATHER(double, ld_f64) break;
  }
  if (bad) {
    int64_t st[4] = {(int64_t)s0, (int64_t)s1, (int64_t)s2, (int64_t)s3};
    return report_bad(dt, data, st, t->offset, k, h, w, d);
  }

  out->map.k = k;
  out->map.h = h;
  out->map.w = w;
  snprintf(out->dtype, sizeof out->dtype, "%s", dtypes[dt].name);
  out->contiguous =
      (w == 1 || t->stride[3] == 1) && (h == 1 || t->stride[2] == w) &&
      (k == 1 || t->stride[1] == (int64_t)h * w) && t->stride[0] == (int64_t)n;
  return 0;
}

/* The view of the storage's bytes the tensor needs. */
static int check_storage_bytes(const pstorage *st, size_t have,
                               const char *what, diag *d) {
  uint64_t want = (uint64_t)st->numel * dtypes[st->dtype].size;
  if (have != want)
    return diag_set(d, LMAP_EFORMAT,
                    "%s holds %zu bytes, expected %llu for %lld %s elements",
                    what, have, (unsigned long long)want, (long long)st->numel,
                    dtypes[st->dtype].name);
  return 0;
}

/* ------------------------------------------------------------------ */
/* the zip format */

/* libarchive converts entry names from the zip's UTF-8 to the thread's
 * locale charset and drops names it cannot convert (in the C locale, any
 * non-ASCII folder name, i.e. a .pt file with a non-ASCII stem). The parse
 * therefore runs under a thread-local C.UTF-8 LC_CTYPE, created once and
 * kept for the life of the process. */
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;
static locale_t utf8_locale;

static void utf8_init(void) {
  utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

/* Reads the current entry's data. When libarchive hands back the whole
 * entry as one block inside the input (a stored entry) it is borrowed;
 * otherwise it is copied into *owned (freed by the caller), never more than
 * `cap` bytes. Reading to the end makes libarchive check the CRC-32. */
static int read_entry(struct archive *a, const char *name, const uint8_t *in,
                      size_t inlen, uint64_t cap, const uint8_t **data,
                      size_t *size, uint8_t **owned, diag *d) {
  const uint8_t *borrowed = NULL;
  uint8_t *copy = NULL;
  size_t total = 0;
  *data = NULL;
  *size = 0;
  *owned = NULL;
  for (;;) {
    const void *blk;
    size_t n;
    la_int64_t off;
    int r = archive_read_data_block(a, &blk, &n, &off);
    if (r == ARCHIVE_EOF)
      break;
    if (r != ARCHIVE_OK) {
      free(copy);
      return diag_set(
          d, LMAP_EFORMAT, "zip entry '%s' is truncated or damaged: %s", name,
          archive_error_string(a) ? archive_error_string(a) : "read error");
    }
    if (off < 0 || (uint64_t)off != total) {
      free(copy);
      return diag_set(d, LMAP_EFORMAT, "zip entry '%s' has holes", name);
    }
    if (n > cap - total) {
      free(copy);
      return diag_set(d, LMAP_EFORMAT,
                      "zip entry '%s' is larger than %llu "
                      "bytes",
                      name, (unsigned long long)cap);
    }
    if (n == 0)
      continue;
    const uint8_t *b = blk;
    uintptr_t ub = (uintptr_t)b, uin = (uintptr_t)in;
    int inside = ub >= uin && n <= inlen && ub - uin <= inlen - n;
    if (total == 0 && inside) {
      borrowed = b;
    } else {
      uint8_t *nc = realloc(copy, total + n);
      if (nc == NULL) {
        free(copy);
        return diag_set(d, LMAP_ENOMEM, "cannot copy zip entry '%s'", name);
      }
      if (copy == NULL && borrowed != NULL)
        memcpy(nc, borrowed, total); /* still valid: it is the input */
      copy = nc;
      memcpy(copy + total, b, n);
      borrowed = NULL;
    }
    total += n;
  }
  *data = copy ? copy : borrowed;
  *size = total;
  *owned = copy;
  return 0;
}

typedef struct zipstate {
  char prefix[256]; /* the archive folder, "" until the first entry */
  size_t prefix_len;
  int seen_pkl, seen_data, seen_version;
  char early[160]; /* a data/ entry met before data.pkl, "" if none */
  const uint8_t *data;
  size_t data_size;
  uint8_t *owned_pkl, *owned_data;
} zipstate;

static int zip_entry(struct archive *a, struct archive_entry *e, vm *m,
                     zipstate *z, const uint8_t *in, size_t inlen, diag *d) {
  const char *name = archive_entry_pathname_utf8(e);
  if (name == NULL)
    name = archive_entry_pathname(e);
  if (name == NULL)
    return diag_set(d, LMAP_EFORMAT, "%s",
                    "zip entry name cannot be decoded as UTF-8");
  char shown[160];
  printable(shown, sizeof shown, (const uint8_t *)name, strlen(name));
  const char *slash = strchr(name, '/');
  if (slash == NULL)
    return diag_set(d, LMAP_EFORMAT,
                    "zip entry '%s' is not inside an archive folder", shown);
  size_t plen = (size_t)(slash - name);
  if (z->prefix[0] == '\0') {
    /* torch names the archive after the first entry's folder. */
    if (plen == 0 || plen >= sizeof z->prefix)
      return diag_set(d, LMAP_EFORMAT,
                      "zip entry '%s' has an unusable folder name", shown);
    memcpy(z->prefix, name, plen);
    z->prefix[plen] = '\0';
    z->prefix_len = plen;
  } else if (plen != z->prefix_len || memcmp(name, z->prefix, plen) != 0) {
    return 0; /* outside the archive folder: torch ignores it too */
  }
  const char *rest = slash + 1;
  const uint8_t *bytes;
  size_t size;
  uint8_t *owned;
  int rc;

  if (strcmp(rest, "data.pkl") == 0) {
    if (z->seen_pkl)
      return diag_set(d, LMAP_EFORMAT, "zip entry '%s' appears twice", shown);
    if (z->early[0])
      return diag_set(d, LMAP_EFORMAT,
                      "zip entry '%s' comes before '%s' (torch writes "
                      "data.pkl first)",
                      z->early, shown);
    z->seen_pkl = 1;
    if ((rc = read_entry(a, shown, in, inlen, PT_MAX_PICKLE, &bytes, &size,
                         &z->owned_pkl, d)) < 0)
      return rc;
    int result;
    size_t used;
    if ((rc = vm_run(m, bytes, size, 0, shown, &result, &used)) < 0)
      return rc;
    if (m->vals[result].type != V_TENSOR)
      return diag_set(d, LMAP_EFORMAT, "'%s' holds a %s, not a tensor", shown,
                      vtype_name[m->vals[result].type]);
    if (used != size)
      return diag_set(d, LMAP_EFORMAT,
                      "'%s' has %zu bytes after its pickle's STOP", shown,
                      size - used);
    return 0;
  }
  if (strncmp(rest, "data/", 5) == 0) {
    const char *key = rest + 5;
    if (!z->seen_pkl) {
      /* An error unless data.pkl is missing altogether, which is the
       * better message: decided when data.pkl or the end is reached. */
      if (z->early[0] == '\0')
        snprintf(z->early, sizeof z->early, "%s", shown);
      return 0;
    }
    if (strlen(key) != m->st.keylen || memcmp(key, m->st.key, m->st.keylen))
      return 0; /* a storage the tensor does not use */
    if (z->seen_data)
      return diag_set(d, LMAP_EFORMAT, "zip entry '%s' appears twice", shown);
    z->seen_data = 1;
    uint64_t want = (uint64_t)m->st.numel * dtypes[m->st.dtype].size;
    if (want > PT_MAX_STORAGE_BYTES)
      return diag_set(d, LMAP_EFORMAT,
                      "tensor storage of %lld elements is over the %llu-byte "
                      "limit",
                      (long long)m->st.numel,
                      (unsigned long long)PT_MAX_STORAGE_BYTES);
    /* One byte over the expected size is enough to tell "too big". */
    if ((rc = read_entry(a, shown, in, inlen, want + 1, &z->data, &z->data_size,
                         &z->owned_data, d)) < 0)
      return rc;
    return check_storage_bytes(&m->st, z->data_size, shown, d);
  }
  int is_version =
      strcmp(rest, "version") == 0 || strcmp(rest, ".data/version") == 0;
  if (is_version || strcmp(rest, "byteorder") == 0) {
    if ((rc = read_entry(a, shown, in, inlen, PT_MAX_SMALL_ENTRY, &bytes, &size,
                         &owned, d)) < 0)
      return rc;
    char text[PT_MAX_SMALL_ENTRY + 1], seen[PT_MAX_SMALL_ENTRY + 8];
    if (size)
      memcpy(text, bytes, size);
    text[size] = '\0';
    printable(seen, sizeof seen, bytes,
              size && bytes[size - 1] == '\n' ? size - 1 : size);
    free(owned);
    if (is_version) {
      /* torch 1.13 reads format versions 1 to 10 and writes 3. */
      char *endp;
      long v = strtol(text, &endp, 10);
      if (endp == text || (*endp != '\0' && strcmp(endp, "\n") != 0) ||
          (size_t)(endp - text) + (*endp != '\0') != size || v < 1 || v > 10)
        return diag_set(d, LMAP_EFORMAT,
                        "zip entry '%s' holds unsupported format version "
                        "'%s'",
                        shown, seen);
      z->seen_version = 1;
    } else if (strcmp(text, "little") != 0) {
      return diag_set(d, LMAP_EFORMAT,
                      "zip entry '%s' says the data is '%s'-endian (only "
                      "little-endian is read)",
                      shown, strcmp(text, "big") == 0 ? "big" : "unknown");
    }
  }
  return 0; /* other records (.data/serialization_id, ...) are not needed */
}

static int parse_zip(const uint8_t *buf, size_t len, vm *m, ptfile_out *out,
                     diag *d) {
  zipstate z;
  memset(&z, 0, sizeof z);
  struct archive *a = NULL;
  locale_t old = (locale_t)0;
  int rc;

  pthread_once(&utf8_once, utf8_init);
  if (utf8_locale != (locale_t)0)
    old = uselocale(utf8_locale);

  a = archive_read_new();
  if (a == NULL) {
    rc = diag_set(d, LMAP_ENOMEM, "%s", "cannot create a zip reader");
    goto fail;
  }
  if (archive_read_support_format_zip_seekable(a) != ARCHIVE_OK ||
      archive_read_open_memory(a, buf, len) != ARCHIVE_OK) {
    rc = diag_set(d, LMAP_EFORMAT,
                  "zip archive cannot be opened (truncated or damaged?): %s",
                  archive_error_string(a) ? archive_error_string(a)
                                          : "unknown error");
    goto fail;
  }
  for (int count = 0;; count++) {
    struct archive_entry *e;
    int r = archive_read_next_header(a, &e);
    if (r == ARCHIVE_EOF)
      break;
    if (r < ARCHIVE_WARN) {
      rc = diag_set(d, LMAP_EFORMAT, "zip archive is damaged: %s",
                    archive_error_string(a) ? archive_error_string(a)
                                            : "unknown error");
      goto fail;
    }
    if (count >= PT_MAX_ZIP_ENTRIES) {
      rc = diag_set(d, LMAP_EFORMAT, "zip archive has more than %d entries",
                    PT_MAX_ZIP_ENTRIES);
      goto fail;
    }
    if ((rc = zip_entry(a, e, m, &z, buf, len, d)) < 0)
      goto fail;
  }
  if (!z.seen_pkl) {
    rc = diag_set(d, LMAP_EFORMAT,
                  "zip archive has no '%s/data.pkl' (not written by "
                  "torch.save?)",
                  z.prefix[0] ? z.prefix : "<archive>");
    goto fail;
  }
  if (!z.seen_version) {
    rc = diag_set(d, LMAP_EFORMAT, "zip archive has no '%s/version' record",
                  z.prefix);
    goto fail;
  }
  if (!z.seen_data) {
    char key[80];
    rc =
        diag_set(d, LMAP_EFORMAT,
                 "zip archive has no '%s/data/%s' for the tensor's storage",
                 z.prefix, printable(key, sizeof key, m->st.key, m->st.keylen));
    goto fail;
  }
  rc = convert(&m->t, m->st.dtype, z.data, m->st.numel, out, d);
  out->legacy = 0;
fail:
  archive_read_free(a);
  free(z.owned_pkl);
  free(z.owned_data);
  if (utf8_locale != (locale_t)0)
    uselocale(old);
  return rc;
}

/* ------------------------------------------------------------------ */
/* the legacy format */

/* torch's MAGIC_NUMBER 0x1950a86a20f9469cfc6c as LONG1 stores it. */
static const uint8_t legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                         0x20, 0x6a, 0xa8, 0x50, 0x19};

static int parse_legacy(const uint8_t *buf, size_t len, vm *m, ptfile_out *out,
                        diag *d) {
  size_t pos = 0, used;
  int res, rc;
  const pval *v;

  if ((rc = vm_run(m, buf, len, 0, "the file (its magic-number pickle)", &res,
                   &used)) < 0)
    return rc;
  v = &m->vals[res];
  if (v->type != V_BIGINT || v->n != sizeof legacy_magic ||
      memcmp(v->u.s, legacy_magic, sizeof legacy_magic) != 0)
    return diag_set(d, LMAP_EFORMAT,
                    "not a torch.save file: the first pickle is a %s, not "
                    "torch's magic number",
                    vtype_name[v->type]);
  pos += used;

  if ((rc = vm_run(m, buf + pos, len - pos, pos,
                   "the file (its protocol pickle)", &res, &used)) < 0)
    return rc;
  v = &m->vals[res];
  if (v->type != V_INT || v->u.i != 1001)
    return diag_set(d, LMAP_EFORMAT,
                    "legacy protocol version is not 1001 (found a %s %lld)",
                    vtype_name[v->type],
                    v->type == V_INT ? (long long)v->u.i : 0LL);
  pos += used;

  if ((rc = vm_run(m, buf + pos, len - pos, pos,
                   "the file (its sys-info pickle)", &res, &used)) < 0)
    return rc;
  v = &m->vals[res];
  if (v->type != V_DICT)
    return diag_set(d, LMAP_EFORMAT, "legacy sys-info is a %s, not a dict",
                    vtype_name[v->type]);
  const pval *le = dict_get(m, v, "little_endian");
  if (le != NULL && !(le->type == V_BOOL && le->aux))
    return diag_set(d, LMAP_EFORMAT, "%s",
                    "file was written on a big-endian machine (only "
                    "little-endian is read)");
  pos += used;

  if ((rc = vm_run(m, buf + pos, len - pos, pos, "the file (its object pickle)",
                   &res, &used)) < 0)
    return rc;
  if (m->vals[res].type != V_TENSOR)
    return diag_set(d, LMAP_EFORMAT, "file holds a %s, not a tensor",
                    vtype_name[m->vals[res].type]);
  pos += used;

  if ((rc = vm_run(m, buf + pos, len - pos, pos,
                   "the file (its storage-key pickle)", &res, &used)) < 0)
    return rc;
  v = &m->vals[res];
  if (v->type != V_LIST || v->n != 1)
    return diag_set(d, LMAP_EFORMAT,
                    "legacy storage-key list is a %s of %u items (expected "
                    "a list of one key)",
                    vtype_name[v->type], v->n);
  const pval *key = item(m, v, 0);
  if (key->type != V_STR || key->n != m->st.keylen ||
      memcmp(key->u.s, m->st.key, key->n) != 0)
    return diag_set(d, LMAP_EFORMAT, "%s",
                    "legacy storage-key list does not name the tensor's "
                    "storage");
  pos += used;

  /* The storage: an 8-byte little-endian element count, then the data. */
  if (len - pos < 8)
    return diag_set(d, LMAP_EFORMAT,
                    "file ends before the storage's element count at byte "
                    "%zu (truncated?)",
                    pos);
  uint64_t count =
      (uint64_t)rd_le(buf + pos, 4) | (uint64_t)rd_le(buf + pos + 4, 4) << 32;
  pos += 8;
  if (count != (uint64_t)m->st.numel)
    return diag_set(d, LMAP_EFORMAT,
                    "legacy storage holds %llu elements but the pickle says "
                    "%lld",
                    (unsigned long long)count, (long long)m->st.numel);
  uint64_t bytes = count * dtypes[m->st.dtype].size; /* numel < 2^40 */
  if (bytes > len - pos)
    return diag_set(d, LMAP_EFORMAT,
                    "legacy storage needs %llu bytes but the file has %zu "
                    "left (truncated?)",
                    (unsigned long long)bytes, len - pos);
  if (bytes < len - pos)
    return diag_set(d, LMAP_EFORMAT,
                    "file has %zu unexpected bytes after the storage data",
                    len - pos - (size_t)bytes);
  rc = convert(&m->t, m->st.dtype, buf + pos, m->st.numel, out, d);
  out->legacy = 1;
  return rc;
}

/* ------------------------------------------------------------------ */

int ptfile_parse(const uint8_t *buf, size_t len, ptfile_out *out, diag *d) {
  vm m;
  m.d = d;
  m.have_storage = m.have_tensor = 0;
  int rc;
  if (len == 0)
    return diag_set(d, LMAP_EFORMAT, "%s", "file is empty");
  if (len >= 2 && buf[0] == 'P' && buf[1] == 'K')
    rc = parse_zip(buf, len, &m, out, d);
  else if (buf[0] == 0x80)
    rc = parse_legacy(buf, len, &m, out, d);
  else {
    char head[16];
    return diag_set(d, LMAP_EFORMAT,
                    "not a torch.save file (neither a zip nor a pickle; "
                    "starts with '%s')",
                    printable(head, sizeof head, buf, len < 8 ? len : 8));
  }
  return rc;
}

void ptfile_out_free(ptfile_out *out) {
  if (out == NULL)
    return;
  free(out->map.scores);
  free(out->map.classes);
  memset(out, 0, sizeof *out);
}
