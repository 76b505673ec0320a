//! One JSON line per request, written by a dedicated thread so the request path never blocks
//! on stdout or disk. Lines are batched per worker thread (`writer.rs`); when the writer
//! falls behind, lines are dropped and counted.

pub(crate) mod line;
mod writer;

pub(crate) use line::{Entry, Prepared, RequestId, RouteName, UpstreamCluster, UpstreamHost};
pub(crate) use writer::AccessLog;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" | "" => Target::Off,
            "stdout" | "-" => Target::Stdout,
            path => Target::File(path.into()),
        })
    }
}
