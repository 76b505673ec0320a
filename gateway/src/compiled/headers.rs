//! A route's or a destination's `headers`, compiled once per snapshot into parsed names and
//! values, and applied to the upstream request and the downstream response as Envoy applies
//! them: `remove`, then `set`, then `add`.

use http::{HeaderName, HeaderValue};
use meshgate_model::snapshot::{HeaderEdits, HeaderOps};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

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
    /// `None` when a name or value does not parse (the controller checked them; a snapshot
    /// from elsewhere may not have).
    pub(crate) fn compile(edits: &HeaderEdits) -> Result<CompiledEdits, String> {
        Ok(CompiledEdits {
            request: CompiledOps::compile(&edits.request)?,
            response: CompiledOps::compile(&edits.response)?,
        })
    }

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

    pub(crate) fn apply_response(&self, resp: &mut ResponseHeader) -> Result<()> {
        let ops = &self.response;
        for name in &ops.remove {
            resp.remove_header(name);
        }
        for (name, value) in &ops.set {
            resp.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &ops.add {
            resp.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

impl CompiledOps {
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
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "upstream").unwrap();
        compiled.apply_response(&mut resp).unwrap();
        assert!(resp.headers.get("server").is_none());
    }
}
