//! Printing: `-o table|yaml|json`, tables with aligned columns, ages and durations.

use std::fmt;
use std::io::Write;
use std::time::Duration;

/// The `-o/--output` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (the default for lists).
    Table,
    /// The full resource(s) as YAML (the default for `get`).
    Yaml,
    /// The full resource(s) as JSON.
    Json,
}

/// A table: upper-case headers and rows of cells, printed with columns aligned and separated by
/// at least two spaces (no trailing spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.headers.len();
        let cell = |row: &[String], i: usize| -> String {
            row.get(i)
                .map(|c| c.replace(['\n', '\t'], " "))
                .unwrap_or_default()
        };
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let mut write_line = |cells: Vec<String>| -> fmt::Result {
            let mut line = String::new();
            for (i, c) in cells.iter().enumerate() {
                line.push_str(c);
                if i + 1 < columns {
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(f, "{}", line.trim_end())
        };
        write_line(self.headers.iter().map(|h| h.to_string()).collect())?;
        for row in &self.rows {
            write_line((0..columns).map(|i| cell(row, i)).collect())?;
        }
        Ok(())
    }
}

/// Prints a JSON value as YAML or JSON to stdout.
pub fn print_value(format: OutputFormat, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(value)?;
            s.push('\n');
            s
        }
        // A table of one resource is handled by the caller; YAML is the fallback.
        OutputFormat::Yaml | OutputFormat::Table => serde_norway::to_string(value)?,
    };
    print_stdout(&text)
}

/// Writes to stdout, treating a closed pipe (`kappa fn list | head -1`) as success.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// How long ago an RFC 3339 timestamp was, kubectl style (`42s`, `5m`, `3h`, `12d`); `-` when
/// unknown.
pub fn age(timestamp: Option<&str>) -> String {
    let Some(ts) = timestamp else {
        return "-".into();
    };
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(then) => {
            let secs = (chrono::Utc::now() - then.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0);
            let secs = u64::try_from(secs).unwrap_or(0);
            format_age(secs)
        }
        Err(_) => "-".into(),
    }
}

/// Formats seconds as an age: `59s`, `119s` → `1m`, `5m`, `2h`, `3d`.
pub fn format_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Formats a duration for messages: `60s`, `1.5s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Parses `60s`, `500ms`, `2m`, `1h` or a bare number of seconds (at most 24h), with the
/// units of `kappa_types::parse_duration`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if bare {
        kappa_types::parse_duration(&format!("{text}s"))
    } else {
        kappa_types::parse_duration(text)
    }
    .map_err(|e| e.to_string())?;
    if parsed.is_zero() || parsed > Duration::from_secs(86_400) {
        return Err(format!(
            "{text:?} is out of range: expected more than 0 and at most 24h"
        ));
    }
    Ok(parsed)
}

/// Parses a memory size: a Kubernetes quantity (`512Mi`, `1Gi`, `1G`) or the same with a
/// trailing `B` (`1GiB`, `512MiB`); at least 1 MiB.
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let quantity = trimmed
        .strip_suffix("iB")
        .map(|q| format!("{q}i"))
        .or_else(|| {
            trimmed
                .strip_suffix('B')
                .filter(|q| q.ends_with(|c: char| c.is_ascii_alphabetic()))
                .map(str::to_string)
        })
        .unwrap_or_else(|| trimmed.to_string());
    match kappa_types::parse_memory_bytes(&quantity) {
        Some(bytes) if bytes >= 1 << 20 => Ok(bytes),
        Some(_) => Err(format!("{text:?} is too small: expected at least 1MiB")),
        None => Err(format!(
            "{text:?} is not a memory size: expected e.g. 512MiB, 1GiB or 2Gi"
        )),
    }
}

/// `-` for an empty cell.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value
        .map(|v| v.to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_sizes() {
        use super::parse_memory_size;
        assert_eq!(parse_memory_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2G"), Ok(2_000_000_000));
        assert!(parse_memory_size("lots").is_err());
        assert!(parse_memory_size("10").is_err());
    }

    use super::*;

    #[test]
    fn table_aligns_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "IMAGE", "POOLSIZE"]);
        t.row(vec!["python".into(), "python".into(), "3".into()]);
        t.row(vec!["nodejs-long".into(), "node".into(), "10".into()]);
        assert_eq!(
            t.to_string(),
            "NAME         IMAGE   POOLSIZE\n\
             python       python  3\n\
             nodejs-long  node    10\n"
        );
        let empty = Table::new(&["NAME", "URL"]);
        assert_eq!(empty.to_string(), "NAME  URL\n");
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(119), "119s");
        assert_eq!(format_age(120), "2m");
        assert_eq!(format_age(3 * 3600), "3h");
        assert_eq!(format_age(3 * 86_400), "3d");
        assert_eq!(age(None), "-");
        assert_eq!(age(Some("yesterday")), "-");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("abc").is_err());
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
