//! Bora's built-in LLM inference engine and its OpenAI-compatible server.
//!
//! Pipeline: [`gguf`] reads and validates a model file → [`llama`] holds the
//! weights and runs batched forward passes, each sequence against its own
//! KV cache → [`generate`] steps one sequence ([`sampling`], [`stop`],
//! [`tokenizer::TextStream`], [`logprobs`], and [`json_grammar`] masking the
//! logits for `response_format` and forced tool calls) → [`engine`] owns the
//! model on a scheduler thread that batches requests continuously, reusing
//! shared prompt prefixes ([`prefix_cache`]) and recording [`metrics`] →
//! [`server`] speaks the OpenAI HTTP API ([`api`] holds its bodies and
//! validation, [`template`] the chat templates). [`bert`] computes
//! embeddings.
//!
//! # Why candle, and not mistral.rs
//!
//! The tensor library is candle (`candle-core`, `candle-nn`), used without
//! default features: pure-Rust CPU kernels including the GGUF quantized
//! matmuls, a hardened GGUF reader, and a CUDA backend behind this crate's
//! `cuda` feature. We do not depend on `candle-transformers`: its model
//! files keep the KV cache inside the model, which does not fit a batching
//! scheduler, and compiling its hundreds of architectures costs minutes of
//! CI for the two we need; our Llama and BERT are short and written from
//! their papers and the GGUF layout.
//!
//! mistral.rs (`mistralrs-core`) was evaluated: it is a complete engine
//! (scheduler, paged attention, grammars) rather than a library of parts,
//! it builds on its own candle fork with a large dependency tree (hub
//! download, tokenizers with Oniguruma, CUDA kernels crates), and adopting
//! it would mean Bora's engine is a wrapper with its batching, caching and
//! metrics out of our control. Bora needs to own those (continuous batching,
//! prefix cache, vLLM-named metrics), so we build on candle's primitives.

#![forbid(unsafe_code)]

pub mod api;
pub mod bert;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod json_grammar;
pub mod llama;
pub mod logprobs;
pub mod metrics;
pub mod prefix_cache;
pub mod sampling;
pub mod server;
pub mod stop;
pub mod template;
pub mod tokenizer;

pub use engine::{Engine, EngineConfig, TextModel, default_device};
pub use error::{EngineError, Result};
pub use llama::WeightPrecision;
pub use server::{ServeOptions, Server, serve};
