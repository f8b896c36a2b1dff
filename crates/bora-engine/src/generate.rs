//! The generation loop for one sequence: prefill the prompt, then sample,
//! detokenize, watch for stop strings and limits, token by token.
//!
//! It is written against the [`LanguageModel`] trait so it can be tested
//! with a scripted fake model, and so a batching scheduler can later drive
//! the same per-sequence state ([`Sampler`], [`TextStream`], [`StopMatcher`])
//! one step at a time.

use crate::error::{EngineError, Result};
use crate::json_grammar::{Grammar, Matcher};
use crate::llama::{KvCache, Llama};
use crate::logprobs::{TokenLogprob, token_logprob};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::{StopMatcher, StopOutcome};
use crate::tokenizer::{TextStream, TextTokenizer};

/// A model that maps tokens to next-token logits, with per-sequence state.
pub trait LanguageModel {
    /// Per-sequence state (the KV cache).
    type Cache;
    /// A fresh state for a new sequence.
    fn new_cache(&self) -> Self::Cache;
    /// Appends `tokens` to the sequence and returns the next-token logits.
    fn forward(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>>;
}

impl LanguageModel for Llama {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }

    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Llama::forward(self, tokens, cache)
    }
}

/// Why generation ended, as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, or a stop string matched.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The output is a call of one of the request's tools (set by the API
    /// layer, which parses the call out of the generated text).
    ToolCalls,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// The prompt's token ids (non-empty).
    pub prompt_ids: Vec<u32>,
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Stop strings; the output ends before the first match.
    pub stop: Vec<String>,
    /// Report log-probabilities, with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Constrain the output to this JSON grammar (`response_format`).
    pub grammar: Option<std::sync::Arc<Grammar>>,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text (without the stop string or end-of-turn token).
    pub text: String,
    /// Every sampled token id, including a final end-of-turn token.
    pub token_ids: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub completion_tokens: usize,
    /// When asked for: one entry per sampled token except a final
    /// end-of-turn token (a token that completed a stop string is included).
    pub logprobs: Vec<TokenLogprob>,
}

/// Whether the consumer of streamed text still wants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep generating.
    Continue,
    /// Stop now (the client went away).
    Cancel,
}

/// What a [`Sequence`] wants after a step.
#[derive(Debug)]
pub enum Step {
    /// Run this token through the model and call [`Sequence::step`] with
    /// the logits that follow it.
    Next(u32),
    /// The sequence is finished.
    Done(Generation),
}

/// One sequence's generation state between forward passes: sampling,
/// constrained decoding, detokenization, stop strings and limits. A
/// scheduler owns many and steps each with its own logits, in any
/// interleaving; [`generate`] drives a single one.
#[derive(Debug)]
pub struct Sequence {
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    logprobs_k: Option<usize>,
    sampler: Sampler,
    stream: TextStream,
    stops: StopMatcher,
    matcher: Option<Matcher>,
    text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    /// Log-probabilities not yet passed on, from `logprobs[sent..]`.
    sent: usize,
}

