//! Writing the explainer: the model file and, when the source keeps weights in external data,
//! the explainer's own `<file>.data` next to it (or references to the source's), each written to
//! a temporary file in the destination folder and renamed into place once complete, so that a
//! failed export leaves no partial file and every pre-existing file untouched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{Message, ModelProto, StringStringEntryProto, TensorProto};
use tempfile::NamedTempFile;

use super::{ExportError, Weights};

/// Tensors of at least this many bytes start at a multiple of [`PAGE`] in the data file (as
/// `onnx.save` aligns them), so that ONNX Runtime can map them.
const ALIGN_FROM: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// protobuf's hard limit on one message.
const PROTOBUF_LIMIT: u64 = i32::MAX as u64;

/// What was written.
pub(crate) struct Written {
    pub model: PathBuf,
    /// The explainer's own external-data file, if it has one.
    pub data: Option<PathBuf>,
}

/// Checks `out` before any work: a file name in an existing folder, not the source model itself.
pub(crate) fn check_destination(out: &Path, source: &Path) -> Result<(), ExportError> {
    let bad = |reason: &str| ExportError::Destination { path: out.to_path_buf(), reason: reason.into() };
    if out.file_name().is_none() || out.is_dir() {
        return Err(bad("it is a folder; give a file name such as explainer.onnx"));
    }
    let dir = parent(out);
    if !dir.is_dir() {
        return Err(bad("its folder does not exist"));
    }
    if same_file(out, source) {
        return Err(bad("it is the source model; the explainer must go to another file"));
    }
    Ok(())
}

/// Writes `model` to `out`. External weights (locations relative to `source_dir`) are copied
/// into `<out>.data` ([`Weights::Copy`]) or referenced where they are ([`Weights::Reference`]).
pub(crate) fn write(
    mut model: ModelProto,
    source_dir: &Path,
    out: &Path,
    weights: Weights,
) -> Result<Written, ExportError> {
    let dir = parent(out).to_path_buf();
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let external: Vec<usize> = model
        .graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| t.data_location.value() == DataLocation::EXTERNAL as i32)
        .map(|(i, _)| i)
        .collect();
    let io = |path: &Path, what: &str| {
        let (path, what) = (path.to_path_buf(), what.to_string());
        move |source: std::io::Error| ExportError::Io { path, what, source }
    };

    let mut data = None;
    if !external.is_empty() {
        match weights {
            Weights::Copy => {
                let data_name = format!("{file_name}.data");
                let data_path = dir.join(&data_name);
                let sources: Vec<PathBuf> = external
                    .iter()
                    .filter_map(|&i| location(&model.graph.initializer[i]))
                    .map(|l| source_dir.join(l))
                    .collect();
                if sources.iter().any(|s| same_file(s, &data_path)) {
                    return Err(ExportError::Destination {
                        path: out.to_path_buf(),
                        reason: format!(
                            "its weights file {} would overwrite the source model's; choose another name",
                            data_path.display()
                        ),
                    });
                }
                let tmp = temp_in(&dir, &data_name).map_err(io(&dir, "create a temporary file in"))?;
                copy_external(&mut model, &external, source_dir, &data_name, &tmp)?;
                data = Some((tmp, data_path));
            }
            Weights::Reference => {
                for &i in &external {
                    let t = &mut model.graph.mut_or_insert_default().initializer[i];
                    let Some(loc) = location(t) else { continue };
                    let relative =
                        relative_path(&dir, &source_dir.join(&loc)).map_err(io(&dir, "resolve"))?;
                    if relative.components().next() == Some(Component::ParentDir) {
                        return Err(ExportError::Destination {
                            path: out.to_path_buf(),
                            reason: format!(
                                "ONNX Runtime reads external weights only from the model's folder or below, and \
                                 the source's are in {}: write the explainer there, or copy the weights",
                                source_dir.display()
                            ),
                        });
                    }
                    set_entry(t, "location", &relative.to_string_lossy());
                }
            }
        }
    }

    let size = model.compute_size();
    if size > PROTOBUF_LIMIT {
        return Err(ExportError::TooLarge { bytes: size });
    }
    let bytes =
        model.write_to_bytes().map_err(|e| ExportError::Internal(format!("serialise the model: {e}")))?;
    let tmp = temp_in(&dir, &file_name).map_err(io(&dir, "create a temporary file in"))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        w.write_all(&bytes).and_then(|()| w.flush()).map_err(io(tmp.path(), "write"))?;
    }
    tmp.as_file().sync_all().map_err(io(tmp.path(), "flush"))?;
    // The weights first: a model file in place always finds its data complete.
    let data_path = match data {
        Some((data_tmp, data_path)) => {
            data_tmp.as_file().sync_all().map_err(io(data_tmp.path(), "flush"))?;
            persist(data_tmp, &data_path)?;
            Some(data_path)
        }
        None => None,
    };
    persist(tmp, out)?;
    Ok(Written { model: out.to_path_buf(), data: data_path })
}

