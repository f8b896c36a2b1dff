//! Reading and validating GGUF model files.
//!
//! The header is parsed by candle's GGUF reader (which bounds-checks every
//! length against the file size); this module then checks what the engine
//! relies on before any weight is loaded: the architecture, the metadata keys
//! the model needs, the tokenizer metadata, and that every tensor's data lies
//! inside the file (a truncated download fails here, naming the tensor).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{EngineError, Result};

/// The hyper-parameters of a Llama-architecture model, from `llama.*` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of transformer blocks (`llama.block_count`).
    pub block_count: usize,
    /// Context window in tokens (`llama.context_length`).
    pub context_length: usize,
    /// Hidden size (`llama.embedding_length`).
    pub embedding_length: usize,
    /// Feed-forward inner size (`llama.feed_forward_length`).
    pub feed_forward_length: usize,
    /// Query heads (`llama.attention.head_count`).
    pub head_count: usize,
    /// Key/value heads, for grouped-query attention (`llama.attention.head_count_kv`).
    pub head_count_kv: usize,
    /// RoPE base frequency (`llama.rope.freq_base`, default 10000).
    pub rope_freq_base: f32,
    /// RMS-norm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_norm_eps: f64,
}

impl LlamaConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embedding_length / self.head_count
    }
}

/// The tokenizer as described by `tokenizer.ggml.*` keys.
#[derive(Debug, Clone)]
pub struct TokenizerMetadata {
    /// `tokenizer.ggml.model` (`gpt2` for byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`, the pre-tokenizer flavour (`smollm`, `gpt2`, ...).
    pub pre: Option<String>,
    /// The vocabulary, indexed by token id.
    pub tokens: Vec<String>,
    /// llama.cpp token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Vec<i32>,
    /// BPE merges, `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
    /// End-of-turn token, when the model has one distinct from EOS.
    pub eot_token_id: Option<u32>,
    /// Whether a BOS token is prepended to every prompt.
    pub add_bos_token: bool,
}

/// A GGUF file whose header has been read and validated.
pub struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
    /// The model's hyper-parameters.
    pub config: LlamaConfig,
    /// The tokenizer description.
    pub tokenizer: TokenizerMetadata,
    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Opens `path`, parses the GGUF header and validates it for a Llama model.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| EngineError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| EngineError::InvalidModel {
            path: path.to_path_buf(),
            reason: format!(
                "not a readable GGUF file ({}); is the download complete?",
                crate::error::without_backtrace(e)
            ),
        })?;
        let meta = Meta {
            path,
            kv: &content.metadata,
        };
        let arch = meta.string("general.architecture")?;
        if arch != "llama" {
            return Err(meta.unsupported(format!(
                "architecture '{arch}' (general.architecture); this engine runs 'llama' models"
            )));
        }
        let config = read_llama_config(&meta)?;
        let tokenizer = read_tokenizer_metadata(&meta)?;
        let chat_template = meta.opt_string("tokenizer.chat_template")?;
        check_tensors(path, &content, file_len, &config)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            content,
            config,
            tokenizer,
            chat_template,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads tensor `name` onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| EngineError::InvalidModel {
                path: self.path.clone(),
                reason: format!("tensor {name}: {}", crate::error::without_backtrace(e)),
            })
    }
}

