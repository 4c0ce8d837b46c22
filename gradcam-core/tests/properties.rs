//! Property tests: the optimised math against a plain loop implementation written separately here,
//! and the invariances every CAM should have.

mod common;

use common::{tensor, toy, ChannelsLast, Toy};
use gradcam_core::{
    ablation_value, explain, grid_to_tokens, layer_map, principal_projection, resize_bilinear,
    resize_extremes, resize_matrix, scale_maps, tokens_to_grid, upsample_align_corners, CamOptions, Layout,
    Method, Target, TokenGrid,
};
use nalgebra::DMatrix;
use ndarray::{s, Array2, Array3, Array4, ArrayView4, Axis};
use proptest::prelude::*;

// ---------- the plain reference: nested loops in f64, straight from the papers / grad-cam ----------

type Maps = Vec<Vec<Vec<f64>>>; // [b][y][x]

fn dims(a: &ArrayView4<f32>) -> (usize, usize, usize, usize) {
    a.dim()
}

fn channel_weighted(a: &ArrayView4<f32>, weight: impl Fn(usize, usize) -> f64) -> Maps {
    let (bs, cs, hs, ws) = dims(a);
    let mut out = vec![vec![vec![0.0; ws]; hs]; bs];
    for b in 0..bs {
        for c in 0..cs {
            let wc = weight(b, c);
            for y in 0..hs {
                for x in 0..ws {
                    out[b][y][x] += wc * a[[b, c, y, x]] as f64;
                }
            }
        }
    }
    out
}

fn elementwise(a: &ArrayView4<f32>, g: &ArrayView4<f32>, f: impl Fn(f64, f64) -> f64) -> Maps {
    let (bs, cs, hs, ws) = dims(a);
    let mut out = vec![vec![vec![0.0; ws]; hs]; bs];
    for b in 0..bs {
        for y in 0..hs {
            for x in 0..ws {
                for c in 0..cs {
                    out[b][y][x] += f(g[[b, c, y, x]] as f64, a[[b, c, y, x]] as f64);
                }
            }
        }
    }
    out
}

fn spatial_sum(a: &ArrayView4<f32>, b: usize, c: usize, f: impl Fn(usize, usize) -> f64) -> f64 {
    let (_, _, hs, ws) = dims(a);
    let mut s = 0.0;
    for y in 0..hs {
        for x in 0..ws {
            s += f(y, x);
        }
    }
    let _ = (b, c);
    s
}

/// EigenCAM by power iteration on the C x C matrix, not the optimised Gram + eigen-solver path.
fn eigen_reference(m: &ArrayView4<f32>) -> Maps {
    let (bs, cs, hs, ws) = dims(m);
    let mut out = vec![vec![vec![0.0; ws]; hs]; bs];
    for b in 0..bs {
        let n = hs * ws;
        let mut x = DMatrix::<f64>::zeros(n, cs);
        let mut mean = vec![0.0; cs];
        for c in 0..cs {
            for p in 0..n {
                mean[c] += m[[b, c, p / ws, p % ws]] as f64 / n as f64;
            }
            for p in 0..n {
                x[(p, c)] = m[[b, c, p / ws, p % ws]] as f64 - mean[c];
            }
        }
        // Plain power iteration on XᵀX (callers check that the top direction is separated, so this
        // converges); the start vector is irregular so that it is not orthogonal to the answer.
        let xtx = x.transpose() * &x;
        let mut v: Vec<f64> = (0..cs).map(|c| 1.0 + (c as f64 * 0.7548).sin() * 0.5).collect();
        let mut sigma2 = 0.0;
        for _ in 0..3000 {
            let next: Vec<f64> = (0..cs).map(|i| (0..cs).map(|j| xtx[(i, j)] * v[j]).sum()).collect();
            sigma2 = next.iter().map(|e| e * e).sum::<f64>().sqrt();
            if sigma2 <= 1e-24 {
                break;
            }
            v = next.iter().map(|e| e / sigma2).collect();
        }
        if sigma2 <= 1e-12 {
            continue;
        }
        let dot: f64 = v.iter().zip(&mean).map(|(a, b)| a * b).sum();
        let norm: f64 = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
        let flip = if dot.abs() > 1e-6 * norm {
            dot < 0.0
        } else {
            let mut k = 0;
            for i in 0..v.len() {
                if v[i].abs() > v[k].abs() {
                    k = i;
                }
            }
            v[k] < 0.0
        };
        if flip {
            v.iter_mut().for_each(|e| *e = -*e);
        }
        for p in 0..n {
            out[b][p / ws][p % ws] = (0..cs).map(|c| x[(p, c)] * v[c]).sum();
        }
    }
    out
}

