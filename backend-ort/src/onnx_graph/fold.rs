//! Constant folding of shape arithmetic for a known input size, as ONNX shape inference and
//! folding do: TF-"same" padding exported by the legacy exporter computes a `Pad`'s pads from
//! `Shape → Gather → Cast → Div → Ceil → … → Concat`, and the backward rules need them constant.
//!
//! Values are evaluated elementwise with unknown elements (the batch size, when the model's batch
//! is dynamic), so a shape computed from the batch stays a computation while one computed from
//! the height and width becomes a `Constant`.

use std::collections::HashMap;

use onnx_protobuf::{tensor_proto::DataType, NodeProto, TensorProto};
use protobuf::Enum;

use super::builder::{attr, attr_t, get_i, get_ints};
use super::OnnxGraph;

/// Dimensions by tensor name, `None` where they vary between runs (the batch).
pub type Dims = HashMap<String, Vec<Option<i64>>>;

/// The largest tensor folded (elements): shape arithmetic is tiny, and a bogus shape in a
/// damaged file must not make this allocate.
const MAX_ELEMENTS: usize = 4096;

/// A partially known tensor.
#[derive(Clone, Debug, PartialEq)]
struct Value {
    /// ONNX element type code.
    dtype: i32,
    dims: Vec<usize>,
    /// Row-major elements, `None` where unknown.
    data: Vec<Option<f64>>,
}

impl Value {
    fn new(dtype: i32, dims: Vec<usize>, data: Vec<Option<f64>>) -> Option<Value> {
        (checked_numel(&dims)? == data.len() && data.len() <= MAX_ELEMENTS).then_some(Value {
            dtype,
            dims,
            data,
        })
    }

    fn known(&self) -> Option<Vec<f64>> {
        self.data.iter().copied().collect()
    }

    fn ints(&self) -> Option<Vec<i64>> {
        self.data.iter().map(|v| v.map(|v| v as i64)).collect()
    }
}

fn checked_numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn is_float(dtype: i32) -> bool {
    [DataType::FLOAT, DataType::DOUBLE, DataType::FLOAT16, DataType::BFLOAT16]
        .iter()
        .any(|d| *d as i32 == dtype)
}

/// Rounds `v` to what element type `dtype` holds.
fn normalise(dtype: i32, v: f64) -> f64 {
    if dtype == DataType::FLOAT as i32 {
        v as f32 as f64
    } else if dtype == DataType::BOOL as i32 {
        (v != 0.0) as i64 as f64
    } else if is_float(dtype) {
        v
    } else {
        v.trunc()
    }
}

/// The value of a tensor stored in the model (inline data only).
fn from_tensor(t: &TensorProto) -> Option<Value> {
    use onnx_protobuf::tensor_proto::DataLocation;
    if t.data_location.value() == DataLocation::EXTERNAL as i32 {
        return None;
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let n = checked_numel(&dims)?;
    if n > MAX_ELEMENTS {
        return None;
    }
    let raw = &t.raw_data;
    let data: Vec<f64> = match DataType::from_i32(t.data_type)? {
        DataType::INT64 if !raw.is_empty() => {
            raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64).collect()
        }
        DataType::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        DataType::INT32 if !raw.is_empty() => {
            raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64).collect()
        }
        DataType::INT32 | DataType::BOOL | DataType::INT8 | DataType::UINT8 | DataType::INT16
            if raw.is_empty() =>
        {
            t.int32_data.iter().map(|&v| v as f64).collect()
        }
        DataType::BOOL | DataType::UINT8 => raw.iter().map(|&b| b as f64).collect(),
        DataType::FLOAT if !raw.is_empty() => {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64).collect()
        }
        DataType::FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
        DataType::DOUBLE if !raw.is_empty() => {
            raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
        }
        DataType::DOUBLE => t.double_data.clone(),
        _ => return None,
    };
    Value::new(t.data_type, dims, data.into_iter().map(Some).collect())
}

