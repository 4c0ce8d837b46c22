//! Per-op checks of the backward rules: for random shapes and attributes, the generated
//! gradient of `sum(seed · y)` equals central finite differences of the forward op, both run in
//! ONNX Runtime.
#![cfg(feature = "ort")]

use std::sync::OnceLock;

use backend_ort::onnx_graph::{GraphError, OnnxGraph, Seed, Shapes, TensorInfo, GRADIENT, SEED};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{
    tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
};
use ort::session::Session;
use ort::value::Tensor;
use proptest::prelude::*;

fn env() -> &'static ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| ort::init().with_name("rules").build().expect("ONNX Runtime (set ORT_DYLIB_PATH)"))
}

/// An input of the node under test.
#[derive(Clone, Debug)]
enum Arg {
    /// A graph input the gradient is checked for.
    X(Vec<i64>, Vec<f32>),
    /// A float constant (weights).
    P(Vec<i64>, Vec<f32>),
    /// An int64 constant (1-D), or a scalar when `scalar`.
    I(Vec<i64>, bool),
    /// An absent optional input.
    Absent,
}

/// A small graph: nodes over named tensors; `x<k>`/`p<k>`/`i<k>` name the arguments, the last
/// node's first output must be `y`.
struct Case {
    args: Vec<Arg>,
    nodes: Vec<NodeProto>,
    opset: i64,
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("test_{op}_{}", outputs[0]);
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

fn ai(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn aints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn af(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

fn astr(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

fn afloats(name: &str, v: &[f32]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOATS.into();
    a.floats = v.to_vec();
    a
}

fn arg_name(args: &[Arg], k: usize) -> String {
    match &args[k] {
        Arg::X(..) => format!("x{k}"),
        Arg::P(..) => format!("p{k}"),
        Arg::I(..) => format!("i{k}"),
        Arg::Absent => String::new(),
    }
}

/// The one-node case `op(args) -> y`.
fn one(op: &str, args: Vec<Arg>, attrs: Vec<AttributeProto>, opset: i64) -> Case {
    let names: Vec<String> = (0..args.len()).map(|k| arg_name(&args, k)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Case { nodes: vec![node(op, &refs, &["y"], attrs)], args, opset }
}

fn vi(name: &str, elem: i32) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut t = type_proto::Tensor::new();
    t.elem_type = elem;
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    v.type_ = Some(tp).into();
    v
}

impl Case {
    fn graph(&self, extra_outputs: &[String]) -> OnnxGraph {
        let mut g = GraphProto::new();
        g.name = "case".into();
        g.node = self.nodes.clone();
        for (k, a) in self.args.iter().enumerate() {
            let name = arg_name(&self.args, k);
            match a {
                Arg::X(..) => g.input.push(vi(&name, DataType::FLOAT as i32)),
                Arg::P(dims, data) => {
                    let mut t = TensorProto::new();
                    t.name = name;
                    t.data_type = DataType::FLOAT as i32;
                    t.dims = dims.clone();
                    t.float_data = data.clone();
                    g.initializer.push(t);
                }
                Arg::I(v, scalar) => {
                    let mut t = TensorProto::new();
                    t.name = name;
                    t.data_type = DataType::INT64 as i32;
                    t.dims = if *scalar { vec![] } else { vec![v.len() as i64] };
                    t.int64_data = v.clone();
                    g.initializer.push(t);
                }
                Arg::Absent => {}
            }
        }
        g.output.push(vi("y", DataType::FLOAT as i32));
        for o in extra_outputs {
            g.output.push(vi(o, 0));
            g.output.last_mut().unwrap().type_ = Default::default();
        }
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let mut op = OperatorSetIdProto::new();
        op.version = self.opset;
        m.opset_import.push(op);
        m.graph = Some(g).into();
        OnnxGraph::from_model(m)
    }

    fn xs(&self) -> Vec<(String, Vec<i64>, Vec<f32>)> {
        self.args
            .iter()
            .enumerate()
            .filter_map(|(k, a)| match a {
                Arg::X(d, v) => Some((format!("x{k}"), d.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
}

fn session(g: &OnnxGraph) -> Session {
    Session::builder(env())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_memory(&g.to_bytes())
        .unwrap_or_else(|e| panic!("ORT rejected the model: {e}"))
}

fn run(
    s: &mut Session,
    xs: &[(String, Vec<i64>, Vec<f32>)],
    seed: Option<(&[i64], &[f32])>,
    outs: &[&str],
) -> Vec<(Vec<i64>, Vec<f64>, i32)> {
    let mut inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> = Vec::new();
    for (name, d, v) in xs {
        inputs.push((name.clone().into(), Tensor::from_array((d.clone(), v.clone())).unwrap().into()));
    }
    if let Some((d, v)) = seed {
        inputs.push((SEED.into(), Tensor::from_array((d.to_vec(), v.to_vec())).unwrap().into()));
    }
    let outputs = s.run(inputs).unwrap_or_else(|e| panic!("run: {e}"));
    outs.iter()
        .map(|o| {
            let v = &outputs[*o];
            if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
                (shape.to_vec(), data.iter().map(|&x| x as f64).collect(), 1)
            } else if let Ok((shape, data)) = v.try_extract_tensor::<f64>() {
                (shape.to_vec(), data.to_vec(), 11)
            } else if let Ok((shape, _)) = v.try_extract_tensor::<i64>() {
                (shape.to_vec(), Vec::new(), 7)
            } else {
                let (shape, _) = v.try_extract_tensor::<bool>().expect("f32, f64, i64 or bool");
                (shape.to_vec(), Vec::new(), 9)
            }
        })
        .collect()
}

/// A deterministic generator of test values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        2.0 * self.next() - 1.0
    }
    /// `count` values with |v| in [lo, lo + 1): away from kinks at 0.
    fn away(&mut self, count: usize, lo: f32) -> Vec<f32> {
        (0..count).map(|_| (lo + self.next()) * if self.next() < 0.5 { -1.0 } else { 1.0 }).collect()
    }
    fn vec(&mut self, count: usize) -> Vec<f32> {
        (0..count).map(|_| self.sym()).collect()
    }
    /// Distinct values spaced well apart (for max).
    fn distinct(&mut self, count: usize) -> Vec<f32> {
        let mut idx: Vec<usize> = (0..count).collect();
        for i in (1..count).rev() {
            let j = (self.next() * (i + 1) as f32) as usize % (i + 1);
            idx.swap(i, j);
        }
        idx.into_iter().map(|i| i as f32 * 0.1 - count as f32 * 0.05).collect()
    }
}

fn numel(d: &[i64]) -> usize {
    d.iter().product::<i64>() as usize
}

/// The shapes of every tensor of `case`, from one run (`y`'s among them).
fn probe_shapes(case: &Case) -> Shapes {
    let node_outputs: Vec<String> =
        case.nodes.iter().flat_map(|n| n.output.clone()).filter(|o| o != "y" && !o.is_empty()).collect();
    let probe = case.graph(&node_outputs);
    let mut s = session(&probe);
    let mut names: Vec<&str> = vec!["y"];
    names.extend(node_outputs.iter().map(String::as_str));
    let outs = run(&mut s, &case.xs(), None, &names);
    let mut shapes = Shapes::new();
    for (name, (shape, _, dtype)) in names.iter().zip(&outs) {
        shapes.insert(name.to_string(), TensorInfo { dtype: *dtype, shape: shape.clone() });
    }
    for (k, a) in case.args.iter().enumerate() {
        let info = match a {
            Arg::X(d, _) | Arg::P(d, _) => TensorInfo { dtype: 1, shape: d.clone() },
            Arg::I(v, scalar) => {
                TensorInfo { dtype: 7, shape: if *scalar { vec![] } else { vec![v.len() as i64] } }
            }
            Arg::Absent => continue,
        };
        shapes.insert(arg_name(&case.args, k), info);
    }
    shapes
}

/// A `Conv` of `groups` groups of `cg` input and `mg` output channels each.
#[derive(Clone, Copy)]
struct ConvCase {
    groups: i64,
    cg: i64,
    mg: i64,
    h: i64,
    w: i64,
    kernel: (i64, i64),
    stride: i64,
    pad: i64,
    dil: i64,
    same: bool,
    one_d: bool,
}

impl ConvCase {
    fn case(&self, seed: u64) -> Case {
        let mut r = Rng(seed | 1);
        let (g, c) = (self.groups, self.groups * self.cg);
        let (xs, ws, n) = if self.one_d {
            (vec![1, c, self.w + 2], vec![g * self.mg, self.cg, self.kernel.1], 1)
        } else {
            (vec![2, c, self.h + 2, self.w + 2], vec![g * self.mg, self.cg, self.kernel.0, self.kernel.1], 2)
        };
        let mut attrs = vec![
            aints("strides", &vec![self.stride; n]),
            aints("dilations", &vec![self.dil; n]),
            ai("group", g),
        ];
        if self.same {
            attrs.push(astr("auto_pad", "SAME_UPPER"));
        } else {
            attrs.push(aints("pads", &vec![self.pad; 2 * n]));
        }
        let args = vec![
            Arg::X(xs.clone(), r.vec(numel(&xs))),
            Arg::P(ws.clone(), r.vec(numel(&ws))),
            Arg::X(vec![ws[0]], r.vec(ws[0] as usize)),
        ];
        one("Conv", args, attrs, 17)
    }
}

/// Unit-stride convolutions take their gradient as a `Conv` with the weights rearranged per
/// grouping (several channels per group each way, a depthwise multiplier, one output per group,
/// one group); one padded past its kernel keeps the transposed convolution.
#[test]
fn unit_stride_convs_in_every_grouping() {
    let base = ConvCase {
        groups: 2,
        cg: 2,
        mg: 3,
        h: 4,
        w: 5,
        kernel: (3, 2),
        stride: 1,
        pad: 1,
        dil: 1,
        same: false,
        one_d: false,
    };
    let cases = [
        ConvCase { ..base },
        ConvCase { cg: 1, mg: 2, groups: 3, ..base },
        ConvCase { mg: 1, ..base },
        ConvCase { groups: 1, ..base },
        ConvCase { dil: 2, pad: 0, ..base },
        ConvCase { one_d: true, ..base },
        ConvCase { same: true, ..base },
        ConvCase { kernel: (1, 1), pad: 1, ..base },
    ];
    let last = cases.len() - 1;
    for (k, conv) in cases.into_iter().enumerate() {
        let case = conv.case(k as u64);
        let shapes = probe_shapes(&case);
        let backward =
            case.graph(&[]).backward_model("x0", Seed::Tensor, &shapes).unwrap_or_else(|e| panic!("{e}"));
        let transposed = backward.nodes().iter().any(|n| n.op_type == "ConvTranspose");
        assert_eq!(transposed, k == last, "case {k}: a ConvTranspose in the backward");
        check(case, 1e-2, k as u64);
    }
}

/// The generated gradient equals central differences for every differentiable input.
fn check(case: Case, eps: f32, seed: u64) {
    let xs = case.xs();
    let shapes = probe_shapes(&case);
    let y_shape = shapes["y"].shape.clone();
    let mut rng = Rng(seed | 1);
    let seed_values = rng.vec(numel(&y_shape));
    let forward = case.graph(&[]);
    let mut fwd = session(&forward);
    let loss = |fwd: &mut Session, xs: &[(String, Vec<i64>, Vec<f32>)]| -> f64 {
        let (_, y, _) = run(fwd, xs, None, &["y"]).remove(0);
        y.iter().zip(&seed_values).map(|(a, b)| a * *b as f64).sum()
    };
    for (k, (name, _, values)) in xs.iter().enumerate() {
        let backward = forward.backward_model(name, Seed::Tensor, &shapes).unwrap_or_else(|e| panic!("{e}"));
        let mut bs = session(&backward);
        let (_, grad, _) = run(&mut bs, &xs, Some((&y_shape, &seed_values)), &[GRADIENT]).remove(0);
        assert_eq!(grad.len(), values.len(), "gradient size of {name}");
        for (j, &g) in grad.iter().enumerate() {
            let mut plus = xs.to_vec();
            plus[k].2[j] += eps;
            let mut minus = xs.to_vec();
            minus[k].2[j] -= eps;
            let fd = (loss(&mut fwd, &plus) - loss(&mut fwd, &minus)) / (2.0 * eps as f64);
            let tol = 3e-3 + 2e-2 * fd.abs();
            assert!(
                (g - fd).abs() <= tol,
                "{} d/d{name}[{j}]: generated {} vs finite difference {fd}",
                case.nodes.last().unwrap().op_type,
                g
            );
        }
    }
}

fn shape_strategy(max_rank: usize, max_dim: i64) -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(1..=max_dim, 1..=max_rank)
}

/// Two shapes that broadcast: `b` drops leading axes of `a` and sets some axes to 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<i64>, Vec<i64>, bool)> {
    (shape_strategy(4, 3), any::<u8>(), any::<bool>()).prop_map(|(a, mask, swap)| {
        let drop = (mask as usize) % a.len();
        let b: Vec<i64> = a[drop..]
            .iter()
            .enumerate()
            .map(|(i, &d)| if mask >> (i + 2) & 1 == 1 { 1 } else { d })
            .collect();
        (a, b, swap)
    })
}

const UNARY: &[(&str, f32)] = &[
    ("Sigmoid", 0.0),
    ("Tanh", 0.0),
    ("Erf", 0.0),
    ("Neg", 0.0),
    ("Exp", 0.0),
    ("Softplus", 0.0),
    ("Identity", 0.0),
    ("Relu", 0.05),
    ("Abs", 0.05),
];

/// Resize's `mode` and `nearest_mode` pairs.
const RESIZE_MODES: &[(&str, &str)] = &[
    ("nearest", "round_prefer_floor"),
    ("nearest", "round_prefer_ceil"),
    ("nearest", "floor"),
    ("nearest", "ceil"),
    ("linear", ""),
    ("cubic", ""),
];

/// Resize's `coordinate_transformation_mode`s (`half_pixel_symmetric` needs opset 19,
/// `tf_half_pixel_for_nn` is opset 11's).
const RESIZE_COORDINATES: &[&str] = &[
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "half_pixel_symmetric",
    "tf_half_pixel_for_nn",
];

/// Scale factors, down and up, whole and not.
const RESIZE_SCALES: &[f32] = &[0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0];

/// What a Resize case resizes H and W to.
#[derive(Clone, Copy, Debug)]
enum Resized {
    /// The `scales` input (H, W factors).
    Scales(f32, f32),
    /// The `sizes` input (H, W).
    Sizes(i64, i64),
}

/// Resize's other attributes in a case.
#[derive(Clone, Copy, Debug)]
struct ResizeOptions {
    opset: i64,
    /// Scales or sizes for H and W only, with the `axes` attribute (opset 18).
    axes: bool,
    cubic_coeff_a: f32,
    exclude_outside: bool,
    /// `antialias` = 1 (opset 18) where it changes nothing: linear or cubic upsampling.
    antialias: bool,
}

/// A scale that leaves at least one element of an axis of length `len`.
fn fit_scale(len: i64, scale: f32) -> f32 {
    if (len as f32 * scale).floor() < 1.0 {
        1.5
    } else {
        scale
    }
}

/// `Resize` of an NCHW input of shape `xs` over H and W: mode `RESIZE_MODES[mode]`, coordinates
/// `RESIZE_COORDINATES[coordinates]`.
fn resize_case(
    mode: usize,
    coordinates: usize,
    xs: &[i64],
    to: Resized,
    o: ResizeOptions,
    r: &mut Rng,
) -> Case {
    let (mode, nearest) = RESIZE_MODES[mode];
    let coordinates = RESIZE_COORDINATES[coordinates];
    let opset = match coordinates {
        "half_pixel_symmetric" => o.opset.max(19),
        "tf_half_pixel_for_nn" => 11,
        _ => o.opset,
    };
    let mut attrs = vec![astr("mode", mode), astr("coordinate_transformation_mode", coordinates)];
    match mode {
        "nearest" => attrs.push(astr("nearest_mode", nearest)),
        "cubic" => {
            attrs.push(af("cubic_coeff_a", o.cubic_coeff_a));
            attrs.push(ai("exclude_outside", o.exclude_outside as i64));
        }
        _ => {}
    }
    let upsampling = match to {
        Resized::Scales(h, w) => h >= 1.0 && w >= 1.0,
        Resized::Sizes(h, w) => h >= xs[2] && w >= xs[3],
    };
    if o.antialias && opset >= 18 && mode != "nearest" && upsampling {
        attrs.push(ai("antialias", 1));
    }
    let axes = o.axes && opset >= 18;
    if axes {
        attrs.push(aints("axes", &[2, -1]));
    }
    // Opset 11 has no optional roi or scales: empty tensors stand for them.
    let empty = || if opset < 13 { Arg::P(vec![0], vec![]) } else { Arg::Absent };
    let (scales, sizes) = match to {
        Resized::Scales(h, w) => {
            let v = if axes { vec![h, w] } else { vec![1.0, 1.0, h, w] };
            (Arg::P(vec![v.len() as i64], v), Arg::Absent)
        }
        Resized::Sizes(h, w) => {
            let v = if axes { vec![h, w] } else { vec![xs[0], xs[1], h, w] };
            (empty(), Arg::I(v, false))
        }
    };
    let x = Arg::X(xs.to_vec(), r.vec(numel(xs)));
    one("Resize", vec![x, empty(), scales, sizes], attrs, opset)
}

/// `Upsample` (opset 9: scales as input; opset 7: as attribute) or `Resize` of opset 10 (scales
/// as input, down too), nearest or linear over H and W.
fn legacy_resize_case(kind: usize, linear: bool, xs: &[i64], (h, w): (f32, f32), r: &mut Rng) -> Case {
    let mode = astr("mode", if linear { "linear" } else { "nearest" });
    let x = Arg::X(xs.to_vec(), r.vec(numel(xs)));
    let scales = vec![1.0, 1.0, h, w];
    match kind {
        0 => one("Upsample", vec![x, Arg::P(vec![4], scales)], vec![mode], 9),
        1 => one("Upsample", vec![x], vec![mode, afloats("scales", &scales)], 7),
        _ => one("Resize", vec![x, Arg::P(vec![4], scales)], vec![mode], 10),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unary(op in 0..UNARY.len(), shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let (name, lo) = UNARY[op];
        let mut r = Rng(seed | 1);
        let x = if lo > 0.0 { r.away(numel(&shape), lo) } else { r.vec(numel(&shape)) };
        check(one(name, vec![Arg::X(shape, x)], vec![], 17), 1e-2, seed);
    }

    #[test]
    fn positive_domain(op in 0..3usize, shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let name = ["Sqrt", "Log", "Reciprocal"][op];
        let mut r = Rng(seed | 1);
        let x: Vec<f32> = (0..numel(&shape)).map(|_| 0.5 + r.next()).collect();
        check(one(name, vec![Arg::X(shape, x)], vec![], 17), 1e-3, seed);
    }

    #[test]
    fn gelu(tanh in any::<bool>(), shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape)).iter().map(|v| v * 3.0).collect();
        let attrs = vec![astr("approximate", if tanh { "tanh" } else { "none" })];
        check(one("Gelu", vec![Arg::X(shape, x)], attrs, 20), 1e-2, seed);
    }

    #[test]
    fn leaky_relu(alpha in 0.01f32..0.5, shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let x = Rng(seed | 1).away(numel(&shape), 0.05);
        check(one("LeakyRelu", vec![Arg::X(shape, x)], vec![af("alpha", alpha)], 17), 1e-2, seed);
    }

    #[test]
    fn clip(shape in shape_strategy(3, 4), seed in any::<u64>(), with_min in any::<bool>()) {
        // Values on a grid that keeps clear of the bounds -0.5 and 0.55.
        let mut r = Rng(seed | 1);
        let x: Vec<f32> = (0..numel(&shape)).map(|_| ((r.sym() * 10.0).round() + 0.25) / 10.0).collect();
        let args = vec![
            Arg::X(shape, x),
            if with_min { Arg::P(vec![], vec![-0.5]) } else { Arg::Absent },
            Arg::P(vec![], vec![0.55]),
        ];
        check(one("Clip", args, vec![], 17), 1e-2, seed);
    }

    #[test]
    fn hard_sigmoid_and_swish(swish in any::<bool>(), shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        // Away from the kinks at ±3 (and ±2.5 for HardSigmoid's alpha 0.2).
        let x: Vec<f32> = (0..numel(&shape)).map(|_| ((r.sym() * 8.0).round() + 0.25) / 2.0).collect();
        let (op, attrs) = if swish { ("HardSwish", vec![]) } else { ("HardSigmoid", vec![af("alpha", 0.2), af("beta", 0.5)]) };
        check(one(op, vec![Arg::X(shape, x)], attrs, 17), 1e-2, seed);
    }

    #[test]
    fn cast_round_trip(shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape));
        let nodes = vec![
            node("Cast", &["x0"], &["d"], vec![ai("to", DataType::DOUBLE as i64)]),
            node("Tanh", &["d"], &["t"], vec![]),
            node("Cast", &["t"], &["y"], vec![ai("to", DataType::FLOAT as i64)]),
        ];
        check(Case { args: vec![Arg::X(shape, x)], nodes, opset: 17 }, 1e-2, seed);
    }

    #[test]
    fn binary((a, b, swap) in broadcast_pair(), op in 0..5usize, seed in any::<u64>()) {
        let name = ["Add", "Sub", "Mul", "Div", "Pow"][op];
        let mut r = Rng(seed | 1);
        let (a, b) = if swap && op < 3 { (b, a) } else { (a, b) };
        let va: Vec<f32> = if op == 4 { (0..numel(&a)).map(|_| 0.5 + r.next()).collect() } else { r.vec(numel(&a)) };
        let vb: Vec<f32> = if op >= 3 { (0..numel(&b)).map(|_| 0.5 + r.next()).collect() } else { r.vec(numel(&b)) };
        check(one(name, vec![Arg::X(a, va), Arg::X(b, vb)], vec![], 17), 1e-3, seed);
    }

    #[test]
    fn matmul(batch in prop::collection::vec(1..3i64, 0..3), m in 1..4i64, k in 1..4i64, n in 1..4i64,
              b_rank in 1..4usize, seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let mut sa = batch.clone();
        sa.extend([m, k]);
        let sb: Vec<i64> = if b_rank == 1 { vec![k] } else {
            let keep = batch.len().min(b_rank - 2);
            let mut s: Vec<i64> = batch[batch.len() - keep..].iter().map(|&d| if r.next() < 0.5 { 1 } else { d }).collect();
            s.extend([k, n]);
            s
        };
        let (va, vb) = (r.vec(numel(&sa)), r.vec(numel(&sb)));
        check(one("MatMul", vec![Arg::X(sa, va), Arg::X(sb, vb)], vec![], 17), 1e-2, seed);
    }

    #[test]
    fn gemm(m in 1..4i64, k in 1..4i64, n in 1..4i64, ta in any::<bool>(), tb in any::<bool>(),
            c_kind in 0..3usize, alpha in 0.5f32..2.0, beta in 0.5f32..2.0, seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let sa = if ta { vec![k, m] } else { vec![m, k] };
        let sb = if tb { vec![n, k] } else { vec![k, n] };
        let sc = [vec![n], vec![m, n], vec![1, n]][c_kind].clone();
        let args = vec![Arg::X(sa.clone(), r.vec(numel(&sa))), Arg::X(sb.clone(), r.vec(numel(&sb))), Arg::X(sc.clone(), r.vec(numel(&sc)))];
        let attrs = vec![ai("transA", ta as i64), ai("transB", tb as i64), af("alpha", alpha), af("beta", beta)];
        check(one("Gemm", args, attrs, 17), 1e-2, seed);
    }

    #[test]
    fn conv(groups in 1..3i64, cg in 1..3i64, mg in 1..3i64, h in 3..6i64, w in 3..6i64, kh in 1..4i64, kw in 1..3i64,
            stride in 1..3i64, pad in 0..2i64, dil in 1..3i64, depthwise in any::<bool>(), same in any::<bool>(),
            one_d in any::<bool>(), seed in any::<u64>()) {
        // ONNX Runtime's Conv has no dilation with auto_pad SAME.
        let dil = if same { 1 } else { dil };
        let (groups, cg, mg) = if depthwise { (groups + 1, 1, 1) } else { (groups, cg, mg) };
        let conv = ConvCase { groups, cg, mg, h, w, kernel: (kh.min(h), kw), stride, pad, dil, same, one_d };
        check(conv.case(seed), 1e-2, seed);
    }

    #[test]
    fn conv_transpose(c in 1..3i64, m in 1..3i64, h in 2..4i64, k in 1..4i64, stride in 1..3i64, pad in 0..2i64, seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let (xs, ws) = (vec![1, c, h, h + 1], vec![c, m, k, k]);
        let pad = pad.min(k - 1);
        let attrs = vec![aints("strides", &[stride, stride]), aints("pads", &[pad; 4])];
        let args = vec![Arg::X(xs.clone(), r.vec(numel(&xs))), Arg::P(ws.clone(), r.vec(numel(&ws)))];
        check(one("ConvTranspose", args, attrs, 17), 1e-2, seed);
    }

    #[test]
    fn batch_norm(n in 1..3i64, c in 1..4i64, h in 1..4i64, seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let xs = vec![n, c, h, 2];
        let cu = c as usize;
        let var: Vec<f32> = (0..cu).map(|_| 0.5 + r.next()).collect();
        let args = vec![Arg::X(xs.clone(), r.vec(numel(&xs))), Arg::P(vec![c], r.vec(cu)), Arg::P(vec![c], r.vec(cu)),
                        Arg::P(vec![c], r.vec(cu)), Arg::P(vec![c], var)];
        check(one("BatchNormalization", args, vec![af("epsilon", 1e-3)], 17), 1e-2, seed);
    }

    #[test]
    fn global_pools(max in any::<bool>(), shape in (1..3i64, 1..3i64, 1..4i64, 1..4i64), seed in any::<u64>()) {
        let xs = vec![shape.0, shape.1, shape.2, shape.3];
        let x = if max { Rng(seed | 1).distinct(numel(&xs)) } else { Rng(seed | 1).vec(numel(&xs)) };
        check(one(if max { "GlobalMaxPool" } else { "GlobalAveragePool" }, vec![Arg::X(xs, x)], vec![], 17), 1e-2, seed);
    }

    /// A ReLU or ReLU6 before a global mean (a CNN's head): the mask broadcasts the mean's
    /// gradient instead of reading an expanded copy.
    #[test]
    fn activation_before_a_mean(clip in any::<bool>(), gap in any::<bool>(), shape in (1..3i64, 1..3i64, 1..4i64, 1..4i64),
                                seed in any::<u64>()) {
        let case = activation_then_mean(clip, gap, &[shape.0, shape.1, shape.2, shape.3], seed);
        check(case, 1e-2, seed);
    }

    #[test]
    fn reduce(shape in shape_strategy(4, 3), axes_mask in 1u8..16, keep in any::<bool>(), mean in any::<bool>(),
              opset18 in any::<bool>(), seed in any::<u64>()) {
        let rank = shape.len() as i64;
        let mut axes: Vec<i64> = (0..rank).filter(|a| axes_mask >> a & 1 == 1).collect();
        if axes.is_empty() { axes.push(rank - 1); }
        if axes.len() == 1 { axes[0] -= rank; } // a negative axis
        let x = Rng(seed | 1).vec(numel(&shape));
        let op = if mean { "ReduceMean" } else { "ReduceSum" };
        let case = if mean && !opset18 {
            one(op, vec![Arg::X(shape, x)], vec![aints("axes", &axes), ai("keepdims", keep as i64)], 17)
        } else {
            one(op, vec![Arg::X(shape, x), Arg::I(axes, false)], vec![ai("keepdims", keep as i64)], 18)
        };
        check(case, 1e-2, seed);
    }

    #[test]
    fn average_pool(k in 1..4i64, stride in 1..3i64, pad in 0..2i64, include_pad in any::<bool>(), h in 3..6i64, seed in any::<u64>()) {
        let xs = vec![1, 2, h, h + 1];
        let pad = pad.min(k - 1);
        let attrs = vec![aints("kernel_shape", &[k, k]), aints("strides", &[stride, stride]), aints("pads", &[pad; 4]),
                         ai("count_include_pad", include_pad as i64)];
        check(one("AveragePool", vec![Arg::X(xs.clone(), Rng(seed | 1).vec(numel(&xs)))], attrs, 17), 1e-2, seed);
    }

    #[test]
    fn max_pool(k in 1..4i64, stride in 1..3i64, pad in 0..2i64, h in 3..6i64, seed in any::<u64>()) {
        let xs = vec![1, 2, h, h + 1];
        let pad = pad.min(k - 1);
        let attrs = vec![aints("kernel_shape", &[k, k]), aints("strides", &[stride, stride]), aints("pads", &[pad; 4])];
        check(one("MaxPool", vec![Arg::X(xs.clone(), Rng(seed | 1).distinct(numel(&xs)))], attrs, 17), 1e-2, seed);
    }

    #[test]
    fn reshapes(shape in shape_strategy(4, 3), which in 0..5usize, seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape));
        let rank = shape.len() as i64;
        let case = match which {
            0 => one("Flatten", vec![Arg::X(shape, x)], vec![ai("axis", rank / 2)], 17),
            1 => one("Reshape", vec![Arg::X(shape, x), Arg::I(vec![-1], false)], vec![], 17),
            2 => one("Unsqueeze", vec![Arg::X(shape, x), Arg::I(vec![0, rank + 1], false)], vec![], 17),
            3 => {
                let mut s = shape.clone();
                s.push(1);
                one("Squeeze", vec![Arg::X(s, x), Arg::I(vec![-1], false)], vec![], 17)
            }
            _ => {
                let perm: Vec<i64> = (0..rank).rev().collect();
                one("Transpose", vec![Arg::X(shape, x)], vec![aints("perm", &perm)], 17)
            }
        };
        check(case, 1e-2, seed);
    }

    #[test]
    fn concat_and_split(shape in shape_strategy(3, 3), parts in 2..4usize, seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let axis = (seed % shape.len() as u64) as i64;
        let mut args = Vec::new();
        for p in 0..parts {
            let mut s = shape.clone();
            s[axis as usize] += p as i64;
            args.push(Arg::X(s.clone(), r.vec(numel(&s))));
        }
        let names: Vec<String> = (0..parts).map(|k| format!("x{k}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // Concat, then Split into different pieces and Concat them in reverse: both rules at once.
        let total: i64 = (0..parts as i64).map(|p| shape[axis as usize] + p).sum();
        let sizes = [total / 2, total - total / 2];
        let nodes = vec![
            node("Concat", &refs, &["c"], vec![ai("axis", axis)]),
            node("Split", &["c", "split"], &["s0", "s1"], vec![ai("axis", axis)]),
            node("Concat", &["s1", "s0"], &["y"], vec![ai("axis", axis)]),
        ];
        let mut case = Case { args, nodes, opset: 17 };
        // The split sizes as a named constant input.
        case.args.push(Arg::I(sizes.to_vec(), false));
        let k = case.args.len() - 1;
        case.nodes[1].input[1] = format!("i{k}");
        check(case, 1e-2, seed);
    }

    #[test]
    fn slice_and_pad(shape in shape_strategy(3, 5), start in -3i64..3, len in 1..4i64, pad_case in any::<bool>(), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape));
        let rank = shape.len() as i64;
        let axis = (seed % rank as u64) as i64;
        let case = if pad_case {
            let mut pads = vec![0; 2 * rank as usize];
            pads[axis as usize] = len;
            pads[(axis + rank) as usize] = start.abs();
            one("Pad", vec![Arg::X(shape, x), Arg::I(pads, false)], vec![], 17)
        } else {
            let args = vec![Arg::X(shape, x), Arg::I(vec![start], false), Arg::I(vec![start + len], false), Arg::I(vec![axis], false)];
            one("Slice", args, vec![], 17)
        };
        check(case, 1e-2, seed);
    }

    #[test]
    fn gather(shape in shape_strategy(3, 4), scalar in any::<bool>(), idx in prop::collection::vec(-4i64..4, 1..4), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape));
        let axis = (seed % shape.len() as u64) as usize;
        let dim = shape[axis];
        let idx: Vec<i64> = idx.iter().map(|&i| i.rem_euclid(2 * dim) - dim).collect();
        let args = if scalar { vec![Arg::X(shape, x), Arg::I(vec![idx[0]], true)] } else { vec![Arg::X(shape, x), Arg::I(idx, false)] };
        check(one("Gather", args, vec![ai("axis", axis as i64)], 17), 1e-2, seed);
    }

    #[test]
    fn expand((a, b, _) in broadcast_pair(), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&b));
        check(one("Expand", vec![Arg::X(b, x), Arg::I(a, false)], vec![], 17), 1e-2, seed);
    }

    #[test]
    fn softmax(shape in shape_strategy(3, 4), log in any::<bool>(), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape)).iter().map(|v| v * 2.0).collect();
        let axis = -((seed % shape.len() as u64) as i64) - 1;
        check(one(if log { "LogSoftmax" } else { "Softmax" }, vec![Arg::X(shape, x)], vec![ai("axis", axis)], 17), 1e-2, seed);
    }

    #[test]
    fn layer_norm(shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let rank = shape.len() as i64;
        let axis = -((seed % rank as u64) as i64) - 1;
        let norm_shape = shape[(rank + axis) as usize..].to_vec();
        // Spread-out values keep the variance (and the conditioning) reasonable.
        let x = r.vec(numel(&shape)).iter().map(|v| v * 2.0).collect();
        let args = vec![Arg::X(shape, x), Arg::P(norm_shape.clone(), r.vec(numel(&norm_shape))), Arg::P(norm_shape.clone(), r.vec(numel(&norm_shape)))];
        check(one("LayerNormalization", args, vec![ai("axis", axis), af("epsilon", 1e-2)], 17), 1e-2, seed);
    }

    #[test]
    fn dropout_in_inference(shape in shape_strategy(3, 4), seed in any::<u64>()) {
        let x = Rng(seed | 1).vec(numel(&shape));
        check(one("Dropout", vec![Arg::X(shape, x)], vec![], 17), 1e-2, seed);
    }

    #[test]
    fn resize(mode in 0..RESIZE_MODES.len(), coordinates in 0..RESIZE_COORDINATES.len(), by_sizes in any::<bool>(),
              opset in prop::sample::select(vec![11i64, 13, 18, 19]), axes in any::<bool>(),
              xs in (1..3i64, 1..3i64, 1..6i64, 1..6i64), scales in (0..RESIZE_SCALES.len(), 0..RESIZE_SCALES.len()),
              sizes in (1..9i64, 1..9i64), cubic_coeff_a in prop::sample::select(vec![-0.75f32, -0.5]),
              exclude_outside in any::<bool>(), antialias in any::<bool>(), seed in any::<u64>()) {
        let xs = [xs.0, xs.1, xs.2, xs.3];
        let to = if by_sizes {
            Resized::Sizes(sizes.0, sizes.1)
        } else {
            Resized::Scales(fit_scale(xs[2], RESIZE_SCALES[scales.0]), fit_scale(xs[3], RESIZE_SCALES[scales.1]))
        };
        let o = ResizeOptions { opset, axes, cubic_coeff_a, exclude_outside, antialias };
        check(resize_case(mode, coordinates, &xs, to, o, &mut Rng(seed | 1)), 5e-2, seed);
    }

    #[test]
    fn upsample_and_resize_10(kind in 0..3usize, linear in any::<bool>(), xs in (1..3i64, 1..3i64, 1..5i64, 1..5i64),
                              scales in (0..RESIZE_SCALES.len(), 0..RESIZE_SCALES.len()), seed in any::<u64>()) {
        let xs = [xs.0, xs.1, xs.2, xs.3];
        // Upsample only enlarges.
        let pick = |len: i64, k: usize| {
            let s = fit_scale(len, RESIZE_SCALES[k]);
            if kind < 2 { s.max(1.0) } else { s }
        };
        let case = legacy_resize_case(kind, linear, &xs, (pick(xs[2], scales.0), pick(xs[3], scales.1)), &mut Rng(seed | 1));
        check(case, 5e-2, seed);
    }

    /// What torch's two exporters make of `F.interpolate` between a layer and a classifier
    /// head (resize -> 1x1 conv -> global average pool -> flatten), differentiated at the layer:
    /// bilinear (by a factor, to a size, down, antialiased, align_corners), nearest, bicubic,
    /// with the legacy exporter's attributes (opset 17) or the dynamo one's (opset 18, all
    /// attributes spelled out).
    #[test]
    fn resize_in_a_classifier_head(variant in 0..7usize, dynamo in any::<bool>(), channels in 1..3i64, h in 2..6i64,
                                   w in 2..6i64, seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let (mode, coordinates, to) = match variant {
            0 => ("linear", "half_pixel", Resized::Scales(2.0, 2.0)),
            1 => ("linear", "align_corners", Resized::Scales(2.0, 2.0)),
            2 => ("nearest", "asymmetric", Resized::Scales(2.0, 2.0)),
            3 => ("cubic", "half_pixel", Resized::Scales(2.0, 2.0)),
            4 | 6 => ("linear", "half_pixel", Resized::Sizes(2 * h + 2, 2 * w + 3)),
            _ => ("linear", "half_pixel", Resized::Sizes((h - 2).max(1), (w - 3).max(1))),
        };
        let xs = vec![2, channels, h, w];
        let mut attrs = vec![
            astr("mode", mode),
            astr("coordinate_transformation_mode", coordinates),
            astr("nearest_mode", "floor"),
            af("cubic_coeff_a", -0.75),
        ];
        let dynamo = dynamo || variant == 6;
        if dynamo {
            attrs.extend([
                ai("antialias", (variant == 6) as i64),
                ai("exclude_outside", 0),
                af("extrapolation_value", 0.0),
                astr("keep_aspect_ratio_policy", "stretch"),
            ]);
        }
        let (scales, sizes) = match to {
            Resized::Scales(a, b) => (Arg::P(vec![4], vec![1.0, 1.0, a, b]), Arg::Absent),
            Resized::Sizes(a, b) => (Arg::Absent, Arg::I(vec![2, channels, a, b], false)),
        };
        let weight = vec![5, channels, 1, 1];
        let args = vec![
            Arg::X(xs.clone(), r.vec(numel(&xs))),
            Arg::Absent,
            scales,
            sizes,
            Arg::P(weight.clone(), r.vec(numel(&weight))),
            Arg::P(vec![5], r.vec(5)),
        ];
        let names: Vec<String> = (0..4).map(|k| arg_name(&args, k)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let nodes = vec![
            node("Resize", &refs, &["resized"], attrs),
            node("Conv", &["resized", "p4", "p5"], &["head"], vec![]),
            node("GlobalAveragePool", &["head"], &["pooled"], vec![]),
            node("Flatten", &["pooled"], &["y"], vec![]),
        ];
        check(Case { args, nodes, opset: if dynamo { 18 } else { 17 } }, 5e-2, seed);
    }

    /// `keep_aspect_ratio_policy` (opset 18) with `sizes` on H and W: one scale for both.
    #[test]
    fn resize_keeping_aspect_ratio(not_larger in any::<bool>(), mode in 0..RESIZE_MODES.len(), coordinates in 0..4usize,
                                   xs in (1..3i64, 1..6i64, 1..6i64), sizes in (1..8i64, 1..8i64), seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let xs = vec![1, xs.0, xs.1, xs.2];
        let (name, nearest) = RESIZE_MODES[mode];
        let mut attrs = vec![
            astr("mode", name),
            astr("coordinate_transformation_mode", RESIZE_COORDINATES[coordinates]),
            astr("keep_aspect_ratio_policy", if not_larger { "not_larger" } else { "not_smaller" }),
            aints("axes", &[2, 3]),
        ];
        if !nearest.is_empty() {
            attrs.push(astr("nearest_mode", nearest));
        }
        let args = vec![Arg::X(xs.clone(), r.vec(numel(&xs))), Arg::Absent, Arg::Absent, Arg::I(vec![sizes.0, sizes.1], false)];
        check(one("Resize", args, attrs, 18), 5e-2, seed);
    }

    /// Other axes than an NCHW map's last two: channels-last (N, H, W, C), a channel axis, and
    /// three axes (trilinear).
    #[test]
    fn resize_other_axes(which in 0..3usize, mode in 0..RESIZE_MODES.len() - 1, scales in (0..RESIZE_SCALES.len(), 0..RESIZE_SCALES.len()),
                         seed in any::<u64>()) {
        let mut r = Rng(seed | 1);
        let (s0, s1) = (fit_scale(2, RESIZE_SCALES[scales.0]), fit_scale(3, RESIZE_SCALES[scales.1]));
        let (xs, v) = match which {
            0 => (vec![2, 2, 3, 2], vec![1.0, s0, s1, 1.0]),
            // ONNX Runtime resizes channels only in nearest mode.
            1 => (vec![1, 2, 3, 2], vec![1.0, if mode < 4 { s0 } else { 1.0 }, 1.0, s1]),
            _ => (vec![1, 1, 2, 3, 2], vec![1.0, 1.0, s0, s1, 1.5]),
        };
        let (name, nearest) = RESIZE_MODES[mode];
        let attrs = vec![astr("mode", name), astr("nearest_mode", if nearest.is_empty() { "floor" } else { nearest })];
        let args = vec![Arg::X(xs.clone(), r.vec(numel(&xs))), Arg::Absent, Arg::P(vec![v.len() as i64], v)];
        check(one("Resize", args, attrs, 13), 5e-2, seed);
    }
}

