//! The Grafana dashboard, built as JSON data from the stack's services.

use crate::model::Stack;
use serde_json::{json, Value};

fn panel(id: u32, title: &str, expr: &str, unit: &str, x: u32, y: u32) -> Value {
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": "{{job}}"}]
    })
}

pub fn dashboard(stack: &Stack) -> String {
    let jobs: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
    let sel = format!("job=~\"{}\"", jobs.join("|"));
    let panels = vec![
        panel(1, "Request rate", &format!("sum by (job) (rate(http_requests_total{{{sel}}}[5m]))"), "reqps", 0, 0),
        panel(
            2,
            "Error rate (5xx share)",
            &format!("sum by (job) (rate(http_requests_total{{{sel},status=~\"5..\"}}[5m])) / clamp_min(sum by (job) (rate(http_requests_total{{{sel}}}[5m])), 1e-9)"),
            "percentunit",
            12,
            0,
        ),
        panel(
            3,
            "Latency p99",
            &format!("histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket{{{sel}}}[5m])))"),
            "s",
            0,
            8,
        ),
        panel(4, "Memory (resident)", &format!("process_resident_memory_bytes{{{sel}}}"), "bytes", 12, 8),
        panel(5, "Requests in flight", &format!("sum by (job) (http_requests_in_flight{{{sel}}})"), "short", 0, 16),
        panel(6, "Up", &format!("up{{{sel}}}"), "short", 12, 16),
    ];
    let d = json!({
        "uid": format!("{}-overview", stack.name),
        "title": format!("{} overview", stack.name),
        "tags": ["stackctl", stack.name],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels
    });
    let mut s = serde_json::to_string_pretty(&d).unwrap_or_default();
    s.push('\n');
    s
}
