//! Settings that make no sense are refused at start (exit status 2, the message naming the
//! setting), and no password reaches an output: not stdout, not the logs at any level (the tests
//! run at `RUST_LOG=trace`, text and JSON), not an error.
//!
//! PostgreSQL on the test machine trusts loopback connections, so it never asks for a password:
//! a fake server that does ([`PasswordAskingServer`]) shows what the driver sends and how a
//! refusal is reported. RabbitMQ checks passwords, so wrong ones are refused for real.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::broker::TestBroker;
use integration_tests::process::WorkerProcess;
use integration_tests::{TestDb, server_url};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sea_orm::ConnectionTrait;
use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

/// A password with every character that ends a URL's user info early; its tail is distinctive
/// enough to be searched for on its own.
const PASSWORD: &str = "pa/ss#wo?rd@Zq7Xk9";
const ENCODED: &str = "pa%2Fss%23wo%3Frd%40Zq7Xk9";
/// A password written with raw `@`s: the last `@` before the host ends it.
const AT_PASSWORD: &str = "p@ss@Zq7Xk9";

/// Settings the runner's own environment might set, removed so each test sets its own.
const SETTINGS: &[&str] = &[
    "DATABASE_URL",
    "AMQP_URL",
    "AMQP_NAME_PREFIX",
    "CLERK_WEBHOOK_SECRET",
    "PREFETCH",
    "MAX_CONCURRENCY",
    "BATCH_SIZE",
    "DATABASE_MIN_CONNECTIONS",
    "DATABASE_MAX_CONNECTIONS",
    "LOG_FORMAT",
];

/// `worker args...` with `env`, tracing everything, listeners on port 0.
fn worker(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(WORKER);
    for name in SETTINGS {
        command.env_remove(name);
    }
    command
        .args(args)
        .env("RUST_LOG", "trace")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("INGRESS_ADDR", "127.0.0.1:0")
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())));
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("the worker binary runs")
}

