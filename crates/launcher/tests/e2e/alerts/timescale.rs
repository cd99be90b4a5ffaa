//! The time-scaled copy of the rules that `alerts.rs` loads (see its documentation): every
//! `for:` duration, every range-vector duration and every number an `*_age_seconds*`
//! series is compared with, divided by one factor; nothing else touched.

use super::SPEEDUP;
use crate::prometheus::workspace_root;

/// How many of each thing [`time_scaled`] changed.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Scaled {
    for_clauses: usize,
    ranges: usize,
    age_thresholds: usize,
}

/// `text` (a rule file) with every `for:` duration, every range-vector duration and every
/// number an `*_age_seconds*` series is compared with divided by `factor`. Comment lines
/// are left as they are.
pub(super) fn time_scaled(text: &str, factor: u64) -> Result<(String, Scaled), String> {
    let mut counts = Scaled::default();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let trimmed = body.trim_start();
        let indent = &body[..body.len() - trimmed.len()];
        if trimmed.starts_with('#') {
            out.push_str(line);
            continue;
        }
        if let Some(value) = trimmed.strip_prefix("for:") {
            let scaled = scale_duration(value.trim(), factor).ok_or_else(|| format!("`{trimmed}`: not a duration"))?;
            out.push_str(&format!("{indent}for: {scaled}"));
            counts.for_clauses += 1;
        } else {
            let ranged = scale_ranges(body, factor, &mut counts.ranges)?;
            out.push_str(&scale_age_thresholds(&ranged, factor, &mut counts.age_thresholds)?);
        }
        out.push_str(&line[body.len()..]);
    }
    Ok((out, counts))
}

/// Every `[<duration>]` and `[<duration>:<duration>]` of `line`, divided.
fn scale_ranges(line: &str, factor: u64, count: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        let parts: Option<Vec<String>> = inside.split(':').map(|d| scale_duration(d.trim(), factor)).collect();
        match parts {
            Some(parts) if !inside.trim().is_empty() => {
                out.push_str(&parts.join(":"));
                *count += 1;
            }
            _ => out.push_str(inside),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `x_age_seconds… > 120` → `x_age_seconds… > 12` (with `factor` 10): the series name
/// (and any `{matchers}`), a comparison, an optional `bool`, a number.
fn scale_age_thresholds(line: &str, factor: u64, count: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("_age_seconds") {
        let after_name = at + rest[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len() - at);
        let mut i = after_name;
        let skip_ws = |s: &str, i: usize| i + s[i..].len() - s[i..].trim_start().len();
        i = skip_ws(rest, i);
        if rest[i..].starts_with('{') {
            i += rest[i..].find('}').ok_or_else(|| format!("unclosed matcher in `{line}`"))? + 1;
            i = skip_ws(rest, i);
        }
        let op = ["==", "!=", ">=", "<=", ">", "<"].into_iter().find(|op| rest[i..].starts_with(op));
        let Some(op) = op else {
            out.push_str(&rest[..after_name]);
            rest = &rest[after_name..];
            continue;
        };
        i = skip_ws(rest, i + op.len());
        if let Some(b) = rest[i..].strip_prefix("bool") {
            i = skip_ws(rest, rest.len() - b.len());
        }
        let len = rest[i..].find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len() - i);
        let number: f64 = rest[i..i + len].parse().map_err(|_| format!("`{line}`: an age compared with something that is not a number"))?;
        out.push_str(&rest[..i]);
        out.push_str(&format!("{}", number / factor as f64));
        *count += 1;
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A Prometheus duration (`90s`, `5m`, `1h30m`, `250ms`) divided by `factor`, written in
/// whole seconds when it is some, else in milliseconds; `None` if `text` is not a duration
/// or would become shorter than a millisecond.
pub(super) fn scale_duration(text: &str, factor: u64) -> Option<String> {
    let ms = parse_duration(text)? / factor;
    match ms {
        0 => None,
        ms if ms % 1000 == 0 => Some(format!("{}s", ms / 1000)),
        ms => Some(format!("{ms}ms")),
    }
}

fn parse_duration(text: &str) -> Option<u64> {
    const UNITS: &[(&str, u64)] =
        &[("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000), ("y", 31_536_000_000)];
    let mut rest = text;
    let mut total = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).filter(|&d| d > 0)?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, ms) = UNITS.iter().filter(|(u, _)| rest.starts_with(u)).max_by_key(|(u, _)| u.len())?;
        total += n * ms;
        rest = &rest[unit.len()..];
    }
    Some(total)
}

#[test]
fn durations_parse_and_scale() {
    assert_eq!(parse_duration("1h30m"), Some(5_400_000));
    assert_eq!(parse_duration("250ms"), Some(250));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("m"), None);
    assert_eq!(parse_duration("$__rate_interval"), None);
    assert_eq!(scale_duration("10m", 10).as_deref(), Some("60s"));
    assert_eq!(scale_duration("5s", 10).as_deref(), Some("500ms"));
    assert_eq!(scale_duration("5ms", 10), None);
}

#[test]
fn the_rules_scale_mechanically() {
    let (line, n) =
        time_scaled("        expr: max by (a) (rate(x_total{l=\"v\"}[5m])) > 0 and y_age_seconds{a=\"b\"} >= bool 120 and z_age_seconds\n", 10)
            .unwrap();
    assert_eq!(line, "        expr: max by (a) (rate(x_total{l=\"v\"}[30s])) > 0 and y_age_seconds{a=\"b\"} >= bool 12 and z_age_seconds\n");
    assert_eq!(n, Scaled { for_clauses: 0, ranges: 1, age_thresholds: 1 });
    assert_eq!(time_scaled("# for: 10m, [5m]\n  for: 10m\nrate(x[5m:1m])", 10).unwrap().0, "# for: 10m, [5m]\n  for: 60s\nrate(x[30s:6s])");
    assert!(time_scaled("for: soon\n", 10).is_err());

    let root = workspace_root();
    let alerts = std::fs::read_to_string(root.join("prometheus/rules/alerts.yml")).unwrap();
    let (scaled, n) = time_scaled(&alerts, SPEEDUP).unwrap();
    assert_eq!(n.for_clauses, alerts.matches("- alert:").count(), "every alert's `for:` scaled");
    assert!(n.ranges >= 2 && n.age_thresholds >= 1, "{n:?}");
    assert!(scaled.contains("service:conveyor_queue_oldest_pending_age_seconds:max > 12\n"), "{scaled}");
    assert!(scaled.contains("service:conveyor_saga_duration_seconds:p99_rate5m > 2\n"), "a latency objective is not a wait: unchanged");
    let recording = std::fs::read_to_string(root.join("prometheus/rules/recording.yml")).unwrap();
    let (scaled, n) = time_scaled(&recording, SPEEDUP).unwrap();
    let windows = recording.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| l.matches("[5m]").count()).sum();
    assert_eq!(n, Scaled { for_clauses: 0, ranges: windows, age_thresholds: 0 });
    assert_eq!(scaled.matches("[30s]").count(), windows);
}
