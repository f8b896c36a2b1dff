//! Golden tests against reference outputs computed independently from the
//! real weights (see shared/reference/README.md). Skipped, loudly, when the
//! models have not been fetched with `scripts/fetch-models.sh`.

mod common;

use std::sync::OnceLock;

use bora_engine::bert::BertEmbedder;
use bora_engine::generate::{FinishReason, Flow, GenerateParams, generate};
use bora_engine::sampling::SamplingParams;
use bora_engine::{TextModel, WeightPrecision};
use candle_core::Device;

/// The model with f32 weights: numerically closest to the reference.
fn smollm2() -> Option<&'static TextModel> {
    static MODEL: OnceLock<Option<TextModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            common::smollm2()
                .map(|p| TextModel::load(&p, None, &Device::Cpu, WeightPrecision::F32).unwrap())
        })
        .as_ref()
}

/// The model as served by default: quantized weights.
fn smollm2_quantized() -> Option<&'static TextModel> {
    static MODEL: OnceLock<Option<TextModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            common::smollm2().map(|p| {
                TextModel::load(&p, None, &Device::Cpu, WeightPrecision::Quantized).unwrap()
            })
        })
        .as_ref()
}

fn greedy(
    model: &TextModel,
    prompt_ids: Vec<u32>,
    max_tokens: usize,
) -> bora_engine::generate::Generation {
    generate(
        &model.llama,
        &model.tokenizer,
        model.context_length(),
        GenerateParams {
            prompt_ids,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            logprobs: None,
            grammar: None,
        },
        |_, _| Flow::Continue,
    )
    .unwrap()
}

#[test]
fn tokenizer_and_template_reproduce_reference_prompt_ids() {
    let Some(model) = smollm2() else { return };
    for (file, key) in [
        ("smollm2-135m-instruct-q4_1.golden.json", "chat"),
        ("smollm2-135m-instruct-q4_1.golden.json", "plain"),
        ("smollm2-135m-instruct-q4_1.golden-extra.json", "chat_paris"),
        (
            "smollm2-135m-instruct-q4_1.golden-extra.json",
            "plain_count",
        ),
    ] {
        let case = &common::reference(file)[key];
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(prompt).unwrap(),
            common::ids(&case["prompt_ids"]),
            "{key}"
        );
    }
    // The chat prompts are exactly what the model's own template renders.
    let msgs = [bora_engine::template::TemplateMessage {
        role: "user".into(),
        content: "What is the capital city of France? Answer in one sentence.".into(),
    }];
    let case = &common::reference("smollm2-135m-instruct-q4_1.golden-extra.json")["chat_paris"];
    assert_eq!(
        model.template.render(&msgs, true).unwrap(),
        case["prompt"].as_str().unwrap()
    );
}

fn check_clear_margin_prompt(model: &TextModel) {
    // The clear-margin prompt (smallest top-2 gap 0.885): exact ids, then end of turn.
    let case = &common::reference("smollm2-135m-instruct-q4_1.golden-extra.json")["chat_paris"];
    let want = common::ids(&case["greedy_ids"]);
    let g = greedy(model, common::ids(&case["prompt_ids"]), want.len() + 1);
    assert_eq!(&g.token_ids[..want.len()], want.as_slice());
    assert_eq!(g.text, case["text"].as_str().unwrap());
    assert_eq!(
        g.finish_reason,
        FinishReason::Stop,
        "the model ends its turn after the sentence"
    );
}

#[test]
fn greedy_continuation_matches_reference_exactly() {
    let Some(model) = smollm2() else { return };
    check_clear_margin_prompt(model);
}

#[test]
fn quantized_greedy_continuation_matches_reference_exactly() {
    let Some(model) = smollm2_quantized() else {
        return;
    };
    check_clear_margin_prompt(model);
}

