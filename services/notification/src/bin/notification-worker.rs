fn main() { eprintln!("notification-worker: not written yet"); std::process::exit(2) }
