// The part of the tch backend that tch cannot do: reach inside a TorchScript module.
//
// tch's CModule has no access to submodules, so this shim loads the module itself and rewrites its
// `forward` graph. Every `prim::CallMethod` on a submodule is inlined, recording which Value is the
// output of which module path (its first call, as pytorch-grad-cam's hooks see it);
// constant control flow (`if attn_mask is not None`, `if self.training`) is then folded away.
// From that one inlined graph it builds small GraphFunctions:
//   probe   (self, x)         -> (logits, out_1, ..., out_n)   every layer's output, for shapes
//   capture (self, x)         -> (logits, activation)          activation is a LEAF that requires grad
//   replace (self, x, act)    -> logits                        the layer's output replaced by `act`
//   forward (self, x)         -> logits                        the whole model, for inference
//   input   (self, x)         -> (logits, input)               input is a LEAF that requires grad;
//                                                               plain or guided ReLUs (guided.cpp)
//   full    (self, x)         -> (logits, input, out_i.., bias_i..)   `input`, with the output and
//                                                               bias of every FullGrad bias layer
// `capture` is two graphs cut at the layer. The part before the cut never needs autograd, so it is
// frozen and optimized for inference as torch.jit.optimize_for_inference does (weights as
// constants, conv-BN folding, oneDNN on the CPU). The part after it starts from the layer's output
// made a leaf that requires grad; as no parameter requires grad, autograd records only that part,
// so one forward gives what the backward needs, and the backward never goes below the layer. Fused
// ops without a derivative are rewritten there into ops with one (attention.cpp).
// `replace` and `forward` never need autograd and are optimized whole. `input` differentiates the
// whole forward down to the input, so none of it is frozen or optimized (oneDNN tensors have no
// autograd); as in `capture`, no parameter requires grad, so autograd records only what the input
// reaches. Its guided variant replaces every ReLU by the op `gradcam::guided_relu`, registered here
// (this file is always linked, so its static registration is never dropped).
//
// The C API passes tensors as `at::Tensor*` (tch's `C_tensor`); strings and errors are malloc'ed
// and freed by gc_free_string. Every function returns NULL on success or an error message.

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/frozen_conv_add_relu_fusion.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/csrc/jit/passes/frozen_linear_transpose.h>
#include <torch/csrc/jit/passes/frozen_ops_to_mkldnn.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/shape_analysis.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/library.h>
#include <torch/script.h>

#include "attention.h"
#include "guided.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

using torch::jit::Graph;
using torch::jit::GraphFunction;
using torch::jit::Node;
using torch::jit::Value;

