//! Vector-Jacobian products, one rule per ONNX op, in one table ([`RULES`]).
//!
//! A rule gets the gradients of a node's outputs (`g[i]` for output `i`, `None` where nothing
//! downstream needs it) and emits ONNX nodes computing the gradients of its inputs, in input
//! order (`None` for inputs that need none: weights, shapes, indices). Formulas follow
//! PyTorch's `derivatives.yaml`; broadcasting is summed back to each input's shape.

use onnx_protobuf::NodeProto;

use super::builder::{attr_i, attr_ints, attr_s, get_f, get_i, get_ints, get_s, Builder, FLOAT};
use super::{GraphError, OnnxGraph, Shapes};

/// Rule result: one optional gradient per input.
pub type Grads = Result<Vec<Option<String>>, GraphError>;

/// A rule: gradients of outputs in, gradients of inputs out.
pub type Rule = fn(&mut Ctx, &[Option<String>]) -> Grads;

/// Ops whose outputs carry no gradient (shapes, indices, comparisons, constants, rounding).
const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "Constant",
    "ConstantOfShape",
    "Range",
    "EyeLike",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "OneHot",
    "TopK_indices",
];

/// Whether `op`'s outputs never carry gradient.
pub fn is_non_differentiable(op: &str) -> bool {
    NON_DIFFERENTIABLE.contains(&op)
}

/// The rule for an op of the default ONNX domain, if there is one.
pub fn rule(op: &str) -> Option<Rule> {
    RULES.iter().find(|(name, _)| *name == op).map(|(_, r)| *r)
}

/// Every op with a gradient rule.
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|(name, _)| *name)
}

