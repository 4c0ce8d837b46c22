//! Lays a saved CAM over a photo with every colormap and writes the pictures plus a labelled
//! comparison sheet:
//!
//! ```text
//! cargo run -p gradcam-viz --example overlay -- PHOTO CAM.npy OUT_DIR
//! ```
//!
//! `CAM.npy` is an f32 `(H, W)` map in `[0, 1]` (or `(B, H, W)`, first map used), for instance
//! what pytorch-grad-cam's `cam(...)[0]` or `gradcam --npy-out` returns, at any resolution.

use std::path::PathBuf;

use gradcam_viz::{grid, load_image, origin_view, overlay, save_image, Colormap, DEFAULT_IMAGE_WEIGHT};
use ndarray::{Array2, ArrayD, Axis, Ix2};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [photo, cam, out] = args.as_slice() else {
        return Err("usage: overlay PHOTO CAM.npy OUT_DIR".into());
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let photo = load_image(photo)?;
    let mut cam: ArrayD<f32> = ndarray_npy::read_npy(cam)?;
    while cam.ndim() > 2 {
        cam = cam.index_axis_move(Axis(0), 0);
    }
    let cam: Array2<f32> = cam.into_dimensionality::<Ix2>()?;

    let mut cells = vec![("photo".to_string(), photo.clone())];
    for cmap in Colormap::ALL {
        let picture = overlay(&photo, cam.view(), cmap, DEFAULT_IMAGE_WEIGHT)?;
        save_image(out.join(format!("overlay_{cmap}.png")), &picture)?;
        cells.push((format!("overlay · {cmap}"), picture));
    }
    // A coarse 7 x 7 version of the map, to show the blocky activation-resolution view.
    let (h, w) = cam.dim();
    let coarse = Array2::from_shape_fn((7, 7), |(y, x)| cam[[(2 * y + 1) * h / 14, (2 * x + 1) * w / 14]]);
    let blocks = origin_view(coarse.view(), photo.height() as usize, photo.width() as usize, Colormap::Jet)?;
    save_image(out.join("origin_jet.png"), &blocks)?;
    cells.push(("origin · 7x7 · jet".to_string(), blocks));
    save_image(out.join("grid.png"), &grid(&cells, 4)?)?;
    println!("wrote {} pictures to {}", Colormap::ALL.len() + 2, out.display());
    Ok(())
}