namespace {

char *dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

#define GC_TRY(...)                                                                                   \
  try {                                                                                                \
    __VA_ARGS__;                                                                                       \
    return nullptr;                                                                                    \
  } catch (const c10::Error &e) {                                                                      \
    return dup(e.what_without_backtrace());                                                            \
  } catch (const std::exception &e) {                                                                  \
    return dup(e.what());                                                                              \
  }

// The output of one module call inside the inlined graph.
struct Record {
  std::string path;
  Value *value;
};

// The module's forward graph with every submodule call inlined, plus each module's output.
struct Inlined {
  std::shared_ptr<Graph> graph;
  std::vector<Record> records;  // (module path, output) of calls, in call order
};

std::string join(const std::string &parent, const std::string &child) {
  return parent.empty() ? child : parent + "." + child;
}

// Finds the first CallMethod on a known submodule in `block` (recursively), filling `paths` with the
// module path of every module-typed value on the way.
Node *next_call(torch::jit::Block *block, std::unordered_map<Value *, std::string> &paths) {
  for (Node *node : block->nodes()) {
    if (node->kind() == c10::prim::GetAttr) {
      auto parent = paths.find(node->input(0));
      auto cls = node->output()->type()->cast<c10::ClassType>();
      if (parent != paths.end() && cls && cls->is_module()) {
        paths[node->output()] = join(parent->second, node->s(c10::attr::name));
      }
    } else if (node->kind() == c10::prim::CallMethod && paths.count(node->input(0))) {
      return node;
    }
    for (torch::jit::Block *sub : node->blocks()) {
      if (Node *found = next_call(sub, paths)) return found;
    }
  }
  return nullptr;
}

// Replaces reads of plain bool/int/float module attributes (`self.training`, flags) by constants.
void fold_attributes(torch::jit::Block *block, std::unordered_map<Value *, std::string> &paths,
                     const std::map<std::string, torch::jit::Module> &modules) {
  // (called on one method's graph: `paths` starts with its self)
  for (auto it = block->nodes().begin(); it != block->nodes().end(); ++it) {
    Node *node = *it;
    if (node->kind() == c10::prim::GetAttr && paths.count(node->input(0))) {
      const std::string parent = paths[node->input(0)];
      const std::string name = node->s(c10::attr::name);
      auto cls = node->output()->type()->cast<c10::ClassType>();
      if (cls && cls->is_module()) {
        paths[node->output()] = join(parent, name);
      } else {
        c10::IValue v = modules.at(parent).attr(name);
        if (v.isBool() || v.isInt() || v.isDouble()) {
          torch::jit::WithInsertPoint guard(node);
          node->output()->replaceAllUsesWith(node->owningGraph()->insertConstant(v));
        }
      }
    }
    for (torch::jit::Block *sub : node->blocks()) fold_attributes(sub, paths, modules);
  }
}

using Modules = std::map<std::string, torch::jit::Module>;

// A module's method graph, copied, with its attributes folded and constant `if`s removed, so that
// a module output selected by a flag (`if self.has_skip:`) is a plain value once inlined.
std::shared_ptr<Graph> simplified(const std::shared_ptr<Graph> &graph, const std::string &path,
                                  const Modules &modules) {
  std::shared_ptr<Graph> copy = graph->copy();
  std::unordered_map<Value *, std::string> paths{{copy->inputs()[0], path}};
  fold_attributes(copy->block(), paths, modules);
  torch::jit::ConstantPropagation(copy);
  return copy;
}

// The logits of a forward that returns a tuple: its first element when that is a tensor
// (torchvision's scripted GoogLeNet and Inception3 return (logits, aux2, aux1) even in eval mode).
c10::TypePtr logits_of_tuple(const c10::TypePtr &type) {
  auto tuple = type->cast<c10::TupleType>();
  if (!tuple || tuple->elements().empty()) return nullptr;
  const c10::TypePtr &first = tuple->elements()[0];
  return first->isSubtypeOf(*c10::TensorType::get()) ? first : nullptr;
}

// `forward`'s graph with extra arguments (`attn_mask=None`, `is_causal=False`) fixed to their
// defaults, so the graph takes (self, x) and constant propagation can fold what they control;
// returning the logits only when it returns a tuple.
std::shared_ptr<Graph> forward_graph(const torch::jit::Module &module) {
  torch::jit::Method forward = module.get_method("forward");
  std::shared_ptr<Graph> graph = forward.graph()->copy();
  const auto &args = forward.function().getSchema().arguments();
  if (graph->inputs().size() < 2) throw std::runtime_error("the module's forward takes no input");
  for (size_t i = graph->inputs().size() - 1; i >= 2; --i) {
    if (i >= args.size() || !args[i].default_value())
      throw std::runtime_error("forward's argument `" + (i < args.size() ? args[i].name() : "?") +
                               "` has no default; only forward(x, <arguments with defaults>) is supported");
    torch::jit::WithInsertPoint guard(graph->block()->nodes().front());
    graph->inputs()[i]->replaceAllUsesWith(graph->insertConstant(*args[i].default_value()));
    graph->eraseInput(i);
  }
  Value *out = graph->outputs()[0];
  if (c10::TypePtr logits = logits_of_tuple(out->type())) {
    torch::jit::WithInsertPoint guard(graph->return_node());
    Node *first = graph->insertNode(graph->createTupleIndex(out, graph->insertConstant(0), logits));
    graph->return_node()->replaceInput(0, first->output());
  }
  return graph;
}

Inlined inline_all(const torch::jit::Module &module, const Modules &modules) {
  Inlined out;
  out.graph = forward_graph(module);
  out.graph = simplified(out.graph, "", modules);
  while (true) {
    std::unordered_map<Value *, std::string> paths{{out.graph->inputs()[0], ""}};
    Node *call = next_call(out.graph->block(), paths);
    if (!call) break;
    const std::string path = paths[call->input(0)];
    const std::string method = call->s(c10::attr::name);
    auto cls = call->input(0)->type()->expect<c10::ClassType>();
    GraphFunction &callee = torch::jit::toGraphFunction(cls->getMethod(method));
    // Records pointing at this call's outputs must follow them to the inlined values.
    std::vector<std::pair<size_t, size_t>> moved;  // (record, output index)
    for (size_t r = 0; r < out.records.size(); ++r)
      for (size_t i = 0; i < call->outputs().size(); ++i)
        if (out.records[r].value == call->output(i)) moved.emplace_back(r, i);
    // The callee's plain graph (its "optimized" graph has its own calls inlined already, which
    // would hide the submodules' outputs), simplified for this module instance.
    std::shared_ptr<Graph> body = simplified(callee.graph(), path, modules);
    std::vector<Value *> results = torch::jit::inlineCallTo(call, &callee, body.get());
    for (auto [r, i] : moved) out.records[r].value = results[i];
    // Every call is recorded: the first one may sit in a branch constant folding removes
    // (timm's ViT calls its blocks in two branches of `if attn_mask is not None`).
    if (method == "forward" && results.size() == 1 && !path.empty()) out.records.push_back({path, results[0]});
  }
  return out;
}

void collect_values(torch::jit::Block *block, std::unordered_map<std::string, Value *> &by_name) {
  for (Value *v : block->inputs()) by_name[v->debugName()] = v;
  for (Node *n : block->nodes()) {
    for (Value *v : n->outputs()) by_name[v->debugName()] = v;
    for (torch::jit::Block *sub : n->blocks()) collect_values(sub, by_name);
  }
}

// Inlines, then folds constant control flow (`if attn_mask is not None` with attn_mask=None,
// `if self.training`) so that calls inside statically dead or taken branches land at the top
// level. Constant propagation may move and delete nodes, so records are followed by debug name.
Inlined inline_and_fold(const torch::jit::Module &module) {
  Modules modules{{"", module}};
  for (const auto &item : module.named_modules()) modules.emplace(item.name, item.value);
  Inlined in = inline_all(module, modules);

  std::vector<std::string> names;
  std::unordered_map<Value *, std::string> named;
  for (const Record &r : in.records) {
    auto found = named.find(r.value);
    if (found == named.end()) {
      std::string name = "gcrec_" + std::to_string(named.size()) + "_out";
      r.value->setDebugName(name);
      found = named.emplace(r.value, name).first;
    }
    names.push_back(found->second);
  }
  torch::jit::ConstantPropagation(in.graph);
  if (std::getenv("GRADCAM_TCH_DEBUG")) {  // the graph the layers are cut from
    for (size_t i = 0; i < in.records.size(); ++i) std::cerr << in.records[i].path << " -> %" << names[i] << "\n";
    std::cerr << *in.graph << std::endl;
  }
  std::unordered_map<std::string, Value *> by_name;
  collect_values(in.graph->block(), by_name);
  std::vector<Record> kept;  // the first surviving call of each module
  for (size_t i = 0; i < in.records.size(); ++i) {
    auto v = by_name.find(names[i]);
    const std::string &path = in.records[i].path;
    bool seen = std::any_of(kept.begin(), kept.end(), [&](const Record &r) { return r.path == path; });
    if (v != by_name.end() && !seen) kept.push_back({path, v->second});
  }
  in.records = std::move(kept);
  return in;
}

// A layer output the shim can expose: a Tensor computed at the top level of the graph (not
// inside an `if` or a loop, whose values are invisible outside their block).
bool exposable(const Graph &graph, Value *v) {
  return v->type()->isSubtypeOf(*c10::TensorType::get()) && v->node()->owningBlock() == graph.block();
}

// Position of a value in forward order (graph inputs first).
std::unordered_map<Value *, size_t> positions(Graph &graph) {
  std::unordered_map<Value *, size_t> pos;
  size_t i = 0;
  for (Value *v : graph.inputs()) pos[v] = i++;
  for (Node *n : graph.nodes())
    for (Value *v : n->outputs()) pos[v] = i++;
  return pos;
}

void set_output(Graph &graph, const std::vector<Value *> &values) {
  torch::jit::WithInsertPoint guard(graph.return_node());
  Value *tuple = graph.insertNode(graph.createTuple(values))->output();
  graph.return_node()->replaceInput(0, tuple);
}

// Whether any node (in any block) writes a module attribute; such a graph cannot be frozen.
bool writes_attributes(torch::jit::Block *block) {
  for (Node *n : block->nodes()) {
    if (n->kind() == c10::prim::SetAttr) return true;
    for (torch::jit::Block *sub : n->blocks())
      if (writes_attributes(sub)) return true;
  }
  return false;
}

// Replaces every read of a module attribute that is a tensor or a plain value (parameters, buffers,
// flags) by a constant, as torch.jit.freeze does, starting from the graph's `self`.
void freeze_attributes(torch::jit::Block *block, std::unordered_map<Value *, c10::IValue> &objects) {
  for (Node *node : block->nodes()) {
    if (node->kind() == c10::prim::GetAttr) {
      auto parent = objects.find(node->input(0));
      if (parent != objects.end() && parent->second.isObject()) {
        c10::IValue v = parent->second.toObjectRef().getAttr(node->s(c10::attr::name));
        if (v.isObject()) {
          objects[node->output()] = v;
        } else if (!v.isTensor() || !v.toTensor().requires_grad()) {
          torch::jit::WithInsertPoint guard(node);
          if (auto c = node->owningGraph()->insertConstant(v, std::nullopt, node->scope()); c) {
            node->output()->replaceAllUsesWith(c);
          }
        }
      }
    }
    for (torch::jit::Block *sub : node->blocks()) freeze_attributes(sub, objects);
  }
}

// Freezes `graph` against `module` and runs the passes torch.jit.optimize_for_inference runs: the
// graph must never need autograd afterwards (oneDNN tensors have none). Leaves a graph that writes
// attributes as it is.
void optimize_for_inference(std::shared_ptr<Graph> &graph, const torch::jit::Module &module, bool cpu) {
  if (writes_attributes(graph->block())) return;
  std::unordered_map<Value *, c10::IValue> objects{{graph->inputs()[0], module._ivalue()}};
  freeze_attributes(graph->block(), objects);
  torch::jit::EliminateDeadCode(graph);
  torch::jit::ConstantPropagation(graph);
  torch::jit::OptimizeFrozenGraph(graph, /*optimize_numerics=*/true);
  if (cpu) {
    torch::jit::FuseFrozenConvAddRelu(graph);
    torch::jit::ConvertFrozenOpsToMKLDNN(graph);
    torch::jit::FrozenLinearTranspose(graph);
  }
}

// The top-level node of the graph that holds `node` (itself when it is top-level).
Node *top_level(Node *node, torch::jit::Block *top) {
  while (node->owningBlock() != top) node = node->owningBlock()->owningNode();
  return node;
}

// `capture` cut in two at `act`, a top-level value of `g` (self, x) -> logits:
//   before (self, x)              -> (v_1, ..., v_n)   every value computed up to the layer that the
//                                                       rest of the graph reads, `act` among them
//   after  (self, v_1, ..., v_n)  -> logits            (constants are copied, not passed)
struct Cut {
  std::shared_ptr<Graph> before, after;
  Value *activation;  // the input of `after` that holds `act`
};

Cut cut_at(Graph &g, Value *act) {
  // The head: the nodes up to and including the layer's. Copies keep node order, so the first
  // `head_size` nodes of a copy are its head too.
  std::unordered_set<Node *> head;
  if (act->node()->kind() != c10::prim::Param) {
    for (Node *n : g.nodes()) {
      head.insert(n);
      if (n == act->node()) break;
    }
  }
  const size_t head_size = head.size();
  auto read_later = [&](Value *v) {
    return std::any_of(v->uses().begin(), v->uses().end(), [&](const torch::jit::Use &u) {
      return !head.count(top_level(u.user, g.block()));
    });
  };
  std::vector<Value *> crossing;
  for (size_t i = 1; i < g.inputs().size(); ++i)
    if (read_later(g.inputs()[i]) || g.inputs()[i] == act) crossing.push_back(g.inputs()[i]);
  for (Node *n : g.nodes()) {
    if (!head.count(n)) break;
    if (n->kind() == c10::prim::Constant && n->output() != act) continue;  // `after` keeps its own copy
    for (Value *v : n->outputs())
      if (read_later(v) || v == act) crossing.push_back(v);
  }
  // Copies find these values again by name.
  std::vector<std::string> names;
  for (size_t i = 0; i < crossing.size(); ++i) {
    crossing[i]->setDebugName("gccut_" + std::to_string(i));
    names.push_back(crossing[i]->debugName());
  }
  const size_t act_index = std::find(crossing.begin(), crossing.end(), act) - crossing.begin();
  auto first_nodes = [](Graph &copy, size_t count, bool take) {
    std::vector<Node *> nodes;
    size_t i = 0;
    for (Node *n : copy.nodes())
      if ((i++ < count) == take) nodes.push_back(n);
    return nodes;
  };
  Cut cut{g.copy(), g.copy()};

  {  // before: returns the crossing values; every later node is dropped, last first.
    Graph &b = *cut.before;
    std::unordered_map<std::string, Value *> by_name;
    collect_values(b.block(), by_name);
    std::vector<Node *> tail = first_nodes(b, head_size, false);
    std::vector<Value *> outs;
    for (const std::string &name : names) outs.push_back(by_name.at(name));
    set_output(b, outs);
    for (auto it = tail.rbegin(); it != tail.rend(); ++it) (*it)->destroy();
    torch::jit::EliminateDeadCode(cut.before);
  }
  {  // after: the crossing values are its inputs; every earlier node but constants is dropped.
    Graph &a = *cut.after;
    std::unordered_map<std::string, Value *> by_name;
    collect_values(a.block(), by_name);
    std::vector<Node *> earlier = first_nodes(a, head_size, true);
    const size_t original_inputs = a.inputs().size();
    std::vector<Value *> inputs;
    for (const std::string &name : names) {
      Value *old = by_name.at(name);
      inputs.push_back(a.addInput()->setType(old->type()));
      old->replaceAllUsesWith(inputs.back());
    }
    for (auto it = earlier.rbegin(); it != earlier.rend(); ++it)
      if ((*it)->kind() != c10::prim::Constant) (*it)->destroy();
    for (size_t i = original_inputs; i-- > 1;) a.eraseInput(i);  // x: read through `inputs` now
    torch::jit::EliminateDeadCode(cut.after);
    cut.activation = inputs[act_index];
  }
  return cut;
}

// Makes `act` (an input of `after`) a leaf that requires grad and returns (logits, leaf):
// leaf = detach(act).requires_grad_(); the rest reads clone(leaf), so that in-place ops after the
// layer (ReLU(inplace=True)) never touch the leaf.
void make_leaf(Graph &a, Value *act) {
  torch::jit::WithInsertPoint guard(a.nodes().front());
  Value *detached = a.insert(c10::aten::detach, {act});
  Value *leaf = a.insert(c10::Symbol::fromQualString("aten::requires_grad_"), {detached, true});
  Value *copy = a.insert(c10::aten::clone, {leaf});
  act->replaceAllUsesWith(copy);
  detached->node()->replaceInput(0, act);
  set_output(a, {a.outputs()[0], leaf});
}

// Class-token pruning, as backend-ort's `prune_tokens` does on ONNX graphs: a ViT's head reads one
// token (`x[:, k]`, aten::select on dim 1), yet the layers after the last attention run on every
// token. Those layers treat tokens independently, so the select can move up in front of them; they
// then run on one token in the forward and the backward pass, and nothing else changes. Needs the
// graph's shapes (from PropagateInputShapes); values of unknown shape are left alone.

std::optional<int64_t> const_int(Value *v) {
  auto iv = torch::jit::toIValue(v);
  if (iv && iv->isInt()) return iv->toInt();
  return std::nullopt;
}

// `x[:, k]` with a constant k: aten::select on dim 1, the shape of a ViT head's token read.
bool selects_token(Node *n) {
  return n->kind() == c10::aten::select && const_int(n->input(1)) == 1 && const_int(n->input(2));
}

// (rank, size of dim 1 or -1) of a tensor value with a known rank.
std::optional<std::pair<size_t, int64_t>> rank_and_tokens(Value *v) {
  auto t = v->type()->cast<c10::TensorType>();
  if (!t || !t->dim()) return std::nullopt;
  int64_t n = -1;
  if (*t->dim() >= 2 && t->sizes()[1]) n = *t->sizes()[1];
  return std::make_pair(*t->dim(), n);
}

bool is_tokens(Value *v, int64_t n) {
  auto s = rank_and_tokens(v);
  return s && s->first == 3 && s->second == n;
}

// Not a tensor (an int, a flag, None), or a tensor of rank <= 1 (a bias, a scale): broadcasting it
// never reaches the token axis.
bool is_small(Value *v) {
  if (!v->type()->isSubtypeOf(*c10::TensorType::get())) return true;
  auto s = rank_and_tokens(v);
  return s && s->first <= 1;
}

// For a node that treats tokens independently, which inputs carry the `(B, n, D)` tokens.
std::optional<std::vector<bool>> token_inputs(Node *node, int64_t n) {
  if (node->outputs().size() != 1 || !is_tokens(node->output(), n)) return std::nullopt;
  const std::string op = node->kind().toQualString();
  std::vector<bool> tokens(node->inputs().size(), false);
  auto rest_small = [&](size_t from) {
    for (size_t i = from; i < node->inputs().size(); ++i)
      if (!is_small(node->input(i))) return false;
    return true;
  };
  static const std::unordered_set<std::string> unary{
      "aten::gelu", "aten::relu", "aten::sigmoid", "aten::tanh", "aten::dropout", "aten::contiguous",
      "aten::clone", "aten::silu", "aten::erf", "aten::hardswish", "aten::hardsigmoid", "aten::neg",
      "aten::sqrt", "aten::abs", "aten::exp"};
  static const std::unordered_set<std::string> binary{"aten::add", "aten::sub", "aten::mul", "aten::div"};
  if (op == "aten::linear" || op == "aten::matmul") {
    auto w = rank_and_tokens(node->input(1));
    if (!is_tokens(node->input(0), n) || !w || w->first != 2 || !rest_small(2)) return std::nullopt;
    tokens[0] = true;
  } else if (op == "aten::layer_norm") {
    auto shape = torch::jit::toIValue(node->input(1));
    if (!shape || !shape->isIntList() || shape->toIntList().size() != 1) return std::nullopt;
    if (!is_tokens(node->input(0), n) || !rest_small(2)) return std::nullopt;
    tokens[0] = true;
  } else if (unary.count(op) || (op == "aten::slice" && const_int(node->input(1)) == 0)) {
    if (!is_tokens(node->input(0), n) || !rest_small(1)) return std::nullopt;
    tokens[0] = true;
  } else if (binary.count(op)) {
    for (size_t i = 0; i < node->inputs().size(); ++i) {
      if (i < 2 && is_tokens(node->input(i), n)) {
        tokens[i] = true;
      } else if (!is_small(node->input(i))) {
        return std::nullopt;
      }
    }
  } else {
    return std::nullopt;
  }
  if (std::none_of(tokens.begin(), tokens.end(), [](bool t) { return t; })) return std::nullopt;
  return tokens;
}

// Moves the head's token select up in `a` (shapes propagated); `keep` is never pruned (its readers
// get a selected copy). Returns the number of nodes that now run on one token.
size_t prune_tokens(Graph &a, Value *keep) {
  auto picks = [](Node *n, int64_t *k, int64_t *tokens) {
    if (!selects_token(n)) return false;
    auto s = rank_and_tokens(n->input(0));
    if (!s || s->first != 3 || s->second < 0) return false;
    *k = *const_int(n->input(2));
    *tokens = s->second;
    return true;
  };
  int64_t k = 0, n = 0;
  if (std::none_of(a.nodes().begin(), a.nodes().end(), [&](Node *node) { return picks(node, &k, &n); }))
    return 0;
  auto is_target = [&](Node *node) {
    int64_t k2, n2;
    return picks(node, &k2, &n2) && k2 == k && n2 == n;
  };
  // Consumers first: a value may hold token k only when every reader is a target select or a pruned
  // node reading it as tokens.
  std::vector<Node *> order(a.nodes().begin(), a.nodes().end());
  std::unordered_set<Value *> one_token;
  std::vector<Node *> pruned;
  std::unordered_map<Node *, std::vector<bool>> tokens_of;
  std::vector<Node *> targets;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node *node = *it;
    auto tokens = token_inputs(node, n);
    Value *out = node->outputs().size() == 1 ? node->output() : nullptr;
    if (!tokens || out == keep || !out->hasUses()) continue;
    bool fine = std::all_of(out->uses().begin(), out->uses().end(), [&](const torch::jit::Use &u) {
      if (u.user->owningBlock() != a.block()) return false;
      if (is_target(u.user)) return u.offset == 0;
      auto t = tokens_of.find(u.user);
      return t != tokens_of.end() && t->second[u.offset];
    });
    if (!fine) continue;
    for (const torch::jit::Use &u : out->uses())
      if (is_target(u.user)) targets.push_back(u.user);
    one_token.insert(out);
    pruned.push_back(node);
    tokens_of[node] = *tokens;
  }
  std::reverse(pruned.begin(), pruned.end());
  std::unordered_map<Value *, Value *> selected;
  for (Node *node : pruned) {
    for (size_t i = 0; i < node->inputs().size(); ++i) {
      Value *in = node->input(i);
      if (!tokens_of[node][i] || one_token.count(in)) continue;
      Value *&sel = selected[in];
      if (!sel) {
        torch::jit::WithInsertPoint guard(node);
        sel = a.insert(c10::aten::select, {in, 1, k});
      }
      node->replaceInput(i, sel);
    }
  }
  for (Node *node : pruned) node->output()->setType(c10::TensorType::get());
  for (Node *target : targets) {
    target->output()->replaceAllUsesWith(target->input(0));
    target->destroy();
  }
  return pruned.size();
}

