//! Loading a set of files and folders (`kubectl apply -f` style) into a [`Store`].

use crate::diagnostics::{codes, Diagnostic, Origin};
use crate::source::decode::{add_document, Sink};
use crate::store::Store;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A config file found by [`expand`], with its metadata when the listing could take it.
pub struct Found {
    pub path: PathBuf,
    /// From the folder listing (`fstatat` on the open folder: no walk of the full path, which
    /// was most of the cost of a `stat` per file on every reload of a 10k-file folder).
    pub metadata: Option<std::fs::Metadata>,
}

/// Expands files and folders (recursively, sorted, `.yaml`/`.yml`/`.json`) into the files to read.
pub fn expand(paths: &[PathBuf]) -> (Vec<Found>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        collect(path, true, &mut files, &mut problems);
    }
    (files, problems)
}

fn collect(path: &Path, explicit: bool, files: &mut Vec<Found>, problems: &mut Vec<Diagnostic>) {
    match std::fs::metadata(path) {
        Ok(m) => collect_entry(path, m, explicit, files, problems),
        Err(e) => problems.push(io_problem(path, e)),
    }
}

/// `metadata` comes from the folder listing when it can (see [`Found::metadata`]), else from
/// `fs::metadata`, which follows symlinks.
fn collect_entry(
    path: &Path,
    metadata: std::fs::Metadata,
    explicit: bool,
    files: &mut Vec<Found>,
    problems: &mut Vec<Diagnostic>,
) {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    if metadata.is_dir() {
        // A mounted ConfigMap holds its files twice more under `..data` and `..2025_...`;
        // hidden folders are skipped unless named explicitly.
        if hidden && !explicit {
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => return problems.push(io_problem(path, e)),
        };
        // Children of one folder sort as full paths do when sorted by name; each name is
        // taken once, not once per comparison.
        let mut children: Vec<_> = entries.flatten().map(|e| (e.file_name(), e)).collect();
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, child) in children {
            let child_path = child.path();
            match child.metadata() {
                Ok(m) if !m.file_type().is_symlink() => collect_entry(&child_path, m, false, files, problems),
                _ => collect(&child_path, false, files, problems),
            }
        }
        return;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let is_config = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
    // Hidden files are editor swap files and atomic-write temporaries.
    if explicit || (is_config && !hidden) {
        files.push(Found { path: path.to_path_buf(), metadata: Some(metadata) });
    }
}

fn io_problem(path: &Path, e: std::io::Error) -> Diagnostic {
    let origin = Origin { file: Some(path.into()), document: None };
    Diagnostic::error(codes::IO, "", e.to_string()).at(&origin, None)
}

/// Reads every file and document into a fresh store. Parse problems are diagnostics in the
/// store; a file that cannot be read at all is reported and contributes nothing.
pub fn load(paths: &[PathBuf]) -> Store {
    let mut store = Store::default();
    let (files, problems) = expand(paths);
    store.diagnostics.extend(problems);
    for Found { path: file, .. } in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&mut store, &text, Some(&file)),
            Err(e) => store.diagnostics.push(
                Diagnostic::error(codes::IO, "", e.to_string())
                    .at(&Origin { file: Some(file.as_path().into()), document: None }, None),
            ),
        }
    }
    read_referenced_files(&mut store);
    store
}

/// Reads the certificate files the loaded resources name, so translation can use them.
pub fn read_referenced_files(store: &mut Store) {
    for path in store.referenced_files() {
        let content = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        store.files.insert(path, content);
    }
}

/// Adds every document of one YAML (or JSON) text.
pub fn load_text(store: &mut impl Sink, text: &str, file: Option<&Path>) {
    load_shared(store, text, file.map(std::sync::Arc::from));
}

/// [`load_text`] with the path every origin shares already allocated.
pub fn load_shared(store: &mut impl Sink, text: &str, file: Option<std::sync::Arc<Path>>) {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin { file: file.clone(), document: Some(u32::try_from(index).unwrap_or(u32::MAX)) };
        match serde_yaml::Value::deserialize(document) {
            Ok(value) => add_document(store, value, &origin),
            Err(e) => {
                // A syntax error ends the stream: later documents of this file cannot be
                // located reliably, so the file's remaining documents are not applied.
                store.diagnostic(Diagnostic::error(codes::SCHEMA, "", format!("invalid YAML: {e}")).at(&origin, None));
                break;
            }
        }
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
}
