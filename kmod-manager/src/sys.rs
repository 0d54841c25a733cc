//! The module syscalls, behind a trait: the loader and the unloader call the kernel only
//! through [`ModuleSyscalls`], so that tests stand in for a kernel (this host has no
//! loadable-module support) and see exactly which descriptor or bytes would be loaded.

use std::ffi::CStr;
use std::fs::File;

use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module, init_module};

pub trait ModuleSyscalls {
    /// `finit_module(2)`: the kernel reads the module from this descriptor (from offset 0).
    fn finit_module(&mut self, file: &File, params: &CStr) -> nix::Result<()>;
    /// `init_module(2)`: the kernel copies the module from this image.
    fn init_module(&mut self, image: &[u8], params: &CStr) -> nix::Result<()>;
    /// `delete_module(2)` with `O_NONBLOCK`: fails with EWOULDBLOCK instead of waiting,
    /// never forced.
    fn delete_module(&mut self, name: &CStr) -> nix::Result<()>;
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live;

impl ModuleSyscalls for Live {
    fn finit_module(&mut self, file: &File, params: &CStr) -> nix::Result<()> {
        finit_module(file, params, ModuleInitFlags::empty())
    }
    fn init_module(&mut self, image: &[u8], params: &CStr) -> nix::Result<()> {
        init_module(image, params)
    }
    fn delete_module(&mut self, name: &CStr) -> nix::Result<()> {
        delete_module(name, DeleteModuleFlags::O_NONBLOCK)
    }
}
