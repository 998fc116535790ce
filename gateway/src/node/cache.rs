//! The last accepted bundle on disk, so a node can start while its control plane is down.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where a gateway/environment's bundle is kept in a cache directory.
pub fn path(dir: &Path, gateway: &str, environment: &str) -> PathBuf {
    let safe = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect::<String>()
    };
    dir.join(format!("{}.{}.bundle.jws", safe(gateway), safe(environment)))
}

/// Writes atomically: a temporary file in the same directory, synced, then renamed,
/// so a crash leaves either the old bundle or the new one, never half of one.
pub fn store(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", file.file_name().and_then(|n| n.to_str()).unwrap_or("bundle")));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn load(file: &Path) -> Option<Vec<u8>> {
    std::fs::read(file).ok()
}
