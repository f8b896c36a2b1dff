//! Continuous batching, the scheduler's limits and the prefix cache, on the
//! real SmolLM2 weights: batched forward passes give what one sequence at a
//! time gives, concurrent requests get the outputs they would get alone,
//! limits hold, nobody starves, and shared prompt prefixes are reused.
//! Skipped, loudly, when the models have not been fetched.

mod common;

use std::time::Duration;

use bora_engine::engine::GenEvent;
use bora_engine::generate::{FinishReason, GenerateParams, Generation};
use bora_engine::llama::BatchItem;
use bora_engine::sampling::SamplingParams;
use bora_engine::{Engine, EngineConfig, TextModel, WeightPrecision};
use candle_core::Device;

fn load() -> Option<TextModel> {
    load_as(WeightPrecision::Quantized)
}

/// The tests that compare outputs across batch shapes use f32 weights:
/// candle's quantized CPU kernels give a row slightly different results
/// depending on how many rows a product has (up to ~0.9 in a logit here),
/// which would hide what those tests check — that the scheduler feeds every
/// sequence exactly its own tokens, positions and cache. With f32 weights
/// batch shapes change only the order of float sums.
fn load_f32() -> Option<TextModel> {
    load_as(WeightPrecision::F32)
}

fn load_as(precision: WeightPrecision) -> Option<TextModel> {
    common::smollm2()
        .map(|p| TextModel::load(&p, Some("smol".into()), &Device::Cpu, precision).unwrap())
}

fn tokens(model: &TextModel, text: &str) -> Vec<u32> {
    model.tokenizer.encode(text).unwrap()
}

/// Greedy, with the top two alternatives of every token (to tell a real
/// difference from a near tie).
fn params(prompt_ids: Vec<u32>, max_tokens: usize) -> GenerateParams {
    GenerateParams {
        prompt_ids,
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        logprobs: Some(2),
        grammar: None,
    }
}

