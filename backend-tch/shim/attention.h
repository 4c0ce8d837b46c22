// Rewrites fused attention ops that libtorch cannot differentiate into ops it can.
#pragma once

#include <torch/csrc/jit/ir/ir.h>

#include <cstddef>

namespace gradcam {

// Replaces every aten::_native_multi_head_attention in `block` (and its sub-blocks) by the same
// computation in differentiable ops: q/k/v in-projection, softmax(q k^T / sqrt(d) masked), its
// product with v, out-projection, and the attention weights when the graph reads them. This is what
// nn.MultiheadAttention computes on its unfused path, the one PyTorch autograd takes. A call whose
// head count, flags or mask kind are not constants is left as it is. Returns how many were
// rewritten.
size_t unfuse_attention(torch::jit::Block *block);

}  // namespace gradcam
