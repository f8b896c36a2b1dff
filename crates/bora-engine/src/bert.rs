//! Sentence embeddings with a BERT encoder (e.g. all-MiniLM-L6-v2), loaded
//! from a directory holding `model.safetensors`, `tokenizer.json` and
//! `config.json`; the embedding is the mean of the last hidden states,
//! L2-normalised (sentence-transformers' mean pooling).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, Device, Module, Tensor};
use candle_nn::Linear;
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The `config.json` fields the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Hidden size.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Longest input, in tokens.
    pub max_position_embeddings: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation: `gelu` (exact) or `gelu_new` / `gelu_pytorch_tanh`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Should be `bert`.
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT sentence-embedding model.
pub struct BertEmbedder {
    config: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    exact_gelu: bool,
    device: Device,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BertEmbedder {
    /// Loads the model in `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let file = |name: &str| dir.join(name);
        let invalid = |path: PathBuf, reason: String| EngineError::InvalidModel { path, reason };
        let config_path = file("config.json");
        let raw = std::fs::read_to_string(&config_path).map_err(|source| EngineError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: BertConfig =
            serde_json::from_str(&raw).map_err(|e| invalid(config_path.clone(), e.to_string()))?;
        if let Some(kind) = &config.model_type
            && kind != "bert"
        {
            return Err(EngineError::Unsupported {
                path: config_path,
                reason: format!("model_type '{kind}' (only bert is supported for embeddings)"),
            });
        }
        let exact_gelu = match config.hidden_act.as_str() {
            "gelu" => true,
            "gelu_new" | "gelu_pytorch_tanh" => false,
            other => {
                return Err(EngineError::Unsupported {
                    path: config_path,
                    reason: format!("hidden_act '{other}'"),
                });
            }
        };
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(invalid(
                config_path,
                "hidden_size is not a multiple of num_attention_heads".into(),
            ));
        }

        let tok_path = file("tokenizer.json");
        if !tok_path.is_file() {
            return Err(EngineError::Io {
                path: tok_path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| invalid(tok_path.clone(), e.to_string()))?;
        // One sequence per forward pass: no padding; over-long inputs are
        // rejected by `embed` rather than silently truncated.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| invalid(tok_path.clone(), e.to_string()))?;

        let weights_path = file("model.safetensors");
        if !weights_path.is_file() {
            return Err(EngineError::Io {
                path: weights_path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| {
            invalid(
                weights_path.clone(),
                format!(
                    "not a readable safetensors file ({})",
                    crate::error::without_backtrace(e)
                ),
            )
        })?;
        let mut w = Weights {
            path: &weights_path,
            tensors,
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps as f32;
        let word = w.get("embeddings.word_embeddings.weight", None, h)?;
        let position = w.get(
            "embeddings.position_embeddings.weight",
            Some(config.max_position_embeddings),
            h,
        )?;
        let token_type = w.get("embeddings.token_type_embeddings.weight", None, h)?;
        let embed_norm = w.layer_norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: w.linear(&format!("{p}.attention.self.query"), h)?,
                key: w.linear(&format!("{p}.attention.self.key"), h)?,
                value: w.linear(&format!("{p}.attention.self.value"), h)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), h)?,
                output: w.linear(&format!("{p}.output.dense"), h)?,
                out_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            config,
            tokenizer,
            word,
            position,
            token_type,
            embed_norm,
            layers,
            exact_gelu,
            device: device.clone(),
        })
    }

    /// Size of each embedding vector.
    pub fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    /// The longest input in tokens (including `[CLS]` and `[SEP]`).
    pub fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Token ids of `text`, with `[CLS]`/`[SEP]`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The normalised embedding of already-tokenized input.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .embed_batch(&[ids.to_vec()])?
            .pop()
            .expect("one input, one embedding"))
    }

    /// The normalised embeddings of several tokenized inputs, computed as
    /// one batch: inputs are padded to the longest, padded positions are
    /// masked out of attention and of the mean. An input of the wrong
    /// length is an error naming its index (`input[i]`).
    pub fn embed_batch(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for (i, ids) in inputs.iter().enumerate() {
            let t = ids.len();
            if t == 0 || t > self.max_tokens() {
                let param = match inputs.len() {
                    1 => "input".to_string(),
                    _ => format!("input[{i}]"),
                };
                return Err(EngineError::invalid(
                    &param,
                    format!(
                        "input is {t} tokens; this embedding model takes 1 to {} tokens",
                        self.max_tokens()
                    ),
                ));
            }
        }
        let b = inputs.len();
        let Some(t) = inputs.iter().map(Vec::len).max() else {
            return Ok(Vec::new());
        };
        let cfg = &self.config;
        let (nh, hd) = (
            cfg.num_attention_heads,
            cfg.hidden_size / cfg.num_attention_heads,
        );
        let mut padded = Vec::with_capacity(b * t);
        let mut keep = Vec::with_capacity(b * t);
        for ids in inputs {
            padded.extend_from_slice(ids);
            padded.extend(std::iter::repeat_n(0, t - ids.len()));
            keep.extend(std::iter::repeat_n(1f32, ids.len()));
            keep.extend(std::iter::repeat_n(0f32, t - ids.len()));
        }
        let ids = Tensor::from_vec(padded, (b, t), &self.device)?;
        // 1 for a real token, 0 for padding: `(b, t)`.
        let keep = Tensor::from_vec(keep, (b, t), &self.device)?;
        // Additive attention mask over keys, `(b, 1, 1, t)`.
        let mask = ((keep.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, cfg.hidden_size))?
            .broadcast_add(&self.position.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &self.layers {
            let q = heads(layer.query.forward(&x)?)?;
            let k = heads(layer.key.forward(&x)?)?;
            let v = heads(layer.value.forward(&x)?)?;
            let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let ctx = att
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, cfg.hidden_size))?;
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let i = layer.intermediate.forward(&a)?;
            let i = if self.exact_gelu {
                i.gelu_erf()?
            } else {
                i.gelu()?
            };
            x = layer.out_norm.forward(&(layer.output.forward(&i)? + a)?)?;
        }
        // Mean over the real tokens only.
        let lengths = keep.sum_keepdim(1)?; // (b, 1)
        let pooled = x
            .broadcast_mul(&keep.unsqueeze(2)?)?
            .sum(1)?
            .broadcast_div(&lengths)?;
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }

    /// The normalised embedding of `text`.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        self.embed_ids(&self.tokenize(text)?)
    }
}

