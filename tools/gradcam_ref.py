"""Runs PyPI grad-cam 1.5.7 (`pytorch_grad_cam`) on a model and records everything the Rust side compares
against: native activations and gradients, each method's `get_cam_image` output, the per-call target scores
of ScoreCAM and AblationCAM, and the final maps that grad-cam's `cam(input_tensor, targets)` returns.

Only observation is added to grad-cam (hooks, wrapped targets, a recording get_cam_image wrapper); the one
deliberate change is the eigen sign rule (see `sign_rule_flip`), applied inside EigenCAM / EigenGradCAM
subclasses so the rest of grad-cam's pipeline (ReLU, scale_cam_image, resize, multi-layer mean) runs unchanged.
"""
import numpy as np
import torch
from pytorch_grad_cam import (FEM, AblationCAM, EigenCAM, EigenGradCAM, FinerCAM, GradCAM, GradCAMElementWise,
                              GradCAMPlusPlus, HiResCAM, KPCA_CAM, LayerCAM, RandomCAM, ScoreCAM, XGradCAM)
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
import pytorch_grad_cam.base_cam
import pytorch_grad_cam.grad_cam_elementwise
import pytorch_grad_cam.hirescam
import pytorch_grad_cam.layer_cam

GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "gradcam_elementwise",
                    "eigengradcam"]
METHODS = GRADIENT_METHODS[:6] + ["eigencam", "eigengradcam", "scorecam", "ablationcam", "fem", "kpcacam",
                                  "finercam", "randomcam"]
# RandomCAM draws its weights from numpy's global legacy generator: seeded with this before each call (the
# Rust side's default `--seed`). FinerCAM's alpha: grad-cam's default (the Rust side's `--finer-alpha`).
RANDOM_SEED = 0
FINER_ALPHA = 1.0


def token_reshape(prefix, h, w):
    """grad-cam's ViT reshape_transform recipe: drop the `prefix` tokens (class, distillation), fold the rest
    row-major into a (B, D, h, w) map."""

    def reshape_transform(t):
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).transpose(2, 3).transpose(1, 2)

    return reshape_transform


def channels_last_reshape(t):
    """grad-cam's Swin reshape_transform recipe for a channels-last (B, H, W, C) layer output:
    permute to (B, C, H, W)."""
    return t.permute(0, 3, 1, 2)


def ranked_classes(logits, rank):
    """Each row's class of `rank` (0 = top-1) among its logits, ties to the lower index (a stable sort of
    the negated logits, as the Rust side's `Target::rank`)."""
    order = np.argsort(-np.asarray(logits, dtype=np.float32), axis=1, kind="stable")
    return [int(c) for c in order[:, rank]]


def _clone_outputs(layers):
    """Forward hooks that hand the rest of the network a copy of each layer's output, so that an in-place
    op after the layer (torchvision densenet's F.relu(..., inplace=True) after features.norm5) leaves the
    output as the module defined it. Register them after grad-cam's own hooks: those store the original."""
    return [layer.register_forward_hook(lambda module, inp, out: out.clone()) for layer in layers]


def sign_rule_flip(matrix_chw):
    """The documented eigen sign rule, for one image's (C, h, w) matrix that grad-cam decomposes.

    grad-cam's get_2d_projection reshapes to A (h*w, C), centres the columns (A - mean_row(A)), takes the top
    right-singular vector v of the centred matrix and returns (A - mean_row(A)) @ v. The rule orients v so that
    v . mean_row(A) >= 0 (A uncentred); if that dot product is exactly 0, v's largest-|.| component (first one
    on ties) is made positive. Returns True when grad-cam's v must be negated (i.e. the projection flipped).
    Same arithmetic as grad-cam (float32 numpy SVD on the same matrix), so v is bit-identical to its v; the dot
    product is taken in float64.
    """
    a = matrix_chw.copy()
    a[np.isnan(a)] = 0
    rows = a.reshape(a.shape[0], -1).transpose()
    mean_row = rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows - mean_row, full_matrices=True)
    v = vt[0, :]
    d = float(np.dot(v.astype(np.float64), mean_row.astype(np.float64)))
    if d == 0.0:
        return bool(v[int(np.argmax(np.abs(v)))] < 0)
    return d < 0


