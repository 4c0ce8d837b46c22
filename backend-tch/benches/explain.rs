//! `cargo bench -p backend-tch --features tch`: the same program as `examples/bench.rs` (one JSON
//! line per model and batch; see there for the flags).

#[path = "../examples/bench.rs"]
mod bench;

fn main() {
    bench::main();
}