/// Runs a command on a blocking thread, so a test's runtime keeps serving while it waits.
async fn run_blocking(command: Command) -> Output {
    tokio::task::spawn_blocking(move || run(command))
        .await
        .expect("the command's thread")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails if `text` holds `password` in any form an output could give it: as is, percent-encoded,
/// as a byte list (lapin prints byte strings that way), or its distinctive last six characters.
fn assert_no_password(text: &str, password: &str, what: &str) {
    let bytes: Vec<String> = password.bytes().map(|b| b.to_string()).collect();
    let tail = &password[password.len() - 6..];
    let forms = [
        password.to_owned(),
        utf8_percent_encode(password, NON_ALPHANUMERIC).to_string(),
        bytes.join(", "),
        tail.to_owned(),
    ];
    for form in forms {
        assert!(
            !text.contains(&form),
            "{what}: the password appears as {form:?} in:\n{text}"
        );
    }
}

/// Both streams of `output` are free of `password`.
fn assert_output_clean(output: &Output, password: &str, what: &str) {
    assert_no_password(&stdout(output), password, &format!("{what} (stdout)"));
    assert_no_password(&stderr(output), password, &format!("{what} (stderr)"));
}

/// Arguments, environment, and the setting the refusal must name.
type RefusalCase<'a> = (Vec<&'a str>, Vec<(&'a str, String)>, &'a str);

#[test]
fn each_setting_that_makes_no_sense_exits_2_naming_it_and_never_its_value() {
    let db = |url: String| vec![("DATABASE_URL", url)];
    let amqp = |url: String| vec![("AMQP_URL", url)];
    let flag_url = format!("postgres://app:{PASSWORD}@h/db");
    let cases: Vec<RefusalCase> = vec![
        (vec!["consume"], vec![("PREFETCH", "0".into())], "PREFETCH"),
        (vec!["consume", "--prefetch", "0"], vec![], "PREFETCH"),
        (
            vec!["consume"],
            vec![("MAX_CONCURRENCY", "0".into())],
            "MAX_CONCURRENCY",
        ),
        (
            vec!["consume"],
            vec![("BATCH_SIZE", "0".into())],
            "BATCH_SIZE",
        ),
        (
            vec!["health"],
            vec![
                ("DATABASE_MIN_CONNECTIONS", "9".into()),
                ("DATABASE_MAX_CONNECTIONS", "4".into()),
            ],
            "DATABASE_MIN_CONNECTIONS",
        ),
        (
            vec!["run"],
            vec![("DATABASE_MAX_CONNECTIONS", "0".into())],
            "DATABASE_MAX_CONNECTIONS",
        ),
        // Raw `/`, `?`, `#` end the user info early: whatever is left is no URL, or one with
        // part of the password outside the user info.
        (
            vec!["health"],
            db(format!("postgres://app:{PASSWORD}@127.0.0.1:5432/db")),
            "DATABASE_URL",
        ),
        (
            vec!["health"],
            db("postgres://app:12/wo?rdZq7Xk9@127.0.0.1:5432/db".into()),
            "DATABASE_URL",
        ),
        (
            vec!["migrate"],
            db("postgres://app:12#wo?rdZq7Xk9@127.0.0.1:5432/db".into()),
            "DATABASE_URL",
        ),
        (
            vec!["provision", "-"],
            db(format!("not a URL at all {PASSWORD}")),
            "DATABASE_URL",
        ),
        (
            vec!["health"],
            db(format!("mysql://app:{ENCODED}@127.0.0.1/db")),
            "DATABASE_URL",
        ),
        (
            vec!["health"],
            db(format!("postgres://app@127.0.0.1/db?sslpassword={ENCODED}")),
            "sslpassword",
        ),
        (
            vec!["health", "--database-url", &flag_url],
            vec![],
            "DATABASE_URL",
        ),
        (
            vec!["dlq", "list"],
            amqp(format!("amqp:guest:{ENCODED}@127.0.0.1:5672/%2f")),
            "AMQP_URL",
        ),
        (
            vec!["consume"],
            amqp(format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f")),
            "AMQP_URL",
        ),
        (
            vec!["ingress"],
            amqp(format!(
                "amqp://guest:{ENCODED}@127.0.0.1:5672/%2f?heartbeat=x"
            )),
            "AMQP_URL",
        ),
        (vec!["ingress"], vec![], "CLERK_WEBHOOK_SECRET"),
        (
            vec!["ingress"],
            vec![
                ("CLERK_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
                ("INGRESS_MAX_BODY", "65536".into()),
                ("INGRESS_MAX_BODY_MEMORY", "65535".into()),
            ],
            "INGRESS_MAX_BODY_MEMORY is below INGRESS_MAX_BODY",
        ),
        // Both forms of a secret.
        (
            vec!["ingress"],
            vec![
                ("CLERK_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
                ("CLERK_WEBHOOK_SECRET_FILE", "/etc/hostname".into()),
            ],
            "CLERK_WEBHOOK_SECRET and CLERK_WEBHOOK_SECRET_FILE are both set",
        ),
        (
            vec!["health", "--database-url", &flag_url],
            vec![("DATABASE_URL_FILE", "/etc/hostname".into())],
            "DATABASE_URL and DATABASE_URL_FILE are both set",
        ),
        (
            vec!["dlq", "list"],
            vec![("AMQP_URL_FILE", "/nonexistent/amqp-url".into())],
            "AMQP_URL_FILE (/nonexistent/amqp-url) cannot be read",
        ),
        (
            vec!["consume"],
            vec![
                ("CONSOLE_ADDR", "127.0.0.1:0".into()),
                ("CONSOLE_TOKEN_FILE", "/nonexistent/console-token".into()),
            ],
            "CONSOLE_TOKEN_FILE (/nonexistent/console-token) cannot be read",
        ),
        (
            vec!["consume"],
            vec![
                ("CONSOLE_ADDR", "127.0.0.1:0".into()),
                ("CONSOLE_TOKEN_FILE", "/dev/null".into()),
            ],
            "CONSOLE_TOKEN_FILE names an empty file",
        ),
        (vec!["console"], vec![], "CONSOLE_ADDR is required"),
        // Clerk's API: a key, over TLS unless local, at a sane rate, a real fraction.
        (vec!["reconcile"], vec![], "CLERK_SECRET_KEY is required"),
        (
            vec!["reconcile"],
            vec![
                ("CLERK_SECRET_KEY", format!("sk_test_{PASSWORD}")),
                ("CLERK_API_URL", "http://api.clerk.com".into()),
            ],
            "CLERK_API_URL must be https://",
        ),
        (
            vec!["reconcile"],
            vec![
                ("CLERK_SECRET_KEY", "sk_test_key".into()),
                ("CLERK_API_RATE", "5000".into()),
            ],
            "clerk-api-rate",
        ),
        (
            vec!["reconcile", "--max-delete-fraction", "NaN"],
            vec![("CLERK_SECRET_KEY", "sk_test_key".into())],
            "max-delete-fraction",
        ),
        (
            vec!["reconcile", "--max-delete-fraction", "2"],
            vec![("CLERK_SECRET_KEY", "sk_test_key".into())],
            "max-delete-fraction",
        ),
        (
            vec!["reconcile", "--max-delete-fraction", "inf"],
            vec![("CLERK_SECRET_KEY", "sk_test_key".into())],
            "max-delete-fraction",
        ),
        (
            vec!["run"],
            vec![("CLERK_WEBHOOK_SECRET", format!("whsec_{PASSWORD}"))],
            "CLERK_WEBHOOK_SECRET",
        ),
    ];
    for (args, env, setting) in cases {
        let what = format!("worker {args:?} {env:?}");
        let output = run(worker(&args, &env));
        assert_eq!(output.status.code(), Some(2), "{what}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(setting),
            "{what}: {setting} not named in: {}",
            stderr(&output)
        );
        assert_output_clean(&output, PASSWORD, &what);
    }
}

/// Svix's public test secret.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn secrets_are_read_from_files_and_a_secret_flag_is_warned_about() {
    // Neither is where the defaults point: the work shows the files were read.
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = |name: &str, content: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, content + "\n").expect("the secret file written");
        path.display().to_string()
    };
    let mut env = broker.env();
    env.retain(|(key, _)| *key != "AMQP_URL");
    env.extend([
        (
            "DATABASE_URL_FILE",
            file("database-url", db.settings.expose_url().to_owned()),
        ),
        (
            "AMQP_URL_FILE",
            file(
                "amqp-url",
                broker
                    .settings
                    .expose_url()
                    .replace("127.0.0.1", "localhost"),
            ),
        ),
        (
            "CLERK_WEBHOOK_SECRET_FILE",
            file("webhook-secret", WEBHOOK_SECRET.to_owned()),
        ),
    ]);
    let mut service = WorkerProcess::spawn(WORKER, &["run"], &env).await;
    service.wait_ready(Duration::from_secs(30)).await;
    let migrated = db.scalar("SELECT count(*) FROM seaql_migrations").await;
    assert!(
        migrated > 0,
        "`run` migrated the database DATABASE_URL_FILE names"
    );
    assert!(
        service.logs().contains("localhost:5672"),
        "AMQP_URL_FILE's node"
    );
    service.terminate();
    assert!(service.wait_exit(Duration::from_secs(30)).await.success());
    assert!(!service.logs().contains("shows in `ps`"));

    // The same secret as a flag works, with a warning that names the flag, never the value.
    env.retain(|(key, _)| *key != "CLERK_WEBHOOK_SECRET_FILE");
    let mut flagged = WorkerProcess::spawn(
        WORKER,
        &["run", "--clerk-webhook-secret", WEBHOOK_SECRET],
        &env,
    )
    .await;
    flagged.wait_ready(Duration::from_secs(30)).await;
    let logs = flagged.logs();
    assert!(
        logs.contains("--clerk-webhook-secret on the command line shows in `ps`"),
        "{logs}"
    );
    assert!(!logs.contains(WEBHOOK_SECRET), "{logs}");
}

/// A login role of the test's own with `password` (superuser, so `migrate` may read the
/// migration table), dropped with the value.
struct TestRole {
    name: String,
}

impl TestRole {
    async fn create(password: &str) -> Self {
        let name = format!("it_role_{}", uuid::Uuid::new_v4().simple());
        let sql = format!(
            "CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{}'",
            password.replace('\'', "''")
        );
        admin_execute(sql).await.expect("the test role is created");
        Self { name }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let sql = format!("DROP ROLE IF EXISTS {}", self.name);
        // `Drop` cannot await: a runtime of its own, on a thread of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?
                .block_on(admin_execute(sql))
                .map_err(|err| err.to_string())
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("warning: could not drop a test role: {err}");
        }
    }
}

