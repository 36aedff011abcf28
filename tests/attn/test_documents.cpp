// attn::Documents: the host description of packed documents (ids, document of a position,
// which position ranges share a document) and its errors.
#include <gtest/gtest.h>

#include "attn/documents.h"
#include "core/error.h"

using namespace lctx;
using attn::Documents;

namespace {

TEST(Documents, IdsAndDocumentOfAPosition) {
  const Documents d(10, {{0, 1, 4}, {0}});
  EXPECT_EQ(d.ids(), (std::vector<int32_t>{0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t p = 0; p < 10; ++p) EXPECT_EQ(d.doc_of(b, p), d.ids()[b * 10 + p]) << b << " " << p;
}

TEST(Documents, AttentionSpanCountsPairsPerToken) {
  EXPECT_DOUBLE_EQ(Documents(12, {{0}}).attention_span(), 12.0);
  EXPECT_DOUBLE_EQ(Documents(12, {{0, 4, 8}}).attention_span(), 4.0);
  EXPECT_DOUBLE_EQ(Documents(12, {{0, 4, 8}, {0}}).attention_span(), 8.0);  // (48 / 12 + 144 / 12) / 2
}

TEST(Documents, ShareDocumentInAnyRow) {
  const Documents one_row(12, {{0, 4, 8}});
  EXPECT_TRUE(one_row.share_document(4, 6, 5, 8));   // both in document 1
  EXPECT_FALSE(one_row.share_document(8, 12, 0, 8));  // queries in 2, keys in 0 and 1
  EXPECT_TRUE(one_row.share_document(7, 9, 0, 8));    // position 7 is in document 1
  EXPECT_FALSE(one_row.share_document(3, 3, 0, 12));  // an empty range shares nothing
  const Documents two_rows(12, {{0, 4, 8}, {0}});
  EXPECT_TRUE(two_rows.share_document(8, 12, 0, 8));  // the second row is one document
}

TEST(Documents, RejectsBadStarts) {
  for (const auto& starts : std::vector<std::vector<std::vector<int64_t>>>{{{}}, {{1, 4}}, {{0, 4, 4}}, {{0, 12}}}) {
    try {
      Documents d(12, starts);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("Documents: row 0"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Documents(0, {{0}}), Error);
}

}  // namespace
