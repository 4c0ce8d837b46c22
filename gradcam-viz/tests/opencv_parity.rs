//! gradcam-viz against OpenCV and pytorch-grad-cam: reference values made by
//! `tests/fixtures/make_viz_fixtures.py` (committed next to it).

use std::path::PathBuf;

use gradcam_core::resize_bilinear;
use gradcam_viz::{load_image, overlay, overlay_f32, rgb_planes, Colormap, Preprocess, ResizeFilter};
use ndarray::{Array2, Array3, ArrayD, Axis};
use ndarray_npy::read_npy;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(name: &str) -> ndarray::Array<T, D> {
    read_npy(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_abs_diff<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>, b: &ndarray::Array<f32, D>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// CAM-sized upscales (the path every heatmap takes) and tiny maps.
const UPSCALES: &[&str] = &["7x7_224x224", "3x4_96x128", "5x9_37x61", "1x1_4x3"];
/// Photo-sized downscales (the path of model preprocessing), one of them an exact 2x (where
/// OpenCV switches to INTER_AREA, which gives the same numbers).
const DOWNSCALES: &[&str] = &["120x181_56x56", "64x96_32x48", "300x451_224x224"];

fn check_resize(cases: &[&str]) {
    for case in cases {
        let input: Array2<f32> = if case.starts_with("300x451") {
            load::<u8, _>(&format!("resize_{case}_in_u8.npy")).mapv(|v| (v as f64 / 255.0) as f32)
        } else {
            load(&format!("resize_{case}_in.npy"))
        };
        let expected: Array2<f32> = load(&format!("resize_{case}_out.npy"));
        let (h, w) = expected.dim();
        let got = resize_bilinear(input.view(), h, w);
        let diff = max_abs_diff(&got, &expected);
        // The reference is cv2 5.0.0, whose float INTER_LINEAR computes each source coordinate
        // in f64 and rounds only the fraction to f32 (`frac = (f - floor(f)) as f32`); rounding the
        // coordinate itself to f32 first (OpenCV 4.x) is off by up to ~3e-5 when downscaling.
        assert!(diff <= 1e-5, "{case}: max |gradcam_core::resize_bilinear - cv2| = {diff}");
    }
}

#[test]
fn resize_upscaling_matches_cv2_inter_linear() {
    check_resize(UPSCALES);
}

#[test]
fn resize_downscaling_matches_cv2_inter_linear() {
    check_resize(DOWNSCALES);
}

#[test]
fn colormaps_match_cv2_apply_color_map() {
    for (name, cmap) in [
        ("jet", Colormap::Jet),
        ("turbo", Colormap::Turbo),
        ("viridis", Colormap::Viridis),
        ("inferno", Colormap::Inferno),
    ] {
        let expected: Array2<u8> = load(&format!("colormap_{name}.npy"));
        assert_eq!(expected.dim(), (256, 3));
        for (level, rgb) in expected.outer_iter().enumerate() {
            assert_eq!(
                cmap.color(level as u8).as_slice(),
                rgb.as_slice().unwrap(),
                "{name} at level {level}"
            );
        }
    }
}

#[test]
fn colormap_apply_quantises_like_numpy_uint8() {
    // `np.uint8(255 * mask)` truncates: 0.999 -> 254, 1.0 -> 255, 0.5 -> 127.
    let map = ndarray::array![[0.0f32, 0.5, 0.999, 1.0]];
    let picture = Colormap::Jet.apply(map.view());
    let levels = [0u8, 127, 254, 255];
    for (x, level) in levels.iter().enumerate() {
        assert_eq!(picture.get_pixel(x as u32, 0).0, Colormap::Jet.color(*level));
    }
}

fn overlay_cases() -> impl Iterator<Item = (&'static str, Colormap, f64)> {
    let maps = [
        ("jet", Colormap::Jet),
        ("turbo", Colormap::Turbo),
        ("viridis", Colormap::Viridis),
        ("inferno", Colormap::Inferno),
    ];
    maps.into_iter().flat_map(|(n, c)| [0.5, 0.3, 0.0, 1.0].into_iter().map(move |w| (n, c, w)))
}

fn weight_name(w: f64) -> String {
    format!("{w:.1}")
}

#[test]
fn overlay_matches_show_cam_on_image_bytes() {
    let image = load_image(fixture("overlay_image.png")).unwrap();
    let mask: Array2<f32> = load("overlay_mask.npy");
    for (name, cmap, weight) in overlay_cases() {
        let expected: Array3<u8> = load(&format!("overlay_{name}_{}.npy", weight_name(weight)));
        let got = overlay(&image, mask.view(), cmap, weight).unwrap();
        assert_eq!((got.height() as usize, got.width() as usize, 3), expected.dim());
        let mismatches = got.as_raw().iter().zip(expected.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(mismatches, 0, "{name} weight {weight}: {mismatches} bytes differ");
    }
}

#[test]
fn overlay_f32_matches_show_cam_on_image_bytes() {
    let image = load_image(fixture("overlay_image.png")).unwrap();
    // (H, W, 3) f32 in [0, 1], as `np.float32(image) / 255`.
    let rgb = rgb_planes(&image).unwrap().permuted_axes([1, 2, 0]);
    let mask: Array2<f32> = load("overlay_mask.npy");
    for (name, cmap, weight) in overlay_cases() {
        let expected: Array3<u8> = load(&format!("overlay_{name}_{}.npy", weight_name(weight)));
        let got = overlay_f32(rgb.view(), mask.view(), cmap, weight).unwrap();
        assert!(got.as_raw().iter().eq(expected.iter()), "{name} weight {weight}");
    }
}

#[test]
fn preprocess_matches_cv2_pipeline() {
    let image = load_image(fixture("preprocess_image.png")).unwrap();
    for (h, w) in [(16, 24), (64, 48)] {
        let expected: Array3<f32> = load(&format!("preprocess_{h}x{w}.npy"));
        let linear = Preprocess { filter: ResizeFilter::Linear, ..Preprocess::new(h, w) };
        let got = linear.tensor(&image).unwrap();
        let diff = max_abs_diff(&got, &expected);
        // Normalised values reach ~2.6; 1e-5 is the resize tolerance divided by std ≈ 0.22.
        assert!(diff <= 5e-5, "{h}x{w}: max |rust - python| = {diff}");
        let batch = linear.batch(&[image.clone(), image.clone()]).unwrap();
        for item in batch.axis_iter(Axis(0)) {
            assert_eq!(item, got);
        }
    }
}

#[test]
fn antialiased_preprocessing_is_pillow_bilinear_bit_for_bit() {
    let cases = [
        ("preprocess_image.png", "pillow_noise_16x24.npy"),
        ("preprocess_image.png", "pillow_noise_64x48.npy"),
        ("preprocess_image.png", "pillow_noise_30x20.npy"),
        ("../../../assets/images/chelsea.png", "pillow_chelsea_224x224.npy"),
    ];
    for (photo, name) in cases {
        let image = load_image(fixture(photo)).unwrap();
        let expected: Array3<u8> = load(name);
        let (h, w, _) = expected.dim();
        let p = Preprocess { mean: [0.0; 3], std: [1.0; 3], ..Preprocess::new(h, w) };
        assert_eq!(p.filter, ResizeFilter::Antialiased, "the default");
        let got = p.resized_f32(&image).unwrap();
        let wrong =
            got.iter().zip(expected.iter()).filter(|(g, e)| (**g * 255.0).round() as u8 != **e).count();
        assert_eq!(wrong, 0, "{name}: {wrong} of {} values differ from Pillow", got.len());
    }
}

#[test]
fn fixtures_are_what_the_tests_think() {
    // Guards against a regenerated fixture silently becoming trivial.
    let mask: ArrayD<f32> = load("overlay_mask.npy");
    assert!(mask.iter().any(|&v| v == 1.0) && mask.iter().any(|&v| v == 0.0));
    assert!(mask.iter().any(|&v| v > 0.0 && v < 1.0));
}
