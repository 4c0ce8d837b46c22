// nn.MultiheadAttention's fast path (taken under torch.no_grad, so in every trace of an eval model)
// is one fused op, aten::_native_multi_head_attention, which has no derivative in libtorch: the
// part of a model after the cut must compute it in differentiable ops instead. The rewrite follows
// the op's own definition (aten/src/ATen/native/transformers/attention.cpp):
//   q, k, v = linear(query | key | value, chunk(qkv_weight, 3), chunk(qkv_bias, 3)), split in heads
//   scores  = (q / sqrt(embed_dim / num_head)) @ k^T, masked with mask != 0 (mask_type 1: a key
//             padding mask (B, S); 0 and 2: broadcast as given) set to -inf
//   p       = softmax(scores, -1)         (a fully masked row is NaN, as in the op)
//   out     = linear(merge_heads(p @ v), proj_weight, proj_bias)
//   weights = p averaged over heads when average_attn_weights, else p; only when need_weights.

#include "attention.h"

#include <torch/csrc/jit/ir/constants.h>

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace gradcam {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// The argument positions of
// _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
//                              proj_weight, proj_bias, mask, need_weights, average_attn_weights,
//                              mask_type) -> (out, weights)
enum Arg { kQuery, kKey, kValue, kEmbedDim, kNumHead, kQkvWeight, kQkvBias, kProjWeight, kProjBias,
           kMask, kNeedWeights, kAverage, kMaskType, kArgs };

std::optional<int64_t> const_int(Value *v) {
  auto iv = torch::jit::toIValue(v);
  if (iv && iv->isInt()) return iv->toInt();
  return std::nullopt;
}

std::optional<bool> const_bool(Value *v) {
  auto iv = torch::jit::toIValue(v);
  if (iv && iv->isBool()) return iv->toBool();
  return std::nullopt;
}

bool rewrite(Node *node) {
  if (node->inputs().size() != kArgs || node->outputs().size() != 2) return false;
  const auto embed_dim = const_int(node->input(kEmbedDim));
  const auto heads = const_int(node->input(kNumHead));
  const auto need_weights = const_bool(node->input(kNeedWeights));
  const auto average = const_bool(node->input(kAverage));
  if (!embed_dim || !heads || !need_weights || !average || *heads <= 0 || *embed_dim % *heads) return false;
  Value *mask = node->input(kMask);
  const bool has_mask = !mask->mustBeNone();
  if (has_mask && !mask->type()->isSubtypeOf(*c10::TensorType::get())) return false;  // Optional at run time
  std::optional<int64_t> mask_type;
  if (!node->input(kMaskType)->mustBeNone()) {
    mask_type = const_int(node->input(kMaskType));
    if (!mask_type) return false;
  }
  // Without need_weights the op returns an undefined tensor, which nothing can stand in for.
  if (!*need_weights && node->output(1)->hasUses()) return false;

  Graph &g = *node->owningGraph();
  torch::jit::WithInsertPoint guard(node);
  auto thirds = [&](Value *t) {
    Node *unpack = g.insertNode(g.createListUnpack(g.insert(c10::aten::chunk, {t, 3, 0}), 3));
    return std::array<Value *, 3>{unpack->output(0), unpack->output(1), unpack->output(2)};
  };
  const auto w = thirds(node->input(kQkvWeight));
  const auto b = thirds(node->input(kQkvBias));
  // (B, T, D) -> (B, heads, T, D / heads)
  auto project = [&](Arg arg, size_t i) {
    Value *y = g.insert(c10::aten::linear, {node->input(arg), w[i], b[i]});
    y = g.insert(c10::aten::unflatten, {y, -1, c10::IValue(std::vector<int64_t>{*heads, -1})});
    return g.insert(c10::aten::transpose, {y, 1, 2});
  };
  Value *q = project(kQuery, 0);
  q = g.insert(c10::aten::mul, {q, 1.0 / std::sqrt(static_cast<double>(*embed_dim / *heads))});
  Value *k = project(kKey, 1);
  Value *v = project(kValue, 2);
  Value *scores = g.insert(c10::aten::matmul, {q, g.insert(c10::aten::transpose, {k, -2, -1})});
  if (has_mask) {
    Value *masked = g.insert(c10::aten::ne, {mask, 0});  // the op reads mask.to(bool)
    if (mask_type == 1) {  // key padding (B, S) -> (B, 1, 1, S)
      masked = g.insert(c10::aten::unsqueeze, {g.insert(c10::aten::unsqueeze, {masked, 1}), 2});
    }
    scores = g.insert(c10::aten::masked_fill, {scores, masked, -std::numeric_limits<double>::infinity()});
  }
  Value *p = g.insert(c10::aten::softmax, {scores, -1});
  Value *context = g.insert(c10::aten::transpose, {g.insert(c10::aten::matmul, {p, v}), 1, 2});
  context = g.insert(c10::aten::flatten, {context, 2});
  Value *out = g.insert(c10::aten::linear, {context, node->input(kProjWeight), node->input(kProjBias)});
  node->output(0)->replaceAllUsesWith(out);
  if (*need_weights) {
    Value *weights = *average ? g.insert(c10::aten::mean, {p, c10::IValue(std::vector<int64_t>{1})}) : p;
    node->output(1)->replaceAllUsesWith(weights);
  }
  node->destroy();
  return true;
}

void collect(Block *block, c10::Symbol kind, std::vector<Node *> &found) {
  for (Node *node : block->nodes()) {
    if (node->kind() == kind) found.push_back(node);
    for (Block *sub : node->blocks()) collect(sub, kind, found);
  }
}

}  // namespace

size_t unfuse_attention(Block *block) {
  static const c10::Symbol fused = c10::Symbol::fromQualString("aten::_native_multi_head_attention");
  std::vector<Node *> found;
  collect(block, fused, found);
  size_t rewritten = 0;
  for (Node *node : found) rewritten += rewrite(node) ? 1 : 0;
  return rewritten;
}

}  // namespace gradcam
