//! `cargo +nightly fuzz run modinfo`: arbitrary bytes as a module file never panic.
#![no_main]

use kmod_manager::modinfo::{Compression, ModInfo, decompress, parse_modinfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_modinfo(data);
    let _ = ModInfo::from_elf(data);
    let kind = Compression::detect(data);
    if kind != Compression::None {
        let _ = decompress(kind, data);
    }
});
