//! The operator's files against the running code: every metric the alert rules and the Grafana
//! dashboard name is exported by a running worker, every alert has a runbook entry, and
//! `promtool check rules` accepts the rules.
#![allow(clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::TestEnv;
use ragpipe::client;
use ragpipe::messages::QueryRequest;
use ragpipe::worker::Role;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `ragpipe_…` metric name in `text` (recording rules, `ragpipe:…`, are not metrics).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("ragpipe_") {
        let start = from + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || b"_:".contains(&bytes[start - 1]));
        let end = start
            + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        from = end;
    }
    names
}

/// The PromQL expressions of the alert rules file, with the alert names.
fn alert_rules() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ops/alerts.yml")).expect("ops/alerts.yml");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let (mut exprs, mut alerts) = (Vec::new(), Vec::new());
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("every rule has an expr").to_owned());
            if let Some(alert) = rule["alert"].as_str() {
                alerts.push(alert.to_owned());
            }
        }
    }
    (exprs, alerts)
}

/// Every `expr` anywhere in the dashboard JSON.
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(Path::new(ROOT).join("ops/grafana/ragpipe.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

/// Sample names of a Prometheus text exposition.
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_a_running_worker() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let shutdown = CancellationToken::new();
    let port = common::serve_ops(worker.services.clone(), &shutdown).await;

    // Some work, so that the series born of events exist too: a document, a broken one, a query.
    let good = env.upload_file(&env.write("good.txt", b"Metrics are exported by every role."), "docs");
    let broken = env.upload_file(&env.write("broken.pdf", b"%PDF-1.7 and nothing else of a PDF"), "docs");
    let queue = worker.queue().await;
    let outcomes = common::ingest(&queue, &[good.clone(), broken.clone()]).await;
    common::ingested(&outcomes[&good.upload_id]);
    common::failed(&outcomes[&broken.upload_id]);
    let request = QueryRequest::new("Which roles export metrics?", common::name("docs"), 3);
    client::query(queue.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");

    let (status, exposition) = common::http_get(port, "/metrics").await;
    assert_eq!(status, 200, "{exposition}");
    let exported = exported(&exposition);
    let (alert_exprs, alerts) = alert_rules();
    let mut missing = Vec::new();
    for (source, exprs) in [("ops/alerts.yml", alert_exprs), ("ops/grafana/ragpipe.json", dashboard_exprs())] {
        assert!(!exprs.is_empty(), "{source} has no expressions");
        for expr in &exprs {
            for name in metric_names(expr) {
                if !exported.contains(&name) {
                    missing.push(format!("{source}: {name} (in `{expr}`)"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "named but not exported:\n{}\n\nexported:\n{exported:?}", missing.join("\n"));

    // Per-collection gauges are read off the live index at scrape time.
    assert!(exposition.contains("ragpipe_index_vectors{collection=\"docs\"} 1"), "{exposition}");
    assert!(
        exposition.lines().any(|l| l.starts_with("ragpipe_errors_total{") && l.contains("kind=\"document\"")),
        "the broken upload counts as an error: {exposition}"
    );

    let runbook = std::fs::read_to_string(Path::new(ROOT).join("ops/runbook.md")).expect("ops/runbook.md");
    for alert in alerts {
        assert!(runbook.contains(&format!("\n## {alert}\n")), "ops/runbook.md has no section for {alert}");
    }
    shutdown.cancel();
    worker.stop().await;
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = Path::new(ROOT).join("ops/alerts.yml");
    let output = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool runs (Debian package `prometheus`; ops/test.sh installs it)");
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names("sum(rate(ragpipe_a_total[5m])) / ragpipe:b:c + x_ragpipe_d + ragpipe_e_bucket");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["ragpipe_a_total", "ragpipe_e_bucket"]);
}
