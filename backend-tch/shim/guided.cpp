// See guided.h.

#include "guided.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/jit/passes/remove_mutation.h>

#include <vector>

namespace gradcam {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves the mask `x > 0`, not x: a copy_ written back into x (guide_relus' fallback) bumps x's
// version, which would make a saved x unusable in the backward.
struct GuidedRelu : torch::autograd::Function<GuidedRelu> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x) {
    ctx->save_for_backward({x.gt(0)});
    return x.clamp_min(0);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const at::Tensor positive = ctx->get_saved_variables()[0];
    const at::Tensor &g = grads[0];
    // As GuidedBackpropReLU: g * (x > 0) * (g > 0).
    return {g.mul(positive.logical_and(g.gt(0)))};
  }
};

void collect(torch::jit::Block *block, std::vector<torch::jit::Node *> &relus) {
  for (torch::jit::Node *node : block->nodes()) {
    if (node->kind() == c10::aten::relu || node->kind() == c10::aten::relu_) relus.push_back(node);
    for (torch::jit::Block *sub : node->blocks()) collect(sub, relus);
  }
}

}  // namespace

at::Tensor guided_relu(const at::Tensor &x) { return GuidedRelu::apply(x); }

std::pair<size_t, size_t> guide_relus(const std::shared_ptr<torch::jit::Graph> &graph) {
  torch::jit::RemoveTensorMutation(graph);
  std::vector<torch::jit::Node *> relus;
  collect(graph->block(), relus);
  const c10::Symbol guided = c10::Symbol::fromQualString("gradcam::guided_relu");
  size_t copied = 0;
  for (torch::jit::Node *node : relus) {
    torch::jit::Graph &g = *node->owningGraph();
    torch::jit::WithInsertPoint guard(node);
    torch::jit::Value *x = node->input(0);
    torch::jit::Value *out = g.insert(guided, {x});
    if (node->kind() == c10::aten::relu_) {
      out = g.insert(c10::aten::copy_, {x, out});
      ++copied;
    }
    node->output()->replaceAllUsesWith(out);
    node->destroy();
  }
  return {relus.size(), copied};
}

}  // namespace gradcam
