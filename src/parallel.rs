//! Independent pieces of work shared across the cores, their answers in the order of the
//! pieces, so that the outcome is the same on any number of cores.

/// `f` of each item, the items cut into one share per core, but into no share of fewer than
/// `min_share` items (a thread is not worth starting for less); the answers in the items' order.
pub fn map<T: Sync, R: Send>(items: &[T], min_share: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = items.len().div_ceil(threads).max(min_share).max(1);
    if share >= items.len() {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(share)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("the work shared out does not panic"))
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
}
