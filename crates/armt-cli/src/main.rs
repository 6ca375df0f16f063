//! `armt`: train Qwen2.5-VL as an agentic multimodal reward model.

mod agent;
mod compare;
mod dev;
mod dist;
mod eval;
mod forward;
mod messages;
mod plan;
mod rollout;
mod rollout_bench;
mod serve;
mod train;
mod view;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "armt",
    version,
    about = "Agentic multimodal reward-model trainer for Qwen2.5-VL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One forward pass of a checkpoint over a chat: writes input ids, pixels and logits.
    Forward(forward::ForwardArgs),
    /// Multi-turn tool-using rollouts of a dataset, written as trajectory JSONL.
    Rollout(rollout::RolloutArgs),
    /// GRPO training, stage 1 (tool selection) or 2 (accuracy + tool efficiency).
    Train(train::TrainArgs),
    /// Cold-start supervised fine-tuning on trajectory JSONL.
    Sft(train::SftArgs),
    /// Draw a run's metrics (reward curves) as PNG.
    Plot(train::PlotArgs),
    /// Score a checkpoint on a dataset: accuracy, format, tool use (default: the built-in default).
    Eval(eval::EvalArgs),
    /// Render trajectory JSONL as a self-contained HTML page.
    View(view::ViewArgs),
    /// Check the process group's collectives and time an all-reduce (run under torchrun/srun).
    DistCheck(dist::DistCheckArgs),
    /// Per-GPU memory budget of a training config: fixed state, activations, KV cache; advice.
    Plan(plan::PlanArgs),
    /// Helpers for scripts/gpu-check (not a stable interface).
    #[command(subcommand, hide = true)]
    Dev(dev::DevCommand),
    /// (Developer) the rollout engine's decode, prefill and full-rollout speed on a random model.
    #[command(hide = true)]
    RolloutBench(rollout_bench::RolloutBenchArgs),
    /// Serve a checkpoint over HTTP: OpenAI chat completions with the tool loop, and /v1/judge.
    Serve(serve::ServeArgs),
    /// The tool loop here, the policy on an OpenAI-compatible server (vLLM, SGLang, armt serve).
    Agent(agent::AgentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// 1 for a failure; for a run a stop signal ended (after saving what it could), 128 + the
/// signal's number (130 for Ctrl-C, 143 for SIGTERM), the status a shell reports for a process the
/// signal killed: launchers, schedulers and scripts then see a preemption, not a failed job.
fn exit_status(e: &anyhow::Error) -> u8 {
    let interrupted = e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<armt_train::TrainError>(),
            Some(
                armt_train::TrainError::Interrupted { .. }
                    | armt_train::TrainError::InterruptedMidStep { .. }
                    | armt_train::TrainError::InterruptedFirstStep { .. }
            )
        )
    });
    match armt_train::signals::stop_signal() {
        Some(sig) if interrupted && (1..128).contains(&sig) => 128 + sig as u8,
        _ => 1,
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Forward(args) => forward::run(args),
        Command::Rollout(args) => rollout::run(args),
        Command::Train(args) => train::run(args),
        Command::Sft(args) => train::run_sft(args),
        Command::Plot(args) => train::run_plot(args),
        Command::View(args) => view::run(args),
        Command::Eval(args) => eval::run(args),
        Command::DistCheck(args) => dist::run_check(args),
        Command::Plan(args) => plan::run(args),
        Command::Dev(cmd) => dev::run(cmd),
        Command::RolloutBench(args) => rollout_bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Agent(args) => agent::run(args),
    }
}
