//! The field page (SPEC §12) in a real browser: Debian's Chromium,
//! headless, driven over its DevTools pipe ([`slmd_e2e::browser`]),
//! against the real daemon (`slmd demo`, or `slmd run` with a simulated
//! NL-43 driven loud). Needs `chromium`, so the tests are `#[ignore]`d in a
//! plain `cargo test`; `.ci/run` installs it.
//!
//! The 360 px screenshot is written to `<target>/screenshots/page-360.png`.

use serde_json::Value;
use slmd_e2e::api::{api_address, free_port};
use slmd_e2e::browser::{Browser, Tab};
use slmd_e2e::{Daemon, Proc, Setup, Sim, bin, poll_until, tcp_device};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The strings of the array `expression` gives.
fn strings(tab: &Tab<'_>, expression: &str) -> Vec<String> {
    tab.eval(expression)
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of the meter tiles on the page.
fn tiles(tab: &Tab<'_>) -> Vec<String> {
    strings(
        tab,
        "[...document.querySelectorAll('.meter')].map(t => t.dataset.meter)",
    )
}

/// Each tile's Lp as shown.
fn lps(tab: &Tab<'_>) -> Vec<String> {
    strings(
        tab,
        "[...document.querySelectorAll('.meter .lp')].map(e => e.textContent)",
    )
}

fn wait_ready(tab: &Tab<'_>) {
    tab.wait("document.body.dataset.state === 'ready'", TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "the page did not get ready: state {}, footer {}",
                tab.eval("document.body.dataset.state"),
                tab.eval("document.getElementById('footer').textContent")
            )
        });
}

/// A config with one NL-43 `north` at `address`, the API on `listen`,
/// and `extra` tables.
fn config(
    setup: &Setup,
    address: &str,
    listen: &str,
    api: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = setup.path("slmd.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"gw-page\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"{listen}\"\n{api}\n\n\
             [buffer]\ncommit_interval = \"250ms\"\n\n{}\n{extra}",
            setup.path("state").display(),
            tcp_device("north", address, "reconnect_min = \"100ms\"\nreconnect_max = \"1s\""),
        ),
    )
    .expect("write config");
    path
}

#[test]
#[ignore = "needs chromium; .ci/run installs it"]
fn the_demo_page_shows_every_meter_live_with_a_chart_at_360_px_and_on_a_laptop() {
    let mut cmd = Command::new(bin("slmd"));
    cmd.arg("demo").env("RUST_LOG", "info");
    let demo = Proc::spawn(cmd);
    let (_, line) = demo
        .stdout
        .wait_from(0, TIMEOUT, |l| l.trim_start().starts_with("page "))
        .unwrap_or_else(|| panic!("slmd demo printed no page address\n{}", demo.transcript()));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let meters = ["nl43-tcp", "nl43-stream", "xl2", "svantek", "casella"];

    let browser = Browser::start();
    eprintln!("browser: {}", browser.version());
    let phone = browser.open(&url, 360, 780);
    wait_ready(&phone);
    let mut shown = tiles(&phone);
    shown.sort();
    let mut expected: Vec<String> = meters.iter().map(|m| (*m).to_owned()).collect();
    expected.sort();
    assert_eq!(shown, expected, "a tile per meter of the demo");

    // Live: the numbers change while the page is open.
    let first = poll_until(TIMEOUT, || {
        let now = lps(&phone);
        now.iter().all(|v| v != "–").then_some(now)
    })
    .unwrap_or_else(|| panic!("every tile shows an Lp: {:?}", lps(&phone)));
    poll_until(TIMEOUT, || (lps(&phone) != first).then_some(()))
        .unwrap_or_else(|| panic!("the numbers did not change: {first:?}"));
    // The chart has points (backfilled from history, then live).
    phone
        .wait(
            "[...document.querySelectorAll('canvas.chart')].every(c => Number(c.dataset.points) > 1)",
            TIMEOUT,
        )
        .unwrap_or_else(|| {
            panic!(
                "charts without points: {}",
                phone.eval("[...document.querySelectorAll('canvas.chart')].map(c => c.dataset.points)")
            )
        });
    // No token is needed here: the token form stays out of the way.
    assert_eq!(
        phone.eval("getComputedStyle(document.getElementById('login')).display"),
        "none"
    );
    // Identity, state, buffer and fleet are shown.
    let text = phone.eval("document.body.innerText");
    let text = text.as_str().unwrap_or_default();
    for wanted in ["NL-43", "connected", "records stored", "backlog"] {
        assert!(
            text.contains(wanted),
            "{wanted:?} missing from the page:\n{text}"
        );
    }

    // At 360 px: one column of whole tiles, nothing wider than the screen.
    let screenshots = slmd_e2e::deb::target_dir().join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("screenshot dir");
    let shot = screenshots.join("page-360.png");
    assert_eq!(phone.screenshot(&shot), (360, 780), "{}", shot.display());
    let layout = phone.eval(
        "({scroll: document.documentElement.scrollWidth, tiles: [...document.querySelectorAll('.meter')].map(t => { \
             const r = t.getBoundingClientRect(); return [r.left, r.right, r.width, r.height]; })})",
    );
    assert!(
        layout["scroll"].as_f64().is_some_and(|w| w <= 360.0),
        "{layout}"
    );
    for tile in layout["tiles"].as_array().expect("tiles") {
        let [left, right, width, height] = [0, 1, 2, 3].map(|i| tile[i].as_f64().unwrap_or(-1.0));
        assert!(
            left >= 0.0 && right <= 360.0 && width >= 300.0 && height > 100.0,
            "{layout}"
        );
    }
    // The first tile's big numbers are on the screen without scrolling.
    let visible = phone.eval(
        "(() => { const r = document.querySelector('.meter .lp').getBoundingClientRect(); \
              return r.top >= 0 && r.bottom <= innerHeight && r.width > 0; })()",
    );
    assert_eq!(visible, Value::Bool(true));

    // On a laptop: tiles side by side.
    let laptop = browser.open(&url, 1280, 800);
    wait_ready(&laptop);
    let tops = laptop.eval("[...document.querySelectorAll('.meter')].slice(0, 3).map(t => t.getBoundingClientRect().top)");
    assert!(
        tops[0] == tops[1] && tops[1] == tops[2],
        "three tiles in the first row: {tops}"
    );
}

