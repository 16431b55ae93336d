//! Kubernetes-style resource quantities for CPU and memory.

/// Parses a CPU quantity (`500m`, `1`, `0.25`) into millicores.
pub fn parse_cpu_millis(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Some(m) = value.strip_suffix('m') {
        return m.parse::<u64>().ok().filter(|v| *v > 0);
    }
    let cores: f64 = value.parse().ok()?;
    if !(cores.is_finite() && cores > 0.0) {
        return None;
    }
    Some((cores * 1000.0).round() as u64).filter(|v| *v > 0)
}

/// Parses a memory quantity (`128Mi`, `1Gi`, `500M`, `1048576`) into bytes.
pub fn parse_memory_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = value.strip_suffix(suffix) {
            return n
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(factor))
                .filter(|v| *v > 0);
        }
    }
    value.parse::<u64>().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("500m"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("0.25"), Some(250));
        assert_eq!(parse_cpu_millis("0"), None);
        assert_eq!(parse_cpu_millis("lots"), None);
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory_bytes("4096"), Some(4096));
        assert_eq!(parse_memory_bytes("12XB"), None);
    }
}
