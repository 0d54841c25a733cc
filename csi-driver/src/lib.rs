//! A CSI plugin that mounts AFS volumes (`mount-type: volume`) and the whole
//! AFS namespace (`mount-type: root`) into pods, for AuriStorFS, OpenAFS and
//! the in-kernel kAFS client.

pub mod capability;
pub mod config;
pub mod controller;
pub mod identity;
pub mod inflight;
pub mod metrics;
pub mod mounts;
pub mod node;
pub mod plan;
pub mod server;
pub mod volume;
