//! Stages on worker threads, results in input order: a bounded fan-out and fan-in.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::Scope;

/// The results of [`ordered`], in input order.
pub struct Ordered<O> {
    outputs: Vec<Receiver<O>>,
    next: usize,
}

impl<O> Iterator for Ordered<O> {
    type Item = O;

    fn next(&mut self) -> Option<O> {
        // Inputs went to the workers in turn, so result k is worker k % n's next one; a worker
        // that has hung up when its turn comes means there are no more inputs.
        let rx = self.outputs.get(self.next % self.outputs.len().max(1))?;
        let out = rx.recv().ok()?;
        self.next += 1;
        Some(out)
    }
}

/// Runs `work` over `inputs` on `workers` threads of `scope`. Each worker holds at most one input
/// waiting, one in hand and one result waiting, so memory is bounded by the number of workers,
/// not of inputs. Dropping the [`Ordered`] stops the workers and the feeding of inputs.
pub fn ordered<'scope, 'env, I, O, W>(
    scope: &'scope Scope<'scope, 'env>,
    inputs: impl Iterator<Item = I> + Send + 'scope,
    workers: usize,
    work: W,
) -> Ordered<O>
where
    I: Send + 'scope,
    O: Send + 'scope,
    W: Fn(I) -> O + Send + Sync + 'scope,
{
    let work = Arc::new(work);
    let workers = workers.max(1);
    let mut feeds = Vec::with_capacity(workers);
    let mut outputs = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (feed_tx, feed_rx) = sync_channel::<I>(1);
        let (out_tx, out_rx) = sync_channel::<O>(1);
        let work = Arc::clone(&work);
        scope.spawn(move || {
            for input in feed_rx {
                if out_tx.send(work(input)).is_err() {
                    break;
                }
            }
        });
        feeds.push(feed_tx);
        outputs.push(out_rx);
    }
    scope.spawn(move || {
        for (k, input) in inputs.enumerate() {
            if feeds[k % workers].send(input).is_err() {
                break;
            }
        }
    });
    Ordered { outputs, next: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_early_drop_stops_everything() {
        std::thread::scope(|s| {
            let out: Vec<u64> = ordered(s, 0..100u64, 3, |x| {
                // Uneven work, so the workers finish out of order.
                std::thread::sleep(std::time::Duration::from_micros((x * 37) % 200));
                x * 2
            })
            .collect();
            assert_eq!(out, (0..100).map(|x| x * 2).collect::<Vec<_>>());
            let first: Vec<u64> = ordered(s, 0.., 2, |x: u64| x).take(5).collect();
            assert_eq!(first, [0, 1, 2, 3, 4]);
        });
    }
}
