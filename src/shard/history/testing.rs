//! Helpers the history's unit tests share: a configuration, a frame of a given
//! size, and a publish that keeps its frame. Test-only; no I/O.

use std::rc::Rc;
use std::time::Instant;

use super::lifecycle::History;
use crate::config::HistoryConfig;
use crate::ws::frame::{EncodedFrame, FrameBuilder};

pub fn config(events: usize, bytes: usize, memory: usize) -> HistoryConfig {
    HistoryConfig {
        events,
        bytes,
        memory,
        ..HistoryConfig::default()
    }
}

pub fn frame(seq: u64, size: usize, at: Instant) -> Rc<EncodedFrame> {
    let mut b = FrameBuilder::with_capacity(size);
    b.payload().resize(size, b'x');
    let mut f = b.finish(at);
    f.seq = seq;
    Rc::new(f)
}

pub fn publish(h: &mut History, s: &Rc<str>, size: usize, now: Instant) -> u64 {
    if h.get(s).is_none() {
        h.stream(s, now);
        h.socket_joined(s);
        h.socket_left(s, now);
    }
    let pos = h.place(s, None, now).pos;
    h.retain(s, &frame(pos.seq, size, now));
    pos.seq
}
