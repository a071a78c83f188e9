//! The encoder's numeric kernels: matrix products through the `gemm` crate (pure Rust, AVX-512
//! or AVX2 + FMA kernels picked at run time from the CPU's features), and the element-wise
//! steps (bias, GELU, softmax, layer norm) written branch-free so the compiler vectorises them,
//! with AVX-512 and AVX2 + FMA builds picked at run time. Measured: libm's `expf`/`erff` in the
//! attention softmax and the GELU cost about a fifth of the encoder's time on ~240-token chunks;
//! the polynomial versions below cost a tenth of that.
//!
//! The matrix products used to go through OpenBLAS's `cblas_sgemm`. OpenBLAS chooses its kernels
//! from a table of CPU models when it loads, and falls back to SSE3 kernels on CPUs it does not
//! know (4–6× slower here); `gemm` decides from the CPU's feature bits, so the encoder runs at
//! the same speed whichever kernel OpenBLAS picked for FAISS (`cargo bench --bench local_embed`).
//! faer 0.24.4, the other candidate, was as fast but returned wrong sums for small products with
//! strided operands (our attention heads) and crashed on some shapes off the main thread.

/// A row-major matrix inside a slice: `rows` × `cols`, rows `stride` apart (`stride ≥ cols`),
/// so a column block of a wider matrix (one attention head) can be used in place.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl View<'_> {
    fn check(&self, what: &str) {
        assert!(self.cols <= self.stride, "{what}: {} columns exceed the stride {}", self.cols, self.stride);
        if self.rows > 0 && self.cols > 0 {
            let needed = (self.rows - 1) * self.stride + self.cols;
            assert!(self.data.len() >= needed, "{what}: needs {needed} values, has {}", self.data.len());
        }
    }
}

