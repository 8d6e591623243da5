//! The monitoring shipped with the product, checked without Docker: Prometheus config and alert
//! rules pass promtool, a real Prometheus scrapes a running worker, the dashboard and the alerts
//! only name metrics the service exports, and the compose file is valid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::fixture;
use integration_tests::free_port;
use integration_tests::ops::is_exported;
use integration_tests::ops::series;
use integration_tests::webhook::{SECRET, Webhook};
use integration_tests::{TestDb, eventually};
use regex::Regex;
use worker::metrics;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Runs a tool that must be installed (`.ci/run` installs it), failing with how to get it.
fn run(program: &str, args: &[&str], install: &str) -> std::process::Output {
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|err| panic!("{program} is not available ({err}): {install}"))
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_alert_rules() {
    for args in [
        ["check", "config", "prometheus/prometheus.yml"],
        ["check", "rules", "prometheus/alerts.yml"],
    ] {
        let output = run("promtool", &args, "apt-get install prometheus");
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool {args:?}:\n{report}");
    }
}

/// Every metric name a PromQL expression reads: its identifiers, less string literals, label
/// matchers, ranges, grouping clauses, function names and keywords, plus any name selected as
/// `{__name__="..."}`. What is left must be a series something exports.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let by_name = Regex::new(r#"__name__\s*=\s*"([^"\\]*)""#).unwrap();
    // PromQL quotes strings with ", ' or `.
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"#).unwrap();
    let matchers = Regex::new(r"\{[^}]*\}|\[[^\]]*\]").unwrap();
    let groupings =
        Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)").unwrap();
    let identifier = Regex::new(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(\s*\()?").unwrap();
    const KEYWORDS: [&str; 11] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let selected: Vec<String> = by_name
        .captures_iter(expr)
        .map(|c| c[1].to_owned())
        .collect();
    let expr = strings.replace_all(expr, "");
    let expr = matchers.replace_all(&expr, "");
    let expr = groupings.replace_all(&expr, "");
    identifier
        .captures_iter(&expr)
        .filter(|c| c.get(1).is_none())
        .map(|c| c[0].trim().to_owned())
        .filter(|name| !KEYWORDS.contains(&name.as_str()))
        .chain(selected)
        .collect()
}

/// The `expr` of every rule in `alerts.yml`: inline (quoted or not), or the block under
/// `expr: |` or `expr: >` (with or without `-`).
fn alert_exprs(alerts: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = alerts.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !matches!(rest, "|" | "|-" | ">" | ">-") {
            let unquoted = rest
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .or_else(|| rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')));
            exprs.push(unquoted.unwrap_or(rest).to_owned());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent.len();
            if !deeper && !next.trim().is_empty() {
                break;
            }
            block.push_str(next.trim());
            block.push(' ');
            lines.next();
        }
        exprs.push(block);
    }
    exprs
}

#[test]
fn metric_names_are_every_identifier_a_query_reads() {
    let expr = format!(
        r#"sum by (reason) (rate({}{{reason="a b"}}[5m])) / on(job) group_left {} > bool 1e-9 and histogram_quantile(0.9, sum by (le) (rate({}_bucket[5m])))"#,
        metrics::USERNAMES_REASSIGNED,
        metrics::RESIDENT_MEMORY,
        metrics::BATCH_SIZE
    );
    let names: Vec<_> = metric_names(&expr).into_iter().collect();
    assert_eq!(
        names,
        [
            metrics::RESIDENT_MEMORY,
            &format!("{}_bucket", metrics::BATCH_SIZE),
            metrics::USERNAMES_REASSIGNED
        ]
    );
    // Single-quoted and backquoted strings are no names; a name selected by `__name__` is one.
    let expr = format!(
        r#"label_replace({}, 'dst', '$1 (x)', `src`, '(.*)') + sum({{__name__="{}"}}) offset 5m"#,
        metrics::HEAP_FREE,
        metrics::HEAP_IN_USE
    );
    let names: Vec<_> = metric_names(&expr).into_iter().collect();
    assert_eq!(names, [metrics::HEAP_FREE, metrics::HEAP_IN_USE]);

    let alerts = "      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          sum(x_total)\n            / 2\n        labels:\n      - alert: C\n        expr: \"y_total > 1\"\n      - alert: D\n        expr: >-\n          z_total\n";
    assert_eq!(
        alert_exprs(alerts),
        ["up == 0", "sum(x_total) / 2 ", "y_total > 1", "z_total "]
    );
}

/// Whether a query may read `name`: a series the service exports, Prometheus's own `up`, or a
/// rabbitmq_prometheus series checked live below.
fn known(name: &str) -> bool {
    is_exported(name) || name == "up" || RABBITMQ_SERIES.contains(&name)
}

/// The rabbitmq_prometheus per-object series the dashboards and alerts use (checked live below).
const RABBITMQ_SERIES: [&str; 2] = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
];

fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/provisioning.json"))
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "clerk-provisioning");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("a PromQL expr").to_owned())
        .collect()
}

#[test]
fn the_dashboard_and_the_alerts_only_name_exported_metrics() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    let alerts = read("prometheus/alerts.yml");
    let rules = alert_exprs(&alerts);
    assert!(rules.len() >= 5, "the alerts have their expressions");
    assert_eq!(
        rules.len(),
        alerts.matches("- alert:").count(),
        "every alert has its expr"
    );
    for (source, text) in exprs
        .iter()
        .map(|e| ("dashboard", e.as_str()))
        .chain(rules.iter().map(|e| ("alerts.yml", e.as_str())))
    {
        let names = metric_names(text);
        // Every panel and alert reads some series: none found means the extraction missed it.
        assert!(!names.is_empty(), "{source}: no metric found in {text}");
        for name in names {
            assert!(
                known(&name),
                "{source} uses {name}, which nothing exports: {text}"
            );
        }
    }
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        metrics::WORKSPACE_CREATED,
        metrics::WORKSPACE_FAILED,
        &format!("{}_bucket", metrics::PROVISIONING_DURATION),
        &format!("{}_bucket", metrics::EVENT_LAG),
        metrics::EVENTS_RETRIED,
        metrics::WEBHOOK_REQUESTS,
        metrics::WEBHOOK_REFUSED,
        metrics::RECONCILE_RUNS,
        metrics::RECONCILE_DRIFT,
        metrics::RECONCILE_LAST_SUCCESS,
        "rabbitmq_queue_messages_ready",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    for alert in [
        "DeadLettersArriving",
        "ProvisioningFailureRateHigh",
        "ProvisioningLatencyHigh",
        "ConsumerLagGrowing",
        "TargetDown",
        "ReconcileNotSucceeding",
        "ReconcileFoundDrift",
    ] {
        assert!(alerts.contains(&format!("alert: {alert}")), "{alert}");
        let anchor = format!("docs/runbooks.md#runbook-{}", alert.to_lowercase());
        assert!(alerts.contains(&anchor), "{alert} links its runbook");
        assert!(
            read("docs/runbooks.md").contains(&format!("## Runbook: {alert}")),
            "docs/runbooks.md has {alert}'s runbook"
        );
    }
}

#[tokio::test]
async fn rabbitmq_exports_the_queue_series_the_dashboard_uses() {
    let broker = TestBroker::new().await;
    let url = "http://127.0.0.1:15692/metrics/per-object";
    let queue = broker.topology.queue.clone();
    // The plugin refreshes queue statistics every few seconds.
    eventually("rabbitmq_prometheus to show the test queue", Duration::from_secs(30), || async {
        let page = match reqwest::get(url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(err) => panic!("rabbitmq_prometheus is not reachable ({err}): rabbitmq-plugins enable rabbitmq_prometheus"),
        };
        RABBITMQ_SERIES.iter().all(|series| page.contains(&format!("{series}{{vhost=\"/\",queue=\"{queue}\"}}")))
    })
    .await;
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_worker_and_counts_what_it_provisioned() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut env = broker.env();
    env.push(("DATABASE_URL", db.settings.expose_url().to_owned()));
    env.push(("CLERK_WEBHOOK_SECRET", SECRET.to_owned()));
    let service = TestApp::spawn(&["run"], &env).await;
    service.wait_ready(Duration::from_secs(30)).await;
    for i in 0..5 {
        let body = integration_tests::clerk::UserEvent::created(
            &format!("user_2prom{i}"),
            &format!("prom{i}@example.com"),
            None,
        )
        .body();
        assert_eq!(
            Webhook::signed(SECRET, &body)
                .post(service.ingress_addr)
                .await
                .0,
            202
        );
    }
    assert_eq!(
        Webhook::signed(SECRET, &fixture("user_created_phone_only.json"))
            .post(service.ingress_addr)
            .await
            .0,
        202
    );
    eventually("five workspaces", Duration::from_secs(30), || async {
        db.scalar("SELECT count(*) FROM workspaces").await == 5
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: worker\n    static_configs:\n      - targets: [\"{}\"]\n", service.ops_addr()),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("prometheus is not available ({err}): apt-get install prometheus")
        });

    let query = |q: &str| {
        let url = format!("http://{web}/api/v1/query?query={q}");
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            let answer: serde_json::Value = serde_json::from_str(&text).ok()?;
            answer["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if query(metrics::WORKSPACE_CREATED).await == Some(5.0) {
                let missing_email =
                    series(metrics::WORKSPACE_FAILED, &[("reason", "missing_email")]);
                return query(&format!("sum({missing_email})")).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(
        result.unwrap_or_else(|_| panic!(
            "Prometheus never reported {} = 5",
            metrics::WORKSPACE_CREATED
        )),
        Some(1.0)
    );
}

/// `docker compose` (the plugin) or `docker-compose`, whichever is installed.
fn compose_command() -> Vec<&'static str> {
    // The docker CLI without its compose plugin says "unknown command".
    let answers = |program: &str, args: &[&str]| {
        Command::new(program).args(args).output().is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .to_lowercase()
                    .contains("version")
        })
    };
    if answers("docker", &["compose", "version"]) {
        vec!["docker", "compose"]
    } else if answers("docker-compose", &["version"]) {
        vec!["docker-compose"]
    } else {
        panic!(
            "neither `docker compose` nor `docker-compose` is available: apt-get install docker-compose"
        );
    }
}