/// Copies every external tensor's bytes into `tmp` (in initializer order, large ones aligned)
/// and points the tensors at `data_name`.
fn copy_external(
    model: &mut ModelProto,
    external: &[usize],
    source_dir: &Path,
    data_name: &str,
    tmp: &NamedTempFile,
) -> Result<(), ExportError> {
    let mut files: HashMap<PathBuf, File> = HashMap::new();
    let mut w = BufWriter::new(tmp.as_file());
    let mut offset = 0u64;
    for &i in external {
        let t = &mut model.graph.mut_or_insert_default().initializer[i];
        let Some(loc) = location(t) else {
            return Err(ExportError::Internal(format!("external tensor `{}` has no location", t.name)));
        };
        let path = source_dir.join(&loc);
        let start = entry(t, "offset").and_then(|v| v.parse().ok()).unwrap_or(0u64);
        let length = match entry(t, "length").and_then(|v| v.parse().ok()) {
            Some(n) => n,
            None => byte_len(t).ok_or_else(|| {
                ExportError::Internal(format!("external tensor `{}` has no length", t.name))
            })?,
        };
        let read_err =
            |source| ExportError::Io { path: path.clone(), what: "read weights from".into(), source };
        let file = match files.get_mut(&path) {
            Some(f) => f,
            None => {
                let f = File::open(&path).map_err(read_err)?;
                files.entry(path.clone()).or_insert(f)
            }
        };
        if length >= ALIGN_FROM && !offset.is_multiple_of(PAGE) {
            let pad = PAGE - offset % PAGE;
            w.write_all(&vec![0u8; pad as usize]).map_err(|source| ExportError::Io {
                path: tmp.path().into(),
                what: "write".into(),
                source,
            })?;
            offset += pad;
        }
        file.seek(SeekFrom::Start(start)).map_err(read_err)?;
        let copied = std::io::copy(&mut file.take(length), &mut w).map_err(|source| ExportError::Io {
            path: tmp.path().into(),
            what: "write".into(),
            source,
        })?;
        if copied != length {
            return Err(ExportError::Io {
                path: path.clone(),
                what: "read weights from".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("tensor `{}` needs bytes {start}..{} of it", t.name, start + length),
                ),
            });
        }
        t.external_data.retain(|e| matches!(e.key.as_str(), "location" | "offset" | "length"));
        set_entry(t, "location", data_name);
        set_entry(t, "offset", &offset.to_string());
        set_entry(t, "length", &length.to_string());
        offset += length;
    }
    w.flush().map_err(|source| ExportError::Io { path: tmp.path().into(), what: "write".into(), source })
}

fn entry(t: &TensorProto, key: &str) -> Option<String> {
    t.external_data.iter().find(|e| e.key == key).map(|e| e.value.clone())
}

fn location(t: &TensorProto) -> Option<String> {
    entry(t, "location").filter(|l| !l.is_empty())
}

fn set_entry(t: &mut TensorProto, key: &str, value: &str) {
    match t.external_data.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value.into(),
        None => {
            let mut e = StringStringEntryProto::new();
            e.key = key.into();
            e.value = value.into();
            t.external_data.push(e);
        }
    }
}

/// The size of a tensor's data from its dims and element type (when `length` is absent).
fn byte_len(t: &TensorProto) -> Option<u64> {
    use onnx_protobuf::tensor_proto::DataType as D;
    use protobuf::Enum;
    let element = match D::from_i32(t.data_type)? {
        D::FLOAT | D::INT32 | D::UINT32 => 4,
        D::DOUBLE | D::INT64 | D::UINT64 => 8,
        D::FLOAT16 | D::BFLOAT16 | D::INT16 | D::UINT16 => 2,
        D::INT8 | D::UINT8 | D::BOOL => 1,
        _ => return None,
    };
    let count: i64 = t.dims.iter().product();
    u64::try_from(count).ok().map(|c| c * element)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file in `dir` that is deleted unless persisted (also on errors and panics).
fn temp_in(dir: &Path, name: &str) -> std::io::Result<NamedTempFile> {
    tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)
}

fn persist(tmp: NamedTempFile, path: &Path) -> Result<(), ExportError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Temporary files are private (0600); the explainer is an ordinary file.
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map(|_| ()).map_err(|e| ExportError::Io {
        path: path.to_path_buf(),
        what: "move the finished file into place at".into(),
        source: e.error,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `target` relative to folder `from` (both resolved), e.g. `../models/resnet.onnx.data`.
fn relative_path(from: &Path, target: &Path) -> std::io::Result<PathBuf> {
    let (from, target) = (from.canonicalize()?, target.canonicalize()?);
    let (a, b): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), target.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c.as_os_str());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_out_and_down() {
        let root = tempfile::tempdir().expect("tempdir");
        let (a, b) = (root.path().join("a/x"), root.path().join("b"));
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(b.join("w.data"), b"1").expect("write");
        assert_eq!(relative_path(&a, &b.join("w.data")).expect("relative"), Path::new("../../b/w.data"));
        assert_eq!(relative_path(&b, &b.join("w.data")).expect("relative"), Path::new("w.data"));
    }
}
