//! Hostile inputs get a clear error before any large allocation, and misleading messages are
//! gone.

use super::*;

/// A 192-byte `.npy` declaring `(100000, 3, 224, 224)` aborted with a 60 GB allocation.
#[test]
fn an_npy_header_is_checked_against_the_file_length() {
    let dir = workdir("hostile-npy");
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 224, 224), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 128 - 10 - dict.len() - 1;
    bytes.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    bytes.extend_from_slice(&[0u8; 64]);
    assert_eq!(bytes.len(), 192);
    std::fs::write(dir.join("huge.npy"), &bytes).unwrap();
    let out = gradcam(&dir, &["explain", "huge.npy"]);
    assert_failure(&out, 1, "declares shape (100000, 3, 224, 224)", &dir, &["huge.npy"]);
    assert!(stderr(&out).contains("holds 192 bytes"), "{}", stderr(&out));
}

/// `--size 100000x100000` aborted.
#[test]
fn the_input_size_is_bounded() {
    let dir = workdir("hostile-size");
    let out = gradcam(&dir, &["explain", &chelsea(), "--size", "100000x100000"]);
    assert_failure(&out, 2, "too large: each side at most 4096", &dir, &[]);
}

/// A 70-byte PNG claiming 60000 x 60000 pixels allocated 10.8 GB before reading any data.
#[test]
fn an_image_header_is_checked_before_decoding() {
    let dir = workdir("hostile-png");
    std::fs::write(dir.join("bomb.png"), tiny_png_claiming(60000, 60000)).unwrap();
    let out = gradcam(&dir, &["explain", "bomb.png"]);
    assert_failure(&out, 1, "bomb.png is 60000x60000 pixels", &dir, &["bomb.png"]);
    assert!(stderr(&out).contains("--max-pixels"), "says what to do: {}", stderr(&out));
    // The limit is the user's to set.
    let out = gradcam(&dir, &["explain", &chelsea(), "--max-pixels", "1000"]);
    assert_failure(&out, 1, "more than the limit of 0.0 MP", &dir, &["bomb.png"]);
}

/// A PNG file of about 70 bytes: the signature, an IHDR chunk with the given size, an empty IDAT
/// and IEND.
fn tiny_png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// NaN or infinite logits gave "tench NaN%" and blank maps: now an error naming the image, and
/// the other images of the batch are still explained.
#[cfg(feature = "candle")]
#[test]
fn non_finite_logits_fail_that_image_alone() {
    let dir = workdir("hostile-nan");
    let mut input =
        Array4::from_shape_fn((2, 3, 64, 64), |(_, c, y, x)| ((c + y * x) % 9) as f32 / 5.0 - 0.8);
    // Finite, but far past what f32 arithmetic in the network survives.
    input.index_axis_mut(ndarray::Axis(0), 1).fill(3.0e38);
    ndarray_npy::write_npy(dir.join("batch.npy"), &input).unwrap();
    // ResNet's ReLUs pass infinities on (Lite0's ReLU6 would clamp them).
    let model = tests::require("resnet18.safetensors").display().to_string();
    let out = gradcam(&dir, &["explain", "batch.npy", "--json", "--model", &model, "--arch", "resnet18"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("batch.npy [1]: the model's outputs are NaN or infinite"),
        "{}",
        stderr(&out)
    );
    let summary = json(&out);
    assert_eq!(summary["images"].as_array().unwrap().len(), 1);
    assert_eq!(summary["images"][0]["name"], "batch.0");
    assert_eq!(summary["failed"][0]["name"], "batch.1");
    let p = summary["images"][0]["predictions"][0]["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "the good image's predictions are numbers: {p}");
}

/// A map that is all zero gets a warning.
#[cfg(feature = "candle")]
#[test]
fn an_all_zero_map_gets_a_warning() {
    let dir = workdir("hostile-zero");
    // 32 x 32 pixels leave Lite0's last map one cell: min-max scaling makes it 0.
    let input = Array4::from_shape_fn((1, 3, 32, 32), |(_, c, y, x)| ((c + y + x) % 5) as f32 / 3.0 - 0.5);
    ndarray_npy::write_npy(dir.join("small.npy"), &input).unwrap();
    let out = gradcam(&dir, &["explain", "small.npy"]);
    assert_success(&out);
    assert!(stderr(&out).contains("warning: small: the gradcam map of class"), "{}", stderr(&out));
    assert!(stderr(&out).contains("is all zero"), "{}", stderr(&out));
}

/// "not found" for a FIFO, a device or a folder given as a file; "File exists (os error 17)"
/// when `--out` is a file.
#[test]
fn messages_say_what_is_wrong() {
    let dir = workdir("hostile-messages");
    #[cfg(unix)]
    {
        let fifo = dir.join("pipe.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let out = gradcam(&dir, &["explain", "pipe.png"]);
        assert_failure(
            &out,
            1,
            "input pipe.png is a FIFO (named pipe), not a regular file",
            &dir,
            &["pipe.png"],
        );
        let out = gradcam(&dir, &["explain", "/dev/null"]);
        assert_failure(&out, 1, "input /dev/null is a device", &dir, &["pipe.png"]);
        std::fs::remove_file(&fifo).unwrap();
    }
    std::fs::create_dir(dir.join("folder.safetensors")).unwrap();
    let out = gradcam(&dir, &["layers", "--model", "folder.safetensors", "--arch", "resnet18"]);
    assert_failure(&out, 1, "model folder.safetensors is a folder, not a regular file", &dir, &[]);
    std::fs::write(dir.join("taken"), b"a file").unwrap();
    let out = gradcam(&dir, &["explain", &chelsea(), "--out", "taken"]);
    assert_failure(&out, 1, "--out taken is a file, not a folder", &dir, &["taken"]);
}
