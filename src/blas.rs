//! Which SIMD level the CPU offers, which OpenBLAS kernel FAISS runs on, and the start-up guard
//! that keeps that kernel from falling back to a generic one.
//!
//! FAISS does its heavy lifting (IVF training, batched exact search) through OpenBLAS, which
//! picks its kernels once, when the library loads, from its own table of CPU models. Debian's
//! OpenBLAS 0.3.21 does not know recent CPUs (an Intel Xeon of model 207 with AVX-512, say) and
//! falls back to its Prescott (SSE3) kernels, 4–6× slower. Only the environment of a new process
//! changes that choice (`OPENBLAS_CORETYPE`), so [`ensure_best_kernel`] runs first thing in
//! `main`: when OpenBLAS picked a kernel below what the CPU runs, it names the best kernel the
//! CPU supports in `OPENBLAS_CORETYPE` and re-executes the program, once. A kernel is only named
//! when every instruction set it uses is reported by the CPU (and enabled by the OS), and an
//! `OPENBLAS_CORETYPE` the user set is always kept.
//!
//! The local embedding model does not use BLAS at all: its matrix products go through the
//! `gemm` crate, which dispatches on the CPU's features at run time (see `embed::local`).

use std::ffi::CStr;
use std::os::raw::c_char;

/// The environment variable OpenBLAS reads to force a kernel.
pub const CORETYPE_ENV: &str = "OPENBLAS_CORETYPE";
/// Set by the guard when it re-executes, to the kernel OpenBLAS had picked by itself: marks the
/// `OPENBLAS_CORETYPE` as ours (not the user's) and stops a second re-execution.
const GUARD_ENV: &str = "RAGPIPE_BLAS_GUARD";
/// For tests and benchmarks on CPUs OpenBLAS knows: treat the `OPENBLAS_CORETYPE` in the
/// environment as OpenBLAS's own pick (not the user's), reproducing a CPU it does not recognise.
pub const SIMULATE_UNKNOWN_CPU_ENV: &str = "RAGPIPE_BLAS_SIMULATE_UNKNOWN_CPU";

#[link(name = "openblas")]
unsafe extern "C" {
    fn openblas_get_corename() -> *const c_char;
    fn openblas_get_config() -> *const c_char;
}

/// Vector instruction sets, in increasing order of width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// SSE2 to SSE4.2 (every x86-64 CPU), or a CPU of another architecture.
    Sse,
    /// 256-bit AVX without AVX2.
    Avx,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F, CD, BW, DQ and VL (the set OpenBLAS's SkylakeX kernels use).
    Avx512,
}

impl SimdLevel {
    /// What the CPU (and the OS, which must save the wider registers) supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512cd") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Self::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Self::Avx2;
            }
            if has!("avx") {
                return Self::Avx;
            }
        }
        Self::Sse
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sse => "SSE",
            Self::Avx => "AVX",
            Self::Avx2 => "AVX2+FMA",
            Self::Avx512 => "AVX-512",
        }
    }

    /// The OpenBLAS kernel that uses this level best, if it is worth forcing.
    fn best_kernel(self) -> Option<&'static str> {
        match self {
            Self::Avx512 => Some("SkylakeX"),
            Self::Avx2 => Some("Haswell"),
            Self::Avx => Some("Sandybridge"),
            Self::Sse => None,
        }
    }
}

/// The widest instruction set an OpenBLAS kernel (by its core name) uses.
pub fn kernel_level(core: &str) -> SimdLevel {
    match core.to_ascii_lowercase().as_str() {
        "skylakex" | "cooperlake" | "sapphirerapids" => SimdLevel::Avx512,
        "haswell" | "zen" | "excavator" => SimdLevel::Avx2,
        "sandybridge" | "bulldozer" | "piledriver" | "steamroller" => SimdLevel::Avx,
        _ => SimdLevel::Sse,
    }
}

/// Who chose the OpenBLAS kernel this process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// OpenBLAS, from its own CPU table.
    OpenBlas,
    /// The user, through `OPENBLAS_CORETYPE`.
    User(String),
    /// This guard, after OpenBLAS had picked the named kernel by itself.
    Guard {
        /// What OpenBLAS picked before the re-execution.
        replaced: String,
    },
}

