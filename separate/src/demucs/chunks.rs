//! The chunking of `demucs.apply.apply_model`, as plain index arithmetic: which chunks a
//! pass cuts, what each chunk reads (`TensorChunk.padded`), how its output is trimmed
//! (`center_trim`) and weighted (the transition-power triangle, divided by the summed weight).
//!
//! Positions are in the coordinates of the original mix; a pass (one shift) is a window
//! `[origin, origin + length)` of it, and everything outside `[0, frames)` reads as zero —
//! which is what both `F.pad` and the shift trick's zero-padded copy give in Python.

/// `int(x)` of Python for a non-negative finite float.
fn py_int(x: f64) -> usize {
    x.max(0.0).trunc() as usize
}

/// Chunk geometry of one `apply_model(split=True)` call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPlan {
    /// `int(samplerate * segment)`: samples per chunk and what each chunk is padded to.
    pub segment_length: usize,
    /// `int((1 - overlap) * segment_length)`.
    pub stride: usize,
    /// The triangle `[1..=seg/2, seg-seg/2..=1] / max`, to the power `transition_power`.
    pub weight: Vec<f32>,
}

impl ChunkPlan {
    /// `overlap` in `[0, 1)`, `transition_power` ≥ 1, `segment_length` ≥ 1 (checked by the caller).
    pub fn new(segment_length: usize, overlap: f64, transition_power: f64) -> Self {
        let stride = py_int((1.0 - overlap) * segment_length as f64).max(1);
        let half = segment_length / 2;
        let ramp = (1..=half).chain((1..=segment_length - half).rev());
        let max = half.max(segment_length - half) as f32;
        let weight = ramp
            .map(|w| {
                let normalised = w as f32 / max;
                if transition_power == 1.0 {
                    normalised
                } else {
                    (normalised as f64).powf(transition_power) as f32
                }
            })
            .collect();
        Self {
            segment_length,
            stride,
            weight,
        }
    }

    /// Chunk offsets of a pass `length` samples long: `range(0, length, stride)`.
    pub fn offsets(&self, length: usize) -> impl Iterator<Item = usize> + '_ {
        (0..length).step_by(self.stride)
    }

    pub fn chunk_count(&self, length: usize) -> usize {
        length.div_ceil(self.stride)
    }

    /// Samples a chunk at `offset` covers: `min(length - offset, segment_length)`.
    pub fn chunk_length(&self, length: usize, offset: usize) -> usize {
        (length - offset).min(self.segment_length)
    }

    /// `sum_weight[position]` of a pass `length` long: the weights of every chunk covering it.
    pub fn sum_weight(&self, length: usize, position: usize) -> f32 {
        let first = (position + 1)
            .saturating_sub(self.segment_length)
            .div_ceil(self.stride);
        let last = position / self.stride;
        (first..=last)
            .map(|k| k * self.stride)
            .filter(|&offset| offset < length)
            .map(|offset| self.weight[position - offset])
            .sum()
    }
}

/// What one chunk reads and where its output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First sample read (`TensorChunk.padded`), in mix coordinates; may be negative.
    pub read_start: isize,
    /// Samples read: the padded length (`valid_length`), before any padding to the graph's length.
    pub read_length: usize,
    /// Samples of the model output kept (`center_trim` to the chunk length).
    pub length: usize,
    /// Where in the model output (of `read_length`) the kept samples start.
    pub trim_start: usize,
    /// Mix position of the first kept sample (may be negative inside a shifted pass).
    pub output_start: isize,
    /// Chunk offset inside its pass (index into the pass's weights).
    pub pass_offset: usize,
    /// The pass's length (its summed weights depend on it).
    pub pass_length: usize,
}

