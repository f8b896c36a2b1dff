//! The Llama decoder (as laid out by llama.cpp's GGUF converter), on candle.
//!
//! Weights ([`Llama`]) are loaded once and shared read-only; every sequence
//! owns its own [`KvCache`]. That split is what lets a scheduler interleave
//! sequences later: the model never holds per-request state.
//!
//! Per block: RMS-norm → grouped-query attention with rotary position
//! embeddings (GGUF stores Q/K rows permuted for the interleaved RoPE form) →
//! residual → RMS-norm → SwiGLU feed-forward → residual. The output projection
//! falls back to the token embedding when the file has no `output.weight`
//! (tied embeddings).

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::Result;
use crate::gguf::{GgufFile, LlamaConfig};

/// One transformer block's weights.
struct Block {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
}

/// A loaded Llama model: read-only weights plus precomputed RoPE tables.
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    embedding: Tensor,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The attention keys and values of one sequence, per block.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn dense(file: &mut GgufFile, name: &str, device: &Device) -> Result<Tensor> {
    Ok(file.tensor(name, device)?.dequantize(device)?)
}

/// How matrix weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// As stored in the file (e.g. Q4_1): least memory; the matmuls quantize
    /// activations to 8 bits, as llama.cpp does, so logits differ slightly
    /// from a float reference.
    #[default]
    Quantized,
    /// Dequantized to `f32` at load: 4 bytes per weight, numerically closest
    /// to the reference implementation.
    F32,
}

fn qmatmul(
    file: &mut GgufFile,
    name: &str,
    device: &Device,
    precision: WeightPrecision,
) -> Result<QMatMul> {
    let t: QTensor = file.tensor(name, device)?;
    Ok(match precision {
        WeightPrecision::Quantized => QMatMul::from_qtensor(t)?,
        WeightPrecision::F32 => QMatMul::Tensor(t.dequantize(device)?),
    })
}

impl Llama {
    /// Loads the weights of a validated GGUF file onto `device`.
    pub fn load(file: &mut GgufFile, device: &Device, precision: WeightPrecision) -> Result<Self> {
        let qmatmul = |file: &mut GgufFile, name: &str, device: &Device| {
            qmatmul(file, name, device, precision)
        };
        let config = file.config.clone();
        let embedding = dense(file, "token_embd.weight", device)?;
        let mut blocks = Vec::with_capacity(config.block_count);
        for i in 0..config.block_count {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: dense(file, &format!("{p}.attn_norm.weight"), device)?,
                wq: qmatmul(file, &format!("{p}.attn_q.weight"), device)?,
                wk: qmatmul(file, &format!("{p}.attn_k.weight"), device)?,
                wv: qmatmul(file, &format!("{p}.attn_v.weight"), device)?,
                wo: qmatmul(file, &format!("{p}.attn_output.weight"), device)?,
                ffn_norm: dense(file, &format!("{p}.ffn_norm.weight"), device)?,
                w_gate: qmatmul(file, &format!("{p}.ffn_gate.weight"), device)?,
                w_up: qmatmul(file, &format!("{p}.ffn_up.weight"), device)?,
                w_down: qmatmul(file, &format!("{p}.ffn_down.weight"), device)?,
            });
        }
        let output_norm = dense(file, "output_norm.weight", device)?;
        let output_name = if file.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let output = qmatmul(file, output_name, device)?;
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            device: device.clone(),
            embedding,
            blocks,
            output_norm,
            output,
            cos,
            sin,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Vocabulary size (rows of the output projection).
    pub fn vocab_size(&self) -> usize {
        self.embedding.dims()[0]
    }

    /// A fresh, empty cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.config.block_count],
            len: 0,
        }
    }

    /// Runs `tokens` at the positions following what `cache` holds, appends
    /// their keys and values to `cache`, and returns the logits (`f32`,
    /// vocabulary-sized) for the token after the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let t = tokens.len();
        let offset = cache.len;
        if t == 0 {
            return Err(candle_core::Error::Msg("forward called with no tokens".into()).into());
        }
        if offset + t > cfg.context_length {
            return Err(candle_core::Error::Msg(format!(
                "sequence of {} tokens exceeds the context length {}",
                offset + t,
                cfg.context_length
            ))
            .into());
        }
        if cache.layers.len() != cfg.block_count {
            cache.layers = vec![None; cfg.block_count];
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embedding.index_select(&ids, 0)?.unsqueeze(0)?;
        let mask = causal_mask(t, offset, &self.device)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let (nh, nkv, hd) = (cfg.head_count, cfg.head_count_kv, cfg.head_dim());
        let scale = 1.0 / (hd as f64).sqrt();
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let residual = &x;
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, cfg.rms_norm_eps as f32)?;
            let q = block
                .wq
                .forward(&h)?
                .reshape((1, t, nh, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = block
                .wk
                .forward(&h)?
                .reshape((1, t, nkv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let v = block
                .wv
                .forward(&h)?
                .reshape((1, t, nkv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = match slot.take() {
                None => (k, v),
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            };
            *slot = Some((k.clone(), v.clone()));
            let k = repeat_kv(&k, nh / nkv)?;
            let v = repeat_kv(&v, nh / nkv)?;
            let mut att = (q.matmul(&k.t()?)? * scale)?;
            if let Some(mask) = &mask {
                att = att.broadcast_add(mask)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((1, t, nh * hd))?;
            let y = block.wo.forward(&y)?;
            let x1 = (residual + y)?;
            let h = candle_nn::ops::rms_norm(&x1, &block.ffn_norm, cfg.rms_norm_eps as f32)?;
            let gate = candle_nn::ops::silu(&block.w_gate.forward(&h)?)?;
            let ff = block.w_down.forward(&(gate * block.w_up.forward(&h)?)?)?;
            x = (x1 + ff)?;
        }
        cache.len = offset + t;
        let last = x.narrow(1, t - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, cfg.rms_norm_eps as f32)?;
        let logits = self
            .output
            .forward(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?;
        Ok(logits.to_vec1::<f32>()?)
    }
}

/// cos/sin tables of shape `(context_length, head_dim / 2)`.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / cfg.rope_freq_base.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), device)?;
    let positions = Tensor::arange(0u32, cfg.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.context_length, 1))?;
    let freqs = positions.broadcast_mul(&inv_freq)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive causal mask `(t, offset + t)`: query `i` sees keys `0..=offset + i`.
/// `None` for a single token, which sees everything in the cache.
fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (t, total), device)?))
}

/// Repeats each key/value head `n` times: `(b, kv, s, d)` → `(b, kv * n, s, d)`,
/// so query head `i` pairs with key/value head `i / n`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n, s, d))?
        .reshape((b, kv * n, s, d))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_hides_future_positions() {
        let m = causal_mask(2, 1, &Device::Cpu).unwrap().unwrap();
        let v = m.to_vec2::<f32>().unwrap();
        assert_eq!(v[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(v[1], vec![0.0, 0.0, 0.0]);
        assert!(causal_mask(1, 5, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn repeat_kv_groups_heads() {
        let x = Tensor::arange(0f32, 2.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let r = repeat_kv(&x, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    }
}