/// The compute kernels of this process, for logs, `status` and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernels {
    /// The CPU's SIMD level.
    pub cpu: SimdLevel,
    /// The OpenBLAS kernel FAISS runs on (its core name, e.g. `SkylakeX`).
    pub blas_core: String,
    /// OpenBLAS's build description (version, DYNAMIC_ARCH, threads).
    pub blas_config: String,
    /// Who chose `blas_core`.
    pub choice: Choice,
}

impl Kernels {
    /// Reads the state of this process.
    pub fn current() -> Self {
        let choice = match (std::env::var(GUARD_ENV), std::env::var(CORETYPE_ENV)) {
            (Ok(replaced), Ok(_)) => Choice::Guard { replaced },
            (Err(_), Ok(core)) => Choice::User(core),
            _ => Choice::OpenBlas,
        };
        Self { cpu: SimdLevel::detect(), blas_core: openblas_core(), blas_config: openblas_config(), choice }
    }

    /// The SIMD level of the OpenBLAS kernel in use.
    pub fn blas_level(&self) -> SimdLevel {
        kernel_level(&self.blas_core)
    }

    /// The SIMD level the local model's matrix products use (the `gemm` crate dispatches on the
    /// CPU: AVX-512 where present, else AVX2 + FMA, else a portable kernel).
    pub fn inference_level(&self) -> SimdLevel {
        match self.cpu {
            SimdLevel::Avx => SimdLevel::Sse,
            level => level,
        }
    }

    /// A warning when FAISS runs on a kernel narrower than the CPU supports, saying what to do.
    pub fn warning(&self) -> Option<String> {
        let best = self.cpu.best_kernel()?;
        if self.blas_level() >= self.cpu {
            return None;
        }
        let why = match &self.choice {
            Choice::User(value) => format!("{CORETYPE_ENV}={value} is set in the environment"),
            Choice::Guard { replaced } => format!(
                "OpenBLAS picked `{replaced}` and ignored {CORETYPE_ENV}={best} (is it built with DYNAMIC_ARCH? \
                 `{}`)",
                self.blas_config
            ),
            Choice::OpenBlas => "OpenBLAS does not recognise this CPU".to_owned(),
        };
        Some(format!(
            "FAISS runs on OpenBLAS's `{}` kernels ({}) on a CPU with {}: {why}; index builds and batched searches \
             run several times slower. Set {CORETYPE_ENV}={best} (or unset it and let ragpipe choose), or install an \
             OpenBLAS that knows this CPU",
            self.blas_core,
            self.blas_level().name(),
            self.cpu.name(),
        ))
    }

    /// One line for `ragpipe status` and the worker's start-up log.
    pub fn describe(&self) -> String {
        let chosen = match &self.choice {
            Choice::OpenBlas => "chosen by OpenBLAS".to_owned(),
            Choice::User(_) => format!("chosen by {CORETYPE_ENV}"),
            Choice::Guard { replaced } => format!("chosen by ragpipe; OpenBLAS had picked `{replaced}`"),
        };
        format!(
            "CPU {}; FAISS on OpenBLAS `{}` kernels ({}, {chosen}); local model on gemm {}",
            self.cpu.name(),
            self.blas_core,
            self.blas_level().name(),
            self.inference_level().name()
        )
    }

    /// Logs [`Kernels::describe`], and [`Kernels::warning`] as a warning.
    pub fn log(&self) {
        tracing::info!(
            cpu = self.cpu.name(),
            blas_core = %self.blas_core,
            blas_simd = self.blas_level().name(),
            inference_simd = self.inference_level().name(),
            "compute kernels: {}",
            self.describe()
        );
        if let Some(warning) = self.warning() {
            tracing::warn!("{warning}");
        }
    }
}

/// The OpenBLAS kernel in use (e.g. `Prescott`, `Haswell`, `SkylakeX`).
pub fn openblas_core() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    unsafe { c_string(openblas_get_corename()) }
}

fn openblas_config() -> String {
    // SAFETY: as above.
    unsafe { c_string(openblas_get_config()) }
}

/// # Safety
/// `ptr` is null or points to a NUL-terminated string that lives for the whole process.
unsafe fn c_string(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return "unknown".to_owned();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().trim().to_owned()
}

/// What [`ensure_best_kernel`] would do in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: the kernel is as wide as the CPU, the user chose, or the guard already ran.
    Keep,
    /// Re-execute with `OPENBLAS_CORETYPE` set to this kernel.
    Reexec(&'static str),
}

