//! Small formatting helpers for decision reasons, which people read in
//! `bora events`.

use std::time::Duration;

/// A duration the way `bora.yaml` spells one: `500ms`, `6s`, `1.5s`, `5m`,
/// `1m30s`, `1h`.
///
/// Below a millisecond it shows microseconds; below a second,
/// milliseconds; below ten seconds, tenths of a
/// second; below two minutes, whole seconds (`60s`, `90s`); from there
/// on, whole seconds in hours, minutes and seconds (an idle time of
/// 300.4 s reads `5m`).
pub(crate) fn duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return if d.is_zero() {
            "0s".to_owned()
        } else {
            format!("{}µs", d.as_micros())
        };
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    if millis < 10_000 {
        let tenths = (millis + 50) / 100;
        let (whole, tenth) = (tenths / 10, tenths % 10);
        return if tenth == 0 {
            format!("{whole}s")
        } else {
            format!("{whole}.{tenth}s")
        };
    }
    let secs = (millis + 500) / 1000;
    if secs < 120 {
        return format!("{secs}s");
    }
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 {
        out.push_str(&format!("{seconds}s"));
    }
    out
}

/// `1 instance`, `3 instances`.
pub(crate) fn instances(n: u32) -> String {
    if n == 1 {
        "1 instance".to_owned()
    } else {
        format!("{n} instances")
    }
}

/// A target or factor without noise: `20`, `0.25`, `2`, `1.5`, `65.5`
/// (at most two decimals, trailing zeros dropped).
pub(crate) fn number(x: f64) -> String {
    let fixed = format!("{x:.2}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A fraction of a limit as a percentage: `0.7` → `70%`.
pub(crate) fn percent(fraction: f64) -> String {
    format!("{}%", number(fraction * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_bora_yaml() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(450), "450µs"),
            (Duration::from_millis(340), "340ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(6), "6s"),
            (Duration::from_millis(9_990), "10s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(150), "2m30s"),
            (Duration::from_millis(300_400), "5m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(3661), "1h1m1s"),
        ];
        for (d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(number(20.0), "20");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(0.655 * 100.0), "65.5");
        assert_eq!(number(-0.0001), "0");
        assert_eq!(percent(0.7), "70%");
        assert_eq!(percent(0.853), "85.3%");
    }

    #[test]
    fn instances_are_pluralised() {
        assert_eq!(instances(0), "0 instances");
        assert_eq!(instances(1), "1 instance");
        assert_eq!(instances(3), "3 instances");
    }
}
