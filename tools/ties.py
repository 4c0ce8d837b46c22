"""Which gradient elements of a reference fixture depend on a kink tie.

A ReLU, ReLU6, hardswish, clamp or max-pool after the explained layer is not differentiable at its kink
(0 and 6 for ReLU6, -3 and 3 for hardswish, a tie between the two largest values of a pooling window). A
pre-activation within float noise of a kink can fall on the other side in another implementation of the
same model (BatchNorm folded into the convolution by an exporter, another BLAS, AVX-512 instead of AVX2):
that flips one mask bit, and every gradient element upstream of that unit changes, legitimately.

`tie_mask` finds those elements from the reference model itself: it runs the part after the layer with
the activation as a leaf, intercepts every kink function (a TorchFunctionMode, so functional calls such as
torchvision's `F.relu(..., inplace=True)` count too), marks the units within `eps` times the input's largest
magnitude of a kink, and back-propagates their sum (random positive weights, so nothing cancels) to the
activation. Elements with a non-zero result depend on a near-kink unit; the tests skip exactly those, and
compare every other element strictly. Two near-kink units chained one after another are second order and
not followed.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Relative distance to a kink counted as a tie: float32 noise of a re-associated sum of a few hundred terms
# is ~1e-6 of the largest term; ten times that leaves room for another machine's kernels.
TIE_EPS = 1e-5


def _kinks(func, args, kwargs):
    """(input, [kink values]) for an element-wise kink function, else None."""

    def arg(i, name, default):
        if len(args) > i:
            return args[i]
        return kwargs.get(name, default)

    relu = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.leaky_relu,
            torch.abs, torch.Tensor.abs, torch.Tensor.abs_}
    if func in relu:
        return args[0], [0.0]
    if func in (F.relu6,):
        return args[0], [0.0, 6.0]
    if func in (F.hardtanh, F.hardtanh_):
        return args[0], [arg(1, "min_val", -1.0), arg(2, "max_val", 1.0)]
    if func in (F.hardswish, F.hardsigmoid):
        return args[0], [-3.0, 3.0]
    if func in (F.threshold, F.threshold_):
        return args[0], [arg(1, "threshold", 0.0)]
    if func in (torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clamp_, torch.Tensor.clip,
                torch.clamp_min, torch.Tensor.clamp_min, torch.clamp_max, torch.Tensor.clamp_max):
        if func in (torch.clamp_min, torch.Tensor.clamp_min):
            bounds = [arg(1, "min", None)]
        elif func in (torch.clamp_max, torch.Tensor.clamp_max):
            bounds = [arg(1, "max", None)]
        else:
            bounds = [arg(1, "min", None), arg(2, "max", None)]
        return args[0], [b for b in bounds if isinstance(b, (int, float))]
    return None


def _pool_ties(func, args, kwargs, eps):
    """A near-tie mask over the input of a 2-d max pooling: window members within eps of the window max,
    in windows holding more than one such member."""
    if func not in (F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d):
        return None
    x = args[0]
    if not (torch.is_tensor(x) and x.requires_grad and x.dim() == 4):
        return None

    def arg(i, name, default):
        return args[i] if len(args) > i else kwargs.get(name, default)

    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    kernel = pair(arg(1, "kernel_size", None))
    stride = arg(2, "stride", None)
    stride = kernel if stride in (None, [], ()) else pair(stride)
    padding, dilation = pair(arg(3, "padding", 0)), pair(arg(4, "dilation", 1))
    with torch.no_grad():
        b, c, h, w = x.shape
        scale = float(x.abs().max()) or 1.0
        padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=float("-inf"))
        cols = F.unfold(padded.reshape(b * c, 1, *padded.shape[2:]), kernel, dilation=dilation, stride=stride)
        top = cols.max(dim=1, keepdim=True).values
        near = (top - cols) <= eps * scale
        tied = near & (near.sum(dim=1, keepdim=True) > 1)
        counts = F.fold(tied.float(), padded.shape[2:], kernel, dilation=dilation, stride=stride)
        counts = counts.reshape(b, c, *padded.shape[2:])[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]
    return x, counts > 0


class _KinkRecorder(TorchFunctionMode):
    def __init__(self, eps, generator):
        super().__init__()
        self.eps, self.generator, self.terms, self.units = eps, generator, [], 0

    def _record(self, x, near):
        if near.any():
            weights = torch.rand(x.shape, generator=self.generator) + 0.5
            self.terms.append((x * (weights * near)).sum())
            self.units += int(near.sum())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = _kinks(func, args, kwargs)
        if found is not None:
            x, kinks = found
            if torch.is_tensor(x) and x.requires_grad and x.is_floating_point() and kinks:
                with torch.no_grad():
                    scale = float(x.abs().max()) or 1.0
                    near = torch.zeros_like(x, dtype=torch.bool)
                    for k in kinks:
                        near |= (x - float(k)).abs() <= self.eps * scale
                self._record(x, near)
        pooled = _pool_ties(func, args, kwargs, self.eps)
        if pooled is not None:
            self._record(*pooled)
        return func(*args, **kwargs)


def tie_mask(model, x, layer, eps=TIE_EPS):
    """Boolean mask shaped like `layer`'s output for input `x`: the gradient elements that depend on a unit
    within `eps` (relative) of a kink after the layer. Returns (mask, number of near-kink units)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    leaf = {}

    def hook(module, inp, out):
        leaf["a"] = out.detach().requires_grad_()
        # A copy, so that an in-place op after the layer does not write into the leaf.
        return leaf["a"].clone()

    handle = layer.register_forward_hook(hook)
    recorder = _KinkRecorder(eps, torch.Generator().manual_seed(0))
    try:
        with torch.enable_grad(), recorder:
            model(x)
    finally:
        handle.remove()
        for p in params:
            p.requires_grad_(True)
    a = leaf["a"]
    if not recorder.terms:
        return np.zeros(a.shape, dtype=bool), 0
    (grad,) = torch.autograd.grad(torch.stack(recorder.terms).sum(), a, allow_unused=True)
    if grad is None:
        return np.zeros(a.shape, dtype=bool), recorder.units
    return (grad != 0).numpy(), recorder.units
