//! Repository-level checks live in the test targets beside this file; this library only
//! locates the repository.

use std::path::{Path, PathBuf};

/// The repository root (this crate sits in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
