//! Start times of requests and connections as RFC 3339 text, as access log lines carry them.

/// An RFC 3339 UTC timestamp with milliseconds, kept inline (24 bytes, no allocation).
pub(crate) struct Timestamp([u8; 24]);

impl Timestamp {
    /// The text (ASCII) as bytes: what the access log copies, with no UTF-8 check on the way.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Start time of a request that has run for `elapsed`.
pub(crate) fn rfc3339_now_minus(elapsed: std::time::Duration) -> Timestamp {
    let start = std::time::SystemTime::now() - elapsed;
    rfc3339(start)
}

thread_local! {
    /// The last second formatted on this thread and its text: every access-log line formats a
    /// timestamp, and most fall in the same second as the one before.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 24])> = const { std::cell::Cell::new((u64::MAX, [0; 24])) };
}

fn rfc3339(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (last, mut out) = LAST_SECOND.get();
    // Digits placed by hand: `format!` with padded integers cost several times as much.
    let put = |out: &mut [u8; 24], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    if last != secs {
        out = *b"0000-00-00T00:00:00.000Z";
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, day) = civil_from_days(days as i64);
        put(&mut out, 0, 4, y.clamp(0, 9999) as u64);
        put(&mut out, 5, 2, u64::from(m));
        put(&mut out, 8, 2, u64::from(day));
        put(&mut out, 11, 2, rem / 3600);
        put(&mut out, 14, 2, rem % 3600 / 60);
        put(&mut out, 17, 2, rem % 60);
        LAST_SECOND.set((secs, out));
    }
    put(&mut out, 20, 3, u64::from(d.subsec_millis()));
    Timestamp(out)
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's civil calendar algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_880_093_007);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-23T06:41:33.007Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH).as_bytes(), b"1970-01-01T00:00:00.000Z");
        // A new second, the same second again (from the cached prefix), the next day.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_880_093_999);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-23T06:41:33.999Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_880_093_500);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-23T06:41:33.500Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_942_400_001);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-24T00:00:00.001Z");
    }
}
