//! TODO
use crate::cli::Cli;
pub fn main(_cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