/// The rules. `c.x(i)`/`c.y(i)`: input/output names; `c.gy(g)`: the output's gradient;
/// `c.unbroadcast(g, i)`: sum `g` (shaped like output 0) back to input `i`'s shape.
pub const RULES: &[(&str, Rule)] = &[
    ("Identity", |c, g| Ok(vec![Some(c.gy(g)?)])),
    ("Dropout", |c, g| Ok(vec![Some(c.gy(g)?)])),
    ("Cast", |c, g| {
        let to = c.dtype_of(c.x(0));
        Ok(vec![Some(c.b.op("Cast", &[&c.gy(g)?], vec![attr_i("to", to as i64)]))])
    }),
    ("Neg", |c, g| Ok(vec![Some(c.b.op("Neg", &[&c.gy(g)?], vec![]))])),
    ("Relu", |c, g| {
        // `y > 0` iff `x > 0`: reading the output lets the forward keep Conv+Relu fused.
        let pos = c.cmp("Greater", c.y(0), 0.0);
        Ok(vec![Some(c.b.mask(&pos, &c.gy(g)?, c.dtype))])
    }),
    ("LeakyRelu", |c, g| {
        let (gy, pos) = (c.gy(g)?, c.cmp("Greater", c.x(0), 0.0));
        let neg = c.b.scale(&gy, get_f(c.node, "alpha", 0.01) as f64, c.dtype);
        Ok(vec![Some(c.b.op("Where", &[&pos, &gy, &neg], vec![]))])
    }),
    ("Clip", |c, g| {
        // Gradient only strictly inside the bounds, as PyTorch's hardtanh/ReLU6. The output is
        // strictly inside iff the input is, and reading it keeps Conv+Clip fused in the forward.
        let mut inside: Option<String> = None;
        for (k, cmp) in [(1, "Greater"), (2, "Less")] {
            if let Some(bound) = c.node.input.get(k).filter(|s| !s.is_empty()) {
                let m = c.b.op(cmp, &[c.y(0), bound], vec![]);
                inside = Some(match inside {
                    Some(prev) => c.b.op("And", &[&prev, &m], vec![]),
                    None => m,
                });
            }
        }
        let gy = c.gy(g)?;
        Ok(vec![Some(match inside {
            Some(m) => c.b.mask(&m, &gy, c.dtype),
            None => gy,
        })])
    }),
    ("Sigmoid", |c, g| {
        let one_minus = c.rsub(1.0, c.y(0));
        let d = c.b.op("Mul", &[c.y(0), &one_minus], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    ("HardSigmoid", |c, g| {
        let (alpha, beta) = (get_f(c.node, "alpha", 0.2) as f64, get_f(c.node, "beta", 0.5) as f64);
        let z = c.affine(c.x(0), alpha, beta);
        let inside = c.between(&z, 0.0, 1.0);
        let ga = c.b.scale(&c.gy(g)?, alpha, c.dtype);
        Ok(vec![Some(c.b.mask(&inside, &ga, c.dtype))])
    }),
    ("HardSwish", |c, g| {
        // d/dx x·hardsigmoid(x) = 0 below -3, 1 above 3, x/3 + 1/2 between.
        let mid = c.affine(c.x(0), 1.0 / 3.0, 0.5);
        let (above, one) = (c.cmp("Greater", c.x(0), 3.0), c.b.scalar(1.0, c.dtype));
        let d = c.b.op("Where", &[&above, &one, &mid], vec![]);
        let below = c.cmp("Less", c.x(0), -3.0);
        let zero = c.b.scalar(0.0, c.dtype);
        let d = c.b.op("Where", &[&below, &zero, &d], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    ("Tanh", |c, g| {
        let y2 = c.b.op("Mul", &[c.y(0), c.y(0)], vec![]);
        let d = c.rsub(1.0, &y2);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    ("Erf", |c, g| {
        let d = c.gauss(c.x(0), std::f64::consts::FRAC_1_SQRT_2, 2.0 / std::f64::consts::PI.sqrt());
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    ("Gelu", |c, g| {
        let d =
            if get_s(c.node, "approximate", "none") == "tanh" { c.gelu_tanh_grad() } else { c.gelu_grad() };
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    ("Sqrt", |c, g| {
        let half = c.b.scale(&c.gy(g)?, 0.5, c.dtype);
        Ok(vec![Some(c.b.op("Div", &[&half, c.y(0)], vec![]))])
    }),
    ("Exp", |c, g| Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, c.y(0)], vec![]))])),
    ("Log", |c, g| Ok(vec![Some(c.b.op("Div", &[&c.gy(g)?, c.x(0)], vec![]))])),
    ("Reciprocal", |c, g| {
        let y2 = c.b.op("Mul", &[c.y(0), c.y(0)], vec![]);
        let t = c.b.op("Mul", &[&c.gy(g)?, &y2], vec![]);
        Ok(vec![Some(c.b.op("Neg", &[&t], vec![]))])
    }),
    ("Abs", |c, g| {
        let s = c.b.op("Sign", &[c.x(0)], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &s], vec![]))])
    }),
    ("Softplus", |c, g| {
        let s = c.b.op("Sigmoid", &[c.x(0)], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &s], vec![]))])
    }),
    ("Add", |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| c.unbroadcast(&gy, i))
    }),
    ("Sub", |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| {
            let gi = if i == 0 { gy.clone() } else { c.b.op("Neg", &[&gy], vec![]) };
            c.unbroadcast(&gi, i)
        })
    }),
    ("Mul", |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| {
            let gi = c.b.op("Mul", &[&gy, c.x(1 - i)], vec![]);
            c.unbroadcast(&gi, i)
        })
    }),
    ("Div", |c, g| {
        // a / b: da = g / b, db = -g · y / b.
        let (gy, b) = (c.gy(g)?, c.x(1));
        let ga = c.b.op("Div", &[&gy, b], vec![]);
        c.each_input(|c, i| {
            let gi = if i == 0 {
                ga.clone()
            } else {
                let t = c.b.op("Mul", &[&ga, c.y(0)], vec![]);
                c.b.op("Neg", &[&t], vec![])
            };
            c.unbroadcast(&gi, i)
        })
    }),
    ("Pow", |c, g| {
        // a ^ b: da = g · b · a^(b-1), db = g · y · ln a.
        let gy = c.gy(g)?;
        c.each_input(|c, i| {
            let d = if i == 0 {
                let bm1 = c.affine(c.x(1), 1.0, -1.0);
                let p = c.b.op("Pow", &[c.x(0), &bm1], vec![]);
                c.b.op("Mul", &[&p, c.x(1)], vec![])
            } else {
                let ln = c.b.op("Log", &[c.x(0)], vec![]);
                c.b.op("Mul", &[&ln, c.y(0)], vec![])
            };
            let gi = c.b.op("Mul", &[&gy, &d], vec![]);
            c.unbroadcast(&gi, i)
        })
    }),
    ("Where", |c, g| {
        let (gy, zero) = (c.gy(g)?, c.b.scalar(0.0, c.dtype));
        c.each_input(|c, i| match i {
            0 => Ok(String::new()),
            1 => {
                let gi = c.b.op("Where", &[c.x(0), &gy, &zero], vec![]);
                c.unbroadcast(&gi, 1)
            }
            _ => {
                let gi = c.b.op("Where", &[c.x(0), &zero, &gy], vec![]);
                c.unbroadcast(&gi, 2)
            }
        })
    }),
    ("Expand", |c, g| {
        let gy = c.gy(g)?;
        Ok(vec![Some(c.unbroadcast(&gy, 0)?)])
    }),
    ("MatMul", |c, g| matmul(c, &c.gy(g)?)),
    ("Gemm", |c, g| gemm(c, &c.gy(g)?)),
    ("Conv", |c, g| conv(c, &c.gy(g)?)),
    ("ConvTranspose", |c, g| conv_transpose(c, &c.gy(g)?)),
    ("BatchNormalization", |c, g| {
        // Inference: y = x · scale / sqrt(var + eps) + shift, per channel (axis 1).
        if get_i(c.node, "training_mode", 0) != 0 || c.node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(c.unsupported("training-mode BatchNormalization"));
        }
        let eps = c.b.scalar(get_f(c.node, "epsilon", 1e-5) as f64, c.dtype);
        let var = c.b.op("Add", &[c.x(4), &eps], vec![]);
        let std = c.b.op("Sqrt", &[&var], vec![]);
        let k = c.b.op("Div", &[c.x(1), &std], vec![]);
        let rank = c.rank(c.x(0))?;
        let k = c.b.unsqueeze(&k, &(1..rank as i64 - 1).collect::<Vec<_>>());
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &k], vec![]))])
    }),
    ("GlobalAveragePool", |c, g| {
        let xs = c.shape(c.x(0))?;
        let e = c.expand_like(&c.gy(g)?, c.x(0));
        Ok(vec![Some(c.b.scale(&e, 1.0 / xs[2..].iter().product::<i64>() as f64, c.dtype))])
    }),
    ("GlobalMaxPool", |c, g| {
        let hit = c.b.op("Equal", &[c.x(0), c.y(0)], vec![]);
        let e = c.expand_like(&c.gy(g)?, c.x(0));
        Ok(vec![Some(c.b.mask(&hit, &e, c.dtype))])
    }),
    ("ReduceMean", |c, g| reduce(c, &c.gy(g)?, true)),
    ("ReduceSum", |c, g| reduce(c, &c.gy(g)?, false)),
    ("AveragePool", |c, g| average_pool(c, &c.gy(g)?)),
    ("MaxPool", |c, g| max_pool(c, &c.gy(g)?)),
    ("Flatten", |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    ("Reshape", |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    ("Squeeze", |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    ("Unsqueeze", |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    ("Transpose", |c, g| {
        let rank = c.rank(c.x(0))?;
        let perm = get_ints(c.node, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p as usize] = i as i64;
        }
        Ok(vec![Some(c.b.op("Transpose", &[&c.gy(g)?], vec![attr_ints("perm", &inverse)]))])
    }),
    ("Concat", |c, g| {
        let axis = c.axis(get_i(c.node, "axis", 0), c.y(0))?;
        let sizes =
            c.node.input.iter().map(|x| c.shape(x).map(|s| s[axis])).collect::<Result<Vec<_>, _>>()?;
        let split = c.b.ints(&sizes);
        let parts = c.b.op_n("Split", &[&c.gy(g)?, &split], sizes.len(), vec![attr_i("axis", axis as i64)]);
        Ok(parts.into_iter().map(Some).collect())
    }),
    ("Split", |c, g| {
        let axis = get_i(c.node, "axis", 0);
        let parts: Vec<String> = (0..c.node.output.len())
            .map(|i| g[i].clone().unwrap_or_else(|| c.b.zeros_like(c.y(i), c.dtype)))
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(vec![Some(c.b.op("Concat", &refs, vec![attr_i("axis", axis)]))])
    }),
    ("Slice", |c, g| slice(c, &c.gy(g)?)),
    ("Pad", |c, g| pad(c, &c.gy(g)?)),
    ("Gather", |c, g| gather(c, &c.gy(g)?)),
    ("Softmax", |c, g| {
        // y · (g - Σ g·y) along the axis.
        let axis = get_i(c.node, "axis", -1);
        let gyy = c.b.op("Mul", &[&c.gy(g)?, c.y(0)], vec![]);
        let s = c.b.reduce_sum(&gyy, &[axis], true);
        let d = c.b.op("Sub", &[&c.gy(g)?, &s], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[c.y(0), &d], vec![]))])
    }),
    ("LogSoftmax", |c, g| {
        let axis = get_i(c.node, "axis", -1);
        let s = c.b.reduce_sum(&c.gy(g)?, &[axis], true);
        let p = c.b.op("Exp", &[c.y(0)], vec![]);
        let ps = c.b.op("Mul", &[&p, &s], vec![]);
        Ok(vec![Some(c.b.op("Sub", &[&c.gy(g)?, &ps], vec![]))])
    }),
    ("LayerNormalization", |c, g| layer_norm(c, &c.gy(g)?)),
];