/// The second-largest over largest singular value of every image's centred matrix (eigen methods are
/// only well defined when the top direction is separated).
fn eigen_gap_ok(m: &ArrayView4<f32>) -> bool {
    let (bs, cs, hs, ws) = dims(m);
    (0..bs).all(|b| {
        let n = hs * ws;
        let x = DMatrix::<f64>::from_fn(n, cs, |p, c| {
            let mean: f64 = (0..n).map(|q| m[[b, c, q / ws, q % ws]] as f64).sum::<f64>() / n as f64;
            m[[b, c, p / ws, p % ws]] as f64 - mean
        });
        let mut s: Vec<f64> = x.singular_values().iter().copied().collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s[0] < 1e-9 || s.len() < 2 || s[1] < 0.9 * s[0]
    })
}

/// Grad-CAM++'s weight of channel `c` of image `b`.
fn plus_plus_weight(a: &ArrayView4<f32>, g: &ArrayView4<f32>, b: usize, c: usize) -> f64 {
    let sum_a = spatial_sum(a, b, c, |y, x| a[[b, c, y, x]] as f64);
    spatial_sum(a, b, c, |y, x| {
        let g = g[[b, c, y, x]] as f64;
        if g == 0.0 {
            return 0.0;
        }
        let alpha = g * g / (2.0 * g * g + sum_a * g * g * g + 1e-6);
        g.max(0.0) * alpha
    })
}

/// XGradCAM's weight of channel `c` of image `b`: Σ(g·a) / Σa.
fn xgrad_weight(a: &ArrayView4<f32>, g: &ArrayView4<f32>, b: usize, c: usize) -> f64 {
    let sum_a = spatial_sum(a, b, c, |y, x| a[[b, c, y, x]] as f64);
    spatial_sum(a, b, c, |y, x| (g[[b, c, y, x]] * a[[b, c, y, x]]) as f64) / (sum_a + 1e-7)
}

fn reference_map(method: Method, a: &ArrayView4<f32>, g: &ArrayView4<f32>) -> Maps {
    let (_, _, hs, ws) = dims(a);
    let n = (hs * ws) as f64;
    match method {
        Method::GradCam => {
            channel_weighted(a, |b, c| spatial_sum(a, b, c, |y, x| g[[b, c, y, x]] as f64) / n)
        }
        Method::GradCamPlusPlus => channel_weighted(a, |b, c| plus_plus_weight(a, g, b, c)),
        Method::XGradCam => channel_weighted(a, |b, c| xgrad_weight(a, g, b, c)),
        Method::HiResCam => elementwise(a, g, |g, a| g * a),
        Method::LayerCam => elementwise(a, g, |g, a| g.max(0.0) * a),
        Method::GradCamElementWise => elementwise(a, g, |g, a| (g * a).max(0.0)),
        Method::EigenCam => eigen_reference(a),
        Method::EigenGradCam => eigen_reference(&(&a.to_owned() * g).view()),
        other => unreachable!("{other} is tested through explain or its own properties"),
    }
}

/// The size of the terms a map element sums before they cancel: f32 rounding error scales with
/// these, not with the map (a sum over channels, and inside a weight, over pixels, may nearly
/// cancel). Each term at its own magnitude; XGradCAM's weight adds its denominator's conditioning
/// (Σ|g·a| + |w|·Σ|a|) / |Σa|. Eigen methods have their own tolerance: 0.
fn rounding_scale(method: Method, a: &ArrayView4<f32>, g: &ArrayView4<f32>) -> f32 {
    let (_, _, hs, ws) = dims(a);
    let n = (hs * ws) as f64;
    let abs_a = a.mapv(f32::abs);
    let abs_a = abs_a.view();
    let terms = match method {
        Method::GradCam => {
            channel_weighted(&abs_a, |b, c| spatial_sum(a, b, c, |y, x| g[[b, c, y, x]].abs() as f64) / n)
        }
        Method::GradCamPlusPlus => channel_weighted(&abs_a, |b, c| plus_plus_weight(a, g, b, c).abs()),
        Method::XGradCam => channel_weighted(&abs_a, |b, c| {
            let sum_a = spatial_sum(a, b, c, |y, x| a[[b, c, y, x]] as f64);
            let sum_abs_a = spatial_sum(a, b, c, |y, x| a[[b, c, y, x]].abs() as f64);
            let sum_abs_ga = spatial_sum(a, b, c, |y, x| (g[[b, c, y, x]] * a[[b, c, y, x]]).abs() as f64);
            (sum_abs_ga + xgrad_weight(a, g, b, c).abs() * sum_abs_a) / (sum_a + 1e-7).abs()
        }),
        Method::HiResCam | Method::LayerCam | Method::GradCamElementWise => {
            elementwise(a, g, |g, a| (g * a).abs())
        }
        _ => return 0.0,
    };
    terms.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(*v)) as f32
}

