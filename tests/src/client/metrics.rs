//! Prometheus metrics: scraping `/stats/prometheus` and reading samples out of the text format
//! (any exporter's: the gateway's, the controller's, an upstream's).

use std::net::SocketAddr;

use anyhow::{bail, Result};
use http::StatusCode;

use super::http::get;

/// `GET /stats/prometheus` on the metrics address; errors unless 200.
pub async fn metrics(addr: SocketAddr) -> Result<String> {
    let resp = get(addr, "/stats/prometheus").send().await?;
    if resp.status != StatusCode::OK {
        bail!("metrics endpoint answered {}: {}", resp.status, resp.text());
    }
    Ok(resp.text())
}
/// One Prometheus sample: (metric name, labels, value).
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// Parses one Prometheus text-format sample line.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let mut it = line.splitn(2, char::is_whitespace);
            let name = it.next()?;
            let value = it.next()?.split_whitespace().next()?.parse().ok()?;
            return Some((name, Vec::new(), value));
        }
    };
    // Labels: {k="v",k2="v\"2"} value [timestamp]
    let mut labels = Vec::new();
    let bytes = rest.as_bytes();
    let mut i = 1;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            i += 1;
            break;
        }
        let eq = rest[i..].find('=')? + i;
        let key = rest[i..eq].trim().to_string();
        if bytes.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut j = eq + 2;
        let mut val = String::new();
        while j < bytes.len() && bytes[j] != b'"' {
            if bytes[j] == b'\\' && j + 1 < bytes.len() {
                val.push(match bytes[j + 1] {
                    b'n' => '\n',
                    other => other as char,
                });
                j += 2;
            } else {
                let ch = rest[j..].chars().next()?;
                val.push(ch);
                j += ch.len_utf8();
            }
        }
        labels.push((key, val));
        i = j + 1;
    }
    let value = rest[i..].split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Value of the first sample of metric `name` whose labels include all of
/// `labels` (other labels are ignored).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter_map(parse_sample).find(|(n, l, _)| *n == name && labels_match(l, labels)).map(|(_, _, v)| v)
}

/// Sum over all samples of `name` whose labels include all of `labels`;
/// `0.0` if none match (a counter that was never incremented).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, l, _)| *n == name && labels_match(l, labels))
        .map(|(_, _, v)| v)
        .sum()
}

fn labels_match(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
# HELP istio_requests_total Total requests.
# TYPE istio_requests_total counter
istio_requests_total{response_code="200",destination_service="reviews.default.svc.cluster.local"} 3
istio_requests_total{response_code="503",destination_service="reviews.default.svc.cluster.local"} 2
istio_requests_total{response_code="200",destination_service="ratings.default.svc.cluster.local",path="a\"b"} 1
up 1
"#;

    #[test]
    fn metrics_parse() {
        assert_eq!(metric_value(SAMPLE, "up", &[]), Some(1.0));
        assert_eq!(metric_value(SAMPLE, "istio_requests_total", &[("response_code", "503")]), Some(2.0));
        assert_eq!(metric_sum(SAMPLE, "istio_requests_total", &[("response_code", "200")]), 4.0);
        assert_eq!(metric_value(SAMPLE, "istio_requests_total", &[("path", "a\"b")]), Some(1.0));
        assert_eq!(metric_sum(SAMPLE, "nope", &[]), 0.0);
    }
}