/// What a rule sees: the node, static shapes, and a builder to emit into.
pub struct Ctx<'a> {
    pub(crate) b: &'a mut Builder,
    graph: &'a OnnxGraph,
    shapes: &'a Shapes,
    pub(crate) node: &'a NodeProto,
    wants: Vec<bool>,
    /// Element type of the gradients (that of the node's first output).
    pub(crate) dtype: i32,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        b: &'a mut Builder,
        graph: &'a OnnxGraph,
        shapes: &'a Shapes,
        node: &'a NodeProto,
        wants: Vec<bool>,
        default_dtype: i32,
    ) -> Self {
        let dtype = node.output.first().and_then(|o| shapes.get(o)).map_or(default_dtype, |t| t.dtype);
        Ctx { b, graph, shapes, node, wants, dtype }
    }

    /// Input `i`'s name.
    pub fn x(&self, i: usize) -> &'a str {
        self.node.input.get(i).map_or("", String::as_str)
    }

    /// Output `i`'s name.
    pub fn y(&self, i: usize) -> &'a str {
        self.node.output.get(i).map_or("", String::as_str)
    }

    /// The gradient of output 0.
    pub fn gy(&self, g: &[Option<String>]) -> Result<String, GraphError> {
        g.first().cloned().flatten().ok_or_else(|| self.unsupported("gradient only of a secondary output"))
    }

    /// An error naming this node.
    pub fn unsupported(&self, reason: &str) -> GraphError {
        GraphError::Unsupported {
            op: self.node.op_type.clone(),
            node: self.node.name.clone(),
            reason: reason.into(),
        }
    }

    /// Static shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<i64>, GraphError> {
        self.shapes.get(name).map(|t| t.shape.clone()).ok_or_else(|| GraphError::MissingShape(name.into()))
    }

    fn rank(&self, name: &str) -> Result<usize, GraphError> {
        self.shape(name).map(|s| s.len())
    }

    fn dtype_of(&self, name: &str) -> i32 {
        self.shapes.get(name).map_or(FLOAT, |t| t.dtype)
    }

    /// A non-negative axis of tensor `of`.
    fn axis(&self, axis: i64, of: &str) -> Result<usize, GraphError> {
        let rank = self.rank(of)? as i64;
        Ok(if axis < 0 { axis + rank } else { axis } as usize)
    }

    /// The constant integer value of input `i` (`None` if the input is absent).
    fn const_input(&self, i: usize) -> Result<Option<Vec<i64>>, GraphError> {
        match self.node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => self
                .graph
                .const_ints(name)
                .map(Some)
                .ok_or_else(|| self.unsupported(&format!("input {i} (`{name}`) must be a constant"))),
        }
    }

    /// Runs `f` for every input that needs a gradient.
    fn each_input(&mut self, mut f: impl FnMut(&mut Self, usize) -> Result<String, GraphError>) -> Grads {
        (0..self.node.input.len())
            .map(|i| if self.wants[i] { f(self, i).map(Some) } else { Ok(None) })
            .collect()
    }

    /// `cmp(x, c)` against a scalar constant.
    fn cmp(&mut self, op: &str, x: &str, c: f64) -> String {
        let c = self.b.scalar(c, self.dtype);
        self.b.op(op, &[x, &c], vec![])
    }

    /// `lo < x < hi`.
    fn between(&mut self, x: &str, lo: f64, hi: f64) -> String {
        let (a, b) = (self.cmp("Greater", x, lo), self.cmp("Less", x, hi));
        self.b.op("And", &[&a, &b], vec![])
    }

    /// `a·x + b`.
    fn affine(&mut self, x: &str, a: f64, b: f64) -> String {
        let ax = self.b.scale(x, a, self.dtype);
        let b = self.b.scalar(b, self.dtype);
        self.b.op("Add", &[&ax, &b], vec![])
    }

    /// `c - x`.
    fn rsub(&mut self, c: f64, x: &str) -> String {
        let c = self.b.scalar(c, self.dtype);
        self.b.op("Sub", &[&c, x], vec![])
    }

    /// `k · exp(-x² / (2 s²))`.
    fn gauss(&mut self, x: &str, s: f64, k: f64) -> String {
        let x2 = self.b.op("Mul", &[x, x], vec![]);
        let e = self.b.scale(&x2, -0.5 / (s * s), self.dtype);
        let e = self.b.op("Exp", &[&e], vec![]);
        self.b.scale(&e, k, self.dtype)
    }

    /// d/dx x·Φ(x) = Φ(x) + x·φ(x).
    fn gelu_grad(&mut self) -> String {
        let x = self.x(0);
        let t = self.b.scale(x, std::f64::consts::FRAC_1_SQRT_2, self.dtype);
        let erf = self.b.op("Erf", &[&t], vec![]);
        let cdf = self.affine(&erf, 0.5, 0.5);
        let pdf = self.gauss(x, 1.0, 1.0 / (2.0 * std::f64::consts::PI).sqrt());
        let xpdf = self.b.op("Mul", &[x, &pdf], vec![]);
        self.b.op("Add", &[&cdf, &xpdf], vec![])
    }

    /// Derivative of `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
    fn gelu_tanh_grad(&mut self) -> String {
        let (x, k) = (self.x(0), (2.0 / std::f64::consts::PI).sqrt());
        let x2 = self.b.op("Mul", &[x, x], vec![]);
        let inner_x = self.affine(&x2, 0.044715, 1.0);
        let inner = self.b.op("Mul", &[x, &inner_x], vec![]);
        let inner = self.b.scale(&inner, k, self.dtype);
        let t = self.b.op("Tanh", &[&inner], vec![]);
        let left = self.affine(&t, 0.5, 0.5);
        let t2 = self.b.op("Mul", &[&t, &t], vec![]);
        let sech2 = self.rsub(1.0, &t2);
        let dinner = self.affine(&x2, 3.0 * 0.044715 * k, k);
        let r = self.b.op("Mul", &[&sech2, &dinner], vec![]);
        let r = self.b.op("Mul", &[&r, x], vec![]);
        let r = self.b.scale(&r, 0.5, self.dtype);
        self.b.op("Add", &[&left, &r], vec![])
    }

    /// `Expand(g, Shape(like))`.
    fn expand_like(&mut self, g: &str, like: &str) -> String {
        let shape = self.b.op("Shape", &[like], vec![]);
        self.b.op("Expand", &[g, &shape], vec![])
    }

    /// Sums `g` (shaped like output 0) back to input `i`'s shape.
    fn unbroadcast(&mut self, g: &str, i: usize) -> Result<String, GraphError> {
        let gs = self.shape(self.y(0))?;
        self.unbroadcast_from(g, &gs, self.x(i))
    }

    /// Sums `g` of static shape `gs` over the axes `x` was broadcast along.
    fn unbroadcast_from(&mut self, g: &str, gs: &[i64], x: &str) -> Result<String, GraphError> {
        let xs = self.shape(x)?;
        if xs == gs {
            return Ok(g.to_string());
        }
        let lead = gs.len() - xs.len();
        let axes: Vec<i64> =
            (lead..gs.len()).filter(|&a| xs[a - lead] == 1 && gs[a] != 1).map(|a| a as i64).collect();
        let mut g = g.to_string();
        if !axes.is_empty() {
            g = self.b.reduce_sum(&g, &axes, true);
        }
        if lead > 0 {
            g = self.b.reduce_sum(&g, &(0..lead as i64).collect::<Vec<_>>(), false);
        }
        Ok(g)
    }
}

