//! afs-operator: places the AFS kernel module and CSI driver on node groups
//! (`SpecialResource`) and rolls new versions out node by node without ever unloading a
//! module in use.
//!
//! Pure modules: [`crd`] (the API), [`rollout`] (the upgrade planner), [`objects`]
//! (desired objects). The controller only observes, calls them and executes.

pub mod crd;
pub mod labels;
pub mod objects;
pub mod rollout;