/// `compose [--profile P] config --quiet` with the variables `.env` must set; its stderr on failure.
fn compose_config(profile: Option<&str>) -> Result<(), String> {
    let compose = compose_command();
    let profile: &[&str] = match profile {
        Some(profile) => &["--profile", profile],
        None => &[],
    };
    let output = Command::new(compose[0])
        .args(&compose[1..])
        .args(profile)
        .args(["config", "--quiet"])
        .envs([
            (
                "CLERK_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("POSTGRES_PASSWORD", "test"),
            ("RABBITMQ_PASSWORD", "test"),
            ("RABBITMQ_ERLANG_COOKIE", "test"),
            ("GRAFANA_ADMIN_PASSWORD", "test"),
            ("CONSOLE_TOKEN", "test"),
        ])
        .current_dir(repo())
        .output()
        .expect("compose runs");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{compose:?} {profile:?} config: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[test]
fn docker_compose_accepts_the_compose_file() {
    compose_config(None).unwrap_or_else(|err| panic!("{err}"));

    let file = read("docker-compose.yml");
    for service in [
        "postgres",
        "rabbitmq",
        "migrate",
        "ingress",
        "worker",
        "console",
        "prometheus",
        "grafana",
    ] {
        assert!(
            file.contains(&format!("\n  {service}:")),
            "{service} in docker-compose.yml"
        );
    }
    assert!(file.contains("condition: service_completed_successfully"));
    assert!(!file.contains("container_name"), "the worker must scale");
    let env = read(".env.example");
    assert!(env.contains("CLERK_WEBHOOK_SECRET="));
    assert!(env.contains("RABBITMQ_ERLANG_COOKIE="));
}

#[test]
fn docker_compose_accepts_the_cluster_profile() {
    compose_config(Some("cluster")).unwrap_or_else(|err| panic!("{err}"));

    let file = read("docker-compose.yml");
    for service in [
        "rabbitmq-1",
        "rabbitmq-2",
        "rabbitmq-3",
        "ingress-cluster",
        "worker-cluster",
    ] {
        assert!(
            file.contains(&format!("\n  {service}:")),
            "{service} in docker-compose.yml"
        );
    }
    for node in ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"] {
        assert!(
            file.contains(&format!("@{node}:5672/%2f")),
            "{node} in the cluster services' AMQP_URL"
        );
        assert!(
            read("deploy/rabbitmq/cluster.conf").contains(&format!("= rabbit@{node}\n")),
            "{node} in deploy/rabbitmq/cluster.conf"
        );
    }
}

#[test]
fn the_dockerfile_stubs_every_workspace_member() {
    let dockerfile = read("Dockerfile");
    let manifest = read("Cargo.toml");
    let members = Regex::new(r#"members\s*=\s*\[([^\]]*)\]"#).unwrap();
    let list = &members.captures(&manifest).expect("workspace members")[1];
    for member in Regex::new(r#""([^"]+)""#).unwrap().captures_iter(list) {
        let member = &member[1];
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "{member} in the dependency layer"
        );
    }
    assert!(
        dockerfile.contains("USER worker")
            && dockerfile.contains("HEALTHCHECK")
            && dockerfile.contains("CMD [\"run\"]")
    );
    assert!(read(".dockerignore").contains("target/"));
}
