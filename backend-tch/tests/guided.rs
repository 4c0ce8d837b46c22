//! Guided backprop, guided Grad-CAM and FullGrad in the tch backend against grad-cam 1.5.7
//! ([`tests::guided::check_guided`], [`tests::guided::check_fullgrad`]), FullGrad's choice of bias
//! layers, and the ReLU swap itself: guided and plain input gradients differ on a ReLU network and
//! agree on one without ReLUs.

use backend_tch::tch::{CModule, Tensor};
use backend_tch::{DeviceChoice, TorchScriptModel};
use gradcam_core::{CamModel, InputGradient, ReluBackward, Target};
use ndarray::{Array2, Array4};
use tests::guided::{check_fullgrad, check_guided, check_relus_guided, guided_dir, guided_file, RELU_MODELS};
use tests::{assert_close, manifest, read_json, require, TOL};

/// Fixture model `key`'s export `kind` (`traced`, `scripted`) on the CPU, when the manifest has it.
fn load(key: &str, kind: &str) -> Option<TorchScriptModel> {
    let manifest = manifest();
    let file = manifest["models"][key]["files"][kind].as_str()?.to_owned();
    Some(TorchScriptModel::load(&require(&file), DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{file}: {e}")))
}

/// `f(label, model)` for each export of `key`: traced, and scripted where the manifest has one.
fn each_export(key: &str, mut f: impl FnMut(&str, &mut TorchScriptModel)) {
    let traced = load(key, "traced").unwrap_or_else(|| panic!("{key}: no traced export in the manifest"));
    // timm does not script every model; the manifest then has no scripted file.
    for (kind, model) in [("traced", Some(traced)), ("scripted", load(key, "scripted"))] {
        if let Some(mut model) = model {
            f(&format!("tch {kind}"), &mut model);
        }
    }
}

fn check(key: &str) {
    each_export(key, |label, model| check_guided(label, model, key));
}

fn check_full(key: &str) {
    each_export(key, |label, model| check_fullgrad(label, model, key));
}

#[test]
fn resnet18_fullgrad_matches_grad_cam() {
    check_full("resnet18");
    // With random BatchNorm statistics: non-zero folded biases.
    let path = guided_file("resnet18_bn.traced.pt");
    let mut model = TorchScriptModel::load(&path, DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{e}"));
    check_fullgrad("tch traced", &mut model, "resnet18_bn");
}

#[test]
fn vit_tiny_fullgrad_matches_grad_cam() {
    check_full("vit_tiny");
}

#[test]
fn lite0_fullgrad_matches_grad_cam() {
    check_full("lite0");
}

/// FullGrad's bias layers are grad-cam's, in forward order: every exactly-`nn.BatchNorm2d` of
/// resnet18 (its convolutions have no bias), vit_tiny's patch embedding (an `nn.Conv2d` with a
/// bias), none of Lite0 (timm's `BatchNormAct2d` is a subclass; its convolutions have no bias).
/// Each bias has one value per channel of its layer's output gradient. (The fixtures' resnet18
/// is freshly initialised, with zero biases and zero `bn2` weights, so its values are checked on
/// `fullgrad_biases_and_gradients_match_pytorch`'s model instead.)
#[test]
fn fullgrad_bias_layers_are_grad_cams() {
    let guided = read_json(&guided_dir("").join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let input = tests::input();
    for key in ["resnet18", "vit_tiny", "lite0"] {
        let want: Vec<String> = guided["models"][key]["fullgrad_bias_layers"]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: no fullgrad_bias_layers in the guided manifest"))
            .iter()
            .map(|v| v.as_str().expect("a layer path").to_owned())
            .collect();
        each_export(key, |label, model| {
            let grads =
                model.full_gradients(input.view(), &Target::top_one()).unwrap_or_else(|e| panic!("{e}"));
            let got: Vec<String> = grads.biases.iter().map(|b| b.layer.clone()).collect();
            assert_eq!(got, want, "{label} {key}: bias layers");
            for b in &grads.biases {
                let (batch, channels, _, _) = b.gradient.dim();
                assert_eq!(
                    (batch, channels),
                    (2, b.bias.len()),
                    "{label} {key} {}: bias per channel",
                    b.layer
                );
            }
        });
    }
}

#[test]
fn resnet18_matches_grad_cam() {
    check("resnet18");
}

#[test]
fn vit_tiny_matches_grad_cam() {
    check("vit_tiny");
}

#[test]
fn lite0_matches_grad_cam() {
    check("lite0");
}

/// resnet18 is all nn.ReLU: if the swap silently did not happen, guided would equal plain;
/// vit_tiny has no ReLU (GELU only): guided is plain.
#[test]
fn only_relus_are_guided() {
    for (key, _) in RELU_MODELS {
        let mut model = load(key, "traced").unwrap_or_else(|| panic!("{key}: no traced export"));
        check_relus_guided("tch traced", &mut model, key);
    }
}

/// An in-place ReLU on a view (`y.view(..).relu_()`, then `y` read): mutation removal cannot make
/// it out-of-place, so the guided op's result is written back into the view. Against the closed
/// form: logits = relu(x) w^T; the gradient entering the ReLU for class c is w[c], so plain is
/// w[c] (x > 0) and guided w[c] (x > 0) (w[c] > 0).
#[test]
fn in_place_relu_on_a_view_is_guided_and_written_back() {
    let (batch, features, classes) = (2usize, 3 * 4 * 5, 3usize);
    let xs: Vec<f32> = (0..batch * features).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
    let ws: Vec<f32> = (0..classes * features).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let w = Tensor::from_slice(&ws).view([classes as i64, features as i64]);
    let x = Tensor::from_slice(&xs).view([batch as i64, 3, 4, 5]);
    let traced = CModule::create_by_tracing("ViewRelu", "forward", &[x], &mut |inputs| {
        let y = &inputs[0] * 1.0;
        let _ = y.view([batch as i64, -1]).relu_();
        vec![y.flatten(1, -1).matmul(&w.tr())]
    })
    .expect("trace");
    let dir = tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "guided", "view_relu");
    let path = dir.join("view_relu.traced.pt");
    traced.save(&path).expect("save");
    let mut model = TorchScriptModel::load(&path, DeviceChoice::Cpu).expect("load");

    let input = Array4::from_shape_vec((batch, 3, 4, 5), xs.clone()).unwrap();
    let target = Target::per_image(vec![0, 2]);
    let plain = model.input_gradient(input.view(), &target, ReluBackward::Plain).expect("plain");
    let guided = model.input_gradient(input.view(), &target, ReluBackward::Guided).expect("guided");
    let w = Array2::from_shape_vec((classes, features), ws).unwrap();
    let x = Array2::from_shape_vec((batch, features), xs).unwrap();
    let logits = x.mapv(|v| v.max(0.0)).dot(&w.t());
    for (name, got) in [("plain", &plain), ("guided", &guided)] {
        assert_close(&format!("{name} logits"), got.logits.view(), logits.view(), TOL);
    }
    let mut want_plain = Array2::<f32>::zeros((batch, features));
    let mut want_guided = want_plain.clone();
    for (b, c) in [0, 2].into_iter().enumerate() {
        for j in 0..features {
            let (g, on) = (w[[c, j]], x[[b, j]] > 0.0);
            want_plain[[b, j]] = if on { g } else { 0.0 };
            want_guided[[b, j]] = if on && g > 0.0 { g } else { 0.0 };
        }
    }
    let flat = |g: &InputGradient| g.gradient.clone().into_shape_with_order((batch, features)).unwrap();
    assert_close("plain gradient", flat(&plain).view(), want_plain.view(), TOL);
    assert_close("guided gradient", flat(&guided).view(), want_guided.view(), TOL);
}

/// torchvision's ViT runs the fused `aten::_native_multi_head_attention`, which libtorch cannot
/// differentiate; the input graph rewrites it as capture does. Its plain input gradient against
/// central finite differences of the score along one direction, for both exports.
#[test]
fn fused_attention_differentiates_down_to_the_input() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("models");
    let input =
        tests::npy::<f32>(dir.join("tv_vit/input.npy")).into_dimensionality::<ndarray::Ix4>().unwrap();
    let direction = input.mapv(f32::signum);
    let (class, eps) = (3, 1e-2f32);
    for file in ["tv_vit.traced.pt", "tv_vit.scripted.pt"] {
        let mut model = TorchScriptModel::load(&dir.join(file), DeviceChoice::Cpu).expect("load");
        let target = Target::class(class);
        let plain = model
            .input_gradient(input.view(), &target, ReluBackward::Plain)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let guided = model.input_gradient(input.view(), &target, ReluBackward::Guided).expect("guided");
        assert_close(&format!("{file} guided (no ReLU)"), guided.gradient.view(), plain.gradient.view(), TOL);
        let mut score = |x: &Array4<f32>| -> f64 {
            let logits = model.forward(x.view()).expect("forward");
            logits.column(class).iter().map(|&v| v as f64).sum()
        };
        let finite = (score(&(&input + &(&direction * eps))) - score(&(&input - &(&direction * eps))))
            / (2.0 * eps as f64);
        let analytic: f64 = plain.gradient.iter().zip(&direction).map(|(&g, &d)| (g * d) as f64).sum();
        assert!(
            (finite - analytic).abs() <= 1e-2 * analytic.abs().max(1e-3),
            "{file}: finite differences {finite} vs gradient {analytic}"
        );
    }
}

/// A small model whose biases are not zero (the fixtures' resnet18 is freshly initialised: every
/// folded bias is 0), with in-place ReLUs right after its BatchNorms (a module and `F.relu(inplace)`)
/// and look-alikes grad-cam skips (`tests/models/make.py`'s `biased`): bias layers, folded biases,
/// each layer's output gradient and the input gradient against eager PyTorch, both exports. An
/// output gradient taken after the in-place ReLU would be masked where the output is negative.
#[test]
fn fullgrad_biases_and_gradients_match_pytorch() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("models");
    let models = read_json(&dir.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let entry = &models["models"]["biased"];
    let class = models["class"].as_u64().expect("class") as usize;
    let want: Vec<&str> =
        entry["bias_layers"].as_array().expect("bias_layers").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(want, ["stem", "bn", "bn2"], "the reference's bias layers");
    let reference = dir.join("biased").join("fullgrad");
    let input =
        tests::npy::<f32>(dir.join("biased/input.npy")).into_dimensionality::<ndarray::Ix4>().unwrap();
    for kind in ["traced", "scripted"] {
        let file = entry["files"][kind].as_str().expect("file");
        let mut model = TorchScriptModel::load(&dir.join(file), DeviceChoice::Cpu).expect("load");
        let grads = model
            .full_gradients(input.view(), &Target::class(class))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let got: Vec<&str> = grads.biases.iter().map(|b| b.layer.as_str()).collect();
        assert_eq!(got, want, "{file}: bias layers");
        let input_gradient = tests::npy::<f32>(reference.join("input_gradient.npy"));
        assert_close(
            &format!("{file} input gradient"),
            grads.input_gradient.view().into_dyn(),
            input_gradient.view(),
            TOL,
        );
        for b in &grads.biases {
            let bias = tests::npy::<f32>(reference.join(&b.layer).join("bias.npy"));
            let got = ndarray::ArrayView1::from(&b.bias[..]);
            assert_close(&format!("{file} {} bias", b.layer), got.into_dyn(), bias.view(), TOL);
            let gradient = tests::npy::<f32>(reference.join(&b.layer).join("gradient.npy"));
            assert_close(
                &format!("{file} {} gradient", b.layer),
                b.gradient.view().into_dyn(),
                gradient.view(),
                TOL,
            );
        }
    }
}
