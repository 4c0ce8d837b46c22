//! Colormaps, overlays, the origin view and comparison grids: properties that hold for any input.

use gradcam_core::resize_bilinear;
use gradcam_viz::{
    draw_text, grid, grid_with, level, line_height, origin_view, overlay, resize_nearest, text_width,
    Colormap, GridOptions, Preprocess, VizError, IMAGENET_MEAN, IMAGENET_STD,
};
use image::{Rgb, RgbImage};
use ndarray::{Array2, Array3};

/// Deterministic pseudo-random values in [0, 1) (a small LCG; no dependency needed).
fn noise(h: usize, w: usize, seed: u64) -> Array2<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Array2::from_shape_fn((h, w), |_| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    })
}

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x + y) % 256) as u8]))
}

#[test]
fn colormap_names_round_trip() {
    for cmap in Colormap::ALL {
        assert_eq!(cmap.name().parse::<Colormap>().unwrap(), cmap);
        assert_eq!(cmap.to_string().to_uppercase().parse::<Colormap>().unwrap(), cmap);
    }
    let names: Vec<&str> = Colormap::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["jet", "turbo", "viridis", "inferno", "gray"]);
    let err = "parula".parse::<Colormap>().unwrap_err();
    assert!(matches!(err, VizError::UnknownColormap { .. }));
    assert!(err.to_string().contains("parula") && err.to_string().contains("viridis"), "{err}");
}

#[test]
fn jet_goes_blue_to_red_and_gray_is_the_identity() {
    let jet = Colormap::Jet.lut();
    assert!(jet[0][2] > 100 && jet[0][0] == 0, "low is blue");
    assert!(jet[255][0] > 100 && jet[255][2] == 0, "high is red");
    assert!(jet[128][1] == 255, "middle is green-ish");
    for (i, rgb) in Colormap::Gray.lut().iter().enumerate() {
        assert_eq!(*rgb, [i as u8; 3]);
    }
    // Perceptual maps get brighter monotonically (sum of channels as a rough luminance).
    for cmap in [Colormap::Viridis, Colormap::Inferno] {
        let lum: Vec<u32> = cmap.lut().iter().map(|c| c.iter().map(|&v| v as u32).sum()).collect();
        assert!(lum[255] > lum[128] && lum[128] > lum[0], "{cmap}");
    }
}

#[test]
fn level_truncates_and_saturates() {
    assert_eq!(level(0.0), 0);
    assert_eq!(level(0.5), 127);
    assert_eq!(level(1.0), 255);
    assert_eq!(level(2.0), 255);
    assert_eq!(level(-0.1), 0);
    assert_eq!(level(f32::NAN), 0);
}

#[test]
fn overlay_resizes_a_cam_of_another_size_bilinearly() {
    let image = photo(45, 30);
    let cam = noise(7, 7, 1);
    let direct = overlay(&image, cam.view(), Colormap::Turbo, 0.5).unwrap();
    let explicit = overlay(&image, resize_bilinear(cam.view(), 30, 45).view(), Colormap::Turbo, 0.5).unwrap();
    assert_eq!(direct, explicit);
    assert_eq!(direct.dimensions(), (45, 30));
}

#[test]
fn overlay_weights_and_normalisation() {
    let image = photo(20, 10);
    let cam = noise(10, 20, 2);
    // Weight 1: only the photo, divided by its maximum: the brightest channel value becomes 255.
    let only_photo = overlay(&image, cam.view(), Colormap::Jet, 1.0).unwrap();
    assert_eq!(*only_photo.as_raw().iter().max().unwrap(), 255);
    let max = *image.as_raw().iter().max().unwrap() as f32;
    for (o, p) in only_photo.as_raw().iter().zip(image.as_raw()) {
        assert!((*o as f32 - 255.0 * *p as f32 / max).abs() <= 1.0);
    }
    // Weight 0: only the heatmap, which for jet always reaches 255 somewhere.
    let only_heat = overlay(&image, cam.view(), Colormap::Jet, 0.0).unwrap();
    for (px, &v) in only_heat.pixels().zip(cam.iter()) {
        let c = Colormap::Jet.color(level(v));
        for k in 0..3 {
            assert!((px.0[k] as i32 - c[k] as i32).abs() <= 1, "{:?} vs {c:?}", px.0);
        }
    }
    for bad in [-0.1, 1.01, f64::NAN] {
        assert!(matches!(overlay(&image, cam.view(), Colormap::Jet, bad), Err(VizError::Invalid(_))));
    }
    assert!(overlay(&image, Array2::<f32>::zeros((0, 3)).view(), Colormap::Jet, 0.5).is_err());
    assert!(overlay(&RgbImage::new(0, 0), cam.view(), Colormap::Jet, 0.5).is_err());
}

