//! Incremental reloads of a config folder: each file's decoded documents are kept with a
//! hash of its text, so a reload after one edit parses only that file. YAML parsing and typed
//! decoding are most of a reload at 10k services (about a second). Unchanged files are not
//! even read when their size, inode and times are those of an earlier read that happened well
//! after their last change (`Stamp`); the others are read and hashed.
//!
//! The store is rebuilt from scratch on every reload by replaying each file's recorded
//! inserts and diagnostics in load order, exactly as [`files::load`] would have produced
//! them: sequence numbers (the file-mode "creation order"), "defined again" warnings for
//! duplicates across files, and diagnostic order all come out the same.

use crate::api::{Kind, ObjectMeta};
use crate::diagnostics::{codes, Diagnostic, Origin};
use crate::source::decode::Sink;
use crate::source::files;
use crate::store::{Object, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What decoding one file produced, in order. Diagnostics are boxed: they are rare and three
/// times the size of an object entry, which every entry would otherwise take.
#[derive(Debug, Clone)]
enum Decoded {
    Diagnostic(Box<Diagnostic>),
    Object(Kind, Arc<ObjectMeta>, Origin, Object),
}

impl Sink for Vec<Decoded> {
    fn diagnostic(&mut self, diagnostic: Diagnostic) {
        self.push(Decoded::Diagnostic(Box::new(diagnostic)));
    }

    fn object(&mut self, kind: Kind, meta: ObjectMeta, origin: &Origin, object: Object) {
        self.push(Decoded::Object(kind, Arc::new(meta), origin.clone(), object));
    }
}

struct Entry {
    hash: u64,
    decoded: Vec<Decoded>,
    /// The file's metadata when its text was last read, if it can vouch for the text (see
    /// [`Stamp::trusted`]); an unchanged trusted stamp skips reading the file.
    stamp: Option<Stamp>,
}

impl Entry {
    fn decode(text: &str, file: &Path) -> Entry {
        let mut decoded = Vec::new();
        files::load_text(&mut decoded, text, Some(file));
        // Kept for as long as the file is unchanged: no room for a sixth document.
        decoded.shrink_to_fit();
        Entry { hash: hash(text), decoded, stamp: None }
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
                Decoded::Object(kind, meta, _, object) => {
                    Some(((*kind, meta.namespace.as_deref(), meta.name.as_str()), (meta, object)))
                }
                Decoded::Diagnostic(_) => None,
            })
            .collect();
        for item in &mut self.decoded {
            let Decoded::Object(kind, meta, _, object) = item else { continue };
            let Some((old_meta, old_object)) =
                previous.get(&(*kind, meta.namespace.as_deref(), meta.name.as_str())).copied()
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

    fn replay(&self, store: &mut Store) {
        for item in &self.decoded {
            match item {
                Decoded::Diagnostic(d) => store.diagnostics.push((**d).clone()),
                Decoded::Object(kind, meta, origin, object) => {
                    store.insert(*kind, meta.clone(), origin.clone(), object.clone())
                }
            }
        }
    }
}

fn hash(text: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(text.as_bytes(), 0)
}

/// Size, inode, modification and change times of a file. Reading and hashing 10k files is a
/// third of a reload; a `stat` is a third of that again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            inode: meta.ino(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let nanos = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos() as i64))
        };
        Stamp { len: meta.len(), inode: 0, modified: nanos(meta.modified()), changed: nanos(meta.modified()) }
    }

    /// Whether a later write is sure to change the stamp. File timestamps come from a coarse
    /// clock (milliseconds, whole seconds on some file systems), so two writes of the same
    /// length close together can leave equal stamps; like git's "racily clean" rule, a stamp
    /// only vouches for text read well after its last change, `started` being when that read
    /// began.
    fn trusted(&self, started: std::time::SystemTime, margin: std::time::Duration) -> bool {
        let time = |(secs, nanos): (i64, i64)| {
            std::time::UNIX_EPOCH + std::time::Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        time(self.changed).max(time(self.modified)) + margin < started
    }
}

/// Decoded files by path, from the previous load.
pub struct FileCache {
    entries: HashMap<PathBuf, Entry>,
    /// Files parsed by the last [`FileCache::load`] (the rest came from the cache), for logs.
    parsed: usize,
    /// Files the last load read (the rest were vouched for by their stamps).
    read: usize,
    /// How long after its last change a file's stamp vouches for its text (see
    /// [`Stamp::trusted`]); tests shorten it.
    margin: std::time::Duration,
}

impl Default for FileCache {
    fn default() -> FileCache {
        FileCache { entries: HashMap::new(), parsed: 0, read: 0, margin: std::time::Duration::from_secs(2) }
    }
}

impl FileCache {
    /// Loads `paths` like [`files::load`], parsing only files whose text changed since the
    /// previous call. Files that disappeared are forgotten.
    pub fn load(&mut self, paths: &[PathBuf]) -> Store {
        let mut store = Store::default();
        let (found, problems) = files::expand(paths);
        store.diagnostics.extend(problems);
        let mut previous = std::mem::take(&mut self.entries);
        self.parsed = 0;
        self.read = 0;
        let started = std::time::SystemTime::now();
        for file in found {
            let stamp = std::fs::metadata(&file).ok().map(|m| Stamp::of(&m));
            if let Some(stamp) = stamp {
                // Unchanged since a read that it vouches for: replay without reading.
                if let Some(entry) = self.entries.get(&file).filter(|e| e.stamp == Some(stamp)) {
                    entry.replay(&mut store);
                    continue;
                }
                if previous.get(&file).is_some_and(|e| e.stamp == Some(stamp)) {
                    if let Some(entry) = previous.remove(&file) {
                        entry.replay(&mut store);
                        self.entries.insert(file, entry);
                    }
                    continue;
                }
            }
            self.read += 1;
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    store.diagnostics.push(
                        Diagnostic::error(codes::IO, "", e.to_string())
                            .at(&Origin { file: Some(file.as_path().into()), document: None }, None),
                    );
                    continue;
                }
            };
            // A file named twice (a folder and a file inside it) is loaded twice, as a fresh
            // load does; the second time it is already in this load's entries.
            if let Some(entry) = self.entries.get(&file).filter(|e| e.hash == hash(&text)) {
                entry.replay(&mut store);
                continue;
            }
            let mut entry = match previous.remove(&file) {
                Some(entry) if entry.hash == hash(&text) => entry,
                Some(old) => {
                    self.parsed += 1;
                    let mut entry = Entry::decode(&text, &file);
                    entry.adopt(&old);
                    entry
                }
                None => {
                    self.parsed += 1;
                    Entry::decode(&text, &file)
                }
            };
            // The stamp taken before reading: a write during the read changes it again.
            entry.stamp = stamp.filter(|s| s.trusted(started, self.margin));
            entry.replay(&mut store);
            self.entries.insert(file, entry);
        }
        files::read_referenced_files(&mut store);
        store
    }

    /// How many files the last load had to parse.
    pub fn parsed(&self) -> usize {
        self.parsed
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
        assert!(!store.virtual_services.keys().any(|k| k.name == "three"));

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
        assert!(store.virtual_services.keys().any(|k| k.name == "three"));
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
}
