fn main() { eprintln!("stock-api: not written yet"); std::process::exit(2) }
