//! The book includes its code from the examples (`{{#include path:anchor}}`):
//! every included file and anchor must exist, so that a renamed anchor cannot
//! leave a chapter without its code.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

use std::path::Path;

#[test]
fn every_include_of_the_book_names_an_existing_file_and_anchor() {
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src");
    let mut includes = 0;
    for chapter in std::fs::read_dir(&book).unwrap() {
        let chapter = chapter.unwrap().path();
        if chapter.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&chapter).unwrap();
        for include in text.split("{{#include ").skip(1) {
            let target = include.split("}}").next().unwrap().trim();
            let (file, anchor) = match target.split_once(':') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target, None),
            };
            let path = book.join(file);
            let code = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", chapter.display(), path.display()));
            if let Some(anchor) = anchor {
                for marker in ["ANCHOR", "ANCHOR_END"] {
                    let line = format!("{marker}: {anchor}");
                    assert!(
                        code.lines().any(|l| l.trim_end().ends_with(&line)),
                        "{}: {} has no `{line}`",
                        chapter.display(),
                        path.display()
                    );
                }
            }
            includes += 1;
        }
    }
    assert!(includes > 10, "only {includes} includes found");
}