/// `x → Relu or Clip(0, 0.55) → GlobalAveragePool or ReduceMean over H, W → y`, with `x` on a
/// grid clear of the kinks.
fn activation_then_mean(clip: bool, gap: bool, xs: &[i64], seed: u64) -> Case {
    let mut r = Rng(seed | 1);
    let x: Vec<f32> = (0..numel(xs)).map(|_| ((r.sym() * 10.0).round() + 0.25) / 10.0).collect();
    let mut args = vec![Arg::X(xs.to_vec(), x)];
    let act = if clip {
        args.extend([Arg::P(vec![], vec![0.0]), Arg::P(vec![], vec![0.55])]);
        node("Clip", &["x0", "p1", "p2"], &["act"], vec![])
    } else {
        node("Relu", &["x0"], &["act"], vec![])
    };
    let mean = if gap {
        node("GlobalAveragePool", &["act"], &["y"], vec![])
    } else {
        node("ReduceMean", &["act"], &["y"], vec![aints("axes", &[2, 3]), ai("keepdims", 1)])
    };
    Case { args, nodes: vec![act, mean], opset: 17 }
}

/// `CastLike(c, x)` takes only `x`'s type: the unoptimised dynamo exporter casts constants like
/// an activation, and the gradient must not flow (nor fail) through that second input.
#[test]
fn cast_like_takes_only_a_type() {
    let mut r = Rng(5);
    let args = vec![Arg::X(vec![2, 3], r.vec(6)), Arg::P(vec![], vec![0.5])];
    let nodes =
        vec![node("CastLike", &["p1", "x0"], &["c"], vec![]), node("Mul", &["x0", "c"], &["y"], vec![])];
    check(Case { args, nodes, opset: 17 }, 1e-2, 5);
}