// The shapes of `after`'s values, from one run of `before` on zeros (batch 2, 3 x h x w) and of
// a copy of `after` that returns every top-level tensor; then its class-token pruning. Returns the
// number of pruned nodes (0 when the runs fail).
size_t prune_tokens_after_cut(const std::shared_ptr<Graph> &after, Value *keep, GraphFunction &before,
                              const c10::IValue &self, c10::Device device, int64_t h, int64_t w) {
  // No token select (every CNN): nothing to prune, so no probe runs.
  if (std::none_of(after->nodes().begin(), after->nodes().end(), selects_token)) return 0;
  try {
    torch::NoGradGuard no_grad;
    torch::jit::Stack stack{self, at::zeros({2, 3, h, w}, at::TensorOptions().device(device))};
    before.run(stack);
    auto values = stack.back().toTupleRef().elements();
    if (values.size() + 1 != after->inputs().size()) return 0;
    // Copies find values again by name.
    std::vector<Value *> tensors;
    for (Value *v : after->inputs())
      if (v->type()->isSubtypeOf(*c10::TensorType::get())) tensors.push_back(v);
    for (Node *n : after->nodes())
      for (Value *v : n->outputs())
        if (v->type()->isSubtypeOf(*c10::TensorType::get())) tensors.push_back(v);
    for (size_t i = 0; i < tensors.size(); ++i) tensors[i]->setDebugName("gcshape_" + std::to_string(i));
    std::shared_ptr<Graph> probe = after->copy();
    std::unordered_map<std::string, Value *> by_name;
    collect_values(probe->block(), by_name);
    std::vector<Value *> outs;
    for (Value *v : tensors) outs.push_back(by_name.at(v->debugName()));
    set_output(*probe, outs);
    GraphFunction run("gradcam_shapes", probe, nullptr, torch::jit::ExecutorExecutionMode::SIMPLE);
    torch::jit::Stack probe_stack{self};
    for (const c10::IValue &v : values) probe_stack.push_back(v);
    run.run(probe_stack);
    auto results = probe_stack.back().toTupleRef().elements();
    for (size_t i = 0; i < tensors.size(); ++i)
      if (results[i].isTensor()) tensors[i]->setType(c10::TensorType::create(results[i].toTensor()));
  } catch (const std::exception &e) {
    if (std::getenv("GRADCAM_TCH_DEBUG")) std::cerr << "no shapes after the cut: " << e.what() << std::endl;
    torch::jit::EraseShapeInformation(after);
    return 0;
  }
  size_t pruned = prune_tokens(*after, keep);
  torch::jit::EraseShapeInformation(after);
  return pruned;
}

