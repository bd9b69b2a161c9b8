//! What sync does is visible to an app that installs a `tracing` subscriber:
//! spans for each sync, send and fetch, each push and pull, each merge (with
//! the rows it applied and ignored), each retry and each re-keying.

#![allow(clippy::unwrap_used)] // in tests, a failed unwrap is a failed assertion

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{TestServer, device, publish_schema, todo};
use sync_runtime::{Error, Remote, SyncDb, SyncOptions};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The closing lines of the spans whose context ends with `names`:
    /// `["fetch", "pull", "merge"]` matches `… sync{…}:fetch{…}:pull{…}:merge{…}: target: close …`.
    fn closed(&self, names: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| {
                let Some((before, _)) = line.split_once(": close ") else {
                    return false;
                };
                // `TIME LEVEL context: target`
                let Some((context, _target)) = before.rsplit_once(": ") else {
                    return false;
                };
                let mut words = context.trim_start();
                for _time_then_level in 0..2 {
                    words = words
                        .split_once(' ')
                        .map_or("", |(_, rest)| rest.trim_start());
                }
                spans(words).ends_with(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            })
            .collect()
    }
}

/// The span names of a context such as `sync{url="…"}:send:push{rows=1}`.
fn spans(context: &str) -> Vec<String> {
    let (mut names, mut name, mut depth) = (Vec::new(), String::new(), 0);
    for c in context.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ':' if depth == 0 => names.push(std::mem::take(&mut name)),
            c if depth == 0 => name.push(c),
            _ => {}
        }
    }
    names.push(name);
    names
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_subscriber_sees_syncs_pushes_pulls_merges_retries_and_rekeying() {
    let captured = Captured::default();
    let _subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .finish()
        .set_default();

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("server")).await;
    let url = server.url("todo");
    publish_schema(&url, dir.path()).await;
    let a = device(dir.path(), "a", &url, "ann").await;
    let b = device(dir.path(), "b", &url, "ann").await;
    a.insert(&todo("seen")).await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();

    let pushes = captured.closed(&["sync", "send", "push"]);
    assert!(
        pushes
            .iter()
            .any(|line| line.contains("rows=1") && line.contains("rejected=0")),
        "{pushes:#?}"
    );
    let sends = captured.closed(&["sync", "send"]);
    assert!(
        sends.iter().any(|line| line.contains("changes=")),
        "{sends:#?}"
    );
    // The merge ran on the database's own thread, inside the pull that asked.
    let merges = captured.closed(&["sync", "fetch", "pull", "merge"]);
    assert!(
        merges.iter().any(|line| line.contains("applied=")
            && line.contains("ignored=0")
            && line.contains("rows=1")),
        "{merges:#?}"
    );
    let fetches = captured.closed(&["sync", "fetch"]);
    assert!(
        fetches.iter().any(|line| line.contains("applied=")),
        "{fetches:#?}"
    );

    // A server that does not answer: each retry is a span of its own.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}/v1/db/todo", closed.local_addr().unwrap());
    drop(closed);
    let offline = SyncDb::open_in_memory()
        .await
        .unwrap()
        .with_remote(Remote::new(nowhere));
    let options = SyncOptions::default()
        .max_retries(2)
        .backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(2));
    let failed = offline.sync_with(options).await;
    assert!(matches!(failed, Err(Error::Offline { .. })), "{failed:?}");
    let retries = captured.closed(&["sync", "fetch", "retry"]);
    assert_eq!(retries.len(), 2, "{retries:#?}");
    assert!(retries[1].contains("attempt=2"), "{retries:#?}");

    // Re-keying names both site ids.
    let old = a.site_id();
    let new = a.new_site_id().await.unwrap();
    let rekeys = captured.closed(&["rekey"]);
    assert!(
        rekeys.iter().any(
            |line| line.contains(&format!("to={new}")) && line.contains(&format!("from={old}"))
        ),
        "{rekeys:#?}"
    );
    server.stop().await;
}
