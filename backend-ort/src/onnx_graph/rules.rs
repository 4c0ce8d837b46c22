//! Vector-Jacobian products, one rule per ONNX op, in one table ([`RULES`]).
//!
//! A rule gets the gradients of a node's outputs (`g[i]` for output `i`, `None` where nothing
//! downstream needs it) and emits ONNX nodes computing the gradients of its inputs, in input
//! order (`None` for inputs that need none: weights, shapes, indices). Formulas follow
//! PyTorch's `derivatives.yaml`; broadcasting is summed back to each input's shape.

use std::collections::HashMap;

use onnx_protobuf::{NodeProto, TensorProto};

use super::builder::{attr_i, attr_ints, attr_s, get_f, get_i, get_ints, get_s, Builder, FLOAT};
use super::{GraphError, Shapes};

/// Rule result: one optional gradient per input.
pub type Grads = Result<Vec<Option<String>>, GraphError>;

/// A rule: gradients of outputs in, gradients of inputs out.
pub type Rule = fn(&mut Ctx, &[Option<String>]) -> Grads;

/// How gradients pass through an op.
#[derive(Clone, Copy)]
pub enum Grad {
    /// Its outputs carry no gradient (shapes, indices, comparisons, constants, rounding).
    None,
    /// Its vector-Jacobian product.
    Rule(Rule),
}

/// Whether an op treats the positions of a token axis (`(B, N, D)` inputs) independently, so
/// that class-token pruning ([`super::OnnxGraph::prune_tokens`]) may run it on one token, and which of
/// its inputs may then carry tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    /// Not token-wise (or not known to be).
    No,
    /// Elementwise: every input carries tokens, or is a scalar or a per-feature vector.
    Elementwise,
    /// `MatMul` of tokens by a 2-D weight.
    MatMul,
    /// Normalisation or softmax over the feature axis (`axis` -1 or 2).
    LastAxis,
    /// A reduction with `keepdims` over feature axes (axes attribute).
    Reduce,
}

/// One row of the op table: an op of the default ONNX domain and what the backward pass knows
/// about it.
#[derive(Clone, Copy)]
pub struct OpRule {
    /// The op type.
    pub op: &'static str,
    /// Its gradient.
    pub grad: Grad,
    /// Whether it is token-wise.
    pub tokens: Tokens,
}

impl OpRule {
    const fn new(op: &'static str, tokens: Tokens, rule: Rule) -> OpRule {
        OpRule { op, grad: Grad::Rule(rule), tokens }
    }

    const fn none(op: &'static str) -> OpRule {
        OpRule { op, grad: Grad::None, tokens: Tokens::No }
    }
}

/// The table's row for `op`.
pub fn op_rule(op: &str) -> Option<&'static OpRule> {
    RULES.iter().find(|r| r.op == op)
}

/// Whether `op`'s outputs never carry gradient.
pub fn is_non_differentiable(op: &str) -> bool {
    op_rule(op).is_some_and(|r| matches!(r.grad, Grad::None))
}

/// The rule for an op of the default ONNX domain, if there is one.
pub fn rule(op: &str) -> Option<Rule> {
    match op_rule(op)?.grad {
        Grad::Rule(r) => Some(r),
        Grad::None => None,
    }
}

/// How `op` treats a token axis ([`Tokens::No`] for ops not in the table).
pub fn tokens(op: &str) -> Tokens {
    op_rule(op).map_or(Tokens::No, |r| r.tokens)
}

/// Every op with a gradient rule.
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    RULES.iter().filter(|r| matches!(r.grad, Grad::Rule(_))).map(|r| r.op)
}

