//! The few operators the zoo needs beyond candle's own, each cheap below the cut and with an
//! input-only backward above it.
//!
//! Why not candle's ops everywhere: its grouped convolution runs one small convolution per
//! group (hundreds for a depthwise layer), and its `Conv2D` backward always computes the kernel
//! gradient too, which Grad-CAM never needs. Below the cut nothing is tracked
//! ([`Tensor::track_op`] is false), so every operator here takes its plain fast path; above it,
//! gradients flow to the input only.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// An activation fused into a batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    None,
    Relu6,
}

impl Act {
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// Whether the gradient passes, judged from the output (as PyTorch's threshold backward does).
    fn passes(self, y: f32) -> bool {
        match self {
            Act::None => true,
            Act::Relu6 => y > 0.0 && y < 6.0,
        }
    }

    /// The activation alone, as candle ops (differentiable): the reference of the fused op.
    #[cfg(test)]
    fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::None => Ok(x.clone()),
            Act::Relu6 => x.clamp(0f32, 6f32),
        }
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("gradcam op: input must be contiguous".into()))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Attaches a custom input gradient to a value computed elsewhere (untracked): the result
/// equals `out`, and back-propagates `grad(g)` to `x`. Costs one copy of `out`.
fn attach(
    x: &Tensor,
    out: Tensor,
    grad: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    x.apply_op1(Attach { out, grad: Box::new(grad) })
}

type GradFn = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct Attach {
    out: Tensor,
    grad: GradFn,
}

impl CustomOp1 for Attach {
    fn name(&self) -> &'static str {
        "gradcam-attach"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.out.flatten_all()?.to_vec1()?), self.out.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.grad)(grad_res)?))
    }
}

/// ReLU whose backward is guided backprop's (pytorch-grad-cam's `GuidedBackpropReLU`): the
/// gradient passes where the input was positive and the gradient itself is positive.
pub(crate) fn guided_relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GuidedRelu)
}

struct GuidedRelu;

impl CustomOp1 for GuidedRelu {
    fn name(&self) -> &'static str {
        "gradcam-guided-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        Ok((CpuStorage::F32(x.iter().map(|v| v.max(0.0)).collect()), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let positive = arg.gt(0f32)?.to_dtype(grad_res.dtype())?;
        let rising = grad_res.gt(0f32)?.to_dtype(grad_res.dtype())?;
        Ok(Some(grad_res.mul(&positive)?.mul(&rising)?))
    }
}

/// Inference batch norm (channel axis 1) with its activation fused: one pass over memory.
#[derive(Clone, Debug)]
pub(crate) struct BatchNorm {
    scale: Arc<Vec<f32>>,
    shift: Arc<Vec<f32>>,
}

impl BatchNorm {
    /// From PyTorch's parameters: `y = (x - mean) / sqrt(var + eps) * weight + bias`.
    pub(crate) fn new(weight: &[f32], bias: &[f32], mean: &[f32], var: &[f32], eps: f64) -> Self {
        let scale: Vec<f32> =
            weight.iter().zip(var).map(|(w, v)| (*w as f64 / (*v as f64 + eps).sqrt()) as f32).collect();
        let shift = bias.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        BatchNorm { scale: Arc::new(scale), shift: Arc::new(shift) }
    }

    /// The bias of the affine map it folds to, `bias − mean · weight / √(var + eps)`: FullGrad's
    /// bias of a BatchNorm.
    pub(crate) fn bias(&self) -> &[f32] {
        &self.shift
    }

    /// Number of channels.
    pub(crate) fn channels(&self) -> usize {
        self.scale.len()
    }

    pub(crate) fn forward(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        x.contiguous()?.apply_op1(BnAct { bn: self.clone(), act })
    }
}

struct BnAct {
    bn: BatchNorm,
    act: Act,
}

fn plane_size(shape: &Shape, channels: usize) -> Result<usize> {
    let dims = shape.dims();
    if dims.len() < 2 || dims[1] != channels {
        candle_core::bail!("batch norm over {channels} channels got shape {dims:?}");
    }
    Ok(dims[2..].iter().product::<usize>().max(1))
}