/// A `Constant` node holding `value` (fully known) as output `name`.
fn constant_node(node_name: &str, name: &str, value: &Value) -> Option<NodeProto> {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = value.dims.iter().map(|&d| d as i64).collect();
    let data = value.known()?;
    t.data_type = value.dtype;
    match DataType::from_i32(value.dtype)? {
        DataType::INT64 => t.int64_data = data.iter().map(|&v| v as i64).collect(),
        DataType::INT32 | DataType::BOOL | DataType::INT8 | DataType::UINT8 | DataType::INT16 => {
            t.int32_data = data.iter().map(|&v| v as i32).collect()
        }
        DataType::FLOAT => t.float_data = data.iter().map(|&v| v as f32).collect(),
        DataType::DOUBLE => t.double_data = data,
        _ => return None,
    }
    let mut node = NodeProto::new();
    node.op_type = "Constant".into();
    node.name = format!("gradcam_fold/{node_name}/{name}");
    node.output = vec![name.into()];
    node.attribute.push(attr_t("value", t));
    Some(node)
}

/// The value of a `Constant` node.
fn constant_value(node: &NodeProto) -> Option<Value> {
    if let Some(t) = attr(node, "value").and_then(|a| a.t.as_ref()) {
        return from_tensor(t);
    }
    let (i64t, f32t) = (DataType::INT64 as i32, DataType::FLOAT as i32);
    if let Some(a) = attr(node, "value_int") {
        return Value::new(i64t, vec![], vec![Some(a.i as f64)]);
    }
    if let Some(a) = attr(node, "value_ints") {
        return Value::new(i64t, vec![a.ints.len()], a.ints.iter().map(|&v| Some(v as f64)).collect());
    }
    if let Some(a) = attr(node, "value_float") {
        return Value::new(f32t, vec![], vec![Some(a.f as f64)]);
    }
    if let Some(a) = attr(node, "value_floats") {
        return Value::new(f32t, vec![a.floats.len()], a.floats.iter().map(|&v| Some(v as f64)).collect());
    }
    None
}

/// Row-major strides.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Multi-index of flat index `i`.
fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        if dims[d] > 0 {
            idx[d] = i % dims[d];
            i /= dims[d];
        }
    }
    idx
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// Element of `v` at output multi-index `idx` of broadcast shape `out`.
fn at_broadcast(v: &Value, idx: &[usize]) -> Option<f64> {
    let lead = idx.len() - v.dims.len();
    let st = strides(&v.dims);
    let flat: usize =
        v.dims.iter().enumerate().map(|(d, &n)| if n == 1 { 0 } else { idx[lead + d] * st[d] }).sum();
    v.data[flat]
}

/// `f` elementwise over broadcast inputs; output type `dtype`.
fn elementwise(inputs: &[&Value], dtype: i32, f: impl Fn(&[f64]) -> Option<f64>) -> Option<Value> {
    let mut dims = inputs.first()?.dims.clone();
    for v in &inputs[1..] {
        dims = broadcast(&dims, &v.dims)?;
    }
    let n = checked_numel(&dims)?;
    if n > MAX_ELEMENTS {
        return None;
    }
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, &dims);
            let args: Option<Vec<f64>> = inputs.iter().map(|v| at_broadcast(v, &idx)).collect();
            args.and_then(|a| f(&a)).map(|r| normalise(dtype, r))
        })
        .collect();
    Value::new(dtype, dims, data)
}