fn to_array(maps: &Maps) -> Array3<f32> {
    let (b, h, w) = (maps.len(), maps[0].len(), maps[0][0].len());
    Array3::from_shape_fn((b, h, w), |(b, y, x)| maps[b][y][x] as f32)
}

fn assert_maps_close(
    what: &str,
    ours: &Array3<f32>,
    reference: &Array3<f32>,
    rel: f32,
) -> Result<(), TestCaseError> {
    assert_maps_close_at(what, ours, reference, rel, 0.0)
}

/// As [`assert_maps_close`], relative to `terms` (see [`rounding_scale`]) where that is larger.
fn assert_maps_close_at(
    what: &str,
    ours: &Array3<f32>,
    reference: &Array3<f32>,
    rel: f32,
    terms: f32,
) -> Result<(), TestCaseError> {
    let scale = reference.iter().fold(terms.max(1e-3), |m, v| m.max(v.abs()));
    for (o, r) in ours.iter().zip(reference) {
        prop_assert!(
            (o - r).abs() <= rel * scale,
            "{what}: {o} vs {r} (scale {scale})\nours {ours:?}\nref {reference:?}"
        );
    }
    Ok(())
}

// ---------- strategies ----------

/// (activations, gradients) of a random shape; activations mostly non-negative like post-ReLU maps.
fn layer() -> impl Strategy<Value = (Array4<f32>, Array4<f32>)> {
    (1usize..=3, 1usize..=6, 1usize..=5, 1usize..=5)
        .prop_flat_map(|shape| (tensor(shape, -0.5, 2.0), tensor(shape, -1.0, 1.0)))
}

const LOCAL_METHODS: [Method; 8] = [
    Method::GradCam,
    Method::GradCamPlusPlus,
    Method::XGradCam,
    Method::HiResCam,
    Method::LayerCam,
    Method::GradCamElementWise,
    Method::EigenCam,
    Method::EigenGradCam,
];

