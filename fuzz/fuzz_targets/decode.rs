//! Feeds arbitrary bytes to the payload decoder: it must return an error or a
//! payload, never panic, and a payload it accepts must encode back to bytes it
//! accepts again.
//!
//! ```text
//! cargo install cargo-fuzz
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_runtime::wire::{Compression, decode, encode};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(payload) = decode(bytes) {
        // Compared as bytes: a REAL may be NaN, which never equals itself.
        let again = encode(&payload, Compression::None);
        let decoded = decode(&again).expect("an encoded payload decodes");
        assert_eq!(encode(&decoded, Compression::None), again);
    }
});
