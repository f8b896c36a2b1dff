//! Load balancing: least outstanding requests, ties broken round-robin.
//!
//! Pure decision logic, no I/O and no clock: the caller passes the current
//! in-flight count of every backend and gets an index back.

/// Chooses among a service's backends.
///
/// Picks a backend with the fewest requests in flight. Among equally loaded
/// backends it takes the first one at or after a rotating cursor, then moves
/// the cursor past it, so equal load spreads evenly instead of piling onto
/// backend 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balancer {
    /// Where the next tie-break scan starts.
    cursor: usize,
}

impl Balancer {
    /// A balancer whose first tie-break scan starts at backend `cursor`.
    pub fn with_cursor(cursor: usize) -> Self {
        Self { cursor }
    }

    /// The index of the backend to use, given `loads[i]` = requests in
    /// flight at backend `i`, never one listed in `excluded`.
    ///
    /// Returns `None` when every backend is excluded (or there is none).
    pub fn pick(&mut self, loads: &[usize], excluded: &[usize]) -> Option<usize> {
        self.pick_by(loads.len(), |index| loads[index], excluded)
    }

    /// Like [`Balancer::pick`] over `n` backends whose loads are read
    /// through `load_of`, so callers need not collect them first.
    pub fn pick_by(
        &mut self,
        n: usize,
        load_of: impl Fn(usize) -> usize,
        excluded: &[usize],
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = self.cursor % n;
        let mut best: Option<(usize, usize)> = None; // (index, load)
        for offset in 0..n {
            let index = (start + offset) % n;
            if excluded.contains(&index) {
                continue;
            }
            let load = load_of(index);
            // Strictly less: among ties the first one after the cursor stays.
            if best.is_none_or(|(_, best_load)| load < best_load) {
                best = Some((index, load));
            }
        }
        let (index, _) = best?;
        self.cursor = index + 1;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_or_all_excluded_gives_none() {
        let mut balancer = Balancer::default();
        assert_eq!(balancer.pick(&[], &[]), None);
        assert_eq!(balancer.pick(&[0, 0], &[0, 1]), None);
    }

    #[test]
    fn picks_the_least_loaded() {
        let mut balancer = Balancer::default();
        assert_eq!(balancer.pick(&[3, 1, 2], &[]), Some(1));
        assert_eq!(balancer.pick(&[0, 1, 2], &[]), Some(0));
        assert_eq!(balancer.pick(&[5, 5, 4], &[]), Some(2));
    }

    #[test]
    fn equal_load_goes_round_robin() {
        let mut balancer = Balancer::default();
        let picks: Vec<_> = (0..6)
            .map(|_| balancer.pick(&[0, 0, 0], &[]).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ties_among_a_subset_alternate() {
        let mut balancer = Balancer::default();
        let picks: Vec<_> = (0..4)
            .map(|_| balancer.pick(&[1, 7, 1], &[]).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn excluded_backends_are_skipped() {
        let mut balancer = Balancer::default();
        assert_eq!(balancer.pick(&[0, 9], &[0]), Some(1));
        assert_eq!(balancer.pick(&[0], &[]), Some(0));
    }

    #[test]
    fn survives_a_shrinking_backend_list() {
        let mut balancer = Balancer::with_cursor(7);
        assert_eq!(balancer.pick(&[0, 0], &[]), Some(1));
    }

    proptest! {
        #[test]
        fn always_picks_a_minimum_among_the_allowed(
            loads in proptest::collection::vec(0usize..8, 0..12),
            excluded in proptest::collection::vec(0usize..12, 0..4),
            cursor in 0usize..64,
        ) {
            let mut balancer = Balancer::with_cursor(cursor);
            let allowed: Vec<usize> = (0..loads.len()).filter(|i| !excluded.contains(i)).collect();
            match balancer.pick(&loads, &excluded) {
                None => prop_assert!(allowed.is_empty()),
                Some(index) => {
                    prop_assert!(allowed.contains(&index));
                    let min = allowed.iter().map(|&i| loads[i]).min().unwrap();
                    prop_assert_eq!(loads[index], min);
                }
            }
        }

        #[test]
        fn equal_load_spreads_evenly(n in 1usize..10, rounds in 1usize..20, cursor in 0usize..64) {
            let mut balancer = Balancer::with_cursor(cursor);
            let loads = vec![3; n];
            let mut hits = vec![0usize; n];
            for _ in 0..n * rounds {
                hits[balancer.pick(&loads, &[]).unwrap()] += 1;
            }
            prop_assert!(hits.iter().all(|&h| h == rounds), "hits {:?}", hits);
        }

        #[test]
        fn concurrent_requests_fill_backends_level(n in 1usize..8, requests in 0usize..64) {
            // Each pick adds a request that stays in flight: the loads must
            // never differ by more than one.
            let mut balancer = Balancer::default();
            let mut loads = vec![0usize; n];
            for _ in 0..requests {
                let index = balancer.pick(&loads, &[]).unwrap();
                loads[index] += 1;
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                prop_assert!(max - min <= 1, "loads {:?}", loads);
            }
        }
    }
}
