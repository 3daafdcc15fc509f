//! [`Rng`]: the generator's random stream. Its algorithm is part of the output: the same seed
//! gives the same bytes on every machine and with every version of the dependencies.

use std::sync::Arc;

/// SplitMix64: tiny, fast, and fixed forever (unlike `StdRng`, whose algorithm may change).
#[derive(Debug)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        rng.next();
        rng
    }

    /// The stream of patient `n` of a population of `seed`. Its start is a SplitMix64 output,
    /// not `seed` offset by a multiple of the step: streams offset by the step are one stream
    /// shifted, and patients would share their resources' ids and values.
    pub(super) fn for_patient(seed: u64, n: usize) -> Self {
        let mut start = Rng(seed ^ (n as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng::new(start.next())
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    pub(super) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A version-4-shaped UUID.
    pub(super) fn uuid(&mut self) -> Arc<str> {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
        .into()
    }
}