/// An axis in `0..rank` from a possibly negative one.
fn axis(a: i64, rank: usize) -> Option<usize> {
    let a = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Picks elements of `v` by output multi-index: `map(out_idx) -> in_idx`.
fn gather_by(v: &Value, dims: Vec<usize>, map: impl Fn(&[usize]) -> Option<Vec<usize>>) -> Option<Value> {
    let n = checked_numel(&dims)?;
    if n > MAX_ELEMENTS {
        return None;
    }
    let st = strides(&v.dims);
    let data = (0..n)
        .map(|i| {
            let src = map(&unravel(i, &dims))?;
            let flat =
                src.iter().zip(&st).try_fold(0usize, |acc, (a, b)| acc.checked_add(a.checked_mul(*b)?))?;
            v.data.get(flat).copied()
        })
        .collect::<Option<Vec<_>>>()?;
    Value::new(v.dtype, dims, data)
}

/// Evaluates one node on partially known inputs; `None` when it cannot (or need not).
fn eval(
    node: &NodeProto,
    inputs: &[Option<&Value>],
    dims_of: &dyn Fn(&str) -> Option<Vec<Option<i64>>>,
) -> Option<Vec<Value>> {
    let op = node.op_type.as_str();
    let input = |i: usize| inputs.get(i).copied().flatten();
    let int64 = DataType::INT64 as i32;
    let one = |v: Option<Value>| v.map(|v| vec![v]);
    match op {
        "Shape" => {
            let dims = dims_of(node.input.first()?)?;
            let rank = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let start = clamp(get_i(node, "start", 0));
            let end = clamp(get_i(node, "end", rank));
            let part: Vec<Option<f64>> =
                dims.get(start..end.max(start))?.iter().map(|d| d.map(|v| v as f64)).collect();
            one(Value::new(int64, vec![part.len()], part))
        }
        "Size" => {
            let dims = dims_of(node.input.first()?)?;
            let n: Option<i64> = dims.iter().try_fold(1i64, |acc, d| d.and_then(|d| acc.checked_mul(d)));
            one(Value::new(int64, vec![], vec![n.map(|n| n as f64)]))
        }
        "Identity" => one(Some(input(0)?.clone())),
        "Cast" => {
            let to = get_i(node, "to", 0) as i32;
            DataType::from_i32(to)?;
            let x = input(0)?;
            let data = x.data.iter().map(|v| v.map(|v| normalise(to, v))).collect();
            one(Value::new(to, x.dims.clone(), data))
        }
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Pow" => {
            let (a, b) = (input(0)?, input(1)?);
            let float = is_float(a.dtype);
            let fmod = get_i(node, "fmod", 0) == 1;
            one(elementwise(&[a, b], a.dtype, |v| {
                let (x, y) = (v[0], v[1]);
                match op {
                    "Add" => Some(x + y),
                    "Sub" => Some(x - y),
                    "Mul" => Some(x * y),
                    "Div" if float => Some(x / y),
                    "Div" => (y != 0.0).then(|| (x / y).trunc()),
                    "Mod" if float || fmod => (y != 0.0).then(|| x % y),
                    // Integer Mod takes the divisor's sign, like Python's %.
                    "Mod" => (y != 0.0).then(|| x - y * (x / y).floor()),
                    _ => Some(x.powf(y)),
                }
            }))
        }
        "Max" | "Min" | "Sum" | "Mean" => {
            let vals: Option<Vec<&Value>> = (0..node.input.len()).map(input).collect();
            let vals = vals?;
            let dtype = vals.first()?.dtype;
            let n = vals.len() as f64;
            one(elementwise(&vals, dtype, |v| {
                Some(match op {
                    "Max" => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "Min" => v.iter().copied().fold(f64::INFINITY, f64::min),
                    "Sum" => v.iter().sum(),
                    _ => v.iter().sum::<f64>() / n,
                })
            }))
        }
        "Neg" | "Abs" | "Ceil" | "Floor" | "Round" | "Sqrt" | "Not" | "Sign" | "Reciprocal" => {
            let x = input(0)?;
            let dtype = x.dtype;
            one(elementwise(&[x], dtype, |v| {
                let x = v[0];
                Some(match op {
                    "Neg" => -x,
                    "Abs" => x.abs(),
                    "Ceil" => x.ceil(),
                    "Floor" => x.floor(),
                    // Round half to even, as ONNX.
                    "Round" => {
                        let r = x.round();
                        if (x - x.trunc()).abs() == 0.5 {
                            2.0 * (x / 2.0).round()
                        } else {
                            r
                        }
                    }
                    "Sqrt" => x.sqrt(),
                    "Not" => (x == 0.0) as i64 as f64,
                    "Sign" => {
                        if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                    }
                    _ => 1.0 / x,
                })
            }))
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" => {
            let (a, b) = (input(0)?, input(1)?);
            one(elementwise(&[a, b], DataType::BOOL as i32, |v| {
                let (x, y) = (v[0], v[1]);
                Some(match op {
                    "Equal" => x == y,
                    "Less" => x < y,
                    "Greater" => x > y,
                    "LessOrEqual" => x <= y,
                    "GreaterOrEqual" => x >= y,
                    "And" => x != 0.0 && y != 0.0,
                    _ => x != 0.0 || y != 0.0,
                } as i64 as f64)
            }))
        }
        "Where" => {
            let (c, a, b) = (input(0)?, input(1)?, input(2)?);
            one(elementwise(&[c, a, b], a.dtype, |v| Some(if v[0] != 0.0 { v[1] } else { v[2] })))
        }
        "Clip" => {
            let x = input(0)?;
            let lo = match node.input.get(1).filter(|s| !s.is_empty()) {
                Some(_) => input(1)?.known()?.first().copied(),
                None => None,
            };
            let hi = match node.input.get(2).filter(|s| !s.is_empty()) {
                Some(_) => input(2)?.known()?.first().copied(),
                None => None,
            };
            one(elementwise(&[x], x.dtype, |v| {
                let mut r = v[0];
                if let Some(lo) = lo {
                    r = r.max(lo);
                }
                if let Some(hi) = hi {
                    r = r.min(hi);
                }
                Some(r)
            }))
        }
        "Unsqueeze" | "Squeeze" => {
            let x = input(0)?;
            let axes = match get_ints(node, "axes") {
                Some(a) => Some(a),
                None => match node.input.get(1).filter(|s| !s.is_empty()) {
                    Some(_) => Some(input(1)?.ints()?),
                    None => None,
                },
            };
            let dims = if op == "Unsqueeze" {
                let axes = axes?;
                let rank = x.dims.len() + axes.len();
                let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Option<_>>()?;
                axes.sort_unstable();
                let mut dims = x.dims.clone();
                for a in axes {
                    if a > dims.len() {
                        return None;
                    }
                    dims.insert(a, 1);
                }
                dims
            } else {
                let rank = x.dims.len();
                let drop: Vec<usize> = match axes {
                    Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<Option<_>>()?,
                    None => (0..rank).filter(|&d| x.dims[d] == 1).collect(),
                };
                (0..rank).filter(|d| !drop.contains(d)).map(|d| x.dims[d]).collect()
            };
            one(Value::new(x.dtype, dims, x.data.clone()))
        }
        "Reshape" => {
            let (x, shape) = (input(0)?, input(1)?.ints()?);
            let allowzero = get_i(node, "allowzero", 0) == 1;
            let mut dims: Vec<i64> = shape
                .iter()
                .enumerate()
                .map(
                    |(i, &d)| {
                        if d == 0 && !allowzero {
                            x.dims.get(i).map(|&v| v as i64).unwrap_or(0)
                        } else {
                            d
                        }
                    },
                )
                .collect();
            let known: i64 = dims.iter().filter(|&&d| d != -1).product();
            if let Some(p) = dims.iter().position(|&d| d == -1) {
                if known <= 0 {
                    return None;
                }
                dims[p] = x.data.len() as i64 / known;
            }
            let dims: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
            one(Value::new(x.dtype, dims, x.data.clone()))
        }
        "Concat" => {
            let vals: Vec<&Value> = (0..node.input.len()).map(input).collect::<Option<_>>()?;
            let first = vals.first()?;
            let rank = first.dims.len();
            let ax = axis(get_i(node, "axis", 0), rank)?;
            if vals
                .iter()
                .any(|v| v.dims.len() != rank || (0..rank).any(|d| d != ax && v.dims[d] != first.dims[d]))
            {
                return None;
            }
            let mut dims = first.dims.clone();
            dims[ax] = vals.iter().map(|v| v.dims[ax]).sum();
            let outer: usize = dims[..ax].iter().product();
            let mut data = Vec::new();
            for o in 0..outer {
                for v in &vals {
                    let chunk: usize = v.dims[ax..].iter().product();
                    data.extend_from_slice(v.data.get(o * chunk..(o + 1) * chunk)?);
                }
            }
            one(Value::new(first.dtype, dims, data))
        }
        "Gather" => {
            let (x, idx) = (input(0)?, input(1)?);
            let ax = axis(get_i(node, "axis", 0), x.dims.len())?;
            let n = x.dims[ax] as i64;
            let index: Vec<usize> = idx
                .ints()?
                .iter()
                .map(|&i| {
                    let i = if i < 0 { i + n } else { i };
                    (0..n).contains(&i).then_some(i as usize)
                })
                .collect::<Option<_>>()?;
            let mut dims = x.dims[..ax].to_vec();
            dims.extend_from_slice(&idx.dims);
            dims.extend_from_slice(&x.dims[ax + 1..]);
            let k = idx.dims.len();
            one(gather_by(x, dims, |o| {
                let flat_i = o[ax..ax + k].iter().zip(strides(&idx.dims)).map(|(a, b)| a * b).sum::<usize>();
                let mut src = o[..ax].to_vec();
                src.push(*index.get(flat_i)?);
                src.extend_from_slice(&o[ax + k..]);
                Some(src)
            }))
        }
        "Slice" => {
            let x = input(0)?;
            let rank = x.dims.len();
            let starts = input(1)?.ints()?;
            let ends = input(2)?.ints()?;
            let axes = match node.input.get(3).filter(|s| !s.is_empty()) {
                Some(_) => input(3)?.ints()?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match node.input.get(4).filter(|s| !s.is_empty()) {
                Some(_) => input(4)?.ints()?,
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return None;
            }
            let mut first = vec![0i64; rank];
            let mut step = vec![1i64; rank];
            let mut dims = x.dims.clone();
            for k in 0..starts.len() {
                let a = axis(axes[k], rank)?;
                let (s, e) = slice_range(starts[k], ends[k], steps[k], x.dims[a] as i64)?;
                first[a] = s;
                step[a] = steps[k];
                dims[a] = slice_len(s, e, steps[k]);
            }
            one(gather_by(x, dims, |o| {
                o.iter()
                    .enumerate()
                    .map(|(d, &i)| usize::try_from(first[d] + i as i64 * step[d]).ok())
                    .collect()
            }))
        }
        "Transpose" => {
            let x = input(0)?;
            let rank = x.dims.len();
            let perm: Vec<usize> = get_ints(node, "perm")
                .unwrap_or_else(|| (0..rank as i64).rev().collect())
                .iter()
                .map(|&p| axis(p, rank))
                .collect::<Option<_>>()?;
            if perm.len() != rank {
                return None;
            }
            let dims = perm.iter().map(|&p| x.dims[p]).collect();
            one(gather_by(x, dims, |o| {
                let mut src = vec![0; rank];
                for (d, &p) in perm.iter().enumerate() {
                    src[p] = o[d];
                }
                Some(src)
            }))
        }
        "ConstantOfShape" => {
            let dims: Vec<usize> =
                input(0)?.ints()?.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
            let fill = match attr(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => from_tensor(t)?,
                None => Value::new(DataType::FLOAT as i32, vec![1], vec![Some(0.0)])?,
            };
            let v = *fill.data.first()?;
            let n = checked_numel(&dims)?;
            if n > MAX_ELEMENTS {
                return None;
            }
            one(Value::new(fill.dtype, dims, vec![v; n]))
        }
        "Range" => {
            let (s, l, d) = (input(0)?, input(1)?, input(2)?);
            let (s, l, d) = (*s.known()?.first()?, *l.known()?.first()?, *d.known()?.first()?);
            if d == 0.0 {
                return None;
            }
            let n = ((l - s) / d).ceil().max(0.0);
            if n > MAX_ELEMENTS as f64 {
                return None;
            }
            let dtype = input(0)?.dtype;
            let data = (0..n as usize).map(|i| Some(normalise(dtype, s + i as f64 * d))).collect();
            one(Value::new(dtype, vec![n as usize], data))
        }
        "Expand" => {
            let (x, shape) = (input(0)?, input(1)?.ints()?);
            let target: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
            let dims = broadcast(&x.dims, &target)?;
            let lead = dims.len() - x.dims.len();
            let xd = x.dims.clone();
            one(gather_by(x, dims, |o| {
                Some((0..xd.len()).map(|d| if xd[d] == 1 { 0 } else { o[lead + d] }).collect())
            }))
        }
        _ => None,
    }
}

/// Start and end (exclusive, may be -1 for negative steps) of a Slice on a dimension of `n`.
fn slice_range(start: i64, end: i64, step: i64, n: i64) -> Option<(i64, i64)> {
    if step == 0 {
        return None;
    }
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (norm(start), norm(end));
    Some(if step > 0 { (s.clamp(0, n), e.clamp(0, n)) } else { (s.clamp(-1, n - 1), e.clamp(-1, n - 1)) })
}

/// Number of elements a Slice picks from `s` towards `e` by `step`.
fn slice_len(s: i64, e: i64, step: i64) -> usize {
    let len = if step > 0 { (e - s + step - 1) / step } else { (s - e + (-step) - 1) / (-step) };
    len.max(0) as usize
}

impl OnnxGraph {
    /// The tensors whose dimensions [`OnnxGraph::fold_shapes`] reads: inputs of `Shape` and
    /// `Size` nodes.
    pub fn shape_reads(&self) -> Vec<String> {
        self.nodes()
            .iter()
            .filter(|n| n.op_type == "Shape" || n.op_type == "Size")
            .filter_map(|n| n.input.first().cloned())
            .collect()
    }

    /// The graph with every node whose outputs are fully known for inputs of the given
    /// dimensions replaced by `Constant` nodes, and how many were replaced. `dims` holds the
    /// dimensions of the tensors `Shape`/`Size` nodes read (from a probe run), `None` where they
    /// vary with the batch: what depends on those stays computed.
    pub fn fold_shapes(&self, dims: &Dims) -> (OnnxGraph, usize) {
        let mut known: HashMap<String, Value> = HashMap::new();
        for t in &self.model.graph.initializer {
            if t.dims.iter().product::<i64>() <= MAX_ELEMENTS as i64 {
                if let Some(v) = from_tensor(t) {
                    known.insert(t.name.clone(), v);
                }
            }
        }
        let dims_of = |name: &str| dims.get(name).cloned();
        let mut out = self.clone();
        let graph = out.model.graph.mut_or_insert_default();
        let mut nodes = Vec::with_capacity(graph.node.len());
        let mut folded = 0;
        for node in std::mem::take(&mut graph.node) {
            if node.op_type == "Constant" {
                if let (Some(v), Some(o)) = (constant_value(&node), node.output.first()) {
                    // `value_ints` and the like (the unoptimised dynamo exporter's) as a `value`
                    // tensor, the one form the backward rules read.
                    let tensor =
                        attr(&node, "value").is_none().then(|| constant_node(&node.name, o, &v)).flatten();
                    known.insert(o.clone(), v);
                    if let Some(tensor) = tensor {
                        folded += 1;
                        nodes.push(tensor);
                        continue;
                    }
                }
                nodes.push(node);
                continue;
            }
            if !node.domain.is_empty() && node.domain != "ai.onnx" {
                nodes.push(node);
                continue;
            }
            let inputs: Vec<Option<&Value>> =
                node.input.iter().map(|i| if i.is_empty() { None } else { known.get(i) }).collect();
            let values = eval(&node, &inputs, &dims_of);
            let Some(values) = values.filter(|v| v.len() == node.output.len()) else {
                nodes.push(node);
                continue;
            };
            let constants: Option<Vec<NodeProto>> = node
                .output
                .iter()
                .zip(&values)
                .map(|(o, v)| if o.is_empty() { None } else { constant_node(&node.name, o, v) })
                .collect();
            for (o, v) in node.output.iter().zip(values) {
                known.insert(o.clone(), v);
            }
            match constants {
                Some(c) => {
                    folded += 1;
                    nodes.extend(c);
                }
                None => nodes.push(node),
            }
        }
        graph.node = nodes;
        (out, folded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(dims: &[usize], data: &[f64]) -> Value {
        Value::new(DataType::INT64 as i32, dims.to_vec(), data.iter().map(|&x| Some(x)).collect()).unwrap()
    }

    #[test]
    fn slices_with_negative_steps_reverse() {
        let mut node = NodeProto::new();
        node.op_type = "Slice".into();
        node.input = ["x", "s", "e", "a", "st"].map(String::from).to_vec();
        let x = v(&[4, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        let (s, e, a, st) =
            (v(&[1], &[-1.]), v(&[1], &[-9223372036854775807.]), v(&[1], &[0.]), v(&[1], &[-1.]));
        let out = eval(&node, &[Some(&x), Some(&s), Some(&e), Some(&a), Some(&st)], &|_| None).unwrap();
        assert_eq!(out[0].known().unwrap(), [6., 7., 4., 5., 2., 3., 0., 1.]);
    }

    #[test]
    fn shape_of_a_batch_dependent_tensor_stays_unknown_on_the_batch() {
        let mut node = NodeProto::new();
        node.op_type = "Shape".into();
        node.input = vec!["x".into()];
        let dims = |_: &str| Some(vec![None, Some(3), Some(224), Some(224)]);
        let out = eval(&node, &[None], &dims).unwrap();
        assert_eq!(out[0].data, [None, Some(3.), Some(224.), Some(224.)]);
    }
}
