fn main() {
    println!("gradcam: not yet");
}
