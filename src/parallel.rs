//! Independent pieces of work shared across the cores, their answers in the order of the
//! pieces, so that the outcome is the same on any number of cores.

/// `f` of each item, the items cut into one share per core, but into no share of fewer than
/// `min_share` items (a thread is not worth starting for less); the answers in the items' order.
pub fn map<T: Sync, R: Send>(items: &[T], min_share: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    shares(items, min_share, |_, share| {
        share.iter().map(&f).collect::<Vec<R>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// `f` of each share of the items (its first item's index, and the share), the items cut as
/// [`map`] cuts them: for work that keeps something of its own across a share's items, or
/// reads the item before it; the answers in the shares' order.
pub fn shares<T: Sync, R: Send>(
    items: &[T],
    min_share: usize,
    f: impl Fn(usize, &[T]) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = items.len().div_ceil(threads).max(min_share).max(1);
    if share >= items.len() {
        return vec![f(0, items)];
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (items.chunks(share).enumerate())
            .map(|(i, chunk)| scope.spawn(move || f(i * share, chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("the work shared out does not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers come in the items' order however the items are shared out.
    #[test]
    fn answers_keep_the_items_order() {
        let items: Vec<usize> = (0..1000).collect();
        for min_share in [0, 1, 7, 999, 1000, 5000] {
            assert_eq!(
                map(&items, min_share, |i| i * 2),
                (0..2000).step_by(2).collect::<Vec<_>>()
            );
        }
        assert!(map(&[] as &[usize], 1, |i| *i).is_empty());
    }

    /// Each share is told where it starts: together they are the items, in order.
    #[test]
    fn shares_know_where_they_start() {
        let items: Vec<usize> = (0..1000).collect();
        for min_share in [0, 1, 7, 999, 1000, 5000] {
            let shares = shares(&items, min_share, |start, share| (start, share.to_vec()));
            let mut next = 0;
            for (start, share) in &shares {
                assert_eq!(*start, next);
                assert_eq!(share[..], items[next..next + share.len()]);
                next += share.len();
            }
            assert_eq!(next, items.len());
        }
    }
}
