//! An in-memory Kubernetes API server behind `tower_test::mock`: enough of the REST
//! semantics (get, list with label selectors, server-side apply, merge and JSON patches,
//! status, create, delete, eviction) for the reconcile to run against scripted state.
//! Every request is recorded so tests can count writes.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// (api prefix, plural, namespace or "", name)
type Key = (String, String, String, String);

#[derive(Debug, Default)]
pub struct State {
    objects: BTreeMap<Key, Value>,
    pub requests: Vec<(Method, String)>,
    next_version: u64,
    /// Pods (namespace/name) whose eviction a PodDisruptionBudget refuses.
    pub pdb_protected: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
}

struct Target {
    prefix: String,
    plural: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Target {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = if segments[0] == "api" {
        (segments[..2].join("/"), &segments[2..])
    } else {
        (segments[..3].join("/"), &segments[3..])
    };
    let (namespace, rest) = if rest.len() >= 3 && rest[0] == "namespaces" {
        (rest[1].to_owned(), &rest[2..])
    } else {
        (String::new(), rest)
    };
    Target {
        prefix,
        plural: rest[0].to_owned(),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    }
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn labels_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap();
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn fields_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            field(object, k) != Some(v)
        } else {
            let (k, v) = term.split_once('=').unwrap();
            field(object, k) == Some(v)
        }
    })
}

fn field<'a>(object: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.').try_fold(object, |o, k| o.get(k))?.as_str()
}

