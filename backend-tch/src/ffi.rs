//! Safe wrappers around the C API of `shim/shim.cpp`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::ptr::{self, NonNull};

use tch::Tensor;

use crate::error::short_message;

#[repr(C)]
struct GcModule {
    _opaque: [u8; 0],
}

#[repr(C)]
struct GcFn {
    _opaque: [u8; 0],
}

// Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` pointers are.
type CTensor = c_void;

extern "C" {
    fn gc_free_string(s: *mut c_char);
    fn gc_load(path: *const c_char, device: c_int, out: *mut *mut GcModule) -> *mut c_char;
    fn gc_module_free(m: *mut GcModule);
    fn gc_module_paths(m: *mut GcModule, out: *mut *mut c_char) -> *mut c_char;
    fn gc_forward(m: *mut GcModule, x: *const CTensor, out: *mut *mut CTensor) -> *mut c_char;
    fn gc_build(
        m: *mut GcModule,
        layer: *const c_char,
        mode: c_int,
        height: c_int,
        width: c_int,
        prune: c_int,
        out: *mut *mut GcFn,
        paths_out: *mut *mut c_char,
        found: *mut c_int,
        pruned: *mut c_int,
    ) -> *mut c_char;
    fn gc_fn_free(f: *mut GcFn);
    fn gc_run(
        f: *mut GcFn,
        inputs: *const *const CTensor,
        n_inputs: c_int,
        outputs: *mut *mut CTensor,
        cap: c_int,
        n_outputs: *mut c_int,
    ) -> *mut c_char;
}

/// Takes ownership of a string the shim malloc'ed.
unsafe fn take_string(s: *mut c_char) -> String {
    let out = CStr::from_ptr(s).to_string_lossy().into_owned();
    gc_free_string(s);
    out
}

fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        Ok(())
    } else {
        // SAFETY: a non-null return is a malloc'ed C string from the shim.
        Err(short_message(&unsafe { take_string(err) }))
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("`{s}` contains a NUL byte"))
}

/// A TorchScript module loaded by the shim (eval mode, parameters without requires_grad).
pub struct Module(NonNull<GcModule>);

// SAFETY: a torch::jit::Module may be used from any thread, one at a time (we hold it by &mut).
unsafe impl Send for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: created by gc_load, freed once.
        unsafe { gc_module_free(self.0.as_ptr()) }
    }
}

/// What a built function computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `(x) -> (logits, out_1, ..., out_n)`: every exposable layer.
    Probe = 0,
    /// `(x) -> (logits, activation)`, the activation a leaf that requires grad.
    Capture = 1,
    /// `(x, activation) -> logits`, the layer's output replaced.
    Replace = 2,
    /// `(x) -> logits`, optimized for inference.
    Forward = 3,
    /// `(x) -> (logits, input)`, the input a leaf that requires grad; the whole forward is
    /// differentiable (nothing frozen).
    Input = 4,
    /// [`Mode::Input`] with every ReLU (`aten::relu`, `aten::relu_`) guided: its backward passes
    /// only positive gradients where its input was positive.
    GuidedInput = 5,
    /// `(x) -> (logits, input, out_1, ..., out_n, bias_1, ..., bias_n)`: [`Mode::Input`] with the
    /// output (not a leaf: autograd runs through it) and the per-channel bias of every FullGrad
    /// bias layer (exactly `nn.Conv2d` with a bias or `nn.BatchNorm2d`, its bias folded), in
    /// forward order; [`Built::names`] lists their paths.
    Full = 6,
}

impl Mode {
    /// Whether the function is built for a layer (the others ignore the layer name).
    pub fn has_layer(self) -> bool {
        matches!(self, Mode::Capture | Mode::Replace)
    }
}