// ---------- properties ----------

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every local method agrees with the loop implementation (eigen methods where the top
    /// singular direction is separated from the next, so that it is well defined).
    #[test]
    fn loop_reference_agrees((a, g) in layer()) {
        let eigen_ok = eigen_gap_ok(&a.view()) && eigen_gap_ok(&(&a * &g).view());
        for method in LOCAL_METHODS {
            if matches!(method, Method::EigenCam | Method::EigenGradCam) && !eigen_ok {
                continue;
            }
            let ours = layer_map(method, a.view(), Some(g.view())).unwrap();
            let reference = to_array(&reference_map(method, &a.view(), &g.view()));
            let tol = if matches!(method, Method::EigenCam | Method::EigenGradCam) { 1e-4 } else { 1e-5 };
            let terms = rounding_scale(method, &a.view(), &g.view());
            assert_maps_close_at(&method.to_string(), &ours, &reference, tol, terms)?;
        }
    }

    /// Larger eigen problems (the Lanczos path, Gram matrices over 24 x 24) agree with the loop too.
    #[test]
    fn eigen_large_agrees(parts in (1usize..=2, 25usize..=40, 5usize..=8, 5usize..=8)
                              .prop_flat_map(|(b, c, h, w)| (tensor((b, c, 1, 1), -1.0, 1.0),
                                                             tensor((b, 1, h, w), -1.0, 1.0),
                                                             tensor((b, c, h, w), -0.3, 0.3)))) {
        // A dominant rank-one pattern plus noise, so that the top direction is well separated.
        let (channel, pixel, noise) = parts;
        let a = &(&channel * &pixel) * 3.0 + &noise;
        prop_assume!(eigen_gap_ok(&a.view()));
        let ours = layer_map(Method::EigenCam, a.view(), None).unwrap();
        let reference = to_array(&eigen_reference(&a.view()));
        assert_maps_close("eigencam (large)", &ours, &reference, 1e-4)?;
    }

    /// Reordering channels (activations and gradients alike) changes no map.
    #[test]
    fn channel_permutation_invariance((a, g) in layer(), seed in any::<u64>()) {
        let c = a.len_of(Axis(1));
        let mut order: Vec<usize> = (0..c).collect();
        let mut state = seed | 1;
        for i in (1..c).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let (pa, pg) = (a.select(Axis(1), &order), g.select(Axis(1), &order));
        let eigen_ok = eigen_gap_ok(&a.view()) && eigen_gap_ok(&(&a * &g).view());
        for method in LOCAL_METHODS {
            if matches!(method, Method::EigenCam | Method::EigenGradCam) && !eigen_ok {
                continue;
            }
            let x = layer_map(method, a.view(), Some(g.view())).unwrap();
            let y = layer_map(method, pa.view(), Some(pg.view())).unwrap();
            let tol = if matches!(method, Method::EigenCam | Method::EigenGradCam) { 1e-4 } else { 1e-5 };
            assert_maps_close(&format!("{method} permuted"), &y, &x, tol)?;
        }
    }

    /// GradCAM's normalised map does not change when the gradients are scaled by k > 0.
    #[test]
    fn gradcam_gradient_scale_invariance((a, g) in layer(), k in 0.01f32..100.0) {
        let x = scale_maps(layer_map(Method::GradCam, a.view(), Some(g.view())).unwrap().view());
        let gk = g.mapv(|v| v * k);
        let y = scale_maps(layer_map(Method::GradCam, a.view(), Some(gk.view())).unwrap().view());
        // A map whose spread is tiny against its level is ill-conditioned under min-max: skip it.
        let raw = layer_map(Method::GradCam, a.view(), Some(g.view())).unwrap();
        for b in 0..raw.len_of(Axis(0)) {
            let m = raw.index_axis(Axis(0), b).mapv(|v| v.max(0.0));
            let (lo, hi) = m.iter().fold((f32::INFINITY, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
            // ... and so is one whose spread is not far above scale_cam_image's 1e-7 epsilon (it
            // divides by max - min + 1e-7: at a spread of 1e-2 the epsilon moves a value by 1e-5).
            if hi - lo < 1e-3 * hi.max(1e-3) || (hi - lo) * k.min(1.0) < 1e-2 {
                return Ok(());
            }
        }
        assert_maps_close("gradcam scaled gradients", &y, &x, 1e-4)?;
    }

    /// Zero gradients give all-zero gradient maps; zero activations give all-zero maps for every
    /// method; never NaN.
    #[test]
    fn zero_inputs_give_zero_maps((a, g) in layer()) {
        let zero = Array4::<f32>::zeros(a.raw_dim());
        for method in LOCAL_METHODS {
            for (acts, grads, must_be_zero) in [
                (&zero, &g, true),
                (&a, &zero, method != Method::EigenCam),
                (&zero, &zero, true),
            ] {
                let raw = layer_map(method, acts.view(), Some(grads.view())).unwrap();
                let scaled = scale_maps(raw.view());
                prop_assert!(scaled.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{method}: {scaled:?}");
                if must_be_zero {
                    prop_assert!(scaled.iter().all(|&v| v == 0.0), "{method}: {scaled:?}");
                }
            }
        }
    }

    /// A channels-last layer `(B, H, W, C)` gives the same maps as the same layer read as NCHW,
    /// for every method (AblationCAM ablates the channel on the last axis), whether the layout is
    /// detected or given; read with the wrong layout, the maps change.
    #[test]
    fn channels_last_layers_give_the_same_maps((model, input) in toy(), bs in 1usize..=4) {
        let (_, _, h, w) = input.dim();
        let c = model.mix.nrows();
        // Read as NCHW, (B, h, w, C) has the spatial axes (w, C): when a stride maps (h, w) onto
        // them too, detection rightly keeps PyTorch's layout, and only the explicit one applies.
        let ambiguous = (1..=h.max(w)).any(|s| (h / s == w && w / s == c) || (h.div_ceil(s) == w && w.div_ceil(s) == c));
        let options = CamOptions { batch_size: bs, ..CamOptions::default() };
        let want = explain(&mut model.clone(), input.view(), &["features"], &Method::ALL, &Target::top_one(), &options).unwrap();
        let nhwc = CamOptions { layout: Some(Layout::Nhwc), ..options.clone() };
        let runs = if ambiguous { vec![&nhwc] } else { vec![&options, &nhwc] };
        for options in runs {
            let got = explain(&mut ChannelsLast(model.clone()), input.view(), &["features"], &Method::ALL,
                              &Target::top_one(), options).unwrap();
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.layers[0].layout, Layout::Nhwc);
                prop_assert_eq!(w.layers[0].layout, Layout::Nchw);
                let diff = g.maps.iter().zip(&w.maps).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                prop_assert!(diff <= 1e-5, "{}: {diff}", g.method);
            }
        }
        // A layout that does not fit the rank is an error, not a guess.
        let wrong = CamOptions { layout: Some(Layout::Tokens), ..options.clone() };
        prop_assert!(explain(&mut ChannelsLast(model), input.view(), &["features"], &[Method::GradCam],
                             &Target::top_one(), &wrong).is_err());
    }

    /// Every method through the whole pipeline (ScoreCAM and AblationCAM included) gives finite
    /// maps of the input's size in [0, 1], and one layer per explanation.
    #[test]
    fn explain_output_in_unit_range((mut model, input) in toy(), bs in 1usize..=4) {
        let options = CamOptions { batch_size: bs, ..CamOptions::default() };
        let out = explain(&mut model, input.view(), &[], &Method::ALL, &Target::top_one(), &options).unwrap();
        let (b, _, h, w) = input.dim();
        prop_assert_eq!(out.len(), Method::ALL.len());
        for e in &out {
            prop_assert_eq!(e.maps.dim(), (b, h, w));
            prop_assert!(e.maps.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{}", e.method);
            prop_assert_eq!(e.layers.len(), 1);
            prop_assert!(e.layers[0].scaled.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    /// ScoreCAM and AblationCAM through explain agree with a loop implementation that builds
    /// every masked input / ablated activation itself and runs the toy model on it.
    #[test]
    fn forward_methods_agree_with_loops((mut model, input) in toy(), bs in 1usize..=4) {
        let options = CamOptions { batch_size: bs, ..CamOptions::default() };
        let out = explain(&mut model, input.view(), &["features"], &[Method::ScoreCam, Method::AblationCam],
                          &Target::top_one(), &options).unwrap();
        let features = model.features(input.view());
        let logits = model.head(features.view());
        let (batch, channels, fh, fw) = features.dim();
        let (_, _, h, w) = input.dim();
        let classes: Vec<usize> = logits.outer_iter()
            .map(|r| (0..r.len()).fold(0, |best, k| if r[k] > r[best] { k } else { best })).collect();
        // ScoreCAM
        let mut score_w = Array2::<f64>::zeros((batch, channels));
        for b in 0..batch {
            for c in 0..channels {
                let mut mask = Array2::<f64>::zeros((h, w));
                for y in 0..h {
                    for x in 0..w {
                        let sy = if h > 1 { y as f64 * (fh - 1) as f64 / (h - 1) as f64 } else { 0.0 };
                        let sx = if w > 1 { x as f64 * (fw - 1) as f64 / (w - 1) as f64 } else { 0.0 };
                        let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                        let (y1, x1) = ((y0 + 1).min(fh - 1), (x0 + 1).min(fw - 1));
                        let (ty, tx) = (sy - y0 as f64, sx - x0 as f64);
                        let f = |yy: usize, xx: usize| features[[b, c, yy, xx]] as f64;
                        mask[[y, x]] = (1.0 - ty) * ((1.0 - tx) * f(y0, x0) + tx * f(y0, x1))
                            + ty * ((1.0 - tx) * f(y1, x0) + tx * f(y1, x1));
                    }
                }
                let (lo, hi) = mask.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, u), &v| (l.min(v), u.max(v)));
                let masked = Array4::from_shape_fn((1, 3, h, w), |(_, i, y, x)| {
                    (input[[b, i, y, x]] as f64 * (mask[[y, x]] - lo) / (hi - lo + 1e-8)) as f32
                });
                let l = model.head(model.features(masked.view()).view());
                score_w[[b, c]] = l[[0, classes[b]]] as f64;
            }
            let max = score_w.row(b).iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = score_w.row(b).iter().map(|s| (s - max).exp()).sum();
            for c in 0..channels {
                score_w[[b, c]] = (score_w[[b, c]] - max).exp() / sum;
            }
        }
        let score_ref = to_array(&channel_weighted(&features.view(), |b, c| score_w[[b, c]]));
        assert_maps_close("scorecam", &out[0].layers[0].raw, &score_ref, 1e-4)?;
        // AblationCAM: copy i of a forward batch gets min - (i + 1) * 1e7 unless min == 0.
        let abl_ref = {
            let mut weights = Array2::<f64>::zeros((batch, channels));
            for b in 0..batch {
                let one = features.slice(s![b..b + 1, .., .., ..]);
                let min = one.iter().copied().fold(f32::INFINITY, f32::min);
                for c in 0..channels {
                    let mut ablated = one.to_owned();
                    let value = if min == 0.0 { 0.0 } else { ablation_value(min, c % bs) };
                    ablated.slice_mut(s![0, c, .., ..]).fill(value);
                    let y = logits[[b, classes[b]]] as f64;
                    let yk = model.head(ablated.view())[[0, classes[b]]] as f64;
                    weights[[b, c]] = if y == 0.0 { 0.0 } else { (y - yk) / y };
                }
            }
            to_array(&channel_weighted(&features.view(), |b, c| weights[[b, c]]))
        };
        assert_maps_close("ablationcam", &out[1].layers[0].raw, &abl_ref, 1e-3)?;
    }

    /// Folding tokens to a grid and back restores them; the inferred layout covers every token.
    #[test]
    fn token_grid_roundtrip(b in 1usize..3, p in 0usize..=8, h in 1usize..=12, w in 1usize..=12, d in 1usize..=5,
                            patch in 1usize..=32) {
        let n = p + h * w;
        let tokens = ndarray::Array3::from_shape_fn((b, n, d), |(b, t, d)| (b * 1000 + t * 10 + d) as f32);
        let layout = TokenGrid { prefix_tokens: p, height: h, width: w };
        let grid = tokens_to_grid(tokens.view(), (h * patch, w * patch), Some(layout)).unwrap();
        prop_assert_eq!(grid.dim(), (b, d, h, w));
        for y in 0..h {
            for x in 0..w {
                prop_assert_eq!(grid[[0, d - 1, y, x]], tokens[[0, p + y * w + x, d - 1]]);
            }
        }
        let back = grid_to_tokens(grid.view(), tokens.slice(s![.., ..p, ..])).unwrap();
        prop_assert_eq!(back, tokens.clone());
        if let Ok(inferred) = TokenGrid::infer(n, (h * patch, w * patch)) {
            prop_assert_eq!(inferred.num_tokens(), n);
            prop_assert!(inferred.prefix_tokens <= p, "{:?} for {:?}", inferred, layout);
        }
    }

    /// Usual ViT layouts (class / distillation / register tokens, patches of 14 or 16 pixels,
    /// grids of at least 4 x 4) are inferred exactly from the token count and the input size.
    #[test]
    fn token_grid_inference(p in prop::sample::select(vec![0usize, 1, 2, 5]), h in 4usize..=24, w in 4usize..=24,
                            patch in prop::sample::select(vec![14usize, 16])) {
        let (height, width) = (h * patch, w * patch);
        let inferred = TokenGrid::infer(p + h * w, (height, width));
        prop_assert_eq!(inferred.ok(), Some(TokenGrid { prefix_tokens: p, height: h, width: w }));
    }

    /// resize_bilinear reproduces constant maps and stays within the input's range; the
    /// align-corners upsampling keeps the corners.
    #[test]
    fn resize_properties(map in tensor((1, 1, 3, 4), -2.0, 2.0), oh in 1usize..40, ow in 1usize..40) {
        let m = map.slice(s![0, 0, .., ..]);
        let out = resize_bilinear(m, oh, ow);
        let (lo, hi) = m.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), &v| (l.min(v), u.max(v)));
        prop_assert!(out.iter().all(|&v| v >= lo - 1e-5 && v <= hi + 1e-5));
        let constant = resize_bilinear(Array2::from_elem((3, 4), 0.7f32).view(), oh, ow);
        prop_assert!(constant.iter().all(|&v| (v - 0.7).abs() < 1e-6));
        let up = upsample_align_corners(m, oh.max(2), ow.max(2));
        prop_assert_eq!(up[[0, 0]], m[[0, 0]]);
        prop_assert!((up[[oh.max(2) - 1, ow.max(2) - 1]] - m[[2, 3]]).abs() < 1e-5);
    }

    /// The extremes of a resized map, and of the mean of two maps resized from different sizes,
    /// lie on the rows and columns resize_extremes names.
    #[test]
    fn resize_extremes_hold_the_extremes(a in tensor((1, 1, 4, 7), -2.0, 2.0), b in tensor((1, 1, 3, 2), -2.0, 2.0),
                                         ha in 1usize..5, wa in 1usize..8, oh in 1usize..60, ow in 1usize..60, two in any::<bool>()) {
        let a = a.slice(s![0, 0, ..ha, ..wa]);
        let b = b.slice(s![0, 0, .., ..]);
        let mut map = resize_bilinear(a, oh, ow);
        let (rows, cols) = if two {
            map = (map + resize_bilinear(b, oh, ow)) / 2.0;
            (resize_extremes(&[ha, 3], oh), resize_extremes(&[wa, 2], ow))
        } else {
            (resize_extremes(&[ha], oh), resize_extremes(&[wa], ow))
        };
        let range = |it: &mut dyn Iterator<Item = f32>| it.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), v| (l.min(v), u.max(v)));
        let all = range(&mut map.iter().copied());
        let picked = range(&mut rows.iter().flat_map(|&r| cols.iter().map(move |&c| (r, c))).map(|(r, c)| map[[r, c]]));
        prop_assert!((all.0 - picked.0).abs() < 1e-6 && (all.1 - picked.1).abs() < 1e-6, "{:?} vs {:?}", all, picked);
        prop_assert!(rows.len() <= oh && cols.len() <= ow);
    }

    /// The interpolation matrices resize as resize_bilinear does, shrinking or growing.
    #[test]
    fn resize_matrix_is_resize_bilinear(map in tensor((1, 1, 5, 3), -2.0, 2.0), oh in 1usize..40, ow in 1usize..40) {
        let m = map.slice(s![0, 0, .., ..]);
        let mut rows = Array2::zeros((5, ow));
        ndarray::linalg::general_mat_mul(1.0, &m, &resize_matrix(3, ow).t(), 0.0, &mut rows);
        let mut by_matrix = Array2::zeros((oh, ow));
        ndarray::linalg::general_mat_mul(1.0, &resize_matrix(5, oh), &rows, 0.0, &mut by_matrix);
        let direct = resize_bilinear(m, oh, ow);
        for (a, b) in by_matrix.iter().zip(&direct) {
            prop_assert!((a - b).abs() <= 2e-7 * (1.0 + b.abs()), "{} vs {}", a, b);
        }
    }
}

