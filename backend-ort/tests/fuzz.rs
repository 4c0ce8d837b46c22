//! Fuzzing the ONNX path: real exported models (the fixtures), mutated (bit flips, truncation,
//! deleted or duplicated nodes, rewired inputs, wrong dims, bogus attributes, op types, data
//! types and external-data entries), run through load → layers → backward generation → run.
//! Every case must end in a result or a typed error: no panic, no abort.
//!
//! `cargo test -p backend-ort --features ort --test fuzz` runs a few hundred cases;
//! `backend-ort/fuzz.sh [CASES] [FIRST_SEED]` runs 10,000 (the ignored test) and
//! prints a count per outcome.
#![cfg(feature = "ort")]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use backend_ort::{OnnxModel, OrtBackendError};
use gradcam_core::{CamModel, Target};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{Message, ModelProto, StringStringEntryProto};
use tests::fixtures_dir;

/// The models mutated: small graph files (dynamo: weights in `.onnx.data`) and one legacy file.
const MODELS: &[&str] =
    &["vit_tiny.dynamo.onnx", "resnet18.dynamo.onnx", "lite0.dynamo.onnx", "lite0.legacy.onnx"];

/// A deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// A number that breaks assumptions: 0, ±1, huge, negative, or small.
    fn nasty(&mut self) -> i64 {
        [0, 1, -1, 2, 3, 7, -7, 1 << 20, 1 << 40, i64::MAX, i64::MIN, -(1 << 31), 224, 1000][self.below(14)]
    }
}

/// One source model: its bytes and parsed form, and the folder its external data is in.
struct Source {
    name: &'static str,
    bytes: Vec<u8>,
    model: ModelProto,
    data: Option<PathBuf>,
}

fn sources() -> Vec<Source> {
    let dir = fixtures_dir();
    MODELS
        .iter()
        .map(|&name| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let model = ModelProto::parse_from_bytes(&bytes).expect("a fixture parses");
            let data = PathBuf::from(format!("{}.data", path.display()));
            Source { name, bytes, model, data: data.exists().then_some(data) }
        })
        .collect()
}

