/*
 * Tests for ptfile: real torch.save() output in both formats and every
 * supported dtype and layout (tests/vectors/pt, written by make_fixtures.py)
 * must convert to exactly the values torch holds; each hostile fixture must
 * fail with its code and message; every truncation of a good file must fail
 * cleanly and byte flips must never crash (run under ASan/UBSan: each input
 * sits in an allocation of exactly its size). Pickles crafted here reach the
 * VM's limits. Runs with tests/ as the working directory.
 */
#include "import/ptfile.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#define DIR "vectors/pt/"

/* Reads a whole file into an allocation of exactly its size (1 byte for an
 * empty file, so the pointer is valid). */
static uint8_t *slurp(const char *name, size_t *len) {
  char path[256];
  snprintf(path, sizeof path, DIR "%s", name);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "cannot open %s (run from tests/)\n", path);
    exit(1);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  ASSERT(n >= 0);
  uint8_t *buf = malloc(n ? (size_t)n : 1);
  ASSERT(buf != NULL);
  ASSERT_EQ(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* memmem is a GNU extension: the C11 build has its own. */
static uint8_t *find(uint8_t *hay, size_t n, const void *needle, size_t k) {
  for (size_t i = 0; k <= n && i <= n - k; i++)
    if (memcmp(hay + i, needle, k) == 0)
      return hay + i;
  return NULL;
}

static uint8_t *dup_bytes(const uint8_t *src, size_t n) {
  uint8_t *b = malloc(n ? n : 1);
  ASSERT(b != NULL);
  memcpy(b, src, n);
  return b;
}

static const struct good {
  const char *name;
  uint32_t k, h, w;
  const char *dtype;
  int legacy, contiguous;
} goods[] = {
    {"zip_f32_contig_5x15x15", 5, 15, 15, "float32", 0, 1},
    {"zip_f32_transpose_5x18x18", 5, 18, 18, "float32", 0, 0},
    {"zip_f32_slice_3x7x11", 3, 7, 11, "float32", 0, 0},
    {"zip_f32_stride0_3x7x11", 3, 7, 11, "float32", 0, 0},
    {"zip_f16_contig_5x18x18", 5, 18, 18, "float16", 0, 1},
    {"zip_f16_planelast_3x7x11", 3, 7, 11, "float16", 0, 0},
    {"zip_f16_offset_5x15x15", 5, 15, 15, "float16", 0, 1},
    {"zip_bf16_contig_3x7x11", 3, 7, 11, "bfloat16", 0, 1},
    {"zip_bf16_cellmajor_5x15x15", 5, 15, 15, "bfloat16", 0, 0},
    {"zip_bf16_slice_3x7x11", 3, 7, 11, "bfloat16", 0, 0},
    {"zip_f64_transpose_3x7x11", 3, 7, 11, "float64", 0, 0},
    {"zip_f32_buffer_3x7x11", 3, 7, 11, "float32", 0, 1},
    {"zip_f32_utf8name_3x7x11", 3, 7, 11, "float32", 0, 1},
    {"zip_f32_deflated_3x7x11", 3, 7, 11, "float32", 0, 1},
    {"legacy_f32_contig_3x7x11", 3, 7, 11, "float32", 1, 1},
    {"legacy_f32_planelast_5x15x15", 5, 15, 15, "float32", 1, 0},
    {"legacy_f32_offset_3x7x11", 3, 7, 11, "float32", 1, 1},
    {"legacy_f16_contig_5x15x15", 5, 15, 15, "float16", 1, 1},
    {"legacy_f16_transpose_5x18x18", 5, 18, 18, "float16", 1, 0},
    {"legacy_f16_slice_3x7x11", 3, 7, 11, "float16", 1, 0},
    {"legacy_bf16_contig_3x7x11", 3, 7, 11, "bfloat16", 1, 1},
    {"legacy_bf16_cellmajor_3x7x11", 3, 7, 11, "bfloat16", 1, 0},
    {"legacy_bf16_offset_3x7x11", 3, 7, 11, "bfloat16", 1, 1},
    {"legacy_f64_contig_3x7x11", 3, 7, 11, "float64", 1, 1},
};

static const struct bad {
  const char *name;
  int code;
  const char *msg;
} bads[] = {
    {"bad_trunc_zip.pt", LMAP_EFORMAT, "zip archive cannot be opened"},
    {"bad_trunc_legacy.pt", LMAP_EFORMAT,
     "legacy storage needs 924 bytes but the file has 824 left"},
    {"bad_shape_3d.pt", LMAP_EFORMAT,
     "tensor has shape [3,7,11] (expected [2, K, H, W])"},
    {"bad_shape_2x5x15.pt", LMAP_EFORMAT,
     "tensor has shape [2,5,15] (expected [2, K, H, W])"},
    {"bad_shape_3planes.pt", LMAP_EFORMAT, "tensor has shape [3,3,7,11]"},
    {"bad_shape_k0.pt", LMAP_EFORMAT, "tensor has shape [2,0,7,11]"},
    {"bad_nan_score.pt", LMAP_ERANGE, "score at [0,1,3,4] is NaN"},
    {"bad_inf_score.pt", LMAP_ERANGE, "score at [0,2,6,2] is -Inf"},
    {"bad_class_frac.pt", LMAP_ERANGE,
     "class index 2.5 at [1,0,0,0] is not an integer"},
    {"bad_class_neg.pt", LMAP_ERANGE,
     "class index -1 at [1,2,3,4] is negative"},
    {"bad_class_big.pt", LMAP_ERANGE,
     "class index 16777216 at [1,2,1,2] is not below 16777216"},
    {"bad_class_nan.pt", LMAP_ERANGE,
     "class index NaN at [1,1,1,1] is not finite"},
    {"bad_int64.pt", LMAP_EFORMAT,
     "tensor dtype int64 (torch.LongStorage) is not supported"},
    {"bad_dict.pt", LMAP_EFORMAT,
     "'bad_dict/data.pkl' holds a dict, not a tensor"},
    {"bad_global_os_system.pt", LMAP_EFORMAT,
     "pickle global 'os.system' is not allowed (at byte 2 of "
     "bad_global_os_system/data.pkl)"},
    {"bad_opcode_stack_global.pt", LMAP_EFORMAT,
     "pickle opcode 0x93 (STACK_GLOBAL) is not supported"},
    {"bad_opcode_unknown.pt", LMAP_EFORMAT,
     "pickle opcode 0xff (not a pickle opcode) is not supported"},
    {"bad_stride_oob.pt", LMAP_EFORMAT,
     "strides [231,77,11,2] and offset 0 reaches past its storage of 462"},
    {"bad_byteorder_big.pt", LMAP_EFORMAT,
     "'b/byteorder' says the data is "
     "'big'-endian"},
    {"bad_zip_no_pkl.pt", LMAP_EFORMAT, "zip archive has no 'z/data.pkl'"},
    {"bad_zip_no_version.pt", LMAP_EFORMAT,
     "zip archive has no 'z/version' record"},
    {"bad_zip_no_data.pt", LMAP_EFORMAT,
     "zip archive has no 'z/data/0' for the tensor's storage"},
    {"bad_zip_version_99.pt", LMAP_EFORMAT,
     "'z/version' holds unsupported format version '99'"},
    {"bad_zip_data_first.pt", LMAP_EFORMAT,
     "zip entry 'z/data/0' comes before 'z/data.pkl'"},
    {"bad_zip_dup_pkl.pt", LMAP_EFORMAT,
     "zip entry 'z/data.pkl' appears twice"},
    {"bad_zip_no_folder.pt", LMAP_EFORMAT,
     "zip entry 'data.pkl' is not inside an archive folder"},
    {"bad_text.pt", LMAP_EFORMAT, "not a torch.save file"},
    {"bad_empty.pt", LMAP_EFORMAT, "file is empty"},
};

/* Every value of the parse equals the expected [2, K, H, W] float32 dump,
 * read in the cell-major layout. */
static void check_values(const struct good *g, const ptfile_out *o) {
  char name[128];
  size_t n;
  snprintf(name, sizeof name, "%s.f32", g->name);
  uint8_t *raw = slurp(name, &n);
  size_t entries = (size_t)g->k * g->h * g->w;
  ASSERT_EQ(n, 2 * entries * 4);
  for (uint32_t kk = 0; kk < g->k; kk++)
    for (uint32_t r = 0; r < g->h; r++)
      for (uint32_t q = 0; q < g->w; q++) {
        size_t src = ((size_t)kk * g->h + r) * g->w + q;
        size_t dst = ((size_t)r * g->w + q) * g->k + kk;
        float s, c;
        memcpy(&s, raw + 4 * src, 4);
        memcpy(&c, raw + 4 * (entries + src), 4);
        /* Bit-exact: every dtype converts to float32 without rounding. */
        ASSERT(memcmp(&o->map.scores[dst], &s, 4) == 0);
        ASSERT_EQ(o->map.classes[dst], (uint32_t)c);
        ASSERT(c == (float)(uint32_t)c);
      }
  free(raw);
}

static void test_good(ptfile_out *o) {
  for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
    const struct good *g = &goods[i];
    char name[128];
    size_t n;
    snprintf(name, sizeof name, "%s.pt", g->name);
    uint8_t *buf = slurp(name, &n);
    diag d = {0};
    int rc = ptfile_parse(buf, n, o, &d);
    if (rc != 0)
      fprintf(stderr, "%s: %s\n", name, d.msg);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(o->map.k, g->k);
    ASSERT_EQ(o->map.h, g->h);
    ASSERT_EQ(o->map.w, g->w);
    ASSERT_STR(o->dtype, g->dtype);
    ASSERT_EQ(o->legacy, g->legacy);
    ASSERT_EQ(o->contiguous, g->contiguous);
    ASSERT(o->cap >= labelmap_entries(&o->map));
    check_values(g, o);
    free(buf);
  }
}

