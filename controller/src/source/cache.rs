//! Incremental reloads of a config folder: each file's decoded documents are kept with a
//! hash of its text, so a reload after one edit parses only that file. YAML parsing and typed
//! decoding are most of a reload at 10k services (about a second). Unchanged files are not
//! even read when their size, inode and times are those of an earlier read that happened well
//! after their last change (`Stamp`); the others are read and hashed.
//!
//! A reload then patches the previous store when the same files are listed and each changed
//! file still defines the same objects at the same places: only the changed objects get new
//! specs, and kinds with no changes keep their maps (shared, see [`crate::store::Objects`]).
//! Any other change (a file added or removed, an object renamed, added or moved) rebuilds the
//! store by replaying each file's recorded inserts and diagnostics in load order, exactly as
//! [`files::load`] would have produced them: sequence numbers (the file-mode "creation
//! order"), "defined again" warnings for duplicates across files, and diagnostic order all
//! come out the same. Tests compare both paths with fresh loads.

use crate::diagnostics::{codes, Diagnostic, Origin};
use crate::schema::{Kind, ObjectMeta};
use crate::source::decode::Sink;
use crate::source::files;
use crate::store::{namespace_of, Object, Store, StoreBuilder};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What decoding one file (or one API object, `source::kube`) produced, in order. Diagnostics
/// are boxed: they are rare and three times the size of an object entry, which every entry
/// would otherwise take. An object keeps only its document's number: the file is the cache
/// entry's (none for API objects), and its kind is the object's (32 bytes, not 56, per object).
#[derive(Debug, Clone)]
pub(crate) enum Decoded {
    Diagnostic(Box<Diagnostic>),
    Object { meta: Arc<ObjectMeta>, document: Option<u32>, object: Object },
}

impl Sink for Vec<Decoded> {
    fn diagnostic(&mut self, diagnostic: Diagnostic) {
        self.push(Decoded::Diagnostic(Box::new(diagnostic)));
    }

    fn object(&mut self, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        self.push(Decoded::Object { meta, document: origin.document, object });
    }
}

struct Entry {
    hash: u64,
    /// Kept for as long as the file is unchanged: no room for a sixth document.
    decoded: Box<[Decoded]>,
    /// The file's metadata when its text was last read, if it can vouch for the text (see
    /// [`Stamp::trusted`]); an unchanged trusted stamp skips reading the file.
    stamp: Option<Stamp>,
    /// The last load that listed the file.
    generation: u64,
}

impl Entry {
    fn decode(text: &str, file: &Arc<Path>) -> Entry {
        let mut decoded = Vec::new();
        files::load_shared(&mut decoded, text, Some(file.clone()));
        Entry { hash: hash(text), decoded: crate::memory::boxed(decoded), stamp: None, generation: 0 }
    }

    /// Takes over `old`'s shared metadata and specs for the objects an edit left as they
    /// were. A file usually holds several objects (a Service, its Pods, its rules) and an edit
    /// changes one; the others stay the same objects, which lets translation reuse its
    /// results (`translate::Reuse` compares by identity).
    fn adopt(&mut self, old: &Entry) {
        // (kind, namespace, name) -> the old shared metadata and object.
        type Id<'a> = (Kind, Option<&'a str>, &'a str);
        let previous: HashMap<Id, (&Arc<ObjectMeta>, &Object)> = old
            .decoded
            .iter()
            .filter_map(|d| match d {
                Decoded::Object { meta, object, .. } => {
                    Some(((object.kind(), meta.namespace.as_deref(), meta.name.as_str()), (meta, object)))
                }
                Decoded::Diagnostic(_) => None,
            })
            .collect();
        for item in &mut self.decoded {
            let Decoded::Object { meta, object, .. } = item else { continue };
            let Some((old_meta, old_object)) =
                previous.get(&(object.kind(), meta.namespace.as_deref(), meta.name.as_str())).copied()
            else {
                continue;
            };
            if **old_meta == **meta {
                *meta = Arc::clone(old_meta);
            }
            if old_object.same_content(object) {
                *object = (*old_object).clone();
            }
        }
    }

