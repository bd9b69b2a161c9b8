//! The Synced sync server (being built).
