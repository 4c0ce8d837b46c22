//! A timm state dict read from safetensors, with shape-checked look-ups.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::ops::{BatchNorm, Conv2d, Padding};
use crate::CandleError;

/// The tensors of one checkpoint, keyed by state-dict name, as f32 on the CPU.
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
    arch: String,
    used: RefCell<HashSet<String>>,
}

impl Weights {
    pub(crate) fn load(path: &Path, arch: &str) -> Result<Self, CandleError> {
        let load_err = |source| CandleError::Load { path: path.to_path_buf(), source };
        let raw = candle_core::safetensors::load(path, &Device::Cpu).map_err(load_err)?;
        let tensors = raw
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<_, candle_core::Error>>()
            .map_err(load_err)?;
        Ok(Weights { tensors, arch: arch.to_string(), used: RefCell::default() })
    }

    /// The architecture the checkpoint is read as.
    pub(crate) fn arch(&self) -> &str {
        &self.arch
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Fails on the first (by name) tensor the architecture did not use: the checkpoint is
    /// another model. BatchNorm's `num_batches_tracked` counters are ignored.
    pub(crate) fn finish(&self) -> Result<(), CandleError> {
        let used = self.used.borrow();
        let mut unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        unused.sort();
        match unused.first() {
            None => Ok(()),
            Some(name) => Err(CandleError::UnexpectedTensor {
                name: name.to_string(),
                arch: self.arch.clone(),
                count: unused.len(),
            }),
        }
    }

    /// A tensor of any shape.
    pub(crate) fn any(&self, name: &str) -> Result<Tensor, CandleError> {
        self.used.borrow_mut().insert(name.to_string());
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| CandleError::MissingTensor { name: name.to_string(), arch: self.arch.clone() })
    }

    /// A tensor that must have exactly `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, CandleError> {
        let t = self.any(name)?;
        if t.dims() != shape {
            return Err(self.shape_error(name, shape, t.dims()));
        }
        Ok(t)
    }

    pub(crate) fn shape_error(&self, name: &str, expected: &[usize], found: &[usize]) -> CandleError {
        CandleError::TensorShape {
            name: name.to_string(),
            arch: self.arch.clone(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }

    /// The shape of a tensor, which must have rank `rank`.
    pub(crate) fn dims(&self, name: &str, rank: usize) -> Result<Vec<usize>, CandleError> {
        let t = self.any(name)?;
        if t.rank() != rank {
            let mut expected = vec![0; rank];
            expected.iter_mut().zip(t.dims()).for_each(|(e, d)| *e = *d);
            return Err(self.shape_error(name, &expected, t.dims()));
        }
        Ok(t.dims().to_vec())
    }

    /// `{prefix}.weight` (out, in / groups, k, k) with `in` and `k` checked, `out` read from the file.
    // One argument per PyTorch `Conv2d` setting, named at every call site.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv(
        &self,
        prefix: &str,
        in_ch: usize,
        k: usize,
        stride: usize,
        padding: Padding,
        depthwise: bool,
        bias: bool,
    ) -> Result<(Conv2d, usize), CandleError> {
        let name = format!("{prefix}.weight");
        let out = self.dims(&name, 4)?[0];
        let per_group = if depthwise { 1 } else { in_ch };
        if depthwise && out != in_ch {
            return Err(self.shape_error(&name, &[in_ch, 1, k, k], self.any(&name)?.dims()));
        }
        let weight = self.get(&name, &[out, per_group, k, k])?;
        let bias = if bias { Some(self.get(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok((Conv2d::new(weight, bias, stride, padding, depthwise)?, out))
    }

    /// The kernel size of `{prefix}.weight` (square kernels only).
    pub(crate) fn kernel(&self, prefix: &str) -> Result<usize, CandleError> {
        let name = format!("{prefix}.weight");
        let d = self.dims(&name, 4)?;
        if d[2] != d[3] {
            return Err(self.shape_error(&name, &[d[0], d[1], d[2], d[2]], &d));
        }
        Ok(d[2])
    }

    /// A `BatchNorm2d` over `c` channels.
    pub(crate) fn batch_norm(&self, prefix: &str, c: usize, eps: f64) -> Result<BatchNorm, CandleError> {
        let v = |n: &str| -> Result<Vec<f32>, CandleError> {
            Ok(self.get(&format!("{prefix}.{n}"), &[c])?.to_vec1::<f32>()?)
        };
        Ok(BatchNorm::new(&v("weight")?, &v("bias")?, &v("running_mean")?, &v("running_var")?, eps))
    }

    /// The classifier head: the `Linear`s `prefixes` (`fc`; DeiT's `head` and `head_dist`), all
    /// with one class count read from the file, or `None` when the checkpoint holds none of their
    /// tensors (timm's `num_classes=0`: the head is `Identity`). Some but not all is an error.
    pub(crate) fn head(
        &self,
        prefixes: &[&str],
        in_dim: usize,
    ) -> Result<Option<Vec<candle_nn::Linear>>, CandleError> {
        let names = prefixes.iter().flat_map(|p| [format!("{p}.weight"), format!("{p}.bias")]);
        let (found, missing): (Vec<String>, Vec<String>) = names.partition(|n| self.has(n));
        if found.is_empty() {
            return Ok(None);
        }
        if !missing.is_empty() {
            return Err(CandleError::PartialHead { arch: self.arch.clone(), found, missing });
        }
        let mut classes = None;
        let mut head = Vec::new();
        for prefix in prefixes {
            let (linear, k) = self.linear(prefix, in_dim)?;
            let c = *classes.get_or_insert(k);
            if k != c {
                return Err(self.shape_error(&format!("{prefix}.weight"), &[c, in_dim], &[k, in_dim]));
            }
            head.push(linear);
        }
        Ok(Some(head))
    }

    /// A `Linear` `(out, in)` with bias; `out` read from the file.
    pub(crate) fn linear(
        &self,
        prefix: &str,
        in_dim: usize,
    ) -> Result<(candle_nn::Linear, usize), CandleError> {
        let name = format!("{prefix}.weight");
        let out = self.dims(&name, 2)?[0];
        let w = self.get(&name, &[out, in_dim])?;
        let b = self.get(&format!("{prefix}.bias"), &[out])?;
        Ok((candle_nn::Linear::new(w, Some(b)), out))
    }
}
