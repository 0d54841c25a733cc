//! kmod-manager: the right AFS kernel module for the running kernel, never unloaded
//! while in use.
//!
//! Pure decision modules: [`kernel`] (release parsing), [`mapping`] (image selection),
//! [`modinfo`] (fit of a `.ko`), [`depmod`] (load order), [`guard`] (unload decision),
//! [`status`] (rendering), [`client::plan`]. I/O modules: [`state`], [`mounts`], [`record`] (which modules are ours), [`loader`], [`unload`], [`client`],
//! [`daemon`], [`node`]; the module syscalls behind [`sys`].

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod depmod;
pub mod guard;
pub mod kernel;
pub mod loader;
pub mod mapping;
pub mod metrics;
pub mod modinfo;
pub mod mounts;
pub mod node;
pub mod record;
pub mod state;
pub mod status;
pub mod sys;
pub mod unload;
