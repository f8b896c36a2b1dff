//! Choosing the next token from logits: repetition penalties, then greedy
//! or seeded random sampling with temperature, top-k and top-p.
//!
//! Everything here is pure and deterministic for a given seed, so the same
//! request with the same `seed` yields the same output.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens, with OpenAI's parameter meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add
    /// up to at least this much (1 keeps all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Random seed; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding, no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 1e-6 || self.top_k == 1
    }
}

/// Samples the tokens of one sequence, remembering what it generated for
/// the penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler for `params`, seeded from `params.seed` (or randomly).
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            counts: HashMap::new(),
        }
    }

    /// Picks the next token from `logits` (modified in place by the
    /// penalties) and records it as generated.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        apply_penalties(
            logits,
            &self.counts,
            self.params.presence_penalty,
            self.params.frequency_penalty,
        );
        let id = if self.params.is_greedy() {
            argmax(logits)
        } else {
            let candidates = candidates(logits, &self.params);
            let r: f32 = self.rng.random();
            pick(&candidates, r)
        };
        *self.counts.entry(id).or_insert(0) += 1;
        id
    }
}

/// OpenAI's penalties: `logit -= count * frequency + (count > 0) * presence`.
pub fn apply_penalties(
    logits: &mut [f32],
    counts: &HashMap<u32, u32>,
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    for (&id, &count) in counts {
        if let Some(l) = logits.get_mut(id as usize) {
            *l -= count as f32 * frequency + if count > 0 { presence } else { 0.0 };
        }
    }
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The tokens that may be sampled, most likely first, with their
/// probabilities (after temperature, top-k and top-p), summing to 1.
pub fn candidates(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f32)> {
    let mut ids: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect();
    if ids.is_empty() {
        return vec![(argmax(logits), 1.0)];
    }
    // Descending logit, ties by id: a total order, so sampling is reproducible.
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if params.top_k > 0 && params.top_k < ids.len() {
        ids.select_nth_unstable_by(params.top_k - 1, order);
        ids.truncate(params.top_k);
    }
    ids.sort_unstable_by(order);
    let t = params.temperature.max(1e-6);
    let max = logits[ids[0] as usize];
    let mut probs: Vec<(u32, f32)> = ids
        .iter()
        .map(|&i| (i, ((logits[i as usize] - max) / t).exp()))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            cumulative += p.1;
            if cumulative >= params.top_p {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
    }
    probs
}

/// The candidate at which the cumulative probability passes `r` in `[0, 1)`.
fn pick(candidates: &[(u32, f32)], r: f32) -> u32 {
    let mut cumulative = 0.0;
    for &(id, p) in candidates {
        cumulative += p;
        if r < cumulative {
            return id;
        }
    }
    candidates.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0, 3.0]), 1);
    }

    #[test]
    fn penalties_follow_openai_formula() {
        let mut logits = vec![1.0, 1.0, 1.0];
        let counts = HashMap::from([(0, 2), (2, 1)]);
        apply_penalties(&mut logits, &counts, 0.5, 0.25);
        assert_eq!(logits, vec![1.0 - 0.5 - 0.5, 1.0, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn presence_penalty_steers_greedy_away_from_repeats() {
        let params = SamplingParams {
            presence_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params);
        assert_eq!(s.sample(&mut [5.0, 4.0]), 0);
        assert_eq!(s.sample(&mut [5.0, 4.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0, 3.0, 2.0, 1.0];
        let p = SamplingParams {
            top_k: 2,
            ..SamplingParams::default()
        };
        let c = candidates(&logits, &p);
        assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((c.iter().map(|c| c.1).sum::<f32>() - 1.0).abs() < 1e-6);
        let p = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::default()
        };
        // softmax([0,3,2,1]): token 1 alone has ~0.64 >= 0.5.
        assert_eq!(candidates(&logits, &p), vec![(1, 1.0)]);
    }

    #[test]
    fn low_temperature_sharpens() {
        let logits = [1.0, 2.0];
        let hot = candidates(
            &logits,
            &SamplingParams {
                temperature: 2.0,
                ..Default::default()
            },
        );
        let cold = candidates(
            &logits,
            &SamplingParams {
                temperature: 0.25,
                ..Default::default()
            },
        );
        assert!(cold[0].1 > hot[0].1);
        assert_eq!(cold[0].0, 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                ..Default::default()
            });
            (0..20)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn pick_walks_the_cumulative_distribution() {
        let c = [(4, 0.5), (9, 0.3), (1, 0.2)];
        assert_eq!(pick(&c, 0.0), 4);
        assert_eq!(pick(&c, 0.6), 9);
        assert_eq!(pick(&c, 0.99), 1);
    }

    #[test]
    fn non_finite_logits_are_never_sampled() {
        let logits = [f32::NEG_INFINITY, 1.0, f32::NAN];
        assert_eq!(
            candidates(&logits, &SamplingParams::default()),
            vec![(1, 1.0)]
        );
    }
}
