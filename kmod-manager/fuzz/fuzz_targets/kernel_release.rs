//! `cargo +nightly fuzz run kernel_release`: any input parses or errors, never panics,
//! and everything derived from a parsed release is defined.
#![no_main]

use kmod_manager::kernel::KernelRelease;
use kmod_manager::mapping::render_template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(k) = KernelRelease::parse(&s) {
        assert_eq!(k.full(), s);
        let tag = k.kabi_tag();
        assert!(KernelRelease::parse(&tag).is_ok(), "kABI tag {tag:?} of {s:?} must parse");
        let _ = render_template(
            "r/${MODULE_VERSION}:${KERNEL_KABI_TAG}-${KERNEL_XYZ}-${KERNEL_X}.${KERNEL_Y}.${KERNEL_Z}",
            &k,
            Some("1"),
        );
    }
});
