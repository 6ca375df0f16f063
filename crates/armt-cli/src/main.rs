//! `armt`: train Qwen2.5-VL as an agentic multimodal reward model.

mod forward;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "armt", version, about = "Agentic multimodal reward-model trainer for Qwen2.5-VL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One forward pass of a checkpoint over a chat: writes input ids, pixels and logits.
    Forward(forward::ForwardArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Forward(args) => forward::run(args),
    }
}