// FullGrad's bias layers, by pytorch-grad-cam's rule: modules whose type is exactly nn.Conv2d or
// nn.BatchNorm2d, with a bias (a BatchNorm without affine has none); subclasses and look-alikes
// (timm's BatchNormAct2d, Conv2dSame) are not.
enum class BiasKind { None, Conv, BatchNorm };

// A TorchScript class name without the `___torch_mangle_N.` segments it gets when one Python class
// compiles to several types (`...conv.___torch_mangle_3.Conv2d`).
std::string unmangled(std::string name) {
  const std::string tag = "___torch_mangle_";
  for (size_t at; (at = name.find(tag)) != std::string::npos;) {
    const size_t dot = name.find('.', at);
    name.erase(at, dot == std::string::npos ? std::string::npos : dot - at + 1);
  }
  return name;
}

std::optional<at::Tensor> tensor_attr(const torch::jit::Module &module, const std::string &name) {
  if (!module.hasattr(name)) return std::nullopt;
  c10::IValue v = module.attr(name);
  if (!v.isTensor()) return std::nullopt;
  return v.toTensor();
}

BiasKind bias_kind(const torch::jit::Module &module) {
  auto name = module.type()->name();
  if (!name) return BiasKind::None;
  const std::string type = unmangled(name->qualifiedName());
  if (!tensor_attr(module, "bias")) return BiasKind::None;
  if (type == "__torch__.torch.nn.modules.batchnorm.BatchNorm2d") return BiasKind::BatchNorm;
  if (type == "__torch__.torch.nn.modules.conv.Conv2d") return BiasKind::Conv;
  return BiasKind::None;
}