/// Runs `sql` on the server's `postgres` database.
async fn admin_execute(sql: String) -> Result<(), sea_orm::DbErr> {
    let admin = sea_orm::Database::connect(format!("{}/postgres", server_url())).await?;
    admin.execute_unprepared(&sql).await?;
    admin.close().await
}

/// The URL shapes a password can take: percent-encoded in the user info, raw `@`s, and in the
/// query string; each with the password it carries.
fn postgres_urls(role: &str, db: &str, addr: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("postgres://{role}:{ENCODED}@{addr}/{db}"), PASSWORD),
        (
            format!("postgresql://{role}:{AT_PASSWORD}@{addr}/{db}"),
            AT_PASSWORD,
        ),
        (
            format!("postgres://{role}@{addr}/{db}?sslmode=disable&password={ENCODED}"),
            PASSWORD,
        ),
    ]
}

#[tokio::test]
async fn a_role_with_a_url_unfriendly_password_works_and_its_password_is_never_shown() {
    let db = TestDb::migrated().await;
    let role = TestRole::create(PASSWORD).await;
    for (url, password) in postgres_urls(&role.name, &db.name, "127.0.0.1:5432") {
        for format in ["text", "json"] {
            for args in [&["migrate"][..], &["health"]] {
                let env = [
                    ("DATABASE_URL", url.clone()),
                    ("LOG_FORMAT", format.to_owned()),
                ];
                let output = run_blocking(worker(args, &env)).await;
                let what = format!("worker {args:?} ({format}) with {url}");
                assert!(output.status.success(), "{what}: {}", stderr(&output));
                assert_output_clean(&output, password, &what);
            }
        }
    }
    let health = run_blocking(worker(
        &["health"],
        &[(
            "DATABASE_URL",
            postgres_urls(&role.name, &db.name, "127.0.0.1:5432")[0]
                .0
                .clone(),
        )],
    ))
    .await;
    let report: Value = serde_json::from_str(stdout(&health).trim()).expect("health JSON");
    assert_eq!(report["healthy"], true);
}

