//! Envoy's response flags as meshgate sets them. The request path records a [`ResponseFlag`];
//! the sinks (access log `response_flags`, the `response_flags` label of Istio's metrics, the
//! span attribute) render [`ResponseFlag::as_str`].

/// What went wrong with a request or connection, in Envoy's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum ResponseFlag {
    /// `-`: nothing (or nothing a flag describes).
    #[default]
    None,
    /// `NR`: no listener, virtual host or route matched (also 421 for another server's host).
    NoRoute,
    /// `NC`: the route's destination names no cluster Envoy would have built.
    NoClusterFound,
    /// `UH`: the cluster has no healthy endpoint.
    NoHealthyUpstream,
    /// `UF`: connecting upstream failed (or its TLS settings could not be built).
    UpstreamConnectionFailure,
    /// `UT`: the upstream did not answer within the route timeout.
    UpstreamRequestTimeout,
    /// `UC`: the upstream connection ended before a response.
    UpstreamConnectionTermination,
    /// `DC`: the downstream connection ended.
    DownstreamConnectionTermination,
    /// Envoy's `DPE`: the request was malformed (no Host, a bad target, a head too large).
    DownstreamProtocolError,
    /// `RBAC`: denied because a security policy meshgate cannot enforce selects the gateway
    /// (meshgate's own flag; Envoy's RBAC filter sets none).
    UnenforcedPolicy,
}

impl ResponseFlag {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::UnenforcedPolicy => "RBAC",
        }
    }
}

impl std::fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