static void test_bad(ptfile_out *o) {
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    size_t n;
    uint8_t *buf = slurp(bads[i].name, &n);
    diag d = {0};
    int rc = ptfile_parse(buf, n, o, &d);
    if (rc != bads[i].code)
      fprintf(stderr, "%s: rc %d: %s\n", bads[i].name, rc, d.msg);
    ASSERT_EQ(rc, bads[i].code);
    ASSERT_EQ(d.code, bads[i].code);
    ASSERT_CONTAINS(d.msg, bads[i].msg);
    free(buf);
  }
  /* A NULL diag is allowed. */
  ASSERT_EQ(ptfile_parse((const uint8_t *)"x", 1, o, NULL), LMAP_EFORMAT);
}

/* Every proper prefix of a good file is refused as malformed: the zip loses
 * its central directory, the legacy stream its last bytes. Small files are
 * cut at every length, bigger ones at every length of the first 1 KiB and
 * the last 300 bytes and every 7th in between. */
static void test_truncations(ptfile_out *o) {
  long cuts = 0;
  for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
    char name[128];
    size_t n;
    snprintf(name, sizeof name, "%s.pt", goods[i].name);
    uint8_t *full = slurp(name, &n);
    for (size_t cut = 0; cut < n; cut++) {
      if (n > 3000 && cut > 1024 && cut + 300 < n && cut % 7 != 0)
        continue;
      uint8_t *buf = dup_bytes(full, cut);
      diag d = {0};
      int rc = ptfile_parse(buf, cut, o, &d);
      if (rc != LMAP_EFORMAT)
        fprintf(stderr, "%s cut at %zu: rc %d %s\n", name, cut, rc, d.msg);
      ASSERT_EQ(rc, LMAP_EFORMAT);
      ASSERT(d.msg[0] != '\0');
      free(buf);
      cuts++;
    }
    free(full);
  }
  printf("truncations: %ld prefixes refused\n", cuts);
}

