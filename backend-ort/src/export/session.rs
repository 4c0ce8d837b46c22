//! [`ExplainerSession`]: a written explainer file on ONNX Runtime, fed and read by name, as any
//! other ONNX runtime would (nothing of the export is used but the file).

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array3, ArrayView4};
use ort::session::Session;
use ort::value::Tensor;

use super::probe::environment;
use super::{ExportError, CLASS, INPUT, LOGITS};
use crate::OrtBackendError;

/// An explainer file loaded in ONNX Runtime (CPU).
pub struct ExplainerSession {
    session: Session,
    path: PathBuf,
    /// The `cam_<method>` outputs, in the file's order.
    maps: Vec<String>,
}

/// One run of an explainer.
#[derive(Clone, Debug)]
pub struct ExplainerOutputs {
    /// `(N, K)`.
    pub logits: Array2<f32>,
    /// `(output name, (N, H, W) maps)` per `cam_<method>` output, in the file's order.
    pub maps: Vec<(String, Array3<f32>)>,
}

impl ExplainerOutputs {
    /// The maps of output `name` (`cam_gradcam`, ...).
    pub fn map(&self, name: &str) -> Option<&Array3<f32>> {
        self.maps.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }
}

/// Any ONNX file in an ONNX Runtime session with its defaults but `threads` intra-op threads (0:
/// ONNX Runtime's default): how an explainer is served, and the baseline its cost is measured
/// against (the source model in the same kind of session).
pub fn plain_session(path: &Path, threads: usize) -> Result<Session, ExportError> {
    let mut builder = Session::builder(environment()?).map_err(OrtBackendError::ort("create a session"))?;
    if threads > 0 {
        builder =
            builder.with_intra_threads(threads).map_err(OrtBackendError::ort("set the number of threads"))?;
    }
    Ok(builder.commit_from_file(path).map_err(OrtBackendError::ort(format!("load {}", path.display())))?)
}

impl ExplainerSession {
    /// Loads an explainer (its `.data` file is read from its folder); `threads` intra-op
    /// threads (0: ONNX Runtime's default).
    pub fn load(path: &Path, threads: usize) -> Result<ExplainerSession, ExportError> {
        let session = plain_session(path, threads)?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if names != [INPUT, CLASS] {
            return Err(ExportError::Signature(format!(
                "{} takes inputs {names:?}, not an explainer's [\"{INPUT}\", \"{CLASS}\"]",
                path.display()
            )));
        }
        let maps = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .filter(|n| n.starts_with("cam_"))
            .collect();
        Ok(ExplainerSession { session, path: path.to_path_buf(), maps })
    }

    /// The `cam_<method>` output names.
    pub fn map_names(&self) -> &[String] {
        &self.maps
    }

    /// Runs the explainer on `input` `(N, C, H, W)` for `classes` (one per image, −1 = top-1).
    pub fn run(&mut self, input: ArrayView4<f32>, classes: &[i64]) -> Result<ExplainerOutputs, ExportError> {
        let shape: Vec<i64> = input.shape().iter().map(|&d| d as i64).collect();
        let image = Tensor::from_array((shape, input.iter().copied().collect::<Vec<f32>>()))
            .map_err(OrtBackendError::ort("make the input"))?;
        let class = Tensor::from_array(Array1::from(classes.to_vec()))
            .map_err(OrtBackendError::ort("make the classes"))?;
        let path = self.path.display().to_string();
        let outputs = self
            .session
            .run(ort::inputs![INPUT => image, CLASS => class])
            .map_err(OrtBackendError::ort(format!("run {path}")))?;
        let read = |name: &str| -> Result<ndarray::ArrayD<f32>, ExportError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| ExportError::Signature(format!("{path} has no output `{name}`")))?;
            Ok(value
                .try_extract_array::<f32>()
                .map_err(OrtBackendError::ort(format!("read `{name}`")))?
                .to_owned())
        };
        let shape_err = |name: &str| {
            let name = name.to_string();
            move |e: ndarray::ShapeError| ExportError::Signature(format!("output `{name}`: {e}"))
        };
        let logits = read(LOGITS)?.into_dimensionality().map_err(shape_err(LOGITS))?;
        let mut maps = Vec::with_capacity(self.maps.len());
        for name in &self.maps {
            maps.push((name.clone(), read(name)?.into_dimensionality().map_err(shape_err(name))?));
        }
        Ok(ExplainerOutputs { logits, maps })
    }
}