#[test]
fn quantized_first_step_logits_are_close_to_reference() {
    let Some(model) = smollm2_quantized() else {
        return;
    };
    let case = &common::reference("smollm2-135m-instruct-q4_1.golden.json")["plain"];
    let mut cache = model.llama.new_cache();
    let logits = model
        .llama
        .forward(&common::ids(&case["prompt_ids"]), &mut cache)
        .unwrap();
    let top5 = common::ids(&case["top5"]);
    for (id, want) in top5.iter().zip(common::floats(&case["top5_logits"])) {
        let got = f64::from(logits[*id as usize]);
        // 8-bit activations in the quantized matmuls: a looser bound.
        assert!(
            (got - want).abs() < 1.0,
            "token {id}: got {got}, reference {want}"
        );
    }
    assert_eq!(bora_engine::sampling::argmax(&logits), top5[0]);
}

#[test]
fn first_step_logits_match_reference() {
    let Some(model) = smollm2() else { return };
    for key in ["chat", "plain"] {
        let case = &common::reference("smollm2-135m-instruct-q4_1.golden.json")[key];
        let mut cache = model.llama.new_cache();
        let logits = model
            .llama
            .forward(&common::ids(&case["prompt_ids"]), &mut cache)
            .unwrap();
        let top5 = common::ids(&case["top5"]);
        let want = common::floats(&case["top5_logits"]);
        for (id, want) in top5.iter().zip(&want) {
            let got = f64::from(logits[*id as usize]);
            assert!(
                (got - want).abs() < 0.05,
                "{key}: token {id}: got {got}, reference {want}"
            );
        }
        // The reference's clear winner is ours too.
        if want[0] - want[1] > 0.5 {
            assert_eq!(bora_engine::sampling::argmax(&logits), top5[0], "{key}");
        }
    }
}

#[test]
fn plain_prompt_greedy_prefix_matches_reference() {
    let Some(model) = smollm2() else { return };
    let case = &common::reference("smollm2-135m-instruct-q4_1.golden.json")["plain"];
    let want = common::ids(&case["greedy_ids"]);
    let n = 12;
    let g = greedy(model, common::ids(&case["prompt_ids"]), n);
    assert_eq!(g.token_ids, want[..n].to_vec());
    assert_eq!(g.finish_reason, FinishReason::Length);
}

#[test]
fn embeddings_match_reference() {
    let Some(dir) = common::minilm() else { return };
    let model = BertEmbedder::load(&dir, &Device::Cpu).unwrap();
    let reference = common::reference("all-minilm-l6-v2.golden.json");
    let sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "This is an example sentence",
    ];
    let mut vectors = Vec::new();
    for s in sentences {
        let case = &reference[s];
        assert_eq!(model.tokenize(s).unwrap(), common::ids(&case["ids"]), "{s}");
        let v = model.embed(s).unwrap();
        assert_eq!(v.len(), 384);
        for (got, want) in v.iter().zip(common::floats(&case["first8"])) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-3,
                "{s}: got {got}, reference {want}"
            );
        }
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        vectors.push(v);
    }
    let cos = &reference["cosine"];
    for i in 0..4 {
        for j in 0..4 {
            let got: f32 = vectors[i].iter().zip(&vectors[j]).map(|(a, b)| a * b).sum();
            let want = cos[i][j].as_f64().unwrap();
            assert!(
                (f64::from(got) - want).abs() < 1e-3,
                "cos[{i}][{j}]: got {got}, reference {want}"
            );
        }
    }
}

#[test]
fn batched_embeddings_match_reference_and_single_inputs() {
    let Some(dir) = common::minilm() else { return };
    let model = BertEmbedder::load(&dir, &Device::Cpu).unwrap();
    let reference = common::reference("all-minilm-l6-v2.golden.json");
    // Different lengths, so three of the four are padded in the batch.
    let sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "This is an example sentence",
    ];
    let ids: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| model.tokenize(s).unwrap())
        .collect();
    assert!(ids.iter().map(Vec::len).min() < ids.iter().map(Vec::len).max());
    let batch = model.embed_batch(&ids).unwrap();
    assert_eq!(batch.len(), 4);
    for ((s, v), ids) in sentences.iter().zip(&batch).zip(&ids) {
        for (got, want) in v.iter().zip(common::floats(&reference[*s]["first8"])) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-3,
                "{s}: got {got}, reference {want}"
            );
        }
        let alone = model.embed_ids(ids).unwrap();
        let d = v
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "{s}: batched and alone differ by {d}");
    }
    let err = model
        .embed_batch(&[ids[0].clone(), Vec::new()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("input is 0 tokens"), "{err}");
}