/// `Transpose` swapping the last two axes of a rank-`rank` tensor.
fn swap_last(b: &mut Builder, x: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    b.op("Transpose", &[x], vec![attr_ints("perm", &perm)])
}

fn matmul(c: &mut Ctx, gy: &str) -> Grads {
    let (a, b) = (c.x(0), c.x(1));
    let (sa, sb, sy) = (c.shape(a)?, c.shape(b)?, c.shape(c.y(0))?);
    if sa.len() < 2 || sb.len() < 2 {
        // 1-D operands: y = a·b contracted; expand g back with an Unsqueeze.
        return c.each_input(|c, i| {
            let (this, other) = if i == 0 { (&sa, b) } else { (&sb, a) };
            let other_rank = if i == 0 { sb.len() } else { sa.len() };
            let g_axis = if (i == 0) == (other_rank == 1) { -1 } else { -2 };
            let gu = c.b.unsqueeze(gy, &[g_axis]);
            let prod = c.b.op("Mul", &[&gu, other], vec![]);
            if this.len() == 1 {
                let rank = sy.len() as i64 + 1;
                let keep = if g_axis == -1 { rank - 1 } else { rank - 2 };
                let axes: Vec<i64> = (0..rank).filter(|&a| a != keep).collect();
                Ok(c.b.reduce_sum(&prod, &axes, false))
            } else {
                let mut ps = sy.clone();
                ps.push(this[this.len() - 1]);
                c.unbroadcast_from(&prod, &ps, if i == 0 { a } else { b })
            }
        });
    }
    c.each_input(|c, i| {
        let (prod, this) = if i == 0 {
            let bt = swap_last(c.b, b, sb.len());
            (c.b.op("MatMul", &[gy, &bt], vec![]), &sa)
        } else {
            let at = swap_last(c.b, a, sa.len());
            (c.b.op("MatMul", &[&at, gy], vec![]), &sb)
        };
        let mut ps = sy[..sy.len() - 2].to_vec();
        ps.extend_from_slice(&this[this.len() - 2..]);
        c.unbroadcast_from(&prod, &ps, if i == 0 { a } else { b })
    })
}