/* Flipped bytes never crash and never pass silently as something odd: the
 * result is success (a flip in a legacy value or in zip padding) within the
 * map bounds, or a clean EFORMAT/ERANGE with a message. (Zip data is
 * CRC-checked: test_zip_crc shows a flip there is an error.) */
static void test_flips(ptfile_out *o) {
  long flips = 0, refused = 0;
  static const uint8_t masks[] = {0xff, 0x01, 0x80};
  for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
    char name[128];
    size_t n;
    snprintf(name, sizeof name, "%s.pt", goods[i].name);
    uint8_t *full = slurp(name, &n);
    for (size_t pos = 0; pos < n; pos++) {
      if (n > 3000 && pos > 1024 && pos + 300 < n && pos % 5 != 0)
        continue;
      for (size_t m = 0; m < sizeof masks; m++) {
        uint8_t *buf = dup_bytes(full, n);
        buf[pos] ^= masks[m];
        diag d = {0};
        int rc = ptfile_parse(buf, n, o, &d);
        if (rc != 0 && rc != LMAP_EFORMAT && rc != LMAP_ERANGE)
          fprintf(stderr, "%s flip at %zu: rc %d %s\n", name, pos, rc, d.msg);
        ASSERT(rc == 0 || rc == LMAP_EFORMAT || rc == LMAP_ERANGE);
        if (rc == 0) {
          ASSERT(labelmap_entries(&o->map) <= o->cap);
          ASSERT(o->map.k >= 1 && o->map.k <= LABELMAP_MAX_K);
          for (size_t e = 0; e < labelmap_entries(&o->map); e++)
            ASSERT(o->map.classes[e] < LABELMAP_MAX_CLASSES);
        } else {
          ASSERT(d.msg[0] != '\0');
          refused++;
        }
        free(buf);
        flips++;
      }
    }
    free(full);
  }
  printf("flips: %ld parsed, %ld refused cleanly\n", flips, refused);
}