/// The op table. In rules, `c.x(i)`/`c.y(i)`: input/output names; `c.gy(g)`: the output's
/// gradient; `c.unbroadcast(g, i)`: sum `g` (shaped like output 0) back to input `i`'s shape.
pub const RULES: &[OpRule] = &[
    OpRule::new("Identity", Tokens::Elementwise, |c, g| Ok(vec![Some(c.gy(g)?)])),
    OpRule::new("Dropout", Tokens::Elementwise, |c, g| Ok(vec![Some(c.gy(g)?)])),
    OpRule::new("Cast", Tokens::Elementwise, |c, g| {
        let to = c.dtype_of(c.x(0));
        Ok(vec![Some(c.b.op("Cast", &[&c.gy(g)?], vec![attr_i("to", to as i64)]))])
    }),
    OpRule::new("Neg", Tokens::Elementwise, |c, g| Ok(vec![Some(c.b.op("Neg", &[&c.gy(g)?], vec![]))])),
    OpRule::new("Relu", Tokens::Elementwise, |c, g| {
        // `y > 0` iff `x > 0`: reading the output lets the forward keep Conv+Relu fused.
        let gy = c.unexpanded(&c.gy(g)?, c.y(0));
        let pos = c.cmp("Greater", c.y(0), 0.0);
        if c.guided {
            // Guided backprop (pytorch-grad-cam's GuidedBackpropReLU): positive gradients only.
            let rising = c.cmp("Greater", &gy, 0.0);
            let both = c.b.op("And", &[&pos, &rising], vec![]);
            return Ok(vec![Some(c.b.mask(&both, &gy, c.dtype))]);
        }
        Ok(vec![Some(c.b.mask(&pos, &gy, c.dtype))])
    }),
    OpRule::new("LeakyRelu", Tokens::Elementwise, |c, g| {
        let (gy, pos) = (c.gy(g)?, c.cmp("Greater", c.x(0), 0.0));
        let neg = c.b.scale(&gy, get_f(c.node, "alpha", 0.01) as f64, c.dtype);
        Ok(vec![Some(c.b.op("Where", &[&pos, &gy, &neg], vec![]))])
    }),
    OpRule::new("Clip", Tokens::Elementwise, |c, g| {
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
        Ok(vec![Some(match inside {
            // The bounds are scalars: the mask is shaped like the output.
            Some(m) => {
                let gy = c.unexpanded(&c.gy(g)?, c.y(0));
                c.b.mask(&m, &gy, c.dtype)
            }
            None => c.gy(g)?,
        })])
    }),
    OpRule::new("Sigmoid", Tokens::Elementwise, |c, g| {
        let one_minus = c.rsub(1.0, c.y(0));
        let d = c.b.op("Mul", &[c.y(0), &one_minus], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("HardSigmoid", Tokens::Elementwise, |c, g| {
        let (alpha, beta) = (get_f(c.node, "alpha", 0.2) as f64, get_f(c.node, "beta", 0.5) as f64);
        let z = c.affine(c.x(0), alpha, beta);
        let inside = c.between(&z, 0.0, 1.0);
        let ga = c.b.scale(&c.gy(g)?, alpha, c.dtype);
        Ok(vec![Some(c.b.mask(&inside, &ga, c.dtype))])
    }),
    OpRule::new("HardSwish", Tokens::Elementwise, |c, g| {
        // d/dx x·hardsigmoid(x) = 0 below -3, 1 above 3, x/3 + 1/2 between.
        let mid = c.affine(c.x(0), 1.0 / 3.0, 0.5);
        let (above, one) = (c.cmp("Greater", c.x(0), 3.0), c.b.scalar(1.0, c.dtype));
        let d = c.b.op("Where", &[&above, &one, &mid], vec![]);
        let below = c.cmp("Less", c.x(0), -3.0);
        let zero = c.b.scalar(0.0, c.dtype);
        let d = c.b.op("Where", &[&below, &zero, &d], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Tanh", Tokens::Elementwise, |c, g| {
        let y2 = c.b.op("Mul", &[c.y(0), c.y(0)], vec![]);
        let d = c.rsub(1.0, &y2);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Erf", Tokens::Elementwise, |c, g| {
        let d = c.gauss(c.x(0), std::f64::consts::FRAC_1_SQRT_2, 2.0 / std::f64::consts::PI.sqrt());
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Gelu", Tokens::Elementwise, |c, g| {
        let d =
            if get_s(c.node, "approximate", "none") == "tanh" { c.gelu_tanh_grad() } else { c.gelu_grad() };
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Sqrt", Tokens::Elementwise, |c, g| {
        let half = c.b.scale(&c.gy(g)?, 0.5, c.dtype);
        Ok(vec![Some(c.b.op("Div", &[&half, c.y(0)], vec![]))])
    }),
    OpRule::new("Exp", Tokens::Elementwise, |c, g| {
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, c.y(0)], vec![]))])
    }),
    OpRule::new("Log", Tokens::No, |c, g| Ok(vec![Some(c.b.op("Div", &[&c.gy(g)?, c.x(0)], vec![]))])),
    OpRule::new("Reciprocal", Tokens::Elementwise, |c, g| {
        let y2 = c.b.op("Mul", &[c.y(0), c.y(0)], vec![]);
        let t = c.b.op("Mul", &[&c.gy(g)?, &y2], vec![]);
        Ok(vec![Some(c.b.op("Neg", &[&t], vec![]))])
    }),
    OpRule::new("Abs", Tokens::Elementwise, |c, g| {
        let s = c.b.op("Sign", &[c.x(0)], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &s], vec![]))])
    }),
    OpRule::new("Softplus", Tokens::Elementwise, |c, g| {
        let s = c.b.op("Sigmoid", &[c.x(0)], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &s], vec![]))])
    }),
    OpRule::new("Add", Tokens::Elementwise, |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| c.unbroadcast(&gy, i))
    }),
    OpRule::new("Sub", Tokens::Elementwise, |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| {
            let gi = if i == 0 { gy.clone() } else { c.b.op("Neg", &[&gy], vec![]) };
            c.unbroadcast(&gi, i)
        })
    }),
    OpRule::new("Mul", Tokens::Elementwise, |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| {
            let gi = c.b.op("Mul", &[&gy, c.x(1 - i)], vec![]);
            c.unbroadcast(&gi, i)
        })
    }),
    OpRule::new("Div", Tokens::Elementwise, |c, g| {
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
    OpRule::new("Pow", Tokens::Elementwise, |c, g| {
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
    OpRule::new("Where", Tokens::No, |c, g| {
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
    OpRule::new("Expand", Tokens::No, |c, g| {
        let gy = c.gy(g)?;
        Ok(vec![Some(c.unbroadcast(&gy, 0)?)])
    }),
    OpRule::new("MatMul", Tokens::MatMul, |c, g| matmul(c, &c.gy(g)?)),
    OpRule::new("Gemm", Tokens::No, |c, g| gemm(c, &c.gy(g)?)),
    OpRule::new("Conv", Tokens::No, |c, g| conv(c, &c.gy(g)?)),
    OpRule::new("ConvTranspose", Tokens::No, |c, g| conv_transpose(c, &c.gy(g)?)),
    OpRule::new("BatchNormalization", Tokens::No, |c, g| {
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
    OpRule::new("GlobalAveragePool", Tokens::No, |c, g| {
        let xs = c.shape(c.x(0))?;
        let area: i64 = xs.get(2..).ok_or_else(|| c.unsupported("an input of rank < 2"))?.iter().product();
        // Scaled before it is expanded: the same numbers, one pass over the small tensor.
        let scaled = c.b.scale(&c.gy(g)?, 1.0 / area.max(1) as f64, c.dtype);
        Ok(vec![Some(c.expand_like(&scaled, c.x(0)))])
    }),
    OpRule::new("GlobalMaxPool", Tokens::No, |c, g| {
        let hit = c.b.op("Equal", &[c.x(0), c.y(0)], vec![]);
        let e = c.expand_like(&c.gy(g)?, c.x(0));
        Ok(vec![Some(c.b.mask(&hit, &e, c.dtype))])
    }),
    OpRule::new("ReduceMean", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::Mean)),
    OpRule::new("ReduceSum", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::Sum)),
    OpRule::new("ReduceMax", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::Extreme)),
    OpRule::new("ReduceMin", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::Extreme)),
    OpRule::new("ReduceSumSquare", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::SumSquare)),
    OpRule::new("ReduceL1", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::L1)),
    OpRule::new("ReduceL2", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::L2)),
    OpRule::new("ReduceLogSumExp", Tokens::Reduce, |c, g| reduce(c, &c.gy(g)?, Reduce::LogSumExp)),
    OpRule::new("AveragePool", Tokens::No, |c, g| average_pool(c, &c.gy(g)?)),
    OpRule::new("MaxPool", Tokens::No, |c, g| max_pool(c, &c.gy(g)?)),
    OpRule::new("Flatten", Tokens::No, |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    OpRule::new("Reshape", Tokens::No, |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    OpRule::new("Squeeze", Tokens::No, |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    OpRule::new("Unsqueeze", Tokens::No, |c, g| Ok(vec![Some(c.b.reshape_like(&c.gy(g)?, c.x(0)))])),
    OpRule::new("Transpose", Tokens::No, |c, g| {
        let rank = c.rank(c.x(0))?;
        let perm = get_ints(c.node, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank as i64).collect::<Vec<_>>() {
            return Err(c.unsupported("a perm that is not a permutation of the axes"));
        }
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p as usize] = i as i64;
        }
        Ok(vec![Some(c.b.op("Transpose", &[&c.gy(g)?], vec![attr_ints("perm", &inverse)]))])
    }),
    OpRule::new("Concat", Tokens::No, |c, g| {
        let axis = c.axis(get_i(c.node, "axis", 0), c.y(0))?;
        let sizes = c
            .node
            .input
            .iter()
            .map(|x| c.shape(x)?.get(axis).copied().ok_or_else(|| c.unsupported("inputs of different ranks")))
            .collect::<Result<Vec<_>, _>>()?;
        let split = c.b.ints(&sizes);
        let parts = c.b.op_n("Split", &[&c.gy(g)?, &split], sizes.len(), vec![attr_i("axis", axis as i64)]);
        Ok(parts.into_iter().map(Some).collect())
    }),
    OpRule::new("Split", Tokens::No, |c, g| {
        let axis = get_i(c.node, "axis", 0);
        let parts: Vec<String> = (0..c.node.output.len())
            .map(|i| g[i].clone().unwrap_or_else(|| c.b.zeros_like(c.y(i), c.dtype)))
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(vec![Some(c.b.op("Concat", &refs, vec![attr_i("axis", axis)]))])
    }),
    OpRule::new("Slice", Tokens::No, |c, g| slice(c, &c.gy(g)?)),
    OpRule::new("Pad", Tokens::No, |c, g| pad(c, &c.gy(g)?)),
    OpRule::new("Gather", Tokens::No, |c, g| gather(c, &c.gy(g)?)),
    OpRule::new("Softmax", Tokens::LastAxis, |c, g| {
        // y · (g - Σ g·y) along the axis.
        let axis = get_i(c.node, "axis", -1);
        let gyy = c.b.op("Mul", &[&c.gy(g)?, c.y(0)], vec![]);
        let s = c.b.reduce_sum(&gyy, &[axis], true);
        let d = c.b.op("Sub", &[&c.gy(g)?, &s], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[c.y(0), &d], vec![]))])
    }),
    OpRule::new("LogSoftmax", Tokens::No, |c, g| {
        let axis = get_i(c.node, "axis", -1);
        let s = c.b.reduce_sum(&c.gy(g)?, &[axis], true);
        let p = c.b.op("Exp", &[c.y(0)], vec![]);
        let ps = c.b.op("Mul", &[&p, &s], vec![]);
        Ok(vec![Some(c.b.op("Sub", &[&c.gy(g)?, &ps], vec![]))])
    }),
    OpRule::new("LayerNormalization", Tokens::LastAxis, |c, g| layer_norm(c, &c.gy(g)?)),
    OpRule::new("CastLike", Tokens::Elementwise, |c, g| {
        let to = c.dtype_of(c.x(0));
        Ok(vec![Some(c.b.op("Cast", &[&c.gy(g)?], vec![attr_i("to", to as i64)])), None])
    }),
    OpRule::new("Sin", Tokens::Elementwise, |c, g| {
        let d = c.b.op("Cos", &[c.x(0)], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Cos", Tokens::Elementwise, |c, g| {
        let s = c.b.op("Sin", &[c.x(0)], vec![]);
        let d = c.b.op("Neg", &[&s], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Elu", Tokens::Elementwise, |c, g| {
        // x > 0: 1; else alpha·exp(x) = y + alpha.
        let alpha = get_f(c.node, "alpha", 1.0) as f64;
        let pos = c.cmp("Greater", c.x(0), 0.0);
        let (one, neg) = (c.b.scalar(1.0, c.dtype), c.affine(c.y(0), 1.0, alpha));
        let d = c.b.op("Where", &[&pos, &one, &neg], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Celu", Tokens::Elementwise, |c, g| {
        // x > 0: 1; else exp(x / alpha).
        let alpha = get_f(c.node, "alpha", 1.0) as f64;
        let pos = c.cmp("Greater", c.x(0), 0.0);
        let e = c.b.scale(c.x(0), 1.0 / alpha, c.dtype);
        let e = c.b.op("Exp", &[&e], vec![]);
        let one = c.b.scalar(1.0, c.dtype);
        let d = c.b.op("Where", &[&pos, &one, &e], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("Selu", Tokens::Elementwise, |c, g| {
        // x > 0: gamma; else gamma·alpha·exp(x) = y + gamma·alpha.
        let alpha = get_f(c.node, "alpha", 1.673_263_2) as f64;
        let gamma = get_f(c.node, "gamma", 1.050_701) as f64;
        let pos = c.cmp("Greater", c.x(0), 0.0);
        let (gam, neg) = (c.b.scalar(gamma, c.dtype), c.affine(c.y(0), 1.0, gamma * alpha));
        let d = c.b.op("Where", &[&pos, &gam, &neg], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("ThresholdedRelu", Tokens::Elementwise, |c, g| {
        let above = c.cmp("Greater", c.x(0), get_f(c.node, "alpha", 1.0) as f64);
        Ok(vec![Some(c.b.mask(&above, &c.gy(g)?, c.dtype))])
    }),
    OpRule::new("Softsign", Tokens::Elementwise, |c, g| {
        // 1 / (1 + |x|)².
        let a = c.b.op("Abs", &[c.x(0)], vec![]);
        let a = c.affine(&a, 1.0, 1.0);
        let a2 = c.b.op("Mul", &[&a, &a], vec![]);
        Ok(vec![Some(c.b.op("Div", &[&c.gy(g)?, &a2], vec![]))])
    }),
    OpRule::new("Mish", Tokens::Elementwise, |c, g| {
        // d/dx x·tanh(softplus(x)) = tanh(sp) + x·sigmoid(x)·(1 - tanh(sp)²).
        let sp = c.b.op("Softplus", &[c.x(0)], vec![]);
        let t = c.b.op("Tanh", &[&sp], vec![]);
        let t2 = c.b.op("Mul", &[&t, &t], vec![]);
        let sech2 = c.rsub(1.0, &t2);
        let sig = c.b.op("Sigmoid", &[c.x(0)], vec![]);
        let r = c.b.op("Mul", &[c.x(0), &sig], vec![]);
        let r = c.b.op("Mul", &[&r, &sech2], vec![]);
        let d = c.b.op("Add", &[&t, &r], vec![]);
        Ok(vec![Some(c.b.op("Mul", &[&c.gy(g)?, &d], vec![]))])
    }),
    OpRule::new("PRelu", Tokens::Elementwise, |c, g| {
        // x > 0: 1; else the (broadcast) slope. The slope is a weight: no gradient.
        let gy = c.gy(g)?;
        let pos = c.cmp("Greater", c.x(0), 0.0);
        let one = c.b.scalar(1.0, c.dtype);
        let d = c.b.op("Where", &[&pos, &one, c.x(1)], vec![]);
        let gx = c.b.op("Mul", &[&gy, &d], vec![]);
        c.each_input(|c, i| match i {
            0 => c.unbroadcast(&gx, 0),
            _ => {
                let neg = c.b.op("Not", &[&pos], vec![]);
                let gs = c.b.op("Mul", &[&gy, c.x(0)], vec![]);
                let gs = c.b.mask(&neg, &gs, c.dtype);
                c.unbroadcast(&gs, 1)
            }
        })
    }),
    OpRule::new("Sum", Tokens::Elementwise, |c, g| {
        let gy = c.gy(g)?;
        c.each_input(|c, i| c.unbroadcast(&gy, i))
    }),
    OpRule::new("Mean", Tokens::Elementwise, |c, g| {
        let gy = c.b.scale(&c.gy(g)?, 1.0 / c.node.input.len().max(1) as f64, c.dtype);
        c.each_input(|c, i| c.unbroadcast(&gy, i))
    }),
    OpRule::new("Max", Tokens::Elementwise, |c, g| extreme(c, &c.gy(g)?)),
    OpRule::new("Min", Tokens::Elementwise, |c, g| extreme(c, &c.gy(g)?)),
    OpRule::new("Tile", Tokens::No, |c, g| tile(c, &c.gy(g)?)),
    OpRule::new("Einsum", Tokens::No, |c, g| einsum(c, &c.gy(g)?)),
    OpRule::new("TopK", Tokens::No, |c, g| {
        // Values: back to the positions the indices output says.
        let gy = c.gy(g)?;
        let xs = c.shape(c.x(0))?;
        let axis = c.axis(get_i(c.node, "axis", -1), c.x(0))?;
        if axis >= xs.len() {
            return Err(c.unsupported("an axis out of range"));
        }
        let zeros = c.b.zeros_like(c.x(0), c.dtype);
        let gx = c.b.op("ScatterElements", &[&zeros, c.y(1), &gy], vec![attr_i("axis", axis as i64)]);
        Ok(vec![Some(gx), None])
    }),
    OpRule::new("GatherElements", Tokens::No, |c, g| {
        if c.b.opset < 16 {
            return Err(c.unsupported("needs opset 16 (ScatterElements with reduction)"));
        }
        let axis = c.axis(get_i(c.node, "axis", 0), c.x(0))?;
        let zeros = c.b.zeros_like(c.x(0), c.dtype);
        let attrs = vec![attr_i("axis", axis as i64), attr_s("reduction", "add")];
        Ok(vec![Some(c.b.op("ScatterElements", &[&zeros, c.x(1), &c.gy(g)?], attrs)), None])
    }),
    OpRule::new("GatherND", Tokens::No, |c, g| gather_nd(c, &c.gy(g)?)),
    OpRule::new("CumSum", Tokens::No, |c, g| {
        // The gradient of a running sum is the running sum the other way.
        let reverse = 1 - get_i(c.node, "reverse", 0).clamp(0, 1);
        let attrs = vec![attr_i("exclusive", get_i(c.node, "exclusive", 0)), attr_i("reverse", reverse)];
        Ok(vec![Some(c.b.op("CumSum", &[&c.gy(g)?, c.x(1)], attrs)), None])
    }),
    OpRule::new("InstanceNormalization", Tokens::No, |c, g| {
        let rank = c.rank(c.x(0))? as i64;
        let scale = c.b.unsqueeze(c.x(1), &(1..rank - 1).collect::<Vec<_>>());
        let gh = c.b.op("Mul", &[&c.gy(g)?, &scale], vec![]);
        let eps = get_f(c.node, "epsilon", 1e-5) as f64;
        let gx = normalized_grad(c, c.x(0), &gh, &(2..rank).collect::<Vec<_>>(), eps);
        Ok(vec![Some(gx), None, None])
    }),
    OpRule::new("GroupNormalization", Tokens::No, |c, g| group_norm(c, &c.gy(g)?)),
    OpRule::new("Resize", Tokens::No, |c, g| resize::grad(c, &c.gy(g)?)),
    OpRule::new("Upsample", Tokens::No, |c, g| resize::grad(c, &c.gy(g)?)),
    OpRule::none("Shape"),
    OpRule::none("Size"),
    OpRule::none("Constant"),
    OpRule::none("ConstantOfShape"),
    OpRule::none("Range"),
    OpRule::none("EyeLike"),
    OpRule::none("RandomNormal"),
    OpRule::none("RandomUniform"),
    OpRule::none("RandomNormalLike"),
    OpRule::none("RandomUniformLike"),
    OpRule::none("Equal"),
    OpRule::none("Greater"),
    OpRule::none("GreaterOrEqual"),
    OpRule::none("Less"),
    OpRule::none("LessOrEqual"),
    OpRule::none("Not"),
    OpRule::none("And"),
    OpRule::none("Or"),
    OpRule::none("Xor"),
    OpRule::none("IsNaN"),
    OpRule::none("IsInf"),
    OpRule::none("ArgMax"),
    OpRule::none("ArgMin"),
    OpRule::none("NonZero"),
    OpRule::none("Sign"),
    OpRule::none("Floor"),
    OpRule::none("Ceil"),
    OpRule::none("Round"),
    OpRule::none("OneHot"),
    OpRule::none("Hardmax"),
    OpRule::none("Mod"),
    OpRule::none("BitShift"),
    OpRule::none("NonMaxSuppression"),
];

/// What a rule sees: the node, static shapes, and a builder to emit into.
pub struct Ctx<'a> {
    pub(crate) b: &'a mut Builder,
    constants: &'a HashMap<&'a str, &'a TensorProto>,
    shapes: &'a Shapes,
    pub(crate) node: &'a NodeProto,
    wants: Vec<bool>,
    /// Element type of the gradients (that of the node's first output).
    pub(crate) dtype: i32,
    /// Guided backpropagation: `Relu` passes only positive gradients.
    guided: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        b: &'a mut Builder,
        constants: &'a HashMap<&'a str, &'a TensorProto>,
        shapes: &'a Shapes,
        node: &'a NodeProto,
        wants: Vec<bool>,
        default_dtype: i32,
        guided: bool,
    ) -> Self {
        let dtype = node.output.first().and_then(|o| shapes.get(o)).map_or(default_dtype, |t| t.dtype);
        Ctx { b, constants, shapes, node, wants, dtype, guided }
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
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(self.unsupported(&format!("axis {axis} of a rank-{rank} tensor")));
        }
        Ok(a as usize)
    }

    /// The value of a constant integer tensor.
    fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.constants.get(name).and_then(|t| super::tensor_ints(t))
    }

    /// The constant integer value of input `i` (`None` if the input is absent).
    fn const_input(&self, i: usize) -> Result<Option<Vec<i64>>, GraphError> {
        match self.node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => self
                .const_ints(name)
                .map(Some)
                .ok_or_else(|| self.unsupported(&format!("input {i} (`{name}`) must be a constant"))),
        }
    }

    /// The value of a constant float or double tensor.
    fn const_floats(&self, name: &str) -> Option<Vec<f64>> {
        self.constants.get(name).and_then(|t| tensor_floats(t))
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

    /// A constant of ones of static shape `shape` (computed, not stored).
    fn ones(&mut self, shape: &[i64]) -> String {
        let shape = self.b.ints(shape);
        let mut one = super::builder::tensor_scalar("value", 1.0, self.dtype);
        one.dims = vec![1];
        self.b.op("ConstantOfShape", &[&shape], vec![super::builder::attr_t("value", one)])
    }

    /// The gradient of `y = x[map]` along axis `axis` (of a rank-`rank` tensor; `map[i]`: the input
    /// position output position `i` copies, `None` for a constant) given `g` shaped like `y`:
    /// `g · M` along that axis, `M[i, map[i]] = 1`, so copies of one element add up.
    fn unmap_axis(
        &mut self,
        g: &str,
        axis: usize,
        rank: usize,
        map: &[Option<usize>],
        in_len: i64,
    ) -> Result<String, GraphError> {
        let in_len = usize::try_from(in_len).map_err(|_| self.unsupported("a negative dimension"))?;
        self.check_matrix_size(map.len(), in_len)?;
        if map.iter().flatten().any(|&j| j >= in_len) {
            return Err(self.unsupported("an axis too long to map back"));
        }
        let mut m = vec![0f64; map.len() * in_len];
        for (i, j) in map.iter().enumerate() {
            if let Some(j) = j {
                m[i * in_len + j] += 1.0;
            }
        }
        self.matmul_axis(g, axis, rank, &m, (map.len(), in_len))
    }

    /// Refuses a dense `(rows, cols)` matrix too large to store (2^26 cells, 256 MiB of floats).
    fn check_matrix_size(&self, rows: usize, cols: usize) -> Result<(), GraphError> {
        match rows.checked_mul(cols) {
            Some(n) if n <= 1 << 26 => Ok(()),
            _ => Err(self.unsupported("an axis too long to map back")),
        }
    }

    /// `g · M` along axis `axis` of the rank-`rank` tensor `g`, for `M` a constant `(rows, cols)`
    /// matrix stored row by row (`rows` = the axis' length in `g`): the last axis multiplies on
    /// the right, the one before by `Mᵀ` on the left (no transposes of `g`), any other goes
    /// through a transpose.
    fn matmul_axis(
        &mut self,
        g: &str,
        axis: usize,
        rank: usize,
        m: &[f64],
        (rows, cols): (usize, usize),
    ) -> Result<String, GraphError> {
        if self.dtype != FLOAT && self.dtype != super::builder::DOUBLE {
            return Err(self.unsupported("a tensor that is neither float nor double"));
        }
        if axis + 2 == rank {
            let mut t = vec![0f64; m.len()];
            for (i, row) in m.chunks_exact(cols.max(1)).take(rows).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    t[j * rows + i] = v;
                }
            }
            let name = self.matrix(&t, cols, rows);
            return Ok(self.b.op("MatMul", &[&name, g], vec![]));
        }
        let name = self.matrix(m, rows, cols);
        if axis + 1 == rank {
            return Ok(self.b.op("MatMul", &[g, &name], vec![]));
        }
        let mut perm: Vec<i64> = (0..rank as i64).filter(|&a| a != axis as i64).collect();
        perm.push(axis as i64);
        let mut inverse = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p as usize] = i as i64;
        }
        let t = self.b.op("Transpose", &[g], vec![attr_ints("perm", &perm)]);
        let t = self.b.op("MatMul", &[&t, &name], vec![]);
        Ok(self.b.op("Transpose", &[&t], vec![attr_ints("perm", &inverse)]))
    }

    /// A constant `(rows, cols)` matrix of the gradients' element type.
    fn matrix(&mut self, m: &[f64], rows: usize, cols: usize) -> String {
        self.b.constant("matrix", &[rows as i64, cols as i64], m, self.dtype)
    }

    /// `v` when `g` is [`Ctx::expand_like`]`(v, like)` (a mean's gradient), else `g`. For a mask
    /// shaped like `like`, `Where(mask, v, 0)` broadcasts `v` to the same tensor without the pass
    /// that writes the expanded copy; the `Expand` left unread is dropped after the backward pass.
    fn unexpanded(&self, g: &str, like: &str) -> String {
        let producer = |t: &str| self.b.nodes.iter().rev().find(|n| n.output.iter().any(|o| o == t));
        let expanded = producer(g).filter(|e| e.op_type == "Expand" && e.input.len() == 2);
        match expanded {
            Some(e)
                if producer(&e.input[1]).is_some_and(|s| {
                    s.op_type == "Shape"
                        && s.input.first().is_some_and(|i| i == like)
                        && s.attribute.is_empty()
                }) =>
            {
                e.input[0].clone()
            }
            _ => g.to_string(),
        }
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
        let lead = gs
            .len()
            .checked_sub(xs.len())
            .ok_or_else(|| self.unsupported("an input of higher rank than its output"))?;
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
    if sy.len() < 2 {
        return Err(c.unsupported("an output of rank < 2"));
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
    if xs.len() != n + 2 || ys.len() != n + 2 || strides.len() != n || dilations.len() != n {
        return Err(c.unsupported("attributes that do not match the input's rank"));
    }
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
/// padded at the end (`output_padding`) to the input's size; with unit strides, the plain
/// convolution of [`flipped_conv`].
fn conv(c: &mut Ctx, gy: &str) -> Grads {
    let ws = c.shape(c.x(1))?;
    let kernel = ws.get(2..).ok_or_else(|| c.unsupported("a weight of rank < 3"))?.to_vec();
    let n = kernel.len();
    let strides = get_ints(c.node, "strides").unwrap_or_else(|| vec![1; n]);
    let dilations = get_ints(c.node, "dilations").unwrap_or_else(|| vec![1; n]);
    let mut pads = explicit_pads(c, &kernel, &strides, &dilations)?;
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    let group = get_i(c.node, "group", 1);
    let gx = match flipped_conv(c, gy, &ws, &dilations, &pads, group, (&strides, &xs, &ys)) {
        Some(gx) => gx,
        None => {
            let mut out_pad = vec![0; n];
            for d in 0..n {
                let full =
                    strides[d] * (ys[d + 2] - 1) + (kernel[d] - 1) * dilations[d] + 1 - pads[d] - pads[d + n];
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
                attr_i("group", group),
            ];
            c.b.op("ConvTranspose", &[gy, c.x(1)], attrs)
        }
    };
    let mut out = vec![Some(gx), None];
    if c.wants.get(2).copied().unwrap_or(false) {
        let axes: Vec<i64> = (0..ys.len() as i64).filter(|&a| a != 1).collect();
        out.push(Some(c.b.reduce_sum(gy, &axes, false)));
    }
    Ok(out)
}

/// A unit-stride Conv's input gradient as a `Conv` of `g` (ONNX Runtime's `Conv` is faster than
/// its `ConvTranspose`, several times for depthwise kernels): each group's kernels with input and
/// output channels swapped and flipped in space, padded by `(k-1)·d - p`. The weights are
/// rearranged by graph nodes, which ONNX Runtime folds into a constant once per session, so a
/// file's weights are neither copied nor moved out of external data. `None` where the forward
/// is strided, or padded by more than its kernel spans.
fn flipped_conv(
    c: &mut Ctx,
    gy: &str,
    ws: &[i64],
    dilations: &[i64],
    pads: &[i64],
    group: i64,
    (strides, xs, ys): (&[i64], &[i64], &[i64]),
) -> Option<String> {
    let n = ws.len().checked_sub(2)?;
    let (kernel, cout, cin_g) = (&ws[2..], ws[0], ws[1]);
    if strides.iter().any(|&s| s != 1) || group < 1 || cout % group != 0 || pads.len() != 2 * n {
        return None;
    }
    let mut flipped_pads = vec![0; 2 * n];
    for d in 0..n {
        let span = (kernel[d] - 1) * dilations[d];
        if pads[d] > span || pads[d + n] > span || ys[d + 2] != xs[d + 2] + pads[d] + pads[d + n] - span {
            return None;
        }
        flipped_pads[d] = span - pads[d];
        flipped_pads[d + n] = span - pads[d + n];
    }
    let per_group = cout / group;
    let spatial: Vec<i64> = (2..n as i64 + 2).collect();
    let mut w = c.x(1).to_string();
    if group == 1 {
        let perm: Vec<i64> = [1, 0].into_iter().chain(spatial.iter().copied()).collect();
        w = c.b.op("Transpose", &[&w], vec![attr_ints("perm", &perm)]);
    } else if per_group > 1 && cin_g > 1 {
        let grouped: Vec<i64> = [group, per_group, cin_g].iter().chain(kernel).copied().collect();
        let perm: Vec<i64> = [0, 2, 1].into_iter().chain(spatial.iter().map(|a| a + 1)).collect();
        let split = c.b.reshape(&w, &grouped);
        let swapped = c.b.op("Transpose", &[&split], vec![attr_ints("perm", &perm)]);
        let shape: Vec<i64> = [group * cin_g, per_group].iter().chain(kernel).copied().collect();
        w = c.b.reshape(&swapped, &shape);
    } else if per_group > 1 || cin_g > 1 {
        // One of the two channel axes is 1 per group: swapping them is a reshape.
        let shape: Vec<i64> = [group * cin_g, per_group].iter().chain(kernel).copied().collect();
        w = c.b.reshape(&w, &shape);
    }
    let flip: Vec<i64> = spatial.iter().copied().filter(|&a| kernel[a as usize - 2] > 1).collect();
    if !flip.is_empty() {
        let starts = c.b.ints(&vec![-1; flip.len()]);
        let ends = c.b.ints(&vec![i64::MIN; flip.len()]);
        let steps = c.b.ints(&vec![-1; flip.len()]);
        let axes = c.b.ints(&flip);
        w = c.b.op("Slice", &[&w, &starts, &ends, &axes, &steps], vec![]);
    }
    let attrs = vec![
        attr_ints("dilations", dilations),
        attr_ints("pads", &flipped_pads),
        attr_ints("kernel_shape", kernel),
        attr_i("group", group),
    ];
    Some(c.b.op("Conv", &[gy, &w], attrs))
}

/// ConvTranspose: the input's gradient is the convolution of `g` with the same weights, with the
/// pads the forward used (explicit, or derived from `output_shape`/`auto_pad` and the shapes).
fn conv_transpose(c: &mut Ctx, gy: &str) -> Grads {
    let ws = c.shape(c.x(1))?;
    let kernel = ws.get(2..).ok_or_else(|| c.unsupported("weight of rank < 3"))?.to_vec();
    let n = kernel.len();
    let strides = get_ints(c.node, "strides").unwrap_or_else(|| vec![1; n]);
    let dilations = get_ints(c.node, "dilations").unwrap_or_else(|| vec![1; n]);
    let out_pad = get_ints(c.node, "output_padding").unwrap_or_else(|| vec![0; n]);
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    if [&strides, &dilations, &out_pad].iter().any(|v| v.len() != n) || xs.len() != n + 2 || ys.len() != n + 2
    {
        return Err(c.unsupported("attributes that do not match the kernel's rank"));
    }
    let auto_pad = get_s(c.node, "auto_pad", "NOTSET");
    let pads = match get_ints(c.node, "pads") {
        Some(p) if auto_pad == "NOTSET" && get_ints(c.node, "output_shape").is_none() => p,
        _ => {
            // ONNX: total = s·(in-1) + output_padding + (k-1)·d + 1 - out, split by auto_pad.
            let mut pads = vec![0; 2 * n];
            for d in 0..n {
                let total = strides[d] * (xs[d + 2] - 1) + out_pad[d] + (kernel[d] - 1) * dilations[d] + 1
                    - ys[d + 2];
                let (begin, end) = if auto_pad == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                pads[d] = begin;
                pads[d + n] = end;
            }
            pads
        }
    };
    if pads.len() != 2 * n || pads.iter().any(|&p| p < 0) {
        return Err(c.unsupported("output larger than its pads allow"));
    }
    let attrs = vec![
        attr_ints("kernel_shape", &kernel),
        attr_i("group", get_i(c.node, "group", 1)),
        attr_ints("strides", &strides),
        attr_ints("dilations", &dilations),
        attr_ints("pads", &pads),
    ];
    Ok(vec![Some(c.b.op("Conv", &[gy, c.x(1)], attrs)), None, None])
}

/// The reductions: `g` expanded back over the reduced axes, times `d y / d x`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Sum,
    Mean,
    /// Max and Min: split evenly among the elements equal to the result, as PyTorch's amax.
    Extreme,
    SumSquare,
    L1,
    L2,
    LogSumExp,
}

fn reduce(c: &mut Ctx, gy: &str, kind: Reduce) -> Grads {
    let xs = c.shape(c.x(0))?;
    let rank = xs.len() as i64;
    let axes = match get_ints(c.node, "axes") {
        Some(a) => Some(a),
        None => c.const_input(1)?,
    };
    let axes: Vec<i64> = match axes.filter(|a| !a.is_empty()) {
        Some(a) => a.iter().map(|&a| if a < 0 { a + rank } else { a }).collect(),
        None if get_i(c.node, "noop_with_empty_axes", 0) == 1 => (0..0).collect(),
        None => (0..rank).collect(),
    };
    if axes.iter().any(|&a| !(0..rank).contains(&a)) {
        return Err(c.unsupported("an axis out of range"));
    }
    let mut sorted = axes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    // The output (and its gradient) with the reduced axes kept, so they broadcast against x.
    let keep = get_i(c.node, "keepdims", 1) != 0 || sorted.is_empty();
    let (mut g, mut y) = (gy.to_string(), c.y(0).to_string());
    if !keep {
        g = c.b.unsqueeze(&g, &sorted);
        y = c.b.unsqueeze(&y, &sorted);
    }
    if kind == Reduce::Mean {
        // Scaled before it is expanded, as for GlobalAveragePool.
        let n: i64 = sorted.iter().map(|&a| xs[a as usize]).product();
        g = c.b.scale(&g, 1.0 / n.max(1) as f64, c.dtype);
    }
    let g = c.expand_like(&g, c.x(0));
    let x = c.x(0);
    let d = match kind {
        Reduce::Sum | Reduce::Mean => return Ok(vec![Some(g), None]),
        Reduce::Extreme => {
            let hit = c.b.op("Equal", &[x, &y], vec![]);
            let hit = c.b.op("Cast", &[&hit], vec![attr_i("to", c.dtype as i64)]);
            let count = c.b.reduce_sum(&hit, &sorted, true);
            c.b.op("Div", &[&hit, &count], vec![])
        }
        Reduce::SumSquare => c.b.scale(x, 2.0, c.dtype),
        Reduce::L1 => c.b.op("Sign", &[x], vec![]),
        Reduce::L2 => {
            // x / ‖x‖, and 0 where the norm is 0 (PyTorch's subgradient).
            let zero = c.cmp("Equal", &y, 0.0);
            let one = c.b.scalar(1.0, c.dtype);
            let safe = c.b.op("Where", &[&zero, &one, &y], vec![]);
            let d = c.b.op("Div", &[x, &safe], vec![]);
            let nonzero = c.b.op("Not", &[&zero], vec![]);
            c.b.mask(&nonzero, &d, c.dtype)
        }
        Reduce::LogSumExp => {
            let diff = c.b.op("Sub", &[x, &y], vec![]);
            c.b.op("Exp", &[&diff], vec![])
        }
    };
    Ok(vec![Some(c.b.op("Mul", &[&g, &d], vec![])), None])
}

/// A depthwise all-ones kernel `(C, 1, k...)`.
fn ones_kernel(c: &mut Ctx, channels: i64, kernel: &[i64]) -> String {
    let count = (channels * kernel.iter().product::<i64>()) as usize;
    let dims: Vec<i64> = [channels, 1].iter().chain(kernel).copied().collect();
    c.b.constant("ones_kernel", &dims, &vec![1.0; count], c.dtype)
}

/// AveragePool is linear: each window's `g / divisor` spreads over the window's input elements,
/// a depthwise transposed convolution with an all-ones kernel. Windows past the input
/// (`ceil_mode`) become end padding; the divisor, whatever `count_include_pad` and the padding,
/// is read off the op itself: `AveragePool(1) = real / divisor`, `real` counted by a
/// convolution of ones.
fn average_pool(c: &mut Ctx, gy: &str) -> Grads {
    let kernel = get_ints(c.node, "kernel_shape").ok_or_else(|| c.unsupported("no kernel_shape"))?;
    let n = kernel.len();
    let strides = get_ints(c.node, "strides").unwrap_or_else(|| vec![1; n]);
    let dilations = get_ints(c.node, "dilations").unwrap_or_else(|| vec![1; n]);
    let mut pads = explicit_pads(c, &kernel, &strides, &dilations)?;
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    if [&strides, &dilations].iter().any(|v| v.len() != n) || pads.len() != 2 * n || xs.len() != n + 2 {
        return Err(c.unsupported("attributes that do not match the kernel's rank"));
    }
    let mut out_pad = vec![0; n];
    for d in 0..n {
        let full = strides[d] * (ys[d + 2] - 1) + (kernel[d] - 1) * dilations[d] + 1 - pads[d] - pads[d + n];
        if full > xs[d + 2] {
            pads[d + n] += full - xs[d + 2];
        } else {
            out_pad[d] = xs[d + 2] - full;
        }
    }
    // One image, one channel: the divisor is the same for all.
    let mut spatial = vec![1, 1];
    spatial.extend_from_slice(&xs[2..]);
    let ones = c.ones(&spatial);
    let per_window = c.b.op("AveragePool", &[&ones], c.node.attribute.clone());
    let unit = ones_kernel(c, 1, &kernel);
    let conv_attrs = vec![
        attr_ints("kernel_shape", &kernel),
        attr_ints("strides", &strides),
        attr_ints("dilations", &dilations),
        attr_ints("pads", &pads),
    ];
    let real = c.b.op("Conv", &[&ones, &unit], conv_attrs);
    let inverse_divisor = c.b.op("Div", &[&per_window, &real], vec![]);
    let scaled = c.b.op("Mul", &[gy, &inverse_divisor], vec![]);
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

/// Slice: with unit steps, pad `g` back with zeros to the input's extent; with any other steps
/// (negative ones reverse), move each sliced axis back through its index map ([`Ctx::unmap_axis`]).
fn slice(c: &mut Ctx, gy: &str) -> Grads {
    let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
    let rank = xs.len() as i64;
    let starts = c.const_input(1)?.ok_or_else(|| c.unsupported("no starts"))?;
    let ends = c.const_input(2)?.ok_or_else(|| c.unsupported("no ends"))?;
    let axes = c.const_input(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = c.const_input(4)?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len()
        || axes.len() != starts.len()
        || steps.len() != starts.len()
        || ys.len() != xs.len()
    {
        return Err(c.unsupported("starts, ends, axes and steps of different lengths"));
    }
    let mut maps: Vec<(usize, Vec<Option<usize>>)> = Vec::new();
    for k in 0..starts.len() {
        let a = if axes[k] < 0 { axes[k] + rank } else { axes[k] };
        if !(0..rank).contains(&a) || steps[k] == 0 {
            return Err(c.unsupported("an axis out of range or a zero step"));
        }
        let a = a as usize;
        let dim = xs[a];
        let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (s, step) = (norm(starts[k]), steps[k]);
        let first = if step > 0 { s.clamp(0, dim) } else { s.clamp(-1, dim - 1) };
        let map = (0..ys[a]).map(|i| usize::try_from(first + i * step).ok()).collect();
        maps.push((a, map));
    }
    if steps.iter().all(|&s| s == 1) {
        let mut pads = vec![0; 2 * xs.len()];
        for (a, map) in &maps {
            let first = map.first().copied().flatten().unwrap_or(0) as i64;
            pads[*a] = first;
            pads[a + xs.len()] = xs[*a] - first - ys[*a];
        }
        let pads = c.b.ints(&pads);
        return Ok(vec![Some(c.b.op("Pad", &[gy, &pads], vec![]))]);
    }
    let mut g = gy.to_string();
    for (a, map) in &maps {
        g = c.unmap_axis(&g, *a, xs.len(), map, xs[*a])?;
    }
    Ok(vec![Some(g)])
}

/// Pad: constant padding slices the padding off `g`; negative pads (cropping) and the reflect,
/// edge and wrap modes move each padded axis back through its index map ([`Ctx::unmap_axis`]),
/// which sums the gradient of every copy into its source.
fn pad(c: &mut Ctx, gy: &str) -> Grads {
    let mode = get_s(c.node, "mode", "constant");
    let xs = c.shape(c.x(0))?;
    let rank = xs.len() as i64;
    let pads = c.const_input(1)?.ok_or_else(|| c.unsupported("no pads"))?;
    let axes = c.const_input(3)?.unwrap_or_else(|| (0..rank).collect());
    let k = axes.len();
    if pads.len() != 2 * k {
        return Err(c.unsupported("pads that do not match the axes"));
    }
    let axes: Vec<usize> = axes
        .iter()
        .map(|&a| if a < 0 { a + rank } else { a })
        .map(|a| usize::try_from(a).ok().filter(|&a| a < xs.len()))
        .collect::<Option<_>>()
        .ok_or_else(|| c.unsupported("an axis out of range"))?;
    if mode == "constant" && pads.iter().all(|&p| p >= 0) {
        // Only the padded axes are sliced: an unpadded one (the batch, usually) keeps whatever
        // size it has at run time.
        let padded: Vec<usize> = (0..k).filter(|&i| pads[i] != 0 || pads[i + k] != 0).collect();
        if padded.is_empty() {
            return Ok(vec![Some(gy.to_string()), None, None, None]);
        }
        let starts: Vec<i64> = padded.iter().map(|&i| pads[i]).collect();
        let ends: Vec<i64> = padded.iter().map(|&i| pads[i] + xs[axes[i]]).collect();
        let axes: Vec<i64> = padded.iter().map(|&i| axes[i] as i64).collect();
        let (s, e, a) = (c.b.ints(&starts), c.b.ints(&ends), c.b.ints(&axes));
        return Ok(vec![Some(c.b.op("Slice", &[gy, &s, &e, &a], vec![])), None, None, None]);
    }
    let mut g = gy.to_string();
    for (i, &a) in axes.iter().enumerate() {
        let (begin, end, n) = (pads[i], pads[i + k], xs[a]);
        if begin == 0 && end == 0 {
            continue;
        }
        let out = n + begin + end;
        if n <= 0 || out < 0 {
            return Err(c.unsupported("pads that remove the whole axis"));
        }
        let source = |i: i64| -> Option<usize> {
            let j = i - begin;
            let j = match mode.as_str() {
                "edge" => j.clamp(0, n - 1),
                "wrap" => j.rem_euclid(n),
                "reflect" if n == 1 => 0,
                "reflect" => {
                    let period = 2 * (n - 1);
                    let r = j.rem_euclid(period);
                    if r < n {
                        r
                    } else {
                        period - r
                    }
                }
                _ => j,
            };
            (0..n).contains(&j).then_some(j as usize)
        };
        if !matches!(mode.as_str(), "constant" | "edge" | "wrap" | "reflect") {
            return Err(c.unsupported(&format!("pad mode `{mode}`")));
        }
        let map: Vec<Option<usize>> = (0..out).map(source).collect();
        g = c.unmap_axis(&g, a, xs.len(), &map, n)?;
    }
    Ok(vec![Some(g), None, None, None])
}

/// Gather along an axis: scatter-add `g` back to the gathered positions.
fn gather(c: &mut Ctx, gy: &str) -> Grads {
    let (xs, is) = (c.shape(c.x(0))?, c.shape(c.x(1))?);
    let axis = c.axis(get_i(c.node, "axis", 0), c.x(0))?;
    let rank = xs.len();
    if let (true, Some(idx)) = (is.is_empty(), c.const_ints(c.x(1))) {
        // One constant index (a ViT's class token): pad the slice back into place.
        let first = *idx.first().ok_or_else(|| c.unsupported("an empty index"))?;
        let i = if first < 0 { first + xs[axis] } else { first };
        if !(0..xs[axis]).contains(&i) {
            return Err(c.unsupported("an index out of range"));
        }
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
    // The index count is left to Reshape (-1): indices computed from a shape (dynamo's
    // `as_strided`) count the batch, which an explainer's graph must not fix.
    let mut target: Vec<i64> = vec![0; axis];
    target.push(-1);
    target.extend_from_slice(&xs[axis + 1..]);
    let g = c.b.reshape(gy, &target);
    let mut idx_shape = vec![1; rank];
    idx_shape[axis] = -1;
    let idx = c.b.reshape(c.x(1), &idx_shape);
    let idx = c.expand_like(&idx, &g);
    let zeros = c.b.zeros_like(c.x(0), c.dtype);
    let attrs = vec![attr_i("axis", axis as i64), attr_s("reduction", "add")];
    Ok(vec![Some(c.b.op("ScatterElements", &[&zeros, &idx, &g], attrs)), None])
}

/// GatherND (dynamo's `F.interpolate(mode="nearest-exact")`): the gradient scattered back to the
/// gathered places, repeated indices summed (ScatterND's `add`). ScatterND has no `batch_dims`
/// and no negative indices: each index is made positive and prefixed with its batch coordinates.
fn gather_nd(c: &mut Ctx, gy: &str) -> Grads {
    if c.b.opset < 16 {
        return Err(c.unsupported("needs opset 16 (ScatterND with reduction)"));
    }
    let (xs, is) = (c.shape(c.x(0))?, c.shape(c.x(1))?);
    let batch =
        usize::try_from(get_i(c.node, "batch_dims", 0)).map_err(|_| c.unsupported("batch_dims < 0"))?;
    let (&k, prefix) = is.split_last().ok_or_else(|| c.unsupported("scalar indices"))?;
    let k = usize::try_from(k).map_err(|_| c.unsupported("a negative index depth"))?;
    if batch >= is.len() || batch + k > xs.len() || prefix.iter().take(batch).ne(xs.iter().take(batch)) {
        return Err(c.unsupported("indices that do not fit the data"));
    }
    let dims = c.b.ints(&xs[batch..batch + k]);
    let zero = c.b.ints(&[0]);
    let negative = c.b.op("Less", &[c.x(1), &zero], vec![]);
    let wrapped = c.b.op("Add", &[c.x(1), &dims], vec![]);
    let mut idx = c.b.op("Where", &[&negative, &wrapped, c.x(1)], vec![]);
    if batch > 0 {
        let count: i64 = prefix.iter().product();
        let mut coords = Vec::with_capacity(count as usize * batch);
        for flat in 0..count {
            let mut at = vec![0; prefix.len()];
            let mut rest = flat;
            for (d, &n) in prefix.iter().enumerate().rev() {
                at[d] = rest % n;
                rest /= n;
            }
            coords.extend_from_slice(&at[..batch]);
        }
        let coords = c.b.ints(&coords);
        let mut shape = prefix.to_vec();
        shape.push(batch as i64);
        let coords = c.b.reshape(&coords, &shape);
        idx = c.b.op("Concat", &[&coords, &idx], vec![attr_i("axis", -1)]);
    }
    let zeros = c.b.zeros_like(c.x(0), c.dtype);
    let gx = c.b.op("ScatterND", &[&zeros, &idx, gy], vec![attr_s("reduction", "add")]);
    Ok(vec![Some(gx), None])
}

/// LayerNormalization over axes `axis..`: the normalisation's gradient of `ĝ = g · scale`.
fn layer_norm(c: &mut Ctx, gy: &str) -> Grads {
    let x = c.x(0);
    let rank = c.rank(x)? as i64;
    let axis = get_i(c.node, "axis", -1);
    let axes: Vec<i64> = ((if axis < 0 { axis + rank } else { axis })..rank).collect();
    let gh = c.b.op("Mul", &[gy, c.x(1)], vec![]);
    let eps = get_f(c.node, "epsilon", 1e-5) as f64;
    Ok(vec![Some(normalized_grad(c, x, &gh, &axes, eps))])
}

/// Variadic Max/Min: each input's gradient where it is the result (ties share it evenly).
fn extreme(c: &mut Ctx, gy: &str) -> Grads {
    let ys = c.shape(c.y(0))?;
    let inputs: Vec<String> = c.node.input.clone();
    let hits: Vec<String> = inputs
        .iter()
        .map(|x| {
            let hit = c.b.op("Equal", &[x.as_str(), c.y(0)], vec![]);
            c.b.op("Cast", &[&hit], vec![attr_i("to", c.dtype as i64)])
        })
        .collect();
    let count = sum_all(c.b, &hits);
    let share = c.b.op("Div", &[gy, &count], vec![]);
    c.each_input(|c, i| {
        let gi = c.b.op("Mul", &[&share, &hits[i]], vec![]);
        // `hits[i]` broadcast `x_i` to the output's shape.
        c.unbroadcast_from(&gi, &ys, c.x(i))
    })
}

/// `Sum` of tensors (the tensor itself for one).
fn sum_all(b: &mut Builder, xs: &[String]) -> String {
    if xs.len() == 1 {
        return xs[0].clone();
    }
    let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
    b.op("Sum", &refs, vec![])
}

/// Tile: each output element copies `x[i mod n]`, so `g` reshaped to `(r0, n0, r1, n1, …)` and
/// summed over the repeat axes is the input's gradient.
fn tile(c: &mut Ctx, gy: &str) -> Grads {
    let xs = c.shape(c.x(0))?;
    let repeats = c.const_input(1)?.ok_or_else(|| c.unsupported("no repeats"))?;
    if repeats.len() != xs.len() || repeats.iter().any(|&r| r < 1) {
        return Err(c.unsupported("repeats that do not match the input's rank"));
    }
    let mut shape = Vec::new();
    let mut axes = Vec::new();
    for (k, (&r, &n)) in repeats.iter().zip(&xs).enumerate() {
        if r == 1 {
            // The batch axis keeps its runtime size (Reshape's 0 copies it).
            shape.push(if k == 0 { 0 } else { n });
        } else {
            axes.push(shape.len() as i64);
            shape.push(r);
            shape.push(n);
        }
    }
    if axes.is_empty() {
        return Ok(vec![Some(gy.to_string()), None]);
    }
    let g = c.b.reshape(gy, &shape);
    Ok(vec![Some(c.b.reduce_sum(&g, &axes, false)), None])
}

/// Einsum: operand k's gradient is the einsum of `g` with the other operands into operand k's
/// subscripts; an index only operand k has (summed away in the forward) is broadcast back.
fn einsum(c: &mut Ctx, gy: &str) -> Grads {
    let equation = get_s(c.node, "equation", "").replace(' ', "");
    let (lhs, rhs) = match equation.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (equation.clone(), None),
    };
    let ranks: Vec<usize> = c.node.input.iter().map(|x| c.rank(x)).collect::<Result<_, _>>()?;
    let operands: Vec<String> = lhs.split(',').map(str::to_string).collect();
    if operands.len() != ranks.len() {
        return Err(c.unsupported("an equation whose operands do not match the inputs"));
    }
    // Ellipses become explicit capital letters, right-aligned across operands.
    let ellipsis_rank = operands
        .iter()
        .zip(&ranks)
        .filter(|(o, _)| o.contains("..."))
        .map(|(o, &r)| (r + 3).saturating_sub(o.len()))
        .max()
        .unwrap_or(0);
    if ellipsis_rank > 26 {
        return Err(c.unsupported("an ellipsis over more than 26 axes"));
    }
    let fill: String = (0..ellipsis_rank).map(|i| (b'A' + i as u8) as char).collect();
    let expand = |term: &str, rank: usize| -> Option<String> {
        match term.split_once("...") {
            Some((a, b)) => {
                let k = rank.checked_sub(a.len() + b.len())?;
                Some(format!("{a}{}{b}", &fill[fill.len().checked_sub(k)?..]))
            }
            None => Some(term.to_string()),
        }
    };
    let terms: Vec<String> = operands
        .iter()
        .zip(&ranks)
        .map(|(o, &r)| expand(o, r))
        .collect::<Option<_>>()
        .ok_or_else(|| c.unsupported("an ellipsis longer than its operand"))?;
    let out = match &rhs {
        Some(r) => expand(r, c.rank(c.y(0))?).ok_or_else(|| c.unsupported("a bad output term"))?,
        None => {
            // Implicit output: ellipsis letters, then the letters used once, alphabetically.
            let all: String = terms.concat();
            let mut once: Vec<char> =
                all.chars().filter(|ch| ch.is_ascii_lowercase() && all.matches(*ch).count() == 1).collect();
            once.sort_unstable();
            format!("{fill}{}", once.into_iter().collect::<String>())
        }
    };
    if terms.iter().chain(std::iter::once(&out)).any(|t| {
        let mut seen = std::collections::HashSet::new();
        !t.chars().all(|ch| seen.insert(ch))
    }) {
        return Err(c.unsupported("repeated indices in one term (diagonals)"));
    }
    let inputs = c.node.input.clone();
    c.each_input(|c, k| {
        let others: String =
            terms.iter().enumerate().filter(|&(i, _)| i != k).map(|(_, t)| t.as_str()).collect();
        let available: String = format!("{out}{others}");
        let kept: String = terms[k].chars().filter(|ch| available.contains(*ch)).collect();
        let mut eq = out.clone();
        let mut args = vec![gy.to_string()];
        for (i, t) in terms.iter().enumerate().filter(|&(i, _)| i != k) {
            eq.push(',');
            eq.push_str(t);
            args.push(inputs[i].clone());
        }
        eq.push_str("->");
        eq.push_str(&kept);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut gk = c.b.op("Einsum", &refs, vec![attr_s("equation", &eq)]);
        if kept.len() != terms[k].len() {
            // Indices summed away only in this operand: the gradient is the same along them.
            let missing: Vec<i64> = terms[k]
                .chars()
                .enumerate()
                .filter(|(_, ch)| !available.contains(*ch))
                .map(|(i, _)| i as i64)
                .collect();
            gk = c.b.unsqueeze(&gk, &missing);
            // Expanded to the operand as it runs: a constant shape would fix its batch.
            gk = c.expand_like(&gk, &inputs[k]);
        }
        Ok(gk)
    })
}

/// The gradient through `x̂ = (x - mean) / sqrt(var + eps)` over `axes`, given `gh = d/dx̂`:
/// `rstd · (gh - mean(gh) - x̂ · mean(gh · x̂))`.
fn normalized_grad(c: &mut Ctx, x: &str, gh: &str, axes: &[i64], eps: f64) -> String {
    let mean = c.b.reduce_mean(x, axes, true);
    let xc = c.b.op("Sub", &[x, &mean], vec![]);
    let sq = c.b.op("Mul", &[&xc, &xc], vec![]);
    let var = c.b.reduce_mean(&sq, axes, true);
    let eps = c.b.scalar(eps, c.dtype);
    let var = c.b.op("Add", &[&var, &eps], vec![]);
    let std = c.b.op("Sqrt", &[&var], vec![]);
    let rstd = c.b.op("Reciprocal", &[&std], vec![]);
    let xhat = c.b.op("Mul", &[&xc, &rstd], vec![]);
    let m1 = c.b.reduce_mean(gh, axes, true);
    let ghx = c.b.op("Mul", &[gh, &xhat], vec![]);
    let m2 = c.b.reduce_mean(&ghx, axes, true);
    let t = c.b.op("Mul", &[&xhat, &m2], vec![]);
    let d = c.b.op("Sub", &[gh, &m1], vec![]);
    let d = c.b.op("Sub", &[&d, &t], vec![]);
    c.b.op("Mul", &[&d, &rstd], vec![])
}

/// GroupNormalization: normalised per group of channels; scale and bias per channel (opset 21)
/// or per group (opset 18).
fn group_norm(c: &mut Ctx, gy: &str) -> Grads {
    let xs = c.shape(c.x(0))?;
    let groups = get_i(c.node, "num_groups", 0);
    let channels = *xs.get(1).ok_or_else(|| c.unsupported("an input of rank < 2"))?;
    if groups < 1 || channels % groups != 0 {
        return Err(c.unsupported("a number of groups that does not divide the channels"));
    }
    let rank = xs.len() as i64;
    let scale_len = c.shape(c.x(1))?.first().copied().unwrap_or(0);
    let scale = if scale_len == channels {
        c.b.unsqueeze(c.x(1), &(1..rank - 1).collect::<Vec<_>>())
    } else if scale_len == groups {
        // Per group: repeat each group's scale over its channels.
        let s = c.b.unsqueeze(c.x(1), &[1]);
        let shape = c.b.ints(&[groups, channels / groups]);
        let s = c.b.op("Expand", &[&s, &shape], vec![]);
        let s = c.b.reshape(&s, &[channels]);
        c.b.unsqueeze(&s, &(1..rank - 1).collect::<Vec<_>>())
    } else {
        return Err(c.unsupported("a scale that is neither per channel nor per group"));
    };
    let gh = c.b.op("Mul", &[gy, &scale], vec![]);
    let grouped = [0, groups, -1];
    let xg = c.b.reshape(c.x(0), &grouped);
    let ghg = c.b.reshape(&gh, &grouped);
    let eps = get_f(c.node, "epsilon", 1e-5) as f64;
    let gx = normalized_grad(c, &xg, &ghg, &[2], eps);
    Ok(vec![Some(c.b.reshape_like(&gx, c.x(0))), None, None])
}

/// The values of a float or double tensor stored inline.
fn tensor_floats(t: &TensorProto) -> Option<Vec<f64>> {
    use onnx_protobuf::tensor_proto::{DataLocation, DataType};
    if t.data_location.value() == DataLocation::EXTERNAL as i32 {
        return None;
    }
    let raw = &t.raw_data;
    if t.data_type == DataType::FLOAT as i32 {
        if raw.is_empty() {
            return Some(t.float_data.iter().map(|&v| v as f64).collect());
        }
        return Some(
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        );
    }
    if t.data_type == DataType::DOUBLE as i32 {
        if raw.is_empty() {
            return Some(t.double_data.clone());
        }
        return Some(
            raw.chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        );
    }
    None
}

/// Resize (opset 10+) and Upsample (opset 7-9). Both are linear in X and separable: along each
/// resized axis, `y = M · x` for an `(out, in)` interpolation matrix `M` that depends only on the
/// sizes, the scale and the attributes. The gradient multiplies `g` by `M` (transposed) along each
/// resized axis, with the matrices built here and stored as constants.
///
/// `M` is ONNX Runtime's (1.31), not the spec's where they differ, since ONNX Runtime ran the
/// forward: its `f32` coordinate arithmetic (`half_pixel_symmetric` sums in `f64`), its nearest
/// rounding (a coordinate within 1e-6 of a half is a tie), the scale given rather than
/// `out / in`, a copy when the output keeps the input's shape, and with `antialias` a copy of
/// every axis that keeps its length. Checked against its forward for every mode, coordinate
/// transform and nearest mode (tests/rules.rs).
mod resize {
    use super::super::builder::{attr, get_f, get_i, get_ints, get_s};
    use super::{Ctx, Grads, GraphError};

    /// `coordinate_transformation_mode`: an output index's position in the input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Coordinates {
        HalfPixel,
        HalfPixelSymmetric,
        PytorchHalfPixel,
        TfHalfPixelForNn,
        AlignCorners,
        Asymmetric,
    }

    impl Coordinates {
        fn parse(c: &Ctx, name: &str) -> Result<Self, GraphError> {
            Ok(match name {
                "half_pixel" => Coordinates::HalfPixel,
                "half_pixel_symmetric" => Coordinates::HalfPixelSymmetric,
                "pytorch_half_pixel" => Coordinates::PytorchHalfPixel,
                "tf_half_pixel_for_nn" => Coordinates::TfHalfPixelForNn,
                "align_corners" => Coordinates::AlignCorners,
                "asymmetric" => Coordinates::Asymmetric,
                "tf_crop_and_resize" => {
                    return Err(c.unsupported(
                        "coordinate_transformation_mode `tf_crop_and_resize` (a crop with constant \
                         extrapolation); export the interpolation without it",
                    ))
                }
                other => return Err(c.unsupported(&format!("coordinate_transformation_mode `{other}`"))),
            })
        }

        /// The input coordinate of output index `x` (ONNX Runtime's formulas, in `f32`).
        fn original(self, x: f32, scale: f32, out: f32, len: f32) -> f32 {
            match self {
                Coordinates::HalfPixel => (x + 0.5) / scale - 0.5,
                Coordinates::PytorchHalfPixel if out > 1.0 => (x + 0.5) / scale - 0.5,
                Coordinates::PytorchHalfPixel => 0.0,
                Coordinates::TfHalfPixelForNn => (x + 0.5) / scale,
                Coordinates::AlignCorners if out == 1.0 => 0.0,
                Coordinates::AlignCorners => x * (len - 1.0) / (out - 1.0),
                Coordinates::Asymmetric => x / scale,
                Coordinates::HalfPixelSymmetric => {
                    let adjustment = out / (scale * len);
                    let offset = len / 2.0 * (1.0 - adjustment);
                    (offset as f64 + (x as f64 + 0.5) / scale as f64 - 0.5) as f32
                }
            }
        }
    }

    /// `nearest_mode`: which input index a coordinate between two takes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Nearest {
        /// Upsample and Resize-10: truncate, or round up when downsampling.
        Legacy,
        RoundPreferFloor,
        RoundPreferCeil,
        Floor,
        Ceil,
    }

    impl Nearest {
        /// ONNX Runtime 1.31's choice (read off its CPU kernel): a coordinate within 1e-6 of a
        /// half is a tie, so one just below `k + 0.5` in `f32` still rounds up with
        /// `round_prefer_ceil`.
        fn index(self, x: f32, downsampling: bool) -> i64 {
            let tie = ((x - x.floor()) - 0.5).abs() <= 1e-6;
            match self {
                Nearest::Legacy if downsampling => x.ceil() as i64,
                // `as` truncates toward zero, as the C++ cast does.
                Nearest::Legacy => x as i64,
                Nearest::RoundPreferCeil if tie => x.ceil() as i64,
                Nearest::RoundPreferFloor if tie => x.floor() as i64,
                Nearest::RoundPreferCeil | Nearest::RoundPreferFloor => x.round() as i64,
                Nearest::Floor => x.floor() as i64,
                Nearest::Ceil => x.ceil() as i64,
            }
        }
    }

    /// `mode` with its parameters.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Interpolation {
        Nearest(Nearest),
        Linear,
        Cubic { a: f32, exclude_outside: bool },
    }

    /// The `(out, len)` matrix `M` of one axis, row by row: `y = M · x` along it.
    fn matrix(how: Interpolation, coords: Coordinates, len: usize, out: usize, scale: f32) -> Vec<f64> {
        let mut m = vec![0f64; out * len];
        let last = len as i64 - 1;
        for (x, row) in m.chunks_exact_mut(len).enumerate() {
            let orig = coords.original(x as f32, scale, out as f32, len as f32);
            match how {
                Interpolation::Nearest(mode) => {
                    row[mode.index(orig, scale < 1.0).clamp(0, last) as usize] = 1.0;
                }
                Interpolation::Linear => {
                    let v = orig.min(last as f32).max(0.0);
                    let x1 = (v as i64).min(last);
                    let x2 = (x1 + 1).min(last);
                    let (d1, d2) =
                        if x1 == x2 { (0.5, 0.5) } else { ((v - x1 as f32).abs(), (v - x2 as f32).abs()) };
                    row[x1 as usize] += d2 as f64;
                    row[x2 as usize] += d1 as f64;
                }
                Interpolation::Cubic { a, exclude_outside } => {
                    let floor = orig.floor();
                    let mut w = cubic_coeffs(orig - floor, a);
                    let first = floor as i64 - 1;
                    if exclude_outside {
                        for (k, wk) in w.iter_mut().enumerate() {
                            if !(0..=last).contains(&(first + k as i64)) {
                                *wk = 0.0;
                            }
                        }
                        let sum: f32 = w.iter().sum();
                        if sum != 0.0 {
                            w.iter_mut().for_each(|wk| *wk /= sum);
                        }
                    }
                    for (k, wk) in w.iter().enumerate() {
                        row[(first + k as i64).clamp(0, last) as usize] += *wk as f64;
                    }
                }
            }
        }
        m
    }

    /// Keys' cubic convolution weights of the taps at `-1, 0, 1, 2` from the floor, for fraction
    /// `s` (ONNX Runtime's `GetCubicCoeffs`).
    fn cubic_coeffs(s: f32, a: f32) -> [f32; 4] {
        let near = |t: f32| ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
        let far = |t: f32| ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a;
        [far(s + 1.0), near(s), near(1.0 - s), far(2.0 - s)]
    }

    /// `v` (one value per axis in `axes`, or per axis of the input) spread over all `rank` axes.
    fn on_axes<T: Copy>(v: &[T], axes: Option<&[usize]>, rank: usize, default: T) -> Option<Vec<T>> {
        match axes {
            None => (v.len() == rank).then(|| v.to_vec()),
            Some(axes) if axes.len() == v.len() => {
                let mut full = vec![default; rank];
                for (&a, &x) in axes.iter().zip(v) {
                    full[a] = x;
                }
                Some(full)
            }
            Some(_) => None,
        }
    }

    /// The scale of every axis, as ONNX Runtime uses it in the coordinate transforms: the
    /// `scales` input (or Upsample-7's attribute) when given, else `sizes / input` per axis (one
    /// common scale under `keep_aspect_ratio_policy`).
    fn scales(c: &Ctx, legacy: bool, xs: &[i64], ys: &[i64]) -> Result<Vec<f32>, GraphError> {
        let rank = xs.len();
        let axes: Option<Vec<usize>> = match get_ints(c.node, "axes") {
            None => None,
            Some(axes) => {
                let axes: Option<Vec<usize>> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + rank as i64 } else { a })
                    .map(|a| usize::try_from(a).ok().filter(|&a| a < rank))
                    .collect();
                let mut sorted = axes.clone().ok_or_else(|| c.unsupported("an axis out of range"))?;
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != axes.as_ref().map_or(0, Vec::len) {
                    return Err(c.unsupported("an axis listed twice"));
                }
                axes
            }
        };
        let axes = axes.as_deref();
        let mismatch = || c.unsupported("scales or sizes that do not match the input's rank (or `axes`)");
        if c.node.op_type == "Upsample" && c.node.input.len() < 2 {
            let given =
                attr(c.node, "scales").map(|a| a.floats.clone()).ok_or_else(|| c.unsupported("no scales"))?;
            return on_axes(&given, None, rank, 1.0).ok_or_else(mismatch);
        }
        let (scales_at, sizes_at) = if legacy { (1, None) } else { (2, Some(3)) };
        let given = match c.node.input.get(scales_at).filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => match c.const_floats(name) {
                Some(v) if v.is_empty() => None,
                Some(v) => Some(v),
                None if c.shape(name).is_ok_and(|s| s.contains(&0)) => None,
                None => return Err(c.unsupported(&format!("input `scales` (`{name}`) must be a constant"))),
            },
        };
        if let Some(given) = given {
            let given: Vec<f32> = given.iter().map(|&v| v as f32).collect();
            let scales = on_axes(&given, axes, rank, 1.0).ok_or_else(mismatch)?;
            if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(c.unsupported("scales that are not positive"));
            }
            return Ok(scales);
        }
        let sizes = sizes_at
            .and_then(|i| c.node.input.get(i))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| c.unsupported("neither scales nor sizes"))?;
        let ratio = |a: usize, to: i64| if xs[a] == 0 { 1.0 } else { to as f32 / xs[a] as f32 };
        let policy = get_s(c.node, "keep_aspect_ratio_policy", "stretch");
        if policy == "stretch" {
            return Ok((0..rank).map(|a| ratio(a, ys[a])).collect());
        }
        // One scale for every axis in `axes` (or every axis), from the requested sizes.
        let requested = c.const_ints(sizes).ok_or_else(|| {
            c.unsupported(&format!(
                "input `sizes` (`{sizes}`) must be a constant with keep_aspect_ratio_policy"
            ))
        })?;
        let requested = on_axes(&requested, axes, rank, 0).ok_or_else(mismatch)?;
        let chosen: Vec<usize> = axes.map_or_else(|| (0..rank).collect(), <[usize]>::to_vec);
        let each = chosen.iter().map(|&a| ratio(a, requested[a]));
        let common = match policy.as_str() {
            "not_larger" => each.fold(f32::MAX, f32::min),
            "not_smaller" => each.fold(f32::MIN_POSITIVE, f32::max),
            other => return Err(c.unsupported(&format!("keep_aspect_ratio_policy `{other}`"))),
        };
        Ok((0..rank).map(|a| if chosen.contains(&a) { common } else { 1.0 }).collect())
    }

    /// The rule: `g` times each resized axis' matrix, from the last axis to the first.
    pub(super) fn grad(c: &mut Ctx, gy: &str) -> Grads {
        let (xs, ys) = (c.shape(c.x(0))?, c.shape(c.y(0))?);
        if xs.len() != ys.len() || xs.is_empty() {
            return Err(c.unsupported("an output of another rank than its input"));
        }
        // Upsample and Resize-10: asymmetric coordinates, their own nearest rounding.
        let legacy = c.node.op_type == "Upsample" || c.b.opset <= 10;
        let how = match get_s(c.node, "mode", "nearest").as_str() {
            "nearest" if legacy => Interpolation::Nearest(Nearest::Legacy),
            "nearest" => {
                Interpolation::Nearest(match get_s(c.node, "nearest_mode", "round_prefer_floor").as_str() {
                    "round_prefer_floor" => Nearest::RoundPreferFloor,
                    "round_prefer_ceil" => Nearest::RoundPreferCeil,
                    "floor" => Nearest::Floor,
                    "ceil" => Nearest::Ceil,
                    other => return Err(c.unsupported(&format!("nearest_mode `{other}`"))),
                })
            }
            "linear" => Interpolation::Linear,
            "cubic" if !legacy => Interpolation::Cubic {
                a: get_f(c.node, "cubic_coeff_a", -0.75),
                exclude_outside: get_i(c.node, "exclude_outside", 0) != 0,
            },
            other => return Err(c.unsupported(&format!("mode `{other}`"))),
        };
        let coords = if legacy {
            Coordinates::Asymmetric
        } else {
            Coordinates::parse(c, &get_s(c.node, "coordinate_transformation_mode", "half_pixel"))?
        };
        let scales = scales(c, legacy, &xs, &ys)?;
        // Antialiasing filters only when downsampling: upsampling with it is plain interpolation,
        // except that ONNX Runtime's antialiased kernel copies every axis that keeps its length.
        let antialias = get_i(c.node, "antialias", 0) != 0;
        if antialias && scales.iter().any(|&s| s < 1.0) {
            return Err(c.unsupported("antialias = 1 when downsampling; export with antialias=False"));
        }
        let rank = xs.len();
        let mut g = gy.to_string();
        // An empty output: nothing flows back.
        if xs.contains(&0) || ys.contains(&0) {
            let zeros = c.b.zeros_like(c.x(0), c.dtype);
            return Ok(with_no_more_grads(c, zeros));
        }
        // ONNX Runtime copies the input when the output has its shape, whatever the scales.
        if xs == ys {
            return Ok(with_no_more_grads(c, g));
        }
        for axis in (0..rank).rev() {
            let (len, out, scale) = (xs[axis], ys[axis], scales[axis]);
            // ONNX Runtime copies an axis of scale 1 whatever the coordinate transform.
            if len == out && (scale == 1.0 || antialias) {
                continue;
            }
            let (Ok(len), Ok(out)) = (usize::try_from(len), usize::try_from(out)) else {
                return Err(c.unsupported("a negative dimension"));
            };
            if scale == 1.0 {
                return Err(c.unsupported("an output size that does not match the scales"));
            }
            c.check_matrix_size(out, len)?;
            let m = matrix(how, coords, len, out, scale);
            if len == out
                && m.iter().enumerate().all(|(k, &v)| v == if k % (len + 1) == 0 { 1.0 } else { 0.0 })
            {
                continue;
            }
            if axis == 0 {
                return Err(c.unsupported(
                    "a resized axis 0 (the batch, whose size the backward graph cannot fix); \
                     resize the other axes only",
                ));
            }
            g = c.matmul_axis(&g, axis, rank, &m, (out, len))?;
        }
        Ok(with_no_more_grads(c, g))
    }

    /// `g` for the input, nothing for roi, scales and sizes.
    fn with_no_more_grads(c: &Ctx, g: String) -> Vec<Option<String>> {
        let mut grads = vec![Some(g)];
        grads.resize(c.node.input.len().max(1), None);
        grads
    }
}