fn gemm(c: &mut Ctx, gy: &str) -> Grads {
    // Y = alpha · op(A) · op(B) + beta · C.
    let alpha = get_f(c.node, "alpha", 1.0);
    let beta = get_f(c.node, "beta", 1.0);
    let (ta, tb) = (get_i(c.node, "transA", 0), get_i(c.node, "transB", 0));
    let gemm = |b: &mut Builder, x: &str, y: &str, t1: i64, t2: i64| {
        let attrs = vec![attr_i("transA", t1), attr_i("transB", t2), super::builder::attr_f("alpha", alpha)];
        b.op("Gemm", &[x, y], attrs)
    };
    c.each_input(|c, i| match i {
        0 if ta == 0 => Ok(gemm(c.b, gy, c.x(1), 0, 1 - tb)),
        0 => Ok(gemm(c.b, c.x(1), gy, tb, 1)),
        1 if tb == 0 => Ok(gemm(c.b, c.x(0), gy, 1 - ta, 0)),
        1 => Ok(gemm(c.b, gy, c.x(0), 1, ta)),
        _ => {
            let g = c.b.scale(gy, beta as f64, c.dtype);
            c.unbroadcast(&g, 2)
        }
    })
}

/// Explicit `(begin, end)` pads of a pooling/conv node, resolving `auto_pad`.
fn explicit_pads(
    c: &Ctx,
    kernel: &[i64],
    strides: &[i64],
    dilations: &[i64],
) -> Result<Vec<i64>, GraphError> {
    let n = kernel.len();
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    match get_s(c.node, "auto_pad", "NOTSET").as_str() {
        "NOTSET" => Ok(get_ints(c.node, "pads").unwrap_or_else(|| vec![0; 2 * n])),
        "VALID" => Ok(vec![0; 2 * n]),
        mode => {
            let mut pads = vec![0; 2 * n];
            for d in 0..n {
                let span = (kernel[d] - 1) * dilations[d] + 1;
                let total = ((ys[d + 2] - 1) * strides[d] + span - xs[d + 2]).max(0);
                let small = total / 2;
                let (begin, end) =
                    if mode == "SAME_LOWER" { (total - small, small) } else { (small, total - small) };
                pads[d] = begin;
                pads[d + n] = end;
            }
            Ok(pads)
        }
    }
}

