//! One YAML/JSON document → typed object, with field paths for every problem.

use crate::diagnostics::{codes, Diagnostic, ObjectRef, Origin};
use crate::schema::ObjectMeta;
use crate::store::{namespace_of, Kind, Object, Store, StoreBuilder};
use serde::de::DeserializeOwned;
use serde_norway::{Mapping, Value};
use std::sync::Arc;

/// Where decoded documents go: straight into a [`Store`] (or a [`StoreBuilder`]), or
/// recorded so that an unchanged file can be replayed into the next store without parsing it
/// again (`source::cache`, whose replay feeds the same trait).
pub trait Sink {
    fn diagnostic(&mut self, diagnostic: Diagnostic);
    fn object(&mut self, meta: Arc<ObjectMeta>, origin: Origin, object: Object);
}

impl Sink for Store {
    fn diagnostic(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn object(&mut self, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        self.insert(meta, origin, object);
    }
}

impl Sink for StoreBuilder {
    fn diagnostic(&mut self, diagnostic: Diagnostic) {
        self.push_diagnostic(diagnostic);
    }

    fn object(&mut self, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        self.insert(meta, origin, object);
    }
}

/// Adds one parsed document to the store. `kubectl apply` style: `kind: List` holds `items`.
pub fn add_document(store: &mut impl Sink, value: Value, origin: &Origin) {
    add_value(store, value, origin, "");
}

fn add_value(store: &mut impl Sink, value: Value, origin: &Origin, prefix: &str) {
    if value.is_null() {
        return; // empty document between `---` separators
    }
    // Owned, and taken apart rather than cloned: the spec (or, for Kubernetes kinds, the whole
    // object) moves into typed decoding. Copying them first was a deep copy of every document.
    let Value::Mapping(mut map) = value else {
        store.diagnostic(Diagnostic::error(codes::SCHEMA, prefix, "document is not a YAML mapping").at(origin, None));
        return;
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let api_version = text("apiVersion");
    let kind_name = text("kind");

    if kind_name == "List" || kind_name.ends_with("List") && map.contains_key("items") {
        let items = match map.remove("items") {
            Some(Value::Sequence(items)) => items,
            _ => Vec::new(),
        };
        for (i, item) in items.into_iter().enumerate() {
            add_value(store, item, origin, &format!("{prefix}items[{i}]."));
        }
        return;
    }

    let meta: ObjectMeta = match map.get("metadata") {
        Some(m) => match serde_norway::from_value(m.clone()) {
            Ok(meta) => meta,
            Err(e) => {
                store.diagnostic(
                    Diagnostic::error(codes::SCHEMA, format!("{prefix}metadata"), e.to_string()).at(origin, None),
                );
                return;
            }
        },
        None => ObjectMeta::default(),
    };

    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        tracing::debug!(%origin, api_version, kind = kind_name, name = meta.name.as_str(), "skipping kind meshgate does not use");
        return;
    };
    let reference = ObjectRef::new(kind, namespace_of(&meta), &meta.name);
    if meta.name.is_empty() {
        store.diagnostic(
            Diagnostic::error(codes::SCHEMA, format!("{prefix}metadata.name"), "name is required")
                .at(origin, Some(reference)),
        );
        return;
    }

    let mut problems = Vec::new();
    let object = kind.ops().decode(map, prefix, &mut problems);
    for p in problems {
        store.diagnostic(p.at(origin, Some(reference.clone())));
    }
    if let Some(object) = object {
        store.object(Arc::new(meta), origin.clone(), object);
    }
}

/// Problems found while decoding one object, with field paths; the caller adds where.
pub(crate) type Problems = Vec<Diagnostic>;

/// Decodes `spec` of an Istio resource. Unknown fields are warnings (Istio's CRD schema would
/// prune them, so the resource still applies); wrong shapes reject the resource.
pub(crate) fn spec<T: DeserializeOwned>(mut map: Mapping, prefix: &str, problems: &mut Problems) -> Option<T> {
    let value = map.remove("spec").unwrap_or(Value::Mapping(Default::default()));
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path| unknown.push(field_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    for path in unknown {
        problems.push(Diagnostic::warning(
            codes::UNKNOWN_FIELD,
            format!("{prefix}spec.{path}"),
            "unknown field, ignored",
        ));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { format!("{prefix}spec") } else { format!("{prefix}spec.{path}") };
            problems.push(Diagnostic::error(codes::SCHEMA, field, e.into_inner().to_string()));
            None
        }
    }
}

/// An ignored field's path in the form errors use (`http[0].match[1].port`, as
/// `serde_path_to_error` writes it), not serde_ignored's own (`http.0.match.1.port`).
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Decodes a whole Kubernetes object with k8s-openapi types.
pub(crate) fn whole<T: DeserializeOwned>(map: Mapping, prefix: &str, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize(Value::Mapping(map)) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { prefix.trim_end_matches('.').to_string() } else { format!("{prefix}{path}") };
            problems.push(Diagnostic::error(codes::SCHEMA, field, e.into_inner().to_string()));
            None
        }
    }
}