impl CustomOp1 for BnAct {
    fn name(&self) -> &'static str {
        "gradcam-bn-act"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let c = self.bn.channels();
        let plane = plane_size(layout.shape(), c)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(i, (o, x))| {
            let (s, t) = (self.bn.scale[i % c], self.bn.shift[i % c]);
            for (o, x) in o.iter_mut().zip(x) {
                *o = self.act.apply(x * s + t);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = BnActBwd { bn: self.bn.clone(), act: self.act };
        Ok(Some(grad_res.contiguous()?.apply_op2_no_bwd(res, &op)?))
    }
}

struct BnActBwd {
    bn: BatchNorm,
    act: Act,
}

impl CustomOp2 for BnActBwd {
    fn name(&self) -> &'static str {
        "gradcam-bn-act-bwd"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, y) = (contiguous_f32(g, gl)?, contiguous_f32(y, yl)?);
        let c = self.bn.channels();
        let plane = plane_size(gl.shape(), c)?;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(plane).zip(g.par_chunks(plane).zip(y.par_chunks(plane))).enumerate().for_each(
            |(i, (o, (g, y)))| {
                let s = self.bn.scale[i % c];
                for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                    *o = if self.act.passes(*y) { g * s } else { 0.0 };
                }
            },
        );
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Padding {
    /// The same amount on every side (PyTorch's `padding=p`).
    Symmetric(usize),
    /// TensorFlow's "SAME": output `ceil(in / stride)`, the odd pixel padded at the bottom/right,
    /// computed from the input size (timm's `Conv2dSame`).
    Same,
}

/// `(before, after, out)` padding and output size along one axis.
fn pad_1d(size: usize, k: usize, stride: usize, padding: Padding) -> Result<(usize, usize, usize)> {
    let (before, after) = match padding {
        Padding::Symmetric(p) => (p, p),
        Padding::Same => {
            let total = ((size.div_ceil(stride) - 1) * stride + k).saturating_sub(size);
            (total / 2, total - total / 2)
        }
    };
    if size + before + after < k {
        candle_core::bail!("input of size {size} is smaller than the {k}x{k} kernel");
    }
    Ok((before, after, (size + before + after - k) / stride + 1))
}

/// A 2-D convolution (PyTorch `Conv2d`): dense, or depthwise when `groups` equals the channel
/// count; dense ones may be dilated.
#[derive(Clone, Debug)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: Padding,
    depthwise: Option<Arc<Vec<f32>>>,
    dilation: usize,
}