/* In a zip every byte of the storage entry is covered by the CRC-32. */
static void test_zip_crc(ptfile_out *o) {
  size_t n;
  uint8_t *buf = slurp("zip_f32_contig_5x15x15.pt", &n);
  /* The storage is 64-byte aligned after data.pkl: at 320 in torch 1.13. */
  ASSERT(n > 320 + 9000);
  buf[320 + 4500] ^= 0x10;
  diag d = {0};
  ASSERT_EQ(ptfile_parse(buf, n, o, &d), LMAP_EFORMAT);
  ASSERT_CONTAINS(d.msg, "zip entry 'zip_f32_contig_5x15x15/data/0' is "
                         "truncated or damaged");
  free(buf);
}

/* Legacy files: the torch prefix (magic, protocol, sys-info pickles) of a
 * good file followed by a crafted object pickle, to reach the VM's limits
 * and refusals. */
static size_t legacy_prefix(const uint8_t *buf, size_t n) {
  /* The sys-info pickle ends "...K\x04uu." (long: 4, two SETITEMS, STOP). */
  for (size_t i = 0; i + 5 <= n; i++)
    if (memcmp(buf + i, "K\x04uu.", 5) == 0)
      return i + 5;
  ASSERT(0);
  return 0;
}

static void expect_crafted(ptfile_out *o, const uint8_t *prefix, size_t plen,
                           const char *pkl, size_t len, const char *msg) {
  uint8_t *buf = malloc(plen + len);
  ASSERT(buf != NULL);
  memcpy(buf, prefix, plen);
  memcpy(buf + plen, pkl, len);
  diag d = {0};
  int rc = ptfile_parse(buf, plen + len, o, &d);
  if (rc != LMAP_EFORMAT || strstr(d.msg, msg) == NULL)
    fprintf(stderr, "crafted pickle expecting '%s': rc %d: %s\n", msg, rc,
            d.msg);
  ASSERT_EQ(rc, LMAP_EFORMAT);
  ASSERT_CONTAINS(d.msg, msg);
  free(buf);
}

