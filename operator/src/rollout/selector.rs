//! Label selectors (`matchLabels` + `matchExpressions`) evaluated without a client, for
//! `rollout.podNonInterruptLabels`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Why a selector cannot be evaluated as the API server would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "matchExpressions[{index}] (key {key:?}): unknown operator {operator:?}; use In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}] (key {key:?}): {operator} needs at least one value")]
    MissingValues {
        index: usize,
        key: String,
        operator: String,
    },
    #[error("matchExpressions[{index}] (key {key:?}): {operator} takes no values")]
    UnexpectedValues {
        index: usize,
        key: String,
        operator: String,
    },
}

/// Checks every requirement as the API server does for workload selectors.
pub fn validate_selector(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (index, req) in expressions(selector).iter().enumerate() {
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        let (key, operator) = (req.key.clone(), req.operator.clone());
        match (req.operator.as_str(), has_values) {
            ("In" | "NotIn", false) => {
                return Err(SelectorError::MissingValues {
                    index,
                    key,
                    operator,
                });
            }
            ("Exists" | "DoesNotExist", true) => {
                return Err(SelectorError::UnexpectedValues {
                    index,
                    key,
                    operator,
                });
            }
            ("In" | "NotIn" | "Exists" | "DoesNotExist", _) => {}
            _ => {
                return Err(SelectorError::UnknownOperator {
                    index,
                    key,
                    operator,
                });
            }
        }
    }
    Ok(())
}

/// Whether `labels` satisfy `selector` (every `matchLabels` pair and every expression).
///
/// An empty selector matches everything, as in Kubernetes. A requirement that
/// [`validate_selector`] refuses counts as *matching*: the selector protects pods from
/// eviction, so a typo must err on the side of waiting for a pod, never evicting it.
pub fn matches_selector(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten();
    pairs.clone().all(|(k, v)| labels.get(k) == Some(v))
        && expressions(selector)
            .iter()
            .all(|req| requirement_holds(req, labels))
}

fn expressions(selector: &LabelSelector) -> &[LabelSelectorRequirement] {
    selector.match_expressions.as_deref().unwrap_or_default()
}

fn requirement_holds(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" if !values.is_empty() => value.is_some_and(|v| values.contains(v)),
        "NotIn" if !values.is_empty() => value.is_none_or(|v| !values.contains(v)),
        "Exists" if values.is_empty() => value.is_some(),
        "DoesNotExist" if values.is_empty() => value.is_none(),
        // Invalid requirement: see `matches_selector`.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn selector(pairs: &[(&str, &str)], reqs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!pairs.is_empty()).then(|| labels(pairs)),
            match_expressions: (!reqs.is_empty()).then_some(reqs),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches_selector(&LabelSelector::default(), &labels(&[])));
        assert!(matches_selector(
            &LabelSelector::default(),
            &labels(&[("a", "b")])
        ));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = selector(&[("app", "db"), ("tier", "x")], vec![]);
        assert!(matches_selector(
            &s,
            &labels(&[("app", "db"), ("tier", "x"), ("z", "1")])
        ));
        assert!(!matches_selector(&s, &labels(&[("app", "db")])));
        assert!(!matches_selector(
            &s,
            &labels(&[("app", "web"), ("tier", "x")])
        ));
    }

    #[test]
    fn expressions_follow_kubernetes_semantics() {
        let l = labels(&[("app", "db"), ("batch", "true")]);
        let cases = [
            (req("app", "In", &["db", "cache"]), true),
            (req("app", "In", &["web"]), false),
            (req("app", "NotIn", &["web"]), true),
            (req("app", "NotIn", &["db"]), false),
            (req("missing", "NotIn", &["db"]), true),
            (req("batch", "Exists", &[]), true),
            (req("missing", "Exists", &[]), false),
            (req("missing", "DoesNotExist", &[]), true),
            (req("batch", "DoesNotExist", &[]), false),
        ];
        for (r, expected) in cases {
            let s = selector(&[], vec![r.clone()]);
            assert_eq!(matches_selector(&s, &l), expected, "{r:?}");
            assert_eq!(validate_selector(&s), Ok(()));
        }
    }

    #[test]
    fn invalid_requirements_match_so_pods_are_protected() {
        for r in [
            req("app", "in", &["db"]),
            req("app", "In", &[]),
            req("app", "Exists", &["x"]),
        ] {
            let s = selector(&[], vec![r.clone()]);
            assert!(matches_selector(&s, &labels(&[])), "{r:?}");
            assert!(validate_selector(&s).is_err(), "{r:?}");
        }
        let err = validate_selector(&selector(&[], vec![req("app", "in", &["db"])])).unwrap_err();
        assert!(err.to_string().contains("unknown operator \"in\""), "{err}");
    }
}
