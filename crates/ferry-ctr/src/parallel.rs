//! Row ranges of a batch computed at the same time on the CPU, each on its own thread inside a
//! single-threaded rayon pool, so the backend's products in a range stay on that range's core.
//! Two independent single-threaded products keep two cores busier than one product split in
//! two, and the element-wise work between products runs in parallel too (docs/decisions.md).

use rayon::ThreadPool;

/// `n` single-threaded pools, or none when `n < 2` or one could not start (thread limits): the
/// caller then computes on one thread, with the kernels' own parallelism, as before.
pub(crate) fn single_thread_pools(n: usize, name: &'static str) -> Vec<ThreadPool> {
    if n < 2 {
        return Vec::new();
    }
    let pools: Vec<ThreadPool> = (0..n)
        .filter_map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("{name}-{i}"))
                .build()
                .ok()
        })
        .collect();
    if pools.len() == n { pools } else { Vec::new() }
}

/// `f(index, item)` for every item, each on its own scoped thread inside its own pool; results
/// in item order. A panic in one is re-raised here, on the caller's thread, so a caller that
/// catches panics (training turns an allocation failure into a recovery) sees it as if it had
/// computed on one thread.
pub(crate) fn on_pools<I, T, F>(items: &[I], pools: &[ThreadPool], f: F) -> Vec<T>
where
    I: Sync,
    T: Send,
    F: Fn(usize, &I) -> T + Sync,
{
    let f = &f;
    let joined: Vec<std::thread::Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .zip(pools)
            .enumerate()
            .map(|(i, (item, pool))| s.spawn(move || pool.install(|| f(i, item))))
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    joined
        .into_iter()
        .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        .collect()
}