#[test]
fn a_mask_broadcasts_the_gradient_of_a_mean() {
    for (clip, gap) in [(false, false), (false, true), (true, false), (true, true)] {
        let case = activation_then_mean(clip, gap, &[2, 3, 4, 5], 7);
        let backward = case
            .graph(&[])
            .backward_model("x0", Seed::Tensor, &probe_shapes(&case))
            .unwrap_or_else(|e| panic!("{e}"));
        let graph = &backward.model().graph;
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"Expand") && ops.contains(&"Where"), "clip {clip}, gap {gap}: {ops:?}");
        // Nothing computed that nothing reads.
        let read: Vec<&str> = graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        for n in &graph.node {
            assert!(
                n.output.iter().any(|o| read.contains(&o.as_str()) || outputs.contains(&o.as_str())),
                "unread {}",
                n.name
            );
        }
    }
}

/// A finite-difference case for `op` with attributes drawn from `r` (every attribute value the
/// op allows is reachable: steps, negative axes, modes, broadcasting both ways, auto_pad,
/// ceil_mode, ...), and its step; `None` for an op this file has no case for.
fn example(op: &str, r: &mut Rng) -> Option<(Case, f32)> {
    let pick = |r: &mut Rng, n: usize| (r.next() * n as f32) as usize % n;
    let flip = |r: &mut Rng| r.next() < 0.5;
    let shape = |r: &mut Rng, rank: usize| -> Vec<i64> { (0..rank).map(|_| 1 + pick(r, 3) as i64).collect() };
    let x = |r: &mut Rng, s: &[i64]| Arg::X(s.to_vec(), r.vec(numel(s)));
    let away = |r: &mut Rng, s: &[i64], lo: f32| Arg::X(s.to_vec(), r.away(numel(s), lo));
    let positive =
        |r: &mut Rng, s: &[i64]| Arg::X(s.to_vec(), (0..numel(s)).map(|_| 0.5 + r.next()).collect());
    let s3 = shape(r, 3);
    let case = match op {
        "Identity" | "Dropout" | "Neg" | "Sigmoid" | "Tanh" | "Erf" | "Exp" | "Softplus" | "Sin" | "Cos"
        | "Softsign" | "Mish" => one(op, vec![x(r, &s3)], vec![], if op == "Mish" { 18 } else { 17 }),
        "Relu" | "Abs" => one(op, vec![away(r, &s3, 0.05)], vec![], 17),
        "Gelu" => {
            let approximate = astr("approximate", if flip(r) { "tanh" } else { "none" });
            one(
                op,
                vec![Arg::X(s3.clone(), r.vec(numel(&s3)).iter().map(|v| v * 3.0).collect())],
                vec![approximate],
                20,
            )
        }
        "LeakyRelu" | "Elu" | "Celu" => {
            one(op, vec![away(r, &s3, 0.05)], vec![af("alpha", 0.1 + r.next())], 17)
        }
        "Selu" => one(op, vec![away(r, &s3, 0.05)], vec![af("alpha", 1.5), af("gamma", 1.1)], 17),
        "ThresholdedRelu" => {
            let v: Vec<f32> = r.away(numel(&s3), 0.05).iter().map(|v| v + 0.5).collect();
            one(op, vec![Arg::X(s3.clone(), v)], vec![af("alpha", 0.5)], 17)
        }
        "PRelu" => {
            // A slope per channel (broadcast from the right) or one for all.
            let xs = vec![2, 3, 2, 2];
            let slope = if flip(r) { vec![3, 1, 1] } else { vec![1] };
            one(op, vec![away(r, &xs, 0.05), Arg::P(slope.clone(), r.vec(numel(&slope)))], vec![], 17)
        }
        "Clip" => {
            let v: Vec<f32> = (0..numel(&s3)).map(|_| ((r.sym() * 10.0).round() + 0.25) / 10.0).collect();
            let min = if flip(r) { Arg::P(vec![], vec![-0.5]) } else { Arg::Absent };
            one(op, vec![Arg::X(s3.clone(), v), min, Arg::P(vec![], vec![0.55])], vec![], 17)
        }
        "HardSigmoid" | "HardSwish" => {
            let v: Vec<f32> = (0..numel(&s3)).map(|_| ((r.sym() * 8.0).round() + 0.25) / 2.0).collect();
            one(op, vec![Arg::X(s3.clone(), v)], vec![], 17)
        }
        "Sqrt" | "Log" | "Reciprocal" => return Some((one(op, vec![positive(r, &s3)], vec![], 17), 1e-3)),
        "Cast" | "CastLike" => {
            let to = if op == "Cast" { vec![ai("to", DataType::DOUBLE as i64)] } else { vec![] };
            let mut inputs = vec!["x0"];
            let mut args = vec![x(r, &s3)];
            if op == "CastLike" {
                args.push(Arg::P(vec![1], vec![0.0]));
                inputs.push("p1");
            }
            let nodes = vec![
                node(op, &inputs, &["c"], to),
                node("Tanh", &["c"], &["t"], vec![]),
                node("Cast", &["t"], &["y"], vec![ai("to", DataType::FLOAT as i64)]),
            ];
            Case { args, nodes, opset: 17 }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Sum" | "Mean" | "Max" | "Min" => {
            let rank = 1 + pick(r, 3);
            let a = shape(r, rank);
            let b: Vec<i64> = a[pick(r, a.len())..].iter().map(|&d| if flip(r) { 1 } else { d }).collect();
            let (a, b) = if flip(r) { (b, a) } else { (a, b) };
            let extremes = matches!(op, "Max" | "Min");
            let arg = |r: &mut Rng, s: &[i64]| match op {
                "Pow" | "Div" => positive(r, s),
                _ if extremes => Arg::X(s.to_vec(), r.distinct(numel(s))),
                _ => x(r, s),
            };
            let mut args = vec![arg(r, &a), arg(r, &b)];
            if matches!(op, "Sum" | "Mean" | "Max" | "Min") && flip(r) {
                let c = a[a.len().saturating_sub(1)..].to_vec();
                args.push(arg(r, &c));
            }
            if extremes {
                // Distinct values across inputs, so no two tie.
                for (k, a) in args.iter_mut().enumerate() {
                    if let Arg::X(_, v) = a {
                        v.iter_mut().for_each(|v| *v += k as f32 * 0.037);
                    }
                }
            }
            one(op, args, vec![], 17)
        }
        "Where" => {
            let a = shape(r, 2);
            let b = vec![if flip(r) { 1 } else { a[1] }];
            let cond = vec![*a.last().unwrap()];
            let args = vec![Arg::P(cond.clone(), r.vec(numel(&cond))), x(r, &a), x(r, &b)];
            let nodes = vec![
                node("Greater", &["p0", "zero"], &["c"], vec![]),
                node("Where", &["c", "x1", "x2"], &["y"], vec![]),
            ];
            let mut case = Case { args, nodes, opset: 17 };
            case.args.push(Arg::P(vec![], vec![0.0]));
            let k = case.args.len() - 1;
            case.nodes[0].input[1] = format!("p{k}");
            case
        }
        "Expand" => {
            let to = shape(r, 3);
            let from: Vec<i64> = to[pick(r, 3)..].iter().map(|&d| if flip(r) { 1 } else { d }).collect();
            one(op, vec![x(r, &from), Arg::I(to, false)], vec![], 17)
        }
        "Tile" => {
            let reps: Vec<i64> = s3.iter().map(|_| 1 + pick(r, 3) as i64).collect();
            one(op, vec![x(r, &s3), Arg::I(reps, false)], vec![], 17)
        }
        "MatMul" => {
            let (m, k, n) = (2, 3, 2);
            one(op, vec![x(r, &[2, m, k]), x(r, &[k, n])], vec![], 17)
        }
        "Gemm" => {
            let (ta, tb) = (flip(r), flip(r));
            let sa = if ta { vec![3, 2] } else { vec![2, 3] };
            let sb = if tb { vec![4, 3] } else { vec![3, 4] };
            let attrs =
                vec![ai("transA", ta as i64), ai("transB", tb as i64), af("alpha", 1.5), af("beta", 0.5)];
            one(op, vec![x(r, &sa), x(r, &sb), x(r, &[4])], attrs, 17)
        }
        "Conv" => {
            let pads = ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"][pick(r, 4)];
            let mut attrs = vec![aints("strides", &[2, 1]), ai("group", 2), astr("auto_pad", pads)];
            if pads == "NOTSET" {
                attrs.push(aints("pads", &[1, 0, 0, 1]));
                attrs.push(aints("dilations", &[1, 2]));
            }
            let (xs, ws) = (vec![1, 4, 5, 5], vec![4, 2, 3, 2]);
            one(op, vec![x(r, &xs), Arg::P(ws.clone(), r.vec(numel(&ws))), x(r, &[4])], attrs, 17)
        }
        "ConvTranspose" => {
            let (xs, ws) = (vec![1, 2, 3, 3], vec![2, 2, 3, 3]);
            let mut attrs = vec![aints("strides", &[2, 2])];
            match pick(r, 3) {
                0 => attrs.extend([aints("pads", &[1, 0, 1, 1]), aints("output_padding", &[1, 0])]),
                1 => attrs.push(astr("auto_pad", if flip(r) { "SAME_UPPER" } else { "SAME_LOWER" })),
                _ => attrs.push(aints("output_shape", &[6, 5])),
            }
            one(op, vec![x(r, &xs), Arg::P(ws.clone(), r.vec(numel(&ws)))], attrs, 17)
        }
        "BatchNormalization" => {
            let var: Vec<f32> = (0..3).map(|_| 0.5 + r.next()).collect();
            let args = vec![
                x(r, &[2, 3, 2, 2]),
                Arg::P(vec![3], r.vec(3)),
                Arg::P(vec![3], r.vec(3)),
                Arg::P(vec![3], r.vec(3)),
                Arg::P(vec![3], var),
            ];
            one(op, args, vec![af("epsilon", 1e-3)], 17)
        }
        "InstanceNormalization" => {
            let args = vec![
                Arg::X(vec![2, 3, 2, 3], r.vec(36).iter().map(|v| v * 2.0).collect()),
                Arg::P(vec![3], r.vec(3)),
                Arg::P(vec![3], r.vec(3)),
            ];
            one(op, args, vec![af("epsilon", 1e-2)], 17)
        }
        "GroupNormalization" => {
            // Opset 18: scale per group; opset 21: per channel.
            let per_channel = flip(r);
            let n = if per_channel { 4 } else { 2 };
            let args = vec![
                Arg::X(vec![2, 4, 3], r.vec(24).iter().map(|v| v * 2.0).collect()),
                Arg::P(vec![n], r.vec(n as usize)),
                Arg::P(vec![n], r.vec(n as usize)),
            ];
            one(op, args, vec![ai("num_groups", 2), af("epsilon", 1e-2)], if per_channel { 21 } else { 18 })
        }
        "GlobalAveragePool" => one(op, vec![x(r, &[2, 2, 3, 2])], vec![], 17),
        "GlobalMaxPool" => one(op, vec![Arg::X(vec![2, 2, 3, 2], r.distinct(24))], vec![], 17),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceSumSquare" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSumExp" => {
            let xs = shape(r, 3);
            let v = match op {
                "ReduceMax" | "ReduceMin" => r.distinct(numel(&xs)),
                "ReduceL1" => r.away(numel(&xs), 0.05),
                _ => r.vec(numel(&xs)),
            };
            let axes: Vec<i64> = if flip(r) { vec![-1] } else { vec![0, 2] };
            let keep = ai("keepdims", flip(r) as i64);
            // ReduceSum takes axes as an input since opset 13, the others since 18.
            if flip(r) || op == "ReduceSum" {
                one(op, vec![Arg::X(xs, v), Arg::I(axes, false)], vec![keep], 18)
            } else {
                one(op, vec![Arg::X(xs, v)], vec![aints("axes", &axes), keep], 17)
            }
        }
        "AveragePool" => {
            let attrs = vec![
                aints("kernel_shape", &[3, 2]),
                aints("strides", &[2, 2]),
                aints("pads", &[1, 0, 1, 1]),
                ai("ceil_mode", flip(r) as i64),
                ai("count_include_pad", flip(r) as i64),
            ];
            one(op, vec![x(r, &[1, 2, 6, 5])], attrs, 19)
        }
        "MaxPool" => {
            let attrs = vec![
                aints("kernel_shape", &[2, 2]),
                aints("strides", &[2, 1]),
                aints("dilations", &[1, 1 + pick(r, 2) as i64]),
                ai("ceil_mode", flip(r) as i64),
            ];
            one(op, vec![Arg::X(vec![1, 2, 5, 5], r.distinct(50))], attrs, 17)
        }
        "Flatten" => one(op, vec![x(r, &s3)], vec![ai("axis", -1)], 17),
        "Reshape" => one(op, vec![x(r, &s3), Arg::I(vec![0, -1], false)], vec![], 17),
        "Squeeze" => {
            let mut s = s3.clone();
            s.insert(1, 1);
            if flip(r) {
                one(op, vec![x(r, &s), Arg::I(vec![-3], false)], vec![], 17)
            } else {
                one(op, vec![x(r, &s)], vec![], 17)
            }
        }
        "Unsqueeze" => one(op, vec![x(r, &s3), Arg::I(vec![-1, 0], false)], vec![], 17),
        "Transpose" => {
            if flip(r) {
                one(op, vec![x(r, &s3)], vec![aints("perm", &[1, 2, 0])], 17)
            } else {
                one(op, vec![x(r, &s3)], vec![], 17)
            }
        }
        "Concat" => one(op, vec![x(r, &[2, 1, 3]), x(r, &[2, 2, 3])], vec![ai("axis", -2)], 17),
        "Split" => {
            // Both outputs used, one of them twice; sizes as input, or num_outputs (opset 18).
            let args = vec![x(r, &[2, 5])];
            let (split, opset) = if flip(r) {
                (node("Split", &["x0", "sizes"], &["a", "b"], vec![ai("axis", -1)]), 17)
            } else {
                (node("Split", &["x0"], &["a", "b"], vec![ai("axis", 1), ai("num_outputs", 2)]), 18)
            };
            let mut case = Case {
                args,
                nodes: vec![
                    split,
                    node("Mul", &["a", "a"], &["a2"], vec![]),
                    node("Concat", &["b", "a2"], &["y"], vec![ai("axis", 1)]),
                ],
                opset,
            };
            if case.nodes[0].input.len() == 2 {
                case.args.push(Arg::I(vec![2, 3], false));
                case.nodes[0].input[1] = format!("i{}", case.args.len() - 1);
            }
            case
        }
        "Slice" => {
            let xs = vec![3, 5, 4];
            let (starts, ends, steps) = match pick(r, 4) {
                0 => (vec![1, -1], vec![3, -5], vec![1, -1]),
                1 => (vec![-1, 0], vec![-9, 4], vec![-2, 2]),
                2 => (vec![0, 4], vec![5, 0], vec![3, -3]),
                _ => (vec![1, 1], vec![3, 4], vec![1, 1]),
            };
            let args = vec![
                x(r, &xs),
                Arg::I(starts, false),
                Arg::I(ends, false),
                Arg::I(vec![-2, 2], false),
                Arg::I(steps, false),
            ];
            one(op, args, vec![], 17)
        }
        "Pad" => {
            let mode = ["constant", "reflect", "edge", "wrap"][pick(r, 4)];
            let pads = if mode == "constant" { vec![1, -1, 2, 0] } else { vec![2, 1, 0, 2] };
            let opset = if mode == "wrap" { 19 } else { 18 };
            let args = vec![x(r, &[2, 4, 3]), Arg::I(pads, false), Arg::Absent, Arg::I(vec![1, -1], false)];
            one(op, args, vec![astr("mode", mode)], opset)
        }
        "Gather" => {
            let idx = if flip(r) { Arg::I(vec![-1], true) } else { Arg::I(vec![2, -3, 2], false) };
            one(op, vec![x(r, &[2, 3, 2]), idx], vec![ai("axis", -2)], 17)
        }
        "GatherElements" => {
            let idx = vec![0, 2, 2, -1, 1, 0];
            let mut case = one(op, vec![x(r, &[2, 3]), Arg::I(idx, false)], vec![ai("axis", 1)], 17);
            // Indices shaped like the data.
            case.nodes.insert(0, node("Reshape", &["i1", "shape"], &["idx"], vec![]));
            case.nodes[1].input[1] = "idx".into();
            case.args.push(Arg::I(vec![2, 3], false));
            case.nodes[0].input[1] = format!("i{}", case.args.len() - 1);
            case
        }
        "GatherND" => {
            // batch_dims 0: (3, 2) indices into (2, 3, 4), one repeated, one negative; 1: (2, 2, 1)
            // indices per batch row.
            let (idx, shape, batch) = if flip(r) {
                (vec![0, 1, 0, 1, 1, -1], vec![3, 2], 0)
            } else {
                (vec![2, -1, 0, 2], vec![2, 2, 1], 1)
            };
            let mut case =
                one(op, vec![x(r, &[2, 3, 4]), Arg::I(idx, false)], vec![ai("batch_dims", batch)], 17);
            case.nodes.insert(0, node("Reshape", &["i1", "shape"], &["idx"], vec![]));
            case.nodes[1].input[1] = "idx".into();
            case.args.push(Arg::I(shape, false));
            case.nodes[0].input[1] = format!("i{}", case.args.len() - 1);
            case
        }
        "TopK" => {
            let args = vec![Arg::X(vec![2, 5], r.distinct(10)), Arg::I(vec![3], false)];
            let mut case = one(op, args, vec![ai("axis", -1), ai("largest", flip(r) as i64)], 17);
            case.nodes[0].output.push("indices".into());
            case
        }
        "CumSum" => {
            let axis = if flip(r) { -1 } else { 0 };
            let attrs = vec![ai("exclusive", flip(r) as i64), ai("reverse", flip(r) as i64)];
            one(op, vec![x(r, &[3, 4]), Arg::I(vec![axis], true)], attrs, 17)
        }
        "Einsum" => {
            let (eq, shapes): (&str, Vec<Vec<i64>>) = match pick(r, 4) {
                0 => ("bhqd,bhkd->bhqk", vec![vec![2, 2, 3, 4], vec![2, 2, 2, 4]]),
                1 => ("...ij,jk", vec![vec![2, 3, 4], vec![4, 2]]),
                2 => ("ij,jk->i", vec![vec![3, 4], vec![4, 2]]),
                _ => ("bnc,c->bn", vec![vec![2, 3, 4], vec![4]]),
            };
            let args = shapes.iter().map(|s| x(r, s)).collect();
            one(op, args, vec![astr("equation", eq)], 17)
        }
        "Softmax" | "LogSoftmax" => {
            let axis = -(pick(r, 3) as i64) - 1;
            one(
                op,
                vec![Arg::X(s3.clone(), r.vec(numel(&s3)).iter().map(|v| v * 2.0).collect())],
                vec![ai("axis", axis)],
                17,
            )
        }
        "LayerNormalization" => {
            let xs = vec![2, 3, 4];
            let axis = if flip(r) { -1 } else { 1 };
            let norm: Vec<i64> = xs[if axis < 0 { 2 } else { 1 }..].to_vec();
            let args = vec![
                Arg::X(xs.clone(), r.vec(24).iter().map(|v| v * 2.0).collect()),
                Arg::P(norm.clone(), r.vec(numel(&norm))),
                Arg::P(norm.clone(), r.vec(numel(&norm))),
            ];
            one(op, args, vec![ai("axis", axis), af("epsilon", 1e-2)], 17)
        }
        "Resize" => {
            let xs =
                [1 + pick(r, 2) as i64, 1 + pick(r, 2) as i64, 1 + pick(r, 4) as i64, 1 + pick(r, 4) as i64];
            let to = if flip(r) {
                Resized::Sizes(1 + pick(r, 7) as i64, 1 + pick(r, 7) as i64)
            } else {
                let k = RESIZE_SCALES.len();
                Resized::Scales(
                    fit_scale(xs[2], RESIZE_SCALES[pick(r, k)]),
                    fit_scale(xs[3], RESIZE_SCALES[pick(r, k)]),
                )
            };
            let o = ResizeOptions {
                opset: [11, 13, 18, 19][pick(r, 4)],
                axes: flip(r),
                cubic_coeff_a: -0.75,
                exclude_outside: flip(r),
                antialias: flip(r),
            };
            let (mode, coordinates) = (pick(r, RESIZE_MODES.len()), pick(r, RESIZE_COORDINATES.len()));
            return Some((resize_case(mode, coordinates, &xs, to, o, r), 5e-2));
        }
        "Upsample" => {
            let xs = [1, 2, 1 + pick(r, 3) as i64, 1 + pick(r, 3) as i64];
            let scales = (RESIZE_SCALES[3 + pick(r, 6)], RESIZE_SCALES[3 + pick(r, 6)]);
            return Some((legacy_resize_case(pick(r, 2), flip(r), &xs, scales, r), 5e-2));
        }
        _ => return None,
    };
    Some((case, 1e-2))
}

