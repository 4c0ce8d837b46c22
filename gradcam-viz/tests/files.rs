//! Reading and writing files: typed errors that name the path, atomic writes.

use std::path::{Path, PathBuf};

use gradcam_viz::{load_image, load_npy_batch, save_image, Preprocess, VizError};
use image::{Rgb, RgbImage};
use ndarray::{Array, Array3, Array4};

/// A fresh empty directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("gradcam-viz-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 77]))
}

#[test]
fn missing_image_is_an_open_error_naming_the_path() {
    let err = load_image("/definitely/not/here.png").unwrap_err();
    assert!(matches!(err, VizError::Open { ref path, .. } if path == Path::new("/definitely/not/here.png")));
    assert!(err.to_string().contains("/definitely/not/here.png"), "{err}");
}

#[test]
fn garbage_image_is_a_decode_error_naming_the_path() {
    let dir = Scratch::new("garbage");
    let path = dir.path("broken.png");
    std::fs::write(&path, b"this is not a picture").unwrap();
    let err = load_image(&path).unwrap_err();
    assert!(matches!(err, VizError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("broken.png"), "{err}");
    // Preprocess::load reports the same error.
    assert!(matches!(Preprocess::default().load(&path), Err(VizError::Decode { .. })));
}

#[test]
fn png_round_trips_exactly_and_jpeg_approximately() {
    let dir = Scratch::new("roundtrip");
    let picture = gradient(50, 30);
    save_image(dir.path("a.png"), &picture).unwrap();
    assert_eq!(load_image(dir.path("a.png")).unwrap(), picture);

    save_image(dir.path("a.JPG"), &picture).unwrap();
    let back = load_image(dir.path("a.JPG")).unwrap();
    assert_eq!(back.dimensions(), picture.dimensions());
    let worst = back.as_raw().iter().zip(picture.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst < 24, "JPEG differs by {worst}");
    // Only the two pictures: no temporary files left behind.
    assert_eq!(dir.entries(), vec!["a.JPG", "a.png"]);
}

#[test]
fn format_is_detected_by_content_not_extension() {
    let dir = Scratch::new("sniff");
    let picture = gradient(8, 8);
    save_image(dir.path("p.png"), &picture).unwrap();
    std::fs::rename(dir.path("p.png"), dir.path("p.jpg")).unwrap();
    assert_eq!(load_image(dir.path("p.jpg")).unwrap(), picture);
}

#[test]
fn failed_write_leaves_nothing_and_keeps_the_old_file() {
    let dir = Scratch::new("atomic");
    let target = dir.path("out.png");
    std::fs::write(&target, b"old contents").unwrap();
    // A 0 x 0 picture cannot be encoded: the error must leave the old file as it was.
    let err = save_image(&target, &RgbImage::new(0, 0)).unwrap_err();
    assert!(matches!(err, VizError::Encode { .. } | VizError::Write { .. }), "{err:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old contents");
    assert_eq!(dir.entries(), vec!["out.png"]);

    // Unknown extension: refused before anything is created.
    let err = save_image(dir.path("out.gif"), &gradient(4, 4)).unwrap_err();
    assert!(matches!(err, VizError::UnsupportedFormat { .. }), "{err:?}");
    // Missing directory: a write error naming the path.
    let missing = dir.path("no/such/dir/out.png");
    let err = save_image(&missing, &gradient(4, 4)).unwrap_err();
    assert!(matches!(err, VizError::Write { .. }) && err.to_string().contains("no/such/dir"), "{err}");
    assert_eq!(dir.entries(), vec!["out.png"]);

    // And a successful write replaces the old file.
    save_image(&target, &gradient(4, 4)).unwrap();
    assert_eq!(load_image(&target).unwrap(), gradient(4, 4));
}

#[test]
fn npy_batches_load_as_they_are() {
    let dir = Scratch::new("npy");
    let batch =
        Array::from_shape_fn((2, 3, 5, 7), |(n, c, y, x)| (n * 1000 + c * 100 + y * 10 + x) as f32 - 0.5);
    ndarray_npy::write_npy(dir.path("b.npy"), &batch).unwrap();
    assert_eq!(load_npy_batch(dir.path("b.npy")).unwrap(), batch);

    let single: Array3<f32> = Array::from_shape_fn((3, 4, 6), |(c, y, x)| (c + y * x) as f32);
    ndarray_npy::write_npy(dir.path("s.npy"), &single).unwrap();
    let loaded: Array4<f32> = load_npy_batch(dir.path("s.npy")).unwrap();
    assert_eq!(loaded.dim(), (1, 3, 4, 6));
    assert_eq!(loaded.index_axis(ndarray::Axis(0), 0), single);

    let wrong = Array4::<f32>::zeros((1, 4, 5, 5));
    ndarray_npy::write_npy(dir.path("w.npy"), &wrong).unwrap();
    let err = load_npy_batch(dir.path("w.npy")).unwrap_err();
    assert!(matches!(err, VizError::Npy { .. }) && err.to_string().contains("w.npy"), "{err}");

    let doubles = Array4::<f64>::zeros((1, 3, 5, 5));
    ndarray_npy::write_npy(dir.path("d.npy"), &doubles).unwrap();
    assert!(matches!(load_npy_batch(dir.path("d.npy")), Err(VizError::Npy { .. })));

    assert!(matches!(load_npy_batch(dir.path("absent.npy")), Err(VizError::Open { .. })));
}

#[test]
fn exif_orientation_is_applied() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let upright = load_image(dir.join("exif_upright.png")).unwrap();
    let loaded = load_image(dir.join("exif_rotated.jpg")).unwrap();
    // Stored 24 x 16; shown (and loaded) 16 x 24, like PIL's ImageOps.exif_transpose.
    assert_eq!(loaded.dimensions(), (16, 24));
    assert_eq!(loaded.dimensions(), upright.dimensions());
    let worst = loaded.as_raw().iter().zip(upright.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 2, "decoders differ by {worst}");
}

