//! Watching config files: a change anywhere under the given paths wakes the reload loop.
//!
//! Files are watched through their parent folder because editors and `kubectl`-style tools
//! replace files by rename, which a watch on the file itself would lose. Symlinks on the way
//! to a watched path are watched the same way: Kubernetes volumes (ConfigMaps, Secrets) update
//! by writing a new `..2026_...` folder and renaming a symlink over `..data`, which leaves the
//! named path (`tls.crt -> ..data/tls.crt`) and the old files untouched until later.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub struct FileWatcher {
    watcher: RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    /// What matters for each path as it was named, see [`Resolved`].
    named: HashMap<PathBuf, Resolved>,
    /// Every path of `named` whose changes matter; shared with the notify callback.
    wanted: Arc<Mutex<Vec<PathBuf>>>,
    /// Folders under a recursive watch. Re-adding one walks its whole tree, so it is added
    /// once; single-folder watches are cheap and re-added on every [`FileWatcher::watch`], which
    /// also restores them after their folder was deleted and made again.
    recursive: HashSet<PathBuf>,
}

/// A named path resolved symlink by symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    /// The symlinks met on the way, in the order met (the named path itself is one when it is
    /// a symlink); replacing any of them changes what the path reads.
    links: Vec<PathBuf>,
    /// What the path resolves to (as far as it exists).
    target: PathBuf,
}

/// The kernel's limit on symlinks in one path lookup (ELOOP).
const MAX_LINKS: usize = 40;

impl Resolved {
    /// Resolves `path` (absolute) the way `realpath` does, keeping every symlink it meets.
    fn of(path: &Path) -> Resolved {
        let mut links = Vec::new();
        let mut target = PathBuf::new();
        // The components still to resolve, the next one last.
        let mut rest: Vec<OsString> = Vec::new();
        push_components(&mut rest, path);
        while let Some(part) = rest.pop() {
            match Path::new(&part).components().next() {
                Some(Component::ParentDir) => {
                    target.pop();
                }
                Some(Component::Normal(name)) => {
                    let candidate = target.join(name);
                    // Fails for anything but a symlink.
                    match std::fs::read_link(&candidate) {
                        Ok(to) if links.len() < MAX_LINKS => {
                            links.push(candidate);
                            // An absolute target starts again from the root (`push` of a root
                            // replaces `target`); a relative one from the link's folder.
                            push_components(&mut rest, &to);
                        }
                        _ => target = candidate,
                    }
                }
                Some(Component::CurDir) | None => {}
                Some(root) => target.push(root.as_os_str()),
            }
        }
        Resolved { links, target }
    }

    /// Every path whose change matters.
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.links.iter().chain(std::iter::once(&self.target))
    }

    /// The folders to watch: each link's folder, and the target itself when it is a folder
    /// (recursively) or else its folder.
    fn folders(&self) -> Vec<(PathBuf, RecursiveMode)> {
        let mut out: Vec<_> =
            self.links.iter().filter_map(|l| parent(l)).map(|p| (p, RecursiveMode::NonRecursive)).collect();
        if self.target.is_dir() {
            out.push((self.target.clone(), RecursiveMode::Recursive));
        } else if let Some(p) = parent(&self.target) {
            out.push((p, RecursiveMode::NonRecursive));
        }
        out
    }
}

/// Pushes the components of `path` onto `stack` so that the first is popped first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let start = stack.len();
    stack.extend(path.components().map(|c| c.as_os_str().to_os_string()));
    stack[start..].reverse();
}

fn parent(path: &Path) -> Option<PathBuf> {
    path.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf)
}

