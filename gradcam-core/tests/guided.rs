//! The methods with their own backward pass through `explain`: the pixel-space methods (their
//! maps, their order among other methods, the Grad-CAM maps guided Grad-CAM borrows), FullGrad
//! (its smoothing), and a backend without them.

use gradcam_core::resize_bilinear;
use gradcam_core::{
    explain, fullgrad_maps, BiasGradient, CamError, CamModel, CamOptions, Capture, FullGradients,
    InputGradient, LayerInfo, LayerTensor, LayerView, Method, ReluBackward, Seed, Target, AUGMENTATIONS,
};
use ndarray::{array, s, Array2, Array4, ArrayView4, Axis};

/// The layer `features` is the input itself; the head averages each channel and mixes them into
/// two logits, so `d logit_k / d x[b, c, y, x] = head[k, c] / (h w)`.
struct Linear {
    head: Array2<f32>,
}

impl Linear {
    fn logits(&self, x: ArrayView4<f32>) -> Array2<f32> {
        let (b, c, h, w) = x.dim();
        x.to_shape((b, c, h * w)).unwrap().mean_axis(Axis(2)).unwrap().dot(&self.head.t())
    }

    fn gradient(&self, seed: &dyn Seed, x: ArrayView4<f32>) -> Result<(Array2<f32>, Array4<f32>), CamError> {
        let logits = self.logits(x);
        let (b, c, h, w) = x.dim();
        let per_channel = seed.seed(logits.view(), &[2])?.dot(&self.head);
        Ok((logits, Array4::from_shape_fn((b, c, h, w), |(b, c, _, _)| per_channel[[b, c]] / (h * w) as f32)))
    }
}

impl CamModel for Linear {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(vec![LayerInfo { name: "features".into(), shape: vec![1, 3, 4, 6] }])
    }

    fn capture(&mut self, x: ArrayView4<f32>, _: &str, seed: Option<&dyn Seed>) -> Result<Capture, CamError> {
        let (logits, gradient) = match seed {
            Some(seed) => {
                let (logits, g) = self.gradient(seed, x)?;
                (logits, Some(LayerTensor::Spatial(g)))
            }
            None => (self.logits(x), None),
        };
        Ok(Capture {
            logits,
            output_shape: vec![2],
            activation: LayerTensor::Spatial(x.to_owned()),
            gradient,
        })
    }

    fn forward(&mut self, x: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        Ok(self.logits(x))
    }

    fn forward_with_activation(
        &mut self,
        _: ArrayView4<f32>,
        _: &str,
        a: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        match a {
            LayerView::Spatial(a) => Ok(self.logits(a)),
            LayerView::Tokens(_) => unreachable!("a spatial layer"),
        }
    }

    fn input_gradient(
        &mut self,
        x: ArrayView4<f32>,
        seed: &dyn Seed,
        relu: ReluBackward,
    ) -> Result<InputGradient, CamError> {
        // No ReLU here: guided and plain agree. `explain` asks for the guided one.
        assert_eq!(relu, ReluBackward::Guided);
        let (logits, gradient) = self.gradient(seed, x)?;
        Ok(InputGradient { logits, output_shape: vec![2], gradient })
    }

    fn full_gradients(&mut self, x: ArrayView4<f32>, seed: &dyn Seed) -> Result<FullGradients, CamError> {
        self.full(x, seed)
    }
}

impl Linear {
    /// FullGrad's gradients: the input's, and the input itself as a "layer" with biases
    /// `[1, -2, 0.5]` (its gradient is the input's).
    fn full(&self, x: ArrayView4<f32>, seed: &dyn Seed) -> Result<FullGradients, CamError> {
        let (logits, gradient) = self.gradient(seed, x)?;
        let layer =
            BiasGradient { layer: "features".into(), bias: vec![1.0, -2.0, 0.5], gradient: gradient.clone() };
        Ok(FullGradients { logits, output_shape: vec![2], input_gradient: gradient, biases: vec![layer] })
    }
}

