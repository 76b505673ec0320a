//! A route's or a destination's `headers`, compiled once per snapshot into parsed names and
//! values, and applied to the upstream request and the downstream response as Envoy applies
//! them: `remove`, then `set`, then `add`.

use http::{HeaderMap, HeaderName, HeaderValue};
use meshgate_model::snapshot::{HeaderEdits, HeaderOps};
use pingora_error::Result;
use pingora_http::RequestHeader;

#[derive(Debug, Default)]
pub(crate) struct CompiledEdits {
    request: CompiledOps,
    response: CompiledOps,
}

#[derive(Debug, Default)]
struct CompiledOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl CompiledEdits {
    /// An error when a name or value does not parse (the controller checked them; a snapshot
    /// from elsewhere may not have).
    pub(crate) fn compile(edits: &HeaderEdits) -> Result<CompiledEdits, String> {
        Ok(CompiledEdits {
            request: CompiledOps::compile(&edits.request)?,
            response: CompiledOps::compile(&edits.response)?,
        })
    }

    /// The request edits on a header map with no case-preserving twin (see
    /// `proxy::headers`): plain map operations on names parsed at compile time.
    pub(crate) fn edit_request_map(&self, map: &mut HeaderMap) {
        self.request.edit_map(map);
    }

    /// The response edits, likewise.
    pub(crate) fn edit_response_map(&self, map: &mut HeaderMap) {
        self.response.edit_map(map);
    }

    /// Headers the request edits may add, to reserve room for.
    pub(crate) fn request_additions(&self) -> usize {
        self.request.set.len() + self.request.add.len()
    }

    /// Headers the response edits may add.
    pub(crate) fn response_additions(&self) -> usize {
        self.response.set.len() + self.response.add.len()
    }

    /// On a request that keeps its header names' case (Pingora's methods keep both maps;
    /// responses never keep it, see `proxy::headers::insert_response`).
    pub(crate) fn apply_request(&self, req: &mut RequestHeader) -> Result<()> {
        let ops = &self.request;
        for name in &ops.remove {
            req.remove_header(name);
        }
        for (name, value) in &ops.set {
            req.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &ops.add {
            req.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

impl CompiledOps {
    fn edit_map(&self, map: &mut HeaderMap) {
        for name in &self.remove {
            map.remove(name);
        }
        for (name, value) in &self.set {
            map.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            map.append(name.clone(), value.clone());
        }
    }

    fn compile(ops: &HeaderOps) -> Result<CompiledOps, String> {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header {n:?}: {e}"));
        let pairs = |pairs: &[(meshgate_model::CompactString, meshgate_model::CompactString)]| {
            pairs
                .iter()
                .map(|(n, v)| Ok((name(n)?, HeaderValue::from_str(v).map_err(|e| format!("header {n:?}: {e}"))?)))
                .collect::<Result<Vec<_>, String>>()
                .map(Vec::into_boxed_slice)
        };
        Ok(CompiledOps {
            remove: ops.remove.iter().map(|n| name(n)).collect::<Result<Vec<_>, _>>()?.into_boxed_slice(),
            set: pairs(&ops.set)?,
            add: pairs(&ops.add)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let edits = HeaderEdits {
            request: HeaderOps {
                remove: Box::new(["cookie".into()]),
                set: Box::new([("x-env".into(), "prod".into())]),
                add: Box::new([("x-env".into(), "eu".into()), ("x-new".into(), "1".into())]),
            },
            response: HeaderOps { remove: Box::new(["server".into()]), ..Default::default() },
        };
        let compiled = CompiledEdits::compile(&edits).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cookie", "a=b").unwrap();
        req.insert_header("x-env", "dev").unwrap();
        compiled.apply_request(&mut req).unwrap();
        assert!(req.headers.get("cookie").is_none());
        let env: Vec<_> = req.headers.get_all("x-env").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(env, ["prod", "eu"], "set replaced, add appended");
        assert_eq!(req.headers.get("x-new").unwrap(), "1");
        let mut resp = HeaderMap::new();
        resp.insert("server", HeaderValue::from_static("upstream"));
        compiled.edit_response_map(&mut resp);
        assert!(resp.get("server").is_none());
        // The same on a bare map.
        let mut map = HeaderMap::new();
        map.insert("cookie", HeaderValue::from_static("a=b"));
        map.insert("x-env", HeaderValue::from_static("dev"));
        compiled.edit_request_map(&mut map);
        let env: Vec<_> = map.get_all("x-env").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!((env, map.contains_key("cookie")), (vec!["prod", "eu"], false));
    }
}
