//! How results are shown: aligned tables for people, one JSON document per command for scripts.
//! Enums print as lower-case names (`active`, `mid`, `owner`), timestamps as RFC 3339 UTC.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::ValueEnum;
use keel_proto::v1 as pb;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// A table of aligned, left-justified columns with an upper-case header row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        render_rows(std::iter::once(&self.header).chain(&self.rows))
    }
}

/// Field/value pairs of one object, one per line, values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(k, v)| vec![format!("{k}:"), v.clone()])
        .collect();
    render_rows(rows.iter())
}

fn render_rows<'a>(rows: impl Iterator<Item = &'a Vec<String>> + Clone) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows.clone() {
        for (i, cell) in row.iter().enumerate() {
            let w = display_width(cell);
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&clean(cell));
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(display_width(cell));
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Control characters (a newline in a reason, an escape sequence in a name) would break the
/// layout or the terminal: they are shown as spaces.
fn clean(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn display_width(cell: &str) -> usize {
    cell.chars().count()
}

/// Prints `value` as one pretty-printed JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Writes `text` to stdout. A closed pipe (`keelctl … | head -1`) is not an error: the reader
/// has what it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    match write_stdout(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Writes and flushes `text` on stdout (so a reader of a pipe sees each line at once).
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `TIER_MID` → `mid`: the lower-case name after the enum's prefix.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_lowercase()
}

pub fn tier_name(value: i32) -> String {
    match pb::Tier::try_from(value) {
        Ok(t) => short_name(t.as_str_name(), "TIER_"),
        Err(_) => format!("unknown({value})"),
    }
}

pub fn status_name(value: i32) -> String {
    match pb::TenantStatus::try_from(value) {
        Ok(s) => short_name(s.as_str_name(), "TENANT_STATUS_"),
        Err(_) => format!("unknown({value})"),
    }
}

pub fn role_name(value: i32) -> String {
    match pb::Role::try_from(value) {
        Ok(r) => short_name(r.as_str_name(), "ROLE_"),
        Err(_) => format!("unknown({value})"),
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A protobuf timestamp in RFC 3339, or `None` when absent or out of range.
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(t.seconds, nanos).map(rfc3339)
}

/// For table cells: the timestamp or `-`.
pub fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_lines_not_padded_at_the_end() {
        let mut t = Table::new(&["id", "slug"]);
        t.row(vec!["1".into(), "acme".into()]);
        t.row(vec!["12345".into(), "b".into()]);
        assert_eq!(t.render(), "ID     SLUG\n1      acme\n12345  b\n");
    }

    #[test]
    fn key_values_align_and_control_characters_are_neutralised() {
        let out = key_values(&[("id", "1".into()), ("reason", "a\nb".into())]);
        assert_eq!(out, "id:      1\nreason:  a b\n");
    }

    #[test]
    fn enums_print_lower_case() {
        assert_eq!(tier_name(pb::Tier::Business as i32), "business");
        assert_eq!(status_name(pb::TenantStatus::Active as i32), "active");
        assert_eq!(role_name(pb::Role::Owner as i32), "owner");
        assert_eq!(tier_name(99), "unknown(99)");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = prost_types::Timestamp {
            seconds: 1_741_944_600,
            nanos: 0,
        };
        assert_eq!(timestamp(Some(&ts)).as_deref(), Some("2025-03-14T09:30:00Z"));
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(timestamp(Some(&bad)), None);
    }
}
