//! Durations as Istio's resources and meshgate's flags write them.

/// Protobuf duration text as Istio accepts it: `1s`, `0.5s`, `100ms`, `1m`, `1h`.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value * unit_ms).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_duration_text() {
        assert_eq!(parse_duration_ms("1s"), Some(1000));
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("0.5s"), Some(500));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        for bad in ["", "10", "-1s", "abc", "1d", "NaNs"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }
}
