//! Arbitrary bytes into the decoder: it must return (Ok or a typed error), never panic, hang
//! or exhaust memory. Calls the decoder *without* its panic guard, so that a panic inside
//! symphonia is reported as a crash instead of being turned into `corrupt_audio`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = decode::Limits {
        // Keep each run small: a header may claim hours of audio.
        max_duration_secs: 20.0,
        min_duration_secs: 0.0,
        ..decode::Limits::default()
    };
    let _ = decode::decoder::decode_unguarded(
        std::io::Cursor::new(data.to_vec()),
        &limits,
        &decode::DecodeOptions::default(),
    );
});