// A bias layer's bias per channel, as pytorch-grad-cam's FullGrad takes it: a convolution's own; a
// BatchNorm's folded from its running statistics, `bias - mean * weight / sqrt(var + eps)`, with
// `eps` read from the layer's `aten::batch_norm` node (tracing keeps no `eps` attribute).
at::Tensor bias_of(const torch::jit::Module &module, BiasKind kind, Value *output, const std::string &path) {
  if (kind == BiasKind::Conv) return tensor_attr(module, "bias")->detach().clone();
  Node *bn = output->node();
  std::optional<c10::IValue> eps;
  if (bn->kind() == c10::aten::batch_norm && bn->inputs().size() > 7) eps = torch::jit::toIValue(bn->input(7));
  if (!eps || !eps->isDouble())
    throw std::runtime_error("BatchNorm2d `" + path + "`: its output is not an aten::batch_norm with a constant eps, so "
                             "fullgrad cannot fold its bias; use another method");
  auto mean = tensor_attr(module, "running_mean"), var = tensor_attr(module, "running_var");
  if (!mean || !var)
    throw std::runtime_error("BatchNorm2d `" + path + "` keeps no running statistics, which fullgrad folds into its "
                             "bias; use another method");
  const at::Tensor std = at::sqrt(*var + eps->toDouble());
  auto weight = tensor_attr(module, "weight"), bias = tensor_attr(module, "bias");  // both: affine
  if (!weight) throw std::runtime_error("BatchNorm2d `" + path + "` has a bias but no weight; use another method");
  return (-(*mean * *weight / std) + *bias).detach().clone();
}

