//! Emitting ONNX nodes: fresh names, attributes, constants, and the few ops whose form
//! changed between opsets (axes as attribute or as input).

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto,
};

/// ONNX element type codes used here.
pub(crate) const FLOAT: i32 = DataType::FLOAT as i32;
pub(crate) const DOUBLE: i32 = DataType::DOUBLE as i32;
pub(crate) const INT64: i32 = DataType::INT64 as i32;

/// An integer attribute.
pub(crate) fn attr_i(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

/// A list-of-integers attribute.
pub(crate) fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

/// A float attribute.
pub(crate) fn attr_f(name: &str, value: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = value;
    a
}

/// A string attribute.
pub(crate) fn attr_s(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = value.as_bytes().to_vec();
    a
}

/// A tensor attribute.
pub(crate) fn attr_t(name: &str, value: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::TENSOR.into();
    a.t = Some(value).into();
    a
}

/// Reads attribute `name` of a node.
pub(crate) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Integer attribute with a default.
pub(crate) fn get_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

/// Float attribute with a default.
pub(crate) fn get_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

/// Integer-list attribute, if present.
pub(crate) fn get_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// String attribute with a default.
pub(crate) fn get_s(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
}

/// A 1-D int64 tensor.
pub(crate) fn tensor_i64(name: &str, values: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = INT64;
    t.dims = vec![values.len() as i64];
    t.int64_data = values.to_vec();
    t
}

/// A scalar (`dims = []`) float tensor of element type `dtype` (FLOAT or DOUBLE).
pub(crate) fn tensor_scalar(name: &str, value: f64, dtype: i32) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = dtype;
    if dtype == DOUBLE {
        t.double_data = vec![value];
    } else {
        t.float_data = vec![value as f32];
    }
    t
}

/// Appends nodes and constants to a graph under construction, with names that cannot clash
/// with the model's own (`gradcam/<n>/<hint>`).
pub(crate) struct Builder {
    pub(crate) nodes: Vec<NodeProto>,
    pub(crate) initializers: Vec<TensorProto>,
    pub(crate) opset: i64,
    counter: usize,
    prefix: String,
}

impl Builder {
    pub(crate) fn new(opset: i64, prefix: &str) -> Self {
        Builder { nodes: Vec::new(), initializers: Vec::new(), opset, counter: 0, prefix: prefix.into() }
    }

    /// A new unique tensor name.
    pub(crate) fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}/{}/{}", self.prefix, self.counter, hint)
    }

    /// Emits `op_type(inputs)` with one output, returning its name.
    pub(crate) fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op_type, inputs, 1, attrs).pop().expect("one output")
    }

    /// Emits `op_type(inputs)` with `n` outputs.
    pub(crate) fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..n).map(|_| self.fresh(op_type)).collect();
        let mut node = NodeProto::new();
        node.op_type = op_type.into();
        node.name = format!("{}_node", outputs[0]);
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = outputs.clone();
        node.attribute = attrs;
        self.nodes.push(node);
        outputs
    }

    /// A 1-D int64 constant.
    pub(crate) fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("ints");
        self.initializers.push(tensor_i64(&name, values));
        name
    }

    /// A constant of shape `dims` holding row-major `values`, of element type `dtype` (FLOAT or
    /// DOUBLE), named after `hint`.
    pub(crate) fn constant(&mut self, hint: &str, dims: &[i64], values: &[f64], dtype: i32) -> String {
        let name = self.fresh(hint);
        let mut t = tensor_scalar(&name, 0.0, dtype);
        t.dims = dims.to_vec();
        if dtype == DOUBLE {
            t.double_data = values.to_vec();
        } else {
            t.float_data = values.iter().map(|&v| v as f32).collect();
        }
        self.initializers.push(t);
        name
    }

    /// A scalar float constant of element type `dtype`.
    pub(crate) fn scalar(&mut self, value: f64, dtype: i32) -> String {
        let name = self.fresh("scalar");
        self.initializers.push(tensor_scalar(&name, value, dtype));
        name
    }

    /// `ReduceSum(x, axes)`, axes as an input (opset >= 13).
    pub(crate) fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let axes = self.ints(axes);
        self.op("ReduceSum", &[x, &axes], vec![attr_i("keepdims", keepdims as i64)])
    }

    /// `ReduceMean(x, axes)`: axes moved from attribute to input in opset 18.
    pub(crate) fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = attr_i("keepdims", keepdims as i64);
        if self.opset >= 18 {
            let axes = self.ints(axes);
            self.op("ReduceMean", &[x, &axes], vec![keep])
        } else {
            self.op("ReduceMean", &[x], vec![attr_ints("axes", axes), keep])
        }
    }

    /// `Unsqueeze(x, axes)` (axes as input, opset >= 13).
    pub(crate) fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.ints(axes);
        self.op("Unsqueeze", &[x, &axes], vec![])
    }

    /// `Reshape(x, Shape(like))`.
    pub(crate) fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let shape = self.op("Shape", &[like], vec![]);
        self.op("Reshape", &[x, &shape], vec![])
    }

    /// `Reshape(x, shape)` to a constant shape.
    pub(crate) fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let shape = self.ints(shape);
        self.op("Reshape", &[x, &shape], vec![])
    }

    /// Zeros shaped like `like`, of element type `dtype`.
    pub(crate) fn zeros_like(&mut self, like: &str, dtype: i32) -> String {
        let shape = self.op("Shape", &[like], vec![]);
        let mut value = tensor_scalar("value", 0.0, dtype);
        value.dims = vec![1];
        self.op("ConstantOfShape", &[&shape], vec![attr_t("value", value)])
    }

    /// `Mul(x, c)` with a scalar constant.
    pub(crate) fn scale(&mut self, x: &str, c: f64, dtype: i32) -> String {
        let c = self.scalar(c, dtype);
        self.op("Mul", &[x, &c], vec![])
    }

    /// `Where(cond, x, 0)`.
    pub(crate) fn mask(&mut self, cond: &str, x: &str, dtype: i32) -> String {
        let zero = self.scalar(0.0, dtype);
        self.op("Where", &[cond, x, &zero], vec![])
    }
}
