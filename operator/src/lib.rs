//! afs-operator: places the AFS kernel module and CSI driver on node groups
//! (`SpecialResource`) and rolls new versions out node by node without ever unloading a
//! module in use.
//!
//! Pure modules: [`crd`] (the API), [`objects`] (desired objects), [`rollout`] (the
//! upgrade planner), [`observe`], [`ownership`], [`nodes`], [`group`], [`diff`], [`status`]. The
//! [`controller`] only observes, calls them and executes.

pub mod controller;
pub mod crd;
pub mod diff;
pub mod group;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod nodes;
pub mod objects;
pub mod observe;
pub mod ownership;
pub mod rollout;
pub mod status;
