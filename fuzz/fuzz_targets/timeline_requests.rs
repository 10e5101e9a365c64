//! Each TimelineService request: the first byte picks the message type, the rest is decoded as
//! that message and validated with `keel_timeline::api::validate`, what the handlers run before
//! authorizing. Never panics.
#![no_main]

use chrono::DateTime;
use keel_proto::v1 as pb;
use keel_timeline::api::{MAX_PAGE, validate};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(r) = pb::QueryTimelineRequest::decode(bytes) {
                let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default();
                if let Ok(q) = validate::query(&r, now) {
                    assert!(q.range.from <= q.range.to);
                    assert!((1..=MAX_PAGE).contains(&q.size));
                }
            }
        }
        1 => {
            if let Ok(r) = pb::GetEventRequest::decode(bytes) {
                let _ = validate::get_event(&r);
            }
        }
        2 => {
            if let Ok(r) = pb::TraceEventsRequest::decode(bytes) {
                let _ = validate::trace_events(&r);
            }
        }
        3 => {
            if let Ok(r) = pb::GetRebuildRequest::decode(bytes) {
                let _ = validate::get_rebuild(&r);
            }
        }
        _ => {
            if let Ok(r) = pb::TailTimelineRequest::decode(bytes) {
                let _ = validate::tail(&r);
            }
        }
    }
});