/// The eigen projection of a rank-one matrix is the known component, oriented by the sign rule.
#[test]
fn eigen_rank_one_and_sign_rule() {
    // Activations a[c, p] = u[p] * v[c] + offset[c]: centred, this is rank one along v.
    let u = [1.0f32, -2.0, 0.5, 3.0, -1.0, 0.0];
    let v = [0.6f32, 0.8];
    let offset = [5.0f32, 5.0];
    let a = Array2::from_shape_fn((2, 6), |(c, p)| u[p] * v[c] + offset[c]);
    let p = principal_projection(a.view());
    let mean_u = u.iter().sum::<f32>() / 6.0;
    // v · mean_row = 0.6 * (0.6 mean_u + 5) + 0.8 * (0.8 mean_u + 5) > 0: the projection is +(u - mean_u).
    for (got, &ui) in p.iter().zip(&u) {
        assert!((got - (ui - mean_u)).abs() < 1e-5, "{p:?}");
    }
    // Negating the activations negates the centred matrix and the mean: v flips with the mean,
    // so the map is unchanged.
    let negated = a.mapv(|x| -x);
    let q = principal_projection(negated.view());
    for (got, &ui) in q.iter().zip(&u) {
        assert!((got - (ui - mean_u)).abs() < 1e-5, "{q:?}");
    }
    // Without the offset the mean is mean_u v, so the map is sign(mean_u) (u - mean_u).
    let u2 = [1.0f32, -2.0, 0.5, 1.0, -1.0, 0.0];
    let mean_u2 = u2.iter().sum::<f32>() / 6.0;
    assert!(mean_u2 < 0.0);
    let r = principal_projection(Array2::from_shape_fn((2, 6), |(c, p)| u2[p] * v[c]).view());
    for (got, &ui) in r.iter().zip(&u2) {
        assert!((got + (ui - mean_u2)).abs() < 1e-5, "{r:?}");
    }
    // Large (ViT-sized) inputs take the iterative path; it must agree with a small-path computation.
    let big = Array2::from_shape_fn((60, 70), |(c, p)| {
        ((c * 7 + p * 3) % 11) as f32 * 0.1 + (p as f32 * 0.05).sin() * (c as f32)
    });
    let full = principal_projection(big.view());
    let reference = {
        let b4 = big.view().insert_axis(Axis(0)).into_shape_with_order((1, 60, 7, 10)).unwrap().to_owned();
        to_array(&eigen_reference(&b4.view()))
    };
    for (x, y) in full.iter().zip(reference.iter()) {
        assert!((x - y).abs() < 1e-4 * reference.iter().fold(1.0f32, |m, v| m.max(v.abs())), "{x} vs {y}");
    }
}

