//! `rollout.retokenize_turns`: a turn the policy wrote in a split its tokenizer would not
//! produce (the same text, other tokens) is replaced by the text tokenized afresh before the
//! tool turn, so the context equals the chat template's rendering of the conversation tokenized
//! in one go — what a chat server (vLLM, `armt serve`) builds from the messages; and the model
//! generator's rewind continues exactly as if the replaced turn had been the prompt.

mod common;

use armt_model::Qwen25Vl;
use armt_processing::{render_chat, Content, Message};
use armt_rollout::{
    CachePlan, Chunk, Generator, ModelGenerator, RolloutConfig, RolloutEnv, RowRng, SamplingConfig,
    ScriptedGenerator, TemplateIds,
};
use armt_tools::ToolRegistry;
use common::{encode, processor, repo, tiny_model_dir, zoom_sample, ANSWER};
use tch::{Device, Kind};

const THOUGHT: &str = "<think>Again, more carefully.</think>\n";
const BAD_CALL: &str = "<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {bad}\n</tool_call>";

#[test]
fn a_non_canonical_turn_is_replaced_by_its_text_tokenized() {
    let processor = processor();
    let tools = ToolRegistry::from_yaml_file(repo().join("configs/tools/zoom.yaml")).unwrap();
    let sample = zoom_sample("r", "rgb_97x61.png", "Which answer is better?");
    // The thought one character per token: decodes to the same text, tokenizes otherwise.
    let split: Vec<i64> = THOUGHT
        .chars()
        .flat_map(|c| encode(&processor, &c.to_string()))
        .chain(encode(&processor, BAD_CALL))
        .collect();
    let canonical = encode(&processor, &format!("{THOUGHT}{BAD_CALL}"));
    assert_ne!(split, canonical);
    let mut results = Vec::new();
    for on in [false, true] {
        let config = RolloutConfig {
            max_turns: 3,
            max_turn_tokens: 64,
            retokenize_turns: on,
            ..RolloutConfig::default()
        };
        let env = RolloutEnv {
            processor: &processor,
            tools: &tools,
            config: &config,
            image_dir: None,
        };
        let mut g = ScriptedGenerator::new(vec![vec![split.clone(), encode(&processor, ANSWER)]]);
        let r = env
            .run(&mut g, std::slice::from_ref(&sample), 1, |_| {})
            .unwrap()
            .remove(0);
        let t = r.trajectory.clone();
        assert_eq!(t.turns[0].assistant_text, format!("{THOUGHT}{BAD_CALL}"));
        assert_eq!(t.loss_mask.len(), t.token_ids.len() - t.prompt_len);
        assert_eq!(t.logprobs.len(), t.loss_mask.len());
        // The generator was told to rewind the turn, and the next chunk starts with the new tokens.
        assert_eq!(g.rewound[0], usize::from(on));
        if on {
            assert_eq!(g.appended[0][1].ids[..canonical.len()], canonical[..]);
        }
        // The conversation as messages, rendered and tokenized as a whole.
        let mut messages = env.prompt_messages(&sample);
        messages.push(Message::new(
            "assistant",
            Content::Text(t.turns[0].assistant_text.clone()),
        ));
        messages.push(Message::new(
            "tool",
            Content::Text(t.turns[0].tool_error.clone().unwrap()),
        ));
        messages.push(Message::new(
            "assistant",
            Content::Text(t.turns[1].assistant_text.clone()),
        ));
        let text = render_chat(&messages, Some(&tools.schemas()), false);
        let g0 = r.images[0].grid_thw;
        let expanded = text.replace(
            "<|image_pad|>",
            &"<|image_pad|>".repeat(g0[0] * g0[1] * g0[2] / 4),
        );
        let mut want = encode(&processor, &expanded);
        assert_eq!(want.pop(), Some(encode(&processor, "\n")[0]));
        results.push(t.token_ids == want);
    }
    // Off: the sampled split stays (what training needs); on: the server's context.
    assert_eq!(results, vec![false, true]);
}

#[test]
fn a_rewound_turn_continues_as_if_it_had_never_been_sampled() {
    let processor = processor();
    let model = Qwen25Vl::load(&tiny_model_dir(), Device::Cpu, Kind::Float).unwrap();
    let ids = TemplateIds::from_tokenizer(processor.tokenizer()).unwrap();
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let chunk = |text: &str| Chunk {
        ids: encode(&processor, text),
        ..Default::default()
    };
    let prompt = chunk("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n");
    let next =
        chunk("Some text instead.<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n");
    let plan = CachePlan {
        groups: 1,
        rows_per_group: 1,
        prefix_tokens: prompt.ids.len() + next.ids.len(),
        suffix_tokens: 64,
        turn_tokens: 6,
        prefill_chunk: 2048,
        sync_every: 2,
    };
    let stop = [ids.im_end, ids.endoftext];
    let turn = |g: &mut ModelGenerator| {
        g.begin_turn(0, 6).unwrap();
        loop {
            if let Some((_, s)) = g.step(&stop).unwrap().pop() {
                return s;
            }
        }
    };
    // Sample a turn, rewind it, append other text in its place and sample again ...
    let mut a = ModelGenerator::new(&model, greedy.clone(), ids.endoftext);
    a.prepare(&plan).unwrap();
    a.add_group(0, &prompt, &[(0, RowRng::new(0, 0, 0, 0))]).unwrap();
    let first = turn(&mut a);
    assert!(!first.ids.is_empty());
    a.rewind_turn(0).unwrap();
    a.append(&[0], std::slice::from_ref(&next)).unwrap();
    let after_rewind = turn(&mut a);
    // ... which is what the model does with that text in the prompt and no turn before it.
    let mut b = ModelGenerator::new(&model, greedy, ids.endoftext);
    b.prepare(&plan).unwrap();
    let whole = Chunk {
        ids: [prompt.ids.clone(), next.ids.clone()].concat(),
        ..Default::default()
    };
    b.add_group(0, &whole, &[(0, RowRng::new(0, 0, 0, 0))]).unwrap();
    let fresh = turn(&mut b);
    assert_eq!(after_rewind.ids, fresh.ids);
    for (x, y) in after_rewind.logprobs.iter().zip(&fresh.logprobs) {
        assert!(
            (x - y).abs() < 1e-4,
            "{:?} vs {:?}",
            after_rewind.logprobs,
            fresh.logprobs
        );
    }
}
