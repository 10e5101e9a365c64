//! Arbitrary text into the timeline query language. It must never panic; what it accepts can be
//! turned into SQL LIKE patterns, and parsing it again into the same filter is refused or
//! accepted without panicking either (conflicting values).
#![no_main]

use keel_timeline::domain::query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(mut filter) = query::parse(&text) else {
        return;
    };
    for group in &filter.kind_groups {
        for pattern in group {
            let _ = pattern.like();
        }
    }
    let _ = query::parse_into(&text, &mut filter);
});
