//! Watching config files: a change anywhere under the given paths wakes the reload loop.
//!
//! Files are watched through their parent folder because editors and `kubectl`-style tools
//! replace files by rename, which a watch on the file itself would lose.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub struct FileWatcher {
    watcher: RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    /// Paths whose changes matter; shared with the notify callback.
    wanted: Arc<Mutex<Vec<PathBuf>>>,
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
        let mut this = FileWatcher { watcher, rx, wanted };
        this.watch(paths)?;
        Ok(this)
    }

    /// Adds paths (config folders, or certificate files named by the config) to the watch.
    pub fn watch(&mut self, paths: &[PathBuf]) -> notify::Result<()> {
        for path in paths.iter().map(|p| absolute(p)) {
            if self.wanted.lock().unwrap_or_else(|e| e.into_inner()).contains(&path) {
                continue;
            }
            if path.is_dir() {
                self.watcher.watch(&path, RecursiveMode::Recursive)?;
            } else {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                self.watcher.watch(parent, RecursiveMode::NonRecursive)?;
            }
            self.wanted.lock().unwrap_or_else(|e| e.into_inner()).push(path);
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

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()))
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
