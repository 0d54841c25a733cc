//! Does a live object already carry everything we would apply? (pure)
//!
//! Server-side apply is a write even when nothing changes. Comparing first lets a
//! steady-state reconcile make no write request at all. The API server adds defaults
//! (`terminationMessagePath`, `revisionHistoryLimit`, ...), so equality is too strict:
//! `desired` must be a subset of `live`.

use serde_json::Value;

/// True when every field set in `desired` has the same value in `live`. Objects may
/// have extra fields in `live`; arrays must have the same length and match
/// element-wise (containers, volumes and rules are ordered lists in our objects).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| l.get(k).map_or(is_empty(dv), |lv| is_subset(dv, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
}

/// The API server drops nulls, empty maps and lists, and (Go's `omitempty`) false,
/// zero and "".
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_a_difference() {
        let desired = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        let live = json!({"metadata": {"uid": "u"}, "spec": {"revisionHistoryLimit": 10, "template": {"spec": {"containers": [{"name": "a", "image": "x:1", "terminationMessagePath": "/dev/termination-log"}]}}}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn changed_or_missing_values_are() {
        let live = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "n": 1}});
        assert!(!is_subset(
            &json!({"spec": {"containers": [{"name": "a", "image": "x:2"}]}}),
            &live
        ));
        assert!(!is_subset(
            &json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            &live
        ));
        assert!(!is_subset(&json!({"spec": {"hostNetwork": true}}), &live));
        assert!(is_subset(
            &json!({"spec": {"n": 1.0, "tolerations": [], "x": null, "b": false}}),
            &live
        ));
    }
}
