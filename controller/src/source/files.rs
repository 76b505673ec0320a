//! Loading a set of files and folders (`kubectl apply -f` style) into a [`Store`].

use crate::diagnostics::{codes, Diagnostic, Origin};
use crate::source::decode::{add_document, Sink};
use crate::store::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How config files are read: the options of the file source (`--max-config-file-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    /// A config or certificate file larger than this is not read: an error names it and, in
    /// the running gateway, the resources it held keep serving. A stray dump or log file
    /// with a `.yaml` name would otherwise be read, parsed and held on every reload.
    pub max_file_bytes: u64,
}

/// 16 MiB: far above a hand-written or generated config file (the 10k-service benchmark
/// folder holds one file per service); a larger `.yaml` is more likely a stray dump.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { max_file_bytes: DEFAULT_MAX_FILE_BYTES }
    }
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the file is {size} bytes, over the limit of {limit} bytes (--max-config-file-bytes); not read")]
    TooLarge { size: u64, limit: u64 },
}

impl ReadError {
    /// The error as a diagnostic on the file (a file-level problem: no resource, no field).
    pub fn diagnostic(&self, file: &Path) -> Diagnostic {
        let origin = Origin { file: Some(file.into()), document: None };
        Diagnostic::error(codes::IO, "", self.to_string()).at(&origin, None)
    }
}

/// Reads a file as text unless it is larger than `limit`. `listed` is its metadata from the
/// folder listing, if taken: a file the listing shows too large is not even opened.
pub fn read_limited(path: &Path, listed: Option<&std::fs::Metadata>, limit: u64) -> Result<String, ReadError> {
    use std::io::Read;
    if let Some(size) = listed.map(std::fs::Metadata::len).filter(|len| *len > limit) {
        return Err(ReadError::TooLarge { size, limit });
    }
    let mut file = std::fs::File::open(path)?;
    // The listing may be stale (a file still being written) or absent, and a named path may be
    // a pipe or device: never read more than one byte past the limit.
    let expected = listed.map_or(0, std::fs::Metadata::len).min(limit);
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).saturating_add(1));
    (&mut file).take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    let read = bytes.len() as u64;
    if read > limit {
        let size = file.metadata().map_or(read, |m| m.len().max(read));
        return Err(ReadError::TooLarge { size, limit });
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8").into())
}

/// A config file found by [`expand`], with its metadata when the listing could take it.
pub struct Found {
    pub path: PathBuf,
    /// From the folder listing (`fstatat` on the open folder: no walk of the full path, which
    /// was most of the cost of a `stat` per file on every reload of a 10k-file folder).
    pub metadata: Option<std::fs::Metadata>,
}

/// Expands files and folders (recursively, sorted, `.yaml`/`.yml`/`.json`) into the files to read.
///
/// Each named path is walked once: a folder met again in the same walk (a symlink back to an
/// ancestor, or a second symlink to a folder already read) is skipped with a warning, so a
/// symlink loop costs one listing instead of a walk forty levels deep on every reload.
pub fn expand(paths: &[PathBuf]) -> (Vec<Found>, Vec<Diagnostic>) {
    let mut walk = Walk::default();
    for path in paths {
        // A path named twice is read twice, as a file named twice is: each walk is its own.
        walk.folders.clear();
        walk.collect(path, true);
    }
    (walk.files, walk.problems)
}

/// A folder's identity: the same folder reached by another path has the same one.
type FolderId = (u64, u64);

#[cfg(unix)]
fn folder_id(metadata: &std::fs::Metadata) -> Option<FolderId> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

/// Without device and inode numbers loops are not detected (the file source targets Linux).
#[cfg(not(unix))]
fn folder_id(_: &std::fs::Metadata) -> Option<FolderId> {
    None
}

#[derive(Default)]
struct Walk {
    files: Vec<Found>,
    problems: Vec<Diagnostic>,
    /// Folders read by the current walk, with the path they were read at.
    folders: HashMap<FolderId, PathBuf>,
}

impl Walk {
    fn collect(&mut self, path: &Path, explicit: bool) {
        match std::fs::metadata(path) {
            Ok(m) => self.collect_entry(path, m, explicit),
            Err(e) => self.problems.push(ReadError::Io(e).diagnostic(path)),
        }
    }

    /// `metadata` comes from the folder listing when it can (see [`Found::metadata`]), else
    /// from `fs::metadata`, which follows symlinks.
    fn collect_entry(&mut self, path: &Path, metadata: std::fs::Metadata, explicit: bool) {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if metadata.is_dir() {
            // A mounted ConfigMap holds its files twice more under `..data` and `..2025_...`;
            // hidden folders are skipped unless named explicitly.
            if (explicit || !hidden) && self.first_visit(path, &metadata) {
                self.collect_folder(path);
            }
            return;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_config = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
        // Hidden files are editor swap files and atomic-write temporaries.
        if explicit || (is_config && !hidden) {
            self.files.push(Found { path: path.to_path_buf(), metadata: Some(metadata) });
        }
    }

    /// Records the folder as read, or reports that it was read already in this walk.
    fn first_visit(&mut self, path: &Path, metadata: &std::fs::Metadata) -> bool {
        let Some(id) = folder_id(metadata) else { return true };
        match self.folders.get(&id) {
            None => {
                self.folders.insert(id, path.to_path_buf());
                true
            }
            Some(earlier) => {
                self.problems.push(skipped_folder(path, earlier));
                false
            }
        }
    }

    fn collect_folder(&mut self, path: &Path) {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => return self.problems.push(ReadError::Io(e).diagnostic(path)),
        };
        // Children of one folder sort as full paths do when sorted by name; each name is
        // taken once, not once per comparison.
        let mut children: Vec<_> = entries.flatten().map(|e| (e.file_name(), e)).collect();
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, child) in children {
            let child_path = child.path();
            match child.metadata() {
                Ok(m) if !m.file_type().is_symlink() => self.collect_entry(&child_path, m, false),
                _ => self.collect(&child_path, false),
            }
        }
    }
}

/// The warning for a folder not read because this walk read it already at `earlier`.
fn skipped_folder(path: &Path, earlier: &Path) -> Diagnostic {
    let why = if path.starts_with(earlier) {
        format!("symlink loop: this leads back to {}, which contains it; not followed", earlier.display())
    } else {
        format!("the same folder as {}, which was read already; not read again", earlier.display())
    };
    let origin = Origin { file: Some(path.into()), document: None };
    Diagnostic::warning(codes::FOLDER_SKIPPED, "", why).at(&origin, None)
}

/// Reads every file and document into a fresh store. Parse problems are diagnostics in the
/// store; a file that cannot be read at all is reported and contributes nothing.
pub fn load(paths: &[PathBuf]) -> Store {
    load_with(paths, &FileOptions::default())
}

/// [`load`] with the file source's options.
pub fn load_with(paths: &[PathBuf], options: &FileOptions) -> Store {
    let mut store = Store::default();
    let (files, problems) = expand(paths);
    store.diagnostics.extend(problems);
    for Found { path: file, metadata } in files {
        match read_limited(&file, metadata.as_ref(), options.max_file_bytes) {
            Ok(text) => load_text(&mut store, &text, Some(&file)),
            Err(e) => store.diagnostics.push(e.diagnostic(&file)),
        }
    }
    read_referenced_files(&mut store, options);
    store
}

/// Reads the certificate files the loaded resources name, so translation can use them.
pub fn read_referenced_files(store: &mut Store, options: &FileOptions) {
    for path in store.referenced_files() {
        let content = read_limited(&path, None, options.max_file_bytes).map_err(|e| e.to_string());
        store.files.insert(path, content);
    }
}

/// Adds every document of one YAML (or JSON) text.
pub fn load_text(store: &mut impl Sink, text: &str, file: Option<&Path>) {
    load_shared(store, text, file.map(std::sync::Arc::from));
}

/// [`load_text`] with the path every origin shares already allocated.
pub fn load_shared(store: &mut impl Sink, text: &str, file: Option<std::sync::Arc<Path>>) {
    let mut budget = Budget::for_text(text);
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let origin = Origin { file: file.clone(), document: Some(u32::try_from(index).unwrap_or(u32::MAX)) };
        match budget.value(document) {
            Ok(value) => add_document(store, value, &origin),
            Err(e) => {
                // A syntax error ends the stream: later documents of this file cannot be
                // located reliably, so the file's remaining documents are not applied. A spent
                // alias budget ends it too: the budget is the file's.
                store.diagnostic(Diagnostic::error(codes::SCHEMA, "", format!("invalid YAML: {e}")).at(&origin, None));
                break;
            }
        }
    }
}

/// At least this many values for a file, however small: anchors that a person reuses a few
/// times in a short file stay far below it, and a million values are ~120 MB at most.
const MIN_VALUE_BUDGET: usize = 1 << 20;

/// How many YAML values (scalars, sequences, mappings, keys included) one file may expand to.
///
/// The YAML library stops exponential alias nesting ("billion laughs": its repetition limit
/// of 100 alias jumps per event), but not a flat one: a 21 KB file whose 3,000 aliases each
/// name a 3,000-item anchor expands to 9 million values, 1.1 GB and 3.7 s, and a 200 KB one
/// to more memory than the machine has. Without aliases a value takes a byte of text or more
/// (`[a,b,c]` is about the densest YAML gets), so a budget of the file's size in values (or
/// [`MIN_VALUE_BUDGET`]) does not reject a file without aliases, and bounds one with them to
/// what a file of its size could cost anyway.
struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    fn for_text(text: &str) -> Budget {
        let limit = text.len().max(MIN_VALUE_BUDGET);
        Budget { left: limit, limit }
    }

    /// One document as a generic value, counted against the file's budget.
    fn value<'de, D: serde::Deserializer<'de>>(&mut self, document: D) -> Result<serde_norway::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(Counted(self), document)
    }

    fn take<E: serde::de::Error>(&mut self) -> Result<(), E> {
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "aliases expand the file beyond {} values (the limit is the file's size in bytes, at least {MIN_VALUE_BUDGET})",
                self.limit
            ))),
        }
    }
}

/// Builds a `serde_norway::Value` as its own `Deserialize` would, counting every value it
/// builds: the count has to stop the expansion while it happens, before the memory is spent.
struct Counted<'a>(&'a mut Budget);

impl<'de> serde::de::DeserializeSeed<'de> for Counted<'_> {
    type Value = serde_norway::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Counted<'_> {
    type Value = serde_norway::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
        self.0.take()?;
        Ok(serde_norway::Value::Bool(b))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
        self.0.take()?;
        Ok(serde_norway::Value::Number(n.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
        self.0.take()?;
        Ok(serde_norway::Value::Number(n.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
        self.0.take()?;
        Ok(serde_norway::Value::Number(n.into()))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        self.visit_string(s.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
        self.0.take()?;
        Ok(serde_norway::Value::String(s))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.take()?;
        Ok(serde_norway::Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, deserializer)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.0.take()?;
        // The hint is the parser's; capped so that a claimed length cannot allocate ahead.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(Counted(&mut *self.0))? {
            items.push(item);
        }
        Ok(serde_norway::Value::Sequence(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde_norway::mapping::Entry;
        self.0.take()?;
        let mut mapping = serde_norway::Mapping::new();
        while let Some(key) = map.next_key_seed(Counted(&mut *self.0))? {
            match mapping.entry(key) {
                // The library's own message for a repeated key, so diagnostics read as before.
                Entry::Occupied(entry) => return Err(serde::de::Error::custom(duplicate(entry.key()))),
                Entry::Vacant(entry) => {
                    entry.insert(map.next_value_seed(Counted(&mut *self.0))?);
                }
            }
        }
        Ok(serde_norway::Value::Mapping(mapping))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        use serde::de::VariantAccess;
        // A tagged value (`!Tag value`): the library presents its tag as the variant.
        self.0.take()?;
        let (tag, contents) = data.variant::<String>()?;
        if tag.is_empty() {
            return Err(serde::de::Error::custom("empty YAML tag is not allowed"));
        }
        let value = contents.newtype_variant_seed(Counted(&mut *self.0))?;
        let tag = serde_norway::value::Tag::new(tag);
        Ok(serde_norway::Value::Tagged(Box::new(serde_norway::value::TaggedValue { tag, value })))
    }
}

/// "duplicate entry with key ..." as the YAML library words it.
fn duplicate(key: &serde_norway::Value) -> String {
    use serde_norway::Value;
    match key {
        Value::Null => "duplicate entry with null key".to_string(),
        Value::Bool(b) => format!("duplicate entry with key `{b}`"),
        Value::Number(n) => format!("duplicate entry with key {n}"),
        Value::String(s) => format!("duplicate entry with key {s:?}"),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => "duplicate entry in YAML map".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_mount_layout_loads_each_file_once() {
        // The kubelet's layout: real files in a timestamped hidden folder, `..data` pointing
        // at it, and top-level symlinks through `..data`.
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("..2025_01_01_00_00_00.000000001");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("svc.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n").unwrap();
        std::os::unix::fs::symlink(&stamp, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("..data/svc.yaml"), dir.path().join("svc.yaml")).unwrap();
        let store = load(&[dir.path().to_path_buf()]);
        assert_eq!(store.services.len(), 1);
        assert!(store.diagnostics.items.is_empty(), "{:?}", store.diagnostics.items);
    }

    const VS: &str = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: NAME}\nspec: {hosts: [a.example.com]}\n";

    fn yaml_errors(store: &Store) -> Vec<String> {
        store.diagnostics.iter().filter(|d| d.code == codes::SCHEMA).map(|d| d.message.clone()).collect()
    }

    #[test]
    fn nested_aliases_are_rejected_with_a_diagnostic() {
        // "Billion laughs": ten levels of nine aliases each, 9^10 strings from 500 bytes.
        let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            text.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
        }
        text.push_str("---\n");
        text.push_str(&VS.replace("NAME", "after"));
        let mut store = Store::default();
        load_text(&mut store, &text, None);
        let errors = yaml_errors(&store);
        assert_eq!(errors.len(), 1, "{:?}", store.diagnostics);
        assert!(errors[0].starts_with("invalid YAML: "), "{}", errors[0]);
        assert_eq!(store.diagnostics.iter().next().unwrap().origin.document, Some(0));
        // As for any syntax error, the rest of the file is not applied.
        assert!(store.virtual_services.is_empty());
    }

    #[test]
    fn flat_aliases_of_a_large_anchor_are_bounded() {
        // 2,000 aliases of a 2,000-item anchor: 10 KB that would expand to 4 million values.
        // The library's repetition limit counts alias uses, not their size, so this one is ours.
        let n = 2000;
        let mut text =
            format!("{}---\nitems: &items [{}]\nuses:\n", VS.replace("NAME", "before"), vec!["x"; n].join(","));
        text.push_str(&"- *items\n".repeat(n));
        let mut store = Store::default();
        load_text(&mut store, &text, None);
        let errors = yaml_errors(&store);
        assert_eq!(errors.len(), 1, "{:?}", store.diagnostics);
        assert!(errors[0].contains("aliases expand the file beyond 1048576 values"), "{}", errors[0]);
        assert!(errors[0].contains(" at line "), "the library adds the position: {}", errors[0]);
        assert_eq!(store.diagnostics.iter().next().unwrap().origin.document, Some(1));
        assert_eq!(store.virtual_services.len(), 1, "documents before the bomb still apply");
    }

    #[test]
    fn ordinary_anchors_tags_and_duplicate_keys_read_as_before() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, labels: &l {app: a}, annotations: *l}\nspec:\n  hosts: [a.example.com]\n  x-custom: !local {kept: 1}\n  http:\n  - route: &r [{destination: {host: a}}]\n  - route: *r\n---\nmetadata: {name: b, name: c}\n";
        let mut store = Store::default();
        load_text(&mut store, text, None);
        assert_eq!(store.virtual_services.len(), 1);
        let messages: Vec<_> = store.diagnostics.iter().map(|d| (d.field.as_str(), d.message.as_str())).collect();
        assert_eq!(
            messages,
            [
                ("spec.x-custom", "unknown field, ignored"),
                ("", "invalid YAML: metadata: duplicate entry with key \"name\" at line 11 column 11"),
            ]
        );
    }

    fn skipped(store: &Store) -> Vec<(PathBuf, String)> {
        let items = store.diagnostics.iter().filter(|d| d.code == codes::FOLDER_SKIPPED);
        items.map(|d| (d.origin.file.as_deref().unwrap().to_path_buf(), d.message.clone())).collect()
    }

    #[test]
    fn a_symlink_back_to_an_ancestor_is_not_followed_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::write(d.join("a.yaml"), VS.replace("NAME", "a")).unwrap();
        std::fs::write(d.join("sub/deeper/b.yaml"), VS.replace("NAME", "b")).unwrap();
        std::os::unix::fs::symlink("../..", d.join("sub/deeper/up")).unwrap();

        let (found, _) = expand(&[d.to_path_buf()]);
        let names: Vec<_> = found.iter().map(|f| f.path.strip_prefix(d).unwrap().to_path_buf()).collect();
        assert_eq!(names, [PathBuf::from("a.yaml"), PathBuf::from("sub/deeper/b.yaml")]);
        let store = load(&[d.to_path_buf()]);
        assert_eq!(store.virtual_services.len(), 2);
        let skips = skipped(&store);
        assert_eq!(skips.len(), 1, "{:?}", store.diagnostics);
        assert_eq!(skips[0].0, d.join("sub/deeper/up"));
        assert!(skips[0].1.contains("symlink loop") && skips[0].1.contains(&d.display().to_string()), "{}", skips[0].1);
        assert_eq!(store.diagnostics.errors(), 0, "a skipped folder is a warning: {:?}", store.diagnostics);
    }

    #[test]
    fn a_folder_reached_twice_through_symlinks_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/c.yaml"), VS.replace("NAME", "c")).unwrap();
        std::os::unix::fs::symlink("real", d.join("alias")).unwrap();

        let store = load(&[d.to_path_buf()]);
        assert_eq!(store.virtual_services.len(), 1);
        // Read once: no "defined again" warning for the second copy.
        assert_eq!(store.diagnostics.iter().filter(|d| d.code == codes::DUPLICATE).count(), 0);
        // `alias` sorts first, so `real` is the one skipped.
        let skips = skipped(&store);
        assert_eq!(skips.len(), 1, "{:?}", store.diagnostics);
        assert_eq!(skips[0].0, d.join("real"));
        assert!(skips[0].1.contains(&d.join("alias").display().to_string()), "{}", skips[0].1);

        // A path named twice is still read twice, as before.
        let twice = load(&[d.join("real"), d.join("real")]);
        assert_eq!(twice.diagnostics.iter().filter(|d| d.code == codes::DUPLICATE).count(), 1);
        assert!(skipped(&twice).is_empty());
    }

    #[test]
    fn files_over_the_size_limit_are_errors_naming_size_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let small = VS.replace("NAME", "small");
        let big = format!("{}# {}\n", VS.replace("NAME", "big"), "x".repeat(2000));
        std::fs::write(d.join("small.yaml"), &small).unwrap();
        std::fs::write(d.join("big.yaml"), &big).unwrap();
        let options = FileOptions { max_file_bytes: 1000 };

        let store = load_with(&[d.to_path_buf()], &options);
        assert_eq!(store.virtual_services.len(), 1);
        use crate::store::Key;
        assert!(store.virtual_services.keys().all(|k| k.name() == "small"));
        let errors: Vec<_> = store.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].code, codes::IO);
        assert_eq!(errors[0].origin.file.as_deref(), Some(d.join("big.yaml").as_path()));
        assert!(errors[0].message.contains(&format!("{} bytes", big.len())), "{}", errors[0].message);
        assert!(errors[0].message.contains("limit of 1000 bytes"), "{}", errors[0].message);

        // The default limit reads both.
        assert_eq!(load(&[d.to_path_buf()]).virtual_services.len(), 2);
    }

    #[test]
    fn certificate_files_over_the_limit_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cert = d.join("certs/tls.crt");
        std::fs::create_dir(d.join("certs")).unwrap();
        std::fs::write(&cert, "x".repeat(5000)).unwrap();
        let gateway = format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [\"*\"]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n",
            cert.display(),
            cert.display()
        );
        std::fs::write(d.join("gw.yaml"), gateway).unwrap();
        let store = load_with(&[d.join("gw.yaml")], &FileOptions { max_file_bytes: 4096 });
        let content = store.files.get(&cert).expect("the certificate file is listed");
        assert!(content.as_ref().is_err_and(|e| e.contains("5000 bytes") && e.contains("4096")), "{content:?}");
        let (_, diagnostics) = crate::translate(&store, &crate::Options::default());
        let field = "spec.servers[0].tls.serverCertificate";
        assert!(diagnostics.iter().any(|d| d.code == codes::NOT_FOUND && d.field == field), "{diagnostics:?}");
    }

    #[test]
    fn reads_stop_at_the_limit_whatever_the_listing_said() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grown.yaml");
        std::fs::write(&file, "x".repeat(100)).unwrap();
        // Listed while still small (or not listed at all): the read itself stops past the limit.
        let listed = std::fs::metadata(&file).unwrap();
        std::fs::write(&file, "x".repeat(5000)).unwrap();
        for listed in [Some(&listed), None] {
            match read_limited(&file, listed, 1000) {
                Err(ReadError::TooLarge { size, limit }) => assert_eq!((size, limit), (5000, 1000)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(read_limited(&file, None, 5000).unwrap().len(), 5000);
        assert!(matches!(read_limited(&dir.path().join("missing.yaml"), None, 10), Err(ReadError::Io(_))));
    }
}