    /// Whether `other` decodes to the same objects (kind, namespace, name) at the same places
    /// in the file, with the same diagnostics between them, whatever their specs.
    fn same_shape(&self, other: &Entry) -> bool {
        self.decoded.len() == other.decoded.len()
            && self.decoded.iter().zip(&other.decoded).all(|pair| match pair {
                (Decoded::Diagnostic(a), Decoded::Diagnostic(b)) => a == b,
                (
                    Decoded::Object { meta: ma, document: da, object: oa },
                    Decoded::Object { meta: mb, document: db, object: ob },
                ) => oa.kind() == ob.kind() && da == db && ma.name == mb.name && namespace_of(ma) == namespace_of(mb),
                _ => false,
            })
    }

    /// Puts this file's objects into a store built from an earlier version of the file of
    /// the same shape ([`Entry::same_shape`]).
    fn patch(&self, file: &Arc<Path>, store: &mut Store) {
        for item in &self.decoded {
            if let Decoded::Object { meta, document, object } = item {
                let origin = Origin { file: Some(file.clone()), document: *document };
                store.update_in_place(meta, &origin, object);
            }
        }
    }
}

/// Puts recorded decoding results of `file` (none for API objects) into `store` as decoding
/// them would have: the same inserts (sharing the decoded metadata and specs) and diagnostics,
/// in the same order.
pub(crate) fn replay(decoded: &[Decoded], file: Option<&Arc<Path>>, store: &mut impl Sink) {
    for item in decoded {
        match item {
            Decoded::Diagnostic(d) => store.diagnostic((**d).clone()),
            Decoded::Object { meta, document, object } => {
                let origin = Origin { file: file.cloned(), document: *document };
                store.object(meta.clone(), origin, object.clone())
            }
        }
    }
}

fn hash(text: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(text.as_bytes(), 0)
}

/// Size, inode, modification and change times (nanoseconds since the epoch) of a file.
/// Reading and hashing 10k files is a third of a reload; a `stat` is a third of that again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    modified: i64,
    changed: i64,
}

/// Nanoseconds since the epoch (saturating: past the year 2262 every time is the same, and
/// the stamp then never vouches for a file's text, see [`Stamp::trusted`]).
fn nanos(secs: i64, nanos: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            inode: meta.ino(),
            modified: nanos(meta.mtime(), meta.mtime_nsec()),
            changed: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let since_epoch = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| nanos(d.as_secs() as i64, i64::from(d.subsec_nanos())))
        };
        Stamp {
            len: meta.len(),
            inode: 0,
            modified: since_epoch(meta.modified()),
            changed: since_epoch(meta.modified()),
        }
    }

    /// Whether a later write is sure to change the stamp. File timestamps come from a coarse
    /// clock (milliseconds, whole seconds on some file systems), so two writes of the same
    /// length close together can leave equal stamps; like git's "racily clean" rule, a stamp
    /// only vouches for text read well after its last change, `started` being when that read
    /// began.
    fn trusted(&self, started: std::time::SystemTime, margin: std::time::Duration) -> bool {
        if self.changed.max(self.modified) == i64::MAX {
            return false;
        }
        let time = |nanos: i64| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos.max(0) as u64);
        time(self.changed).max(time(self.modified)) + margin < started
    }
}

/// Decoded files by path, from the previous load.
pub struct FileCache {
    /// The key is the path every origin of the file's objects shares (and the last load's
    /// file list): one allocation per file instead of three.
    entries: foldhash::HashMap<Arc<Path>, Entry>,
    /// Counts loads; entries not seen by the current load are dropped at its end.
    generation: u64,
    /// What the last load listed and built, for the next load to patch.
    last: Option<Last>,
    /// Files parsed by the last [`FileCache::load`] (the rest came from the cache), for logs.
    parsed: usize,
    /// Files the last load read (the rest were vouched for by their stamps).
    read: usize,
    /// Whether the last load patched its predecessor's store instead of rebuilding it.
    patched: bool,
    /// How long after its last change a file's stamp vouches for its text (see
    /// [`Stamp::trusted`]); tests shorten it.
    margin: std::time::Duration,
    options: files::FileOptions,
    /// Skipped folders (symlink loops) already logged, so a loop is logged once while it
    /// lasts rather than on every reload.
    logged_skips: std::collections::HashSet<Arc<Path>>,
}

/// The file list, listing problems and store of a load.
struct Last {
    /// A boxed slice: collected from the load's file list in place, a vector kept that list's
    /// allocation (200-byte entries with their metadata, 3 MB at 10k files) for 16-byte paths.
    files: Box<[Arc<Path>]>,
    problems: Vec<Diagnostic>,
    store: Store,
}

