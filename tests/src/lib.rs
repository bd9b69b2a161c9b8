//! End-to-end tests of Synced across its crates live in `tests/`; this library is
//! empty.