/// The rule table is complete: every op with a gradient rule has a finite-difference case above,
/// which passes for several draws of its attributes.
#[test]
fn every_rule_has_a_finite_difference_case() {
    let ops: Vec<&str> = backend_ort::onnx_graph::rules::supported_ops().collect();
    let missing: Vec<&str> = ops.iter().copied().filter(|op| example(op, &mut Rng(1)).is_none()).collect();
    assert!(missing.is_empty(), "ops with a rule but no finite-difference case: {missing:?}");
    for op in ops {
        for seed in 1..=6u64 {
            let mut r = Rng(seed * 7919);
            let (case, eps) = example(op, &mut r).expect("checked");
            assert_eq!(
                case.nodes.iter().filter(|n| n.op_type == op).count().min(1),
                1,
                "{op}: the case runs it"
            );
            check(case, eps, seed);
        }
    }
}

/// Where ONNX Runtime's Resize departs from the plain formulas, the gradient follows it: an
/// output of the input's shape is a copy whatever the scales; `round_prefer_ceil` and
/// `round_prefer_floor` treat a coordinate within 1e-6 of a half as a tie (7 -> 2 asymmetric
/// lands on 3.4999998 in `f32`); `half_pixel_symmetric` sums in double; with antialiasing, an
/// axis that keeps its length is copied.
#[test]
fn resize_follows_onnx_runtime_at_ties() {
    let mut r = Rng(11);
    let o = ResizeOptions {
        opset: 19,
        axes: false,
        cubic_coeff_a: -0.75,
        exclude_outside: false,
        antialias: false,
    };
    // (RESIZE_MODES index, RESIZE_COORDINATES index, input, output)
    let cases = [
        // Asymmetric 7 -> 2: x = 1 lands on 3.4999998, a tie either way.
        (0, 3, [1, 2, 1, 7], Resized::Sizes(1, 2)),
        (1, 3, [1, 2, 1, 7], Resized::Sizes(1, 2)),
        // Asymmetric 10 -> 12: x = 9 lands on 7.4999995.
        (1, 3, [1, 1, 2, 10], Resized::Sizes(2, 12)),
        // half_pixel_symmetric 2 x 0.75 -> 1: 0.49999997, a tie.
        (1, 4, [1, 1, 1, 2], Resized::Scales(1.5, 0.75)),
        // half_pixel_symmetric 3 -> 1, floor: 0.99999994 summed in double (1 in f32).
        (2, 4, [1, 1, 3, 3], Resized::Sizes(1, 1)),
        // 2 x 3 by 1.25 is 2 x 3 again: a copy.
        (1, 0, [1, 1, 2, 3], Resized::Scales(1.25, 1.25)),
    ];
    for (mode, coordinates, xs, to) in cases {
        check(resize_case(mode, coordinates, &xs, to, o, &mut r), 5e-2, 11);
    }
    // Antialiased, an axis that keeps its length (2 x 1.25 -> 2) is a copy.
    let antialias = ResizeOptions { opset: 18, antialias: true, ..o };
    check(resize_case(4, 0, &[1, 1, 1, 2], Resized::Scales(2.0, 1.25), antialias, &mut r), 5e-2, 11);
    // Upsample-9 by (1.5, 1.25) of a 1 x 2 map keeps its shape: a copy.
    check(legacy_resize_case(0, false, &[1, 1, 1, 2], (1.5, 1.25), &mut r), 5e-2, 11);
}