/// Decides, from the CPU, the kernel OpenBLAS picked and the environment (pure: tested below).
pub fn plan(cpu: SimdLevel, picked: &str, user_coretype: Option<&str>, guard_ran: bool) -> Plan {
    if guard_ran || user_coretype.is_some() {
        return Plan::Keep;
    }
    match cpu.best_kernel() {
        Some(best) if kernel_level(picked) < cpu => Plan::Reexec(best),
        _ => Plan::Keep,
    }
}

/// If OpenBLAS picked a kernel narrower than the CPU runs, re-executes this program with the
/// best kernel named in `OPENBLAS_CORETYPE` (does not return then). Call it first in `main`,
/// before any thread starts. Returns when nothing needs doing, or when the re-execution failed
/// (logged later by [`Kernels::log`] as a generic kernel).
pub fn ensure_best_kernel() {
    let simulated = std::env::var_os(SIMULATE_UNKNOWN_CPU_ENV).is_some();
    let user = std::env::var(CORETYPE_ENV).ok().filter(|_| !simulated);
    let picked = openblas_core();
    let guard_ran = std::env::var_os(GUARD_ENV).is_some();
    let Plan::Reexec(best) = plan(SimdLevel::detect(), &picked, user.as_deref(), guard_ran) else { return };
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next();
    let mut command = std::process::Command::new(exe);
    command.args(args).env(CORETYPE_ENV, best).env(GUARD_ENV, &picked);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        // Only returns on failure; the process then goes on with the kernel it has.
        let error = command.exec();
        eprintln!("warning: could not re-execute with {CORETYPE_ENV}={best}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generic_kernel_on_a_capable_cpu_is_replaced_by_the_best_it_runs() {
        assert_eq!(plan(SimdLevel::Avx512, "Prescott", None, false), Plan::Reexec("SkylakeX"));
        assert_eq!(plan(SimdLevel::Avx512, "Haswell", None, false), Plan::Reexec("SkylakeX"));
        assert_eq!(plan(SimdLevel::Avx2, "Prescott", None, false), Plan::Reexec("Haswell"));
        assert_eq!(plan(SimdLevel::Avx2, "Nehalem", None, false), Plan::Reexec("Haswell"));
        assert_eq!(plan(SimdLevel::Avx, "Core2", None, false), Plan::Reexec("Sandybridge"));
    }

    #[test]
    fn a_kernel_is_never_wider_than_the_cpu_and_choices_are_kept() {
        // Never a kernel the CPU cannot run.
        assert_eq!(plan(SimdLevel::Sse, "Prescott", None, false), Plan::Keep);
        assert_eq!(plan(SimdLevel::Avx2, "Haswell", None, false), Plan::Keep);
        assert_eq!(plan(SimdLevel::Avx2, "Zen", None, false), Plan::Keep);
        assert_eq!(plan(SimdLevel::Avx512, "SkylakeX", None, false), Plan::Keep);
        assert_eq!(plan(SimdLevel::Avx512, "Cooperlake", None, false), Plan::Keep);
        // The user's choice stands, even a slow one; and the guard runs once.
        assert_eq!(plan(SimdLevel::Avx512, "Prescott", Some("Prescott"), false), Plan::Keep);
        assert_eq!(plan(SimdLevel::Avx512, "Prescott", None, true), Plan::Keep);
    }

    #[test]
    fn warnings_say_what_to_do() {
        let kernels = |core: &str, choice| Kernels {
            cpu: SimdLevel::Avx512,
            blas_core: core.into(),
            blas_config: "OpenBLAS 0.3.21 DYNAMIC_ARCH".into(),
            choice,
        };
        let warning = kernels("Prescott", Choice::User("Prescott".into())).warning().expect("warns");
        assert!(warning.contains("OPENBLAS_CORETYPE=SkylakeX"), "{warning}");
        assert!(warning.contains("OPENBLAS_CORETYPE=Prescott is set"), "{warning}");
        assert!(kernels("Prescott", Choice::OpenBlas).warning().is_some());
        assert_eq!(kernels("SkylakeX", Choice::Guard { replaced: "Prescott".into() }).warning(), None);
        assert!(kernels("SkylakeX", Choice::OpenBlas).describe().contains("`SkylakeX` kernels (AVX-512"));
    }

    #[test]
    fn this_process_reads_a_kernel_name() {
        let kernels = Kernels::current();
        assert!(!kernels.blas_core.is_empty() && kernels.blas_core != "unknown", "{kernels:?}");
        assert!(kernels.blas_config.contains("OpenBLAS"), "{kernels:?}");
    }
}
