//! The BERT forward pass over a *packed* batch: the token rows of all sequences stacked with
//! no padding, so every linear layer is one large GEMM over exactly the real tokens, and only
//! attention looks at sequence boundaries. PyTorch pads a batch to its longest member; packing
//! is why batching by length matters less here, and why short texts are cheap.
//!
//! An [`Encoder`] owns its scratch buffers and reuses them across batches: allocating fresh
//! activations per call cost a third of the time in page faults in an earlier prototype.

use super::kernels::{self, View};
use super::model::Weights;

/// Scratch space for one inference thread.
#[derive(Default)]
pub struct Encoder {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attn_out: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    /// Per query row of one head: 1 / the sum of its unnormalised attention weights.
    inv_sums: Vec<f32>,
}

impl Encoder {
    /// Mean-pooled, L2-normalised embeddings of `sequences` (token ids with the special tokens,
    /// each at most `max_position_embeddings` long), in order.
    pub fn embed(&mut self, weights: &Weights, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let cfg = &weights.config;
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let heads = cfg.num_attention_heads;
        let head_dim = h / heads;
        let total: usize = sequences.iter().map(Vec::len).sum();
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        assert!(longest <= cfg.max_position_embeddings, "sequence of {longest} tokens exceeds the model's positions");

        resize(&mut self.hidden, total * h);
        resize(&mut self.qkv, total * 3 * h);
        resize(&mut self.context, total * h);
        resize(&mut self.attn_out, total * h);
        resize(&mut self.up, total * inter);
        resize(&mut self.scores, longest * longest);
        resize(&mut self.inv_sums, longest);

        // Embeddings: word + position + token type 0, then layer norm.
        let mut row = 0;
        for seq in sequences {
            for (pos, &id) in seq.iter().enumerate() {
                let id = (id as usize).min(weights.vocab_size - 1);
                let out = &mut self.hidden[row * h..(row + 1) * h];
                let word = &weights.word_embeddings[id * h..(id + 1) * h];
                let position = &weights.position_embeddings[pos * h..(pos + 1) * h];
                for (((o, w), p), t) in out.iter_mut().zip(word).zip(position).zip(&weights.token_type_embedding) {
                    *o = w + p + t;
                }
                row += 1;
            }
        }
        kernels::layer_norm(
            &mut self.hidden,
            h,
            &weights.embed_norm_weight,
            &weights.embed_norm_bias,
            cfg.layer_norm_eps,
        );

        let scale = 1.0 / (head_dim as f32).sqrt();
        for layer in &weights.layers {
            // Q, K and V for every token at once.
            kernels::fill_rows(&mut self.qkv, &layer.qkv_bias);
            kernels::linear(&self.hidden, total, &layer.qkv_weight, 3 * h, &mut self.qkv);
            // Attention, per sequence and head, on column blocks of the packed QKV matrix.
            let mut start = 0;
            for seq in sequences {
                let len = seq.len();
                let qkv = &self.qkv[start * 3 * h..(start + len) * 3 * h];
                let scores = &mut self.scores[..len * len];
                for head in 0..heads {
                    let col = head * head_dim;
                    let block =
                        |offset: usize| View { data: &qkv[offset + col..], rows: len, cols: head_dim, stride: 3 * h };
                    kernels::gemm(block(0), block(h), true, scale, 0.0, scores, len);
                    // softmax(S)·V = diag(1/Σ)·exp(S − max)·V: normalising the len × head_dim
                    // output instead of the len × len weights saves a pass over the weights.
                    for (row, inv) in scores.chunks_exact_mut(len).zip(&mut self.inv_sums) {
                        *inv = 1.0 / kernels::exp_shifted(row);
                    }
                    let context = &mut self.context[start * h + col..];
                    kernels::gemm(
                        View { data: scores, rows: len, cols: len, stride: len },
                        block(2 * h),
                        false,
                        1.0,
                        0.0,
                        context,
                        h,
                    );
                    for (row, inv) in context.chunks_mut(h).zip(&self.inv_sums[..len]) {
                        row[..head_dim].iter_mut().for_each(|x| *x *= inv);
                    }
                }
                start += len;
            }
            // Output projection, with the residual and bias preloaded, then layer norm.
            kernels::residual_rows(&mut self.attn_out, &self.hidden, &layer.out_bias);
            kernels::linear(&self.context, total, &layer.out_weight, h, &mut self.attn_out);
            kernels::layer_norm(
                &mut self.attn_out,
                h,
                &layer.attn_norm_weight,
                &layer.attn_norm_bias,
                cfg.layer_norm_eps,
            );
            // Feed-forward: up, GELU, down (+ residual), layer norm.
            kernels::fill_rows(&mut self.up, &layer.up_bias);
            kernels::linear(&self.attn_out, total, &layer.up_weight, inter, &mut self.up);
            kernels::gelu(&mut self.up);
            kernels::residual_rows(&mut self.hidden, &self.attn_out, &layer.down_bias);
            kernels::linear(&self.up, total, &layer.down_weight, h, &mut self.hidden);
            kernels::layer_norm(&mut self.hidden, h, &layer.ffn_norm_weight, &layer.ffn_norm_bias, cfg.layer_norm_eps);
        }

        // Mean pooling over each sequence's tokens (no padding, so all of them), then L2.
        let mut start = 0;
        sequences
            .iter()
            .map(|seq| {
                let mut pooled = vec![0f32; h];
                for token in self.hidden[start * h..(start + seq.len()) * h].chunks_exact(h) {
                    pooled.iter_mut().zip(token).for_each(|(p, t)| *p += t);
                }
                start += seq.len();
                crate::embed::normalize(&mut pooled);
                pooled
            })
            .collect()
    }
}

/// Sets the length without keeping old contents meaningful (every buffer is overwritten).
fn resize(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    buffer.truncate(len);
}