impl Default for FileCache {
    fn default() -> FileCache {
        FileCache {
            entries: foldhash::HashMap::default(),
            generation: 0,
            last: None,
            parsed: 0,
            read: 0,
            patched: false,
            margin: std::time::Duration::from_secs(2),
            options: files::FileOptions::default(),
            logged_skips: std::collections::HashSet::new(),
        }
    }
}

impl FileCache {
    pub fn new(options: files::FileOptions) -> FileCache {
        FileCache { options, ..FileCache::default() }
    }

    /// Loads `paths` like [`files::load`], parsing only files whose text changed since the
    /// previous call. Files that disappeared are forgotten.
    ///
    /// When the same files are listed and every changed file still defines the same objects
    /// at the same places (an edit to a spec, the usual case), the previous store is patched:
    /// load order, sequence numbers and diagnostics cannot have moved. Otherwise the store is
    /// rebuilt by replaying every file's entry.
    pub fn load(&mut self, paths: &[PathBuf]) -> Store {
        let (found, problems) = files::expand(paths);
        self.log_new_skips(&problems);
        self.generation += 1;
        let generation = self.generation;
        self.parsed = 0;
        self.read = 0;
        let started = std::time::SystemTime::now();
        // Files whose text changed, with the entry they had (none for a new file).
        let mut edited: Vec<(&Path, Option<Entry>)> = Vec::new();
        // Files that could not be read, by their place in `found`.
        let mut unreadable: HashMap<usize, Diagnostic> = HashMap::new();
        for (index, files::Found { path: file, metadata }) in found.iter().enumerate() {
            let stamp = metadata.as_ref().map(Stamp::of);
            if let Some(entry) = self.entries.get_mut(file.as_path()) {
                // A file named twice (a folder and a file inside it) is loaded twice, as a
                // fresh load does; the second time its entry is already this load's.
                // Otherwise, unchanged since a read that its stamp vouches for: not read.
                if entry.generation == generation || (stamp.is_some() && entry.stamp == stamp) {
                    entry.generation = generation;
                    continue;
                }
            }
            self.read += 1;
            let text = match files::read_limited(file, metadata.as_ref(), self.options.max_file_bytes) {
                Ok(text) => text,
                Err(e) => {
                    unreadable.insert(index, e.diagnostic(file));
                    continue;
                }
            };
            let text_hash = hash(&text);
            // The stamp taken before reading: a write during the read changes it again.
            let stamp = stamp.filter(|s| s.trusted(started, self.margin));
            let shared = self
                .entries
                .get_key_value(file.as_path())
                .map_or_else(|| Arc::from(file.as_path()), |(k, _)| k.clone());
            match self.entries.get_mut(file.as_path()) {
                Some(entry) if entry.hash == text_hash => {
                    entry.stamp = stamp;
                    entry.generation = generation;
                }
                slot => {
                    self.parsed += 1;
                    let mut entry = Entry::decode(&text, &shared);
                    entry.stamp = stamp;
                    entry.generation = generation;
                    let old = match slot {
                        Some(old) => {
                            entry.adopt(old);
                            Some(std::mem::replace(old, entry))
                        }
                        None => {
                            self.entries.insert(shared, entry);
                            None
                        }
                    };
                    edited.push((file, old));
                }
            }
        }
        // Files that disappeared, or can no longer be read.
        self.entries.retain(|_, e| e.generation == generation);

        let last = self.last.take().filter(|last| {
            unreadable.is_empty()
                && last.files.len() == found.len()
                && last.files.iter().zip(&found).all(|(a, b)| **a == *b.path)
                && last.problems == problems
                && edited.iter().all(|(file, old)| old.as_ref().is_some_and(|old| old.same_shape(&self.entries[*file])))
        });
        self.patched = last.is_some();
        // The patched path lists the same files as the last load: its list is kept as it is.
        let mut kept_files = None;
        let mut store = match last {
            Some(last) => {
                kept_files = Some(last.files);
                let mut store = last.store;
                for (file, _) in &edited {
                    let (shared, entry) = self.entries.get_key_value(*file).expect("edited files have entries");
                    entry.patch(shared, &mut store);
                }
                store.files.clear();
                store
            }
            None => {
                let mut builder = StoreBuilder::default();
                for problem in &problems {
                    builder.push_diagnostic(problem.clone());
                }
                for (index, file) in found.iter().enumerate() {
                    match unreadable.remove(&index) {
                        Some(problem) => builder.push_diagnostic(problem),
                        None => {
                            let (shared, entry) =
                                self.entries.get_key_value(file.path.as_path()).expect("listed files have entries");
                            replay(&entry.decoded, Some(shared), &mut builder);
                        }
                    }
                }
                builder.build()
            }
        };
        drop(edited);
        files::read_referenced_files(&mut store, &self.options);
        // Cheap: the store's maps are shared, not copied.
        let files = kept_files.unwrap_or_else(|| {
            found
                .into_iter()
                .map(|f| match self.entries.get_key_value(f.path.as_path()) {
                    Some((shared, _)) => shared.clone(),
                    None => f.path.into(),
                })
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        self.last = Some(Last { files, problems, store: store.clone() });
        store
    }

    /// Logs each folder the listing skipped the first time it is skipped; the diagnostic
    /// itself is in every load's store.
    fn log_new_skips(&mut self, problems: &[Diagnostic]) {
        let skipped: Vec<&Diagnostic> = problems.iter().filter(|d| d.code == codes::FOLDER_SKIPPED).collect();
        self.logged_skips.retain(|path| skipped.iter().any(|d| d.origin.file.as_ref() == Some(path)));
        for d in skipped {
            let Some(path) = &d.origin.file else { continue };
            if self.logged_skips.insert(path.clone()) {
                tracing::warn!(path = %path.display(), "{}", d.message);
            }
        }
    }

    /// How many files the last load had to parse.
    pub fn parsed(&self) -> usize {
        self.parsed
    }

    /// Whether the last load patched the previous store (see [`FileCache::load`]).
    pub fn patched(&self) -> bool {
        self.patched
    }

    /// How many files the last load had to read.
    pub fn read(&self) -> usize {
        self.read
    }

    /// How many files the cache holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Key;

    const VS: &str = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: NAME}\nspec:\n  hosts: [a.example.com]\n  http:\n  - route: [{destination: {host: a}}]\n";

    fn vs(name: &str) -> String {
        VS.replace("NAME", name)
    }

    /// Loads through the cache and fresh, and checks both give the same store.
    fn check(cache: &mut FileCache, dir: &Path) -> Store {
        let paths = [dir.to_path_buf()];
        let incremental = cache.load(&paths);
        let fresh = files::load(&paths);
        assert_eq!(incremental, fresh);
        incremental
    }

    #[test]
    fn per_object_bookkeeping_stays_small() {
        // 50k of each at 10k services (docs/benchmarks.md, "Eighth round").
        assert_eq!(std::mem::size_of::<Decoded>(), 32);
        assert_eq!(std::mem::size_of::<crate::store::MetaKey>(), 8);
    }

    #[test]
    fn incremental_reloads_equal_fresh_loads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
        write("a.yaml", &format!("{}---\n{}", vs("one"), vs("two")));
        write("b.yaml", &vs("three"));
        // Defined again in a later file: the warning and the winner depend on load order.
        write("c.yaml", &vs("one"));
        write("d.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n");
        let mut cache = FileCache::default();
        let store = check(&mut cache, d);
        assert_eq!(cache.parsed(), 4);
        assert_eq!(store.virtual_services.len(), 3);
        assert_eq!(store.diagnostics.warnings(), 1, "{:?}", store.diagnostics);

        // Nothing changed: nothing is parsed.
        check(&mut cache, d);
        assert_eq!(cache.parsed(), 0);

        // An edit that adds a document shifts the sequence numbers of every later file.
        write("a.yaml", &format!("{}---\n{}---\n{}", vs("zero"), vs("one"), vs("two")));
        check(&mut cache, d);
        assert_eq!(cache.parsed(), 1);

        // Additions before and after existing files, and a deletion.
        write("0.yaml", &vs("first"));
        write("e.yaml", &vs("last"));
        std::fs::remove_file(d.join("b.yaml")).unwrap();
        let store = check(&mut cache, d);
        assert_eq!(cache.parsed(), 2);
        assert_eq!(cache.len(), 5);
        assert!(!store.virtual_services.keys().any(|k| k.name() == "three"));

        // A broken file, a schema error and an unreadable file are diagnostics, kept as such.
        write("c.yaml", "kind: [oops\n");
        write("d.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: 3}\n");
        std::fs::write(d.join("f.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let store = check(&mut cache, d);
        assert_eq!(store.diagnostics.errors(), 3, "{:?}", store.diagnostics);
        check(&mut cache, d);
        assert_eq!(cache.parsed(), 0);

        // Fixed again.
        write("c.yaml", &vs("one"));
        std::fs::remove_file(d.join("f.yaml")).unwrap();
        check(&mut cache, d);
        assert_eq!(cache.parsed(), 1);
    }

    fn vs_for(name: &str, host: &str) -> String {
        vs(name).replace("a.example.com", host)
    }

    #[test]
    fn edits_in_place_patch_the_store_and_equal_fresh_loads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";
        write("a.yaml", &format!("{}---\n{}---\n{svc}", vs("one"), vs("two")));
        // `one` again: this later definition is the one that serves.
        write("b.yaml", &format!("{}---\n{}", vs_for("one", "b.example.com"), vs("three")));
        let mut cache = FileCache::default();
        let mut before = check(&mut cache, d);
        assert!(!cache.patched(), "the first load builds");
        assert_eq!(before.diagnostics.warnings(), 1);

        let host = |store: &Store, name: &str| {
            crate::store::lookup(&store.virtual_services, "default", name).unwrap().spec.hosts.to_vec()
        };
        // A spec edit: patched, and the kinds it did not touch keep their maps.
        write("a.yaml", &format!("{}---\n{}---\n{svc}", vs("one"), vs_for("two", "two.example.com")));
        let after = check(&mut cache, d);
        assert!(cache.patched());
        assert_eq!(host(&after, "two"), ["two.example.com"]);
        assert!(Arc::ptr_eq(&before.services, &after.services));
        assert!(!Arc::ptr_eq(&before.virtual_services, &after.virtual_services));
        before = after;

        // Editing the definition that a later one replaces changes nothing that serves.
        write(
            "a.yaml",
            &format!("{}---\n{}---\n{svc}", vs_for("one", "x.example.com"), vs_for("two", "two.example.com")),
        );
        let after = check(&mut cache, d);
        assert!(cache.patched());
        assert_eq!(host(&after, "one"), ["b.example.com"]);
        assert!(Arc::ptr_eq(&before.virtual_services, &after.virtual_services));

        // Editing the one that serves.
        write("b.yaml", &format!("{}---\n{}", vs_for("one", "c.example.com"), vs("three")));
        let after = check(&mut cache, d);
        assert!(cache.patched());
        assert_eq!(host(&after, "one"), ["c.example.com"]);

        // Changes of shape rebuild: an object renamed, documents reordered, a new schema
        // error, a file added; each still equals a fresh load.
        let rebuilds = [
            ("b.yaml", format!("{}---\n{}", vs_for("one", "c.example.com"), vs("four"))),
            ("b.yaml", format!("{}---\n{}", vs("four"), vs_for("one", "c.example.com"))),
            ("b.yaml", format!("{}---\n{}", vs("four"), vs("one").replace("[a.example.com]", "3"))),
            ("c.yaml", vs("five")),
        ];
        for (file, text) in rebuilds {
            write(file, &text);
            check(&mut cache, d);
            assert!(!cache.patched(), "{file}: {text}");
        }
        // Nothing changed: patched with nothing to patch.
        check(&mut cache, d);
        assert!(cache.patched());
        assert_eq!(cache.parsed(), 0);
    }

    #[test]
    fn old_enough_stamps_skip_reading_and_recent_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, vs("one")).unwrap();
        let paths = [dir.path().to_path_buf()];