#define CRAFT(o, pre, plen, lit, msg)                                          \
  expect_crafted(o, pre, plen, lit, sizeof lit - 1, msg)

static void test_vm_limits(ptfile_out *o) {
  size_t n;
  uint8_t *good = slurp("legacy_f32_contig_3x7x11.pt", &n);
  size_t plen = legacy_prefix(good, n);
  char big[4096];

  /* Stack, marks, objects and memo are bounded. */
  memcpy(big, "\x80\x02", 2);
  memset(big + 2, 'N', 100);
  expect_crafted(o, good, plen, big, 102, "pickle stack deeper than 64");
  memset(big + 2, '(', 100);
  expect_crafted(o, good, plen, big, 102, "pickle MARKs nested deeper than 32");
  big[2] = ']';
  for (int i = 0; i < 600; i++)
    memcpy(big + 3 + 2 * i, "Na", 2);
  expect_crafted(o, good, plen, big, 3 + 1200,
                 "pickle holds more than 512 objects");
  CRAFT(o, good, plen, "\x80\x02Nr\x00\x01\x00\x00", "memo index 256 is over");
  CRAFT(o, good, plen, "\x80\x02h\x05", "pickle memo index 5 is not set");
  CRAFT(o, good, plen, "\x80\x02j\xff\xff\xff\xff",
        "pickle memo index 4294967295 is not set");

  /* Lengths are checked against the bytes that remain. */
  CRAFT(o, good, plen, "\x80\x02X\xff\xff\xff\x7f",
        "pickle ends inside opcode 0x58 (BINUNICODE)");
  CRAFT(o, good, plen, "\x80\x02T\xff\xff\xff\xff",
        "BINSTRING has negative length");
  CRAFT(o, good, plen, "\x80\x02\x8a\x09\x01",
        "pickle ends inside opcode 0x8a (LONG1)");
  CRAFT(o, good, plen, "\x80\x02\x95\x00\x00\x00\x00\x01\x00\x00\x00N.",
        "pickle ends inside opcode 0x95 (FRAME)");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ctorch._utils",
        "pickle ends inside opcode "
        "0x63 (GLOBAL)");
  CRAFT(o, good, plen, "\x80\x02N", "pickle ends without STOP");

  /* Stack discipline. */
  CRAFT(o, good, plen, "\x80\x02NN.", "pickle stops with 2 objects");
  CRAFT(o, good, plen, "\x80\x02.", "pickle stops with 0 objects");
  CRAFT(o, good, plen, "\x80\x02(R",
        "pickle opcode REDUCE pops an empty "
        "stack");
  CRAFT(o, good, plen, "\x80\x02t", "pickle opcode TUPLE without a MARK");
  CRAFT(o, good, plen, "\x80\x02N(\x86", "TUPLE2 pops an empty stack");
  CRAFT(o, good, plen, "\x80\x02(Nu",
        "pickle opcode SETITEMS has no "
        "container");
  CRAFT(o, good, plen, "\x80\x02N(NNu", "SETITEMS applied to a None");
  CRAFT(o, good, plen, "\x80\x02}(Nu", "SETITEMS with an odd item count");
  CRAFT(o, good, plen, "\x80\x02]NNs", "SETITEM applied to a list");

  /* Refused opcodes, globals and calls. */
  CRAFT(o, good, plen, "\x80\x06", "pickle protocol 6 is not supported");
  CRAFT(o, good, plen, "\x80\x02N0",
        "pickle opcode 0x30 (POP) is not "
        "supported");
  CRAFT(o, good, plen, "\x80\x02\x8c\x01x", "0x8c (SHORT_BINUNICODE) is not");
  CRAFT(o, good, plen,
        "\x80\x02"
        "cbuiltins\neval\n",
        "pickle global 'builtins.eval' is not allowed");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ctorch\nload\n",
        "pickle global 'torch.load' is not allowed");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ctorch._utils\n_rebuild_parameter\n",
        "'torch._utils._rebuild_parameter' is not allowed");
  CRAFT(o, good, plen,
        "\x80\x02"
        "cos\nsys\x01tem\n",
        "pickle global 'os.sys?tem' is not allowed");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ctorch\nFloatStorage\n)R",
        "pickle calls torch.FloatStorage, which is not allowed");
  CRAFT(o, good, plen, "\x80\x02N)R", "pickle calls a None");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ccollections\nOrderedDict\nNR",
        "call arguments are a None");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ccollections\nOrderedDict\n(Nt",
        "ends without STOP");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ccollections\nOrderedDict\n(NtR",
        "pickle calls OrderedDict with arguments");
  CRAFT(o, good, plen,
        "\x80\x02}(X\x01\x00\x00\x00"
        "aNu}(X\x01\x00\x00\x00"
        "bNub",
        "pickle BUILD sets a dict state on a dict");
  CRAFT(o, good, plen, "\x80\x02NQ", "pickle persistent id is a None");
  CRAFT(o, good, plen,
        "\x80\x02"
        "ccollections\nOrderedDict\n)R.",
        "file holds a dict, not a tensor");

  /* Persistent ids and _rebuild_tensor_v2 arguments. */
