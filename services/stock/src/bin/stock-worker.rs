fn main() { eprintln!("stock-worker: not written yet"); std::process::exit(2) }