#[test]
#[ignore = "needs chromium; .ci/run installs it"]
fn an_alert_raised_by_the_meter_appears_on_the_page_and_is_acked_there() {
    let sim = Sim::tcp(&["--calm", "--seed", "21"]);
    let setup = Setup::new();
    let rule = "[[alert]]\nid = \"site-limit\"\nmetric = \"lp\"\nabove = 70.0\nfor = \"2s\"\nclear_below = 65.0\n";
    let path = config(
        &setup,
        sim.address.as_deref().expect("address"),
        "127.0.0.1:0",
        "",
        rule,
    );
    let daemon = Daemon::start(&path);
    let api = api_address(&daemon.proc);
    let browser = Browser::start();
    let tab = browser.open(&format!("http://{api}/"), 390, 844);
    wait_ready(&tab);
    assert_eq!(tab.eval("document.querySelectorAll('.alert').length"), 0);

    sim.set_offset(30.0);
    tab.wait(
        "document.querySelector('.alert[data-episode]')?.textContent",
        TIMEOUT,
    )
    .unwrap_or_else(|| panic!("no alert on the page\n{}", daemon.proc.transcript()));
    let card = tab.eval("document.querySelector('.alert').textContent");
    assert!(
        card.as_str()
            .is_some_and(|t| t.contains("site-limit") && t.contains("north")),
        "{card}"
    );

    tab.eval(
        "(() => { const card = document.querySelector('.alert'); \
              card.querySelector('input').value = 'crane on site'; \
              card.querySelector('button.ack').click(); })()",
    );
    tab.wait(
        "document.querySelector('.alert.acked .ack-note')?.textContent",
        TIMEOUT,
    )
    .expect("the page shows the ack");
    let alerts = slmd_e2e::fleet::http(&api, "GET", "/v1/alerts", &[], b"").expect("alerts");
    let alerts: Value = serde_json::from_str(&alerts.body).expect("json");
    assert_eq!(
        alerts["active"][0]["ack"]["note"], "crane on site",
        "{alerts}"
    );
}

