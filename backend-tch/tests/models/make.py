#!/usr/bin/env python3
"""Writes the small TorchScript models and references backend-tch's own tests use (committed, ~100 KB).

  .venv-fixtures/bin/python backend-tch/tests/models/make.py [OUT_DIR [NAME ...]]   (default: next to this file)

Each model has random weights (torch.manual_seed(0)) and is exported as <name>.traced.pt and, where torch can,
<name>.scripted.pt. Per model, <name>/input.npy is a (2, 3, H, W) input, and per reference layer
<name>/<layer>/{logits,activation,gradient}.npy hold PyTorch's logits, the layer's output as the module
defines it, and d logits[:, CLASS].sum() / d output from eager autograd (for nn.MultiheadAttention: its unfused
path, which autograd takes). manifest.json lists the models, layers, sizes and the class.

  tv_vit       torchvision VisionTransformer, 2 layers, 32x32: traced, its attention is the fused
               aten::_native_multi_head_attention (no derivative in libtorch).
  attn_masks   nn.MultiheadAttention fast path with every mask kind it passes (key padding; attention mask,
               merged with key padding or not), need_weights with and without head averaging, the weights
               feeding the logits.
  fixed_size   traced at 24x40 with sizes baked into reshapes, as timm's MobileViT unfold: runs at that
               size only.
  encoder_layer nn.TransformerEncoderLayer fast path (aten::_transformer_encoder_layer_fwd): no derivative,
               used for the error message.
  tuple_output returns (logits, None) as a NamedTuple, as torchvision's scripted GoogLeNet does.
  biased       FullGrad's bias layers: a Conv2d with a bias, BatchNorm2ds with running statistics away from
               (0, 1) and an in-place ReLU after them (module and functional), and look-alikes FullGrad skips
               (a Conv2d without bias, a BatchNorm2d without affine, a BatchNorm2d subclass). Its
               biased/fullgrad/ holds grad-cam's bias layers (manifest "bias_layers"), their biases as
               grad-cam's FullGrad folds them (<layer>/bias.npy), d logits[:, CLASS].sum() / d each layer's
               output (<layer>/gradient.npy) and / d input (input_gradient.npy).

With model names after OUT_DIR, only those are made again (the others' files and manifest entries stay).
"""
import json
import os
import sys
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

CLASS = 3
torch.set_num_threads(2)


class AttnMasks(nn.Module):
    """Patch tokens through four fused attentions (key padding mask, bool attention masks with and without
    head-averaged weights, both masks merged), the attention weights feeding the logits."""

    def __init__(self, dim=8, tokens=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, 2, batch_first=True) for _ in range(4))
        pad = torch.zeros(1, tokens, dtype=torch.bool)
        pad[0, -3:] = True
        self.register_buffer("pad", pad)
        causal = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)
        self.register_buffer("causal", causal)
        self.register_buffer("anticausal", causal.T.contiguous())
        self.head = nn.Linear(dim, 10)
        self.weights_head = nn.Linear(tokens, 10)

    def forward(self, x):
        t = self.norm(self.embed(x).flatten(2).transpose(1, 2))
        pad = self.pad.expand(t.shape[0], -1)
        a, _ = self.attn[0](t, t, t, key_padding_mask=pad, need_weights=False)
        t = t + a
        a, w1 = self.attn[1](t, t, t, attn_mask=self.causal, need_weights=True, average_attn_weights=False)
        t = t + a
        a, w2 = self.attn[2](t, t, t, attn_mask=self.anticausal, need_weights=True)
        t = t + a
        a, _ = self.attn[3](t, t, t, attn_mask=self.causal, key_padding_mask=pad, need_weights=False)
        t = t + a
        assert w1 is not None and w2 is not None
        return self.head(t.mean(1)) + self.weights_head(w1.mean((1, 2)) + w2.mean(1))


class FixedSize(nn.Module):
    """A conv net whose traced graph holds its input size, as MobileViT's unfold does."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.mix = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 16, 3, 1, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        ph = pw = 2
        nh, nw = int(h) // ph, int(w) // pw  # Python ints: constants in the trace
        p = x.reshape(b * c * nh, ph, nw, pw).transpose(1, 2).reshape(b, c, nh * nw, ph * pw)
        p = self.mix(p.transpose(1, 3)).transpose(1, 3)
        x = p.reshape(b * c * nh, nw, ph, pw).transpose(1, 2).reshape(b, c, nh * ph, nw * pw)
        x = F.relu(self.conv(x))
        return self.head(x.mean((2, 3)))


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.layer(t).mean(1))


class Outputs(NamedTuple):
    logits: torch.Tensor
    aux: Optional[torch.Tensor]


class TupleOutput(nn.Module):
    """Returns (logits, aux) as torchvision's scripted GoogLeNet and Inception3 do, aux None in eval."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x) -> Outputs:
        x = F.relu(self.conv(x))
        return Outputs(self.head(x.mean((2, 3))), None)


class BatchNormSub(nn.BatchNorm2d):
    """A BatchNorm2d subclass, as timm's BatchNormAct2d: FullGrad's exact type test skips it."""


