//! The start-up guard against OpenBLAS's generic fallback kernels, through the real binary:
//! OpenBLAS picks its kernel when it loads, so only a fresh process can show what it chose.
//! `RAGPIPE_BLAS_SIMULATE_UNKNOWN_CPU` makes a forced `Prescott` look like OpenBLAS's own pick,
//! which is what happens on a CPU the distribution's OpenBLAS does not know.

use std::process::Command;

use ragpipe::blas::SimdLevel;

/// `ragpipe status` with `env`: its compute lines (the rest fails without a database, which is
/// fine: the compute section comes first).
fn status_with(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("workers.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"postgres://postgres@127.0.0.1:1/unreachable\"\nacquire_timeout_secs = 1\n",
    )
    .expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragpipe"));
    command.arg("status").arg("--config").arg(&config);
    command.env_remove("OPENBLAS_CORETYPE").env_remove("RAGPIPE_BLAS_GUARD");
    command.env_remove(ragpipe::blas::SIMULATE_UNKNOWN_CPU_ENV);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run ragpipe status");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn best_kernel() -> Option<&'static str> {
    match SimdLevel::detect() {
        SimdLevel::Avx512 => Some("SkylakeX"),
        SimdLevel::Avx2 => Some("Haswell"),
        SimdLevel::Avx => Some("Sandybridge"),
        SimdLevel::Sse => None,
    }
}

#[test]
fn a_generic_kernel_picked_by_openblas_is_replaced_by_the_best_the_cpu_runs() {
    let Some(best) = best_kernel() else {
        println!("skipped: this CPU has no AVX, so the generic kernel is already the best");
        return;
    };
    let out = status_with(&[("OPENBLAS_CORETYPE", "Prescott"), (ragpipe::blas::SIMULATE_UNKNOWN_CPU_ENV, "1")]);
    assert!(out.contains(&format!("OpenBLAS `{best}` kernels")), "{out}");
    assert!(out.contains("chosen by ragpipe; OpenBLAS had picked `Prescott`"), "{out}");
    assert!(!out.contains("warning"), "{out}");
}

#[test]
fn a_kernel_the_user_chose_is_kept_with_a_warning_that_says_what_to_do() {
    let Some(best) = best_kernel() else {
        println!("skipped: this CPU has no AVX");
        return;
    };
    let out = status_with(&[("OPENBLAS_CORETYPE", "Prescott")]);
    assert!(out.contains("OpenBLAS `Prescott` kernels (SSE, chosen by OPENBLAS_CORETYPE)"), "{out}");
    assert!(out.contains(&format!("Set OPENBLAS_CORETYPE={best}")), "{out}");
    assert!(out.contains("OPENBLAS_CORETYPE=Prescott is set in the environment"), "{out}");
}

#[test]
fn the_local_model_runs_on_the_widest_simd_the_cpu_has_whatever_openblas_picked() {
    let out = status_with(&[("OPENBLAS_CORETYPE", "Prescott")]);
    let expected = match SimdLevel::detect() {
        SimdLevel::Avx => SimdLevel::Sse,
        level => level,
    };
    assert!(out.contains(&format!("local model on gemm {}", expected.name())), "{out}");
}
