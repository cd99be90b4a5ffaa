//! `conveyor-loadtest`: see README.md, or `conveyor-loadtest --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", conveyor_loadtest::usage());
        println!();
        // Goose prints its own options and exits.
        goose::config::GooseConfiguration::parse_args_default_or_exit();
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async {
        let opts = conveyor_loadtest::Options::from_args(args)?;
        conveyor_loadtest::run(opts).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conveyor-loadtest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