class Biased(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.plain = nn.BatchNorm2d(8, affine=False)
        self.sub = BatchNormSub(8)
        self.head = nn.Linear(8, 10)
        g = torch.Generator().manual_seed(2)
        for bn in (self.bn, self.bn2, self.plain, self.sub):
            bn.running_mean.copy_(torch.randn(8, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            if bn.affine:
                bn.weight.data.copy_(1 + 0.3 * torch.randn(8, generator=g))
                bn.bias.data.copy_(0.3 * torch.randn(8, generator=g))

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        y = F.relu(self.bn2(self.conv(x)), inplace=True)
        return self.head(self.sub(self.plain(x + y)).mean((2, 3)))


def fullgrad_reference(model, x, out):
    """grad-cam's bias layers and biases; the gradients of each one's output (later in-place ops modify a
    copy) and of the input."""
    from pytorch_grad_cam import FullGrad

    cam = FullGrad(model, [])
    names = {m: n for n, m in model.named_modules()}
    layers = [names[m] for m in cam.target_layers]
    cam.activations_and_grads.release()
    outputs = {}

    def tap(name):
        def hook(module, inputs, output):
            outputs[name] = output
            return output.clone()
        return hook

    handles = [model.get_submodule(n).register_forward_hook(tap(n)) for n in layers]
    x = x.clone().requires_grad_(True)
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(logits[:, CLASS].sum(), [x] + [outputs[n] for n in layers])
    d = os.path.join(out, "fullgrad")
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "input_gradient.npy"), grads[0].numpy().astype(np.float32))
    for name, bias, grad in zip(layers, cam.bias_data, grads[1:]):
        os.makedirs(os.path.join(d, name), exist_ok=True)
        np.save(os.path.join(d, name, "bias.npy"), bias.astype(np.float32))
        np.save(os.path.join(d, name, "gradient.npy"), grad.numpy().astype(np.float32))
    return layers


def tv_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=10)


BOTH, TRACED, SCRIPTED = ("traced", "scripted"), ("traced",), ("scripted",)
# name: (constructor, input (H, W), reference layers, exports)
MODELS = {
    "tv_vit": (tv_vit, (32, 32), ["encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_1.ln_1",
                                  "encoder.layers.encoder_layer_1"], BOTH),
    "attn_masks": (AttnMasks, (16, 16), ["norm"], BOTH),
    "fixed_size": (FixedSize, (24, 40), ["stem", "conv"], TRACED),  # its Python ints only trace
    "encoder_layer": (EncoderLayer, (16, 16), ["embed"], TRACED),
    "tuple_output": (TupleOutput, (16, 16), ["conv"], SCRIPTED),  # a trace cannot return None
    "biased": (Biased, (16, 16), [], BOTH),  # references in biased/fullgrad/ only
}


def reference(model, x, layer):
    """Logits, the layer's output as defined, d logits[:, CLASS].sum() / d output (a leaf put in its place;
    later in-place ops modify a copy)."""
    store = {}

    def hook(module, inputs, out):
        leaf = out.detach().clone().requires_grad_(True)
        store["leaf"] = leaf
        return leaf.clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        logits = model(x)
        if isinstance(logits, tuple):
            logits = logits[0]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, CLASS].sum(), store["leaf"])
    return logits.detach(), store["leaf"].detach(), grad


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    names = sys.argv[2:] or list(MODELS)
    path = os.path.join(out, "manifest.json")
    manifest = {"class": CLASS, "models": {}}
    if sys.argv[2:] and os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
    for name in names:
        make, (h, w), layers, exports = MODELS[name]
        torch.manual_seed(0)
        model = make().eval()
        for p in model.parameters():
            p.requires_grad_(False)
            if p.dim() >= 2 and not p.any():  # torchvision's ViT head starts at zero: no gradient at all
                p.normal_(0.0, 0.1)
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
        files = {}
        for kind in exports:
            if kind == "traced":
                with torch.no_grad():
                    exported = torch.jit.trace(model, x, check_trace=False)
            else:
                exported = torch.jit.script(model)
            exported.save(os.path.join(out, f"{name}.{kind}.pt"))
            files[kind] = f"{name}.{kind}.pt"
        os.makedirs(os.path.join(out, name), exist_ok=True)
        np.save(os.path.join(out, name, "input.npy"), x.numpy())
        for layer in layers:
            d = os.path.join(out, name, layer)
            os.makedirs(d, exist_ok=True)
            for key, value in zip(("logits", "activation", "gradient"), reference(model, x, layer)):
                np.save(os.path.join(d, f"{key}.npy"), value.numpy().astype(np.float32))
        manifest["models"][name] = {"files": files, "size": [h, w], "layers": layers}
        if name == "biased":
            manifest["models"][name]["bias_layers"] = fullgrad_reference(model, x, os.path.join(out, name))
        print(name, files, flush=True)
    manifest["models"] = dict(sorted(manifest["models"].items(), key=lambda kv: list(MODELS).index(kv[0])))
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