def signed_2d_projection(activation_batch):
    """grad-cam's get_2d_projection (the `eigen_smooth=True` reduction), then the sign rule on each image's
    matrix: installed below in the modules whose get_cam_image calls it for eigen_smooth, so that grad-cam's
    pipeline runs unchanged with a deterministic sign (EigenCAM / EigenGradCAM flip in their subclasses)."""
    projection = get_2d_projection(activation_batch)
    signs = np.float32([-1.0 if sign_rule_flip(m) else 1.0 for m in activation_batch])
    return projection * signs[:, None, None]


for _module in (pytorch_grad_cam.base_cam, pytorch_grad_cam.grad_cam_elementwise, pytorch_grad_cam.hirescam,
                pytorch_grad_cam.layer_cam):
    _module.get_2d_projection = signed_2d_projection


class _SignedEigen:
    """Mixin: grad-cam's projection, then the sign rule. Records the unsigned projection and the flips."""

    def _eigen_matrix(self, activations, grads):
        raise NotImplementedError

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        projection = super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
        matrix = self._eigen_matrix(activations, grads)
        flips = [sign_rule_flip(m) for m in matrix]
        self.eigen_projections.append(projection.copy())
        self.eigen_flips.append(flips)
        signs = np.float32([-1.0 if f else 1.0 for f in flips])
        return projection * signs[:, None, None]


class SignedEigenCAM(_SignedEigen, EigenCAM):
    def _eigen_matrix(self, activations, grads):
        return activations


class SignedEigenGradCAM(_SignedEigen, EigenGradCAM):
    def _eigen_matrix(self, activations, grads):
        return grads * activations


class RecordingTarget(ClassifierOutputTarget):
    """ClassifierOutputTarget that logs every per-image score it computes (ScoreCAM/AblationCAM call it on 1-D
    rows of the model output, in channel order)."""

    def __init__(self, category):
        super().__init__(category)
        self.log = []

    def __call__(self, model_output):
        value = super().__call__(model_output)
        if model_output.dim() == 1:
            self.log.append(float(value.detach().cpu().item()))
        return value


def _recording_ablation_layer(base):
    class Recording(base):
        """grad-cam's ablation layer, additionally recording the value it writes into each ablated channel
        (grad-cam uses torch.min(output) - 1e7 when the activation's minimum is not 0, and the minimum is taken
        over the whole batch AFTER earlier rows were ablated, so row j of a chunk gets min0 - (j+1)*1e7)."""

        def __init__(self):
            super().__init__()
            self.values = []

        def __call__(self, x):
            out = super().__call__(x)
            for i in range(out.size(0)):
                if out.dim() == 4:
                    v = out[i, int(self.indices[i])].reshape(-1)[0]
                else:  # ViT tokens (n, N, D): channel is the last axis
                    v = out[i, :, int(self.indices[i])].reshape(-1)[0]
                self.values.append(float(v))
            return out

    return Recording()


def _make(method, model, layers, reshape_transform, vit, scorecam_batch, ablation_batch):
    cls = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
           "layercam": LayerCAM, "gradcam_elementwise": GradCAMElementWise, "eigencam": SignedEigenCAM,
           "eigengradcam": SignedEigenGradCAM, "scorecam": ScoreCAM, "fem": FEM, "kpcacam": KPCA_CAM,
           "finercam": FinerCAM, "randomcam": RandomCAM}
    if method == "ablationcam":
        layer = _recording_ablation_layer(AblationLayerVit if vit else AblationLayer)
        return AblationCAM(model, layers, reshape_transform=reshape_transform, ablation_layer=layer,
                           batch_size=ablation_batch)
    cam = cls[method](model, layers, reshape_transform=reshape_transform)
    if method == "scorecam":
        cam.batch_size = scorecam_batch
    if method in ("eigencam", "eigengradcam"):
        cam.eigen_projections, cam.eigen_flips = [], []
    return cam