// The whole inlined forward readied for autograd (modes 4-6). Scripted modules call functions
// (F.relu, F.batch_norm) through prim::CallFunction: inlined, with their flags (`inplace`) folded,
// so that every ReLU and BatchNorm is a node of this graph. Autograd runs through all of it, so
// fused attention, which has no derivative, is unfused.
void prepare_for_autograd(Inlined &in) {
  torch::jit::Inline(*in.graph);
  torch::jit::ConstantPropagation(in.graph);
  if (gradcam::unfuse_attention(in.graph->block())) torch::jit::EliminateDeadCode(in.graph);
}

// FullGrad's graph, built from `g` (self, x) -> logits as `input` (mode 4) is, returning
// (logits, leaf input, out_1, ..., out_n, bias_1, ..., bias_n) for the bias layers in forward
// order; `paths` receives their paths. Each out_i is the layer's output as autograd sees it: the
// graph's readers get a clone of it, so in-place ops after the layer (ReLU(inplace=True)) write the
// clone and never the tapped value, whose gradient is then the one PyTorch's hooks report.
void build_full(Inlined &in, const torch::jit::Module &module, std::string &paths) {
  Graph &g = *in.graph;
  Modules modules;
  for (const auto &item : module.named_modules()) modules.emplace(item.name, item.value);
  auto pos = positions(g);
  std::vector<Record> taps;
  for (const Record &r : in.records) {
    auto found = modules.find(r.path);
    if (found == modules.end() || bias_kind(found->second) == BiasKind::None) continue;
    if (!exposable(g, r.value))
      throw std::runtime_error("`" + r.path + "` has a bias but runs inside control flow, where fullgrad cannot take "
                               "its output's gradient; use another method");
    taps.push_back(r);
  }
  std::stable_sort(taps.begin(), taps.end(), [&](const Record &a, const Record &b) { return pos[a.value] < pos[b.value]; });
  // The taps ride along as outputs, so that inlining the functions (F.batch_norm in scripted
  // modules) and constant propagation carry them to their new values.
  std::vector<Value *> outs{g.outputs()[0]};
  for (const Record &r : taps) outs.push_back(r.value);
  set_output(g, outs);
  prepare_for_autograd(in);
  Node *tuple = g.outputs()[0]->node();
  std::vector<Value *> values(tuple->inputs().begin() + 1, tuple->inputs().end());
  g.return_node()->replaceInput(0, tuple->input(0));
  tuple->destroy();
  std::vector<at::Tensor> biases;
  for (size_t i = 0; i < taps.size(); ++i) {
    Value *v = values[i];
    if (!exposable(g, v))
      throw std::runtime_error("`" + taps[i].path + "`'s output is computed inside control flow once inlined; fullgrad "
                               "cannot take its gradient");
    const torch::jit::Module &layer = modules.at(taps[i].path);
    biases.push_back(bias_of(layer, bias_kind(layer), v, taps[i].path));
    torch::jit::WithInsertPoint guard(v->node()->next());
    Value *copy = g.insert(c10::aten::clone, {v});
    v->replaceAllUsesWith(copy);
    copy->node()->replaceInput(0, v);
    paths += taps[i].path + '\n';
  }
  make_leaf(g, g.inputs()[1]);
  Node *pair = g.outputs()[0]->node();
  std::vector<Value *> all{pair->input(0), pair->input(1)};
  all.insert(all.end(), values.begin(), values.end());
  {
    torch::jit::WithInsertPoint guard(g.return_node());
    for (const at::Tensor &b : biases) all.push_back(g.insertConstant(b));
  }
  set_output(g, all);
  pair->destroy();
}

}  // namespace

