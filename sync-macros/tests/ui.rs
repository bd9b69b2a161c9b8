//! Compile-fail and pass tests of `#[derive(Synced)]`.
//!
//! Regenerate the `.stderr` snapshots with
//! `TRYBUILD=overwrite cargo test -p sync-macros --test ui`, then read every one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
