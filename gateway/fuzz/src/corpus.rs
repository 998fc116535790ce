//! Replaying the committed corpora through their harnesses without libFuzzer, as the
//! fuzz crates' `tests/corpus.rs` do in `cargo test`: every seed, the regression seeds
//! of past crashes among them, is checked on stable Rust.

use std::any::Any;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Panics on any thread since the first replay. The gateway's tasks run on tokio's
/// worker threads, where a panic never reaches `catch_unwind`; libFuzzer aborts on
/// one, so the replay counts them and blames the seed being replayed. That holds only
/// while nothing else runs in the process: the caller must be its binary's only test.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Replays every seed of every target of the fuzz crate at `crate_dir` through the
/// harness `harness` names for it, then panics listing each failure: a seed whose run
/// panicked (on any thread), a target without a harness, a missing or empty corpus.
pub fn replay_all(crate_dir: &Path, harness: impl Fn(&str) -> Option<fn(&[u8])>) {
    count_panics();
    let targets = targets(crate_dir);
    assert!(!targets.is_empty(), "{}: no fuzz targets", crate_dir.display());
    let mut failures = Vec::new();
    for target in &targets {
        let Some(run) = harness(target) else {
            failures.push(format!("{target}: no harness to replay it with (add it to tests/corpus.rs)"));
            continue;
        };
        let dir = crate_dir.join("corpus").join(target);
        match seeds(&dir) {
            Ok(seeds) if !seeds.is_empty() => replay(target, &seeds, run, &mut failures),
            Ok(_) => failures.push(format!("{target}: {}: no seeds, so nothing would be checked", dir.display())),
            Err(e) => failures.push(format!("{target}: {}: {e}", dir.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures replaying the corpora of {}:\n  {}",
        failures.len(),
        crate_dir.display(),
        failures.join("\n  ")
    );
}

fn replay(target: &str, seeds: &[PathBuf], run: fn(&[u8]), failures: &mut Vec<String>) {
    for seed in seeds {
        let name = seed.file_name().map_or_else(|| seed.display().to_string(), |n| n.display().to_string());
        let data = match fs::read(seed) {
            Ok(data) => data,
            Err(e) => {
                failures.push(format!("{target}/{name}: {e}"));
                continue;
            }
        };
        let before = PANICS.load(Ordering::SeqCst);
        match panic::catch_unwind(|| run(&data)) {
            Err(payload) => failures.push(format!("{target}/{name}: {}", message(payload.as_ref()))),
            Ok(()) if PANICS.load(Ordering::SeqCst) != before => {
                failures.push(format!("{target}/{name}: a panic on another thread (printed above)"));
            }
            Ok(()) => {}
        }
    }
    eprintln!("{target}: {} seeds replayed", seeds.len());
}

/// The fuzz crate's targets, sorted: those of `fuzz_targets/*.rs` and those with a
/// directory in `corpus/`.
fn targets(crate_dir: &Path) -> Vec<String> {
    let names = |dir: &str| entries(&crate_dir.join(dir)).unwrap_or_default().into_iter();
    let sources = names("fuzz_targets")
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()));
    let corpora =
        names("corpus").filter(|p| p.is_dir()).filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut targets: Vec<String> = sources.chain(corpora).collect();
    targets.sort();
    targets.dedup();
    targets
}

fn seeds(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = entries(dir)?.into_iter().filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

fn entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fs::read_dir(dir)?.map(|entry| entry.map(|e| e.path())).collect()
}

/// Installs, once, a panic hook that counts every panic before printing it as before.
fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let print = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            print(info);
        }));
    });
}

fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