/// Conv: the input's gradient is the transposed convolution of `g` with the same weights,
/// padded at the end (`output_padding`) to the input's size.
fn conv(c: &mut Ctx, gy: &str) -> Grads {
    let ws = c.shape(c.x(1))?;
    let kernel = ws[2..].to_vec();
    let n = kernel.len();
    let strides = get_ints(c.node, "strides").unwrap_or_else(|| vec![1; n]);
    let dilations = get_ints(c.node, "dilations").unwrap_or_else(|| vec![1; n]);
    let mut pads = explicit_pads(c, &kernel, &strides, &dilations)?;
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    let mut out_pad = vec![0; n];
    for d in 0..n {
        let full = strides[d] * (ys[d + 2] - 1) + (kernel[d] - 1) * dilations[d] + 1 - pads[d] - pads[d + n];
        let extra = xs[d + 2] - full;
        if extra >= 0 {
            out_pad[d] = extra;
        } else {
            pads[d + n] -= extra;
        }
    }
    let attrs = vec![
        attr_ints("strides", &strides),
        attr_ints("dilations", &dilations),
        attr_ints("pads", &pads),
        attr_ints("output_padding", &out_pad),
        attr_ints("kernel_shape", &kernel),
        attr_i("group", get_i(c.node, "group", 1)),
    ];
    let gx = c.b.op("ConvTranspose", &[gy, c.x(1)], attrs);
    let mut out = vec![Some(gx), None];
    if c.wants.get(2).copied().unwrap_or(false) {
        let axes: Vec<i64> = (0..ys.len() as i64).filter(|&a| a != 1).collect();
        out.push(Some(c.b.reduce_sum(gy, &axes, false)));
    }
    Ok(out)
}

/// ConvTranspose: the input's gradient is the convolution of `g` with the same weights.
fn conv_transpose(c: &mut Ctx, gy: &str) -> Grads {
    if get_ints(c.node, "output_shape").is_some() || get_s(c.node, "auto_pad", "NOTSET") != "NOTSET" {
        return Err(c.unsupported("output_shape/auto_pad: give explicit pads"));
    }
    let ws = c.shape(c.x(1))?;
    let mut attrs = vec![attr_ints("kernel_shape", &ws[2..]), attr_i("group", get_i(c.node, "group", 1))];
    for key in ["strides", "dilations", "pads"] {
        if let Some(v) = get_ints(c.node, key) {
            attrs.push(attr_ints(key, &v));
        }
    }
    Ok(vec![Some(c.b.op("Conv", &[gy, c.x(1)], attrs)), None, None])
}

fn reduce(c: &mut Ctx, gy: &str, mean: bool) -> Grads {
    let xs = c.shape(c.x(0))?;
    let rank = xs.len() as i64;
    let axes = match get_ints(c.node, "axes") {
        Some(a) => Some(a),
        None => c.const_input(1)?,
    };
    let axes: Vec<i64> = match axes.filter(|a| !a.is_empty()) {
        Some(a) => a.iter().map(|&a| if a < 0 { a + rank } else { a }).collect(),
        None if get_i(c.node, "noop_with_empty_axes", 0) == 1 => return Ok(vec![Some(gy.to_string())]),
        None => (0..rank).collect(),
    };
    let mut g = gy.to_string();
    if get_i(c.node, "keepdims", 1) == 0 {
        let mut sorted = axes.clone();
        sorted.sort();
        g = c.b.unsqueeze(&g, &sorted);
    }
    let mut g = c.expand_like(&g, c.x(0));
    if mean {
        let n: i64 = axes.iter().map(|&a| xs[a as usize]).product();
        g = c.b.scale(&g, 1.0 / n as f64, c.dtype);
    }
    Ok(vec![Some(g), None])
}

