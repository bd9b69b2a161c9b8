//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary
//! directory and a server listening on a Unix socket in it (no TCP port),
//! stopped when dropped. It needs PostgreSQL's server programs (`initdb`,
//! `pg_ctl`; Debian's `postgresql` package), on `PATH` or where that package
//! puts them, and its client `psql` for the check below. PostgreSQL refuses to
//! run as root: when the tests do, the cluster runs as the `postgres` user
//! (the package creates it; `.ci/run` creates it if it is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The port number in the socket's name (`.s.PGSQL.<port>`); the socket's
/// directory is the cluster's own, so any number serves.
const PORT: u16 = 5432;

/// The user the cluster runs as when the tests run as root.
const UNPRIVILEGED: &str = "postgres";

/// A running throwaway cluster; dropping it stops the server and deletes its
/// files.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// Who runs the server's programs: `None` for the current user.
    user: Option<&'static str>,
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts its server;
    /// returns once it accepts connections.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("synced-pg")
            .tempdir()
            .map_err(|e| format!("no temporary directory: {e}"))?;
        let user = running_as_root()?.then_some(UNPRIVILEGED);
        if let Some(user) = user {
            let uid = uid_of(user)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), None)
                .map_err(|e| format!("the cluster's directory cannot go to {user}: {e}"))?;
        }
        let cluster = Self { dir, user };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "--pgdata",
                &data.to_string_lossy(),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
        )?;
        let mut options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -p {PORT} -c fsync=off",
            cluster.dir.path().display()
        );
        // More settings, to look into a run (`-c log_min_duration_statement=0`).
        if let Ok(more) = std::env::var("SYNCED_PG_OPTIONS") {
            options = format!("{options} {more}");
        }
        cluster.run(
            "pg_ctl",
            &[
                "start",
                "--wait",
                "--pgdata",
                &data.to_string_lossy(),
                "--log",
                &cluster.dir.path().join("server.log").to_string_lossy(),
                "-o",
                &options,
            ],
        )?;
        Ok(cluster)
    }

    /// The directory of the server's socket: the `host` to connect to.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The port number in the socket's name.
    pub fn port(&self) -> u16 {
        PORT
    }

    /// A libpq-style connection string for `database`, as the superuser
    /// `postgres` (trusted on the socket).
    pub fn connection_string(&self, database: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={database}",
            self.socket_dir().display()
        )
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Backs up `database` whole as `pg_dump` does, as backup `name`, kept in
    /// the cluster's directory.
    pub fn back_up(&self, database: &str, name: &str) -> Result<(), String> {
        let file = self.dir.path().join(format!("{name}.dump"));
        self.run(
            "pg_dump",
            &[
                "--format=custom",
                "--file",
                &file.to_string_lossy(),
                "--dbname",
                &self.connection_string(database),
            ],
        )
    }

    /// Restores `database` from backup `name` (see [`back_up`](Self::back_up)):
    /// everything the backup holds is dropped first, in one transaction.
    pub fn restore(&self, database: &str, name: &str) -> Result<(), String> {
        let file = self.dir.path().join(format!("{name}.dump"));
        self.run(
            "pg_restore",
            &[
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--dbname",
                &self.connection_string(database),
                &file.to_string_lossy(),
            ],
        )
    }

    /// Runs one of PostgreSQL's programs, as the cluster's user.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = locate(program);
        let output = match self.user {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&path)
                .args(args)
                .output(),
            None => Command::new(&path).args(args).output(),
        }
        .map_err(|e| format!("{program} did not start (is PostgreSQL installed?): {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} failed ({}): {}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &[
                "stop",
                "--wait",
                "--mode",
                "immediate",
                "--pgdata",
                &data.to_string_lossy(),
            ],
        );
    }
}

/// Where PostgreSQL's `program` is: on `PATH`, or else in the newest of
/// Debian's `/usr/lib/postgresql/<version>/bin` (which the package does not
/// put on `PATH`); the bare name if neither has it.
fn locate(program: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| versions.flatten().map(|v| v.path().join("bin")).collect())
        .unwrap_or_default();
    debian.sort_by_key(|bin| {
        let version = bin.parent().and_then(Path::file_name);
        version.and_then(|v| v.to_str()?.parse::<u32>().ok())
    });
    on_path
        .into_iter()
        .chain(debian.into_iter().rev())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

/// Whether this process runs as root (`id -u` says 0).
fn running_as_root() -> Result<bool, String> {
    Ok(id(&["-u"])? == 0)
}

/// The user id of `user`.
fn uid_of(user: &str) -> Result<u32, String> {
    id(&["-u", user])
}

fn id(args: &[&str]) -> Result<u32, String> {
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("id did not run: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "id {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id printed no number: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_answers_and_stops() {
        let cluster = Postgres::start().unwrap();
        let output = Command::new("psql")
            .args(["--no-psqlrc", "--tuples-only", "--no-align", "--command"])
            .arg("SELECT 40 + 2")
            .arg(cluster.connection_string("postgres"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            cluster.log()
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
        // The server's process id, the first line of its pid file.
        let pid = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
        let process = PathBuf::from(format!("/proc/{}", pid.lines().next().unwrap().trim()));
        assert!(process.exists());
        drop(cluster);
        // Gone, or a zombie no one reaped (where process 1 does not).
        let stat = std::fs::read_to_string(process.join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        assert!(
            state.is_none_or(|rest| rest.starts_with('Z')),
            "the server still runs: {stat}"
        );
    }
}