def _base(cam):
    """The BaseCAM doing the work (FinerCAM wraps a GradCAM)."""
    return cam.base_cam if isinstance(cam, FinerCAM) else cam


def _call(method, cam, x, targets, classes, top1, eigen_smooth=False, aug_smooth=False):
    """grad-cam's call for `method`. FinerCAM picks its own FinerWeightedTargets: with targets=None for
    top-1 classes, target_idx for one class for every image, else the targets its code would build.
    `aug_smooth`: grad-cam's own for every method but FinerCAM, whose call has no aug_smooth; for it, the same
    loop as BaseCAM.forward_augmentation_smoothing around FinerCAM.forward, each augmented input compared with
    its own nearest classes."""
    if method == "randomcam":
        np.random.seed(RANDOM_SEED)
    if method != "finercam":
        return cam(input_tensor=x, targets=targets, eigen_smooth=eigen_smooth, aug_smooth=aug_smooth)
    if aug_smooth:
        cams = []
        for transform in cam.base_cam.tta_transforms:
            c = _finer_call(cam, transform.augment_image(x), classes, eigen_smooth)
            cams.append(transform.deaugment_mask(torch.from_numpy(c[:, None]))[:, 0].numpy())
        return np.mean(np.float32(cams), axis=0)
    if list(classes) == list(top1):
        return cam(x, alpha=FINER_ALPHA, eigen_smooth=eigen_smooth)
    if len(set(classes)) == 1:
        return cam(x, alpha=FINER_ALPHA, target_idx=int(classes[0]), eigen_smooth=eigen_smooth)
    return _finer_call(cam, x, classes, eigen_smooth)


def _finer_call(cam, x, classes, eigen_smooth):
    """FinerCAM of `classes` on `x` with the FinerWeightedTargets its code builds from x's logits."""
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget
    with torch.no_grad():
        logits = cam.base_cam.model(x).numpy()
    finer = []
    for i, c in enumerate(classes):
        order = np.argsort(np.abs(logits[i] - logits[i, c]))
        finer.append(FinerWeightedTarget(int(c), [int(j) for j in order[1:4]], FINER_ALPHA))
    return cam(x, targets=finer, alpha=FINER_ALPHA, eigen_smooth=eigen_smooth)