impl FileWatcher {
    pub fn new(paths: &[PathBuf]) -> notify::Result<FileWatcher> {
        let (tx, rx) = mpsc::channel();
        let wanted: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let filter = wanted.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let filter = filter.lock().unwrap_or_else(|e| e.into_inner());
            let relevant = event.paths.iter().any(|p| filter.iter().any(|w| p.starts_with(w)));
            if relevant {
                let _ = tx.send(());
            }
        })?;
        let mut this = FileWatcher { watcher, rx, named: HashMap::new(), wanted, recursive: HashSet::new() };
        this.watch(paths)?;
        Ok(this)
    }

    /// Adds paths (config folders, or certificate files named by the config) to the watch,
    /// or follows them to where their symlinks point now. Every path is tried; the first
    /// error is returned.
    pub fn watch(&mut self, paths: &[PathBuf]) -> notify::Result<()> {
        let mut first_error = None;
        for path in paths {
            let named = absolute(path);
            let resolved = Resolved::of(&named);
            for (folder, mode) in resolved.folders() {
                if let Err(e) = self.watch_folder(folder, mode) {
                    first_error.get_or_insert(e);
                }
            }
            self.named.insert(named, resolved);
        }
        let wanted = self.named.values().flat_map(Resolved::paths).cloned().collect();
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = wanted;
        first_error.map_or(Ok(()), Err)
    }

    fn watch_folder(&mut self, folder: PathBuf, mode: RecursiveMode) -> notify::Result<()> {
        // Inside a recursive watch, a second watch of a subfolder would only replace its
        // recursive one (notify keeps one watch per folder).
        if self.recursive.iter().any(|r| folder.starts_with(r)) {
            return Ok(());
        }
        self.watcher.watch(&folder, mode)?;
        if mode == RecursiveMode::Recursive {
            self.recursive.insert(folder);
        }
        Ok(())
    }

    /// Blocks until something changed, then waits for `quiet` without further events so a
    /// burst of writes becomes one reload. Returns false when the watcher is gone. `idle` runs
    /// once if nothing changes for [`IDLE_AFTER`] first.
    pub fn wait(&self, quiet: Duration, idle: &mut dyn FnMut()) -> bool {
        let first = match self.rx.recv_timeout(IDLE_AFTER) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                idle();
                self.rx.recv().is_ok()
            }
            other => other.is_ok(),
        };
        if !first {
            return false;
        }
        loop {
            match self.rx.recv_timeout(quiet) {
                Ok(()) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

/// How long after a reload the config is considered settled (see `spawn_loop`'s `on_idle`).
pub const IDLE_AFTER: Duration = Duration::from_millis(500);

/// `p` from the root, symlinks kept: [`Resolved::of`] follows them one by one.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What the file source loads: the paths given with `--config` and how to read them.
#[derive(Debug, Clone, Default)]
pub struct FileSource {
    pub paths: Vec<PathBuf>,
    pub options: super::files::FileOptions,
}

impl From<Vec<PathBuf>> for FileSource {
    fn from(paths: Vec<PathBuf>) -> FileSource {
        FileSource { paths, options: Default::default() }
    }
}

/// Loads the source's paths now and again after every change (certificate files the config
/// names are watched too, so rotating them on disk acts like editing the YAML), on its own
/// thread because file reads block. `on_store` receives each fresh store. Reloads parse only
/// the files whose text changed (`source::cache`); the store is the same as a fresh load's.
/// `on_idle` runs on the same thread once the config has not changed for [`IDLE_AFTER`] after
/// a reload: housekeeping (giving memory back) that should not delay the data plane's swap.
pub fn spawn_loop(
    source: impl Into<FileSource>,
    quiet: Duration,
    mut on_store: impl FnMut(crate::store::Store) + Send + 'static,
    mut on_idle: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let FileSource { paths, options } = source.into();
    let mut watcher = match FileWatcher::new(&paths) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch config paths; changes need a restart");
            None
        }
    };
    let mut cache = super::cache::FileCache::new(options);
    std::thread::Builder::new().name("config".into()).spawn(move || loop {
        // The config paths again: a symlink among them may point elsewhere now (a Kubernetes
        // volume's `..data` swap). Before loading, so a change during the load is seen.
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(&paths) {
                tracing::warn!(error = %e, "cannot watch config paths");
            }
        }
        let started = std::time::Instant::now();
        let store = cache.load(&paths);
        tracing::debug!(
            files = cache.len(),
            parsed = cache.parsed(),
            patched = cache.patched(),
            ms = started.elapsed().as_millis() as u64,
            "config files loaded"
        );
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(&store.referenced_files()) {
                tracing::warn!(error = %e, "cannot watch certificate files");
            }
        }
        on_store(store);
        match &watcher {
            Some(w) if w.wait(quiet, &mut on_idle) => continue,
            _ => break,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Long enough for a loaded CI machine; a working watcher wakes within milliseconds.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A Kubernetes volume (ConfigMap or Secret) as the kubelet's AtomicWriter lays it out:
    /// the files in a timestamped hidden folder, `..data` pointing at it, and one symlink per
    /// file through `..data`.
    struct Volume {
        dir: PathBuf,
        generation: u32,
    }

    impl Volume {
        fn create(dir: &Path, files: &[(&str, &str)]) -> Volume {
            std::fs::create_dir_all(dir).unwrap();
            let volume = Volume { dir: dir.to_path_buf(), generation: 1 };
            let stamp = volume.write_stamp(files);
            symlink(&stamp, dir.join("..data")).unwrap();
            for (name, _) in files {
                symlink(format!("..data/{name}"), dir.join(name)).unwrap();
            }
            volume
        }

        fn stamp(&self) -> String {
            format!("..2026_01_01_00_00_00.{:09}", self.generation)
        }

        /// Writes a new timestamped folder; returns its name (relative, as the kubelet links).
        fn write_stamp(&self, files: &[(&str, &str)]) -> String {
            let stamp = self.stamp();
            std::fs::create_dir(self.dir.join(&stamp)).unwrap();
            for (name, text) in files {
                std::fs::write(self.dir.join(&stamp).join(name), text).unwrap();
            }
            stamp
        }

        /// The kubelet's update up to the swap: a new timestamped folder, then a temporary
        /// `..data_tmp` symlink renamed over `..data`. The file symlinks are not touched.
        fn swap(&mut self, files: &[(&str, &str)]) -> String {
            let old = self.stamp();
            self.generation += 1;
            let stamp = self.write_stamp(files);
            symlink(&stamp, self.dir.join("..data_tmp")).unwrap();
            std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
            old
        }

        /// The whole update: the swap, then the old folder removed.
        fn update(&mut self, files: &[(&str, &str)]) {
            let old = self.swap(files);
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }

    #[test]
    fn resolving_keeps_every_symlink_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        Volume::create(&d.join("certs"), &[("tls.crt", "one")]);
        let resolved = Resolved::of(&d.join("certs/./tls.crt"));
        assert_eq!(resolved.links, [d.join("certs/tls.crt"), d.join("certs/..data")]);
        assert_eq!(resolved.target, d.join("certs/..2026_01_01_00_00_00.000000001/tls.crt"));
        // A plain file, a missing one, and `..` after a symlink (taken from the link's target).
        std::fs::write(d.join("plain.yaml"), "").unwrap();
        assert_eq!(Resolved::of(&d.join("plain.yaml")), Resolved { links: vec![], target: d.join("plain.yaml") });
        assert_eq!(Resolved::of(&d.join("no/such")).target, d.join("no/such"));
        let up = Resolved::of(&d.join("certs/..data/../plain.yaml"));
        assert_eq!(up.target, d.join("certs/plain.yaml"));
        // A loop ends at the kernel's limit instead of spinning.
        symlink("loop", d.join("loop")).unwrap();
        assert_eq!(Resolved::of(&d.join("loop")).links.len(), MAX_LINKS);
    }

    #[test]
    fn a_kubelet_swap_wakes_the_watcher_of_a_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = Volume::create(&dir.path().join("certs"), &[("tls.crt", "one")]);
        let watcher = FileWatcher::new(&[dir.path().join("certs/tls.crt")]).unwrap();
        // Only the swap: the old folder is still there, so nothing the file resolved to
        // before has changed.
        volume.swap(&[("tls.crt", "two")]);
        assert_eq!(watcher.rx.recv_timeout(PATIENCE), Ok(()), "the swap of ..data wakes the watcher");
        assert_eq!(std::fs::read_to_string(dir.path().join("certs/tls.crt")).unwrap(), "two");
    }

    #[test]
    fn a_kubelet_swap_wakes_the_watcher_of_a_config_file_named_through_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = Volume::create(&dir.path().join("config"), &[("gw.yaml", "a: 1")]);
        let watcher = FileWatcher::new(&[dir.path().join("config/gw.yaml")]).unwrap();
        volume.swap(&[("gw.yaml", "a: 2")]);
        assert_eq!(watcher.rx.recv_timeout(PATIENCE), Ok(()));
    }

    /// Runs [`spawn_loop`] on `paths`, sending what `pick` takes from each store.
    fn stores<T: Send + 'static>(
        paths: Vec<PathBuf>,
        pick: impl Fn(&crate::store::Store) -> T + Send + 'static,
    ) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel();
        // The loop thread lives until the test process ends; its sends fail once `rx` is gone.
        spawn_loop(paths, Duration::from_millis(10), move |store| drop(tx.send(pick(&store))), || {}).unwrap();
        rx
    }

    /// Waits for a value from `rx` that is `want` (earlier ones come from earlier events).
    fn wait_for<T: PartialEq + std::fmt::Debug>(rx: &mpsc::Receiver<T>, want: T) {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut last = None;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(got) if got == want => return,
                Ok(got) => last = Some(got),
                Err(_) => break,
            }
        }
        panic!("no store with {want:?}; the last was {last:?}");
    }

    #[test]
    fn secret_volume_updates_reload_the_certificate_files_the_config_names() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let mut volume = Volume::create(&certs, &[("tls.crt", "one"), ("tls.key", "key")]);
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        let gateway = format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [\"*\"]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n",
            certs.join("tls.crt").display(),
            certs.join("tls.key").display()
        );
        std::fs::write(config.join("gw.yaml"), gateway).unwrap();
        let cert = certs.join("tls.crt");
        let rx = stores(vec![config], move |store| store.files.get(&cert).cloned().and_then(Result::ok));

        wait_for(&rx, Some("one".to_string()));
        // Two rotations: the second shows the watch follows `..data` to its new folder.
        volume.update(&[("tls.crt", "two"), ("tls.key", "key")]);
        wait_for(&rx, Some("two".to_string()));
        volume.update(&[("tls.crt", "three"), ("tls.key", "key")]);
        wait_for(&rx, Some("three".to_string()));
    }

    #[test]
    fn configmap_volume_updates_reload_the_config_folder() {
        use crate::store::Key;
        let vs = |name: &str| {
            format!("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec: {{hosts: [a.example.com]}}\n")
        };
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let mut volume = Volume::create(&config, &[("vs.yaml", &vs("one"))]);
        // Named both as the folder and as a file through the volume's symlinks.
        let paths = vec![config.clone(), config.join("vs.yaml")];
        let rx = stores(paths, |store| store.virtual_services.keys().map(|k| k.name().to_string()).collect::<Vec<_>>());

        wait_for(&rx, vec!["one".to_string()]);
        volume.update(&[("vs.yaml", &vs("two"))]);
        wait_for(&rx, vec!["two".to_string()]);
        volume.update(&[("vs.yaml", &vs("three"))]);
        wait_for(&rx, vec!["three".to_string()]);
    }
}