/// A depthwise all-ones kernel `(C, 1, k...)`.
fn ones_kernel(c: &mut Ctx, channels: i64, kernel: &[i64]) -> String {
    let name = c.b.fresh("ones_kernel");
    let count = (channels * kernel.iter().product::<i64>()) as usize;
    let mut t = super::builder::tensor_scalar(&name, 1.0, c.dtype);
    t.dims = [channels, 1].iter().chain(kernel).copied().collect();
    if c.dtype == super::builder::DOUBLE {
        t.double_data = vec![1.0; count];
    } else {
        t.float_data = vec![1.0; count];
    }
    c.b.initializers.push(t);
    name
}

/// AveragePool is linear: its gradient spreads `g / divisor` over each window, a depthwise
/// transposed convolution with an all-ones kernel.
fn average_pool(c: &mut Ctx, gy: &str) -> Grads {
    let kernel = get_ints(c.node, "kernel_shape").ok_or_else(|| c.unsupported("no kernel_shape"))?;
    let n = kernel.len();
    let strides = get_ints(c.node, "strides").unwrap_or_else(|| vec![1; n]);
    let dilations = get_ints(c.node, "dilations").unwrap_or_else(|| vec![1; n]);
    let pads = explicit_pads(c, &kernel, &strides, &dilations)?;
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    let mut out_pad = vec![0; n];
    for d in 0..n {
        let full = strides[d] * (ys[d + 2] - 1) + (kernel[d] - 1) * dilations[d] + 1 - pads[d] - pads[d + n];
        if full > xs[d + 2] {
            return Err(c.unsupported("ceil_mode windows past the input"));
        }
        out_pad[d] = xs[d + 2] - full;
    }
    let size: i64 = kernel.iter().product();
    let padded = pads.iter().any(|&p| p != 0);
    let scaled = if get_i(c.node, "count_include_pad", 0) == 0 && padded {
        // Divisor = number of real (non-pad) elements in each window.
        let ones = c.b.zeros_like(c.x(0), c.dtype);
        let ones = c.affine(&ones, 1.0, 1.0);
        let mut attrs = vec![attr_ints("kernel_shape", &kernel), attr_ints("strides", &strides)];
        attrs.push(attr_ints("pads", &pads));
        attrs.push(attr_i("count_include_pad", 1));
        let frac = c.b.op("AveragePool", &[&ones], attrs);
        let count = c.b.scale(&frac, size as f64, c.dtype);
        c.b.op("Div", &[gy, &count], vec![])
    } else {
        c.b.scale(gy, 1.0 / size as f64, c.dtype)
    };
    let w = ones_kernel(c, xs[1], &kernel);
    let attrs = vec![
        attr_ints("strides", &strides),
        attr_ints("dilations", &dilations),
        attr_ints("pads", &pads),
        attr_ints("output_padding", &out_pad),
        attr_ints("kernel_shape", &kernel),
        attr_i("group", xs[1]),
    ];
    Ok(vec![Some(c.b.op("ConvTranspose", &[&scaled, &w], attrs))])
}

/// MaxPool: recompute with indices and scatter-add `g` onto the arg-max positions.
fn max_pool(c: &mut Ctx, gy: &str) -> Grads {
    if c.b.opset < 16 {
        return Err(c.unsupported("needs opset 16 (ScatterElements with reduction)"));
    }
    let mut attrs: Vec<_> = c.node.attribute.iter().filter(|a| a.name != "storage_order").cloned().collect();
    attrs.push(attr_i("storage_order", 0));
    let outs = c.b.op_n("MaxPool", &[c.x(0)], 2, attrs);
    let flat_idx = c.b.reshape(&outs[1], &[-1]);
    let flat_g = c.b.reshape(gy, &[-1]);
    let size = c.b.op("Size", &[c.x(0)], vec![]);
    let size = c.b.reshape(&size, &[1]);
    let mut zero = super::builder::tensor_scalar("value", 0.0, c.dtype);
    zero.dims = vec![1];
    let zeros = c.b.op("ConstantOfShape", &[&size], vec![super::builder::attr_t("value", zero)]);
    let scattered = c.b.op(
        "ScatterElements",
        &[&zeros, &flat_idx, &flat_g],
        vec![attr_i("axis", 0), attr_s("reduction", "add")],
    );
    Ok(vec![Some(c.b.reshape_like(&scattered, c.x(0)))])
}

