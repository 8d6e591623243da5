//! A real browser for the console's tests: Debian's headless Chromium, driven through its
//! chromedriver over WebDriver (fantoccini). Each [`Browser`] runs a chromedriver of its own on
//! a free port, so tests run in parallel, and kills it (and the Chromium it started) when
//! dropped. Screenshots go under `target/screenshots/<test>/`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL: &str = "install them with: apt-get install -y chromium chromium-driver \
     (scripts/test.sh does)";
/// How long chromedriver gets to answer, and an element to appear.
const PATIENCE: Duration = Duration::from_secs(30);

/// A headless Chromium session, with the chromedriver that runs it and the profile it writes.
pub struct Browser {
    /// The WebDriver session, for what the helpers below do not cover.
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    taken: usize,
}

/// A chromedriver in a process group of its own: dropping it kills chromedriver and the
/// Chromium it started, even when the test panicked before its session began.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this value started; no memory is involved.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. `test` names the screenshot folder.
    pub async fn start(test: &str) -> Self {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: the browser tests need Chromium and chromedriver; {INSTALL}"
            );
        }
        let profile = tempfile::tempdir().expect("a Chromium profile folder");
        let shots = screenshot_root().join(test);
        std::fs::create_dir_all(&shots).expect("a screenshot folder under target/");
        // A free port can be taken between finding it and chromedriver binding it: then
        // chromedriver exits, and another port is tried.
        for _ in 0..3 {
            let port = free_port();
            let mut driver = Driver(
                Command::new(CHROMEDRIVER)
                    .arg(format!("--port={port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| panic!("{CHROMEDRIVER} did not start ({e}); {INSTALL}")),
            );
            let webdriver = format!("http://127.0.0.1:{port}");
            if let Some(client) = connect(&webdriver, &mut driver.0, profile.path()).await {
                return Self {
                    client,
                    _driver: driver,
                    _profile: profile,
                    shots,
                    taken: 0,
                };
            }
        }
        panic!("chromedriver exited three times at start (ports taken?)");
    }

    /// Waits until the page shown is `path` (with its query, if any).
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.path().await;
            if now == path {
                return;
            }
            assert!(Instant::now() < deadline, "still on {now}, not {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The path of the page shown now.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until the element `css` names holds `needle` in its text; that text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The element may be on the page being left, or gone between finding and reading.
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
                && text.contains(needle)
            {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {css} on {}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the field `css` names, after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear the field");
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks the element `css` names (a link or a button) and waits for what it loads.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The visible text of the element `css` names.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .expect("the element's text")
    }

    /// The page's visible text.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// Waits for `css` to name an element.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    /// Saves the page as `target/screenshots/<test>/<n>-<step>.png`; the path.
    pub async fn screenshot(&mut self, step: &str) -> PathBuf {
        self.taken += 1;
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{:02}-{step}.png", self.taken));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the session (Chromium quits); dropping then only stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// A session in headless Chromium once chromedriver answers; `None` if chromedriver exited.
async fn connect(webdriver: &str, driver: &mut Child, profile: &Path) -> Option<Client> {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1280,900",
                "--lang=en-US",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("an object")
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(webdriver)
            .await;
        match attempt {
            Ok(client) => return Some(client),
            Err(_) if matches!(driver.try_wait(), Ok(Some(_))) => return None,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                panic!("chromedriver at {webdriver} gave no session within {PATIENCE:?}: {e}")
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `target/screenshots`, beside the build.
fn screenshot_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}
