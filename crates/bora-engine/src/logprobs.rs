//! Log-probabilities of generated tokens, as OpenAI's `logprobs` reports
//! them.
//!
//! They are the model's own log-softmax over the whole vocabulary, taken
//! from the raw logits *before* penalties, temperature, top-k/top-p and any
//! JSON constraint — the distribution the model predicted, not the
//! (reshaped) one the token was drawn from. That is what OpenAI reports, and
//! it does not change with sampling settings, so a greedy and a sampled
//! request agree on the numbers for the same prefix.

/// The log-probability of one generated token and of the most likely
/// alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (ties by
    /// id), with their log-probabilities; as many as were asked for.
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of `logits`, evaluated lazily: holds the normaliser.
#[derive(Debug, Clone)]
pub struct LogSoftmax {
    log_total: f32,
}

impl LogSoftmax {
    /// The normaliser of `logits` (non-finite logits count as impossible).
    pub fn new(logits: &[f32]) -> Self {
        let max = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Self {
                log_total: f32::INFINITY,
            };
        }
        let sum: f64 = logits
            .iter()
            .filter(|l| l.is_finite())
            .map(|&l| f64::from(l - max).exp())
            .sum();
        Self {
            log_total: max + sum.ln() as f32,
        }
    }

    /// `log p(token)` for a token with logit `logit`.
    pub fn logprob(&self, logit: f32) -> f32 {
        if logit.is_finite() {
            logit - self.log_total
        } else {
            f32::NEG_INFINITY
        }
    }
}

/// The `k` most likely tokens of `logits`, most likely first (ties by lower
/// id), with their log-probabilities.
pub fn top_logprobs(logits: &[f32], norm: &LogSoftmax, k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect();
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    ids.into_iter()
        .map(|i| (i, norm.logprob(logits[i as usize])))
        .collect()
}

/// The log-probability record of token `id` sampled from `logits` (the raw
/// model output), with `k` alternatives.
pub fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let norm = LogSoftmax::new(logits);
    TokenLogprob {
        id,
        logprob: norm.logprob(logits.get(id as usize).copied().unwrap_or(f32::NAN)),
        top: top_logprobs(logits, &norm, k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one() {
        let logits = [1.0, 2.0, 3.0, f32::NEG_INFINITY];
        let norm = LogSoftmax::new(&logits);
        let total: f32 = logits.iter().map(|&l| norm.logprob(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(norm.logprob(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // Shifting every logit does not change the distribution.
        let shifted = LogSoftmax::new(&[101.0, 102.0, 103.0]);
        assert!((shifted.logprob(103.0) - norm.logprob(3.0)).abs() < 1e-5);
    }

    #[test]
    fn top_alternatives_are_ordered_and_bounded() {
        let logits = [0.5, 3.0, 3.0, -1.0, 2.0];
        let t = token_logprob(&logits, 4, 3);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2, 4]);
        assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(t.logprob, t.top[2].1);
        assert!(t.logprob < 0.0);
        assert_eq!(token_logprob(&logits, 0, 0).top, vec![]);
        assert_eq!(token_logprob(&logits, 0, 99).top.len(), 5);
    }

    #[test]
    fn all_impossible_is_not_a_panic() {
        let t = token_logprob(&[f32::NEG_INFINITY, f32::NAN], 0, 2);
        assert_eq!(t.logprob, f32::NEG_INFINITY);
        assert!(t.top.is_empty());
    }
}
