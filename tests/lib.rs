//! Repository-level checks live in the test targets beside this file; this library
//! locates the repository, evaluates deploy/'s admission policies ([`admission`]) and
//! builds what the operator builds for a sample SpecialResource ([`fixtures`]).

use std::path::{Path, PathBuf};

pub mod admission;
pub mod fixtures;

/// The repository root (this crate sits in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
