//! The guided-backprop fixtures (`tools/make_guided_fixtures.py`, in `<fixtures>/guided`): one
//! comparison every backend runs.

use std::path::PathBuf;

use gradcam_core::{explain, CamModel, Method, Target};
use ndarray::{Array1, Array3, Array4, Ix1, Ix3, Ix4};

use crate::{assert_close, fixtures_dir, input, npy, reference_options, TOL, UPSAMPLED_TOL};

/// The model fixtures with a guided reference, and the layer of their Grad-CAM maps.
pub const GUIDED_MODELS: [(&str, &str); 3] =
    [("resnet18", "layer4"), ("vit_tiny", "blocks.11.norm1"), ("lite0", "blocks.6")];

/// `<fixtures>/guided/<key>`.
pub fn guided_dir(key: &str) -> PathBuf {
    fixtures_dir().join("guided").join(key)
}

/// One model's guided references.
pub struct GuidedReference {
    /// Per-image classes (image 0: its runner-up, image 1: its top-1).
    pub classes: Vec<usize>,
    /// grad-cam's `GuidedBackpropReLUModel` per image, `(B, 3, H, W)`.
    pub guided: Array4<f32>,
    /// Grad-CAM's final maps for the same classes, `(B, H, W)`.
    pub gradcam: Array3<f32>,
    /// `gradcam × guided`, `(B, 3, H, W)`.
    pub guided_gradcam: Array4<f32>,
}

/// Reads `key`'s guided references.
pub fn guided_reference(key: &str) -> GuidedReference {
    let dir = guided_dir(key);
    let classes = npy::<i64>(dir.join("classes.npy")).into_dimensionality::<Ix1>().expect("classes (B,)");
    let classes: Array1<i64> = classes;
    GuidedReference {
        classes: classes.iter().map(|&c| c as usize).collect(),
        guided: npy(dir.join("guided.npy")).into_dimensionality::<Ix4>().expect("guided (B, 3, H, W)"),
        gradcam: npy(dir.join("gradcam.npy")).into_dimensionality::<Ix3>().expect("gradcam (B, H, W)"),
        guided_gradcam: npy(dir.join("guided_gradcam.npy"))
            .into_dimensionality::<Ix4>()
            .expect("guided_gradcam (B, 3, H, W)"),
    }
}

/// Guided backprop and guided Grad-CAM of fixture model `key` (opened as `model`; `label` names
/// the backend) in one `explain` call for per-image classes, against grad-cam 1.5.7: the input
/// gradients to [`TOL`] of their scale, the Grad-CAM maps to [`UPSAMPLED_TOL`], their product to
/// [`UPSAMPLED_TOL`]; the classes and the order of the answers as asked.
pub fn check_guided(label: &str, model: &mut dyn CamModel, key: &str) {
    let (_, layer) = GUIDED_MODELS.iter().find(|(k, _)| *k == key).expect("a guided fixture model");
    let reference = guided_reference(key);
    let what = format!("{label} {key} guided");
    let methods = [Method::GuidedGradCam, Method::HiResCam, Method::GuidedBackprop];
    let target = Target::per_image(reference.classes.clone());
    let out = explain(model, input().view(), &[layer], &methods, &target, &reference_options())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let order: Vec<Method> = out.iter().map(|e| e.method).collect();
    assert_eq!(order, methods, "{what}: one answer per method, in order");
    for e in &out {
        assert_eq!(e.classes, reference.classes, "{what}: {} classes", e.method);
    }
    let [gradcam, hirescam, guided] = &out[..] else { unreachable!("three answers") };
    assert!(hirescam.pixels.is_none(), "{what}: a heatmap method has no pixel map");
    let pixels = guided.pixels.as_ref().unwrap_or_else(|| panic!("{what}: no guided pixels"));
    assert_close(&format!("{what} backprop"), pixels.view(), reference.guided.view(), TOL);
    assert!(guided.layers.is_empty(), "{what}: guided backprop reads no layer");
    assert_close(&format!("{what} grad-cam maps"), gradcam.maps.view(), reference.gradcam.view(), UPSAMPLED_TOL);
    let product = gradcam.pixels.as_ref().unwrap_or_else(|| panic!("{what}: no guided grad-cam pixels"));
    assert_close(
        &format!("{what} guided grad-cam"),
        product.view(),
        reference.guided_gradcam.view(),
        UPSAMPLED_TOL,
    );
}
