//! The query language for humans and the CLI:
//!
//! ```text
//! kind:provisioning.* result:failure actor:user:alice resource:tenant/acme trace:4bf9… "free text"
//! ```
//!
//! `field:value` pairs (values may be "quoted"); words without a field are free text. It parses
//! into the same [`Filter`] as the structured request; an error names the position.

use super::filter::{Filter, Invalid, invalid};

pub const FIELDS: &[&str] = &["kind", "result", "actor", "resource", "project", "trace", "text"];
pub const MAX_QUERY_CHARS: usize = 2000;

/// One word of the query and where it starts (1-based character position).
struct Word {
    pos: usize,
    text: String,
    /// Position of the value within the word when it was quoted after `field:`.
    quoted: bool,
}

fn words(q: &str) -> Result<Vec<Word>, Invalid> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut text = String::new();
        let mut quoted = false;
        while i < chars.len() && !chars[i].is_whitespace() {
            if chars[i] == '"' {
                let open = i;
                quoted = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    text.push(chars[i]);
                    i += 1;
                }
                if i == chars.len() {
                    return Err(invalid(
                        "query",
                        format!("unterminated quote at position {}", open + 1),
                    ));
                }
                i += 1;
            } else {
                text.push(chars[i]);
                i += 1;
            }
        }
        out.push(Word {
            pos: start + 1,
            text,
            quoted,
        });
    }
    Ok(out)
}

/// Parses `query` into `filter` (adding to what is there).
pub fn parse_into(query: &str, filter: &mut Filter) -> Result<(), Invalid> {
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(invalid(
            "query",
            format!("must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let mut kinds = Vec::new();
    let mut text = Vec::new();
    for w in words(query)? {
        let pair = if w.quoted && !w.text.contains(':') {
            None
        } else {
            w.text.split_once(':')
        };
        let Some((field, value)) =
            pair.filter(|(f, _)| !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase()))
        else {
            text.push(w.text);
            continue;
        };
        let at = |reason: String| invalid("query", format!("{reason} at position {}", w.pos));
        if value.is_empty() {
            return Err(at(format!("empty value for {field}")));
        }
        let check = |r: Result<(), Invalid>| r.map_err(|e| at(format!("{field}: {}", e.reason)));
        match field {
            "kind" => kinds.push(value.to_owned()),
            "result" => check(filter.set_result("query", value))?,
            "actor" => check(filter.set_actor("query", value))?,
            "resource" => check(filter.set_resource("query", value))?,
            "project" => check(filter.set_project("query", value))?,
            "trace" => check(filter.set_trace("query", value))?,
            "text" => text.push(value.to_owned()),
            other => {
                return Err(at(format!(
                    "unknown field {other:?} (expected one of {})",
                    FIELDS.join(", ")
                )));
            }
        }
    }
    filter
        .add_kinds("query", &kinds)
        .map_err(|e| invalid("query", e.reason))?;
    if !text.is_empty() {
        filter.set_text("query", &text.join(" "))?;
    }
    Ok(())
}

pub fn parse(query: &str) -> Result<Filter, Invalid> {
    let mut f = Filter::default();
    parse_into(query, &mut f)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::super::filter::KindPattern;
    use super::*;

    #[test]
    fn the_example_parses() {
        let f = parse("kind:provisioning.* result:failure actor:user:alice resource:tenant/acme trace:4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(
            f.kind_groups,
            vec![vec![KindPattern::Prefix("provisioning.".into())]]
        );
        assert_eq!(f.result.as_deref(), Some("failure"));
        assert_eq!(f.actor.as_deref(), Some("user:alice"));
        assert_eq!(
            (f.resource_type.as_deref(), f.resource_id.as_deref()),
            (Some("tenant"), Some("acme"))
        );
        assert_eq!(f.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn free_text_and_quotes() {
        let f = parse("disk full text:\"on node 3\"").unwrap();
        assert_eq!(f.text.as_deref(), Some("disk full on node 3"));
        let f = parse("kind:tenant.* kind:audit.tenant.*").unwrap();
        assert_eq!(f.kind_groups[0].len(), 2);
        assert_eq!(parse("").unwrap(), Filter::default());
    }

    #[test]
    fn errors_name_the_position() {
        assert_eq!(
            parse("kind:tenant.* colour:red").unwrap_err().reason,
            "unknown field \"colour\" (expected one of kind, result, actor, resource, project, trace, text) at position 15"
        );
        assert_eq!(
            parse("result:maybe").unwrap_err().reason,
            "result: must be success, failure or denied at position 1"
        );
        assert_eq!(
            parse("a \"open").unwrap_err().reason,
            "unterminated quote at position 3"
        );
        assert_eq!(
            parse("kind:").unwrap_err().reason,
            "empty value for kind at position 1"
        );
        assert_eq!(parse("  trace:zz").unwrap_err().field, "query");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for q in [
            ":",
            "::",
            "\"",
            "a:\"b",
            "ü:ä",
            "kind:*",
            "x".repeat(3000).as_str(),
            "\u{0}:\u{0}",
        ] {
            let _ = parse(q);
        }
    }
}
