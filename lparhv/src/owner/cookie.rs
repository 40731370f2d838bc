//! Where cookie values come from. Production uses the OS CSPRNG
//! ([`OsCookieSource`]); tests inject a deterministic source. The table only
//! asks for raw 64-bit values and does the uniqueness check itself.

use super::hcall::Reason;

/// A source of candidate cookie values.
pub trait CookieSource {
    /// A fresh 64-bit value, or `Reason::EntropyFailure`.
    fn next_value(&mut self) -> Result<u64, Reason>;
}

/// Cookies from the operating system's CSPRNG (`getrandom`): not guessable
/// by a guest that has seen any number of other cookies.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsCookieSource;

impl CookieSource for OsCookieSource {
    fn next_value(&mut self) -> Result<u64, Reason> {
        getrandom::u64().map_err(|_| Reason::EntropyFailure)
    }
}

/// Deterministic cookies for tests and reproducible runs: SplitMix64 from a
/// seed. Predictable by design, so never use it for real guests.
#[derive(Debug, Clone)]
pub struct SeededCookieSource {
    state: u64,
}

impl SeededCookieSource {
    pub fn new(seed: u64) -> Self {
        SeededCookieSource { state: seed }
    }
}

impl CookieSource for SeededCookieSource {
    fn next_value(&mut self) -> Result<u64, Reason> {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
}

/// Replays a fixed list of values, then fails like a broken entropy source.
/// Lets tests force collisions and zero values.
#[derive(Debug, Clone)]
pub struct ScriptedCookieSource {
    values: Vec<u64>,
    next: usize,
}

impl ScriptedCookieSource {
    pub fn new(values: Vec<u64>) -> Self {
        ScriptedCookieSource { values, next: 0 }
    }
}

impl CookieSource for ScriptedCookieSource {
    fn next_value(&mut self) -> Result<u64, Reason> {
        let value = self.values.get(self.next).copied().ok_or(Reason::EntropyFailure)?;
        self.next += 1;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_source_gives_distinct_values() {
        let mut source = OsCookieSource;
        let a = source.next_value().unwrap();
        let b = source.next_value().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn seeded_source_is_reproducible_and_seed_dependent() {
        let take = |seed| {
            let mut s = SeededCookieSource::new(seed);
            (0..4).map(|_| s.next_value().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(take(7), take(7));
        assert_ne!(take(7), take(8));
    }

    #[test]
    fn scripted_source_runs_dry_as_entropy_failure() {
        let mut s = ScriptedCookieSource::new(vec![5]);
        assert_eq!(s.next_value(), Ok(5));
        assert_eq!(s.next_value(), Err(Reason::EntropyFailure));
    }
}
