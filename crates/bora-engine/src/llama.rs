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

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::Result;
use crate::gguf::{GgufFile, LlamaConfig};

/// One transformer block's weights.
struct Block {
    attn_norm: Tensor,
    /// Query, key and value projections.
    qkv: Projections,
    wo: QMatMul,
    ffn_norm: Tensor,
    /// Gate and up projections.
    gate_up: Projections,
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
///
/// Each block's keys and values live in a buffer of shape
/// `(capacity, kv_heads, head_dim)` that grows by doubling; positions
/// `0..len` are valid. A cache made by [`KvCache::share_prefix`] shares its
/// buffers with another cache read-only: its first append copies them (and
/// the owner only ever writes past the shared prefix), so a prefix-cache
/// entry and the sequences started from it never disturb each other.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    shared: bool,
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

    /// Bytes held by the buffers (their capacity, not just `len`).
    pub fn capacity_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// A cache holding the first `len` positions of this one, sharing its
    /// buffers without copying them.
    pub fn share_prefix(&self, len: usize) -> KvCache {
        KvCache {
            layers: self.layers.clone(),
            len: len.min(self.len),
            shared: true,
        }
    }

    /// Forgets every position from `len` on (used to undo a failed step).
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes `k` and `v` (`(t, kv_heads, head_dim)`) of `layer` at
    /// positions `len..len + t`, growing or unsharing the buffer as needed,
    /// and returns the keys and values of positions `0..len + t`.
    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.dim(0)?;
        let needed = self.len + t;
        let slot = &mut self.layers[layer];
        let fits = matches!(slot, Some((kb, _)) if kb.dim(0)? >= needed);
        if !fits || self.shared {
            let capacity = needed.next_power_of_two().clamp(64, max_len.max(needed));
            let (_, heads, dim) = k.dims3()?;
            let kb = Tensor::zeros((capacity, heads, dim), k.dtype(), k.device())?;
            let vb = Tensor::zeros((capacity, heads, dim), v.dtype(), v.device())?;
            if let Some((old_k, old_v)) = slot.as_ref()
                && self.len > 0
            {
                kb.slice_set(&old_k.narrow(0, 0, self.len)?.contiguous()?, 0, 0)?;
                vb.slice_set(&old_v.narrow(0, 0, self.len)?.contiguous()?, 0, 0)?;
            }
            *slot = Some((kb, vb));
        }
        let (kb, vb) = slot.as_ref().expect("the buffer was just made");
        kb.slice_set(&k.contiguous()?, 0, self.len)?;
        vb.slice_set(&v.contiguous()?, 0, self.len)?;
        Ok((kb.narrow(0, 0, needed)?, vb.narrow(0, 0, needed)?))
    }

    /// Marks every layer's new positions written, and the buffers owned
    /// (each was copied on its first append).
    fn commit(&mut self, t: usize) {
        self.len += t;
        self.shared = false;
    }
}

/// One sequence's part of a batched forward pass.
pub struct BatchItem<'a> {
    /// The tokens to run, at the positions following what `cache` holds.
    pub tokens: &'a [u32],
    /// The sequence's cache; on success the tokens' keys and values are
    /// appended, on failure it is left as it was.
    pub cache: &'a mut KvCache,
    /// Whether to compute the next-token logits after the last token (a
    /// prompt chunk that is not the prompt's last needs none).
    pub logits: bool,
}

fn dense(file: &mut GgufFile, name: &str, device: &Device) -> Result<Tensor> {
    Ok(file.tensor(name, device)?.dequantize(device)?)
}

/// How matrix weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// As stored in the file (e.g. Q4_1), except block types candle has no
    /// vectorised kernel for (Q4_1, Q5_0, Q5_1), which are converted to Q8_0:
    /// little memory; the matmuls quantize activations to 8 bits, as
    /// llama.cpp does, so logits differ slightly from a float reference.
    #[default]
    Quantized,
    /// Dequantized to `f32` at load: 4 bytes per weight, numerically closest
    /// to the reference implementation.
    F32,
}