/// Typed access to the metadata, with errors that name the file and key.
struct Meta<'a> {
    path: &'a Path,
    kv: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn invalid(&self, reason: String) -> EngineError {
        EngineError::InvalidModel {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn unsupported(&self, reason: String) -> EngineError {
        EngineError::Unsupported {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.kv
            .get(key)
            .ok_or_else(|| self.invalid(format!("missing metadata key {key}")))
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?
            .ok_or_else(|| self.invalid(format!("missing metadata key {key}")))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_string()
                .map(|s| Some(s.clone()))
                .map_err(|_| self.invalid(format!("metadata key {key} is not a string"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        value_as_u64(self.get(key)?)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.invalid(format!("metadata key {key} is not an unsigned integer")))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(v) => value_as_u64(v)
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(format!("metadata key {key} is not a token id"))),
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(v) => Ok(f64::from(*v)),
            Value::F64(v) => Ok(*v),
            _ => Err(self.invalid(format!("metadata key {key} is not a float"))),
        }
    }

    fn string_array(&self, key: &str) -> Result<Vec<String>> {
        let values = self
            .get(key)?
            .to_vec()
            .map_err(|_| self.invalid(format!("metadata key {key} is not an array")))?;
        values
            .iter()
            .map(|v| {
                v.to_string().cloned().map_err(|_| {
                    self.invalid(format!("metadata key {key} is not an array of strings"))
                })
            })
            .collect()
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn read_llama_config(meta: &Meta<'_>) -> Result<LlamaConfig> {
    let head_count = meta.usize("llama.attention.head_count")?;
    let head_count_kv = match meta.kv.get("llama.attention.head_count_kv") {
        Some(_) => meta.usize("llama.attention.head_count_kv")?,
        None => head_count,
    };
    let rope_freq_base = match meta.kv.get("llama.rope.freq_base") {
        Some(_) => meta.f64("llama.rope.freq_base")? as f32,
        None => 10_000.0,
    };
    let config = LlamaConfig {
        block_count: meta.usize("llama.block_count")?,
        context_length: meta.usize("llama.context_length")?,
        embedding_length: meta.usize("llama.embedding_length")?,
        feed_forward_length: meta.usize("llama.feed_forward_length")?,
        head_count,
        head_count_kv,
        rope_freq_base,
        rms_norm_eps: meta.f64("llama.attention.layer_norm_rms_epsilon")?,
    };
    if config.block_count == 0 || config.context_length == 0 {
        return Err(
            meta.invalid("llama.block_count and llama.context_length must be positive".into())
        );
    }
    if head_count == 0 || head_count_kv == 0 || !config.embedding_length.is_multiple_of(head_count)
    {
        return Err(meta.invalid(format!(
            "llama.embedding_length {} is not a multiple of llama.attention.head_count {head_count}",
            config.embedding_length
        )));
    }
    if head_count % head_count_kv != 0 {
        return Err(meta.invalid(format!(
            "llama.attention.head_count {head_count} is not a multiple of llama.attention.head_count_kv {head_count_kv}"
        )));
    }
    if !config.head_dim().is_multiple_of(2) {
        return Err(meta.invalid(format!(
            "head size {} is odd; RoPE needs an even size",
            config.head_dim()
        )));
    }
    if let Some(v) = meta.kv.get("llama.rope.dimension_count") {
        let dims = value_as_u64(v).unwrap_or(0);
        if dims != config.head_dim() as u64 {
            return Err(meta.unsupported(format!(
                "partial RoPE (llama.rope.dimension_count {dims}, head size {})",
                config.head_dim()
            )));
        }
    }
    if meta.kv.contains_key("llama.rope.scaling.type") {
        let kind = meta
            .opt_string("llama.rope.scaling.type")?
            .unwrap_or_default();
        if !kind.is_empty() && kind != "none" {
            return Err(
                meta.unsupported(format!("RoPE scaling '{kind}' (llama.rope.scaling.type)"))
            );
        }
    }
    Ok(config)
}

fn read_tokenizer_metadata(meta: &Meta<'_>) -> Result<TokenizerMetadata> {
    let tokens = meta.string_array("tokenizer.ggml.tokens")?;
    let token_types = match meta.kv.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => {
            let values = v
                .to_vec()
                .map_err(|_| meta.invalid("tokenizer.ggml.token_type is not an array".into()))?;
            values
                .iter()
                .map(|v| match v {
                    Value::I32(t) => Ok(*t),
                    Value::U32(t) => i32::try_from(*t).map_err(|_| ()),
                    _ => Err(()),
                })
                .collect::<std::result::Result<Vec<_>, ()>>()
                .map_err(|()| {
                    meta.invalid("tokenizer.ggml.token_type is not an array of integers".into())
                })?
        }
    };
    if token_types.len() != tokens.len() {
        return Err(meta.invalid(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            token_types.len(),
            tokens.len()
        )));
    }
    let merges = match meta.kv.get("tokenizer.ggml.merges") {
        Some(_) => meta.string_array("tokenizer.ggml.merges")?,
        None => Vec::new(),
    };
    let add_bos_token = match meta.kv.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(meta.invalid("tokenizer.ggml.add_bos_token is not a bool".into())),
        None => false,
    };
    let md = TokenizerMetadata {
        model: meta.string("tokenizer.ggml.model")?,
        pre: meta.opt_string("tokenizer.ggml.pre")?,
        tokens,
        token_types,
        merges,
        bos_token_id: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_id: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
        eot_token_id: meta.opt_u32("tokenizer.ggml.eot_token_id")?,
        add_bos_token,
    };
    let n = md.tokens.len();
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", md.bos_token_id),
        ("tokenizer.ggml.eos_token_id", md.eos_token_id),
        ("tokenizer.ggml.eot_token_id", md.eot_token_id),
    ] {
        if let Some(id) = id
            && id as usize >= n
        {
            return Err(meta.invalid(format!(
                "{key} {id} is outside the vocabulary of {n} tokens"
            )));
        }
    }
    if md.eos_token_id.is_none() && md.eot_token_id.is_none() {
        return Err(meta.invalid("missing metadata key tokenizer.ggml.eos_token_id".into()));
    }
    Ok(md)
}

