//! Cost of the sandbox per document: the same small DOCX extracted in process and through a
//! child process, sequentially. Run: `cargo bench --bench sandbox_overhead`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragpipe::extract::{ExtractSettings, Hints, OwnedHints, Sandbox, extract_in_process};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/docx/pandoc/tables.docx");
const ROUNDS: u32 = 200;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bytes: Arc<[u8]> = Arc::from(std::fs::read(SAMPLE)?);
    let settings = ExtractSettings::default();

    let started = Instant::now();
    for _ in 0..ROUNDS {
        extract_in_process(&bytes, &Hints::default(), &settings)?;
    }
    let in_process = started.elapsed() / ROUNDS;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let sandbox = Sandbox::new(PathBuf::from(env!("CARGO_BIN_EXE_ragpipe")), settings);
    let sandboxed: Duration = runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..ROUNDS {
            sandbox.extract(Arc::clone(&bytes), OwnedHints::default()).await?;
        }
        Ok::<_, ragpipe::extract::ExtractError>(started.elapsed() / ROUNDS)
    })?;

    println!("document: {SAMPLE} ({} bytes), {ROUNDS} rounds", bytes.len());
    println!("in process: {:.3} ms/doc", in_process.as_secs_f64() * 1e3);
    println!("sandboxed:  {:.3} ms/doc", sandboxed.as_secs_f64() * 1e3);
    println!("overhead:   {:.3} ms/doc", (sandboxed.saturating_sub(in_process)).as_secs_f64() * 1e3);
    Ok(())
}
