//! `.npy` model inputs read one image at a time, their header checked against the file's length
//! before anything the header declares is allocated.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::Array3;

use crate::VizError;

/// Longest header accepted (numpy writes under 200 bytes for any shape this reads).
const MAX_HEADER: usize = 1 << 16;

/// A float32 `.npy` batch `(N, 3, H, W)` (or `(3, H, W)`, a batch of one) on disk. Opening it
/// reads only the header; [`NpyBatch::read`] reads one image.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("gradcam-viz-npy-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("x.npy");
/// ndarray_npy::write_npy(&path, &ndarray::Array4::<f32>::ones((2, 3, 4, 5))).unwrap();
/// let batch = gradcam_viz::NpyBatch::open(&path).unwrap();
/// assert_eq!((batch.len(), batch.image_hw()), (2, (4, 5)));
/// assert_eq!(batch.read(1).unwrap().dim(), (3, 4, 5));
/// // A header that promises more data than the file holds is refused before reading anything.
/// let mut bytes = std::fs::read(&path).unwrap();
/// bytes.truncate(bytes.len() - 4);
/// std::fs::write(&path, bytes).unwrap();
/// assert!(gradcam_viz::NpyBatch::open(&path).unwrap_err().to_string().contains("holds"));
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct NpyBatch {
    path: PathBuf,
    data_offset: u64,
    shape: [usize; 4],
    big_endian: bool,
    declared: Vec<usize>,
}

impl NpyBatch {
    /// Reads and checks the header: float32, C order, shape `(N, 3, H, W)` or `(3, H, W)` with
    /// N, H, W > 0, and exactly as many data bytes in the file as the shape needs.
    pub fn open(path: impl AsRef<Path>) -> Result<NpyBatch, VizError> {
        let path = path.as_ref();
        let bad = |message: String| VizError::Npy { path: path.to_path_buf(), message };
        let open = |source| VizError::Open { path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(open)?;
        let file_len = file.metadata().map_err(open)?.len();
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic).map_err(|_| bad("it is not a .npy file (too short)".into()))?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(bad("it is not a .npy file (no \\x93NUMPY magic)".into()));
        }
        let header_len = match magic[6] {
            1 => {
                let mut n = [0u8; 2];
                file.read_exact(&mut n).map_err(|_| bad("truncated header".into()))?;
                u16::from_le_bytes(n) as usize
            }
            2 | 3 => {
                let mut n = [0u8; 4];
                file.read_exact(&mut n).map_err(|_| bad("truncated header".into()))?;
                u32::from_le_bytes(n) as usize
            }
            v => return Err(bad(format!(".npy format version {v} is not supported (1, 2 or 3)"))),
        };
        if header_len > MAX_HEADER || header_len as u64 > file_len {
            return Err(bad(format!("its header claims {header_len} bytes: corrupt file")));
        }
        let mut header = vec![0u8; header_len];
        file.read_exact(&mut header).map_err(|_| bad("truncated header".into()))?;
        let header = String::from_utf8_lossy(&header);
        let data_offset = file.stream_position().map_err(open)?;

        let descr = quoted_value(&header, "descr").ok_or_else(|| bad("its header has no dtype".into()))?;
        let big_endian = match descr.as_str() {
            "<f4" | "|f4" | "=f4" => false,
            ">f4" => true,
            other => {
                return Err(bad(format!(
                    "dtype {other} is not float32: save it with `x.astype(numpy.float32)` (expected an (N, 3, H, W) float32 array)"
                )))
            }
        };
        if value_after(&header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(bad("it is in Fortran order: save it with numpy.ascontiguousarray(x)".into()));
        }
        let declared = shape(&header).ok_or_else(|| bad("its header has no readable shape".into()))?;
        let shape = match declared.as_slice() {
            [c, h, w] => [1, *c, *h, *w],
            [n, c, h, w] => [*n, *c, *h, *w],
            _ => return Err(bad(format!("shape {} is not (N, 3, H, W) or (3, H, W)", tuple(&declared)))),
        };
        if shape[1] != 3 || shape.contains(&0) {
            return Err(bad(format!("shape {} is not (N, 3, H, W) with N, H, W > 0", tuple(&declared))));
        }
        let need = shape
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|bytes| bytes.checked_add(data_offset));
        if need != Some(file_len) {
            let need = need.map_or_else(|| "more than 2^64".into(), |n| format!("{n}"));
            return Err(bad(format!(
                "its header declares shape {} ({need} bytes with the header), but the file holds {file_len} bytes: it is truncated or corrupt",
                tuple(&declared)
            )));
        }
        Ok(NpyBatch { path: path.to_path_buf(), data_offset, shape, big_endian, declared })
    }

    /// Number of images N.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the batch holds no image (never true for an opened batch).
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// `(H, W)` of every image.
    pub fn image_hw(&self) -> (usize, usize) {
        (self.shape[2], self.shape[3])
    }

    /// The shape the header declares, as numpy prints it.
    pub fn declared_shape(&self) -> &[usize] {
        &self.declared
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Image `index` as `(3, H, W)`, read from disk.
    pub fn read(&self, index: usize) -> Result<Array3<f32>, VizError> {
        let [n, c, h, w] = self.shape;
        let bad = |message: String| VizError::Npy { path: self.path.clone(), message };
        if index >= n {
            return Err(bad(format!("image {index} of a batch of {n}")));
        }
        let open = |source| VizError::Open { path: self.path.clone(), source };
        let count = c * h * w;
        let mut file = File::open(&self.path).map_err(open)?;
        file.seek(SeekFrom::Start(self.data_offset + (index * count * 4) as u64)).map_err(open)?;
        let mut bytes = vec![0u8; count * 4];
        file.read_exact(&mut bytes).map_err(|e| bad(format!("cannot read image {index}: {e}")))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if self.big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect();
        Array3::from_shape_vec((c, h, w), values).map_err(|e| bad(e.to_string()))
    }
}

/// `'key': 'value'` in a numpy header dict.
fn quoted_value(header: &str, key: &str) -> Option<String> {
    let rest = value_after(header, key)?;
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &rest[1..];
    Some(rest[..rest.find(quote)?].to_string())
}

/// The text after `'key':` (spaces skipped).
fn value_after<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

/// `'shape': (2, 3, 64, 96)` → `[2, 3, 64, 96]`.
fn shape(header: &str) -> Option<Vec<usize>> {
    let rest = value_after(header, "shape")?.strip_prefix('(')?;
    let inner = &rest[..rest.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

fn tuple(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_parse() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 64, 96), }";
        assert_eq!(quoted_value(h, "descr").as_deref(), Some("<f4"));
        assert_eq!(shape(h), Some(vec![2, 3, 64, 96]));
        assert_eq!(value_after(h, "fortran_order").map(|v| v.starts_with("False")), Some(true));
        assert_eq!(shape("{'shape': (5,), }"), Some(vec![5]));
        assert_eq!(shape("{'shape': (x, 3), }"), None);
    }
}