/// Checks that the tensors the Llama model needs exist with the expected
/// shapes, and that every tensor's data lies inside the file.
fn check_tensors(
    path: &Path,
    content: &Content,
    file_len: u64,
    config: &LlamaConfig,
) -> Result<()> {
    let invalid = |reason: String| EngineError::InvalidModel {
        path: path.to_path_buf(),
        reason,
    };
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            return Err(invalid(format!(
                "tensor {name} has {elems} elements, not a multiple of its block size {block}"
            )));
        }
        let size = (elems / block * info.ggml_dtype.type_size()) as u64;
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(size));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(invalid(format!(
                    "tensor {name} ends past the end of the file ({file_len} bytes); the file is truncated"
                )));
            }
        }
    }
    let h = config.embedding_length;
    let kv = config.head_count_kv * config.head_dim();
    let ff = config.feed_forward_length;
    let mut expected: Vec<(String, Vec<usize>)> = vec![("output_norm.weight".into(), vec![h])];
    for i in 0..config.block_count {
        let p = format!("blk.{i}");
        expected.extend([
            (format!("{p}.attn_norm.weight"), vec![h]),
            (format!("{p}.attn_q.weight"), vec![h, h]),
            (format!("{p}.attn_k.weight"), vec![kv, h]),
            (format!("{p}.attn_v.weight"), vec![kv, h]),
            (format!("{p}.attn_output.weight"), vec![h, h]),
            (format!("{p}.ffn_norm.weight"), vec![h]),
            (format!("{p}.ffn_gate.weight"), vec![ff, h]),
            (format!("{p}.ffn_up.weight"), vec![ff, h]),
            (format!("{p}.ffn_down.weight"), vec![h, ff]),
        ]);
    }
    for (name, dims) in &expected {
        let info = content
            .tensor_infos
            .get(name)
            .ok_or_else(|| invalid(format!("missing tensor {name}")))?;
        if info.shape.dims() != dims.as_slice() {
            return Err(invalid(format!(
                "tensor {name} has shape {:?}, expected {dims:?}",
                info.shape.dims()
            )));
        }
    }
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| invalid("missing tensor token_embd.weight".into()))?;
    let [vocab, width] = embd.shape.dims() else {
        return Err(invalid("tensor token_embd.weight is not a matrix".into()));
    };
    if *width != h {
        return Err(invalid(format!(
            "tensor token_embd.weight has width {width}, expected {h}"
        )));
    }
    if let Some(out) = content.tensor_infos.get("output.weight")
        && out.shape.dims() != [*vocab, h]
    {
        return Err(invalid(format!(
            "tensor output.weight has shape {:?}, expected {:?}",
            out.shape.dims(),
            [*vocab, h]
        )));
    }
    Ok(())
}
