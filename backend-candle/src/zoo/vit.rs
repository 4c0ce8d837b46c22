//! timm `VisionTransformer` (class token, learned position embedding over the class token too)
//! and DeiT's distilled variant (class + distillation tokens, `head` and `head_dist` averaged at
//! inference). LayerNorm eps 1e-6, exact (erf) GELU, as timm. A checkpoint without `head` (timm's
//! `num_classes=0`) gives timm's pooled features: the class token after the final norm, for DeiT
//! distilled the mean of the class and distillation tokens (`forward_head(pre_logits=True)`).

use candle_core::{IndexOp, Module, Result, Tensor};

use crate::ops::{layer_norm, softmax, Conv2d, Padding};
use crate::weights::Weights;
use crate::{CandleCamNet, CandleError, Taps};

const EPS: f64 = 1e-6;
/// Every zoo ViT/DeiT is 12 blocks of 16-pixel patches.
const DEPTH: usize = 12;
const PATCH: usize = 16;

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(w: &Weights, prefix: &str, dim: usize) -> std::result::Result<Norm, CandleError> {
        Ok(Norm {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, EPS)
    }
}

struct Block {
    name: String,
    heads: usize,
    norm1: Norm,
    qkv: candle_nn::Linear,
    proj: candle_nn::Linear,
    ls1: Option<Tensor>,
    norm2: Norm,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
    ls2: Option<Tensor>,
}

impl Block {
    fn load(w: &Weights, name: &str, dim: usize, heads: usize) -> std::result::Result<Block, CandleError> {
        let p = |s: &str| format!("{name}.{s}");
        let linear =
            |s: &str, in_dim: usize, out: usize| -> std::result::Result<candle_nn::Linear, CandleError> {
                let (l, found) = w.linear(&p(s), in_dim)?;
                if found != out {
                    return Err(w.shape_error(&p(&format!("{s}.weight")), &[out, in_dim], &[found, in_dim]));
                }
                Ok(l)
            };
        let hidden = w.dims(&p("mlp.fc1.weight"), 2)?[0];
        let scale = |s: &str| -> std::result::Result<Option<Tensor>, CandleError> {
            let key = p(&format!("{s}.gamma"));
            if w.has(&key) {
                Ok(Some(w.get(&key, &[dim])?))
            } else {
                Ok(None)
            }
        };
        Ok(Block {
            name: name.to_string(),
            heads,
            norm1: Norm::load(w, &p("norm1"), dim)?,
            qkv: linear("attn.qkv", dim, 3 * dim)?,
            proj: linear("attn.proj", dim, dim)?,
            ls1: scale("ls1")?,
            norm2: Norm::load(w, &p("norm2"), dim)?,
            fc1: linear("mlp.fc1", dim, hidden)?,
            fc2: linear("mlp.fc2", hidden, dim)?,
            ls2: scale("ls2")?,
        })
    }