fn status(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

impl FakeApi {
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap();
                let content_type = parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let (code, value) = this.handle(&parts.method, &parts.uri, &content_type, &body);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&value).unwrap()))
                        .unwrap(),
                );
            }
        });
        kube::Client::new(service, "default")
    }

    /// Puts an object as a user (or kubelet) would; `path` is its collection.
    pub fn put(&self, collection: &str, object: Value) {
        let t = parse(collection);
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&t.namespace)
            .to_owned();
        let mut state = self.state.lock().unwrap();
        state.store((t.prefix, t.plural, namespace, name), object, None);
    }

    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let t = parse(collection);
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(&(t.prefix, t.plural, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        let t = parse(collection);
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((p, r, _, _), _)| *p == t.prefix && *r == t.plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn remove(&self, collection: &str, namespace: &str, name: &str) {
        let t = parse(collection);
        self.state.lock().unwrap().objects.remove(&(
            t.prefix,
            t.plural,
            namespace.to_owned(),
            name.to_owned(),
        ));
    }

    /// Write requests since the last call.
    pub fn take_writes(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap();
        let writes = state
            .requests
            .iter()
            .filter(|(m, _)| *m != Method::GET)
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        state.requests.clear();
        writes
    }

    fn handle(
        &self,
        method: &Method,
        uri: &http::Uri,
        content_type: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let mut state = self.state.lock().unwrap();
        state.requests.push((method.clone(), uri.path().to_owned()));
        let t = parse(uri.path());
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap()
        };
        let Some(name) = t.name.clone() else {
            return match *method {
                Method::GET => {
                    let labels = query(uri, "labelSelector").unwrap_or_default();
                    let fields = query(uri, "fieldSelector").unwrap_or_default();
                    let items: Vec<Value> = state
                        .objects
                        .iter()
                        .filter(|((p, r, ns, _), _)| {
                            *p == t.prefix
                                && *r == t.plural
                                && (t.namespace.is_empty() || *ns == t.namespace)
                        })
                        .map(|(_, v)| v.clone())
                        .filter(|v| labels_match(v, &labels) && fields_match(v, &fields))
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                Method::POST => {
                    let name = body["metadata"]["name"]
                        .as_str()
                        .unwrap_or("generated")
                        .to_owned();
                    let key = (t.prefix, t.plural, t.namespace, name);
                    let stored = state.store(key, body, None);
                    (StatusCode::CREATED, stored)
                }
                _ => status(405, "MethodNotAllowed", "unsupported"),
            };
        };
        let key = (
            t.prefix.clone(),
            t.plural.clone(),
            t.namespace.clone(),
            name.clone(),
        );
        let current = state.objects.get(&key).cloned();
        match (method.clone(), t.subresource.as_deref(), current) {
            (Method::GET, _, Some(o)) => (StatusCode::OK, o),
            (Method::GET, _, None) | (Method::DELETE, _, None) => {
                status(404, "NotFound", &format!("{} {name} not found", t.plural))
            }
            (Method::DELETE, _, Some(o)) => {
                state.objects.remove(&key);
                (StatusCode::OK, o)
            }
            (Method::POST, Some("eviction"), Some(_)) => {
                let id = format!("{}/{name}", t.namespace);
                if state.pdb_protected.contains(&id) {
                    return status(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                }
                state.objects.remove(&key);
                (
                    StatusCode::CREATED,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
                )
            }
            (Method::POST, Some("eviction"), None) => status(404, "NotFound", "pod not found"),
            (Method::PATCH, sub, current) => {
                let mut object = match (&current, content_type) {
                    (None, c) if !c.starts_with("application/apply-patch") => {
                        return status(404, "NotFound", &format!("{} {name} not found", t.plural));
                    }
                    (None, _) => json!({"metadata": {"name": name}}),
                    (Some(o), _) => o.clone(),
                };
                if let (Some(cur), Some(rv)) =
                    (&current, body["metadata"]["resourceVersion"].as_str())
                    && cur["metadata"]["resourceVersion"].as_str() != Some(rv)
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                if sub == Some("status") {
                    object["status"] = body["status"].clone();
                } else if content_type.starts_with("application/json-patch") {
                    // As the API server: testing a missing path for null succeeds.
                    let mut ops = body.as_array().cloned().unwrap_or_default();
                    for op in ops
                        .iter()
                        .filter(|op| op["op"] == "test" && op["value"].is_null())
                    {
                        if object
                            .pointer(op["path"].as_str().unwrap())
                            .is_some_and(|v| !v.is_null())
                        {
                            return status(422, "Invalid", "json patch test failed");
                        }
                    }
                    ops.retain(|op| !(op["op"] == "test" && op["value"].is_null()));
                    let patch: json_patch::Patch =
                        serde_json::from_value(Value::Array(ops)).unwrap();
                    if json_patch::patch(&mut object, &patch).is_err() {
                        return status(422, "Invalid", "json patch test failed");
                    }
                } else if content_type.starts_with("application/apply-patch") {
                    // One field manager: the applied object is the whole desired state.
                    let kept_status = object.get("status").cloned();
                    object = body;
                    if let Some(s) = kept_status {
                        object["status"] = s;
                    }
                } else {
                    json_patch::merge(&mut object, &body);
                }
                let stored = state.store(key, object, current.as_ref());
                (StatusCode::OK, stored)
            }
            _ => status(405, "MethodNotAllowed", "unsupported"),
        }
    }
}

impl State {
    fn store(&mut self, key: Key, mut object: Value, previous: Option<&Value>) -> Value {
        self.next_version += 1;
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.3);
        if !key.2.is_empty() {
            meta["namespace"] = json!(key.2);
        }
        meta["resourceVersion"] = json!(self.next_version.to_string());
        if meta.get("uid").is_none_or(Value::is_null) {
            meta["uid"] = previous
                .and_then(|p| p["metadata"].get("uid").cloned())
                .unwrap_or_else(|| json!(format!("uid-{}", self.next_version)));
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = previous
                .and_then(|p| p["metadata"].get("creationTimestamp").cloned())
                .unwrap_or_else(|| json!("2026-11-21T00:00:00Z"));
        }
        if let Some(g) = previous.and_then(|p| p["metadata"].get("generation").cloned()) {
            meta["generation"] = g;
        }
        self.objects.insert(key, object.clone());
        object
    }
}
