//! Desired Kubernetes objects of a SpecialResource (pure; no client).
