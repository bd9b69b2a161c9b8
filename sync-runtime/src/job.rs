//! Work handed to a thread that owns a connection: it runs in the caller's
//! tracing span, and its result (or its panic) goes back to the caller.

use std::panic::{self, AssertUnwindSafe};

use tokio::sync::oneshot;

/// What a job sends back: its result, or the panic that ended it.
pub(crate) type Reply<R> = std::thread::Result<R>;

/// Where a job was asked for: it runs in the caller's span, for the caller's
/// subscriber, so that what it records (a merge's counts) shows there.
pub(crate) struct Caller {
    span: tracing::Span,
    dispatch: tracing::Dispatch,
}

impl Caller {
    pub(crate) fn here() -> Self {
        Self {
            span: tracing::Span::current(),
            dispatch: tracing::dispatcher::get_default(tracing::Dispatch::clone),
        }
    }

    /// Runs `f` as the caller would, catching a panic to resume in the caller.
    pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> Reply<R> {
        tracing::dispatcher::with_default(&self.dispatch, || {
            panic::catch_unwind(AssertUnwindSafe(|| self.span.in_scope(f)))
        })
    }
}

/// A job's result; a panic in the job is resumed here, and `Err(())` means
/// the thread that ran it is gone.
pub(crate) async fn reply<R>(result: oneshot::Receiver<Reply<R>>) -> Result<R, ()> {
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => panic::resume_unwind(panic),
        Err(_) => Err(()),
    }
}