impl Sequence {
    /// A sequence that has not run yet.
    pub fn new(params: GenerateParams) -> Self {
        Self {
            prompt_ids: params.prompt_ids,
            max_tokens: params.max_tokens,
            logprobs_k: params.logprobs,
            sampler: Sampler::new(params.sampling),
            stream: TextStream::default(),
            stops: StopMatcher::new(params.stop),
            matcher: params.grammar.map(Matcher::new),
            text: String::new(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            sent: 0,
        }
    }

    /// The prompt's token ids: what to run through the model first.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Tokens sampled so far.
    pub fn generated(&self) -> usize {
        self.token_ids.len()
    }

    /// Takes the logits that follow the last token run (the prompt's, at
    /// first), samples the next token and passes any text that became final
    /// to `on_text` with the log-probabilities (when asked for) of the tokens
    /// sampled since the previous call.
    pub fn step(
        &mut self,
        mut logits: Vec<f32>,
        tokenizer: &TextTokenizer,
        context_length: usize,
        on_text: &mut dyn FnMut(&str, &[TokenLogprob]) -> Flow,
    ) -> Result<Step> {
        if self.at_limit(context_length) {
            return self.finish(FinishReason::Length, tokenizer, on_text);
        }
        let raw = self.logprobs_k.map(|_| logits.clone());
        if let Some(m) = &self.matcher
            && !m.mask(&mut logits, tokenizer)
        {
            // A byte-level vocabulary has a token for every byte, so this
            // only happens with a vocabulary that cannot spell JSON.
            return Err(EngineError::Tokenizer(
                "no token of the vocabulary can continue the JSON output".into(),
            ));
        }
        let id = self.sampler.sample(&mut logits);
        if let Some(m) = &mut self.matcher
            && !tokenizer.is_end_of_generation(id)
        {
            // `mask` left only tokens the automaton accepts.
            m.advance(tokenizer.token_bytes(id));
        }
        self.token_ids.push(id);
        if tokenizer.is_end_of_generation(id) {
            return self.finish(FinishReason::Stop, tokenizer, on_text);
        }
        if let (Some(k), Some(raw)) = (self.logprobs_k, raw) {
            self.logprobs.push(token_logprob(&raw, id, k));
        }
        if let Some(delta) = self.stream.push(tokenizer, id)? {
            match self.stops.push(&delta) {
                StopOutcome::Continue(piece) => {
                    if self.emit(piece, on_text) == Flow::Cancel {
                        return self.finish(FinishReason::Stop, tokenizer, on_text);
                    }
                }
                StopOutcome::Stopped(piece) => {
                    self.emit(piece, on_text);
                    return Ok(Step::Done(self.generation(FinishReason::Stop)));
                }
            }
        }
        if self.at_limit(context_length) {
            // Ends without another forward pass.
            return self.finish(FinishReason::Length, tokenizer, on_text);
        }
        Ok(Step::Next(id))
    }

    fn at_limit(&self, context_length: usize) -> bool {
        self.token_ids.len() >= self.max_tokens
            || self.prompt_ids.len() + self.token_ids.len() >= context_length
    }

    /// Passes `piece` and the pending log-probabilities on, unless both are
    /// empty.
    fn emit(
        &mut self,
        piece: String,
        on_text: &mut dyn FnMut(&str, &[TokenLogprob]) -> Flow,
    ) -> Flow {
        if piece.is_empty() && self.sent == self.logprobs.len() {
            return Flow::Continue;
        }
        self.text.push_str(&piece);
        let new = &self.logprobs[self.sent..];
        self.sent = self.logprobs.len();
        on_text(&piece, new)
    }

    /// Flushes text held back for UTF-8 completion or a possible stop
    /// string, and ends.
    fn finish(
        &mut self,
        reason: FinishReason,
        tokenizer: &TextTokenizer,
        on_text: &mut dyn FnMut(&str, &[TokenLogprob]) -> Flow,
    ) -> Result<Step> {
        if let Some(rest) = self.stream.flush(tokenizer)? {
            match self.stops.push(&rest) {
                StopOutcome::Continue(piece) | StopOutcome::Stopped(piece) => {
                    self.emit(piece, on_text);
                }
            }
        }
        let rest = self.stops.finish();
        self.emit(rest, on_text);
        Ok(Step::Done(self.generation(reason)))
    }

    fn generation(&mut self, finish_reason: FinishReason) -> Generation {
        Generation {
            text: std::mem::take(&mut self.text),
            completion_tokens: self.token_ids.len(),
            token_ids: std::mem::take(&mut self.token_ids),
            finish_reason,
            prompt_tokens: self.prompt_ids.len(),
            logprobs: std::mem::take(&mut self.logprobs),
        }
    }
}

/// Generates text for `params` on its own, calling `on_text` with each new
/// piece of text as soon as it is final, and the log-probabilities (when
/// asked for) of the tokens sampled since the previous call. A last call may
/// carry log-probabilities with empty text. Returns early, with what it has,
/// when `on_text` says [`Flow::Cancel`].
pub fn generate<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    context_length: usize,
    params: GenerateParams,
    mut on_text: impl FnMut(&str, &[TokenLogprob]) -> Flow,
) -> Result<Generation> {
    let mut sequence = Sequence::new(params);
    let mut cache = model.new_cache();
    let mut logits = model.forward(sequence.prompt_ids(), &mut cache)?;
    loop {
        match sequence.step(logits, tokenizer, context_length, &mut on_text)? {
            Step::Next(id) => logits = model.forward(&[id], &mut cache)?,
            Step::Done(generation) => return Ok(generation),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gguf::TokenizerMetadata;

    /// A byte-level vocabulary of `tokens`; the first is `<|im_end|>`, the
    /// end-of-turn control token.
    fn tokenizer_of(tokens: &[&str]) -> TextTokenizer {
        let tokens: Vec<String> = tokens.iter().map(|s| s.to_string()).collect();
        let mut token_types = vec![1; tokens.len()];
        token_types[0] = 3;
        TextTokenizer::from_gguf(&TokenizerMetadata {
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            tokens,
            token_types,
            merges: vec![],
            bos_token_id: None,
            eos_token_id: Some(0),
            eot_token_id: None,
            add_bos_token: false,
        })
        .unwrap()
    }

    /// A tiny byte-level vocabulary: `a`..`e`, a space (`Ġ`), `<|im_end|>`.
    pub(crate) fn tiny_tokenizer() -> TextTokenizer {
        tokenizer_of(&["<|im_end|>", "a", "b", "c", "d", "e", "Ġ"])
    }

    /// Emits a fixed token script, one token per step (greedy picks it).
    struct Scripted(Vec<u32>);

    impl LanguageModel for Scripted {
        type Cache = usize;
        fn new_cache(&self) -> usize {
            0
        }
        fn forward(&self, tokens: &[u32], step: &mut usize) -> Result<Vec<f32>> {
            assert!(!tokens.is_empty());
            let mut logits = vec![0.0; 7];
            let next = self.0.get(*step).copied().unwrap_or(0);
            logits[next as usize] = 10.0;
            *step += 1;
            Ok(logits)
        }
    }

    fn run(script: &[u32], max_tokens: usize, stop: &[&str]) -> (Generation, Vec<String>) {
        let tok = tiny_tokenizer();
        let mut pieces = Vec::new();
        let g = generate(
            &Scripted(script.to_vec()),
            &tok,
            100,
            GenerateParams {
                prompt_ids: vec![1, 2],
                max_tokens,
                sampling: SamplingParams::greedy(),
                stop: stop.iter().map(|s| s.to_string()).collect(),
                logprobs: None,
                grammar: None,
            },
            |p, _| {
                pieces.push(p.to_string());
                Flow::Continue
            },
        )
        .unwrap();
        (g, pieces)
    }

    #[test]
    fn stops_at_end_of_turn_token() {
        let (g, pieces) = run(&[1, 6, 2, 0, 3], 10, &[]);
        assert_eq!(g.text, "a b");
        assert_eq!(pieces.concat(), "a b");
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert_eq!((g.prompt_tokens, g.completion_tokens), (2, 4));
    }

    #[test]
    fn max_tokens_gives_length() {
        let (g, _) = run(&[1, 2, 3, 4, 5], 3, &[]);
        assert_eq!(g.text, "abc");
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(g.completion_tokens, 3);
    }

    #[test]
    fn stop_string_cuts_output() {
        let (g, pieces) = run(&[1, 2, 3, 4, 5], 10, &["cd"]);
        assert_eq!(g.text, "ab");
        assert_eq!(pieces.concat(), "ab");
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert_eq!(g.completion_tokens, 4);
    }

    #[test]
    fn held_back_text_is_flushed_at_the_end() {
        let (g, _) = run(&[1, 2, 3], 3, &["cx"]);
        assert_eq!(g.text, "abc");
        assert_eq!(g.finish_reason, FinishReason::Length);
    }

    #[test]
    fn logprobs_follow_the_tokens_and_the_text() {
        let tok = tiny_tokenizer();
        let mut pieces = Vec::new();
        let g = generate(
            &Scripted(vec![1, 6, 2, 0]),
            &tok,
            100,
            GenerateParams {
                prompt_ids: vec![1],
                max_tokens: 10,
                sampling: SamplingParams::greedy(),
                stop: vec![],
                logprobs: Some(2),
                grammar: None,
            },
            |text, lps| {
                pieces.push((text.to_string(), lps.to_vec()));
                Flow::Continue
            },
        )
        .unwrap();
        // a, space, b: three entries; the end-of-turn token has none.
        let ids: Vec<u32> = g.logprobs.iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![1, 6, 2]);
        let streamed: Vec<u32> = pieces
            .iter()
            .flat_map(|p| p.1.iter().map(|l| l.id))
            .collect();
        assert_eq!(streamed, ids);
        for l in &g.logprobs {
            assert_eq!(l.top.len(), 2);
            assert_eq!(l.top[0].0, l.id, "greedy picks the most likely token");
            // One logit of 10 against six of 0.
            let expected = 10.0 - (10f32.exp() + 6.0).ln();
            assert!((l.logprob - expected).abs() < 1e-5);
        }
    }

    /// A vocabulary of JSON pieces: `<|im_end|>`, `{`, `}`, `"`, `a`,
    /// `":`, `1`, `{"`, `Ġ`, `x`, `:`.
    fn json_tokenizer() -> TextTokenizer {
        tokenizer_of(&[
            "<|im_end|>",
            "{",
            "}",
            "\"",
            "a",
            "\":",
            "1",
            "{\"",
            "Ġ",
            "x",
            ":",
        ])
    }

    /// Prefers tokens in a fixed order of preference, whatever the step.
    struct Prefers(Vec<u32>);

    impl LanguageModel for Prefers {
        type Cache = ();
        fn new_cache(&self) {}
        fn forward(&self, _tokens: &[u32], _: &mut ()) -> Result<Vec<f32>> {
            let mut logits = vec![0.0; 11];
            for (rank, &id) in self.0.iter().enumerate() {
                logits[id as usize] = 20.0 - rank as f32;
            }
            Ok(logits)
        }
    }

    fn constrained(prefs: &[u32], max_tokens: usize, grammar: Grammar) -> Generation {
        generate(
            &Prefers(prefs.to_vec()),
            &json_tokenizer(),
            100,
            GenerateParams {
                prompt_ids: vec![1],
                max_tokens,
                sampling: SamplingParams::greedy(),
                stop: vec![],
                logprobs: None,
                grammar: Some(std::sync::Arc::new(grammar)),
            },
            |_, _| Flow::Continue,
        )
        .unwrap()
    }

    #[test]
    fn json_mode_masks_invalid_tokens_and_the_early_end() {
        // The model wants to end at once, then to say `x`; the grammar makes
        // it open an object and close it before the end-of-turn token.
        let g = constrained(&[0, 9, 8, 2, 1], 10, Grammar::any_object());
        assert_eq!(g.text, "{}");
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert_eq!(*g.token_ids.last().unwrap(), 0);
    }

    #[test]
    fn json_schema_is_followed_and_truncation_is_length() {
        let schema: crate::json_grammar::Json = serde_json::from_str(
            r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#,
        )
        .unwrap();
        let grammar = Grammar::from_schema(&schema, "schema").unwrap();
        // Preferences that, unconstrained, would give `}x1...`.
        let g = constrained(&[0, 2, 9, 6, 7, 3, 4, 5, 1], 20, grammar.clone());
        let value: serde_json::Value =
            serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("{e}: {g:?}"));
        assert_eq!(value["a"].as_i64().map(|n| n > 0), Some(true), "{}", g.text);
        assert_eq!(g.finish_reason, FinishReason::Stop);
        let cut = constrained(&[0, 2, 9, 6, 7, 3, 4, 5, 1], 2, grammar);
        assert_eq!(cut.text, "{\"a");
        assert_eq!(cut.finish_reason, FinishReason::Length);
    }

    #[test]
    fn context_window_bounds_generation() {
        let tok = tiny_tokenizer();
        let g = generate(
            &Scripted(vec![1; 50]),
            &tok,
            5,
            GenerateParams {
                prompt_ids: vec![1, 2],
                max_tokens: 100,
                sampling: SamplingParams::greedy(),
                stop: vec![],
                logprobs: None,
                grammar: None,
            },
            |_, _| Flow::Continue,
        )
        .unwrap();
        assert_eq!(g.completion_tokens, 3);
        assert_eq!(g.finish_reason, FinishReason::Length);
    }
}