/// Two greedy runs of one prompt agree token for token, except that the
/// second may take the other branch where the first's two best tokens were
/// within float noise of each other (a batch of another shape sums in
/// another order; neither vLLM nor llama.cpp promise bit-equal logits
/// across batch shapes either). After such a branch the texts may differ.
fn assert_same_greedy(want: &Generation, got: &Generation, what: &str) {
    let first_difference = want
        .token_ids
        .iter()
        .zip(&got.token_ids)
        .position(|(a, b)| a != b);
    let Some(i) = first_difference else {
        assert_eq!(want.token_ids, got.token_ids, "{what}");
        return;
    };
    let top = &want.logprobs[i].top;
    let gap = top[0].1 - top[1].1;
    assert!(
        gap < 0.05 && got.token_ids[i] == top[1].0,
        "{what}: token {i} differs ({} vs {}) where the best two were {gap} apart",
        want.token_ids[i],
        got.token_ids[i]
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn a_batched_forward_pass_equals_one_sequence_at_a_time() {
    let Some(model) = load_f32() else { return };
    let llama = &model.llama;
    let prompts = [
        tokens(&model, "The capital of France is"),
        tokens(
            &model,
            "Once upon a time, in a small village by the sea, there lived",
        ),
        tokens(&model, "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"),
    ];
    let decode: [&[u32]; 3] = [&[500], &[501], &[502]];
    // What each sequence runs, step by step, and whether it wants logits:
    // the third's prompt comes in two chunks, so the first step mixes two
    // whole prompts with a middle chunk, and the second step decodes two
    // sequences while the third finishes its prompt.
    let (head, tail) = prompts[2].split_at(prompts[2].len() / 2);
    let mut inputs: Vec<Vec<(&[u32], bool)>> = prompts[..2]
        .iter()
        .map(|p| {
            let mut v = vec![(p.as_slice(), true)];
            v.extend(decode.iter().map(|d| (*d, true)));
            v
        })
        .collect();
    let mut third = vec![(head, false), (tail, true)];
    third.extend(decode.iter().map(|d| (*d, true)));
    inputs.push(third);

    // Alone: one sequence at a time.
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for seq in &inputs {
        let mut cache = llama.new_cache();
        let mut out = Vec::new();
        for &(tokens, logits) in seq {
            let mut item = [BatchItem {
                tokens,
                cache: &mut cache,
                logits,
            }];
            let l = llama.forward_batch(&mut item).unwrap().pop().unwrap();
            assert_eq!(l.is_some(), logits);
            out.extend(l);
        }
        alone.push(out);
    }
    // Together: step k runs every sequence's k-th input in one pass.
    let mut caches: Vec<_> = inputs.iter().map(|_| llama.new_cache()).collect();
    let mut together: Vec<Vec<Vec<f32>>> = vec![Vec::new(); inputs.len()];
    let steps = inputs.iter().map(Vec::len).max().unwrap();
    for step in 0..steps {
        let mut who = Vec::new();
        let mut batch: Vec<BatchItem<'_>> = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate() {
            if let Some(&(tokens, logits)) = inputs[i].get(step) {
                who.push(i);
                batch.push(BatchItem {
                    tokens,
                    cache,
                    logits,
                });
            }
        }
        let out = llama.forward_batch(&mut batch).unwrap();
        assert_eq!(out.len(), who.len());
        for (i, l) in who.into_iter().zip(out) {
            assert_eq!(l.is_some(), inputs[i][step].1, "sequence {i} step {step}");
            together[i].extend(l);
        }
    }
    for (seq, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(
            a.len(),
            4,
            "sequence {seq}: the prompt and three decode steps"
        );
        assert_eq!(a.len(), t.len());
        for (step, (x, y)) in a.iter().zip(t).enumerate() {
            assert_eq!(argmax(x), argmax(y), "sequence {seq} step {step}");
            let d = max_abs_diff(x, y);
            assert!(d < 1e-3, "sequence {seq} step {step}: logits differ by {d}");
        }
    }
}

/// Runs a request to the end; its text events concatenated, and the result.
async fn run(engine: &Engine, p: GenerateParams) -> (String, Generation) {
    let mut rx = engine.submit(p).await.unwrap();
    let mut text = String::new();
    loop {
        match rx.recv().await.expect("the engine ends every request") {
            GenEvent::Text(t, _) => text.push_str(&t),
            GenEvent::Done(g) => return (text, g),
            GenEvent::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

/// The sum of a metric's series.
fn metric(engine: &Engine, name: &str) -> f64 {
    let text = engine.metrics().encode();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!values.is_empty(), "no {name} in\n{text}");
    values.iter().sum()
}

/// A user turn in the model's ChatML, ready for the assistant's answer.
fn chat(model: &TextModel, user: &str) -> Vec<u32> {
    tokens(
        model,
        &format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
    )
}

fn prompts(model: &TextModel, n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| chat(model, &format!("Write a long poem about the number {i}.")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_what_they_would_get_alone() {
    let Some(model) = load_f32() else { return };
    let prompts = prompts(&model, 6);
    let engine = Engine::start(
        model,
        EngineConfig {
            prefix_cache_bytes: 0,
            ..EngineConfig::default()
        },
    );
    let mut alone = Vec::new();
    for p in &prompts {
        alone.push(run(&engine, params(p.clone(), 24)).await);
    }
    assert_eq!(metric(&engine, "bora_engine_batch_size_sum"), {
        metric(&engine, "bora_engine_batch_size_count")
    });
    let together =
        futures_util::future::join_all(prompts.iter().map(|p| run(&engine, params(p.clone(), 24))))
            .await;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_same_greedy(&a.1, &t.1, &format!("request {i}"));
        assert_eq!(t.0, t.1.text, "request {i}: the streamed text is the text");
    }
    // Batches of more than one sequence did run.
    let (sum, count) = (
        metric(&engine, "bora_engine_batch_size_sum"),
        metric(&engine, "bora_engine_batch_size_count"),
    );
    assert!(
        sum > count,
        "no step ran more than one sequence: {sum}/{count}"
    );
    let generated: usize = together
        .iter()
        .chain(&alone)
        .map(|r| r.1.completion_tokens)
        .sum();
    assert_eq!(
        metric(&engine, "vllm:generation_tokens_total") as usize,
        generated
    );
    assert_eq!(metric(&engine, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(&engine, "vllm:num_requests_waiting"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_is_bounded_and_every_request_finishes() {
    let Some(model) = load() else { return };
    let prompts = prompts(&model, 5);
    let engine = Engine::start(
        model,
        EngineConfig {
            max_running: 2,
            ..EngineConfig::default()
        },
    );
    let results = tokio::time::timeout(
        Duration::from_secs(300),
        futures_util::future::join_all(prompts.iter().map(|p| run(&engine, params(p.clone(), 16)))),
    )
    .await
    .expect("every request finishes");
    assert_eq!(results.len(), 5);
    for (_, g) in &results {
        assert!(g.completion_tokens > 0);
    }
    // No step ran more than two sequences: every observation is in the
    // `le="2.0"` bucket.
    let text = engine.metrics().encode();
    let le2 = text
        .lines()
        .find(|l| l.starts_with("bora_engine_batch_size_bucket") && l.contains("le=\"2.0\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no le=2 bucket in\n{text}"));
    assert_eq!(le2, metric(&engine, "bora_engine_batch_size_count"));
    assert!(
        metric(&engine, "bora_engine_batch_size_sum") > le2,
        "two ran together"
    );
    assert_eq!(
        metric(&engine, "vllm:request_success_total"),
        5.0,
        "every request counted as finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_kv_budget_runs_requests_one_after_another() {
    let Some(model) = load() else { return };
    let prompts = prompts(&model, 3);
    let max_tokens = 6;
    // Room for one request's reservation (prompt + max_tokens), not two.
    let longest = prompts.iter().map(Vec::len).max().unwrap() + max_tokens;
    let budget = model.llama.kv_bytes_per_token() * longest * 3 / 2;
    let engine = Engine::start(
        model,
        EngineConfig {
            kv_cache_bytes: budget,
            ..EngineConfig::default()
        },
    );
    let results = futures_util::future::join_all(
        prompts
            .iter()
            .map(|p| run(&engine, params(p.clone(), max_tokens))),
    )
    .await;
    assert_eq!(results.len(), 3);
    assert_eq!(
        metric(&engine, "bora_engine_batch_size_sum"),
        metric(&engine, "bora_engine_batch_size_count"),
        "one sequence per step"
    );
    // A request larger than the whole budget still runs (alone).
    let tiny = Engine::start(
        load().unwrap(),
        EngineConfig {
            kv_cache_bytes: 1,
            ..EngineConfig::default()
        },
    );
    let (_, g) = run(&tiny, params(prompts[0].clone(), 3)).await;
    assert!(g.completion_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prompt_prefix_is_computed_once() {
    let Some(model) = load_f32() else { return };
    let system = "You are a helpful assistant for a bakery. You answer questions about \
                  bread, cakes and opening hours, politely and briefly, in English. \
                  The bakery opens at seven and closes at six, every day but Sunday.";
    let a = chat(&model, &format!("{system}\nQuestion: when do you open?"));
    let b = chat(
        &model,
        &format!("{system}\nQuestion: do you sell rye bread?"),
    );
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(shared >= 32, "the prompts share {shared} tokens");
    let uncached = Engine::start(
        load_f32().unwrap(),
        EngineConfig {
            prefix_cache_bytes: 0,
            ..EngineConfig::default()
        },
    );
    let cached = Engine::start(model, EngineConfig::default());
    let first = run(&cached, params(a.clone(), 12)).await;
    assert_eq!(metric(&cached, "vllm:prefix_cache_hits_total"), 0.0);
    let second = run(&cached, params(b.clone(), 12)).await;
    let hits = metric(&cached, "vllm:prefix_cache_hits_total") as usize;
    assert!(
        hits >= shared / 16 * 16 - 16 && hits <= shared,
        "{hits} tokens reused of {shared} shared"
    );
    assert_eq!(
        metric(&cached, "vllm:prefix_cache_queries_total") as usize,
        a.len() + b.len()
    );
    // The same prompt again reuses all but its last token's block.
    let again = run(&cached, params(a.clone(), 12)).await;
    let more = metric(&cached, "vllm:prefix_cache_hits_total") as usize - hits;
    assert!(
        more >= (a.len() - 1) / 16 * 16,
        "{more} of {} reused",
        a.len()
    );
    // And reuse changes nothing in the output.
    for (p, got) in [(&a, &first), (&b, &second), (&a, &again)] {
        let want = run(&uncached, params(p.clone(), 12)).await;
        assert_same_greedy(&want.1, &got.1, "with and without the prefix cache");
    }
    assert_eq!(metric(&uncached, "vllm:prefix_cache_hits_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_leaves_the_batch() {
    let Some(model) = load() else { return };
    let prompts = prompts(&model, 2);
    let engine = Engine::start(model, EngineConfig::default());
    let mut rx = engine
        .submit(params(prompts[0].clone(), 400))
        .await
        .unwrap();
    // Wait for the first text, then hang up.
    loop {
        match rx.recv().await.unwrap() {
            GenEvent::Text(t, _) if !t.is_empty() => break,
            GenEvent::Text(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(rx);
    let (_, g) = run(&engine, params(prompts[1].clone(), 8)).await;
    assert_eq!(g.completion_tokens, 8);
    assert_eq!(g.finish_reason, FinishReason::Length);
    let text = engine.metrics().encode();
    assert!(
        text.contains(
            "vllm:request_success_total{model_name=\"smol\",finished_reason=\"abort\"} 1"
        ),
        "{text}"
    );
    assert!(
        metric(&engine, "vllm:generation_tokens_total") < 400.0,
        "the cancelled request stopped generating"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_fails_alone() {
    let Some(model) = load_f32() else { return };
    let good = prompts(&model, 1).remove(0);
    let engine = Engine::start(model, EngineConfig::default());
    let alone = run(&engine, params(good.clone(), 12)).await;
    // A token id far outside the vocabulary makes the forward pass fail
    // (the server's tokenizer never produces one; a library caller might).
    let bad = params(vec![1, 10_000_000], 12);
    let mut bad_rx = engine.submit(bad).await.unwrap();
    let (together, failed) = tokio::join!(run(&engine, params(good, 12)), async {
        loop {
            match bad_rx.recv().await.expect("the engine ends every request") {
                GenEvent::Failed(e) => return e.to_string(),
                GenEvent::Done(g) => panic!("the bad request finished: {g:?}"),
                GenEvent::Text(..) => {}
            }
        }
    });
    assert!(failed.contains("model execution failed"), "{failed}");
    assert_same_greedy(&alone.1, &together.1, "beside a failing request");
    assert_eq!(metric(&engine, "vllm:num_requests_running"), 0.0);
    let text = engine.metrics().encode();
    assert!(
        text.contains("finished_reason=\"error\"} 1"),
        "one request counted as failed:\n{text}"
    );
}
