//! Over-long prompts are dropped from the training set before the first step, with a logged
//! count (verl's `data.filter_overlong_prompts`): a prompt that can never be rolled out would
//! otherwise be skipped by the rollout at every step that draws it, shrinking those steps.

use crate::TrainError;
use armt_data::Sample;
use armt_rollout::RolloutEnv;

/// `samples` without the prompts `env` can never roll out with `n` rows or longer than
/// `max_prompt_tokens` (0: no such limit; see [`RolloutEnv::overlong_prompts`]), and the ids of
/// those dropped.
pub fn drop_overlong_prompts(
    samples: Vec<Sample>,
    env: &RolloutEnv,
    n: usize,
    max_prompt_tokens: usize,
) -> Result<(Vec<Sample>, Vec<String>), TrainError> {
    let over = env.overlong_prompts(&samples, n, (max_prompt_tokens > 0).then_some(max_prompt_tokens))?;
    if over.is_empty() {
        return Ok((samples, Vec::new()));
    }
    let mut dropped = Vec::with_capacity(over.len());
    let mut kept = Vec::with_capacity(samples.len() - over.len());
    let mut next = over.iter().peekable();
    for (k, s) in samples.into_iter().enumerate() {
        if next.peek() == Some(&&k) {
            next.next();
            dropped.push(s.id);
        } else {
            kept.push(s);
        }
    }
    Ok((kept, dropped))
}

/// The log line for dropped prompts.
pub fn report(dropped: &[String], total: usize, env: &RolloutEnv, max_prompt_tokens: usize) -> String {
    let shown: Vec<&str> = dropped.iter().take(5).map(String::as_str).collect();
    format!(
        "filtered out {} of {total} training prompts over data.max_prompt_tokens = {max_prompt_tokens} \
         or not fitting rollout.max_context = {} / rollout.max_batch_tokens = {} (e.g. {}{})",
        dropped.len(),
        env.config.max_context,
        env.config.max_batch_tokens,
        shown.join(", "),
        if dropped.len() > shown.len() { ", …" } else { "" }
    )
}
