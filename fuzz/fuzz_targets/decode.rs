//! Feeds the payload decoder each input twice: as it is, and with its frame
//! repaired ([`repair`]: lengths and checksum), so that mutations reach the
//! body. The decoder must return an error or a payload, never panic, and a
//! payload it accepts must encode back to bytes it accepts again.
//!
//! From `fuzz/`, with the seeds of `seeds/` (see the book's wire-format
//! chapter for why `-s none -a`):
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a decode corpus/decode seeds -- -rss_limit_mb=256
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_runtime::wire::{Compression, decode, encode};
use sync_runtime_fuzz::repair;

fuzz_target!(|input: &[u8]| {
    // As it is, the input still reaches the frame's own errors: a wrong
    // checksum, a length that lies.
    round_trip(input);
    round_trip(&repair(input));
});

fn round_trip(bytes: &[u8]) {
    if let Ok(payload) = decode(bytes) {
        // Compared as bytes: a REAL may be NaN, which never equals itself.
        let again = encode(&payload, Compression::None);
        let decoded = decode(&again).expect("an encoded payload decodes");
        assert_eq!(encode(&decoded, Compression::None), again);
    }
}
