//! The operator console over real HTTP against the real database and broker: who may see it
//! (token, login form, signed cookie, bearer), what it refuses (cross-site POSTs, actions in
//! read-only mode), its headers, and its pages and actions on dead letters in the store.

use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::clerk::UserEvent;
use integration_tests::dead_letters;
use integration_tests::eventually;
use integration_tests::stack::Stack;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};

const TOKEN: &str = "console-token-for-tests-5f2a";

struct Console {
    _app: TestApp,
    base: String,
    http: reqwest::Client,
}

async fn console(stack: &Stack, extra: &[(&'static str, &str)]) -> Console {
    let mut env = vec![("CONSOLE_ADDR", "127.0.0.1:0"), ("CONSOLE_TOKEN", TOKEN)];
    env.extend_from_slice(extra);
    let app = stack.start(&["consume"], &env).await;
    let addr = app.console_addr.expect("the console listens");
    Console {
        _app: app,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Console {
    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    /// A form POST as the console's own page sends it (same origin).
    async fn post(&self, path: &str, cookie: Option<&str>, form: &str) -> reqwest::Response {
        self.post_from(path, cookie, form, &self.base.clone()).await
    }

    async fn post_from(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &str,
        origin: &str,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("origin", origin)
            .body(form.to_owned());
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    /// Logs in as `name`; the session cookie to send back.
    async fn log_in(&self, name: &str) -> String {
        let answer = self
            .post("/login", None, &format!("name={name}&token={TOKEN}"))
            .await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let set = header(answer.headers(), SET_COOKIE);
        set.split(';').next().unwrap().to_owned()
    }
}

fn header(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn letters(stack: &Stack, n: usize, reason: &str, prefix: &str) {
    dead_letters::publish(&stack.broker, n, reason, prefix, false).await;
}

async fn stored(stack: &Stack, n: i64) {
    dead_letters::stored(&stack.db, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_sees_a_page_without_logging_in_or_the_token() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    for path in ["/", "/dead-letters", "/dead-letters/msg_x"] {
        let answer = console.get(path, None).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(header(answer.headers(), LOCATION), "/login");
    }
    let forged = console
        .get("/dead-letters", Some("console_session=YWxpY2U.AAAA"))
        .await;
    assert_eq!(forged.status(), StatusCode::SEE_OTHER, "a forged cookie");
    let wrong = console
        .http
        .get(format!("{}/dead-letters", console.base))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let script = console
        .http
        .get(format!("{}/dead-letters", console.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_checks_the_token_and_sets_a_strict_http_only_cookie() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    let form = console.get("/login", None).await;
    assert_eq!(form.status(), StatusCode::OK);
    let html = form.text().await.unwrap();
    assert!(html.contains(r#"<label for="token">"#) && html.contains(r#"<label for="name">"#));

    let refused = console
        .post("/login", None, "name=mallory&token=guess")
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(header(refused.headers(), SET_COOKIE).is_empty());
    let nameless = console
        .post("/login", None, &format!("name=+&token={TOKEN}"))
        .await;
    assert_eq!(nameless.status(), StatusCode::UNAUTHORIZED);

    let answer = console
        .post("/login", None, &format!("name=alice&token={TOKEN}"))
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let set = header(answer.headers(), SET_COOKIE);
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "loopback, no TLS: {set}");
    let cookie = set.split(';').next().unwrap();
    let page = console.get("/dead-letters", Some(cookie)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("alice"));

    let out = console.post("/logout", Some(cookie), "").await;
    assert!(header(out.headers(), SET_COOKIE).contains("Max-Age=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_strict_policy_and_cross_site_posts_are_refused() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    let cookie = console.log_in("alice").await;
    for answer in [
        console.get("/dead-letters", Some(&cookie)).await,
        console.get("/login", None).await,
        console.get("/dead-letters", None).await,
    ] {
        let policy = header(answer.headers(), "content-security-policy");
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
        assert_eq!(
            header(answer.headers(), "x-content-type-options"),
            "nosniff"
        );
    }
    let css = console.get("/assets/console.css", None).await;
    assert_eq!(
        header(css.headers(), CONTENT_TYPE),
        "text/css; charset=utf-8"
    );

    let evil = "http://evil.example";
    let cross = console
        .post_from("/dead-letters/msg_x/replay", Some(&cookie), "", evil)
        .await;
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let fetched = console
        .http
        .post(format!("{}/dead-letters/msg_x/discard", console.base))
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "cross-site")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("note=x")
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::FORBIDDEN);
    let same = console
        .post("/dead-letters/msg_x/replay", Some(&cookie), "")
        .await;
    assert_eq!(same.status(), StatusCode::NOT_FOUND, "past the CSRF check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_counts_and_pages_and_a_letter_shows_everything() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    letters(&stack, 55, "missing_email", "page").await;
    letters(&stack, 3, "email_conflict", "conf").await;
    stored(&stack, 58).await;
    let cookie = console.log_in("alice").await;

    let all = console
        .get("/dead-letters", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(all.contains("58 matching"), "{all}");
    assert!(all.contains("missing_email</a>: 55") && all.contains("email_conflict</a>: 3"));
    let next = all
        .split(r#"<a rel="next" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to the older letters")
        .replace("&amp;", "&");
    let older = console
        .get(&next, Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    let rows = |html: &str| html.matches("<td><a href=\"/dead-letters/").count();
    assert_eq!(rows(&all) + rows(&older), 58);
    assert!(!older.contains(r#"rel="next""#));

    let conflicts = console
        .get("/dead-letters?reason=email_conflict", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(rows(&conflicts), 3);
    assert!(conflicts.contains("msg_conf001") && !conflicts.contains("msg_page001"));
    let one = console
        .get(
            "/dead-letters?svix_id=msg_page007&status=any",
            Some(&cookie),
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(rows(&one), 1);
    let bad = console
        .get("/dead-letters?since=yesterday", Some(&cookie))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // The other filters: time range, event type, Clerk user id.
    for (query, matching) in [
        ("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z", 58),
        ("since=2999-01-01T00:00:00Z", 0),
        ("until=2000-01-01T00:00:00Z", 0),
        ("type=user.created", 58),
        ("type=user.deleted", 0),
        ("user=user_2conf001", 1),
    ] {
        let page = console
            .get(&format!("/dead-letters?{query}"), Some(&cookie))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            page.contains(&format!("{matching} matching")),
            "{query}: {page}"
        );
    }

    let letter = console
        .get("/dead-letters/msg_conf001", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(letter.contains("email_conflict") && letter.contains("x-failure-reason"));
    assert!(
        letter.contains("&#34;user_2conf001&#34;") || letter.contains("&quot;user_2conf001&quot;"),
        "the payload, escaped"
    );
    assert!(letter.contains("No row for this user"));
    let missing = console.get("/dead-letters/msg_nobody", Some(&cookie)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_discard_are_recorded_with_the_operator_and_read_only_refuses_both() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    letters(&stack, 2, "missing_email", "act").await;
    stored(&stack, 2).await;
    let cookie = console.log_in("alice").await;

    let replayed = console
        .post("/dead-letters/msg_act000/replay", Some(&cookie), "")
        .await;
    assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
    let discarded = console
        .post(
            "/dead-letters/msg_act001/discard",
            Some(&cookie),
            "note=phone+only",
        )
        .await;
    assert_eq!(discarded.status(), StatusCode::SEE_OTHER);
    let audit = stack
        .db
        .rows("SELECT actor, source, action, note, changed FROM dead_letter_actions ORDER BY id")
        .await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["actor"], "alice");
    assert_eq!(audit[0]["source"], "console");
    assert_eq!(audit[0]["action"], "replay");
    assert_eq!(audit[1]["action"], "discard");
    assert_eq!(audit[1]["note"], "phone only");
    let again = console
        .post("/dead-letters/msg_act001/replay", Some(&cookie), "")
        .await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "a discarded letter stays discarded"
    );
    drop(console);

    let read_only = console_read_only(&stack).await;
    let cookie = read_only.log_in("bob").await;
    letters(&stack, 1, "missing_email", "ro").await;
    stored(&stack, 3).await;
    let page = read_only
        .get("/dead-letters/msg_ro000", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Replay</button>") && !page.contains("Discard</button>"));
    for (action, form) in [
        ("/dead-letters/msg_ro000/replay", ""),
        ("/dead-letters/msg_ro000/discard", "note=x"),
        ("/dead-letters/preview", "reason=missing_email"),
        ("/dead-letters/bulk", "ids=1&action=replay"),
    ] {
        let refused = read_only.post(action, Some(&cookie), form).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{action}");
        let anonymous = read_only.post(action, None, form).await;
        assert_eq!(
            anonymous.status(),
            StatusCode::SEE_OTHER,
            "{action}: logging in comes first"
        );
    }
    assert_eq!(
        stack
            .db
            .scalar("SELECT count(*) FROM dead_letter_actions")
            .await,
        2
    );
}

async fn console_read_only(stack: &Stack) -> Console {
    console(stack, &[("CONSOLE_READ_ONLY", "true")]).await
}

#[tokio::test]
async fn a_console_beyond_loopback_without_a_token_refuses_to_start() {
    let stack = Stack::new().await;
    let env = stack.env(&[("CONSOLE_ADDR", "0.0.0.0:0")]);
    let refused = TestApp::start(&["consume"], &env).await;
    let error = format!("{:#}", refused.err().expect("refused"));
    assert!(error.contains("CONSOLE_TOKEN"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_can_come_from_a_file_and_not_from_both() {
    let stack = Stack::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let file = file.display().to_string();

    // A public address is allowed: the file holds the token.
    let app = stack
        .start(
            &["consume"],
            &[("CONSOLE_ADDR", "0.0.0.0:0"), ("CONSOLE_TOKEN_FILE", &file)],
        )
        .await;
    let port = app.console_addr.expect("the console listens").port();
    let http = reqwest::Client::new();
    let page = |token: &'static str| {
        http.get(format!("http://127.0.0.1:{port}/dead-letters"))
            .bearer_auth(token)
            .send()
    };
    // The file's trailing newline is not part of the token.
    assert_eq!(page(TOKEN).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        page("wrong").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let env = stack.env(&[
        ("CONSOLE_ADDR", "127.0.0.1:0"),
        ("CONSOLE_TOKEN", TOKEN),
        ("CONSOLE_TOKEN_FILE", &file),
    ]);
    let both = TestApp::start(&["consume"], &env).await;
    let error = format!("{:#}", both.err().expect("refused"));
    assert!(
        error.contains("CONSOLE_TOKEN and CONSOLE_TOKEN_FILE are both set"),
        "{error}"
    );
}

/// The value of the hidden field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    html.split(&marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no hidden {name} in {html}"))
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_acts_on_exactly_the_letters_previewed() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    letters(&stack, 5, "missing_email", "bulk").await;
    letters(&stack, 2, "email_conflict", "other").await;
    stored(&stack, 7).await;
    let cookie = console.log_in("carol").await;

    let preview = console
        .post(
            "/dead-letters/preview",
            Some(&cookie),
            "reason=missing_email",
        )
        .await;
    assert_eq!(preview.status(), StatusCode::OK);
    let html = preview.text().await.unwrap();
    assert!(html.contains("Act on 5 open letters"), "{html}");
    assert!(html.contains("0 of them would change nothing"), "{html}");
    let ids = hidden(&html, "ids");
    let filter = hidden(&html, "filter");

    // Letters that arrive after the preview match the filter, and are not acted on.
    letters(&stack, 3, "missing_email", "late").await;
    stored(&stack, 10).await;
    let form = format!(
        "ids={}&filter={}&action=replay&note=",
        ids.replace(',', "%2C"),
        url_encode(&filter)
    );
    let done = console
        .post("/dead-letters/bulk", Some(&cookie), &form)
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    let outcome = done.text().await.unwrap();
    assert!(outcome.contains("Replayed 5 of 5 letters"), "{outcome}");
    // The running worker takes the replays, which fail again (phone-only) and reopen: the
    // history says what was replayed.
    let replayed = stack
        .db
        .rows(
            "SELECT d.svix_id FROM dead_letter_history h JOIN dead_letters d ON d.id = h.dead_letter_id \
             WHERE h.event = 'replayed' ORDER BY d.svix_id",
        )
        .await;
    assert_eq!(replayed.len(), 5);
    assert!(
        replayed
            .iter()
            .all(|r| r["svix_id"].as_str().unwrap().starts_with("msg_bulk"))
    );
    let audit = stack
        .db
        .rows("SELECT actor, chosen, changed, filter FROM dead_letter_actions")
        .await;
    assert_eq!(audit[0]["actor"], "carol");
    assert_eq!(audit[0]["changed"], 5);
    assert_eq!(
        audit[0]["filter"],
        serde_json::json!({"reason": "missing_email", "status": "open"}),
        "the filter as the operator gave it, without the preview's cap"
    );

    let refused = console
        .post(
            "/dead-letters/bulk",
            Some(&cookie),
            "ids=1%2Cx&action=replay",
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_found_by_id_email_or_username() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    stack
        .db
        .execute("INSERT INTO users (id, email, username) VALUES ('user_2found', 'found@example.com', 'finder')")
        .await;
    let cookie = console.log_in("dave").await;
    for q in ["user_2found", "found%40example.com", "finder"] {
        let page = console
            .get(&format!("/users?q={q}"), Some(&cookie))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("user_2found") && page.contains("live"),
            "{q}: {page}"
        );
    }
    let none = console
        .get("/users?q=nobody", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(none.contains("No user with nobody"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_without_a_token_answers_only_to_loopback_names() {
    let stack = Stack::new().await;
    let console = console(&stack, &[("CONSOLE_TOKEN", "")]).await;
    let form = console.get("/login", None).await.text().await.unwrap();
    assert!(!form.contains(r#"name="token""#), "no token to ask for");
    let cookie = console.log_in("erin").await;
    assert_eq!(
        console.get("/dead-letters", Some(&cookie)).await.status(),
        StatusCode::OK
    );
    // A page that rebound its own name to 127.0.0.1: same origin as far as CSRF goes.
    let rebound = console
        .http
        .post(format!("{}/login", console.base))
        .header(reqwest::header::HOST, "evil.example")
        .header("origin", "http://evil.example")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("name=mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    let bearer = console
        .http
        .get(format!("{}/dead-letters", console.base))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(
        bearer.status(),
        StatusCode::UNAUTHORIZED,
        "no token, no bearer access"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_open_letters_the_queues_and_the_last_reconcile_run() {
    let stack = Stack::new().await;
    let console = console(&stack, &[]).await;
    letters(&stack, 2, "missing_email", "over").await;
    stored(&stack, 2).await;
    let cookie = console.log_in("frank").await;
    let page = console.get("/", Some(&cookie)).await.text().await.unwrap();
    assert!(page.contains("Open dead letters: 2"), "{page}");
    let main_queue = format!("{}: 0 ready, 1 consumers", stack.broker.topology.queue);
    assert!(page.contains(&main_queue), "{page}");
    assert!(page.contains("None yet."), "no reconcile run: {page}");
    assert!(
        page.contains(r#"<dd id="failure-rate">0.0 %</dd>"#),
        "nothing consumed yet: {page}"
    );

    // Three sign-ups and one the worker dead-letters: a quarter of what ended failed.
    for i in 0..3 {
        let user = UserEvent::created(
            &format!("user_2rate{i}"),
            &format!("r{i}@example.com"),
            None,
        );
        stack
            .broker
            .publish("user.created", &user.body(), &format!("msg_rate{i}"))
            .await;
    }
    let bad = UserEvent {
        email: None,
        ..UserEvent::created("user_2rate9", "x@example.com", None)
    };
    stack
        .broker
        .publish("user.created", &bad.body(), "msg_rate9")
        .await;
    stored(&stack, 3).await;
    eventually("the three users", Duration::from_secs(20), || async {
        stack.db.scalar("SELECT count(*) FROM users").await == 3
    })
    .await;
    // The counters follow the commit and the broker's confirm: wait for them too.
    let overview = || async { console.get("/", Some(&cookie)).await.text().await.unwrap() };
    eventually("a quarter failed", Duration::from_secs(20), || async {
        overview()
            .await
            .contains(r#"<dd id="failure-rate">25.0 %</dd>"#)
    })
    .await;
    let page = overview().await;
    let events_per_second: f64 = regex::Regex::new(r#"<dd id="events-per-second">([0-9.]+)</dd>"#)
        .unwrap()
        .captures(&page)
        .and_then(|c| c[1].parse().ok())
        .expect("events per second on the page");
    assert!(events_per_second > 0.0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_console_serves_the_console_alone_while_nothing_consumes() {
    let stack = Stack::new().await;
    // Letters a stopped worker's keeper already moved into the store.
    let keeper = stack.start(&["consume"], &[]).await;
    letters(&stack, 2, "missing_email", "alone").await;
    stored(&stack, 2).await;
    drop(keeper);

    let (_app, base) = stack.start_with_console(&["console"], TOKEN).await;
    let http = reqwest::Client::new();
    let overview = || async {
        http.get(format!("{base}/"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Once the stopped worker's connection is gone, nothing consumes.
    let idle = format!("{}: 0 ready, 0 consumers", stack.broker.topology.queue);
    eventually("nothing consumes", Duration::from_secs(20), || async {
        overview().await.contains(&idle)
    })
    .await;
    let page = overview().await;
    assert!(page.contains("Open dead letters: 2"), "{page}");
    assert!(
        page.contains(r#"<p id="no-consumer">"#) && !page.contains("failure-rate"),
        "no rates where nothing consumes: {page}"
    );

    let refused = TestApp::start(&["console"], &stack.env(&[])).await;
    let error = format!("{:#}", refused.err().expect("refused"));
    assert!(error.contains("CONSOLE_ADDR is required"), "{error}");
}