        // Written just now: a same-length write could leave the same stamp, so it is re-read
        // (though not parsed again) on every load.
        let mut cache = FileCache::default();
        cache.load(&paths);
        cache.load(&paths);
        assert_eq!((cache.read(), cache.parsed()), (1, 0));

        // With no margin the stamp vouches at once: not even read.
        let mut cache = FileCache { margin: std::time::Duration::ZERO, ..FileCache::default() };
        cache.load(&paths);
        let store = cache.load(&paths);
        assert_eq!((cache.read(), cache.parsed()), (0, 0));
        assert_eq!(store, files::load(&paths));
        // Any write changes the stamp (a longer name: the length differs whatever the clock).
        std::fs::write(&file, vs("three")).unwrap();
        let store = cache.load(&paths);
        assert_eq!((cache.read(), cache.parsed()), (1, 1));
        assert!(store.virtual_services.keys().any(|k| k.name() == "three"));
    }

    #[test]
    fn a_file_named_twice_loads_twice_like_a_fresh_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), vs("one")).unwrap();
        let paths = [dir.path().to_path_buf(), dir.path().join("a.yaml")];
        let mut cache = FileCache::default();
        for _ in 0..2 {
            let store = cache.load(&paths);
            assert_eq!(store, files::load(&paths));
            assert_eq!(store.diagnostics.warnings(), 1, "the second load of the file replaces the first");
        }
        assert_eq!(cache.parsed(), 0);
    }

    #[test]
    fn only_files_whose_metadata_changed_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["a", "b", "c"] {
            std::fs::write(d.join(format!("{name}.yaml")), vs(name)).unwrap();
        }
        let paths = [d.to_path_buf()];
        // No margin: every stamp vouches at once (see `Stamp::trusted`).
        let mut cache = FileCache { margin: std::time::Duration::ZERO, ..FileCache::default() };
        cache.load(&paths);
        assert_eq!((cache.read(), cache.parsed()), (3, 3));
        cache.load(&paths);
        assert_eq!((cache.read(), cache.parsed()), (0, 0));
        // An atomic replace of the same length: a new inode, so it is read (and parsed: the
        // text differs) while the other two are not.
        std::fs::write(d.join(".b.tmp"), vs("x")).unwrap();
        std::fs::rename(d.join(".b.tmp"), d.join("b.yaml")).unwrap();
        let store = cache.load(&paths);
        assert_eq!((cache.read(), cache.parsed()), (1, 1));
        assert_eq!(store, files::load(&paths));
    }

    #[test]
    fn an_oversized_file_is_an_error_and_its_resources_keep_serving() {
        const GATEWAY: &str = "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let route = |name: &str| vs(name).replace("  http:", "  gateways: [gw]\n  http:");
        std::fs::write(d.join("gw.yaml"), GATEWAY).unwrap();
        std::fs::write(d.join("vs.yaml"), route("web")).unwrap();
        let paths = [d.to_path_buf()];
        let mut cache = FileCache::new(files::FileOptions { max_file_bytes: 1024 });
        let (mut publisher, snapshots) = crate::publish::Publisher::new(crate::Options::default());
        publisher.apply(cache.load(&paths));
        let served = snapshots.borrow().clone();
        assert_eq!(served.listeners[0].virtual_hosts.len(), 1);

        // Grown past the limit: not read, reported with its size and the limit, and the
        // VirtualService it held keeps serving.
        let big = format!("{}# {}\n", route("web2"), "x".repeat(2048));
        std::fs::write(d.join("vs.yaml"), &big).unwrap();
        let store = cache.load(&paths);
        assert!(store.virtual_services.is_empty());
        let outcome = publisher.apply(store);
        let error = outcome.diagnostics.iter().find(|d| d.is_error()).expect("an error");
        assert_eq!(error.origin.file.as_deref(), Some(d.join("vs.yaml").as_path()));
        assert!(error.message.contains(&format!("{} bytes", big.len())) && error.message.contains("1024"), "{error}");
        assert!(outcome.diagnostics.iter().any(|d| d.code == codes::KEPT));
        assert_eq!(outcome.rejected, 1);
        assert!(!outcome.changed, "the served snapshot is the same");

        // Back under the limit: read again.
        std::fs::write(d.join("vs.yaml"), route("web2")).unwrap();
        let store = cache.load(&paths);
        assert!(store.virtual_services.keys().any(|k| k.name() == "web2"));
        assert_eq!(store.diagnostics.errors(), 0);
    }

    /// Log lines written while `f` runs on this thread.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = capture.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_symlink_loop_is_logged_once_while_it_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.yaml"), vs("a")).unwrap();
        let link = d.join("sub/loop");
        std::os::unix::fs::symlink("..", &link).unwrap();
        let paths = [d.to_path_buf()];
        let mut cache = FileCache::default();
        let count = |logs: &str| logs.lines().filter(|l| l.contains("WARN") && l.contains("sub/loop")).count();

        let logs = logs_of(|| {
            for _ in 0..3 {
                let store = cache.load(&paths);
                assert!(store.diagnostics.iter().any(|d| d.code == codes::FOLDER_SKIPPED), "reported on every load");
            }
        });
        assert_eq!(count(&logs), 1, "{logs}");

        // Fixed, then back: logged again.
        let logs = logs_of(|| {
            std::fs::remove_file(&link).unwrap();
            cache.load(&paths);
            std::os::unix::fs::symlink("..", &link).unwrap();
            cache.load(&paths);
        });
        assert_eq!(count(&logs), 1, "{logs}");
    }
}