/// Applies one structural mutation; returns its name.
fn mutate(m: &mut ModelProto, r: &mut Rng) -> &'static str {
    let g = m.graph.mut_or_insert_default();
    let nodes = g.node.len();
    let tensor_names: Vec<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    match r.below(12) {
        0 if nodes > 0 => {
            g.node.remove(r.below(nodes));
            "delete a node"
        }
        1 if nodes > 0 => {
            let n = g.node[r.below(nodes)].clone();
            let at = r.below(nodes);
            g.node.insert(at, n);
            "duplicate a node"
        }
        2 if nodes > 0 && !tensor_names.is_empty() => {
            let i = r.below(nodes);
            let node = &mut g.node[i];
            if !node.input.is_empty() {
                let k = r.below(node.input.len());
                node.input[k] = match r.below(3) {
                    0 => tensor_names[r.below(tensor_names.len())].clone(),
                    1 => String::new(),
                    _ => "no_such_tensor".into(),
                };
            }
            "rewire an input"
        }
        3 if !g.initializer.is_empty() => {
            let i = r.below(g.initializer.len());
            let t = &mut g.initializer[i];
            if t.dims.is_empty() || r.below(4) == 0 {
                t.dims.push(r.nasty());
            } else {
                let k = r.below(t.dims.len());
                t.dims[k] = r.nasty();
            }
            "wrong initializer dims"
        }
        4 => {
            // The image input's dims (huge, zero or negative sizes; a different rank).
            if let Some(input) = g.input.first_mut() {
                use onnx_protobuf::{tensor_shape_proto::dimension::Value, type_proto};
                if let Some(type_proto::Value::TensorType(t)) =
                    input.type_.as_mut().and_then(|t| t.value.as_mut())
                {
                    let shape = t.shape.mut_or_insert_default();
                    if shape.dim.is_empty() || r.below(4) == 0 {
                        shape.dim.push(Default::default());
                    } else {
                        let k = r.below(shape.dim.len());
                        shape.dim[k].value = Some(Value::DimValue(r.nasty()));
                    }
                }
            }
            "wrong input dims"
        }
        5 if nodes > 0 => {
            let i = r.below(nodes);
            let node = &mut g.node[i];
            if node.attribute.is_empty() || r.below(3) == 0 {
                let mut a = onnx_protobuf::AttributeProto::new();
                a.name = ["axis", "perm", "pads", "kernel_shape", "strides", "mode", "to", "axes"]
                    [r.below(8)]
                .into();
                a.type_ = AttributeType::INTS.into();
                a.ints = (0..r.below(5)).map(|_| r.nasty()).collect();
                a.i = r.nasty();
                node.attribute.push(a);
            } else {
                let k = r.below(node.attribute.len());
                let a = &mut node.attribute[k];
                match r.below(4) {
                    0 => a.i = r.nasty(),
                    1 => a.ints = (0..r.below(6)).map(|_| r.nasty()).collect(),
                    2 => a.s = b"bogus".to_vec(),
                    _ => {
                        node.attribute.remove(k);
                    }
                }
            }
            "bogus attribute"
        }
        6 if nodes > 0 => {
            let ops = [
                "Relu", "Conv", "Gather", "Slice", "Pad", "Reshape", "MatMul", "Softmax", "Sin", "Loop",
                "If", "Einsum", "Custom",
            ];
            let i = r.below(nodes);
            g.node[i].op_type = ops[r.below(ops.len())].into();
            if r.below(4) == 0 {
                g.node[i].domain = "com.example".into();
            }
            "change an op type"
        }
        7 if !g.initializer.is_empty() => {
            let i = r.below(g.initializer.len());
            g.initializer[i].data_type = [0, 1, 2, 7, 9, 11, 16, 99][r.below(8)];
            "change a data type"
        }
        8 if !g.initializer.is_empty() => {
            // External-data entries: offsets and lengths past the file, escaping paths, missing files.
            let i = r.below(g.initializer.len());
            let t = &mut g.initializer[i];
            t.data_location = DataLocation::EXTERNAL.into();
            let (key, value) = match r.below(5) {
                0 => ("offset", r.nasty().to_string()),
                1 => ("length", r.nasty().to_string()),
                2 => ("location", "../../../../etc/passwd".to_string()),
                3 => ("location", "missing.data".to_string()),
                _ => ("checksum", "x".to_string()),
            };
            if let Some(e) = t.external_data.iter_mut().find(|e| e.key == key) {
                e.value = value;
            } else {
                let mut e = StringStringEntryProto::new();
                e.key = key.into();
                e.value = value;
                t.external_data.push(e);
            }
            "bogus external data"
        }
        9 => {
            if r.below(2) == 0 {
                g.output.clear();
            } else if let Some(o) = g.output.first_mut() {
                o.name = tensor_names.get(r.below(tensor_names.len().max(1))).cloned().unwrap_or_default();
            }
            "change the outputs"
        }
        10 => {
            if let Some(o) = m.opset_import.first_mut() {
                o.version = [1, 12, 13, 16, 18, 21, 99, -1][r.below(8)];
            }
            "change the opset"
        }
        _ if nodes > 0 => {
            let i = r.below(nodes);
            let node = &mut g.node[i];
            if !node.output.is_empty() {
                let k = r.below(node.output.len());
                node.output[k] = tensor_names[r.below(tensor_names.len())].clone();
            }
            "rename an output"
        }
        _ => "nothing",
    }
}

/// What happened to one case.
fn outcome<T>(stage: &str, r: Result<T, impl std::fmt::Display>) -> Result<T, String> {
    r.map_err(|e| {
        let text = e.to_string();
        let kind: String = text.split([':', '`', '(']).next().unwrap_or("").chars().take(48).collect();
        format!("{stage}: {}", kind.trim())
    })
}