// `gradcam::guided_relu`, for the graphs guide_relus rewrites. A CompositeImplicitAutograd kernel
// (def with a function): it runs on every device and its autograd::Function records the backward.
TORCH_LIBRARY(gradcam, m) { m.def("guided_relu(Tensor x) -> Tensor", &gradcam::guided_relu); }

struct gc_module {
  torch::jit::Module module;
  c10::Device device;
};

struct gc_fn {
  std::unique_ptr<GraphFunction> before;  // capture: (self, x) -> values the part after the cut reads
  std::unique_ptr<GraphFunction> fn;      // (self, inputs...), after `before`'s values when it exists
  c10::IValue self;
};

extern "C" {

void gc_free_string(char *s) { std::free(s); }

// Loads a TorchScript file onto a device (-1: CPU, n >= 0: CUDA n), in eval mode, with every
// parameter's requires_grad off (gradients are only ever taken w.r.t. activations).
char *gc_load(const char *path, int device, gc_module **out) {
  // libtorch reads this once, at its first CPU allocation: blocks of 2 MB and more then come from
  // transparent huge pages. Without it every forward page-faults its activations in afresh, which
  // measured half of a CNN's forward time on a VM. A value the user set is kept. Once per process:
  // environ is only written by the first load.
  static const bool thp_set = setenv("THP_MEM_ALLOC_ENABLE", "1", /*overwrite=*/0) == 0;
  (void)thp_set;
  GC_TRY({
    c10::Device dev = device < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, device);
    auto module = torch::jit::load(path, dev);
    module.eval();
    for (at::Tensor p : module.parameters()) p.requires_grad_(false);
    *out = new gc_module{std::move(module), dev};
  })
}

void gc_module_free(gc_module *m) { delete m; }

// Every submodule path (named_modules, root excluded), one per line.
char *gc_module_paths(gc_module *m, char **out) {
  GC_TRY({
    std::string s;
    for (const auto &item : m->module.named_modules()) {
      if (item.name.empty()) continue;
      s += item.name;
      s += '\n';
    }
    *out = dup(s);
  })
}

// The plain forward: x -> logits.
char *gc_forward(gc_module *m, const at::Tensor *x, at::Tensor **out) {
  GC_TRY({
    c10::IValue y = m->module.forward({*x});
    if (y.isTuple() && !y.toTupleRef().elements().empty()) y = y.toTupleRef().elements()[0];
    if (!y.isTensor()) throw std::runtime_error("the module's forward does not return a tensor");
    *out = new at::Tensor(y.toTensor());
  })
}

