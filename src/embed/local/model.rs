//! A model directory on disk: `config.json` (BERT shape), `model.safetensors` (weights),
//! `tokenizer.json`, and the sentence-transformers files that say how it was trained to be
//! used (`sentence_bert_config.json`: sequence length; `1_Pooling/config.json`: pooling).

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// What can go wrong loading a model directory; every message names the file.
#[derive(Debug, thiserror::Error)]
#[error("local embedding model {}: {message}", path.display())]
pub struct ModelError {
    path: PathBuf,
    message: String,
}

impl ModelError {
    pub(super) fn new(path: &Path, message: impl Into<String>) -> Self {
        Self { path: path.to_owned(), message: message.into() }
    }
}

/// The parts of `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: String,
}

fn default_eps() -> f32 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

/// One transformer layer's weights. The projection matrices are stored transposed (`in × out`,
/// row-major), the layout the GEMM reads fastest (measured 2–6% over PyTorch's `out × in`), and
/// the query, key and value projections are fused into one `hidden × 3·hidden` matrix so a single
/// GEMM computes all three.
pub struct Layer {
    pub qkv_weight: Vec<f32>,
    pub qkv_bias: Vec<f32>,
    pub out_weight: Vec<f32>,
    pub out_bias: Vec<f32>,
    pub attn_norm_weight: Vec<f32>,
    pub attn_norm_bias: Vec<f32>,
    pub up_weight: Vec<f32>,
    pub up_bias: Vec<f32>,
    pub down_weight: Vec<f32>,
    pub down_bias: Vec<f32>,
    pub ffn_norm_weight: Vec<f32>,
    pub ffn_norm_bias: Vec<f32>,
}

/// All weights of a BERT encoder, as f32 row-major matrices.
pub struct Weights {
    pub config: BertConfig,
    pub word_embeddings: Vec<f32>,
    pub position_embeddings: Vec<f32>,
    /// Row 0 of the token-type table: every input is one segment.
    pub token_type_embedding: Vec<f32>,
    pub embed_norm_weight: Vec<f32>,
    pub embed_norm_bias: Vec<f32>,
    pub layers: Vec<Layer>,
    pub vocab_size: usize,
}

/// A loaded model directory.
pub struct ModelFiles {
    pub weights: Weights,
    pub tokenizer: tokenizers::Tokenizer,
    /// Longest sequence the model was trained for, special tokens included.
    pub max_seq_length: usize,
}

impl ModelFiles {
    /// Loads and checks everything in `dir`.
    ///
    /// # Errors
    /// A missing or malformed file, an architecture other than a BERT encoder with GELU and
    /// mean pooling, or weights of the wrong shape or type — each naming what to fix.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::new(
                dir,
                "is not a directory; run `bash ops/fetch-model.sh` or point embedder.model_dir at a \
                 directory holding model.safetensors, tokenizer.json and config.json",
            ));
        }
        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?;
        if !matches!(config.model_type.as_str(), "bert" | "") {
            return Err(ModelError::new(
                &config_path,
                format!("model_type {:?} is not supported (BERT-family encoders only)", config.model_type),
            ));
        }
        if config.hidden_act != "gelu" {
            return Err(ModelError::new(
                &config_path,
                format!("hidden_act {:?} is not supported (gelu only)", config.hidden_act),
            ));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(ModelError::new(&config_path, "hidden_size must be a multiple of num_attention_heads"));
        }

        let pooling_path = dir.join("1_Pooling/config.json");
        if pooling_path.exists() {
            let pooling: PoolingConfig = read_json(&pooling_path)?;
            if !pooling.pooling_mode_mean_tokens {
                return Err(ModelError::new(&pooling_path, "only mean pooling is supported"));
            }
        }
        // The shipped tokenizer.json of all-MiniLM-L6-v2 truncates at 128 tokens while the model
        // was trained on 256: the sentence-transformers config is the authority.
        let sbert_path = dir.join("sentence_bert_config.json");
        let max_seq_length =
            if sbert_path.exists() { read_json::<SentenceBertConfig>(&sbert_path)?.max_seq_length } else { None }
                .unwrap_or(config.max_position_embeddings)
                .clamp(3, config.max_position_embeddings);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::new(&tokenizer_path, e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::new(&tokenizer_path, e.to_string()))?;

        let weights = Weights::load(&dir.join("model.safetensors"), config)?;
        Ok(Self { weights, tokenizer, max_seq_length })
    }
}