/// Non-divisible inputs (the patch embedding floors or pads) and explicit layouts.
#[test]
fn token_grid_edge_cases() {
    // 224 x 300 with 16-pixel patches: 14 x 18 patches (floor), plus a class token.
    assert_eq!(
        TokenGrid::infer(1 + 14 * 18, (224, 300)).unwrap(),
        TokenGrid { prefix_tokens: 1, height: 14, width: 18 }
    );
    // Padded to 14 x 19 (ceil).
    assert_eq!(
        TokenGrid::infer(1 + 14 * 19, (224, 300)).unwrap(),
        TokenGrid { prefix_tokens: 1, height: 14, width: 19 }
    );
    let tokens = ndarray::Array3::<f32>::zeros((1, 197, 4));
    let wrong = TokenGrid { prefix_tokens: 0, height: 14, width: 14 };
    let err = tokens_to_grid(tokens.view(), (224, 224), Some(wrong)).unwrap_err();
    assert!(matches!(err, gradcam_core::CamError::TokenGrid { tokens: 197, .. }), "{err}");
    let err = TokenGrid::infer(205, (224, 224)).unwrap_err();
    assert!(err.to_string().contains("205 tokens"), "{err}");
}

/// AblationCAM's value rule as pytorch-grad-cam applies it, copy by copy.
#[test]
fn ablation_value_rule() {
    assert_eq!(ablation_value(0.0, 5), 0.0);
    assert_eq!(ablation_value(-2.0, 0), -2.0 - 1e7);
    assert_eq!(ablation_value(-2.0, 2), ((-2.0f32 - 1e7) - 1e7) - 1e7);
}