impl Chunk {
    /// Chunk at `pass_offset` of a pass starting at `pass_origin` and `pass_length` long.
    pub fn new(
        plan: &ChunkPlan,
        pass_origin: isize,
        pass_length: usize,
        pass_offset: usize,
    ) -> Self {
        let length = plan.chunk_length(pass_length, pass_offset);
        let read_length = plan.segment_length;
        let delta = read_length - length;
        let chunk_start = pass_origin + pass_offset as isize;
        Self {
            read_start: chunk_start - (delta / 2) as isize,
            read_length,
            length,
            // center_trim: drop delta // 2 on the left, the rest on the right.
            trim_start: delta / 2,
            output_start: chunk_start,
            pass_offset,
            pass_length,
        }
    }
}

/// Copies `signal[start..start + out.len()]` into `out`, zeros outside the signal, mapping
/// each sample through `map` (the mix normalisation; padding stays exactly zero as in Python).
pub fn read_padded(signal: &[f32], start: isize, out: &mut [f32], map: impl Fn(f32) -> f32) {
    let len = signal.len() as isize;
    for (i, slot) in out.iter_mut().enumerate() {
        let at = start + i as isize;
        *slot = if (0..len).contains(&at) {
            map(signal[at as usize])
        } else {
            0.0
        };
    }
}

/// A small deterministic generator for the shift offsets (splitmix64): `random.randint(0, max)`
/// of Python in spirit, reproducible from a seed (not the same stream as Python's).
#[derive(Debug, Clone)]
pub struct ShiftRng(u64);

impl ShiftRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (rejection sampling, no modulo bias).
    pub fn inclusive(&mut self, max: usize) -> usize {
        let span = max as u64 + 1;
        let zone = u64::MAX - (u64::MAX % span);
        loop {
            let value = self.next_u64();
            if value < zone {
                return (value % span) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_the_demucs_triangle() {
        let plan = ChunkPlan::new(5, 0.25, 1.0);
        assert_eq!(plan.stride, 3); // int(0.75 * 5)
        assert_eq!(
            plan.weight,
            [1.0 / 3.0, 2.0 / 3.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]
        );
        let even = ChunkPlan::new(4, 0.5, 2.0);
        assert_eq!(even.stride, 2);
        assert_eq!(even.weight, [0.25, 1.0, 1.0, 0.25]);
    }

    #[test]
    fn sum_weight_matches_explicit_accumulation() {
        for (segment, overlap, length) in [(10, 0.25, 37), (9, 0.5, 40), (7, 0.0, 7), (12, 0.9, 5)]
        {
            let plan = ChunkPlan::new(segment, overlap, 1.0);
            let mut explicit = vec![0.0f32; length];
            for offset in plan.offsets(length) {
                for p in 0..plan.chunk_length(length, offset) {
                    explicit[offset + p] += plan.weight[p];
                }
            }
            for (position, &want) in explicit.iter().enumerate() {
                let got = plan.sum_weight(length, position);
                assert!((got - want).abs() < 1e-6, "{segment} {overlap} {position}");
            }
        }
    }

    #[test]
    fn last_chunk_is_padded_around_its_centre_and_trimmed_back() {
        let plan = ChunkPlan::new(10, 0.25, 1.0);
        // length 23: offsets 0, 7, 14, 21; the last covers 2 samples.
        let chunk = Chunk::new(&plan, 0, 23, 21);
        assert_eq!(chunk.length, 2);
        assert_eq!(chunk.read_start, 21 - 4);
        assert_eq!(chunk.trim_start, 4);
        let mut out = [9.0; 10];
        read_padded(&[1.0; 23], chunk.read_start, &mut out, |x| x * 2.0);
        assert_eq!(out, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn shift_offsets_are_reproducible_and_in_range() {
        let draw = |seed| {
            let mut rng = ShiftRng::new(seed);
            (0..100).map(|_| rng.inclusive(22050)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(3).iter().all(|&x| x <= 22050));
        let mut rng = ShiftRng::new(1);
        let seen: std::collections::HashSet<_> = (0..200).map(|_| rng.inclusive(2)).collect();
        assert_eq!(seen.len(), 3);
    }
}
