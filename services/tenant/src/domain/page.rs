//! Keyset pagination of the tenant service's lists: a page is the items after the last id of the
//! previous page, in id order, and its token is that id, base64url-encoded (opaque to clients).

use std::collections::BTreeMap;
use std::ops::Bound;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use super::validate::Invalid;

/// The field a malformed page token is reported on.
pub const TOKEN_FIELD: &str = "page.page_token";
/// The field an out-of-range page size is reported on.
pub const SIZE_FIELD: &str = "page.page_size";

/// The token of the page after the one ending at `last`.
pub fn token(last: &str) -> String {
    B64URL.encode(last.as_bytes())
}

/// The id a page token continues after (`None`: the first page). Only tokens this service could
/// have issued pass: base64url of an id of 1-64 of [A-Za-z0-9_-].
pub fn parse_token(token: &str) -> Result<Option<String>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Invalid {
        field: TOKEN_FIELD,
        reason: "is not a token this service issued".into(),
    };
    // An id is at most 64 characters: a longer token is not ours, decoded or not.
    if token.len() > 128 {
        return Err(invalid());
    }
    let bytes = B64URL.decode(token).map_err(|_| invalid())?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    if !keel_events::subjects::is_valid_token(&id) {
        return Err(invalid());
    }
    Ok(Some(id))
}

/// Up to `size` entries of `items` after the key `after`, in key order, and the token of the next
/// page (empty when this is the last one).
pub fn of_map<'a, V>(
    items: &'a BTreeMap<String, V>,
    after: Option<&str>,
    size: usize,
) -> (Vec<(&'a String, &'a V)>, String) {
    let start = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    let mut page: Vec<(&String, &V)> = items
        .range::<str, _>((start, Bound::Unbounded))
        .take(size.saturating_add(1))
        .collect();
    let next = if page.len() > size {
        page.truncate(size);
        page.last().map(|(k, _)| token(k)).unwrap_or_default()
    } else {
        String::new()
    };
    (page, next)
}

/// For a page read with one row more than `size` (`LIMIT size + 1`): the page, and the token
/// after its last row's id (empty when there is no further row).
pub fn of_rows<T>(mut rows: Vec<T>, size: usize, id: impl Fn(&T) -> &str) -> (Vec<T>, String) {
    let next = if rows.len() > size {
        rows.truncate(size);
        rows.last().map(|r| token(id(r))).unwrap_or_default()
    } else {
        String::new()
    };
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> BTreeMap<String, usize> {
        (0..n).map(|i| (format!("mem_{i:03}"), i)).collect()
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let all = items(7);
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let (page, next) = of_map(&all, after.as_deref(), 3);
            assert!(page.len() <= 3);
            seen.extend(page.iter().map(|(_, v)| **v));
            if next.is_empty() {
                break;
            }
            after = parse_token(&next).unwrap();
        }
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn an_exact_last_page_has_no_next_token() {
        let all = items(6);
        let (page, next) = of_map(&all, None, 6);
        assert_eq!((page.len(), next.as_str()), (6, ""));
        let (page, next) = of_map(&all, Some("mem_005"), 6);
        assert!(page.is_empty() && next.is_empty());
        let none = items(0);
        let (page, next) = of_map(&none, None, 50);
        assert!(page.is_empty() && next.is_empty());
    }

    #[test]
    fn a_token_for_a_removed_item_continues_after_it() {
        let mut all = items(5);
        let (_, next) = of_map(&all, None, 2);
        all.remove("mem_001");
        let after = parse_token(&next).unwrap();
        let (page, _) = of_map(&all, after.as_deref(), 2);
        assert_eq!(page.iter().map(|(_, v)| **v).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn rows_read_with_one_extra_give_the_next_token() {
        let (page, next) = of_rows(vec!["a", "b", "c"], 2, |r| r);
        assert_eq!(
            (page, parse_token(&next).unwrap()),
            (vec!["a", "b"], Some("b".into()))
        );
        let (page, next) = of_rows(vec!["a", "b"], 2, |r| r);
        assert_eq!((page.len(), next.as_str()), (2, ""));
    }

    #[test]
    fn garbage_tokens_are_invalid_naming_the_field() {
        assert_eq!(parse_token("").unwrap(), None);
        for bad in [
            "!!".to_owned(),
            B64URL.encode("a b"),
            B64URL.encode([0xff, 0xfe]),
            B64URL.encode("x".repeat(65)),
            "A".repeat(10_000),
        ] {
            assert_eq!(parse_token(&bad).unwrap_err().field, TOKEN_FIELD, "{bad}");
        }
    }
}