/// Runs case `seed` (a batch of `batch` images) through load → layers → backward generation → run, in `dir`.
fn run_case(sources: &[Source], seed: u64, batch: usize, dir: &Path) -> Result<String, String> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let source = &sources[r.below(sources.len())];
    let bytes = match r.below(5) {
        0 => {
            let mut b = source.bytes.clone();
            for _ in 0..=r.below(8) {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            b
        }
        1 => source.bytes[..r.below(source.bytes.len())].to_vec(),
        _ => {
            let mut m = source.model.clone();
            for _ in 0..=r.below(3) {
                mutate(&mut m, &mut r);
            }
            m.write_to_bytes().map_err(|e| format!("serialise: {e}"))?
        }
    };
    let path = dir.join(source.name);
    std::fs::write(&path, &bytes).map_err(|e| format!("write: {e}"))?;
    let mut model = outcome("load", OnnxModel::load_with_threads(&path, 1))?;
    let layers = outcome("layers", model.layers())?;
    if layers.is_empty() {
        return Err("layers: none".into());
    }
    let layer = layers[r.below(layers.len())].name.clone();
    let (h, w) = model.input_hw().unwrap_or((64, 64));
    if h * w > 512 * 512 {
        return Err("input: too large to run".into());
    }
    let input = ndarray::Array4::from_shape_fn((batch, 3, h, w), |(b, c, y, x)| {
        ((b + c * 3 + y * 5 + x) % 13) as f32 / 13.0 - 0.5
    });
    let plain = outcome("capture", model.capture(input.view(), &layer, None))?;
    outcome(
        "forward_with_activation",
        model.forward_with_activation(input.view(), &layer, plain.activation.view()),
    )?;
    outcome("backward", model.capture(input.view(), &layer, Some(&Target::top_one())))?;
    Ok("ok".into())
}

/// Runs `cases` cases from `first`; panics listing the seeds whose case panicked.
fn fuzz(first: u64, cases: u64, batch: usize, verbose: bool) {
    let sources = sources();
    let dir = std::env::temp_dir().join(format!("gradcam-ort-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for s in &sources {
        if let Some(data) = &s.data {
            let link = dir.join(data.file_name().expect("a file name"));
            if !link.exists() && std::fs::hard_link(data, &link).is_err() {
                std::fs::copy(data, &link).expect("copy external data");
            }
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut panics = Vec::new();
    let start = std::time::Instant::now();
    for seed in first..first + cases {
        if verbose {
            // An abort (or the OOM killer) ends the run without a report: the last seed says where.
            eprintln!("case {seed}");
        }
        let result = catch_unwind(AssertUnwindSafe(|| run_case(&sources, seed, batch, &dir)));
        let key = match result {
            Ok(Ok(k)) | Ok(Err(k)) => k,
            Err(_) => {
                panics.push(seed);
                "PANIC".into()
            }
        };
        *outcomes.entry(key).or_default() += 1;
        let done = seed - first + 1;
        if verbose && done.is_multiple_of(500) {
            eprintln!("{done} cases, {} panics, {:.0} s", panics.len(), start.elapsed().as_secs_f64());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{cases} cases in {:.0} s:", start.elapsed().as_secs_f64());
    for (k, n) in &outcomes {
        eprintln!("{n:>6}  {k}");
    }
    assert!(panics.is_empty(), "{} cases panicked, seeds {panics:?}", panics.len());
}

/// A few hundred cases (one image each, to stay under a minute), in every test run.
#[test]
fn mutated_models_fail_with_typed_errors() {
    fuzz(1, 200, 1, false);
}

/// 10,000 cases (or `GRADCAM_FUZZ_CASES`): `backend-ort/fuzz.sh`.
#[test]
#[ignore]
fn fuzz_many() {
    let cases = std::env::var("GRADCAM_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let first = std::env::var("GRADCAM_FUZZ_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    fuzz(first, cases, 2, true);
}

/// Not every failure is a panic in disguise: the errors come back typed.
#[test]
fn a_truncated_model_is_a_typed_error() {
    let source = &sources()[0];
    let dir = std::env::temp_dir().join(format!("gradcam-ort-fuzz-typed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("truncated.onnx");
    std::fs::write(&path, &source.bytes[..source.bytes.len() / 3]).expect("write");
    let err = OnnxModel::load(&path).expect_err("truncated");
    assert!(matches!(err, OrtBackendError::Graph(_)), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
