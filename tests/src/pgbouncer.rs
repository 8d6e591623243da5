//! A PgBouncer of the test's own, in transaction pooling mode, in front of a PostgreSQL address
//! the test chooses (the real server, or a [`crate::proxy::CuttableProxy`] in front of it). It
//! runs as the `postgres` OS user (PgBouncer refuses to run as root) and is killed, its files
//! removed, when the value is dropped, even when the test panics.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Server connections per database and user: fewer than a worker's connections, so clients take
/// turns on them as in a large deployment.
pub const POOL_SIZE: u32 = 2;

const INSTALL: &str = "install it with: apt-get install -y pgbouncer (scripts/test.sh does)";

pub struct PgBouncer {
    /// Where clients connect.
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Starts PgBouncer on a free loopback port, forwarding every database to `upstream`, and
    /// returns once it accepts connections; panics with its log (or how to install it)
    /// otherwise.
    pub async fn start(upstream: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("pgbouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).expect("a folder for PgBouncer");
        // The postgres user reads the configuration; the log is written through our handle.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("PgBouncer's folder made readable");
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let config = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        write_readable(&users, "\"postgres\" \"\"\n");
        write_readable(&config, &ini(addr, upstream, &users));
        let log = std::fs::File::create(dir.join("pgbouncer.log")).expect("PgBouncer's log file");
        let mut command = Command::new(binary());
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("PgBouncer's log file"))
            .stderr(log);
        if running_as_root() {
            let (uid, gid) = postgres_user();
            command.uid(uid).gid(gid);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start pgbouncer ({err}); {INSTALL}"));
        let mut bouncer = Self { addr, dir, child };
        bouncer.wait_listening(Duration::from_secs(10)).await;
        bouncer
    }

    /// `postgres://postgres@<PgBouncer>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.addr)
    }

    /// What PgBouncer has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    async fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgbouncer exited at start ({status}):\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {} within {timeout:?}:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // No panics here: this may run while the test unwinds.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {err}", self.dir.display());
        }
    }
}

/// Transaction pooling with few server connections; trust, as the test server itself; sqlx's
/// `extra_float_digits` start-up parameter ignored (PgBouncer refuses clients that send
/// parameters it does not know); a failed server login retried after 1 s rather than 15 s, so a
/// restored database is used again soon.
fn ini(addr: SocketAddr, upstream: SocketAddr, users: &std::path::Path) -> String {
    format!(
        "[databases]\n\
         * = host={upstream_host} port={upstream_port}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = {host}\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {users}\n\
         pool_mode = transaction\n\
         default_pool_size = {POOL_SIZE}\n\
         max_client_conn = 1000\n\
         ignore_startup_parameters = extra_float_digits\n\
         server_login_retry = 1\n",
        upstream_host = upstream.ip(),
        upstream_port = upstream.port(),
        host = addr.ip(),
        port = addr.port(),
        users = users.display(),
    )
}

/// `pgbouncer` on the PATH, else where Debian installs it (/usr/sbin, often not on a user's PATH).
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbouncer"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"))
}

fn write_readable(path: &std::path::Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
}

/// This process's effective user is root (the owner of what it creates).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd readable");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .expect(
            "a postgres user (PgBouncer will not run as root); installing PostgreSQL creates it",
        )
}
