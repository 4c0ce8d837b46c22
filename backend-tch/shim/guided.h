// Guided backpropagation in TorchScript graphs: the guided ReLU op and the rewrite that puts it in
// place of every ReLU.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/jit/ir/ir.h>

#include <cstddef>
#include <memory>

namespace gradcam {

// The op `gradcam::guided_relu(Tensor x) -> Tensor` (registered in shim.cpp): relu(x) forward; its
// backward passes `grad * (x > 0) * (grad > 0)`, pytorch-grad-cam's GuidedBackpropReLU.
at::Tensor guided_relu(const at::Tensor &x);

// Replaces every `aten::relu` and `aten::relu_` of `graph` (sub-blocks included) by
// `gradcam::guided_relu`. Every ReLU is guided, the definition of guided backprop (Springenberg et
// al.); pytorch-grad-cam swaps `nn.ReLU` modules only, which differs for functional `F.relu` calls
// (torchvision DenseNet's last one). ReLU6, LeakyReLU, GELU... stay as they are, as there.
// In-place ReLUs become out-of-place where libtorch's RemoveTensorMutation proves it safe (run on
// the whole graph first, so that `add_` before a `relu_` goes too); any other `relu_(y)` becomes
// `y.copy_(guided_relu(y))`, which writes y as relu_ did. Returns (ReLUs guided, of them written
// back with copy_).
std::pair<size_t, size_t> guide_relus(const std::shared_ptr<torch::jit::Graph> &graph);

}  // namespace gradcam
