//! Every way a compiled-in backend opens a breadth model: candle (the safetensors file, for the
//! architectures it ships), tch (the traced TorchScript), ort (each ONNX export).

use gradcam_core::CamModel;

use crate::manifest::Case;

/// The columns of the failure matrix: a backend and the file it reads, then the explainers
/// `gradcam export` makes of each exporter's file (see `export.rs`).
/// A fixed-batch file comes before the dynamic one of the same exporter: the first column of a
/// backend that opens a model also runs its ScoreCAM and AblationCAM (see `main.rs`), and a fixed
/// batch is where those differ.
pub const COLUMNS: [Column; 8] = [
    Column { label: "candle", kind: "safetensors" },
    Column { label: "tch traced", kind: "traced" },
    Column { label: "ort legacy fixed", kind: "legacy_fixed" },
    Column { label: "ort legacy dyn", kind: "legacy_dynamic" },
    Column { label: "ort dynamo fixed", kind: "dynamo_fixed" },
    Column { label: "ort dynamo dyn", kind: "dynamo_dynamic" },
    Column { label: "export legacy", kind: "export_legacy" },
    Column { label: "export dynamo", kind: "export_dynamo" },
];

/// One backend reading one kind of file.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// What the matrix calls it.
    pub label: &'static str,
    /// The manifest's `files` key of what it reads, or `export_<exporter>` for an export column.
    pub kind: &'static str,
}

/// What a column holds for one model.
pub enum Slot {
    /// The backend is compiled in and the file exists: its loaded model, or the load's error.
    Open(Result<Box<dyn CamModel>, String>),
    /// torch could not export the file (the exporter's error).
    Skipped(String),
    /// Not applicable: the backend is not compiled in, the model has no file of this kind (the
    /// other batch mode), or candle does not ship the architecture.
    Absent,
}

impl Column {
    /// The exporter (`legacy`, `dynamo`) whose file an export column exports; `None` for a
    /// backend column.
    pub fn exporter(self) -> Option<&'static str> {
        self.kind.strip_prefix("export_")
    }

    /// The backend this column loads with: `candle`, `tch` or `ort`.
    pub fn backend(self) -> &'static str {
        match self.kind {
            "safetensors" => "candle",
            "traced" => "tch",
            _ => "ort",
        }
    }

    /// Whether the backend of this column is compiled in.
    pub fn compiled(self) -> bool {
        match self.kind {
            "safetensors" => cfg!(feature = "candle"),
            "traced" => cfg!(feature = "tch"),
            _ => cfg!(feature = "ort"),
        }
    }

    /// Opens `case` in this column's backend.
    pub fn open(self, case: &Case) -> Slot {
        if let Some(error) = case.skipped(self.kind) {
            return Slot::Skipped(error);
        }
        if !self.compiled() {
            return Slot::Absent;
        }
        let Some(path) = case.file(self.kind) else { return Slot::Absent };
        #[allow(unused_variables)]
        let load = |path: &std::path::Path| -> Option<Result<Box<dyn CamModel>, String>> {
            match self.kind {
                #[cfg(feature = "candle")]
                "safetensors" => {
                    let arch = case.candle_arch.as_deref()?;
                    if !backend_candle::ARCHITECTURES.contains(&arch) {
                        return None;
                    }
                    Some(
                        backend_candle::CandleModel::from_safetensors(path, arch)
                            .map(|m| Box::new(m) as Box<dyn CamModel>)
                            .map_err(|e| e.to_string()),
                    )
                }
                #[cfg(feature = "tch")]
                // As the command does: `layers()` probes at the size the run will use (a traced
                // MobileViT or MaxViT runs at its own size only).
                "traced" => Some(
                    backend_tch::TorchScriptModel::load(path, backend_tch::DeviceChoice::Cpu)
                        .map(|mut m| {
                            let (h, w) = case.input_hw();
                            m.set_probe_size(h, w);
                            Box::new(m) as Box<dyn CamModel>
                        })
                        .map_err(|e| e.to_string()),
                ),
                #[cfg(feature = "ort")]
                "legacy_dynamic" | "legacy_fixed" | "dynamo_dynamic" | "dynamo_fixed" => Some(
                    backend_ort::OnnxModel::load(path)
                        .map(|m| Box::new(m) as Box<dyn CamModel>)
                        .map_err(|e| e.to_string()),
                ),
                _ => None,
            }
        };
        match load(&path) {
            Some(result) => Slot::Open(result),
            None => Slot::Absent,
        }
    }
}