#[test]
fn hot_region_is_red_on_a_grey_photo() {
    let image = RgbImage::from_pixel(64, 64, Rgb([128, 128, 128]));
    let cam = Array2::from_shape_fn((64, 64), |(y, x)| {
        if (20..40).contains(&y) && (20..40).contains(&x) {
            1.0
        } else {
            0.0
        }
    });
    let out = overlay(&image, cam.view(), Colormap::Jet, 0.5).unwrap();
    // Half jet's dark red (128, 0, 0) plus half grey, scaled so the brightest channel is 255.
    let [r, g, b] = out.get_pixel(30, 30).0;
    assert!(r == 255 && g < 140 && b < 140 && r - g > 100, "hot spot {:?}", [r, g, b]);
    let [r, _, b] = out.get_pixel(2, 2).0;
    assert!(b > r, "cold corner should be blue");
}

#[test]
fn origin_view_keeps_cells_as_uniform_blocks() {
    let map = noise(7, 7, 3);
    let view = origin_view(map.view(), 224, 224, Colormap::Viridis).unwrap();
    assert_eq!(view.dimensions(), (224, 224));
    for y in 0..224u32 {
        for x in 0..224u32 {
            let cell = map[[(y / 32) as usize, (x / 32) as usize]];
            assert_eq!(view.get_pixel(x, y).0, Colormap::Viridis.color(level(cell)));
        }
    }
    // Non-integer ratios: every source cell still appears, in order, as a contiguous run.
    let stretched = resize_nearest(map.view(), 10, 23).unwrap();
    let first_row: Vec<f32> = stretched.row(0).to_vec();
    let mut runs: Vec<f32> = first_row.clone();
    runs.dedup();
    assert_eq!(runs, map.row(0).to_vec());
    assert!(resize_nearest(map.view(), 0, 5).is_err());
}

#[test]
fn grid_places_pictures_and_draws_labels() {
    let red = RgbImage::from_pixel(60, 40, Rgb([255, 0, 0]));
    let blue = RgbImage::from_pixel(60, 40, Rgb([0, 0, 255]));
    let green = RgbImage::from_pixel(30, 20, Rgb([0, 255, 0]));
    let options = GridOptions { columns: 2, padding: 5, label_size: Some(12.0), ..GridOptions::default() };
    let cells = [("layer4 · gradcam", red), ("layer3", blue), ("small", green)];
    let sheet = grid_with(&cells, &options).unwrap();

    // Cells are 60 wide: "layer4 · gradcam" wraps to two lines, which sets every label's height.
    let label_h = 2 * (line_height(12.0) + 2);
    let cell_h = label_h + 4 + 40;
    assert_eq!(sheet.dimensions(), (5 + 2 * (60 + 5), 5 + 2 * (cell_h + 5)));
    let pic_top = 5 + label_h + 4;
    assert_eq!(sheet.get_pixel(5 + 30, pic_top + 20).0, [255, 0, 0]);
    assert_eq!(sheet.get_pixel(5 + 65 + 30, pic_top + 20).0, [0, 0, 255]);
    // The small picture is centred in its cell on the second row.
    let row2 = 5 + cell_h + 5;
    assert_eq!(sheet.get_pixel(5 + 30, row2 + label_h + 4 + 20).0, [0, 255, 0]);
    assert_eq!(sheet.get_pixel(5 + 2, row2 + label_h + 4 + 20).0, options.background);

    // Ink (anything darker than the background) in each label band, none in the padding column.
    let ink = |x0: u32, y0: u32, w: u32, h: u32| {
        (y0..y0 + h).any(|y| (x0..x0 + w).any(|x| sheet.get_pixel(x, y).0[0] < 200))
    };
    assert!(ink(5, 5, 60, label_h));
    assert!(ink(70, 5, 60, label_h));
    assert!(!ink(0, 0, 5, sheet.height()));

    assert!(grid::<&str>(&[], 3).is_err());
    assert!(grid(&[("x", RgbImage::new(4, 4))], 0).is_err());
}

