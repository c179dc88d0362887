//! The `shoal` binary: parse flags, hand over to [`shoal::app`], map errors to exit codes.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shoal::cli::Cli::parse();
    match shoal::app::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