#define PID(numel, view)                                                       \
  "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"           \
  "0X\x03\x00\x00\x00"                                                         \
  "cpu" numel view "tQ"
#define REBUILD "ctorch._utils\n_rebuild_tensor_v2\n("
#define HOOKS "ccollections\nOrderedDict\n)R"
  CRAFT(o, good, plen, "\x80\x02" PID("J\xff\xff\xff\xff", ""),
        "malformed key, location or size");
  CRAFT(o, good, plen, "\x80\x02" PID("K\x01", "(NNNt"),
        "storage views (legacy view_metadata) are not supported");
  CRAFT(o, good, plen, "\x80\x02" PID("K\x01", "N") PID("K\x01", "N"),
        "references more than one storage");
  CRAFT(o, good, plen,
        "\x80\x02(X\x07\x00\x00\x00storageNX\x01\x00\x00\x00"
        "0X\x03\x00\x00\x00"
        "cpuK\x01tQ",
        "pickle storage type is not a torch storage class");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "K\x00(K\x01t(K\x01t" HOOKS "tR.",
        "_rebuild_tensor_v2 called with 5 arguments");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "J\xff\xff\xff\xff(K\x01t(K\x01t"
                                             "\x89" HOOKS "tR.",
        "tensor storage offset is not an int >= 0");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "K\x00(K\x01K\x01t(K\x01t"
                                             "\x89" HOOKS "tR.",
        "tensor has 2 sizes but 1 strides");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "K\x00(K\x01t(Nt\x89" HOOKS "tR.",
        "tensor stride holds a None");
  CRAFT(
      o, good, plen,
      "\x80\x02" REBUILD PID(
          "K\x01", "N") "K\x00(K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01t("
                        "t\x89" HOOKS "tR.",
      "tensor has 9 dimensions");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "K\x00(K\x01t(K\x01tN" HOOKS "tR.",
        "tensor requires_grad is not a bool");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "K\x00(K\x01t(K\x01t\x89"
                                             "}(NNutR.",
        "tensor has backward hooks");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD PID("K\x01", "N") "K\x00(K\x01t(K\x01t\x89" HOOKS
                                             "}(NNutR.",
        "tensor carries Python metadata");
  CRAFT(o, good, plen,
        "\x80\x02" REBUILD "NK\x00(K\x01t(K\x01t\x89" HOOKS "tR.",
        "tensor storage is a None");

  /* The legacy trailer: key list and storage bytes. */
  uint8_t *more = malloc(n + 3);
  ASSERT(more != NULL);
  memcpy(more, good, n);
  memcpy(more + n, "abc", 3);
  diag d = {0};
  ASSERT_EQ(ptfile_parse(more, n + 3, o, &d), LMAP_EFORMAT);
  ASSERT_CONTAINS(d.msg, "file has 3 unexpected bytes after the storage data");
  free(more);
  /* sys_info little_endian False (NEWTRUE -> NEWFALSE). */
  more = dup_bytes(good, n);
  uint8_t *le = find(more, n, "little_endian", 13);
  ASSERT(le != NULL && le[13] == 'q' && le[15] == 0x88);
  le[15] = 0x89;
  ASSERT_EQ(ptfile_parse(more, n, o, &d), LMAP_EFORMAT);
  ASSERT_CONTAINS(d.msg, "written on a big-endian machine");
  free(more);
  /* Another key in the storage-key list. */
  more = dup_bytes(good, n);
  /* The key's second occurrence, after the object pickle's. */
  static const char keyop[] = "X\x0f\x00\x00\x00"
                              "140000000000000";
  uint8_t *key = find(more + plen, n - plen, keyop, 20);
  ASSERT(key != NULL);
  key = find(key + 20, n - (size_t)(key + 20 - more), keyop, 20);
  ASSERT(key != NULL);
  key[19] = '1';
  ASSERT_EQ(ptfile_parse(more, n, o, &d), LMAP_EFORMAT);
  ASSERT_CONTAINS(d.msg, "does not name the tensor's storage");
  /* The element count before the data. */
  memcpy(more, good, n);
  size_t count_at = (size_t)(key - more) + 20 + 4; /* q\x01 a . */
  ASSERT_EQ(more[count_at] | more[count_at + 1] << 8, 3 * 7 * 11 * 2);
  more[count_at]++;
  ASSERT_EQ(ptfile_parse(more, n, o, &d), LMAP_EFORMAT);
  ASSERT_CONTAINS(d.msg, "legacy storage holds 463 elements but the pickle "
                         "says 462");
  free(more);
  free(good);
}

