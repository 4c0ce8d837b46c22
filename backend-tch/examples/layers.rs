//! Lists the layers of a TorchScript model and its default layer; with a layer, also captures it on
//! a zero input and prints the activation's and gradient's shapes and norms.
//!
//! ```text
//! cargo run -p backend-tch --features tch --example layers -- model.pt [layer]
//! ```
//! `GRADCAM_TCH_DEBUG=1` prints the inlined graphs the shim builds.

use backend_tch::{DeviceChoice, TorchScriptModel};
use gradcam_core::{CamModel, Target};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: layers MODEL.pt [LAYER]")?;
    let mut model = TorchScriptModel::load(path.as_ref(), DeviceChoice::Auto)?;
    for layer in model.layers()? {
        println!("{:40} {:?}", layer.name, layer.shape);
    }
    println!("default: {}", model.default_layer()?);
    if let Some(layer) = args.next() {
        let input = ndarray::Array4::<f32>::from_elem((1, 3, 224, 224), 0.5);
        let capture = model.capture(input.view(), &layer, Some(&Target::top_one()))?;
        let norm = |v: Vec<f32>| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let gradient = capture.gradient.expect("a target was given");
        println!(
            "{layer}: activation {:?} |a| = {}, gradient |g| = {}, class {:?}",
            capture.activation.shape(),
            norm(capture.activation.to_vec()),
            norm(gradient.to_vec()),
            Target::top_one().resolve(capture.logits.view())?
        );
    }
    Ok(())
}
