//! Messages a person can act on: where (file, document, resource, field) and why.
//!
//! Every rejected resource or field produces exactly one [`Diagnostic`]. Codes follow
//! `istioctl analyze` where an Istio analyzer exists for the same finding, so users can search
//! Istio's docs for them.

use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Info,
}

/// Where a resource came from: a file and the document's index inside it (0-based, as
/// `kubectl` counts `---` separated documents), or the Kubernetes API.
/// The file is shared by every document and diagnostic from it (and between the file cache and
/// the store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: Option<Arc<Path>>,
    /// 32 bits: every resource carries its origin (twice, in the file cache and the store).
    pub document: Option<u32>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.document) {
            (Some(file), Some(doc)) => write!(f, "{}#{}", file.display(), doc),
            (Some(file), None) => write!(f, "{}", file.display()),
            (None, _) => f.write_str("<api>"),
        }
    }
}

/// A resource by kind, namespace and name: what a message is about, what a rejection names,
/// what the publisher restores.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// `kind` as the input schemas name it (`VirtualService`), e.g. the controller's `schema::Kind`.
    pub fn new(kind: impl fmt::Display, namespace: &str, name: &str) -> Self {
        ObjectRef { kind: kind.to_string(), namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub level: Level,
    /// `istioctl analyze` style code, e.g. IST0101.
    pub code: &'static str,
    pub origin: Origin,
    pub resource: Option<ObjectRef>,
    /// Field path inside the resource, e.g. `spec.http[2].route[0].destination.host`.
    pub field: String,
    pub message: String,
}

/// Codes shared with istioctl analyze (same meaning) plus meshgate's own MG codes.
pub mod codes {
    /// The YAML could not be parsed or a field has the wrong shape.
    pub const SCHEMA: &str = "IST0106";
    /// A referenced resource (gateway, host, subset) does not exist.
    pub const NOT_FOUND: &str = "IST0101";
    /// A VirtualService host is not served by the Gateway it binds to.
    pub const HOST_NOT_IN_GATEWAY: &str = "IST0132";
    /// Two Gateway servers on one port disagree (protocol).
    pub const CONFLICT: &str = "IST0145";
    /// Field accepted by Istio but not implemented by meshgate yet.
    pub const UNSUPPORTED: &str = "MG0001";
    /// Route weights that do not sum to 100.
    pub const WEIGHTS: &str = "MG0002";
    /// A file or folder could not be read.
    pub const IO: &str = "MG0003";
    /// The same kind/namespace/name defined twice; the later definition wins.
    pub const DUPLICATE: &str = "MG0004";
    /// Field path to an unknown field.
    pub const UNKNOWN_FIELD: &str = "MG0005";
    /// A rejected resource or unreadable file keeps serving its last valid version.
    pub const KEPT: &str = "MG0006";
    /// Part or all of a DestinationRule is not applied because another rule for the same host
    /// takes its place when the rules are merged (a subset of a name already defined, a second
    /// top-level policy, a rule with a different `exportTo`).
    pub const MERGE: &str = "MG0007";
    /// A resource is not exported (`exportTo`) to the gateway's namespace, so it does not apply.
    pub const NOT_EXPORTED: &str = "MG0008";
    /// A certificate that is served or trusted although it is outside its validity dates.
    pub const CERTIFICATE: &str = "MG0009";
    /// A security policy (AuthorizationPolicy, RequestAuthentication) selects this gateway and
    /// meshgate cannot enforce it: requests are denied. Not a rejection: the policy is in force
    /// as "deny everything", so no earlier version of it is restored.
    pub const UNENFORCED: &str = "MG0010";
    /// A folder met again in one walk (a symlink loop, or a second path to it) is not read again.
    pub const FOLDER_SKIPPED: &str = "MG0011";
}

impl Diagnostic {
    pub fn error(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Level::Error, code, field, message)
    }

    pub fn warning(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Level::Warning, code, field, message)
    }

    fn new(level: Level, code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            level,
            code,
            origin: Origin::default(),
            resource: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn at(mut self, origin: &Origin, resource: Option<ObjectRef>) -> Self {
        self.origin = origin.clone();
        self.resource = resource;
        self
    }

    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `Error [IST0101] examples/x.yaml#2 VirtualService default/reviews: spec.http[0]...: msg`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        };
        write!(f, "{level} [{}] {}", self.code, self.origin)?;
        if let Some(r) = &self.resource {
            write!(f, " {r}")?;
        }
        f.write_str(":")?;
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

/// Collected messages of one load + translation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(other);
    }

    pub fn errors(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.items.iter().filter(|d| d.level == Level::Warning).count()
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
}