def capture_native(model, x, layers, classes=None, clone_output=False):
    """Logits, native-layout activations and gradients of sum_b logits[b, c_b] w.r.t. each layer output, where
    c_b is `classes[b]` (default: each image's top-1). `clone_output` hands the rest of the network a copy of
    the layer's output (see `_clone_outputs`), so the gradient is the one of the output as its module defined
    it even when an in-place op follows."""
    acts, grads, handles = {}, {}, []
    for i, layer in enumerate(layers):
        def hook(module, inp, out, i=i):
            acts[i] = out.detach().clone()
            out.register_hook(lambda g, i=i: grads.__setitem__(i, g.detach().clone()))
            if clone_output:
                return out.clone()
        handles.append(layer.register_forward_hook(hook))
    try:
        model.zero_grad()
        logits = model(x)
        if classes is None:
            classes = logits.detach().argmax(dim=1)
        else:
            classes = torch.as_tensor(classes, dtype=torch.int64)
        logits.gather(1, classes[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad()
    return (logits.detach().numpy().astype(np.float32), classes.numpy().astype(np.int64),
            [acts[i].numpy() for i in range(len(layers))], [grads[i].numpy() for i in range(len(layers))])


def scorecam_masks(activations, input_hw, count=4):
    """The first `count` normalised upsampled masks exactly as grad-cam's ScoreCAM builds them
    (torch.nn.UpsamplingBilinear2d, i.e. bilinear with align_corners=True; (x-min)/(max-min+1e-8))."""
    with torch.no_grad():
        upsampled = torch.nn.UpsamplingBilinear2d(size=input_hw)(torch.from_numpy(activations[:, :count]))
        flat = upsampled.view(upsampled.size(0), upsampled.size(1), -1)
        maxs, mins = flat.max(dim=-1)[0][:, :, None, None], flat.min(dim=-1)[0][:, :, None, None]
        return ((upsampled - mins) / (maxs - mins + 1e-8)).numpy()


def run_methods(model, x, layers, methods=METHODS, reshape_transform=None, vit=False, scorecam_batch=16,
                ablation_batch=32, log=print, classes=None, clone_output=False, eigen_smooth=False,
                aug_smooth=False):
    """Runs each grad-cam method on (model, x, layers) with ClassifierOutputTargets of `classes` (one per image;
    default: each image's top-1). `clone_output`: the rest of the network gets a copy of each layer's output
    (`_clone_outputs`), i.e. grad-cam's answer by the definition where an in-place op after the layer would
    rewrite the activation grad-cam stored (not for AblationCAM, which replaces the layer). `eigen_smooth`,
    `aug_smooth`: grad-cam's flags of the same names (see `_call`); the classes then come from the unaugmented
    input, so every augmented pass explains the same class.

    Returns {method: {"cam": (B,H,W), "raw": [per layer (B,h,w)], "scaled": [...], extra keys}}.
    extra: scorecam "scores" [per layer (B,C)]; ablationcam "scores" [per layer (B,C)], "original" (B,),
    "values" [per layer (B,C)] (value written into the ablated channel); eigen "projection" [per layer
    (B,h,w)] (grad-cam's unsigned projection) and "flipped" [per layer [bool]*B].
    """
    import time

    model.eval()
    with torch.no_grad():
        top1 = model(x).argmax(dim=1).tolist()
    if classes is None:
        classes = top1
    out = {}
    for method in methods:
        t0 = time.time()
        cam = _make(method, model, layers, reshape_transform, vit, scorecam_batch, ablation_batch)
        clones = _clone_outputs(layers) if clone_output and method != "ablationcam" else []
        targets = [RecordingTarget(c) for c in classes]
        raws, scores = [], []
        original = None
        inner = _base(cam).get_cam_image

        def recording_get_cam_image(*args, **kwargs):
            for t in targets:
                t.log.clear()
            r = inner(*args, **kwargs)
            raws.append(np.float32(r))
            if method == "scorecam":
                scores.append(np.float32([t.log for t in targets]))
            elif method == "ablationcam":
                # first call per target: the unablated forward; then one call per ablated channel
                scores.append(np.float32([t.log[1:] for t in targets]))
                nonlocal_original.append(np.float32([t.log[0] for t in targets]))
            return r

        nonlocal_original = []
        _base(cam).get_cam_image = recording_get_cam_image
        result = _call(method, cam, x, targets, classes, top1, eigen_smooth, aug_smooth)
        entry = {"cam": np.float32(result), "raw": raws,
                 "scaled": [scale_cam_image(np.maximum(r, 0)) for r in raws]}
        if method == "scorecam":
            entry["scores"] = scores
        if method == "ablationcam":
            for o in nonlocal_original[1:]:
                assert np.array_equal(o, nonlocal_original[0])
            original = nonlocal_original[0]
            c = [s.shape[1] for s in scores]
            vals = np.float32(cam.ablation_layer.values)
            entry["scores"], entry["original"], entry["values"] = scores, original, []
            pos = 0
            for n in c:  # values were recorded per layer, per image, per channel, in that order
                entry["values"].append(vals[pos:pos + n * len(classes)].reshape(len(classes), n))
                pos += n * len(classes)
        if method in ("eigencam", "eigengradcam"):
            entry["projection"], entry["flipped"] = cam.eigen_projections, cam.eigen_flips
        _base(cam).activations_and_grads.release()
        for handle in clones:
            handle.remove()
        out[method] = entry
        log(f"  {method}: {time.time() - t0:.1f}s")
    return classes, out
