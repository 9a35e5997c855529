/* labelmap_validate and labelmap_id_check: each refusal names the entry. */
#include "core/labelmap.h"
#include "test.h"

int main(void) {
  float scores[4] = {1.5f, -2.0f, 3.0f, 0.25f};
  uint32_t classes[4] = {0, 1, 2, 3}; /* K=2, 1x2 grid */
  labelmap m = {.k = 2, .h = 1, .w = 2, .scores = scores, .classes = classes};
  diag d;
  ASSERT_EQ(labelmap_validate(&m, 4, &d), 0);

  /* Class index at the class count. */
  ASSERT_EQ(labelmap_validate(&m, 3, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "class index 3 at [1,1,0,1]");

  /* The same class twice in one cell. */
  classes[3] = 2;
  ASSERT_EQ(labelmap_validate(&m, 4, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "appears twice in cell (0,1)");
  classes[3] = 3;

  /* Non-finite and absurd scores. */
  scores[1] = NAN;
  ASSERT_EQ(labelmap_validate(&m, 4, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "score at [0,1,0,0] is NaN");
  scores[1] = -INFINITY;
  ASSERT_EQ(labelmap_validate(&m, 4, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "infinite");
  scores[1] = 1e38f;
  ASSERT_EQ(labelmap_validate(&m, 4, &d), LMAP_ERANGE);
  ASSERT_CONTAINS(d.msg, "beyond +-1e30");
  scores[1] = -1e30f;
  ASSERT_EQ(labelmap_validate(&m, 4, &d), 0);

  /* Ids. */
  ASSERT_EQ(labelmap_id_check("n04355338_22023", 15, &d), 0);
  ASSERT_EQ(labelmap_id_check("a.b+c:d-e", 9, &d), 0);
  ASSERT_EQ(labelmap_id_check("", 0, &d), LMAP_EBADID);
  ASSERT_CONTAINS(d.msg, "empty");
  ASSERT_EQ(labelmap_id_check("../etc", 6, &d), LMAP_EBADID);
  ASSERT_EQ(labelmap_id_check("-x", 2, &d), LMAP_EBADID);
  ASSERT_EQ(labelmap_id_check("a/b", 3, &d), LMAP_EBADID);
  ASSERT_CONTAINS(d.msg, "0x2f at offset 1");
  ASSERT_EQ(labelmap_id_check("a\0b", 3, &d), LMAP_EBADID);
  char long_id[LABELMAP_MAX_ID_LEN + 2];
  memset(long_id, 'a', sizeof long_id);
  ASSERT_EQ(labelmap_id_check(long_id, LABELMAP_MAX_ID_LEN, &d), 0);
  ASSERT_EQ(labelmap_id_check(long_id, LABELMAP_MAX_ID_LEN + 1, &d),
            LMAP_EBADID);
  ASSERT_CONTAINS(d.msg, "at most 255");
  TEST_DONE();
}