/// The same model keeping the trait's default `input_gradient`.
struct LinearWithoutInputGradients(Linear);

impl CamModel for LinearWithoutInputGradients {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        self.0.layers()
    }
    fn capture(&mut self, x: ArrayView4<f32>, l: &str, seed: Option<&dyn Seed>) -> Result<Capture, CamError> {
        self.0.capture(x, l, seed)
    }
    fn forward(&mut self, x: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        self.0.forward(x)
    }
    fn forward_with_activation(
        &mut self,
        x: ArrayView4<f32>,
        l: &str,
        a: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        self.0.forward_with_activation(x, l, a)
    }
}

fn input() -> Array4<f32> {
    Array4::from_shape_fn((2, 3, 4, 6), |(b, c, y, x)| ((b * 7 + c * 5 + y * 3 + x) % 11) as f32 / 10.0 - 0.3)
}

fn model() -> Linear {
    Linear { head: array![[1.0, -0.5, 0.25], [-0.75, 1.0, 0.5]] }
}

#[test]
fn pixel_methods_in_order_with_their_maps() {
    let (x, target) = (input(), Target::per_image(vec![1, 0]));
    let methods = [Method::GuidedBackprop, Method::GradCam, Method::GuidedGradCam, Method::HiResCam];
    let out =
        explain(&mut model(), x.view(), &["features"], &methods, &target, &CamOptions::default()).unwrap();
    assert_eq!(out.iter().map(|e| e.method).collect::<Vec<_>>(), methods);
    let (_, gradient) = model().gradient(&target, x.view()).unwrap();
    let [guided, gradcam, guided_gradcam, hirescam] = &out[..] else { unreachable!() };
    for e in &out {
        assert_eq!(e.classes, [1, 0], "{}", e.method);
    }
    assert!(gradcam.pixels.is_none() && hirescam.pixels.is_none());
    assert_eq!(guided.pixels.as_ref().unwrap(), &gradient);
    assert!(guided.maps.iter().all(|v| *v == 1.0) && guided.layers.is_empty());
    assert_eq!(guided_gradcam.maps, gradcam.maps);
    assert_eq!(guided_gradcam.layers, gradcam.layers);
    let product = &gradient * &gradcam.maps.view().insert_axis(Axis(1));
    assert_eq!(guided_gradcam.pixels.as_ref().unwrap(), &product);

    // Guided Grad-CAM alone runs Grad-CAM for its maps and answers only itself.
    let alone = explain(
        &mut model(),
        x.view(),
        &["features"],
        &[Method::GuidedGradCam],
        &target,
        &CamOptions::default(),
    )
    .unwrap();
    assert_eq!(alone.len(), 1);
    assert_eq!(alone[0].pixels.as_ref().unwrap(), &product);
}

#[test]
fn a_backend_without_input_gradients_says_so() {
    let mut model = LinearWithoutInputGradients(model());
    let err = explain(
        &mut model,
        input().view(),
        &[],
        &[Method::GuidedBackprop],
        &Target::top_one(),
        &CamOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(&err, CamError::Unsupported(m) if m.contains("guided-backprop")), "{err}");
}

