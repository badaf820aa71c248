//! Human durations (`200ms`, `30s`, `1m 30s`, or a bare number of seconds) for configs, and
//! their millisecond form for plans. Parsing only: no clocks here.

use std::time::Duration;

/// Parses a duration as written in a config file.
///
/// Accepts humantime strings (`250ms`, `10s`, `2m`, `1h 5m`) and bare non-negative numbers,
/// which mean seconds (`1.5` is 1500 ms), matching what operators write in YAML.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = trimmed.parse::<f64>() {
        return from_secs(secs);
    }
    let duration = humantime::parse_duration(trimmed)
        .map_err(|_| format!("`{trimmed}` is not a duration; write e.g. `500ms`, `10s` or `2m`"))?;
    if duration >= MAX {
        return Err(format!(
            "`{trimmed}` is longer than razar accepts: durations are below {}s (about 31 years)",
            MAX.as_secs()
        ));
    }
    Ok(duration)
}

/// Durations are below this (~31 years): far beyond any timeout or backoff, and small enough
/// that no clock or deadline arithmetic on them can overflow.
pub const MAX: Duration = Duration::from_secs(1_000_000_000);

/// Converts a JSON/YAML number of seconds into a duration.
pub fn from_secs(secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && (0.0..MAX.as_secs_f64()).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "`{secs}` is not a duration: use a non-negative number of seconds or e.g. `10s`"
        ))
    }
}

/// Formats a duration the way configs write it (`1.5s`, `200ms`), for plans and messages.
pub fn display(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms < 1_000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// Milliseconds as stored in plan files, saturating instead of overflowing.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let err = parse("ten seconds").unwrap_err();
        assert!(err.contains("`ten seconds` is not a duration"), "{err}");
        assert!(parse("-1").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn refuses_durations_no_clock_can_add() {
        let err = parse("500000000000y").unwrap_err();
        assert!(err.contains("longer than razar accepts"), "{err}");
        assert!(parse("1000000000s").is_err());
        assert!(parse("1000000000").is_err());
        assert_eq!(parse("30y"), Ok(Duration::from_secs(946_728_000)));
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(display(Duration::from_millis(200)), "200ms");
        assert_eq!(display(Duration::from_secs(10)), "10s");
        assert_eq!(display(Duration::from_millis(2400)), "2.4s");
    }
}
