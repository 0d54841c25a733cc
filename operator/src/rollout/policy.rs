//! The rollout policy of one node group, resolved from `spec.rollout`.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::{SelectorError, validate_selector};
use crate::crd::RolloutSpec;

/// Budgets and per-phase timeouts (seconds) the planner enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Most nodes of the group unavailable at once, as a count (percent already resolved).
    pub max_unavailable: u32,
    /// Most nodes in an in-progress state at once.
    pub max_parallel: u32,
    /// Start no new node; nodes in progress finish.
    pub paused: bool,
    /// Limit of `cordon-required` and `eviction-required`.
    pub eviction_timeout: i64,
    /// Limit of `wait-for-unmount`.
    pub unmount_timeout: i64,
    /// Limit of `module-swap-required`.
    pub module_swap_timeout: i64,
    /// Limit of `validation-required`.
    pub validation_timeout: i64,
}

/// A `spec.rollout` the planner cannot act on. The API server refuses these at
/// admission; this is the check for objects written before the schema had the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("rollout.maxUnavailable: {value} is not a count >= 1 or a percent between 1% and 100%")]
    MaxUnavailable { value: String },
    #[error("rollout.maxParallel must be at least 1")]
    MaxParallel,
    #[error("rollout.podNonInterruptLabels: {0}")]
    PodNonInterruptLabels(#[from] SelectorError),
}

impl Policy {
    /// Resolves `spec` for a group of `group_size` nodes: a percent of `maxUnavailable`
    /// rounds up and is at least 1, so a small group still makes progress.
    pub fn from_spec(spec: &RolloutSpec, group_size: usize) -> Result<Self, PolicyError> {
        if spec.max_parallel == 0 {
            return Err(PolicyError::MaxParallel);
        }
        if let Some(selector) = &spec.pod_non_interrupt_labels {
            validate_selector(selector)?;
        }
        let timeouts = &spec.phase_timeouts;
        Ok(Self {
            max_unavailable: resolve_max_unavailable(&spec.max_unavailable, group_size)?,
            max_parallel: spec.max_parallel,
            paused: spec.paused,
            eviction_timeout: spec.eviction.timeout_seconds.into(),
            unmount_timeout: timeouts.unmount_seconds.into(),
            module_swap_timeout: timeouts.module_swap_seconds.into(),
            validation_timeout: timeouts.validation_seconds.into(),
        })
    }
}

fn resolve_max_unavailable(value: &IntOrString, group_size: usize) -> Result<u32, PolicyError> {
    match value {
        IntOrString::Int(n) => {
            u32::try_from(*n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| PolicyError::MaxUnavailable {
                    value: n.to_string(),
                })
        }
        IntOrString::String(s) => {
            let percent = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<u64>().ok())
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| PolicyError::MaxUnavailable {
                    value: format!("{s:?}"),
                })?;
            let size = u64::try_from(group_size).unwrap_or(u64::MAX);
            let count = size.saturating_mul(percent).div_ceil(100).max(1);
            Ok(u32::try_from(count).unwrap_or(u32::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn spec(max_unavailable: IntOrString) -> RolloutSpec {
        RolloutSpec {
            max_unavailable,
            ..RolloutSpec::default()
        }
    }

    fn resolve(v: IntOrString, size: usize) -> Result<u32, PolicyError> {
        Policy::from_spec(&spec(v), size).map(|p| p.max_unavailable)
    }

    #[test]
    fn percent_rounds_up_and_is_at_least_one() {
        let pct = |s: &str| IntOrString::String(s.to_owned());
        assert_eq!(resolve(pct("25%"), 10), Ok(3));
        assert_eq!(resolve(pct("25%"), 8), Ok(2));
        assert_eq!(resolve(pct("1%"), 10), Ok(1));
        assert_eq!(resolve(pct("10%"), 0), Ok(1));
        assert_eq!(resolve(pct("100%"), 7), Ok(7));
        assert_eq!(resolve(pct("33%"), 40), Ok(14));
        assert_eq!(resolve(IntOrString::Int(3), 2), Ok(3));
    }

    #[test]
    fn bad_values_name_the_field() {
        for v in [
            IntOrString::Int(0),
            IntOrString::Int(-2),
            IntOrString::String("0%".into()),
            IntOrString::String("101%".into()),
            IntOrString::String("3".into()),
            IntOrString::String("x%".into()),
        ] {
            let err = resolve(v.clone(), 10).unwrap_err();
            assert!(
                err.to_string().starts_with("rollout.maxUnavailable: "),
                "{v:?}: {err}"
            );
        }
    }

    #[test]
    fn other_fields_are_checked_and_copied() {
        let mut s = RolloutSpec {
            max_parallel: 0,
            ..RolloutSpec::default()
        };
        assert_eq!(Policy::from_spec(&s, 3), Err(PolicyError::MaxParallel));
        s.max_parallel = 2;
        s.pod_non_interrupt_labels = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Bogus".into(),
                values: None,
            }]),
            match_labels: None,
        });
        let err = Policy::from_spec(&s, 3).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rollout.podNonInterruptLabels: "),
            "{err}"
        );
        s.pod_non_interrupt_labels = None;
        s.phase_timeouts.validation_seconds = 42;
        let p = Policy::from_spec(&s, 3).unwrap();
        assert_eq!(
            (p.max_parallel, p.validation_timeout, p.eviction_timeout),
            (2, 42, 600)
        );
    }
}