/// Block types whose matrix products candle runs with scalar code only (no
/// AVX/NEON kernel): converted to `Q8_0` at load, which has one. Its error
/// is a fraction of the 4- and 5-bit types' own, and the products run
/// several times faster.
fn without_fast_kernel(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

fn qmatmul(
    file: &mut GgufFile,
    name: &str,
    device: &Device,
    precision: WeightPrecision,
) -> Result<QMatMul> {
    let t: QTensor = file.tensor(name, device)?;
    Ok(match precision {
        WeightPrecision::Quantized if without_fast_kernel(t.dtype()) => {
            QMatMul::from_qtensor(QTensor::quantize(&t.dequantize(device)?, GgmlDType::Q8_0)?)?
        }
        WeightPrecision::Quantized => QMatMul::from_qtensor(t)?,
        WeightPrecision::F32 => QMatMul::Tensor(t.dequantize(device)?),
    })
}

/// Several projections of the same input (Q, K and V; gate and up). When
/// their weights can be one matrix they are: stacked row-wise into a single
/// product, the input is quantized and the thread pool woken once instead
/// of per projection. Rows keep their own quantization blocks (blocks run
/// along a row), so the stacked matrix computes exactly what the parts did.
enum Projections {
    /// One matrix; the output columns of each part, in order.
    Stacked(QMatMul, Vec<usize>),
    /// The parts' block types differ: one product each.
    Separate(Vec<QMatMul>),
}

impl Projections {
    fn load(
        file: &mut GgufFile,
        names: &[&str],
        device: &Device,
        precision: WeightPrecision,
    ) -> Result<Self> {
        let parts = names
            .iter()
            .map(|name| file.tensor(name, device))
            .collect::<Result<Vec<QTensor>>>()?;
        let widths = parts
            .iter()
            .map(|t| t.shape().dims2().map(|(rows, _)| rows))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Stackable: f32 weights, or block types that become (or are) Q8_0.
        let stacked_type = match precision {
            WeightPrecision::F32 => None,
            WeightPrecision::Quantized => Some(GgmlDType::Q8_0),
        };
        let stackable = precision == WeightPrecision::F32
            || parts
                .iter()
                .all(|t| without_fast_kernel(t.dtype()) || t.dtype() == GgmlDType::Q8_0);
        if !stackable {
            let separate = parts
                .into_iter()
                .map(QMatMul::from_qtensor)
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Ok(Self::Separate(separate));
        }
        let dense = parts
            .iter()
            .map(|t| t.dequantize(device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let matrix = Tensor::cat(&dense, 0)?;
        let matmul = match stacked_type {
            None => QMatMul::Tensor(matrix),
            Some(dtype) => QMatMul::from_qtensor(QTensor::quantize(&matrix, dtype)?)?,
        };
        Ok(Self::Stacked(matmul, widths))
    }

    /// The `N` projections of `x` (`N` is the number of parts loaded).
    fn forward<const N: usize>(&self, x: &Tensor) -> Result<[Tensor; N]> {
        let outputs = match self {
            Self::Stacked(matmul, widths) => {
                let y = matmul.forward(x)?;
                let mut start = 0;
                let mut outputs = Vec::with_capacity(widths.len());
                for &width in widths {
                    outputs.push(y.narrow(1, start, width)?.contiguous()?);
                    start += width;
                }
                outputs
            }
            Self::Separate(parts) => parts
                .iter()
                .map(|m| m.forward(x))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        Ok(outputs.try_into().map_err(|v: Vec<Tensor>| {
            candle_core::Error::Msg(format!("{} projections, expected {N}", v.len()))
        })?)
    }
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
                qkv: Projections::load(
                    file,
                    &[
                        &format!("{p}.attn_q.weight"),
                        &format!("{p}.attn_k.weight"),
                        &format!("{p}.attn_v.weight"),
                    ],
                    device,
                    precision,
                )?,
                wo: qmatmul(file, &format!("{p}.attn_output.weight"), device)?,
                ffn_norm: dense(file, &format!("{p}.ffn_norm.weight"), device)?,
                gate_up: Projections::load(
                    file,
                    &[
                        &format!("{p}.ffn_gate.weight"),
                        &format!("{p}.ffn_up.weight"),
                    ],
                    device,
                    precision,
                )?,
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
            shared: false,
        }
    }

    /// Bytes of keys and values one position takes in a [`KvCache`].
    pub fn kv_bytes_per_token(&self) -> usize {
        let cfg = &self.config;
        2 * cfg.block_count * cfg.head_count_kv * cfg.head_dim() * DType::F32.size_in_bytes()
    }

    /// Runs `tokens` at the positions following what `cache` holds, appends
    /// their keys and values to `cache`, and returns the logits (`f32`,
    /// vocabulary-sized) for the token after the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut batch = [BatchItem {
            tokens,
            cache,
            logits: true,
        }];
        let mut out = self.forward_batch(&mut batch)?;
        Ok(out.pop().flatten().expect("logits were asked for"))
    }

    /// One forward pass over several sequences at once: every item's tokens
    /// go through the matrix multiplications together (one row each), and
    /// attention runs per sequence against its own cache. Returns, per item,
    /// the next-token logits when asked for. On error no cache has changed.
    pub fn forward_batch(&self, batch: &mut [BatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let before: Vec<usize> = batch.iter().map(|item| item.cache.len).collect();
        let result = self.try_forward_batch(batch);
        if result.is_err() {
            for (item, len) in batch.iter_mut().zip(before) {
                item.cache.truncate(len);
            }
        }
        result
    }

    fn try_forward_batch(&self, batch: &mut [BatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let cfg = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for item in batch.iter_mut() {
            let (t, offset) = (item.tokens.len(), item.cache.len);
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
            if item.cache.layers.len() != cfg.block_count {
                *item.cache = self.new_cache();
            }
            ids.extend_from_slice(item.tokens);
            positions.extend((offset..offset + t).map(|p| p as u32));
        }
        let total = ids.len();
        let (nh, nkv, hd) = (cfg.head_count, cfg.head_count_kv, cfg.head_dim());
        let eps = cfg.rms_norm_eps as f32;
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        // Every row gets the rotation of its own position: RoPE runs on
        // `(rows, heads, 1, head_dim)` with per-row cos/sin `(rows, 1, head_dim / 2)`.
        let cos = self.cos.index_select(&positions, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(&positions, 0)?.unsqueeze(1)?;
        let masks = batch
            .iter()
            .map(|item| causal_mask(item.tokens.len(), item.cache.len, &self.device))
            .collect::<Result<Vec<_>>>()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = self.embedding.index_select(&ids, 0)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let [q, k, v] = block.qkv.forward::<3>(&h)?;
            let q = q.reshape((total, nh, 1, hd))?;
            let q = (candle_nn::rotary_emb::rope_i(&q, &cos, &sin)? * scale)?
                .reshape((total, nh, hd))?;
            let k = k.reshape((total, nkv, 1, hd))?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?.reshape((total, nkv, hd))?;
            let v = v.reshape((total, nkv, hd))?;
            let mut outputs = Vec::with_capacity(batch.len());
            let mut start = 0;
            for (item, mask) in batch.iter_mut().zip(&masks) {
                let t = item.tokens.len();
                let (keys, values) = item.cache.append(
                    layer,
                    &k.narrow(0, start, t)?,
                    &v.narrow(0, start, t)?,
                    cfg.context_length,
                )?;
                let q = q.narrow(0, start, t)?;
                outputs.push(attention(&q, &keys, &values, mask.as_ref(), nkv)?);
                start += t;
            }
            let y = if outputs.len() == 1 {
                outputs.pop().expect("one output")
            } else {
                Tensor::cat(&outputs, 0)?
            };
            let x1 = (&x + block.wo.forward(&y)?)?;
            let h = candle_nn::ops::rms_norm(&x1, &block.ffn_norm, eps)?;
            let [gate, up] = block.gate_up.forward::<2>(&h)?;
            let ff = block
                .w_down
                .forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
            x = (x1 + ff)?;
        }
        // Logits only for the last token of the items that want them.
        let mut last_rows = Vec::new();
        let mut end = 0;
        for item in batch.iter() {
            end += item.tokens.len();
            if item.logits {
                last_rows.push((end - 1) as u32);
            }
        }
        let mut logits = if last_rows.is_empty() {
            Vec::new()
        } else {
            let rows = Tensor::new(last_rows.as_slice(), &self.device)?;
            let last = x.index_select(&rows, 0)?;
            let last = candle_nn::ops::rms_norm(&last, &self.output_norm, eps)?;
            self.output
                .forward(&last)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?
        }
        .into_iter();
        let mut out = Vec::with_capacity(batch.len());
        for item in batch.iter_mut() {
            item.cache.commit(item.tokens.len());
            out.push(if item.logits { logits.next() } else { None });
        }
        Ok(out)
    }
}

/// Grouped-query attention of one sequence: queries `(t, heads, head_dim)`
/// (already scaled) against keys and values `(len, kv_heads, head_dim)`;
/// returns `(t, heads * head_dim)`. Query head `i` pairs with key/value head
/// `i / (heads / kv_heads)`, so the queries are viewed as `kv_heads` groups
/// of `heads / kv_heads * t` rows and no key or value is copied per head.
fn attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
    kv_heads: usize,
) -> Result<Tensor> {
    let (t, heads, dim) = q.dims3()?;
    let len = keys.dim(0)?;
    let group = heads / kv_heads;
    // (t, kv, group, d) → (kv, group * t, d)
    let q = q
        .reshape((t, kv_heads, group, dim))?
        .permute((1, 2, 0, 3))?
        .reshape((kv_heads, group * t, dim))?;
    let keys = keys.transpose(0, 1)?; // (kv, len, d)
    let values = values.transpose(0, 1)?;
    let mut att = q.matmul(&keys.t()?)?; // (kv, group * t, len)
    if let Some(mask) = mask {
        att = att
            .reshape((kv_heads, group, t, len))?
            .broadcast_add(mask)?
            .reshape((kv_heads, group * t, len))?;
    }
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(&values)?; // (kv, group * t, d)
    Ok(y.reshape((heads, t, dim))?
        .transpose(0, 1)?
        .reshape((t, heads * dim))?)
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
}