/// A 5-channel toy and a batch of 2 images for the tests of extra forward passes.
fn passes_toy() -> (Toy, Array4<f32>) {
    let toy = Toy {
        mix: Array2::from_shape_fn((5, 3), |(c, i)| (c as f32 - 2.0) * 0.3 + i as f32 * 0.1),
        bias: vec![0.1; 5],
        head: Array2::from_shape_fn((3, 5), |(k, c)| ((k + c) % 3) as f32 - 1.0),
        forwards: 0,
    };
    let input = Array4::from_shape_fn((2, 3, 6, 7), |(b, i, y, x)| ((b + i + y * x) % 5) as f32 * 0.2 - 0.4);
    (toy, input)
}

/// ScoreCAM calls the model once per channel and image, in batches, and reports progress.
#[test]
fn forward_passes_are_batched_and_reported() {
    use std::sync::{Arc, Mutex};
    let (mut model, input) = passes_toy();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let options = CamOptions {
        batch_size: 2,
        progress: Some(Arc::new(move |done, total| log.lock().unwrap().push((done, total)))),
        ..CamOptions::default()
    };
    explain(
        &mut model,
        input.view(),
        &["features"],
        &[Method::ScoreCam, Method::AblationCam],
        &Target::top_one(),
        &options,
    )
    .unwrap();
    assert_eq!(model.forwards, 2 * 5);
    let seen = seen.lock().unwrap();
    // 2 methods x 2 images x 3 batches (2 + 2 + 1 channels).
    assert_eq!(seen.len(), 12);
    assert_eq!(*seen.last().unwrap(), (20, 20));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(seen.iter().any(|&(done, _)| done == 5), "a final partial batch of one");
}

