//! `eigen_smooth` and `aug_smooth`: what pytorch-grad-cam's flags promise, checked against the
//! definitions written out here (the numbers against grad-cam itself are in the model fixtures).

mod common;

use common::{toy, Toy};
use gradcam_core::{
    explain, layer_map, principal_projection, CamError, CamModel, CamOptions, Capture, LayerInfo,
    LayerTensor, LayerView, Method, Seed, Target, AUGMENTATIONS,
};
use ndarray::{s, Array2, Array3, Array4, ArrayView4, Axis};
use proptest::prelude::*;

/// The toy model, counting its captures and forward passes.
struct Counting {
    toy: Toy,
    captures: usize,
}

impl CamModel for Counting {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        self.toy.layers()
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
    ) -> Result<Capture, CamError> {
        self.captures += 1;
        self.toy.capture(input, layer, seed)
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        self.toy.forward(input)
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        self.toy.forward_with_activation(input, layer, activation)
    }
}

fn close(a: &Array3<f32>, b: &Array3<f32>, tol: f32) -> bool {
    a.dim() == b.dim() && a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= tol)
}

const METHODS: [Method; 6] = [
    Method::GradCam,
    Method::LayerCam,
    Method::EigenCam,
    Method::RandomCam,
    Method::ScoreCam,
    Method::FinerCam,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `aug_smooth` is the mean, in ttach's order, of the six augmented inputs' maps flipped back,
    /// every pass explaining the unaugmented input's class; RandomCAM's weights go on drawing
    /// from one stream; and it costs six captures per layer and method group, no more.
    #[test]
    fn aug_smooth_is_the_mean_of_the_augmented_maps((toy, input) in toy(), rank in 0usize..2, seed in 0u32..5) {
        let layers = ["features"];
        let target = Target::rank(rank.min(toy.head.nrows() - 1));
        let options = CamOptions { seed, ..CamOptions::default() };
        let smooth = CamOptions { aug_smooth: true, ..options.clone() };
        let mut model = Counting { toy: toy.clone(), captures: 0 };
        let got = explain(&mut model, input.view(), &layers, &METHODS, &target, &smooth).unwrap();
        // One capture for the plain gradient methods, one for FinerCAM, per pass.
        prop_assert_eq!(model.captures, 2 * AUGMENTATIONS.len());

        let mut plain = toy.clone();
        let classes = explain(&mut plain, input.view(), &layers, &[Method::GradCam], &target, &options).unwrap()[0]
            .classes
            .clone();
        let fixed = Target::per_image(classes.clone());
        let (b, _, h, w) = input.dim();
        let mut sums = vec![Array3::<f32>::zeros((b, h, w)); METHODS.len()];
        for (pass, augmentation) in AUGMENTATIONS.iter().enumerate() {
            let mut augmented = input.to_owned();
            if augmentation.flip {
                augmented = augmented.slice(s![.., .., .., ..;-1]).to_owned();
            }
            augmented.mapv_inplace(|x| x * augmentation.factor);
            for (m, &method) in METHODS.iter().enumerate() {
                // RandomCAM's pass k starts k * B * C draws into numpy's stream.
                let mut maps = if method == Method::RandomCam {
                    let a = toy.features(augmented.view());
                    let mut random = gradcam_core::LegacyRandom::new(seed);
                    random.skip(pass * b * a.len_of(Axis(1)));
                    let raw = gradcam_core::weighted_sum(random.weights(b, a.len_of(Axis(1))).view(), a.view()).unwrap();
                    let scaled = gradcam_core::scale_maps(raw.view());
                    gradcam_core::combine_layers(&[gradcam_core::upsample_maps(scaled.view(), h, w)]).unwrap()
                } else {
                    let mut model = toy.clone();
                    let e = explain(&mut model, augmented.view(), &layers, &[method], &fixed, &options).unwrap();
                    prop_assert_eq!(&e[0].classes, &classes);
                    e[0].maps.clone()
                };
                if augmentation.flip {
                    maps = maps.slice(s![.., .., ..;-1]).to_owned();
                }
                sums[m] += &maps;
            }
        }
        for (e, sum) in got.iter().zip(&sums) {
            prop_assert_eq!(&e.classes, &classes);
            let want = sum.mapv(|v| v / AUGMENTATIONS.len() as f32);
            prop_assert!(close(&e.maps, &want, 1e-5), "{}: {:?} vs {:?}", e.method, e.maps, want);
            prop_assert!(close(&e.layers[0].map, &want, 1e-5), "{} layer map", e.method);
        }
    }

    /// `eigen_smooth` replaces the sum over channels of the weighted activations by their first
    /// principal component, for the methods that have weighted activations; the others ignore it.
    #[test]
    fn eigen_smooth_projects_the_weighted_activations((toy, input) in toy()) {
        let layers = ["features"];
        let target = Target::top_one();
        let smooth = CamOptions { eigen_smooth: true, ..CamOptions::default() };
        let methods = [Method::GradCam, Method::HiResCam, Method::EigenCam, Method::Fem];
        let mut model = toy.clone();
        let got = explain(&mut model, input.view(), &layers, &methods, &target, &smooth).unwrap();
        let mut model = toy.clone();
        let plain = explain(&mut model, input.view(), &layers, &methods, &target, &CamOptions::default()).unwrap();
        let capture = toy.clone().capture(input.view(), "features", Some(&target)).unwrap();
        let (LayerTensor::Spatial(a), Some(LayerTensor::Spatial(g))) = (capture.activation, capture.gradient) else {
            panic!("spatial capture");
        };
        let (b, c, h, w) = a.dim();
        for (e, p) in got.iter().zip(&plain) {
            let raw = &e.layers[0].raw;
            if !e.method.supports_eigen_smooth() {
                prop_assert_eq!(raw, &p.layers[0].raw);
                continue;
            }
            for image in 0..b {
                let weighted = Array4::from_shape_fn((1, c, h, w), |(_, ch, y, x)| {
                    let (av, gv) = (a[[image, ch, y, x]], g[[image, ch, y, x]]);
                    match e.method {
                        // Grad-CAM's weight: the mean gradient, constant over the toy's pixels.
                        Method::GradCam => g.slice(s![image, ch, .., ..]).mean().unwrap() * av,
                        _ => gv * av,
                    }
                });
                let matrix = weighted.into_shape_with_order((c, h * w)).unwrap();
                let want = principal_projection(matrix.view());
                let got = raw.slice(s![image, .., ..]).to_owned().into_shape_with_order(h * w).unwrap();
                let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (x, y) in got.iter().zip(want.iter()) {
                    prop_assert!((x - y).abs() <= 1e-4 * scale, "{}: {got} vs {want}", e.method);
                }
            }
        }
        // Without the flag, the same methods give their plain maps.
        let mut model = toy.clone();
        let again = layer_map(Method::GradCam, a.view(), Some(g.view())).unwrap();
        let e = explain(&mut model, input.view(), &layers, &[Method::GradCam], &target, &CamOptions::default()).unwrap();
        prop_assert!(close(&e[0].layers[0].raw, &again, 1e-6));
    }
}
