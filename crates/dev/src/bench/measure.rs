//! The measuring loop the benchmarks share: a number of loops of calls,
//! run for a while, counted, with their latencies.

use std::time::{Duration, Instant};

pub struct Cell {
    pub per_second: f64,
    pub p50: Duration,
}

/// Run `loops` loops of calls for `seconds`; every call must succeed.
pub async fn measure<F, Fut>(loops: usize, seconds: f64, make: impl Fn(usize) -> F) -> anyhow::Result<Cell>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..loops)
        .map(|i| {
            let mut call = make(i);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    call().await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Ok(Cell { per_second: all.len() as f64 / elapsed, p50: all.get(all.len() / 2).copied().unwrap_or_default() })
}
