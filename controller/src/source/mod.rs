//! Where resources come from: YAML files and folders (loaded and watched), and with the `kube`
//! feature the Kubernetes API (`source::kube`); both fill the same [`crate::store::Store`].

pub mod cache;
pub mod decode;
pub mod files;
#[cfg(feature = "kube")]
pub mod kube;
pub mod run;
pub mod watch;
