//! afsctl: what a cluster admin runs to install the operator, deploy a node group
//! (SpecialResource) with its maps, follow its rollout, and remove it without unloading
//! a module in use.

pub mod cluster;
pub mod commands;
pub mod install;
pub mod maps;
pub mod progress;
pub mod validate;