impl Module {
    /// Loads `path` onto `device`.
    pub fn load(path: &Path, device: tch::Device) -> Result<Module, String> {
        let path = cstring(&path.to_string_lossy())?;
        let device = match device {
            tch::Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let mut out = ptr::null_mut();
        // SAFETY: valid C string and out-pointer.
        check(unsafe { gc_load(path.as_ptr(), device, &mut out) })?;
        Ok(Module(NonNull::new(out).expect("gc_load returned no module")))
    }

    /// Every submodule path (`named_modules`, root excluded).
    pub fn module_paths(&self) -> Result<Vec<String>, String> {
        let mut out = ptr::null_mut();
        // SAFETY: valid module and out-pointer; the string is ours on success.
        check(unsafe { gc_module_paths(self.0.as_ptr(), &mut out) })?;
        Ok(lines(unsafe { take_string(out) }))
    }

    /// The module's own `forward` method, as loaded.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, String> {
        let mut out = ptr::null_mut();
        // SAFETY: `x` outlives the call; the returned tensor is a new heap at::Tensor.
        check(unsafe { gc_forward(self.0.as_ptr(), x.as_ptr() as *const CTensor, &mut out) })?;
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }

    /// Builds a function for `layer`. `Ok(None)` when the layer has no exposable output.
    /// For [`Mode::Probe`], [`Built::names`] lists the exposed layers' paths in forward order
    /// (outer modules first among those that share one output: `layer4`, `layer4.1`). For
    /// [`Mode::Capture`], `prune` asks for class-token pruning, with shapes probed at `probe_hw`.
    pub fn build(
        &self,
        layer: &str,
        mode: Mode,
        probe_hw: (usize, usize),
        prune: bool,
    ) -> Result<Option<Built>, String> {
        let layer = cstring(layer)?;
        let (mut out, mut paths, mut found, mut pruned) = (ptr::null_mut(), ptr::null_mut(), 0, 0);
        // SAFETY: valid pointers; on success `out` (if found) and `paths` (probe) are ours.
        check(unsafe {
            gc_build(
                self.0.as_ptr(),
                layer.as_ptr(),
                mode as c_int,
                probe_hw.0 as c_int,
                probe_hw.1 as c_int,
                prune as c_int,
                &mut out,
                &mut paths,
                &mut found,
                &mut pruned,
            )
        })?;
        let names = if paths.is_null() { Vec::new() } else { lines(unsafe { take_string(paths) }) };
        if found == 0 {
            return Ok(None);
        }
        let function = Function(NonNull::new(out).expect("gc_build returned no function"));
        Ok(Some(Built { function, names, pruned: pruned as usize }))
    }
}

/// What [`Module::build`] made.
pub struct Built {
    pub function: Function,
    /// [`Mode::Probe`]: the path of each exposed layer; [`Mode::Full`]: of each bias layer.
    pub names: Vec<String>,
    /// [`Mode::Capture`]: how many nodes after the cut run on the class token only.
    pub pruned: usize,
}

fn lines(s: String) -> Vec<String> {
    s.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// A graph function built by the shim over the module's inlined forward.
pub struct Function(NonNull<GcFn>);

// SAFETY: as for Module.
unsafe impl Send for Function {}

impl Drop for Function {
    fn drop(&mut self) {
        // SAFETY: created by gc_build, freed once.
        unsafe { gc_fn_free(self.0.as_ptr()) }
    }
}

impl Function {
    /// Runs the function; returns at most `max_outputs` tensors, the logits first.
    pub fn run(&self, inputs: &[&Tensor], max_outputs: usize) -> Result<Vec<Tensor>, String> {
        let inputs: Vec<*const CTensor> = inputs.iter().map(|t| t.as_ptr() as *const CTensor).collect();
        let mut outputs: Vec<*mut CTensor> = vec![ptr::null_mut(); max_outputs];
        let mut n = 0;
        // SAFETY: the input tensors outlive the call; outputs has room for `max_outputs`.
        check(unsafe {
            gc_run(
                self.0.as_ptr(),
                inputs.as_ptr(),
                inputs.len() as c_int,
                outputs.as_mut_ptr(),
                max_outputs as c_int,
                &mut n,
            )
        })?;
        // SAFETY: the first `n` entries are new heap at::Tensors, now owned by tch.
        Ok(outputs[..n as usize].iter().map(|&p| unsafe { Tensor::from_ptr(p as *mut _) }).collect())
    }
}