impl Conv2d {
    /// `weight` `(out, in / groups, k, k)`; `groups` must be 1 or the channel count.
    pub(crate) fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: Padding,
        depthwise: bool,
    ) -> Result<Self> {
        let depthwise =
            if depthwise { Some(Arc::new(weight.flatten_all()?.to_vec1::<f32>()?)) } else { None };
        Ok(Conv2d { weight, bias, stride, padding, depthwise, dilation: 1 })
    }

    /// The same convolution with its taps `dilation` apart (dense only; padding as given).
    pub(crate) fn dilated(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// The bias per output channel, when the convolution has one.
    pub(crate) fn bias(&self) -> Result<Option<Vec<f32>>> {
        self.bias.as_ref().map(|b| b.flatten_all()?.to_vec1::<f32>()).transpose()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (_, _, kh, kw) = self.weight.dims4()?;
        // The window a dilated kernel spans.
        let span = |k: usize| self.dilation * (k - 1) + 1;
        let (top, bottom, _) = pad_1d(h, span(kh), self.stride, self.padding)?;
        let (left, right, _) = pad_1d(w, span(kw), self.stride, self.padding)?;
        let y = match &self.depthwise {
            Some(weights) => {
                let op = DepthwiseConv {
                    weights: weights.clone(),
                    k: kh,
                    stride: self.stride,
                    top,
                    bottom,
                    left,
                    right,
                };
                x.contiguous()?.apply_op1(op)?
            }
            None if top == bottom && left == right && top == left => self.dense(x, top)?,
            // Asymmetric ("SAME" with an odd total): pad explicitly; the pad is differentiable.
            None => self.dense(&x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?, 0)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    fn dense(&self, x: &Tensor, pad: usize) -> Result<Tensor> {
        let dilation = self.dilation;
        let op = DenseConv { stride: self.stride, pad, dilation, col_budget: COL_BUDGET };
        let kernel = self.weight.contiguous()?;
        let conv = |x: &Tensor| x.contiguous()?.apply_op2_no_bwd(&kernel, &op);
        if !x.track_op() {
            return conv(x);
        }
        let y = conv(&x.detach())?;
        let (weight, stride) = (self.weight.clone(), self.stride);
        let (_, _, ih, iw) = x.dims4()?;
        let (_, _, kh, _) = weight.dims4()?;
        attach(x, y, move |g| {
            // conv_transpose2d takes one output padding for both axes: use the larger and crop.
            let (_, _, gh, gw) = g.dims4()?;
            let base = |gs: usize| ((gs - 1) * stride + dilation * (kh - 1) + 1).saturating_sub(2 * pad);
            let extra = ih.saturating_sub(base(gh)).max(iw.saturating_sub(base(gw)));
            let gx = g.contiguous()?.conv_transpose2d(&weight, pad, extra, stride, dilation)?;
            gx.narrow(2, 0, ih)?.narrow(3, 0, iw)
        })
    }
}

/// Floats of column matrix one image's product may take at a time (4 MB, the order of a
/// core's L2/L3 share): larger images are done in bands of output rows.
const COL_BUDGET: usize = 1 << 20;

/// Dense convolution (groups 1), symmetric padding: per image, one matrix product
/// `weight (out, in·kh·kw) × columns (in·kh·kw, oh·ow)` written straight into the NCHW output.
/// The columns are built row by row, each row a shifted (strided) copy of one input plane, and a
/// 1x1 stride-1 convolution multiplies the input itself. candle's own conv2d builds its columns
/// by scattered stores and took more time than its matrix products did.
struct DenseConv {
    stride: usize,
    pad: usize,
    dilation: usize,
    /// [`COL_BUDGET`], smaller in tests to exercise the bands.
    col_budget: usize,
}

impl DenseConv {
    /// Fills `col` (rows `(c, ky, kx)`, columns the output pixels of rows `oy0..oy0 + rows`) from
    /// one image `x` `(c, h, w)`.
    fn columns(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        (kh, kw): (usize, usize),
        (oy0, rows, ow): (usize, usize, usize),
        col: &mut [f32],
    ) {
        let (s, d, p) = (self.stride, self.dilation, self.pad);
        let n = rows * ow;
        for (r, row) in col.chunks_exact_mut(n).enumerate() {
            let (ci, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            // Output columns whose input column `ox * s + kx * d - p` lies inside the row.
            let shift = kx * d;
            let first = p.saturating_sub(shift).div_ceil(s).min(ow);
            let last = if w + p > shift { ((w + p - shift - 1) / s + 1).min(ow) } else { 0 }.max(first);
            for (i, out) in row.chunks_exact_mut(ow).enumerate() {
                let iy = ((oy0 + i) * s + ky * d) as isize - p as isize;
                if iy < 0 || iy >= h as isize {
                    out.fill(0.0);
                    continue;
                }
                let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                out[..first].fill(0.0);
                out[last..].fill(0.0);
                let x0 = first * s + shift - p;
                if s == 1 {
                    out[first..last].copy_from_slice(&line[x0..x0 + last - first]);
                } else {
                    for (j, o) in out[first..last].iter_mut().enumerate() {
                        *o = line[x0 + j * s];
                    }
                }
            }
        }
        debug_assert_eq!(col.len(), c * kh * kw * n);
    }
}

impl CustomOp2 for DenseConv {
    fn name(&self) -> &'static str {
        "gradcam-dense-conv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, weight) = (contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?);
        let (&[b, c, h, w], &[co, ci, kh, kw]) = (xl.dims(), wl.dims()) else {
            candle_core::bail!(
                "conv2d expects (B, C, H, W) and (O, C, kh, kw), got {:?} and {:?}",
                xl.dims(),
                wl.dims()
            )
        };
        let (s, d, p) = (self.stride, self.dilation, self.pad);
        let span = |k: usize| d * (k - 1) + 1;
        if ci != c || s == 0 || h + 2 * p < span(kh) || w + 2 * p < span(kw) {
            candle_core::bail!(
                "conv2d: input {:?} does not fit the kernel {:?} (padding {p})",
                xl.dims(),
                wl.dims()
            );
        }
        let (oh, ow) = ((h + 2 * p - span(kh)) / s + 1, (w + 2 * p - span(kw)) / s + 1);
        let (k, plane) = (c * kh * kw, oh * ow);
        let direct = kh == 1 && kw == 1 && s == 1 && p == 0;
        // Bands bound the columns' memory; the input itself needs none.
        let band = if direct { oh } else { (self.col_budget / (k * ow).max(1)).clamp(1, oh) };
        let threads = rayon::current_num_threads();
        // Enough images to keep every thread busy: one single-threaded product per image;
        // otherwise the images in turn, each product on every thread.
        let parallelism = if b >= threads || threads == 1 {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(threads)
        };
        let mut out = vec![0f32; b * co * plane];
        let image = |(img, dst): (usize, &mut [f32])| {
            let x = &x[img * c * h * w..(img + 1) * c * h * w];
            let mut col = Vec::new();
            for oy0 in (0..oh).step_by(band) {
                let rows = band.min(oh - oy0);
                let n = rows * ow;
                let rhs: &[f32] = if direct {
                    x
                } else {
                    col.resize(k * n, 0.0);
                    self.columns(x, (c, h, w), (kh, kw), (oy0, rows, ow), &mut col);
                    &col
                };
                // SAFETY: `dst` holds `co` rows of `plane` floats; the product writes the `n`
                // columns from `oy0 * ow` of each (`oy0 * ow + n <= plane`), reads `weight` as a
                // contiguous (co, k) matrix (its length is `co * k`, checked by the dims above)
                // and `rhs` as a contiguous (k, n) one (`direct`: the (c, h * w) image, where
                // n = h * w; else `col`, resized to k * n). Nothing else touches them meanwhile.
                unsafe {
                    gemm::gemm(
                        co,
                        n,
                        k,
                        dst.as_mut_ptr().add(oy0 * ow),
                        1,
                        plane as isize,
                        false,
                        weight.as_ptr(),
                        1,
                        k as isize,
                        rhs.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
        };
        if matches!(parallelism, gemm::Parallelism::None) && b > 1 {
            out.par_chunks_mut(co * plane).enumerate().for_each(image);
        } else {
            out.chunks_mut(co * plane).enumerate().for_each(image);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, co, oh, ow))))
    }
}

/// Depthwise convolution, one direct loop per channel plane (candle would run one convolution
/// per channel).
struct DepthwiseConv {
    weights: Arc<Vec<f32>>,
    k: usize,
    stride: usize,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
}

impl DepthwiseConv {
    fn geometry(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize)> {
        let [b, c, h, w] = dims else {
            candle_core::bail!("depthwise conv expects (B, C, H, W), got {dims:?}")
        };
        if c * self.k * self.k != self.weights.len() {
            candle_core::bail!("depthwise conv: {c} channels for {} weights", self.weights.len());
        }
        Ok((*b, *c, *h, *w))
    }

    /// Visits every (output index, input index, weight) triple of one plane, row by row.
    #[inline]
    fn for_each_tap(
        &self,
        channel: usize,
        (h, w, oh, ow): (usize, usize, usize, usize),
        mut f: impl FnMut(usize, usize, usize, f32),
    ) {
        let (k, s) = (self.k, self.stride);
        let wk = &self.weights[channel * k * k..(channel + 1) * k * k];
        for y in 0..oh {
            for kh in 0..k {
                let iy = (y * s + kh) as isize - self.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for kw in 0..k {
                    // Output columns whose input column `x * s + kw - left` lies inside the row.
                    let first = self.left.saturating_sub(kw).div_ceil(s);
                    let last =
                        if w + self.left > kw { ((w + self.left - kw - 1) / s + 1).min(ow) } else { 0 };
                    if first < last {
                        let x0 = first * s + kw - self.left;
                        f(y * ow + first, iy as usize * w + x0, last - first, wk[kh * k + kw]);
                    }
                }
            }
        }
    }

    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let out = |size: usize, pad: usize| (size + pad - self.k) / self.stride + 1;
        (out(h, self.top + self.bottom), out(w, self.left + self.right))
    }
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "gradcam-depthwise-conv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (b, c, h, w) = self.geometry(layout.dims())?;
        let (oh, ow) = self.out_hw(h, w);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).enumerate().for_each(|(i, (o, x))| {
            let s = self.stride;
            self.for_each_tap(i % c, (h, w, oh, ow), |o0, i0, n, wv| {
                for (j, o) in o[o0..o0 + n].iter_mut().enumerate() {
                    *o += wv * x[i0 + j * s];
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let op = DepthwiseConvBwd {
            conv: DepthwiseConv {
                weights: self.weights.clone(),
                k: self.k,
                stride: self.stride,
                top: self.top,
                bottom: self.bottom,
                left: self.left,
                right: self.right,
            },
            h,
            w,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The input gradient of [`DepthwiseConv`]: the same taps, scattered instead of gathered.
struct DepthwiseConvBwd {
    conv: DepthwiseConv,
    h: usize,
    w: usize,
}

impl CustomOp1 for DepthwiseConvBwd {
    fn name(&self) -> &'static str {
        "gradcam-depthwise-conv-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout)?;
        let (b, c, oh, ow) = self.conv.geometry(layout.dims())?;
        let (h, w) = (self.h, self.w);
        let mut out = vec![0f32; b * c * h * w];
        out.par_chunks_mut(h * w).zip(g.par_chunks(oh * ow)).enumerate().for_each(|(i, (gx, g))| {
            let s = self.conv.stride;
            self.conv.for_each_tap(i % c, (h, w, oh, ow), |o0, i0, n, wv| {
                for (j, g) in g[o0..o0 + n].iter().enumerate() {
                    gx[i0 + j * s] += wv * g;
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}

/// PyTorch `MaxPool2d(3, stride 2, padding 1)` on a non-negative input (after ReLU, where zero
/// padding equals PyTorch's -inf padding), with a backward to the first maximum of each window.
pub(crate) fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    if !x.track_op() {
        return padded.max_pool2d_with_stride(3, 2);
    }
    let padded = padded.detach();
    let y = padded.max_pool2d_with_stride(3, 2)?;
    let (b, c, h, w) = x.dims4()?;
    let input = padded.flatten_all()?.to_vec1::<f32>()?;
    attach(x, y, move |g| {
        let (_, _, oh, ow) = g.dims4()?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        let (ph, pw) = (h + 2, w + 2);
        let mut gx = vec![0f32; b * c * h * w];
        for p in 0..b * c {
            let xin = &input[p * ph * pw..(p + 1) * ph * pw];
            for y in 0..oh {
                for x in 0..ow {
                    let mut best = (0, f32::NEG_INFINITY);
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (iy, ix) = (2 * y + dy, 2 * x + dx);
                            // Padding cells are never the maximum PyTorch picks.
                            let inside = iy >= 1 && iy <= h && ix >= 1 && ix <= w;
                            if inside && xin[iy * pw + ix] > best.1 {
                                best = ((iy - 1) * w + ix - 1, xin[iy * pw + ix]);
                            }
                        }
                    }
                    gx[p * h * w + best.0] += g[p * oh * ow + y * ow + x];
                }
            }
        }
        Tensor::from_vec(gx, (b, c, h, w), &candle_core::Device::Cpu)
    })
}

/// PyTorch `AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)` (ResNet-D's downsample):
/// an odd edge is replicated, which averages the last partial window over its valid cells only.
pub(crate) fn avg_pool_2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if h % 2 == 1 { x.pad_with_same(2, 0, 1)? } else { x.clone() };
    let x = if w % 2 == 1 { x.pad_with_same(3, 0, 1)? } else { x };
    x.avg_pool2d(2)
}

/// LayerNorm over the last axis.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last axis.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    // Softmax is shift-invariant, so the detached max changes no gradient.
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// PyTorch `F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)` on `(B, C, H, W)`,
/// as two matrix products (`R_h · X · R_wᵀ`), which candle differentiates (its own bilinear
/// upsampling has no backward).
pub(crate) fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c, ih, iw) = x.dims4()?;
    let rh = Tensor::from_vec(bilinear_weights(ih, h), (h, ih), x.device())?;
    let rw = Tensor::from_vec(bilinear_weights(iw, w), (w, iw), x.device())?.t()?;
    let y = rh.broadcast_matmul(&x.reshape((b * c, ih, iw))?)?.broadcast_matmul(&rw)?;
    y.reshape((b, c, h, w))
}

/// The `(output, input)` interpolation matrix of one axis: PyTorch's half-pixel source index
/// `(o + 0.5) · input / output − 0.5`, clamped at 0, between its two neighbours.
fn bilinear_weights(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    for o in 0..output {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let t = (src - i0 as f64) as f32;
        m[o * input + i0] += 1.0 - t;
        m[o * input + i1] += t;
    }
    m
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A small deterministic generator: tests must not depend on candle's RNG.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Gradient of `sum(f(x) * r)` w.r.t. `x`.
    fn grad_of(x: &Tensor, r: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Tensor {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor()).unwrap();
        let grads = y.mul(r).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(v.as_tensor()).unwrap().clone()
    }

    /// The same gradient for an affine `f`, by unit steps on every input (candle's own conv
    /// backward mishandles non-square inputs, so it cannot be the reference).
    fn affine_grad(x: &Tensor, r: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Tensor {
        let score = |x: &Tensor| f(x).unwrap().mul(r).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let base = score(&x.zeros_like().unwrap());
        let n = x.elem_count();
        let g: Vec<f32> = (0..n)
            .map(|i| {
                let mut e = vec![0f32; n];
                e[i] = 1.0;
                score(&Tensor::from_vec(e, x.dims(), &Device::Cpu).unwrap()) - base
            })
            .collect();
        Tensor::from_vec(g, x.dims(), &Device::Cpu).unwrap()
    }

    #[test]
    fn depthwise_matches_candles_grouped_conv_forward_and_backward() {
        for (k, stride, h, w) in [(3, 1, 7, 6), (5, 2, 9, 8), (3, 2, 8, 7)] {
            let x = rand(&[2, 4, h, w], 1);
            let weight = rand(&[4, 1, k, k], 2);
            let conv = Conv2d::new(weight.clone(), None, stride, Padding::Symmetric(k / 2), true).unwrap();
            let reference = |x: &Tensor| x.conv2d(&weight, k / 2, stride, 1, 4);
            let (ours, theirs) = (conv.forward(&x).unwrap(), reference(&x).unwrap());
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let r = rand(theirs.dims(), 3);
            let d = max_diff(&grad_of(&x, &r, |x| conv.forward(x)), &affine_grad(&x, &r, reference));
            assert!(d < 1e-4, "k {k} stride {stride}: {d}");
        }
    }

    /// A dilated dense convolution (torchvision's dilated ResNet stages: padding = dilation), on
    /// a non-square input, strided and not: forward against candle's, backward against unit steps.
    #[test]
    fn dilated_conv_matches_candle_forward_and_backward() {
        for (dilation, stride, h, w) in [(2, 1, 9, 7), (4, 1, 12, 10), (2, 2, 11, 8)] {
            let x = rand(&[2, 3, h, w], 11);
            let weight = rand(&[4, 3, 3, 3], 12);
            let conv = Conv2d::new(weight.clone(), None, stride, Padding::Symmetric(dilation), false)
                .unwrap()
                .dilated(dilation);
            let reference = |x: &Tensor| x.conv2d(&weight, dilation, stride, dilation, 1);
            let (ours, theirs) = (conv.forward(&x).unwrap(), reference(&x).unwrap());
            assert!(max_diff(&ours, &theirs) < 1e-5, "dilation {dilation} stride {stride}");
            let r = rand(theirs.dims(), 13);
            let d = max_diff(&grad_of(&x, &r, |x| conv.forward(x)), &affine_grad(&x, &r, reference));
            assert!(d < 1e-4, "dilation {dilation} stride {stride}: {d}");
        }
    }

    /// `F.interpolate(x, size, mode="bilinear", align_corners=False)`: PyTorch 2.11's values for
    /// a 2x3 ramp upsampled to 4x5 and a 3x4 input downsampled to 2x3 (half-pixel centres, the
    /// source index clamped at 0), and a backward equal to unit steps.
    #[test]
    fn bilinear_resize_matches_pytorch() {
        let x = Tensor::from_vec((0..6).map(|v| v as f32).collect::<Vec<_>>(), (1, 1, 2, 3), &Device::Cpu)
            .unwrap();
        let up = resize_bilinear(&x, 4, 5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [
            0.0, 0.4, 1.0, 1.6, 2.0, 0.75, 1.15, 1.75, 2.35, 2.75, 2.25, 2.65, 3.25, 3.85, 4.25, 3.0, 3.4,
            4.0, 4.6, 5.0,
        ];
        for (g, w) in up.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{up:?}");
        }
        let x = Tensor::from_vec((0..12).map(|v| v as f32).collect::<Vec<_>>(), (1, 1, 3, 4), &Device::Cpu)
            .unwrap();
        let down = resize_bilinear(&x, 2, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [1.1666666, 2.5, 3.8333335, 7.1666665, 8.5, 9.833333];
        for (g, w) in down.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{down:?}");
        }
        let x = rand(&[2, 3, 5, 7], 14);
        let r = rand(&[2, 3, 9, 4], 15);
        let f = |x: &Tensor| resize_bilinear(x, 9, 4);
        assert!(max_diff(&grad_of(&x, &r, f), &affine_grad(&x, &r, f)) < 1e-5);
    }

    #[test]
    fn same_padding_pads_the_odd_pixel_after() {
        // TF "SAME", stride 2, 3x3 on 8x7: total pad 1 (rows: bottom only), 2 (cols: 1 + 1).
        let x = rand(&[1, 3, 8, 7], 4);
        let weight = rand(&[3, 1, 3, 3], 5);
        let explicit =
            |x: &Tensor| x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 1, 1)?.conv2d(&weight, 0, 2, 1, 3);
        let dw = Conv2d::new(weight.clone(), None, 2, Padding::Same, true).unwrap();
        assert_eq!(dw.forward(&x).unwrap().dims(), &[1, 3, 4, 4]);
        assert!(max_diff(&dw.forward(&x).unwrap(), &explicit(&x).unwrap()) < 1e-5);
        let r = rand(&[1, 3, 4, 4], 6);
        assert!(max_diff(&grad_of(&x, &r, |x| dw.forward(x)), &affine_grad(&x, &r, explicit)) < 1e-4);
        // The dense path pads explicitly.
        let dense_w = rand(&[2, 3, 3, 3], 7);
        let dense = Conv2d::new(dense_w.clone(), None, 2, Padding::Same, false).unwrap();
        let explicit =
            |x: &Tensor| x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 1, 1)?.conv2d(&dense_w, 0, 2, 1, 1);
        assert!(max_diff(&dense.forward(&x).unwrap(), &explicit(&x).unwrap()) < 1e-5);
    }

    /// The dense convolution against candle's, every path: 1x1 stride 1 (the input itself),
    /// 1x1 strided, padded, dilated, a padding wider than the kernel's reach, non-square
    /// inputs and kernels, one image (threaded products) and several (an image per thread), the
    /// whole image in one band and in bands of one or a few rows.
    #[test]
    fn dense_conv_matches_candles_in_bands_and_batches() {
        let cases = [
            // (kh, kw, stride, pad, dilation, h, w)
            (1, 1, 1, 0, 1, 5, 7),
            (1, 1, 2, 0, 1, 9, 6),
            (3, 3, 1, 1, 1, 6, 9),
            (3, 3, 2, 1, 1, 9, 8),
            (7, 7, 2, 3, 1, 11, 10),
            (3, 3, 1, 2, 2, 9, 7),
            (3, 5, 2, 4, 1, 4, 5),
            (3, 1, 3, 0, 2, 13, 4),
        ];
        for (kh, kw, stride, pad, dilation, h, w) in cases {
            for batch in [1, 3] {
                let x = rand(&[batch, 4, h, w], 16);
                let weight = rand(&[5, 4, kh, kw], 17);
                let theirs = x.conv2d(&weight, pad, stride, dilation, 1).unwrap();
                for col_budget in [1, 4 * kh * kw * w, COL_BUDGET] {
                    let op = DenseConv { stride, pad, dilation, col_budget };
                    let ours = x.apply_op2_no_bwd(&weight, &op).unwrap();
                    let d = max_diff(&ours, &theirs);
                    assert!(d < 1e-5, "{kh}x{kw} stride {stride} pad {pad} dilation {dilation} {h}x{w} batch {batch} budget {col_budget}: {d}");
                }
            }
        }
        // A kernel that does not fit is an error, not a panic.
        let op = DenseConv { stride: 1, pad: 0, dilation: 1, col_budget: COL_BUDGET };
        assert!(rand(&[1, 4, 2, 2], 1).apply_op2_no_bwd(&rand(&[5, 4, 3, 3], 2), &op).is_err());
        assert!(rand(&[1, 3, 5, 5], 1).apply_op2_no_bwd(&rand(&[5, 4, 3, 3], 2), &op).is_err());
    }

    #[test]
    fn dense_conv_input_gradient_matches_candle_autograd() {
        // Odd sizes and stride 2: conv_transpose2d needs an output padding on one axis only.
        for (k, stride, pad, h, w) in [(3, 2, 1, 9, 8), (1, 2, 0, 7, 7), (3, 1, 1, 5, 6), (7, 2, 3, 11, 10)] {
            let x = rand(&[2, 3, h, w], 8);
            let weight = rand(&[4, 3, k, k], 9);
            let bias = rand(&[4], 10);
            let conv =
                Conv2d::new(weight.clone(), Some(bias.clone()), stride, Padding::Symmetric(pad), false)
                    .unwrap();
            let reference = |x: &Tensor| {
                x.conv2d(&weight, pad, stride, 1, 1)?.broadcast_add(&bias.reshape((1, 4, 1, 1))?)
            };
            let y = reference(&x).unwrap();
            assert!(max_diff(&conv.forward(&x).unwrap(), &y) < 1e-5);
            let r = rand(y.dims(), 11);
            let d = max_diff(&grad_of(&x, &r, |x| conv.forward(x)), &affine_grad(&x, &r, reference));
            assert!(d < 1e-4, "k {k} stride {stride} {h}x{w}: {d}");
        }
    }

    #[test]
    fn batch_norm_act_matches_plain_ops() {
        let x = rand(&[2, 3, 4, 5], 12).affine(4.0, 1.0).unwrap();
        let bn =
            BatchNorm::new(&[1.0, 0.5, 2.0], &[0.1, -0.2, 0.3], &[0.0, 0.5, -1.0], &[1.0, 2.0, 0.5], 1e-3);
        for act in [Act::None, Act::Relu6] {
            let scale = Tensor::from_slice(&bn.scale[..], (1, 3, 1, 1), &Device::Cpu).unwrap();
            let shift = Tensor::from_slice(&bn.shift[..], (1, 3, 1, 1), &Device::Cpu).unwrap();
            let reference = |x: &Tensor| act.forward(&x.broadcast_mul(&scale)?.broadcast_add(&shift)?);
            let y = reference(&x).unwrap();
            assert!(max_diff(&bn.forward(&x, act).unwrap(), &y) < 1e-5);
            let r = rand(y.dims(), 13);
            assert!(max_diff(&grad_of(&x, &r, |x| bn.forward(x, act)), &grad_of(&x, &r, reference)) < 1e-5);
        }
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let x = rand(&[1, 2, 5, 6], 14).relu().unwrap();
        let r = rand(&[1, 2, 3, 3], 15);
        let ours = grad_of(&x, &r, max_pool_3x3_s2).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f = |x: &Tensor| {
            max_pool_3x3_s2(x).unwrap().mul(&r).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, g) in ours.iter().enumerate() {
            let mut plus = base.clone();
            plus[i] += 1e-3;
            let numeric = (f(&Tensor::from_vec(plus, x.dims(), &Device::Cpu).unwrap()) - f(&x)) / 1e-3;
            // Zeros (from the ReLU) are ties with the padding; skip those kinks.
            if base[i] > 1e-2 {
                assert!((numeric - g).abs() < 1e-2, "element {i}: numeric {numeric}, ours {g}");
            }
        }
    }

    #[test]
    fn avg_pool_ceil_averages_partial_windows_over_valid_cells() {
        let x = Tensor::arange(0f32, 9.0, &Device::Cpu).unwrap().reshape((1, 1, 3, 3)).unwrap();
        let y = avg_pool_2x2_ceil(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Windows: {0,1,3,4}, {2,5}, {6,7}, {8}.
        assert_eq!(y, vec![2.0, 3.5, 6.5, 8.0]);
    }

    #[test]
    fn layer_norm_and_softmax_paths_agree() {
        let x = rand(&[2, 5, 8], 16);
        let (w, b) = (rand(&[8], 17), rand(&[8], 18));
        let tracked = Var::from_tensor(&x).unwrap();
        let fast = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let slow = layer_norm(tracked.as_tensor(), &w, &b, 1e-6).unwrap();
        assert!(max_diff(&fast, &slow.detach()) < 1e-5);
        let fast = softmax(&x).unwrap();
        let slow = softmax(tracked.as_tensor()).unwrap();
        assert!(max_diff(&fast, &slow.detach()) < 1e-6);
    }
}