impl Weights {
    fn load(path: &Path, config: BertConfig) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::new(path, format!("cannot read: {e}")))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| ModelError::new(path, format!("not a safetensors file: {e}")))?;
        // Checkpoints saved from `BertForXxx` prefix every name with `bert.`.
        let prefix = if tensors.names().iter().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let full = format!("{prefix}{name}");
            let view = tensors.tensor(&full).map_err(|_| ModelError::new(path, format!("has no tensor {full}")))?;
            if view.shape() != shape {
                return Err(ModelError::new(
                    path,
                    format!("tensor {full} has shape {:?}, config.json implies {shape:?}", view.shape()),
                ));
            }
            to_f32(view.dtype(), view.data()).ok_or_else(|| {
                ModelError::new(
                    path,
                    format!("tensor {full} is {:?}; only F32, F16 and BF16 weights are supported", view.dtype()),
                )
            })
        };

        let h = config.hidden_size;
        let i = config.intermediate_size;
        let vocab_size = tensors
            .tensor(&format!("{prefix}embeddings.word_embeddings.weight"))
            .map(|t| t.shape().first().copied().unwrap_or(0))
            .map_err(|_| ModelError::new(path, "has no word embeddings"))?;
        let token_types = tensor("embeddings.token_type_embeddings.weight", &[2, h])
            .or_else(|_| tensor("embeddings.token_type_embeddings.weight", &[1, h]))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let name = |rest: &str| format!("encoder.layer.{l}.{rest}");
            let mut qkv_weight = Vec::with_capacity(3 * h * h);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv_weight.extend(tensor(&name(&format!("attention.self.{part}.weight")), &[h, h])?);
                qkv_bias.extend(tensor(&name(&format!("attention.self.{part}.bias")), &[h])?);
            }
            layers.push(Layer {
                qkv_weight: transpose(&qkv_weight, 3 * h, h),
                qkv_bias,
                out_weight: transpose(&tensor(&name("attention.output.dense.weight"), &[h, h])?, h, h),
                out_bias: tensor(&name("attention.output.dense.bias"), &[h])?,
                attn_norm_weight: tensor(&name("attention.output.LayerNorm.weight"), &[h])?,
                attn_norm_bias: tensor(&name("attention.output.LayerNorm.bias"), &[h])?,
                up_weight: transpose(&tensor(&name("intermediate.dense.weight"), &[i, h])?, i, h),
                up_bias: tensor(&name("intermediate.dense.bias"), &[i])?,
                down_weight: transpose(&tensor(&name("output.dense.weight"), &[h, i])?, h, i),
                down_bias: tensor(&name("output.dense.bias"), &[h])?,
                ffn_norm_weight: tensor(&name("output.LayerNorm.weight"), &[h])?,
                ffn_norm_bias: tensor(&name("output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Self {
            word_embeddings: tensor("embeddings.word_embeddings.weight", &[vocab_size, h])?,
            position_embeddings: tensor("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type_embedding: token_types[..h].to_vec(),
            embed_norm_weight: tensor("embeddings.LayerNorm.weight", &[h])?,
            embed_norm_bias: tensor("embeddings.LayerNorm.bias", &[h])?,
            layers,
            vocab_size,
            config,
        })
    }
}

/// The transpose of a `rows × cols` row-major matrix, in 32 × 32 tiles so both sides stay in
/// cache (a plain loop strides through memory and was a tenth of `ragpipe query`'s start-up).
fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = matrix[r * cols + c];
                }
            }
        }
    }
    out
}

/// Little-endian F32 / F16 / BF16 bytes as f32s.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        Dtype::BF16 => Some(
            data.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect(),
        ),
        Dtype::F16 => Some(data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()),
        _ => None,
    }
}

/// IEEE half to single precision (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: mant · 2^-24.
            let value = mant as f32 * 2f32.powi(-24);
            return if sign == 0 { value } else { -value };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::new(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ModelError::new(path, format!("is not valid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7c00).is_infinite());
        let bf16 = to_f32(Dtype::BF16, &[0x80, 0x3f]).expect("bf16 converts");
        assert_eq!(bf16, vec![1.0]);
    }

    #[test]
    fn transposes_are_exact_on_ragged_tiles() {
        let (rows, cols) = (37, 70);
        let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&m, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], m[r * cols + c]);
            }
        }
    }

    #[test]
    fn a_missing_directory_says_how_to_get_the_model() {
        let err = ModelFiles::load(Path::new("/nonexistent/model")).err().expect("fails").to_string();
        assert!(err.contains("ops/fetch-model.sh"), "{err}");
    }
}
