//! Tokenizers: the byte-level BPE tokenizer described by a GGUF file's
//! metadata, and incremental detokenization for streaming.
//!
//! We use Hugging Face's `tokenizers` crate (default features off: no
//! progress bars, no C++ suffix arrays, no Oniguruma — its pure-Rust
//! `fancy-regex` backend instead) because the same crate must read BERT's
//! `tokenizer.json` (WordPiece with its normaliser) for embeddings, and it is
//! the reference implementation the models were trained with. For a GGUF
//! model we build the tokenizer from `tokenizer.ggml.*` as a `tokenizer.json`
//! document and let the crate parse it, so only the documented JSON format is
//! relied on, not the crate's builder internals.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use serde_json::{Value, json};

use crate::error::{EngineError, Result};
use crate::gguf::TokenizerMetadata;

/// llama.cpp token type for control tokens (`<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp token type for user-defined (added, non-special) tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The GPT-2 style split used after digits for starcoder-family models
/// (`tokenizer.ggml.pre` = `smollm`, `starcoder`, ...), and the Llama 3 split.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A text tokenizer plus the ids the generator needs to know about.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    add_bos_token: bool,
    end_of_generation: HashSet<u32>,
    bos_token: String,
    eos_token: String,
    /// Every token's bytes, computed once (see [`TextTokenizer::token_bytes`]).
    token_bytes: std::sync::Arc<Vec<Vec<u8>>>,
    /// Whether each token is a control token (never part of output text).
    control: std::sync::Arc<Vec<bool>>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer a GGUF file describes. Fails with the reason
    /// (e.g. an unsupported `tokenizer.ggml.model`) as a plain message; the
    /// caller adds the file path.
    pub fn from_gguf(md: &TokenizerMetadata) -> std::result::Result<Self, String> {
        if md.model != "gpt2" {
            return Err(format!(
                "tokenizer.ggml.model '{}' (only byte-level BPE, 'gpt2', is supported)",
                md.model
            ));
        }
        let pre = md.pre.as_deref().unwrap_or("default");
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let pre_tokenizer = match pre {
            "default" | "gpt2" | "gpt-2" => byte_level(true),
            "smollm" | "starcoder" | "refact" | "codeshell" => json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
            }),
            "llama3" | "llama-bpe" | "llama-v3" => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                    byte_level(false)
                ]
            }),
            other => {
                return Err(format!(
                    "tokenizer.ggml.pre '{other}' (supported: gpt2, smollm, starcoder, llama-bpe)"
                ));
            }
        };
        let mut vocab = serde_json::Map::with_capacity(md.tokens.len());
        for (id, token) in md.tokens.iter().enumerate() {
            vocab.entry(token.clone()).or_insert(json!(id));
        }
        let added: Vec<Value> = md
            .tokens
            .iter()
            .zip(&md.token_types)
            .enumerate()
            .filter(|(_, (_, ty))| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(id, (content, ty))| {
                json!({
                    "id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL
                })
            })
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": md.merges,
            }
        });
        let inner = tokenizers::Tokenizer::from_str(&doc.to_string())
            .map_err(|e| format!("tokenizer metadata: {e}"))?;
        let token = |id: Option<u32>| {
            id.and_then(|id| md.tokens.get(id as usize).cloned())
                .unwrap_or_default()
        };
        // Stop on EOS, EOT, and the end-of-turn control tokens of the common
        // chat formats, so a model whose EOS differs from its turn end still stops.
        let mut end_of_generation: HashSet<u32> = [md.eos_token_id, md.eot_token_id]
            .into_iter()
            .flatten()
            .collect();
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<end_of_turn>",
            "<|endoftext|>",
        ] {
            if let Some(id) = md.tokens.iter().position(|t| t == name)
                && md.token_types.get(id) == Some(&TOKEN_TYPE_CONTROL)
            {
                end_of_generation.insert(id as u32);
            }
        }
        let unicode_to_byte = byte_level_decoder();
        let control: Vec<bool> = (0..md.tokens.len())
            .map(|id| md.token_types.get(id) == Some(&TOKEN_TYPE_CONTROL))
            .collect();
        let token_bytes: Vec<Vec<u8>> = md
            .tokens
            .iter()
            .zip(&md.token_types)
            .map(|(token, ty)| match *ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED => token.as_bytes().to_vec(),
                _ => token
                    .chars()
                    .map(|c| unicode_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    // Not byte-level text: keep the token's own UTF-8.
                    .unwrap_or_else(|| token.as_bytes().to_vec()),
            })
            .collect();
        Ok(Self {
            token_bytes: std::sync::Arc::new(token_bytes),
            control: std::sync::Arc::new(control),
            inner,
            bos_token_id: md.bos_token_id,
            add_bos_token: md.add_bos_token,
            end_of_generation,
            bos_token: token(md.bos_token_id),
            eos_token: token(md.eos_token_id),
        })
    }

    /// Encodes `text`, recognising special tokens written in it (as a chat
    /// template produces), and prepends BOS when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos_token
            && let Some(bos) = self.bos_token_id
            && enc.get_ids().first() != Some(&bos)
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes `ids` to text, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Whether generating `id` ends the sequence.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The BOS token's text (for chat templates), or `""`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The EOS token's text (for chat templates), or `""`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The bytes token `id` contributes to the output text (a byte-level
    /// token may hold part of a UTF-8 character; a control token's bytes are
    /// its name). Empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (`<|im_end|>`, ...), which decoding
    /// leaves out of the text.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The number of tokens, including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The inverse of GPT-2's byte-level alphabet: printable bytes stand for
/// themselves, the other 68 bytes for the characters from U+0100 on, in
/// byte order.
fn byte_level_decoder() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).unwrap_or('\u{FFFD}')
        };
        map.insert(c, b);
    }
    map
}

/// Turns a growing list of token ids into text deltas, holding back bytes
/// that do not yet form a whole UTF-8 character (a byte-level BPE token can
/// end in the middle of one).
///
/// Only a short window of recent tokens is re-decoded each step, so the cost
/// per token stays constant.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream {
    /// Adds `id`; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && full.is_char_boundary(prefix.len())
            && !full.ends_with('\u{FFFD}')
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }

    /// Text of tokens not yet returned (at the end of generation).
    pub fn flush(&mut self, tokenizer: &TextTokenizer) -> Result<Option<String>> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            Ok(Some(full[prefix.len()..].to_string()))
        } else {
            Ok(None)
        }
    }
}