#[test]
fn grid_colorbar_runs_from_low_to_high() {
    let cells = [("a", RgbImage::from_pixel(200, 50, Rgb([0, 0, 0])))];
    let plain = grid_with(&cells, &GridOptions::default()).unwrap();
    let options = GridOptions { colorbar: Some(Colormap::Jet), ..GridOptions::default() };
    let sheet = grid_with(&cells, &options).unwrap();
    assert_eq!(sheet.width(), plain.width());
    assert!(sheet.height() > plain.height() + 10, "room for the bar and its labels");
    // The bar's first row below the cells: its left end is the colormap's 0, its right end 255.
    let y = (plain.height()..sheet.height()).find(|&y| sheet.get_pixel(100, y).0 != [255; 3]).unwrap();
    let row: Vec<[u8; 3]> =
        (0..sheet.width()).map(|x| sheet.get_pixel(x, y).0).filter(|p| *p != [255; 3]).collect();
    assert_eq!(row.first(), Some(&Colormap::Jet.color(0)));
    assert_eq!(row.last(), Some(&Colormap::Jet.color(255)));
}

#[test]
fn text_is_drawn_where_asked_and_clipped() {
    let mut canvas = RgbImage::new(100, 30);
    draw_text(&mut canvas, 10, 5, "Grad", 14.0, [255, 255, 255]);
    let lit: Vec<(u32, u32)> =
        canvas.enumerate_pixels().filter(|(_, _, p)| p.0[0] > 0).map(|(x, y, _)| (x, y)).collect();
    assert!(!lit.is_empty());
    assert!(lit.iter().all(|&(x, y)| (10..10 + text_width("Grad", 14.0) + 1).contains(&x)
        && (5..5 + line_height(14.0)).contains(&y)));
    // Anti-aliased: partly covered pixels between background and text colour.
    assert!(canvas.pixels().any(|p| p.0[0] > 20 && p.0[0] < 235));
    // Different strings draw differently; off-canvas text does not panic.
    let mut other = RgbImage::new(100, 30);
    draw_text(&mut other, 10, 5, "Gred", 14.0, [255, 255, 255]);
    assert_ne!(canvas, other);
    draw_text(&mut canvas, -50, -3, "clipped", 30.0, [1, 2, 3]);
    draw_text(&mut canvas, 95, 25, "edge", 20.0, [1, 2, 3]);
}

#[test]
fn preprocess_validates_and_inverts() {
    let bad = Preprocess { height: 0, ..Preprocess::default() };
    assert!(matches!(bad.tensor(&photo(4, 4)), Err(VizError::Invalid(_))));
    let bad = Preprocess { std: [0.0, 1.0, 1.0], ..Preprocess::default() };
    assert!(bad.tensor(&photo(4, 4)).is_err());
    assert!(Preprocess::default().tensor(&RgbImage::new(0, 0)).is_err());

    // Same size: no resampling, so the picture comes back exactly.
    let p = Preprocess::new(30, 40);
    let image = photo(40, 30);
    let x: Array3<f32> = p.tensor(&image).unwrap();
    assert_eq!(p.picture(x.view()).unwrap(), image);
    // resized_f32 is the tensor before normalisation, channels last.
    let big = photo(90, 70);
    let rgb = Preprocess::new(30, 40).resized_f32(&big).unwrap();
    let x = Preprocess::new(30, 40).tensor(&big).unwrap();
    assert_eq!(rgb.dim(), (30, 40, 3));
    for ((y, xx, c), v) in rgb.indexed_iter() {
        assert_eq!((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c], x[[c, y, xx]]);
    }
    // Custom statistics are used: mean 0, std 1 leaves value / 255.
    let plain = Preprocess { mean: [0.0; 3], std: [1.0; 3], ..p.clone() };
    let y = plain.tensor(&image).unwrap();
    assert_eq!(y[[1, 3, 5]], image.get_pixel(5, 3).0[1] as f32 / 255.0);
}
