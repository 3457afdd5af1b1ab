//! Bounded memory: what a demucs run allocates beyond its output stems must not grow with
//! the input's length. Counted with a global allocator wrapper (this test binary only);
//! ONNX Runtime's own arena is per chunk and not counted here.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use separate::demucs::{DemucsModel, DemucsOptions};
use separate::{Manifest, NoListener, RuntimeOptions};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn load_tiny() -> DemucsModel {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demucs/tiny/manifest.toml");
    let manifest = Manifest::load(&path).expect("fixture manifest");
    let options = RuntimeOptions {
        intra_threads: Some(1),
        ..RuntimeOptions::default()
    };
    DemucsModel::load(&manifest, &options)
        .expect("load the tiny demucs fixture (needs ONNX Runtime)")
}

/// A deterministic stereo signal (not silence: the normalisation divides by its std).
fn signal(frames: usize) -> Vec<Vec<f32>> {
    (0..2)
        .map(|c| {
            (0..frames)
                .map(|i| {
                    let t = i as f32 / 44100.0;
                    0.3 * (t * (220.0 + 110.0 * c as f32) * std::f32::consts::TAU).sin()
                        + 0.1 * ((i * 7919 + c * 104_729) % 2003) as f32 / 2003.0
                })
                .collect()
        })
        .collect()
}

/// Bytes allocated at the peak of a run beyond what was live before it and the stems it returns.
fn working_memory(model: &DemucsModel, seconds: f32) -> usize {
    let mix = signal((seconds * 44100.0) as usize);
    let before = CURRENT.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let stems = model
        .separate(&mix, &DemucsOptions::default(), &mut NoListener)
        .expect("separate");
    let output_bytes: usize = stems.iter().flatten().map(|c| c.capacity() * 4).sum();
    let working = PEAK.load(Ordering::SeqCst) - before - output_bytes;
    eprintln!("{seconds} s: {working} B of working memory");
    working
}

#[test]
fn working_memory_does_not_grow_with_duration() {
    let model = load_tiny();
    let short = working_memory(&model, 1.5);
    let long = working_memory(&model, 6.0);
    // Four times the audio (~6 vs ~26 chunks): the working set is one chunk's buffers.
    assert!(
        long <= short + short / 10,
        "working memory grew with duration: {short} B for 1.5 s, {long} B for 6 s"
    );
    // And it is about one chunk's worth, not the track's (6 s of 4 stereo stems = 8.5 MB).
    assert!(long < 8 << 20, "working memory {long} B");
}

/// A 30-minute track end to end (≈ 8000 chunks of the tiny model; ~2.5 GB of output stems).
/// Run on demand: `cargo test -p separate --test demucs_memory -- --ignored`.
#[test]
#[ignore = "minutes long; run on demand"]
fn a_thirty_minute_track_separates_in_bounded_memory() {
    let model = load_tiny();
    let working = working_memory(&model, 30.0 * 60.0);
    let short = working_memory(&model, 1.5);
    assert!(
        working <= short + short / 10,
        "{working} B for 30 min vs {short} B for 1.5 s"
    );
}