/// What the Resize rule cannot differentiate is a typed error that says why: a crop with
/// extrapolation, antialiased downsampling, a resized batch axis.
#[test]
fn resize_refuses_what_it_cannot_differentiate() {
    let mut r = Rng(7);
    let xs = vec![2, 1, 2, 3];
    let mut x = || Arg::X(xs.clone(), r.vec(numel(&xs)));
    let linear = || astr("mode", "linear");
    let roi = Arg::P(vec![8], vec![0.0, 0.0, 0.1, 0.2, 1.0, 1.0, 0.9, 0.8]);
    let crop = astr("coordinate_transformation_mode", "tf_crop_and_resize");
    let cases = [
        (
            one(
                "Resize",
                vec![x(), roi, Arg::Absent, Arg::I(vec![2, 1, 3, 4], false)],
                vec![linear(), crop],
                13,
            ),
            "tf_crop_and_resize",
        ),
        (
            one(
                "Resize",
                vec![x(), Arg::Absent, Arg::P(vec![4], vec![1.0, 1.0, 0.5, 0.5])],
                vec![linear(), ai("antialias", 1)],
                18,
            ),
            "antialias",
        ),
        (
            one("Resize", vec![x(), Arg::Absent, Arg::P(vec![4], vec![2.0, 1.0, 1.0, 1.0])], vec![], 13),
            "axis 0",
        ),
    ];
    for (case, why) in cases {
        let shapes = probe_shapes(&case);
        match case.graph(&[]).backward_model("x0", Seed::Tensor, &shapes) {
            Err(GraphError::Unsupported { op, reason, .. }) => {
                assert_eq!(op, "Resize");
                assert!(reason.contains(why), "{why}: {reason}");
            }
            Err(e) => panic!("{why}: another error: {e}"),
            Ok(_) => panic!("{why}: differentiated"),
        }
    }
}

/// Every row of the table says something consistent: an op is differentiable or not, token-wise
/// only if differentiable.
#[test]
fn the_table_has_one_row_per_op() {
    use backend_ort::onnx_graph::rules::{Grad, Tokens, RULES};
    let mut seen = std::collections::HashSet::new();
    for row in RULES {
        assert!(seen.insert(row.op), "{} has two rows", row.op);
        if matches!(row.grad, Grad::None) {
            assert_eq!(row.tokens, Tokens::No, "{}: token-wise but not differentiable", row.op);
        }
    }
}
