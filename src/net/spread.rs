//! Spread jobs over several servers: the one work queue behind both fleets of this project,
//! generation (`remote::fleet::Fleet::generate`) and judging (`judge::http::CompletionsFleet`).
//!
//! Every server gets its own worker threads; all take jobs from one queue. A job that fails
//! transiently (its server's retries spent) drops that server for the rest of the batch and
//! goes back to the queue for another; a permanent failure stops every worker. A worker that
//! finds the queue empty waits while jobs are still in flight elsewhere, since a dropped
//! server's job may come back. Results are handed to the caller's thread (which may hold
//! things that are not `Sync`, e.g. a tch model) as they arrive. Pure std; no I/O of its own.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// How one attempt at a job failed.
pub enum JobFailure<E> {
    /// The server is unusable for now: drop it, give the job to another.
    Transient(E),
    /// The job can never succeed: stop.
    Permanent(E),
}

/// Why `spread` stopped before every job was done.
#[derive(Debug)]
pub enum SpreadError<E> {
    Permanent(E),
    /// Every server was dropped; the last transient failure.
    AllDown(E),
    /// The cancel flag was set.
    Cancelled,
    /// `deliver` refused a result.
    Delivery(E),
}

/// Run `jobs` (indices `0..jobs`) with `workers[s]` threads for server `s`; `run(s, job)` does
/// one job on server `s`. Each result is passed to `deliver(job, server, result)` on the
/// calling thread, in completion order. Returns the servers dropped along the way.
pub fn spread<R: Send, E: Send>(
    jobs: usize,
    workers: &[usize],
    cancel: Option<&AtomicBool>,
    run: impl Fn(usize, usize) -> Result<R, JobFailure<E>> + Sync,
    mut deliver: impl FnMut(usize, usize, R) -> Result<(), E>,
) -> Result<Vec<usize>, SpreadError<E>> {
    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..jobs).collect());
    let pending = AtomicUsize::new(jobs);
    let alive: Vec<AtomicBool> = workers.iter().map(|_| AtomicBool::new(true)).collect();
    let stop: Mutex<Option<SpreadError<E>>> = Mutex::new(None);
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let stopped = |stop: &Mutex<Option<SpreadError<E>>>| stop.lock().map(|f| f.is_some()).unwrap_or(true);
    let (tx, rx) = mpsc::channel::<(usize, usize, R)>();
    let mut delivery = None;
    std::thread::scope(|scope| {
        for (s, &n) in workers.iter().enumerate() {
            for _ in 0..n.min(jobs).max(1) {
                let (tx, queue, pending, alive, stop, run) = (tx.clone(), &queue, &pending, &alive, &stop, &run);
                scope.spawn(move || loop {
                    if cancelled() || !alive[s].load(Ordering::SeqCst) || stopped(stop) {
                        return;
                    }
                    let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        // Jobs in flight elsewhere may still come back to the queue (their
                        // server dropped): wait for them before leaving.
                        if pending.load(Ordering::SeqCst) == 0 {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    match run(s, job) {
                        Ok(r) => {
                            pending.fetch_sub(1, Ordering::SeqCst);
                            if tx.send((job, s, r)).is_err() {
                                return;
                            }
                        }
                        Err(JobFailure::Permanent(e)) => {
                            if let Ok(mut f) = stop.lock() {
                                f.get_or_insert(SpreadError::Permanent(e));
                            }
                            return;
                        }
                        Err(JobFailure::Transient(e)) => {
                            alive[s].store(false, Ordering::SeqCst);
                            if let Ok(mut q) = queue.lock() {
                                q.push_front(job);
                            }
                            if alive.iter().all(|a| !a.load(Ordering::SeqCst)) {
                                if let Ok(mut f) = stop.lock() {
                                    f.get_or_insert(SpreadError::AllDown(e));
                                }
                            }
                            return;
                        }
                    }
                });
            }
        }
        drop(tx);
        for (job, s, r) in rx {
            if delivery.is_none() {
                if let Err(e) = deliver(job, s, r) {
                    delivery = Some(e);
                    if let Ok(mut f) = stop.lock() {
                        f.get_or_insert(SpreadError::Cancelled);
                    }
                }
            }
        }
    });
    if let Some(e) = delivery {
        return Err(SpreadError::Delivery(e));
    }
    if let Some(e) = stop.into_inner().ok().flatten() {
        return Err(e);
    }
    if cancelled() {
        return Err(SpreadError::Cancelled);
    }
    Ok(alive.iter().enumerate().filter(|(_, a)| !a.load(Ordering::SeqCst)).map(|(s, _)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_servers_job_is_done_by_another_and_results_come_back_once_each() {
        // Server 0 fails every job transiently; server 1 does them all, starting only once
        // server 0 has failed one (so the failover path is always taken).
        let failed = AtomicBool::new(false);
        let mut got = Vec::new();
        let down = spread(
            20,
            &[2, 2],
            None,
            |s, job| {
                if s == 0 {
                    failed.store(true, Ordering::SeqCst);
                    return Err(JobFailure::Transient(format!("down {job}")));
                }
                while !failed.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(job * 10)
            },
            |job, s, r| {
                got.push((job, s, r));
                Ok::<(), String>(())
            },
        )
        .expect("server 1 finishes");
        assert_eq!(down, vec![0]);
        got.sort();
        assert_eq!(got, (0..20).map(|j| (j, 1, j * 10)).collect::<Vec<_>>());
    }

    #[test]
    fn every_server_down_or_a_permanent_failure_stops_with_its_error() {
        let r = spread(5, &[1, 1], None, |s, _| Err::<(), _>(JobFailure::Transient(s)), |_, _, _| Ok(()));
        assert!(matches!(r, Err(SpreadError::AllDown(_))), "{r:?}");
        let r = spread(5, &[3], None, |_, job| if job == 2 { Err(JobFailure::Permanent(job)) } else { Ok(()) }, |_, _, _| Ok(()));
        assert!(matches!(r, Err(SpreadError::Permanent(2))), "{r:?}");
        let cancel = AtomicBool::new(true);
        let r = spread(5, &[1], Some(&cancel), |_, _| Ok::<(), JobFailure<()>>(()), |_, _, _| Ok(()));
        assert!(matches!(r, Err(SpreadError::Cancelled)), "{r:?}");
    }
}
