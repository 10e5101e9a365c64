//! Arbitrary bytes into the envelope parser. It must never panic; an envelope it accepts must
//! validate, and its wire form must parse back to the same envelope (same digest).
#![no_main]

use keel_events::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::parse(data) else {
        return;
    };
    envelope.validate().expect("a parsed envelope validates");
    let wire = envelope.to_json_bytes();
    let again = Envelope::parse(&wire).expect("an envelope's wire form parses");
    assert_eq!(again.digest(), envelope.digest(), "the wire form round-trips");
    let _ = (envelope.service(), envelope.event_name(), envelope.version());
    let _ = envelope.nats_subject("fz.");
});