/// Slice with unit steps: pad `g` back with zeros to the input's extent.
fn slice(c: &mut Ctx, gy: &str) -> Grads {
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    let rank = xs.len() as i64;
    let starts = c.const_input(1)?.unwrap_or_default();
    let axes = c.const_input(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = c.const_input(4)?.unwrap_or_else(|| vec![1; starts.len()]);
    if steps.iter().any(|&s| s != 1) {
        return Err(c.unsupported("steps other than 1"));
    }
    let mut pads = vec![0; 2 * xs.len()];
    for (k, &axis) in axes.iter().enumerate() {
        let a = if axis < 0 { axis + rank } else { axis } as usize;
        let dim = xs[a];
        let s = if starts[k] < 0 { starts[k] + dim } else { starts[k] }.clamp(0, dim);
        pads[a] = s;
        pads[a + xs.len()] = dim - s - ys[a];
    }
    let pads = c.b.ints(&pads);
    Ok(vec![Some(c.b.op("Pad", &[gy, &pads], vec![]))])
}

/// Constant Pad: slice the padding off `g`.
fn pad(c: &mut Ctx, gy: &str) -> Grads {
    if get_s(c.node, "mode", "constant") != "constant" {
        return Err(c.unsupported("only constant padding"));
    }
    let xs = c.shape(c.x(0))?;
    let rank = xs.len() as i64;
    let pads = c.const_input(1)?.ok_or_else(|| c.unsupported("no pads"))?;
    let axes = c.const_input(3)?.unwrap_or_else(|| (0..rank).collect());
    let k = axes.len();
    if pads.iter().any(|&p| p < 0) {
        return Err(c.unsupported("negative pads"));
    }
    let axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + rank } else { a }).collect();
    let starts: Vec<i64> = pads[..k].to_vec();
    let ends: Vec<i64> = axes.iter().zip(&starts).map(|(&a, &s)| s + xs[a as usize]).collect();
    let (s, e, a) = (c.b.ints(&starts), c.b.ints(&ends), c.b.ints(&axes));
    Ok(vec![Some(c.b.op("Slice", &[gy, &s, &e, &a], vec![]))])
}

/// Gather along an axis: scatter-add `g` back to the gathered positions.
fn gather(c: &mut Ctx, gy: &str) -> Grads {
    let (xs, is) = (c.shape(c.x(0))?, c.shape(c.x(1))?);
    let axis = c.axis(get_i(c.node, "axis", 0), c.x(0))?;
    let rank = xs.len();
    if let (true, Some(idx)) = (is.is_empty(), c.graph.const_ints(c.x(1))) {
        // One constant index (a ViT's class token): pad the slice back into place.
        let i = if idx[0] < 0 { idx[0] + xs[axis] } else { idx[0] };
        let g = c.b.unsqueeze(gy, &[axis as i64]);
        let mut pads = vec![0; 2 * rank];
        pads[axis] = i;
        pads[axis + rank] = xs[axis] - i - 1;
        let pads = c.b.ints(&pads);
        return Ok(vec![Some(c.b.op("Pad", &[&g, &pads], vec![])), None]);
    }
    if c.b.opset < 16 {
        return Err(c.unsupported("needs opset 16 (ScatterElements with reduction)"));
    }
    let n: i64 = is.iter().product();
    let mut target: Vec<i64> = vec![0; axis];
    target.push(n);
    target.extend_from_slice(&xs[axis + 1..]);
    let g = c.b.reshape(gy, &target);
    let mut idx_shape = vec![1; rank];
    idx_shape[axis] = n;
    let idx = c.b.reshape(c.x(1), &idx_shape);
    let idx = c.expand_like(&idx, &g);
    let zeros = c.b.zeros_like(c.x(0), c.dtype);
    let attrs = vec![attr_i("axis", axis as i64), attr_s("reduction", "add")];
    Ok(vec![Some(c.b.op("ScatterElements", &[&zeros, &idx, &g], attrs)), None])
}

/// LayerNormalization over axes `axis..`: `rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂))`, `ĝ = g · scale`.
fn layer_norm(c: &mut Ctx, gy: &str) -> Grads {
    let x = c.x(0);
    let rank = c.rank(x)? as i64;
    let axis = get_i(c.node, "axis", -1);
    let axes: Vec<i64> = ((if axis < 0 { axis + rank } else { axis })..rank).collect();
    let mean = c.b.reduce_mean(x, &axes, true);
    let xc = c.b.op("Sub", &[x, &mean], vec![]);
    let sq = c.b.op("Mul", &[&xc, &xc], vec![]);
    let var = c.b.reduce_mean(&sq, &axes, true);
    let eps = c.b.scalar(get_f(c.node, "epsilon", 1e-5) as f64, c.dtype);
    let var = c.b.op("Add", &[&var, &eps], vec![]);
    let std = c.b.op("Sqrt", &[&var], vec![]);
    let rstd = c.b.op("Reciprocal", &[&std], vec![]);
    let xhat = c.b.op("Mul", &[&xc, &rstd], vec![]);
    let gh = c.b.op("Mul", &[gy, c.x(1)], vec![]);
    let m1 = c.b.reduce_mean(&gh, &axes, true);
    let ghx = c.b.op("Mul", &[&gh, &xhat], vec![]);
    let m2 = c.b.reduce_mean(&ghx, &axes, true);
    let t = c.b.op("Mul", &[&xhat, &m2], vec![]);
    let d = c.b.op("Sub", &[&gh, &m1], vec![]);
    let d = c.b.op("Sub", &[&d, &t], vec![]);
    Ok(vec![Some(c.b.op("Mul", &[&d, &rstd], vec![]))])
}
