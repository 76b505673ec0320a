//! Where resources come from: YAML files and folders (loaded and watched). The Kubernetes API
//! source fills the same [`crate::store::Store`].

pub mod decode;
pub mod files;
pub mod watch;