/// `out = alpha · a · bᵀ + beta · out` when `b_transposed` (b is `n × k`, the layout of a
/// linear layer's weight), else `alpha · a · b + beta · out` (b is `k × n`). `out` has `ldc`
/// values per row and `a.rows` rows; `beta` is 0 (overwrite) or 1 (accumulate). Single-threaded:
/// the encoder runs one product per inference thread.
pub fn gemm(a: View<'_>, b: View<'_>, b_transposed: bool, alpha: f32, beta: f32, out: &mut [f32], ldc: usize) {
    a.check("gemm a");
    b.check("gemm b");
    let (m, k) = (a.rows, a.cols);
    let n = if b_transposed { b.rows } else { b.cols };
    let b_inner = if b_transposed { b.cols } else { b.rows };
    assert_eq!(k, b_inner, "gemm: inner dimensions differ");
    assert!(n <= ldc, "gemm: {n} output columns exceed ldc {ldc}");
    let accumulate = match beta {
        0.0 => false,
        1.0 => true,
        _ => panic!("gemm: beta must be 0 or 1, got {beta}"),
    };
    if m == 0 || n == 0 {
        return;
    }
    assert!(out.len() >= (m - 1) * ldc + n, "gemm: output too small");
    let stride = |v: usize| isize::try_from(v).expect("matrix stride fits an isize");
    // gemm takes (column stride, row stride) per operand; bᵀ is b read with the strides swapped.
    let (b_cs, b_rs) = if b_transposed { (stride(b.stride), 1) } else { (1, stride(b.stride)) };
    // SAFETY: the checks above keep every element gemm addresses (rows × stride + cols) inside
    // the slices; `out` does not alias `a` or `b` (a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            stride(ldc),
            accumulate,
            a.data.as_ptr(),
            1,
            stride(a.stride),
            b.data.as_ptr(),
            b_cs,
            b_rs,
            // gemm computes dst = alpha · dst + beta · lhs · rhs: its alpha is our beta.
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out += input · weight` for a linear layer whose weight is stored transposed: `weight` is
/// `in_features × out_features` (see `model::Layer`), `input` is `rows × in_features`, `out` is
/// `rows × out_features`, usually preloaded with the bias (and the residual).
pub fn linear(input: &[f32], rows: usize, weight: &[f32], out_features: usize, out: &mut [f32]) {
    let in_features = weight.len() / out_features;
    gemm(
        View { data: input, rows, cols: in_features, stride: in_features },
        View { data: weight, rows: in_features, cols: out_features, stride: out_features },
        false,
        1.0,
        1.0,
        out,
        out_features,
    );
}

/// Defines `$name` to run `$generic` (an `#[inline(always)]` kernel) compiled for AVX-512 when
/// the CPU has it, else for AVX2 + FMA when it has those, else for the baseline target: the
/// same source, vectorised by the compiler for each width.
macro_rules! dispatch {
    ($name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $generic:ident) => {
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("fma") {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

dispatch!(gelu(xs: &mut [f32]) => gelu_generic);
dispatch!(exp_shifted(row: &mut [f32]) -> f32 => exp_shifted_generic);
dispatch!(layer_norm(xs: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) => layer_norm_generic);

/// Copies `bias` into every `width`-wide row of `out` (a GEMM with `beta = 1` then adds to it).
pub fn fill_rows(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// `out[r] = x[r] + bias` for every row: the residual and the bias of the next GEMM at once.
pub fn residual_rows(out: &mut [f32], x: &[f32], bias: &[f32]) {
    for (row, input) in out.chunks_exact_mut(bias.len()).zip(x.chunks_exact(bias.len())) {
        for ((o, i), b) in row.iter_mut().zip(input).zip(bias) {
            *o = i + b;
        }
    }
}

/// Exact GELU, `x · Φ(x)`, with a rational erf (below).
#[inline(always)]
fn gelu_generic(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf as a rational function of x (Eigen's `generic_fast_erf_float`; |error| < 2e-7 on f32).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_473_9e-2;
    p / q
}

/// e^x by range reduction to `x = n·ln2 + r` and Cephes' degree-5 polynomial for e^r, with
/// 2^n built in the exponent bits (relative error ~2e-7; inputs clamped to f32's range).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low bits.
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // The integer n sits in the mantissa of `shifted`; move it into the exponent field.
    let n_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e_r * two_n
}

/// `x ← e^(x − max(row))` for every x of the row; returns the sum of the results. Sixteen
/// independent lanes for the max and the sum: a plain fold over `f32::max` is one dependent chain
/// the compiler cannot vectorise (it was a tenth of the encoder's time on ~240-token texts).
#[inline(always)]
fn exp_shifted_generic(row: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for i in 0..16 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    max = lanes.iter().fold(max, |m, &x| m.max(x));
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for i in 0..16 {
            c[i] = exp(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
}

/// Layer normalisation of every `width`-wide row, then `· gamma + beta`.
#[inline(always)]
fn layer_norm_generic(xs: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    let inv_width = 1.0 / width as f32;
    for row in xs.chunks_exact_mut(width) {
        let mean = sum(row) * inv_width;
        row.iter_mut().for_each(|x| *x -= mean);
        let var = sum_squares(row) * inv_width;
        let scale = 1.0 / (var + eps).sqrt();
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = *x * scale * g + b;
        }
    }
}

/// Sum with eight independent accumulators, so it vectorises without reassociation licence.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum_squares(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(row: &mut [f32]) {
        let inv = 1.0 / exp_shifted(row);
        row.iter_mut().for_each(|x| *x *= inv);
    }

    /// erf by its Taylor series in f64 (converges fast for |x| ≤ 4 with enough terms).
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut total, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * total.abs().max(1e-300) && n < 200.0 {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
        }
        (total * 2.0 / std::f64::consts::PI.sqrt()).clamp(-1.0, 1.0)
    }

    #[test]
    fn erf_and_exp_match_references() {
        for i in -5000..=5000 {
            let x = i as f32 / 1000.0;
            let want = if x.abs() > 5.0 { x.signum() as f64 } else { erf_reference(f64::from(x)) };
            assert!((f64::from(erf(x)) - want).abs() < 1e-6, "erf({x}) = {} want {want}", erf(x));
        }
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            assert!(((got - want) / want).abs() < 1e-6, "exp({x}) = {got} want {want}");
        }
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn softmax_layer_norm_and_gemm_agree_with_naive_versions() {
        let mut row = vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.0, 7.0, 2.5, 1.5];
        let naive: Vec<f32> = {
            let e: Vec<f32> = row.iter().map(|x: &f32| (x - 7.0).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        softmax(&mut row);
        for (a, b) in row.iter().zip(&naive) {
            assert!((a - b).abs() < 1e-6);
        }

        let mut xs: Vec<f32> = (0..20).map(|i| (i * i % 7) as f32 - 3.0).collect();
        let gamma = vec![2.0; 10];
        let beta = vec![1.0; 10];
        layer_norm(&mut xs, 10, &gamma, &beta, 1e-12);
        for row in xs.chunks(10) {
            let mean: f32 = row.iter().sum::<f32>() / 10.0;
            let var: f32 = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / 10.0;
            assert!((mean - 1.0).abs() < 1e-5 && (var - 4.0).abs() < 1e-4, "mean {mean} var {var}");
        }

        // a: 2×3, w: 4×3 (PyTorch's layout of a linear layer) → a·wᵀ: 2×4.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut out = vec![1.0; 8];
        gemm(
            View { data: &a, rows: 2, cols: 3, stride: 3 },
            View { data: &w, rows: 4, cols: 3, stride: 3 },
            true,
            1.0,
            1.0,
            &mut out,
            4,
        );
        let w = &w;
        let want: Vec<f32> = (0..2)
            .flat_map(|r| (0..4).map(move |c| 1.0 + (0..3).map(|k| a[r * 3 + k] * w[c * 3 + k]).sum::<f32>()))
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn gelu_matches_its_definition() {
        let mut xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect();
        let want: Vec<f64> =
            xs.iter().map(|&x| 0.5 * f64::from(x) * (1.0 + erf_reference(f64::from(x) / 2f64.sqrt()))).collect();
        gelu(&mut xs);
        for (got, want) in xs.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