/// Tensors of a safetensors file, taken out by name with shape checks.
struct Weights<'a> {
    path: &'a Path,
    tensors: HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .or_else(|| self.tensors.remove(&format!("bert.{name}")))
            .ok_or_else(|| EngineError::InvalidModel {
                path: self.path.to_path_buf(),
                reason: format!("missing tensor {name}"),
            })?;
        Ok(t.to_dtype(candle_core::DType::F32)?)
    }

    fn check(&self, name: &str, t: &Tensor, dims: &[Option<usize>]) -> Result<()> {
        let ok = t.dims().len() == dims.len()
            && t.dims()
                .iter()
                .zip(dims)
                .all(|(a, b)| b.is_none_or(|b| *a == b));
        if ok {
            Ok(())
        } else {
            Err(EngineError::InvalidModel {
                path: self.path.to_path_buf(),
                reason: format!("tensor {name} has shape {:?}, expected {dims:?}", t.dims()),
            })
        }
    }

    /// A `(rows, width)` matrix; `rows` checked when given.
    fn get(&mut self, name: &str, rows: Option<usize>, width: usize) -> Result<Tensor> {
        let t = self.take(name)?;
        self.check(name, &t, &[rows, Some(width)])?;
        Ok(t)
    }

    fn linear(&mut self, prefix: &str, hidden: usize) -> Result<Linear> {
        let w = self.take(&format!("{prefix}.weight"))?;
        let b = self.take(&format!("{prefix}.bias"))?;
        let (out, inp) = w.dims2()?;
        if inp != hidden && out != hidden {
            self.check(&format!("{prefix}.weight"), &w, &[None, Some(hidden)])?;
        }
        self.check(&format!("{prefix}.bias"), &b, &[Some(out)])?;
        Ok(Linear::new(w, Some(b)))
    }

    fn layer_norm(&mut self, prefix: &str, hidden: usize, eps: f32) -> Result<LayerNorm> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        let bias = self.take(&format!("{prefix}.bias"))?;
        self.check(&format!("{prefix}.weight"), &weight, &[Some(hidden)])?;
        self.check(&format!("{prefix}.bias"), &bias, &[Some(hidden)])?;
        Ok(LayerNorm { weight, bias, eps })
    }
}
