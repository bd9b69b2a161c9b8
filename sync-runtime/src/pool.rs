//! Read-only connections to a database file, on threads of their own: in WAL
//! mode a reader sees the last commit as of its first step, and neither waits
//! for the write connection nor makes it wait, so a long merge or a bulk write
//! does not hold up the app's reads.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::job::{Caller, reply};
use crate::sql;
use crate::tx::AppSql;

/// A read connection, and the app-SQL flags its reads run under (see
/// [`crate::tx::as_user`]).
pub(crate) struct Reader {
    pub(crate) conn: Connection,
    pub(crate) user_sql: Arc<AppSql>,
}

type Job = Box<dyn FnOnce(Result<&Reader, &Error>) + Send>;

/// Up to `size` read connections, each on its thread, opened when reads first
/// need that many at once and kept until the pool is dropped. A read goes to
/// the thread that became idle last (its connection's cache is the warmest),
/// to a new thread while there are fewer than `size`, or else waits in line
/// for the next thread done.
pub(crate) struct ReadPool {
    state: Arc<Mutex<State>>,
    open: Arc<Opener>,
    size: usize,
}

#[derive(Default)]
struct State {
    /// The way to each thread started, by its number; the pool holds the only
    /// sender of each, so that dropping the pool ends the threads' waits.
    threads: Vec<mpsc::Sender<Job>>,
    /// The threads waiting for a job, the last one idle at the end.
    idle: Vec<usize>,
    /// Jobs no thread was free for.
    waiting: VecDeque<Job>,
    /// Threads started and not ended.
    started: usize,
    /// Why a read connection could not be opened, once one could not: the
    /// reads after it are handed back without trying again.
    failed: Option<Arc<Error>>,
    /// Set when the pool is dropped: threads end after their job.
    closed: bool,
}

/// How a read connection is opened.
struct Opener {
    path: PathBuf,
    settings: String,
}

impl ReadPool {
    /// A pool of up to `size` (at least 1) read connections to the database at
    /// `path`, which the write connection has opened, set up and put in WAL
    /// mode; `settings` are the connection's pragmas (cache size, busy
    /// timeout).
    pub(crate) fn new(path: &Path, settings: String, size: usize) -> Self {
        Self {
            state: Arc::default(),
            open: Arc::new(Opener {
                path: path.to_path_buf(),
                settings,
            }),
            size: size.max(1),
        }
    }

    /// Runs `f` on a read connection, in the caller's tracing span; a panic in
    /// `f` is resumed in the caller. Where no read connection can be opened
    /// (the file's directory is gone, no file descriptor is left), `f` gets
    /// the error instead, and [`Error::Closed`] means the pool is.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Result<&Reader, &Error>) -> T + Send + 'static,
    {
        let caller = Caller::here();
        let (answer, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |reader| {
            let _ = answer.send(caller.run(|| f(reader)));
        });
        self.dispatch(job);
        reply(result).await.map_err(|()| Error::Closed)
    }

    fn dispatch(&self, job: Job) {
        let mut state = lock(&self.state);
        if let Some(failed) = state.failed.clone() {
            drop(state);
            return job(Err(&failed));
        }
        let mut job = job;
        while let Some(thread) = state.idle.pop() {
            match state.threads[thread].send(job) {
                Ok(()) => return,
                // The thread ended (it panicked outside a job): try the next.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        if state.started >= self.size {
            state.waiting.push_back(job);
            return;
        }
        let (to_thread, jobs) = mpsc::channel();
        let number = state.threads.len();
        state.threads.push(to_thread);
        state.started += 1;
        drop(state);
        let (state, open) = (Arc::clone(&self.state), Arc::clone(&self.open));
        let (first, first_back) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name("synced-read".into())
            .spawn(move || {
                if let Ok(job) = first_back.recv() {
                    serve(number, job, &jobs, &state, &open);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = first.send(job);
            }
            // No thread for it: this read runs on the write connection.
            Err(_) => {
                lock(&self.state).started -= 1;
                job(Err(&Error::Closed));
            }
        }
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.closed = true;
        // Idle threads see their channel close and end.
        state.threads.clear();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read thread: opens its connection, runs `first`, then the jobs waiting
/// or sent to it, until the pool is dropped. A connection that cannot be
/// opened fails the job that asked for it, and the thread ends.
fn serve(
    number: usize,
    first: Job,
    jobs: &mpsc::Receiver<Job>,
    state: &Mutex<State>,
    open: &Opener,
) {
    let reader = match open.open() {
        Ok(reader) => reader,
        Err(e) => {
            let failed = Arc::new(e);
            let waiting = {
                let mut shared = lock(state);
                shared.started -= 1;
                shared.failed = Some(Arc::clone(&failed));
                std::mem::take(&mut shared.waiting)
            };
            tracing::warn!(error = %failed, "reads run on the write connection: no read connection opens");
            for job in std::iter::once(first).chain(waiting) {
                job(Err(&failed));
            }
            return;
        }
    };
    let mut job = first;
    loop {
        job(Ok(&reader));
        let mut shared = lock(state);
        if shared.closed {
            return;
        }
        if let Some(next) = shared.waiting.pop_front() {
            job = next;
            continue;
        }
        shared.idle.push(number);
        drop(shared);
        match jobs.recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

impl Opener {
    fn open(&self) -> Result<Reader> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut conn =
            Connection::open_with_flags(&self.path, flags).map_err(|source| Error::Open {
                path: self.path.clone(),
                source: source.into(),
            })?;
        conn.execute_batch(&self.settings)?;
        conn.execute_batch(sql::READ_ONLY)?;
        conn.set_prepared_statement_cache_capacity(128);
        let user_sql = Arc::new(AppSql::default());
        let app = Arc::clone(&user_sql);
        conn.authorizer(Some(move |context: AuthContext<'_>| {
            // The runtime's own reads take a snapshot (`BEGIN`); the app's may
            // leave nothing behind.
            let app_sql = app.running.load(std::sync::atomic::Ordering::Relaxed);
            if app_sql && crate::guard::changes_connection(&context.action) {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }))?;
        Ok(Reader { conn, user_sql })
    }
}
