//! `gateway analyze`: load + translate, then report like `istioctl analyze`.

use crate::diagnostics::{Diagnostics, Level};
use crate::source::files;
use crate::translate::{translate, Options};
use std::path::PathBuf;

/// Every diagnostic a load and translation of `paths` produces, errors first.
pub fn analyze(paths: &[PathBuf], options: &Options) -> Diagnostics {
    let store = files::load(paths);
    let (_, mut diagnostics) = translate(&store, options);
    diagnostics.items.sort_by_key(|d| d.level);
    diagnostics
}

/// Human report: one line per finding and a summary; the exit code is non-zero on errors.
pub fn report(diagnostics: &Diagnostics) -> (String, i32) {
    let mut out = String::new();
    for d in diagnostics.iter().filter(|d| d.level != Level::Info) {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    let (errors, warnings) = (diagnostics.errors(), diagnostics.warnings());
    if errors == 0 && warnings == 0 {
        out.push_str("✔ No validation issues found when analyzing the given paths.\n");
    } else {
        out.push_str(&format!("{errors} error(s), {warnings} warning(s)\n"));
    }
    (out, if errors > 0 { 1 } else { 0 })
}