#[test]
#[ignore = "needs chromium; .ci/run installs it"]
fn with_tokens_the_page_shows_nothing_until_it_is_given_one() {
    let sim = Sim::tcp(&["--seed", "22"]);
    let setup = Setup::new();
    let secret = "page-secret-4c1d";
    let path = config(
        &setup,
        sim.address.as_deref().expect("address"),
        "127.0.0.1:0",
        &format!("tokens = [\"{secret}\"]"),
        "",
    );
    let daemon = Daemon::start(&path);
    let api = api_address(&daemon.proc);
    let browser = Browser::start();
    let tab = browser.open(&format!("http://{api}/"), 360, 780);
    tab.wait("document.body.dataset.state === 'login'", TIMEOUT)
        .expect("the page asks for a token");
    assert!(tiles(&tab).is_empty(), "no meter without a token");
    assert_eq!(tab.eval("document.getElementById('page').hidden"), true);
    assert_eq!(
        tab.eval("getComputedStyle(document.getElementById('login')).display"),
        "grid",
        "the token form is shown"
    );

    let submit = |token: &str| {
        tab.eval(&format!(
            "(() => {{ document.getElementById('token').value = {}; \
                 document.getElementById('login').requestSubmit(); }})()",
            Value::from(token)
        ));
    };
    submit("not-the-token");
    tab.wait(
        "document.getElementById('login-error').textContent",
        TIMEOUT,
    )
    .expect("a wrong token is refused");
    assert!(tiles(&tab).is_empty());

    submit(secret);
    wait_ready(&tab);
    assert_eq!(
        tab.eval("getComputedStyle(document.getElementById('login')).display"),
        "none",
        "{}",
        tab.eval("[document.body.dataset.state, document.getElementById('login-error').textContent, document.getElementById('footer').textContent, document.getElementById('page').hidden]")
    );
    assert_eq!(tiles(&tab), ["north"]);
    poll_until(TIMEOUT, || lps(&tab).iter().all(|v| v != "–").then_some(()))
        .unwrap_or_else(|| panic!("with the token the page shows data: {:?}", lps(&tab)));
    // The stream authenticates with the header: the token is nowhere in
    // the daemon's log.
    assert_eq!(daemon.log_lines(secret), 0);

    // The token is rotated (a reload with a new one): the page asks again,
    // and with the new token it carries on.
    let rotated = "page-rotated-77aa";
    config(
        &setup,
        sim.address.as_deref().expect("address"),
        "127.0.0.1:0",
        &format!("tokens = [\"{rotated}\"]"),
        "",
    );
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    tab.wait("document.body.dataset.state === 'login'", TIMEOUT)
        .expect("the page asks for the new token");
    submit(rotated);
    wait_ready(&tab);
    let before = lps(&tab);
    poll_until(TIMEOUT, || (lps(&tab) != before).then_some(()))
        .unwrap_or_else(|| panic!("no new readings with the new token: {before:?}"));
    assert_eq!(daemon.log_lines(rotated), 0);
}

#[test]
#[ignore = "needs chromium; .ci/run installs it"]
fn the_page_keeps_working_across_a_daemon_restart() {
    let sim = Sim::tcp(&["--seed", "23"]);
    let setup = Setup::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let path = config(
        &setup,
        sim.address.as_deref().expect("address"),
        &listen,
        "",
        "",
    );
    let mut daemon = Daemon::start(&path);
    api_address(&daemon.proc);
    let browser = Browser::start();
    let tab = browser.open(&format!("http://{listen}/"), 360, 780);
    wait_ready(&tab);
    tab.wait("document.body.dataset.streamConnects === '1'", TIMEOUT)
        .expect("the stream is open");

    daemon.proc.terminate(TIMEOUT).expect("stopped");
    tab.wait("document.body.dataset.stream === 'closed'", TIMEOUT)
        .expect("the page notices the stream ended");
    let again = Daemon::start(&path);
    api_address(&again.proc);
    tab.wait("Number(document.body.dataset.streamConnects) >= 2", TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "the stream did not reconnect: {}",
                tab.eval("document.getElementById('footer').textContent")
            )
        });
    // Readings keep arriving on the chart after the restart.
    let points = tab.eval("Number(document.querySelector('canvas.chart').dataset.points)");
    let points = points.as_f64().unwrap_or(0.0);
    tab.wait(
        &format!("Number(document.querySelector('canvas.chart').dataset.points) > {points}"),
        TIMEOUT,
    )
    .expect("new points after the restart");
    drop(again);
}
