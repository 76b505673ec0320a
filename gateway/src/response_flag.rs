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
    /// `FI`: aborted by the route's `fault`.
    FaultInjected,
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
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::UnenforcedPolicy => "RBAC",
        }
    }

    /// Position in Envoy's flag list (`ResponseFlagUtils`), which orders combined flags.
    const fn envoy_order(self) -> u8 {
        match self {
            ResponseFlag::None => 0,
            ResponseFlag::NoHealthyUpstream => 1,
            ResponseFlag::UpstreamRequestTimeout => 2,
            ResponseFlag::UpstreamConnectionFailure => 5,
            ResponseFlag::UpstreamConnectionTermination => 6,
            ResponseFlag::NoRoute => 8,
            ResponseFlag::FaultInjected => 10,
            ResponseFlag::DownstreamConnectionTermination => 14,
            ResponseFlag::DownstreamProtocolError => 18,
            ResponseFlag::NoClusterFound => 25,
            ResponseFlag::UnenforcedPolicy => 40,
        }
    }

    const ALL: [ResponseFlag; 11] = [
        ResponseFlag::None,
        ResponseFlag::NoRoute,
        ResponseFlag::NoClusterFound,
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::DownstreamConnectionTermination,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::FaultInjected,
        ResponseFlag::UnenforcedPolicy,
    ];
}

/// A request's flags as the sinks render them: its outcome ([`ResponseFlag`]) with the two
/// flags that can come on top of one, `DI` (the route's `fault` delayed it) and `URX` (its
/// retries ran out), joined in Envoy's order (`UF,URX`, `DI,FI`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Flags {
    pub(crate) outcome: ResponseFlag,
    pub(crate) delay_injected: bool,
    pub(crate) retry_limit_exceeded: bool,
}

impl From<ResponseFlag> for Flags {
    fn from(outcome: ResponseFlag) -> Flags {
        Flags { outcome, delay_injected: false, retry_limit_exceeded: false }
    }
}

impl Flags {
    /// The rendered flags; every combination is joined once, at first use, so the request
    /// path gets a `&'static str` (metric label keys and span attributes hold it).
    pub(crate) fn as_str(self) -> &'static str {
        if !self.delay_injected && !self.retry_limit_exceeded {
            return self.outcome.as_str();
        }
        static JOINED: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
            let mut table = Vec::with_capacity(ResponseFlag::ALL.len() * 4);
            for outcome in ResponseFlag::ALL {
                for extra in 0..4u8 {
                    let mut parts = vec![(outcome.envoy_order(), outcome.as_str())];
                    parts.retain(|(_, s)| *s != "-");
                    if extra & 1 != 0 {
                        parts.push((9, "DI"));
                    }
                    if extra & 2 != 0 {
                        parts.push((15, "URX"));
                    }
                    parts.sort();
                    let text = parts.iter().map(|(_, s)| *s).collect::<Vec<_>>().join(",");
                    table.push(&*Box::leak(if text.is_empty() { "-".into() } else { text }.into_boxed_str()));
                }
            }
            table
        });
        let outcome = ResponseFlag::ALL.iter().position(|f| *f == self.outcome).unwrap_or(0);
        JOINED[outcome * 4 + usize::from(self.delay_injected) + 2 * usize::from(self.retry_limit_exceeded)]
    }
}

impl std::fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_flags_in_envoys_order() {
        let f = |outcome, delay_injected, retry_limit_exceeded| {
            Flags { outcome, delay_injected, retry_limit_exceeded }.as_str()
        };
        assert_eq!(f(ResponseFlag::None, false, false), "-");
        assert_eq!(f(ResponseFlag::UpstreamConnectionFailure, false, true), "UF,URX");
        assert_eq!(f(ResponseFlag::UpstreamRequestTimeout, true, true), "UT,DI,URX");
        assert_eq!(f(ResponseFlag::FaultInjected, true, false), "DI,FI");
        assert_eq!(f(ResponseFlag::None, true, false), "DI");
        assert_eq!(f(ResponseFlag::None, false, true), "URX");
        assert_eq!(f(ResponseFlag::DownstreamProtocolError, false, false), "DPE");
    }
}