/// `cancel` stops ScoreCAM, AblationCAM and aug_smooth between their forward passes: the pass
/// after the one during which it started saying yes never runs.
#[test]
fn cancel_stops_between_forward_passes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (toy, input) = passes_toy();
    for (method, aug_smooth) in
        [(Method::ScoreCam, false), (Method::AblationCam, false), (Method::GradCam, true)]
    {
        let mut model = toy.clone();
        // Says yes from its third question on.
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let options = CamOptions {
            batch_size: 1,
            aug_smooth,
            cancel: Some(Arc::new(move || count.fetch_add(1, Ordering::SeqCst) >= 2)),
            ..CamOptions::default()
        };
        let result =
            explain(&mut model, input.view(), &["features"], &[method], &Target::top_one(), &options);
        assert!(matches!(result, Err(gradcam_core::CamError::Cancelled)), "{method}: {result:?}");
        assert_eq!(asked.load(Ordering::SeqCst), 3, "{method}: stopped at the first yes");
        // Never saying yes, the same call asks once per pass: 10 extra passes (or 6 augmented).
        let asked_all = Arc::new(AtomicUsize::new(0));
        let count = asked_all.clone();
        let options = CamOptions {
            batch_size: 1,
            aug_smooth,
            cancel: Some(Arc::new(move || count.fetch_add(1, Ordering::SeqCst) == usize::MAX)),
            ..CamOptions::default()
        };
        let mut model = toy.clone();
        explain(&mut model, input.view(), &["features"], &[method], &Target::top_one(), &options).unwrap();
        assert!(
            asked_all.load(Ordering::SeqCst) >= 6,
            "{method}: asked {}",
            asked_all.load(Ordering::SeqCst)
        );
    }
}