// Builds a function over the inlined graph.
//   mode 0 (probe):   `paths_out` receives the exposed layer paths, one per line, in forward order
//                     (outer modules first among those that share one output); `layer` is ignored.
//   mode 1 (capture): returns (logits, leaf activation of `layer`).
//   mode 2 (replace): takes an extra input, the replacement for `layer`'s output; returns logits.
//   mode 3 (forward): returns logits; `layer` is ignored.
//   mode 4 (input):   returns (logits, leaf input); `layer` is ignored. Mode 5: the same with every
//                     ReLU guided (gradcam::guide_relus).
//   mode 6 (full):    returns (logits, leaf input, out_1..out_n, bias_1..bias_n) for FullGrad's bias
//                     layers (build_full), whose paths `paths_out` receives; `layer` is ignored.
// `found` is set to 0 when `layer` has no exposable output (never called, inside control flow, or
// not a tensor); the function is then not built. For capture, `prune` asks for class-token pruning,
// with shapes probed at `height` x `width`; `pruned` receives the number of pruned nodes.
char *gc_build(gc_module *m, const char *layer, int mode, int height, int width, int prune, gc_fn **out,
               char **paths_out, int *found, int *pruned) {
  GC_TRY({
    Inlined in = inline_and_fold(m->module);
    Graph &g = *in.graph;
    const bool cpu = m->device.is_cpu();
    // SIMPLE: run the graphs as written; the profiling executor would re-specialise them on the
    // requires_grad flags that `capture` flips mid-graph.
    auto function = [&](const std::shared_ptr<Graph> &graph, const std::string &name) {
      return std::make_unique<GraphFunction>(name, graph, nullptr, torch::jit::ExecutorExecutionMode::SIMPLE);
    };
    auto fn = std::make_unique<gc_fn>();
    fn->self = m->module._ivalue();
    std::shared_ptr<Graph> before;
    *found = 1;
    *pruned = 0;
    *out = nullptr;
    if (mode == 0) {
      auto pos = positions(g);
      std::vector<Record> keep;
      for (const Record &r : in.records)
        if (exposable(g, r.value)) keep.push_back(r);
      std::stable_sort(keep.begin(), keep.end(), [&](const Record &a, const Record &b) {
        if (pos[a.value] != pos[b.value]) return pos[a.value] < pos[b.value];
        return a.path.size() < b.path.size();
      });
      std::vector<Value *> outs{g.outputs()[0]};
      std::string names;
      for (const Record &r : keep) {
        outs.push_back(r.value);
        names += r.path + '\n';
      }
      set_output(g, outs);
      *paths_out = dup(names);
    } else if (mode == 3) {
      optimize_for_inference(in.graph, m->module, cpu);
    } else if (mode == 4 || mode == 5) {
      prepare_for_autograd(in);
      // x is cloned first: the graph's in-place ops then never touch the leaf, and mutation removal
      // sees a fresh tensor.
      make_leaf(g, g.inputs()[1]);
      if (mode == 5) {
        auto [guided, copied] = gradcam::guide_relus(in.graph);
        if (std::getenv("GRADCAM_TCH_DEBUG"))
          std::cerr << "guided ReLUs: " << guided << " (" << copied << " written back in place)" << std::endl;
      }
    } else if (mode == 6) {
      std::string names;
      build_full(in, m->module, names);
      *paths_out = dup(names);
    } else if (mode < 0 || mode > 6) {
      throw std::runtime_error("unknown mode " + std::to_string(mode));
    } else {
      auto rec = std::find_if(in.records.begin(), in.records.end(),
                              [&](const Record &r) { return r.path == layer; });
      if (rec == in.records.end() || !exposable(g, rec->value)) {
        *found = 0;
        return nullptr;
      }
      Value *act = rec->value;
      if (mode == 1) {
        Cut cut = cut_at(g, act);
        // Autograd runs through the part after the cut: no op there may lack a derivative.
        if (gradcam::unfuse_attention(cut.after->block())) torch::jit::EliminateDeadCode(cut.after);
        before = cut.before;
        optimize_for_inference(before, m->module, cpu);
        fn->before = function(before, "gradcam_before_cut");
        if (prune)
          *pruned = static_cast<int>(prune_tokens_after_cut(cut.after, cut.activation, *fn->before, fn->self,
                                                            m->device, height, width));
        make_leaf(*cut.after, cut.activation);
        in.graph = cut.after;
      } else {
        Value *replacement = g.addInput("activation")->setType(act->type());
        act->replaceAllUsesWith(replacement);
        torch::jit::EliminateDeadCode(in.graph);
        optimize_for_inference(in.graph, m->module, cpu);
      }
    }
    if (std::getenv("GRADCAM_TCH_DEBUG")) {
      if (before) std::cerr << "built (mode " << mode << ", before the cut):\n" << *before << std::endl;
      std::cerr << "built (mode " << mode << "):\n" << *in.graph << std::endl;
    }
    fn->fn = function(in.graph, "gradcam_" + std::to_string(mode));
    *out = fn.release();
  })
}

void gc_fn_free(gc_fn *f) { delete f; }

// Runs a built function on `n_inputs` tensors; writes up to `cap` output tensors to `outputs`
// (the logits first) and their number to `n_outputs`.
char *gc_run(gc_fn *f, const at::Tensor *const *inputs, int n_inputs, at::Tensor **outputs, int cap,
             int *n_outputs) {
  GC_TRY({
    torch::jit::Stack stack{f->self};
    int i = 0;
    if (f->before) {
      if (n_inputs < 1) throw std::runtime_error("no input");
      torch::jit::Stack head{f->self, *inputs[i++]};
      f->before->run(head);
      if (head.back().isTuple()) {
        for (const c10::IValue &v : head.back().toTupleRef().elements()) stack.push_back(v);
      } else {
        stack.push_back(head.back());
      }
    }
    for (; i < n_inputs; ++i) stack.emplace_back(*inputs[i]);
    f->fn->run(stack);
    c10::IValue result = stack.back();
    std::vector<c10::IValue> items;
    if (result.isTuple()) {
      items = result.toTupleRef().elements().vec();
    } else {
      items.push_back(result);
    }
    if (static_cast<int>(items.size()) > cap) throw std::runtime_error("too many outputs");
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].isTensor()) throw std::runtime_error("the module's forward does not return a tensor");
      outputs[i] = new at::Tensor(items[i].toTensor());
    }
    *n_outputs = static_cast<int>(items.size());
  })
}

}  // extern "C"
