//! The operator console in a real browser: headless Chromium driven through WebDriver, against
//! a worker with the real database and broker. An operator logs in, filters, opens a letter,
//! replays it and sees the user provisioned; previews and runs a bulk replay; and a page on
//! another site cannot make the browser act. Each step saves a screenshot under
//! `target/screenshots/`.

use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::browser::Browser;
use integration_tests::dead_letters;
use integration_tests::eventually;
use integration_tests::stack::Stack;

const TOKEN: &str = "console-token-for-browser-tests-91c4";

/// A worker consuming, with the console on a port of its own; its address.
async fn console(stack: &Stack) -> (TestApp, String) {
    stack.start_with_console(&["consume"], TOKEN).await
}

/// Logs in through the form as `name`; lands on the dead letters.
async fn log_in(browser: &mut Browser, base: &str, name: &str) {
    browser.goto(&format!("{base}/login")).await;
    browser.fill("#name", name).await;
    browser.fill("#token", TOKEN).await;
    browser.screenshot("login").await;
    browser.click("button[type=submit]").await;
    browser.wait_for_path("/dead-letters").await;
    browser.wait_for_text("header", name).await;
}

async fn provisioned(stack: &Stack, user_id: &str) -> bool {
    stack
        .db
        .scalar(&format!(
            "SELECT count(*) FROM users u JOIN workspaces w ON w.user_id = u.id WHERE u.id = '{user_id}'"
        ))
        .await
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_filters_opens_and_replays_a_letter_and_sees_the_user_provisioned() {
    let stack = Stack::new().await;
    let (_app, base) = console(&stack).await;
    dead_letters::publish(&stack.broker, 3, "retries_exhausted", "outage", true).await;
    dead_letters::publish(&stack.broker, 2, "missing_email", "phone", false).await;
    dead_letters::stored(&stack.db, 5).await;

    let mut browser = Browser::start("console-replay-one").await;
    log_in(&mut browser, &base, "Dana Ops").await;
    assert!(browser.text("#counts").await.contains("5 matching"));
    browser.screenshot("dead-letters").await;

    browser.fill("#reason", "retries_exhausted").await;
    browser.click(".filter button[type=submit]").await;
    browser.wait_for_text("#counts", "3 matching").await;
    assert_eq!(
        browser
            .client
            .find_all(fantoccini::Locator::Css("tbody tr"))
            .await
            .unwrap()
            .len(),
        3
    );
    browser.screenshot("filtered").await;

    browser.click("a[href='/dead-letters/msg_outage001']").await;
    browser.wait_for_path("/dead-letters/msg_outage001").await;
    let page = browser.page_text().await;
    assert!(page.contains("user_2outage001"), "{page}");
    assert!(
        page.contains("not provisioned"),
        "not provisioned yet: {page}"
    );
    browser.screenshot("letter").await;

    browser.click("form[action$='/replay'] button").await;
    eventually(
        "the replayed user provisioned",
        Duration::from_secs(20),
        || provisioned(&stack, "user_2outage001"),
    )
    .await;
    browser
        .goto(&format!("{base}/dead-letters/msg_outage001"))
        .await;
    let status = browser.text("#status").await;
    assert!(status.starts_with("replayed (no longer needed"), "{status}");
    let page = browser.page_text().await;
    assert!(page.contains("My Workspace"), "the user now: {page}");
    assert!(
        page.contains("Dana Ops"),
        "the history names the operator: {page}"
    );
    browser.screenshot("replayed").await;

    browser.goto(&format!("{base}/")).await;
    browser.find("#failure-rate").await;
    browser.screenshot("overview").await;
    browser
        .goto(&format!("{base}/users?q=user_2outage001"))
        .await;
    browser.find("main").await;
    browser.screenshot("users").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_previewed_in_the_browser_provisions_exactly_those_users() {
    let stack = Stack::new().await;
    let (_app, base) = console(&stack).await;
    dead_letters::publish(&stack.broker, 4, "retries_exhausted", "bulk", true).await;
    dead_letters::publish(&stack.broker, 2, "email_conflict", "other", true).await;
    dead_letters::stored(&stack.db, 6).await;

    let mut browser = Browser::start("console-bulk-replay").await;
    log_in(&mut browser, &base, "Eve").await;
    browser.fill("#reason", "retries_exhausted").await;
    browser.click(".filter button[type=submit]").await;
    browser.wait_for_text("#counts", "4 matching").await;
    browser
        .click("form[action='/dead-letters/preview'] button")
        .await;
    let heading = browser.wait_for_text("h1", "Act on").await;
    assert_eq!(heading, "Act on 4 open letters");
    assert!(
        browser
            .text("#no-longer-needed")
            .await
            .starts_with("0 of them")
    );
    browser.screenshot("preview").await;

    browser
        .click("form[action='/dead-letters/bulk'] button")
        .await;
    let outcome = browser.wait_for_text("#outcome", "Replayed").await;
    assert!(outcome.starts_with("Replayed 4 of 4 letters"), "{outcome}");
    browser.screenshot("done").await;
    for i in 0..4 {
        let user = format!("user_2bulk{i:03}");
        eventually(
            "each previewed user provisioned",
            Duration::from_secs(20),
            || provisioned(&stack, &user),
        )
        .await;
    }
    assert_eq!(
        stack.users().await,
        4,
        "the other reason's letters stay put"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_site_cannot_make_the_browser_replay() {
    let stack = Stack::new().await;
    let (_app, base) = console(&stack).await;
    dead_letters::publish(&stack.broker, 1, "retries_exhausted", "csrf", true).await;
    dead_letters::stored(&stack.db, 1).await;
    let mut browser = Browser::start("console-cross-site").await;
    log_in(&mut browser, &base, "Frank").await;

    // A page served from `localhost`, another site than the console's 127.0.0.1, whose button
    // posts to the console's replay in the operator's logged-in browser.
    let evil = evil_site(&format!("{base}/dead-letters/msg_csrf000/replay")).await;
    browser
        .goto(&format!("http://localhost:{}/", evil.port()))
        .await;
    browser.screenshot("other-site").await;
    browser.click("button").await;
    browser
        .wait_for_path("/dead-letters/msg_csrf000/replay")
        .await;
    // Chromium's own page for an error answer with no body (its UI in English: --lang).
    let page = browser.wait_for_text("body", "403").await;
    assert!(
        page.contains("HTTP ERROR 403"),
        "refused, not sent to log in: {page}"
    );
    browser.screenshot("refused").await;
    assert_eq!(
        stack
            .db
            .scalar("SELECT count(*) FROM dead_letters WHERE status = 'open'")
            .await,
        1
    );
    assert_eq!(
        stack
            .db
            .scalar("SELECT count(*) FROM dead_letter_actions")
            .await,
        0
    );
    assert_eq!(stack.users().await, 0);
    browser.close().await;
}

/// Serves one page with a form posting to `target`.
async fn evil_site(target: &str) -> std::net::SocketAddr {
    let page = format!(
        "<!doctype html><title>Win a prize</title>\
         <form method=post action=\"{target}\"><button type=submit>Claim</button></form>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_by_keyboard_and_labels_every_control() {
    use fantoccini::key::Key;
    let stack = Stack::new().await;
    let (_app, base) = console(&stack).await;
    dead_letters::publish(&stack.broker, 1, "retries_exhausted", "keys", true).await;
    dead_letters::stored(&stack.db, 1).await;
    let mut browser = Browser::start("console-keyboard").await;

    // The name field has the focus; Tab reaches the token, Enter sends the form.
    browser.goto(&format!("{base}/login")).await;
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("name"));
    let keys = format!(
        "Gus{}{TOKEN}{}",
        char::from(Key::Tab),
        char::from(Key::Enter)
    );
    focused.send_keys(&keys).await.unwrap();
    browser.wait_for_path("/dead-letters").await;

    // Every page's every visible control has a label.
    for path in [
        "/",
        "/dead-letters",
        "/dead-letters/msg_keys000",
        "/users?q=nobody@example.com",
    ] {
        browser.goto(&format!("{base}{path}")).await;
        let controls = browser
            .client
            .execute(
                "const all = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')];
                 return {
                   count: all.length,
                   unlabelled: all
                     .filter(c => !(c.id && document.querySelector(`label[for='${c.id}']`)))
                     .map(c => c.outerHTML),
                 };",
                vec![],
            )
            .await
            .unwrap();
        let overview = path == "/";
        assert_eq!(
            controls["count"].as_u64().unwrap() == 0,
            overview,
            "{path}: {controls}"
        );
        assert_eq!(controls["unlabelled"], serde_json::json!([]), "{path}");
    }
    browser.screenshot("labelled").await;
    browser.close().await;
}