/// A `.npy` file with header dictionary `dict` and `data` after it.
fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = (64 - (10 + dict.len() + 1) % 64) % 64;
    bytes.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn npy_headers_are_checked_before_anything_is_allocated() {
    let dir = Scratch::new("npy-hostile");
    // 192 bytes claiming 60 GB of data.
    let huge =
        npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 224, 224), }", &[0; 64]);
    assert_eq!(huge.len(), 192);
    std::fs::write(dir.path("huge.npy"), &huge).unwrap();
    let err = gradcam_viz::NpyBatch::open(dir.path("huge.npy")).unwrap_err().to_string();
    assert!(err.contains("declares shape (100000, 3, 224, 224)") && err.contains("holds 192 bytes"), "{err}");
    // A shape whose byte count overflows is refused the same way.
    let overflow = npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999, 3, 99999, 99999), }",
        &[],
    );
    std::fs::write(dir.path("overflow.npy"), overflow).unwrap();
    let err = load_npy_batch(dir.path("overflow.npy")).unwrap_err().to_string();
    assert!(err.contains("more than 2^64"), "{err}");
    std::fs::write(dir.path("short.npy"), b"\x93NUMPY").unwrap();
    assert!(matches!(load_npy_batch(dir.path("short.npy")), Err(VizError::Npy { .. })));
    let fortran = npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 3, 1, 1), }", &[0; 12]);
    std::fs::write(dir.path("f.npy"), fortran).unwrap();
    assert!(load_npy_batch(dir.path("f.npy")).unwrap_err().to_string().contains("Fortran order"));
    // Big-endian float32 is read correctly, image by image.
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(
        dir.path("be.npy"),
        npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3, 1, 1), }", &data),
    )
    .unwrap();
    let batch = gradcam_viz::NpyBatch::open(dir.path("be.npy")).unwrap();
    assert_eq!(batch.read(1).unwrap().iter().copied().collect::<Vec<_>>(), [4.0, 5.0, 6.0]);
}

#[test]
fn image_size_is_checked_from_the_header() {
    let dir = Scratch::new("too-large");
    image::RgbImage::new(400, 300).save(dir.path("big.png")).unwrap();
    let limits = gradcam_viz::DecodeOptions { max_pixels: 100_000, ..Default::default() };
    let err = gradcam_viz::load_image_with(dir.path("big.png"), &limits).unwrap_err();
    assert!(matches!(err, VizError::TooLarge { width: 400, height: 300, .. }), "{err}");
    assert!(err.to_string().contains("--max-pixels"), "{err}");
}

#[test]
fn large_jpegs_decode_at_reduced_size() {
    let dir = Scratch::new("jpeg-draft");
    let photo = image::RgbImage::from_fn(1600, 1200, |x, y| image::Rgb([(x / 7) as u8, (y / 5) as u8, 90]));
    photo.save(dir.path("p.jpg")).unwrap();
    let reduced = gradcam_viz::DecodeOptions { reduce_to_long_side: Some(400), ..Default::default() };
    let small = gradcam_viz::load_image_with(dir.path("p.jpg"), &reduced).unwrap();
    assert_eq!(small.dimensions(), (400, 300), "1/4 scale is the smallest with a long side >= 400");
    let full = load_image(dir.path("p.jpg")).unwrap();
    assert_eq!(full.dimensions(), (1600, 1200));
    // The reduced decode shows the same picture.
    let (a, b) = (small.get_pixel(200, 150).0, full.get_pixel(800, 600).0);
    assert!(a.iter().zip(b).all(|(x, y)| (*x as i32 - y as i32).abs() < 12), "{a:?} vs {b:?}");
    let not_needed = gradcam_viz::DecodeOptions { reduce_to_long_side: Some(1000), ..Default::default() };
    assert_eq!(
        gradcam_viz::load_image_with(dir.path("p.jpg"), &not_needed).unwrap().dimensions(),
        (1600, 1200)
    );
}