#[tokio::test]
async fn a_refused_database_password_is_reported_without_it_and_the_driver_sent_it_decoded() {
    let server = PasswordAskingServer::start();
    let addr = server.addr.to_string();
    for (url, password) in postgres_urls("app", "db", &addr) {
        for args in [&["health"][..], &["migrate"]] {
            server.forget();
            let output = run_blocking(worker(args, &[("DATABASE_URL", url.clone())])).await;
            let what = format!("worker {args:?} with {url}");
            assert_output_clean(&output, password, &what);
            assert_eq!(server.last_password().as_deref(), Some(password), "{what}");
            assert_eq!(output.status.code(), Some(1), "{what}");
            if args == ["health"] {
                let report: Value =
                    serde_json::from_str(stdout(&output).trim()).expect("health JSON");
                assert_eq!(report["healthy"], false);
                let error = report["error"].as_str().unwrap_or_default();
                assert!(error.contains("password authentication failed"), "{error}");
            }
        }
    }
}

#[tokio::test]
async fn a_wrong_broker_password_is_refused_and_never_shown() {
    let broker = TestBroker::new().await;
    // The dlq commands keep letters in the database, then ask the broker.
    let db = TestDb::migrated().await;
    let urls = [
        (
            format!("amqp://guest:{ENCODED}@127.0.0.1:5672/%2f"),
            PASSWORD,
        ),
        (
            format!("amqp://guest:{AT_PASSWORD}@127.0.0.1:5672/%2f"),
            AT_PASSWORD,
        ),
    ];
    for (url, password) in urls {
        for format in ["text", "json"] {
            let mut env = broker.env();
            env.push(("AMQP_URL", url.clone()));
            env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
            env.push(("LOG_FORMAT", format.to_owned()));
            // A replay needs the broker (a list would warn and answer from the store).
            let output = run_blocking(worker(&["dlq", "replay"], &env)).await;
            let what = format!("worker dlq replay ({format}) with {url}");
            assert_eq!(output.status.code(), Some(1), "{what}: {}", stderr(&output));
            assert!(
                stderr(&output).contains("ACCESS_REFUSED"),
                "{what}: {}",
                stderr(&output)
            );
            assert_output_clean(&output, password, &what);
        }
    }
}

