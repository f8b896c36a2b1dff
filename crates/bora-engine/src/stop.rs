//! Stop strings: cut the output at the first occurrence of any of them,
//! while streaming, without ever emitting part of a stop string.

/// What [`StopMatcher::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string yet; this text is safe to emit (may be empty when the
    /// end of the text could be the start of a stop string).
    Continue(String),
    /// A stop string matched: emit this text (what preceded it) and finish.
    Stopped(String),
}

/// Watches generated text for stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds newly generated text.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_string());
        }
        self.pending.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(before);
        }
        // Hold back the longest tail that could still grow into a stop string.
        let hold_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let emit = self.pending[..hold_from].to_string();
        self.pending.drain(..hold_from);
        StopOutcome::Continue(emit)
    }

    /// At the end of generation: the held-back text, which matched no stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                StopOutcome::Continue(s) => out.push_str(&s),
                StopOutcome::Stopped(s) => {
                    out.push_str(&s);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(feed(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_inside_one_delta() {
        assert_eq!(feed(&["END"], &["abcENDdef"]), ("abc".into(), true));
    }

    #[test]
    fn stop_split_across_deltas_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        assert_eq!(m.push("Hello\n"), StopOutcome::Continue("Hello".into()));
        assert_eq!(m.push("\nmore"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(feed(&["STOP"], &["ST", "ay"]), ("STay".into(), false));
        assert_eq!(feed(&["STOP"], &["xS", "T"]), ("xST".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(feed(&["c", "b"], &["abc"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        assert_eq!(feed(&["é!"], &["caf", "é", "!x"]), ("caf".into(), true));
        assert_eq!(feed(&["日本"], &["今日", "は"]), ("今日は".into(), false));
    }
}