/// FullGrad's map is `fullgrad_maps` of the backend's gradients; under `aug_smooth`, the mean of
/// the six augmented inputs' maps, un-flipped, for the class of the plain input.
#[test]
fn fullgrad_plain_augmented_and_refused() {
    let (x, target) = (input(), Target::per_image(vec![1, 0]));
    let methods = [Method::HiResCam, Method::FullGrad];
    let out =
        explain(&mut model(), x.view(), &["features"], &methods, &target, &CamOptions::default()).unwrap();
    assert_eq!(out.iter().map(|e| e.method).collect::<Vec<_>>(), methods);
    let want = fullgrad_maps(x.view(), &model().full(x.view(), &target).unwrap(), false).unwrap();
    assert_eq!(out[1].maps, want);
    assert!(out[1].layers.is_empty() && out[1].pixels.is_none());
    assert_eq!(out[1].classes, [1, 0]);

    let aug = CamOptions { aug_smooth: true, ..CamOptions::default() };
    let smoothed = explain(&mut model(), x.view(), &[], &[Method::FullGrad], &target, &aug).unwrap();
    let mut mean = ndarray::Array3::<f32>::zeros(want.raw_dim());
    for a in &AUGMENTATIONS {
        let augmented = a.apply(x.view());
        let maps = fullgrad_maps(augmented.view(), &model().full(augmented.view(), &target).unwrap(), false)
            .unwrap();
        mean += &a.undo(maps.view());
    }
    mean.mapv_inplace(|v| v / AUGMENTATIONS.len() as f32);
    let diff = smoothed[0].maps.iter().zip(&mean).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-6, "aug-smooth: {diff}");
    assert!(diff < 1.0 && smoothed[0].maps != want, "aug-smooth changed nothing");

    let err =
        explain(&mut LinearWithoutInputGradients(model()), x.view(), &[], &[Method::FullGrad], &target, &aug)
            .unwrap_err();
    assert!(matches!(&err, CamError::Unsupported(m) if m.contains("fullgrad")), "{err}");
}

/// FullGrad's own eigen-smooth. The toy's input gradient is constant per channel, so its bias
/// layer's term is all zero and each input channel's is `min-max |x_c|`; with the three channels
/// equal, the first principal component is that plane itself, centred, with the sign rule's
/// orientation: the map is min-max of it at an eighth of the size, resized back, min-max again.
/// An input without an eighth is refused.
#[test]
fn fullgrad_eigen_smooth_is_its_own_principal_component() {
    let x = Array4::from_shape_fn((2, 3, 16, 24), |(b, _, y, x)| {
        ((b * 5 + y * 3 + x * 7) % 13) as f32 / 6.0 - 1.0 + (y as f32 * 0.37).sin()
    });
    let target = Target::per_image(vec![1, 0]);
    let eigen = CamOptions { eigen_smooth: true, ..CamOptions::default() };
    let out = explain(&mut model(), x.view(), &[], &[Method::FullGrad], &target, &eigen).unwrap();
    let min_max = |mut m: Array2<f32>| {
        let min = m.fold(f32::INFINITY, |a, &v| a.min(v));
        m.mapv_inplace(|v| v - min);
        let max = m.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        m.mapv(|v| v / (max + 1e-7))
    };
    for b in 0..2 {
        let term = min_max(x.slice(s![b, 0, .., ..]).mapv(f32::abs));
        let small = min_max(resize_bilinear(min_max(term).view(), 2, 3));
        let want = min_max(resize_bilinear(small.view(), 16, 24));
        let got = out[0].maps.index_axis(Axis(0), b);
        let diff = got.iter().zip(&want).fold(0f32, |m, (a, w)| m.max((a - w).abs()));
        assert!(diff <= 1e-5, "image {b}: {diff}\n{got:?}\n{want:?}");
    }
    let plain =
        explain(&mut model(), x.view(), &[], &[Method::FullGrad], &target, &CamOptions::default()).unwrap();
    assert_ne!(plain[0].maps, out[0].maps);
    let both = CamOptions { aug_smooth: true, ..eigen.clone() };
    let smoothed = explain(&mut model(), x.view(), &[], &[Method::FullGrad], &target, &both).unwrap();
    assert!(smoothed[0].maps.iter().all(|v| (0.0..=1.0).contains(v)) && smoothed[0].maps != out[0].maps);

    let err = explain(&mut model(), input().view(), &[], &[Method::FullGrad], &target, &eigen).unwrap_err();
    assert!(matches!(&err, CamError::Shape(m) if m.contains("eighth") && m.contains("4x6")), "{err}");
}
