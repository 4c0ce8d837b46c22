//! `--npy-out FILE`: the final maps stacked `(N, H, W)` f32 (`(N, 3, H, W)` for a pixel-space
//! method). They are streamed to an unnamed file next to the target as images are done, and the
//! `.npy` is put in place at the end of a run that completed, in one step.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::error::CliError;
use crate::staged::Staged;

pub struct NpyOut {
    target: PathBuf,
    dir: PathBuf,
    raw: Staged,
    /// Each map's shape: `[H, W]`, or `[3, H, W]`.
    shape: Vec<usize>,
    count: usize,
    overwrite: bool,
}

impl NpyOut {
    /// Checks the target and opens the staging file; `inputs` are files it must never be.
    pub fn prepare(
        target: &Path,
        shape: Vec<usize>,
        overwrite: bool,
        inputs: &[PathBuf],
    ) -> Result<NpyOut, CliError> {
        let usage = |why: String| CliError::Usage(format!("--npy-out {}: {why}", target.display()));
        match std::fs::metadata(target) {
            Ok(meta) if meta.is_dir() => {
                return Err(usage("it is a folder; give a file name ending in .npy".into()))
            }
            Ok(meta) => {
                if let Some(input) = inputs.iter().find(|i| same_file(i, target, &meta)) {
                    return Err(usage(format!(
                        "that is the input {}, which it would overwrite; choose another file",
                        input.display()
                    )));
                }
                if !overwrite {
                    return Err(CliError::Exists {
                        path: target.to_path_buf(),
                        hint: "add --overwrite to replace it, or choose another --npy-out".into(),
                    });
                }
            }
            Err(_) => {}
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(usage(format!("{} is a file, not a folder", dir.display())));
        }
        if !dir.is_dir() {
            return Err(usage(format!("folder {} does not exist", dir.display())));
        }
        // Staging now, next to the target, finds an unwritable place before any work is done.
        let raw = Staged::new_in(&dir).map_err(CliError::write(target))?;
        Ok(NpyOut { target: target.to_path_buf(), dir, raw, shape, count: 0, overwrite })
    }

    /// Index the next map gets.
    pub fn next_index(&self) -> usize {
        self.count
    }

    /// Appends one map of the shape given to [`NpyOut::prepare`].
    pub fn push(&mut self, map: &ArrayD<f32>) -> Result<(), CliError> {
        if map.shape() != self.shape.as_slice() {
            return Err(CliError::Usage(format!(
                "--npy-out stacks maps of one size, {:?}, but got {:?}",
                self.shape,
                map.shape()
            )));
        }
        let bytes: Vec<u8> = map.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw.file().write_all(&bytes).map_err(CliError::write(&self.target))?;
        self.count += 1;
        Ok(())
    }

    /// Writes the `.npy` and puts it in place; `None` when no map was pushed.
    pub fn finish(mut self) -> Result<Option<(PathBuf, usize)>, CliError> {
        if self.count == 0 {
            return Ok(None);
        }
        let err = CliError::write(&self.target);
        let mut staged = Staged::new_in(&self.dir).map_err(CliError::write(&self.target))?;
        let per_map: usize = self.shape.iter().product();
        let result = (|| -> std::io::Result<()> {
            let raw = self.raw.file();
            raw.seek(SeekFrom::Start(0))?;
            let mut out = BufWriter::new(staged.file());
            out.write_all(&header(self.count, &self.shape))?;
            std::io::copy(&mut raw.take((self.count * per_map * 4) as u64), &mut out)?;
            out.flush()?;
            drop(out);
            staged.file().sync_all()
        })();
        result.map_err(err)?;
        let placed = if self.overwrite {
            staged.place_replacing(&self.target)
        } else {
            staged.place_new(&self.target)
        };
        placed.map_err(CliError::write(&self.target))?;
        Ok(Some((self.target, self.count)))
    }
}

/// A `.npy` version 1.0 header for a C-order float32 array `(n, *shape)`, padded so the data
/// starts at a multiple of 64 bytes, as numpy writes it.
fn header(n: usize, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = std::iter::once(n).chain(shape.iter().copied()).map(|d| d.to_string()).collect();
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims.join(", "));
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let len = (dict.len() + pad + 1) as u16;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

#[cfg(unix)]
fn same_file(a: &Path, _b: &Path, b_meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(a).is_ok_and(|m| m.dev() == b_meta.dev() && m.ino() == b_meta.ino())
}

#[cfg(not(unix))]
fn same_file(a: &Path, b: &Path, _: &std::fs::Metadata) -> bool {
    std::fs::canonicalize(a).ok().is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_what_numpy_writes() {
        let h = super::header(6, &[224, 224]);
        assert!(String::from_utf8_lossy(&h).contains("'shape': (6, 224, 224)"));
        assert!(String::from_utf8_lossy(&super::header(2, &[3, 8, 9])).contains("'shape': (2, 3, 8, 9)"));
        assert_eq!(h.len() % 64, 0);
        assert!(h.starts_with(b"\x93NUMPY\x01\x00"));
        assert_eq!(*h.last().unwrap(), b'\n');
    }
}