/* One ptfile_out across shapes: the arrays grow and are reused. */
static void test_reuse(void) {
  ptfile_out o;
  memset(&o, 0, sizeof o);
  size_t n;
  uint8_t *small = slurp("zip_f32_slice_3x7x11.pt", &n);
  ASSERT_EQ(ptfile_parse(small, n, &o, NULL), 0);
  ASSERT_EQ(o.cap, 3 * 7 * 11);
  free(small);
  uint8_t *big = slurp("zip_f16_contig_5x18x18.pt", &n);
  ASSERT_EQ(ptfile_parse(big, n, &o, NULL), 0);
  ASSERT_EQ(o.cap, 5 * 18 * 18);
  free(big);
  small = slurp("legacy_f32_contig_3x7x11.pt", &n);
  ASSERT_EQ(ptfile_parse(small, n, &o, NULL), 0);
  ASSERT_EQ(o.cap, 5 * 18 * 18);
  ASSERT_EQ(labelmap_entries(&o.map), 3 * 7 * 11);
  free(small);
  ptfile_out_free(&o);
  ASSERT(o.map.scores == NULL && o.cap == 0);
  ptfile_out_free(&o);
  ptfile_out_free(NULL);
}

int main(void) {
  ptfile_out o;
  memset(&o, 0, sizeof o);
  test_good(&o);
  test_bad(&o);
  test_zip_crc(&o);
  test_vm_limits(&o);
  test_reuse();
  test_truncations(&o);
  test_flips(&o);
  ptfile_out_free(&o);
  TEST_DONE();
}