#[tokio::test]
async fn a_running_service_never_logs_either_password() {
    let db = TestDb::migrated().await;
    let role = TestRole::create(PASSWORD).await;
    let broker = TestBroker::new().await;
    let mut env = broker.env();
    env.extend([
        (
            "DATABASE_URL",
            format!(
                "postgres://{}:{ENCODED}@127.0.0.1:5432/{}",
                role.name, db.name
            ),
        ),
        ("DATABASE_MIN_CONNECTIONS", "1".to_owned()),
        (
            "AMQP_URL",
            format!("amqp://guest:{AT_PASSWORD}@127.0.0.1:5672/%2f"),
        ),
        (
            "CLERK_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        ),
        ("RUST_LOG", "trace".to_owned()),
    ]);
    let mut process = WorkerProcess::spawn(WORKER, &["run"], &env).await;
    // Long enough for the migrations, the pool and a few refused broker connections.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(process.exited().is_none(), "{}", process.logs());
    process.terminate();
    process.wait_exit(Duration::from_secs(20)).await;
    let logs = process.logs();
    assert!(
        logs.contains("ACCESS_REFUSED"),
        "no refused connection in:\n{logs}"
    );
    assert_no_password(&logs, PASSWORD, "worker run (database)");
    assert_no_password(&logs, AT_PASSWORD, "worker run (broker)");
}

#[tokio::test]
async fn a_broker_user_with_a_url_unfriendly_password_works() {
    let user = BrokerUser::create(PASSWORD);
    let broker = TestBroker::new().await;
    let db = TestDb::migrated().await;
    let mut env = broker.env();
    env.push((
        "AMQP_URL",
        format!("amqp://{}:{ENCODED}@127.0.0.1:5672/%2f", user.name),
    ));
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    let output = run_blocking(worker(&["dlq", "list", "--json"], &env)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_output_clean(&output, PASSWORD, "worker dlq list");
}

/// A RabbitMQ user of the test's own, with every permission on `/`; deleted with the value.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    /// Fails the test, saying what to do, when `rabbitmqctl` cannot run here.
    fn create(password: &str) -> Self {
        let name = format!("it-{}", uuid::Uuid::new_v4().simple());
        assert!(
            rabbitmqctl(&["add_user", &name, password]),
            "rabbitmqctl add_user failed: the tests need the local RabbitMQ and its rabbitmqctl \
             (start it with: rabbitmq-server -detached)"
        );
        let user = Self { name };
        let permitted = rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        assert!(permitted, "rabbitmqctl set_permissions failed");
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        if !rabbitmqctl(&["delete_user", &self.name]) {
            eprintln!("warning: could not delete RabbitMQ user {}", self.name);
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Just enough of a PostgreSQL server to ask for a cleartext password, keep it, and refuse it
/// as the real one does (SQLSTATE 28P01).
struct PasswordAskingServer {
    addr: SocketAddr,
    passwords: Arc<Mutex<Vec<String>>>,
}

impl PasswordAskingServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the fake server");
        let addr = listener.local_addr().expect("its address");
        let passwords = Arc::new(Mutex::new(Vec::new()));
        let kept = passwords.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(password) = refuse_login(stream) {
                    kept.lock().unwrap().push(password);
                }
            }
        });
        Self { addr, passwords }
    }

    fn forget(&self) {
        self.passwords.lock().unwrap().clear();
    }

    fn last_password(&self) -> Option<String> {
        self.passwords.lock().unwrap().last().cloned()
    }
}

/// One connection: (SSLRequest: no,) startup, cleartext password request, refusal.
fn refuse_login(mut stream: TcpStream) -> std::io::Result<String> {
    const SSL_REQUEST: u32 = 80_877_103;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut startup = read_untyped(&mut stream)?;
    if startup.get(..4) == Some(&SSL_REQUEST.to_be_bytes()[..]) {
        stream.write_all(b"N")?;
        startup = read_untyped(&mut stream)?;
    }
    drop(startup);
    // AuthenticationCleartextPassword.
    stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; length.saturating_sub(4)];
    stream.read_exact(&mut body)?;
    let password = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"app\""),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut error = vec![b'E'];
    error.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    error.extend_from_slice(&fields);
    stream.write_all(&error)?;
    Ok(password)
}

/// A message without a type byte (startup, SSLRequest): its body after the length.
fn read_untyped(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let mut body = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
    stream.read_exact(&mut body)?;
    Ok(body)
}