    fn attention(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let n = &self.name;
        let (b, t, d) = x.dims3()?;
        let head_dim = d / self.heads;
        let qkv = taps.tap(&format!("{n}.attn.qkv"), self.qkv.forward(x)?)?;
        let qkv = qkv.reshape((b, t, 3, self.heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.i(0)?.contiguous()? * (head_dim as f64).powf(-0.5))?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let attn = softmax(&q.matmul(&k.t()?)?)?;
        let y = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let y = taps.tap(&format!("{n}.attn.proj"), self.proj.forward(&y)?)?;
        taps.tap(&format!("{n}.attn"), y)
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let n = &self.name;
        let h = taps.tap(&format!("{n}.norm1"), self.norm1.forward(x)?)?;
        let mut h = self.attention(&h, taps)?;
        if let Some(g) = &self.ls1 {
            h = taps.tap(&format!("{n}.ls1"), h.broadcast_mul(g)?)?;
        }
        let x = (x + h)?;
        let h = taps.tap(&format!("{n}.norm2"), self.norm2.forward(&x)?)?;
        let h = taps.tap(&format!("{n}.mlp.fc1"), self.fc1.forward(&h)?)?;
        let h = taps.tap(&format!("{n}.mlp.act"), h.gelu_erf()?)?;
        let h = taps.tap(&format!("{n}.mlp.fc2"), self.fc2.forward(&h)?)?;
        let mut h = taps.tap(&format!("{n}.mlp"), h)?;
        if let Some(g) = &self.ls2 {
            h = taps.tap(&format!("{n}.ls2"), h.broadcast_mul(g)?)?;
        }
        x + h
    }
}

/// A timm ViT or distilled DeiT.
pub(crate) struct Vit {
    patch: Conv2d,
    patch_size: usize,
    grid: (usize, usize),
    prefix: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    /// `head` (and DeiT's `head_dist`); `None` for a headless (`num_classes=0`) model.
    head: Option<Vec<candle_nn::Linear>>,
    distilled: bool,
}

impl Vit {
    pub(crate) fn load(
        w: &Weights,
        dim: usize,
        heads: usize,
        distilled: bool,
    ) -> std::result::Result<Vit, CandleError> {
        let patch_size = PATCH;
        let (patch, found) =
            w.conv("patch_embed.proj", 3, patch_size, patch_size, Padding::Symmetric(0), false, true)?;
        if found != dim {
            let name = "patch_embed.proj.weight";
            return Err(w.shape_error(name, &[dim, 3, PATCH, PATCH], &[found, 3, PATCH, PATCH]));
        }
        let mut prefix = vec![w.get("cls_token", &[1, 1, dim])?];
        if distilled {
            prefix.push(w.get("dist_token", &[1, 1, dim])?);
        }
        let prefix = Tensor::cat(&prefix, 1)?;
        let tokens = w.dims("pos_embed", 3)?[1];
        let pos = w.get("pos_embed", &[1, tokens, dim])?;
        let patches = tokens
            .checked_sub(prefix.dim(1)?)
            .filter(|&p| p > 0)
            .ok_or_else(|| w.shape_error("pos_embed", &[1, prefix.dims()[1] + 1, dim], &[1, tokens, dim]))?;
        // timm grids are square or wider than tall; the input must have exactly this grid.
        let gh = (1..=patches).filter(|h| patches % h == 0 && h * h <= patches).max().unwrap_or(1);
        let blocks = (0..DEPTH)
            .map(|i| Block::load(w, &format!("blocks.{i}"), dim, heads))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let norm = Norm::load(w, "norm", dim)?;
        let head = w.head(if distilled { &["head", "head_dist"] } else { &["head"] }, dim)?;
        Ok(Vit { patch, patch_size, grid: (gh, patches / gh), prefix, pos, blocks, norm, head, distilled })
    }
}

impl CandleCamNet for Vit {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let x = taps.sequential("patch_embed", x, |x, taps| {
            let (_, _, h, w) = x.dims4()?;
            let p = self.patch_size;
            if (h / p, w / p) != self.grid || h % p != 0 || w % p != 0 {
                let (gh, gw) = self.grid;
                candle_core::bail!(
                    "this ViT takes {}x{} inputs (a {gh}x{gw} grid of {p}-pixel patches, as its pos_embed), got {h}x{w}",
                    gh * p,
                    gw * p
                );
            }
            let mut x = self.patch.forward(x)?;
            if taps.wants_biases() {
                if let Some(bias) = self.patch.bias()? {
                    x = taps.biased("patch_embed.proj", x, &bias)?;
                }
            }
            let x = taps.tap("patch_embed.proj", x)?;
            x.flatten_from(2)?.transpose(1, 2)
        })?;
        let x = taps.sequential("pos_drop", &x, |x, _| {
            let (b, _, d) = x.dims3()?;
            let prefix = self.prefix.broadcast_as((b, self.prefix.dim(1)?, d))?;
            Tensor::cat(&[&prefix, x], 1)?.broadcast_add(&self.pos)
        })?;
        let x = taps.sequential("blocks", &x, |x, taps| {
            let mut x = x.clone();
            for block in &self.blocks {
                x = taps.sequential(&block.name, &x, |x, taps| block.forward(x, taps))?;
            }
            Ok(x)
        })?;
        let x = taps.sequential("norm", &x, |x, _| self.norm.forward(x))?;
        // timm's token pooling: the class token (and DeiT's distillation token), each through its
        // head (`Identity` without one); DeiT averages the two.
        let pooled = |t: usize| -> Result<Tensor> {
            let y = x.i((.., t))?;
            match &self.head {
                Some(head) => head[t].forward(&y),
                None => Ok(y),
            }
        };
        if self.distilled {
            (pooled(0)? + pooled(1)?)? / 2.0
        } else {
            pooled(0)
        }
    }

    fn input_size(&self) -> (usize, usize) {
        (self.grid.0 * self.patch_size, self.grid.1 * self.patch_size)
    }

    fn prefix_tokens(&self) -> usize {
        if self.distilled {
            2
        } else {
            1
        }
    }
}
