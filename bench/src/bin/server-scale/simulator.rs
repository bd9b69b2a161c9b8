//! The simulated devices of the live scenarios, run as a process of their own
//! (this program, run as `simulate`): each holds one HTTP/1.1 connection and
//! long-polls on it with raw requests, as a device of its own user, without a
//! replica of its own, so that 10,000 of them fit beside the server. The time
//! an answer reached a device is the kernel's receive time of its socket
//! (`SO_TIMESTAMPNS`): the simulator, one thread serving every device, reads
//! the answers one after the other, later than they arrived.

use std::net::SocketAddr;

use sync_runtime::protocol::{PullResponse, SITE_HEADER, TABLES_HEADER, tables_header};
use sync_runtime::{Cursor, SiteId, Synced};
use synced_bench::Todo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{BoxError, WAIT_MS, cpu_time, ms, now_us};

/// The simulated devices: prints `answer <device> <version> <arrived µs>
/// <read µs>` for every answer that moved a device's cursor, then `errors <n>`
/// and `cpu_ms <n>` (the CPU time used once every device waited).
pub(crate) async fn simulate(
    addr: SocketAddr,
    database: &str,
    devices: usize,
    from: i64,
    until: i64,
) -> Result<(), BoxError> {
    sync_server::waiting::raise_open_files_limit();
    let tables = tables_header(std::slice::from_ref(Todo::SCHEMA));
    let mut running = tokio::task::JoinSet::new();
    for device in 0..devices {
        let request = Request {
            addr,
            path: format!("/v1/db/{database}/pull"),
            token: synced_testkit::token(&format!("device-{device}")),
            site: SiteId::from_bytes(*uuid::Uuid::new_v4().as_bytes()),
            tables: tables.clone(),
        };
        running.spawn(async move { (device, request.long_poll(from, until).await) });
        // Connections opened in steps, within the server's accept backlog.
        if device % 256 == 255 {
            tokio::time::sleep(ms(5)).await;
        }
    }
    // The CPU used so far when the parent says every device waits.
    let settled_cpu = tokio::spawn(async {
        let mut line = String::new();
        let mut input = BufReader::new(tokio::io::stdin());
        let _ = input.read_line(&mut line).await;
        cpu_time()
    });
    let mut out = String::new();
    let mut errors = 0;
    while let Some(done) = running.join_next().await {
        match done? {
            (device, Ok(answers)) => {
                for Received {
                    version,
                    arrived,
                    read,
                } in answers
                {
                    out.push_str(&format!("answer {device} {version} {arrived} {read}\n"));
                }
            }
            (device, Err(e)) => {
                errors += 1;
                eprintln!("device {device}: {e}");
            }
        }
    }
    out.push_str(&format!("errors {errors}\n"));
    // What the devices used once connected and waiting (roughly: from when
    // the first one ended).
    let cpu = cpu_time().saturating_sub(settled_cpu.await?);
    out.push_str(&format!("cpu_ms {}\n", cpu.as_millis()));
    let mut stdout = tokio::io::stdout();
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// What one simulated device sends.
struct Request {
    addr: SocketAddr,
    path: String,
    token: String,
    site: SiteId,
    tables: String,
}

/// One answer a device received: the version it brought the device to, when
/// it reached the device's socket (the kernel's receive time) and when the
/// simulator had read it (both in µs since the epoch).
struct Received {
    version: i64,
    arrived: i64,
    read: i64,
}

impl Request {
    /// Long-polls from version `from` until the device has received `until`,
    /// on one connection: each answer that moved its cursor.
    async fn long_poll(&self, from: i64, until: i64) -> Result<Vec<Received>, BoxError> {
        use std::io::Write as _;
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        )?;
        let mut cursor = Cursor::at(from);
        let mut received = Vec::new();
        let (mut request, mut buffer) = (Vec::with_capacity(1024), Vec::with_capacity(4096));
        while cursor.version() < until {
            request.clear();
            write!(
                request,
                "GET {}?cursor={}&wait={WAIT_MS} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
                 {TABLES_HEADER}: {}\r\n{SITE_HEADER}: {}\r\n\r\n",
                self.path,
                percent(&cursor.to_string()),
                self.addr,
                self.token,
                self.tables,
                self.site,
            )?;
            stream.write_all(&request).await?;
            let (status, body, arrived) = response(&stream, &mut buffer).await?;
            let read = now_us();
            if status != 200 {
                return Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
                .into());
            }
            let answer = PullResponse::decode(&body)?;
            if answer.next.version() > cursor.version() {
                received.push(Received {
                    version: answer.next.version(),
                    arrived: arrived.unwrap_or(read),
                    read,
                });
            }
            cursor = answer.next;
        }
        Ok(received)
    }
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`, through
/// `buffer` (which keeps what follows it): its status, its body, and when its
/// last part reached the socket (if the kernel said).
async fn response(
    stream: &TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>, Option<i64>), BoxError> {
    let mut arrived = None;
    let mut chunk = vec![0; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end])?;
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .ok_or("no status line")?
                .parse()?;
            let length: usize = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(Ok(0), |(_, value)| value.trim().parse())?;
            let total = end + 4 + length;
            if buffer.len() >= total {
                let body = buffer[end + 4..total].to_vec();
                buffer.drain(..total);
                return Ok((status, body, arrived));
            }
        }
        stream.readable().await?;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            receive(std::os::fd::AsRawFd::as_raw_fd(stream), &mut chunk)
        });
        match read {
            Ok((0, _)) => return Err("the connection closed".into()),
            Ok((n, at)) => {
                buffer.extend_from_slice(&chunk[..n]);
                arrived = at.or(arrived);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recvmsg` of what `fd` holds: the bytes read, and the kernel's receive
/// time of the data (µs since the epoch) when it gives one.
fn receive(fd: std::os::fd::RawFd, into: &mut [u8]) -> std::io::Result<(usize, Option<i64>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use nix::sys::time::TimeValLike;
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut parts = [std::io::IoSliceMut::new(into)];
    let message = recvmsg::<()>(fd, &mut parts, Some(&mut space), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let at = message
        .cmsgs()
        .map_err(std::io::Error::from)?
        .find_map(|control| match control {
            ControlMessageOwned::ScmTimestampns(at) => Some(at.num_microseconds()),
            _ => None,
        });
    Ok((message.bytes, at))
}

/// `text` with every byte but letters, digits, `-`, `.` and `_` percent-encoded.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
