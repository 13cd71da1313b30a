//! Any bytes as a `POST /events` body. Never panics; whatever is accepted is JSON
//! that serde_json agrees with, and each event's `data` range is exactly the raw
//! value serde_json finds for it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::http::publish::PublishParser;
use serde_json::value::RawValue;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let mut parser = PublishParser::default();
    let Ok(batch) = parser.parse(data.to_vec(), 1000) else {
        return;
    };
    let top: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(data).expect("simd-json accepted what serde_json refuses");
    let objects: Vec<HashMap<String, Box<RawValue>>> = match top.get("events") {
        Some(list) => serde_json::from_str(list.get()).expect("events is an array of objects"),
        None => vec![top],
    };
    assert_eq!(objects.len(), batch.events.len());
    for (ev, obj) in batch.events.iter().zip(&objects) {
        assert_eq!(batch.bytes(&ev.data), obj["data"].get().as_bytes());
        assert_eq!(batch.bytes(&ev.event), obj["event"].get().as_bytes());
    }
});
