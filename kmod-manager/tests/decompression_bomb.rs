//! (b) Decompression bombs: 128 MiB of zeros compressed to a few KiB by the real `gzip -9`,
//! `xz -9 --check=crc32` and `zstd -19 --no-content-size` (`tests/fixtures/`, made with
//! `head -c 128M /dev/zero | <tool>`). kmod-manager runs as root on every node; such a
//! file in a module tree must be refused, naming the file and the limit, without the
//! process ever holding much more than the limit. This test binary counts what its
//! threads allocate to check that.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use kmod_manager::loader::{LoadError, observe, plan};
use kmod_manager::modinfo::{MAX_DECOMPRESSED_MODULE, ModInfo, ModinfoError, host_architecture};
use kmod_manager::state::SysPaths;

/// Counts the bytes live on each thread and their peak (tests run on parallel threads).
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn track(delta: i64) {
    // try_with: the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn size(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(size(layout.size()));
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(size(layout.size()));
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        track(-size(layout.size()));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(size(new_size) - size(layout.size()));
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak of bytes allocated meanwhile on top of
/// what this thread held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

const BOMBS: [(&str, &str, &[u8]); 3] = [
    ("gzip", "gz", include_bytes!("fixtures/zeros-128MiB.ko.gz")),
    ("xz", "xz", include_bytes!("fixtures/zeros-128MiB.ko.xz")),
    (
        "zstd",
        "zst",
        include_bytes!("fixtures/zeros-128MiB.ko.zst"),
    ),
];

/// Beyond the output buffer, a decoder keeps its own window: zstd -19 declares 8 MiB,
/// which ruzstd's ring buffer may double.
const DECODER_SLACK: i64 = 20 * 1024 * 1024;

fn write_bomb(dir: &tempfile::TempDir, ext: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(format!("kafs.ko.{ext}"));
    std::fs::write(&path, bytes).expect("write bomb");
    path
}

#[test]
fn bombs_are_refused_without_allocating_past_the_limit() {
    let limit = i64::try_from(MAX_DECOMPRESSED_MODULE).expect("fits");
    assert!(
        limit + DECODER_SLACK < 128 * 1024 * 1024,
        "the bombs are bigger"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for (kind, ext, bytes) in BOMBS {
        let path = write_bomb(&dir, ext, bytes);
        let file = std::fs::File::open(&path).expect("open");
        let (result, peak) = peak_during(|| ModInfo::from_file(&file).map(|_| ()));
        assert!(
            peak <= limit + DECODER_SLACK,
            "{kind}: {peak} bytes allocated to refuse a 128 MiB bomb (limit {limit})"
        );
        assert_eq!(
            result,
            Err(ModinfoError::TooLarge {
                kind,
                limit: MAX_DECOMPRESSED_MODULE
            }),
            "{kind}"
        );
    }
}

/// The xz walk reads the real tool's LZMA2 chunk headers exactly.
#[test]
fn the_xz_walk_finds_the_real_size() {
    assert_eq!(
        kmod_manager::modinfo::xz_declared_size(BOMBS[1].2),
        Ok(128 * 1024 * 1024)
    );
}

#[test]
fn the_load_refuses_a_bomb_naming_the_file_and_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = SysPaths {
        proc: dir.path().join("proc"),
        sys: dir.path().join("sys"),
    };
    for (_, ext, bytes) in BOMBS {
        let path = write_bomb(&dir, ext, bytes);
        let chain = [("kafs".to_owned(), path.clone())];
        let candidates = observe(&paths, &chain).expect("observed");
        let e = plan(candidates, "6.1.0-56-amd64", host_architecture()).expect_err("refused");
        let message = e.to_string();
        assert!(
            matches!(&e, LoadError::TooLarge { path: p, limit, .. } if *p == path && *limit == MAX_DECOMPRESSED_MODULE),
            "{message}"
        );
        assert!(
            message.contains(&path.display().to_string()) && message.contains("64 MiB"),
            "{message}"
        );
    }
}
