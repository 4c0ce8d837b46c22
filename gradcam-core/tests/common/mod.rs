//! A toy `CamModel` shared by the property tests: one feature layer and a linear head.
#![allow(dead_code)]

use gradcam_core::{CamError, CamModel, Capture, LayerInfo, LayerTensor, LayerView, Seed};
use ndarray::{Array2, Array4, ArrayView4, Axis};
use proptest::prelude::*;

/// `features = relu(mix · input + bias)` per pixel (`C` channels), `logits = head · mean_px(features)`.
/// Its gradient is analytic: `d logit_k / d features[c, y, x] = head[k, c] / (h w)`.
#[derive(Clone, Debug)]
pub struct Toy {
    pub mix: Array2<f32>,  // (C, 3)
    pub bias: Vec<f32>,    // (C)
    pub head: Array2<f32>, // (K, C)
    pub forwards: usize,
}

impl Toy {
    pub fn features(&self, input: ArrayView4<f32>) -> Array4<f32> {
        let (b, _, h, w) = input.dim();
        let c = self.mix.nrows();
        Array4::from_shape_fn((b, c, h, w), |(b, c, y, x)| {
            let mut v = self.bias[c];
            for i in 0..3 {
                v += self.mix[[c, i]] * input[[b, i, y, x]];
            }
            v.max(0.0)
        })
    }

    pub fn head(&self, features: ArrayView4<f32>) -> Array2<f32> {
        let (b, c, h, w) = features.dim();
        let pooled = features.into_shape_with_order((b, c, h * w)).unwrap().mean_axis(Axis(2)).unwrap();
        pooled.dot(&self.head.t())
    }
}

impl CamModel for Toy {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(vec![LayerInfo { name: "features".into(), shape: vec![1, self.mix.nrows(), 0, 0] }])
    }

    fn default_layer(&mut self) -> Result<String, CamError> {
        Ok("features".into())
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
    ) -> Result<Capture, CamError> {
        if layer != "features" {
            return Err(CamError::UnknownLayer { name: layer.into(), near: vec!["features".into()] });
        }
        let features = self.features(input);
        let logits = self.head(features.view());
        let (b, c, h, w) = features.dim();
        let gradient = match seed {
            Some(seed) => {
                // d score / d features = Σ_k seed[b, k] head[k, c] / (h w)
                let per_channel = seed.seed(logits.view(), &[logits.ncols()])?.dot(&self.head);
                let g =
                    Array4::from_shape_fn((b, c, h, w), |(b, c, _, _)| per_channel[[b, c]] / (h * w) as f32);
                Some(LayerTensor::Spatial(g))
            }
            None => None,
        };
        let output_shape = vec![logits.ncols()];
        Ok(Capture { logits, output_shape, activation: LayerTensor::Spatial(features), gradient })
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        self.forwards += input.len_of(Axis(0));
        Ok(self.head(self.features(input).view()))
    }

    fn forward_with_activation(
        &mut self,
        _input: ArrayView4<f32>,
        _layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        match activation {
            LayerView::Spatial(a) => Ok(self.head(a)),
            LayerView::Tokens(_) => Err(CamError::Unsupported("toy model has no tokens".into())),
        }
    }
}

/// The same toy, but its feature layer is channels-last `(B, H, W, C)`, as Swin's and ConvNeXt's
/// inner layers are: the maps must not change.
#[derive(Clone, Debug)]
pub struct ChannelsLast(pub Toy);

fn to_nhwc(t: LayerTensor) -> LayerTensor {
    match t {
        LayerTensor::Spatial(a) => {
            LayerTensor::Spatial(a.permuted_axes([0, 2, 3, 1]).as_standard_layout().into_owned())
        }
        tokens => tokens,
    }
}

impl CamModel for ChannelsLast {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        self.0.layers()
    }

    fn default_layer(&mut self) -> Result<String, CamError> {
        self.0.default_layer()
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
    ) -> Result<Capture, CamError> {
        let c = self.0.capture(input, layer, seed)?;
        Ok(Capture {
            logits: c.logits,
            output_shape: c.output_shape,
            activation: to_nhwc(c.activation),
            gradient: c.gradient.map(to_nhwc),
        })
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        self.0.forward(input)
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        match activation {
            LayerView::Spatial(a) => {
                let nchw = a.permuted_axes([0, 3, 1, 2]).as_standard_layout().into_owned();
                self.0.forward_with_activation(input, layer, LayerView::Spatial(nchw.view()))
            }
            tokens => self.0.forward_with_activation(input, layer, tokens),
        }
    }
}

pub fn tensor(shape: (usize, usize, usize, usize), lo: f32, hi: f32) -> impl Strategy<Value = Array4<f32>> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    proptest::collection::vec(lo..hi, n).prop_map(move |v| Array4::from_shape_vec(shape, v).unwrap())
}

pub fn toy() -> impl Strategy<Value = (Toy, Array4<f32>)> {
    (1usize..=2, 1usize..=5, 2usize..=6, 2usize..=6, 2usize..=4).prop_flat_map(|(b, c, h, w, k)| {
        (
            proptest::collection::vec(-1.0f32..1.0, c * 3),
            proptest::collection::vec(-0.3f32..0.3, c),
            proptest::collection::vec(-1.0f32..1.0, k * c),
            tensor((b, 3, h, w), -1.0, 1.0),
        )
            .prop_map(move |(mix, bias, head, input)| {
                let toy = Toy {
                    mix: Array2::from_shape_vec((c, 3), mix).unwrap(),
                    bias,
                    head: Array2::from_shape_vec((k, c), head).unwrap(),
                    forwards: 0,
                };
                (toy, input)
            })
    })
}
