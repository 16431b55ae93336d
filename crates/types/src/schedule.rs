//! Time trigger schedules: cron with 5 fields (minute hour day-of-month month day-of-week) or 6
//! (leading seconds), the descriptors `@yearly`/`@annually`, `@monthly`, `@weekly`,
//! `@daily`/`@midnight`, `@hourly`, and `@every <duration>`. All times are UTC.
//!
//! Cron expressions are parsed by `croner` (Vixie-cron semantics: when both day-of-month and
//! day-of-week are restricted, a day matching either fires; names such as `JAN` and `MON`,
//! ranges, steps, lists, `L`, `#` and `W` work). `@every <duration>` fires at the multiples of
//! the duration since the Unix epoch, so its times do not depend on when the platform started:
//! `@every 1m` fires at every full minute, `@every 30s` at :00 and :30.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule does not parse; the message is meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression (descriptors other than `@every` included).
    Cron(Box<Cron>),
    /// `@every <duration>`.
    Every(Duration),
}

/// The shortest `@every` interval.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl Schedule {
    /// Parses `expr` (see the module docs).
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let expr = expr.trim();
        if let Some(rest) = expr.strip_prefix("@every") {
            let d = parse_duration(rest.trim())?;
            if d < MIN_EVERY {
                return Err(ScheduleError(format!(
                    "@every {}: the interval must be at least 1s",
                    rest.trim()
                )));
            }
            return Ok(Self::Every(d));
        }
        if let Some(descriptor) = expr.strip_prefix('@') {
            const DESCRIPTORS: [&str; 7] = [
                "yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly",
            ];
            if !DESCRIPTORS.contains(&descriptor.to_ascii_lowercase().as_str()) {
                return Err(ScheduleError(format!(
                    "{expr:?} is not a descriptor: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>"
                )));
            }
        } else {
            let fields = expr.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(ScheduleError(format!(
                    "{expr:?} has {fields} fields: expected 5 (minute hour day-of-month month day-of-week) or 6 (with leading seconds)"
                )));
            }
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expr)
            .map_err(|e| ScheduleError(format!("{expr:?}: {e}")))?;
        Ok(Self::Cron(Box::new(cron)))
    }

    /// The first fire time strictly after `after`, if there is one.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(cron) => cron.find_next_occurrence(&after, false).ok(),
            Self::Every(every) => {
                let step = i64::try_from(every.as_millis()).ok()?.max(1);
                let now = after.timestamp_millis();
                let next = (now.div_euclid(step) + 1).checked_mul(step)?;
                DateTime::from_timestamp_millis(next)
            }
        }
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n.min(1000));
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// Parses a duration such as `30s`, `1h30m`, `1.5h`, `500ms` or `2d` (units: ms, s, m, h, d).
pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    let bad = || {
        ScheduleError(format!(
            "{text:?} is not a duration: expected e.g. \"30s\", \"5m\", \"1h30m\" (units ms, s, m, h, d)"
        ))
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = TimeDelta::zero();
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ms: f64 = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ms = number * unit_ms;
        if !ms.is_finite() || ms > 1e15 {
            return Err(bad());
        }
        total = total
            .checked_add(&TimeDelta::milliseconds(ms.round() as i64))
            .ok_or_else(bad)?;
    }
    total.to_std().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "s", "10", "10x", "1h 30m", "-5s", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn five_and_six_fields() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T10:07:30Z")),
            Some(at("2024-01-01T10:15:00Z"))
        );
        let s = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T10:00:00Z")),
            Some(at("2024-01-01T10:00:02Z"))
        );
        let s = Schedule::parse("0 9 * JAN MON").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T10:00:00Z")),
            Some(at("2024-01-08T09:00:00Z"))
        );
    }

    #[test]
    fn descriptors_and_every() {
        let s = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T10:07:30Z")),
            Some(at("2024-01-01T11:00:00Z"))
        );
        let s = Schedule::parse("@every 30s").unwrap();
        assert_eq!(
            s.upcoming(at("2024-01-01T10:00:10Z"), 3),
            vec![
                at("2024-01-01T10:00:30Z"),
                at("2024-01-01T10:01:00Z"),
                at("2024-01-01T10:01:30Z")
            ]
        );
        // Strictly after: a fire time is never returned again.
        assert_eq!(
            s.next_after(at("2024-01-01T10:00:30Z")),
            Some(at("2024-01-01T10:01:00Z"))
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        for (bad, needle) in [
            ("* * *", "3 fields"),
            ("* * * * * * *", "7 fields"),
            ("61 * * * *", "61"),
            ("@sometimes", "not a descriptor"),
            ("@every", "not a duration"),
            ("@every 100ms", "at least 1s"),
            ("* * 32 * *", "\"* * 32 * *\""),
        ] {
            let e = Schedule::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
