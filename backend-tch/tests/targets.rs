//! The tch backend on models that are not classifiers (one binary logit, a segmentation, an
//! embedding) against pytorch-grad-cam 1.5.7's targets for them ([`tests::targets`]).

use backend_tch::{DeviceChoice, TorchScriptModel};
use tests::targets::{check_targets, target_model};

fn check(key: &str) {
    let reference = target_model(key);
    let path = reference.file("traced");
    let mut model = TorchScriptModel::load(&path, DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{key}: {e}"));
    check_targets("tch traced", &mut model, &reference, true);
}

tests::target_tests!(check);

/// `--aug-smooth` on a segmentation with a mask: each of the six copies explains the mask as the
/// copy sees it (mirrored on mirrored copies), so the smoothed map is the mean of six plain
/// explanations with the mask mirrored by hand. Leaving the mask unmirrored breaks it (HiResCAM:
/// Grad-CAM's channel weights, spatial means over a linear head, barely see where the mask is).
#[test]
fn aug_smooth_segmentation_mirrors_the_mask() {
    use gradcam_core::{explain, CamOptions, Method, Target, AUGMENTATIONS};
    use ndarray::{s, Array3, Ix2, Ix4};
    let reference = target_model("fcn");
    let mut model = TorchScriptModel::load(&reference.file("traced"), DeviceChoice::Cpu).expect("fcn loads");
    let input = tests::npy::<f32>(&reference.input).into_dimensionality::<Ix4>().unwrap();
    let mask = tests::npy::<f32>(tests::targets::targets_dir().join("mask.npy"))
        .into_dimensionality::<Ix2>()
        .unwrap();
    let layer = [reference.layer.as_str()];
    let smoothed = CamOptions { aug_smooth: true, ..CamOptions::default() };
    let target = Target::segmentation(1, Some(mask.clone()));
    let got = explain(&mut model, input.view(), &layer, &[Method::HiResCam], &target, &smoothed).unwrap();
    let mut mean = Array3::<f32>::zeros(got[0].maps.raw_dim());
    for augmentation in AUGMENTATIONS {
        let copy = augmentation.apply(input.view());
        let seen = if augmentation.flip { mask.slice(s![.., ..;-1]).to_owned() } else { mask.clone() };
        let target = Target::segmentation(1, Some(seen));
        let e =
            explain(&mut model, copy.view(), &layer, &[Method::HiResCam], &target, &CamOptions::default())
                .unwrap();
        mean += &augmentation.undo(e[0].maps.view());
    }
    mean.mapv_inplace(|v| v / AUGMENTATIONS.len() as f32);
    tests::assert_close("aug-smooth segmentation", got[0].maps.view(), mean.view(), tests::TOL);
}
