//! Threads that keep the cores taken, so that a race a test is about happens
//! often: a thread that just did one thing is preempted before the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Threads spinning until this is dropped.
#[derive(Debug)]
pub struct BusyCores {
    busy: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyCores {
    /// Starts `threads` spinning threads.
    pub fn start(threads: usize) -> Self {
        let busy = Arc::new(AtomicBool::new(true));
        let threads = (0..threads)
            .map(|_| {
                let busy = Arc::clone(&busy);
                std::thread::spawn(move || {
                    while busy.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { busy, threads }
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            // A spinning thread cannot panic.
            let _ = thread.join();
        }
    }
}
